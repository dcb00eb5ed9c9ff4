//! JWS compact serialization (RFC 7515 §7.1): framing, the protected header's rules, and the
//! signature check for the algorithms of [`JwsAlg`] (EdDSA, RS*, PS*, ES256, ES384).
//!
//! Every limit is checked before the bytes it guards are decoded, and the parse refuses rather
//! than guesses: exactly three segments, canonical unpadded base64url (`base64ct` refuses
//! padding, whitespace and non-zero trailing bits), strict JSON ([`super::json`](mod@super::json)).
//!
//! Crypto: Ed25519 with ed25519-dalek (`verify_strict`), RSA and ECDSA with the system OpenSSL
//! the TLS listener already links (the `openssl` crate), so the device carries no second
//! implementation of those. Keys are turned into OpenSSL objects once per bundle
//! ([`VerifyKey::new`]), not per request.

use base64ct::{Base64, Base64Unpadded, Base64Url, Base64UrlUnpadded, Encoding};
use ed25519_dalek::{Signature, VerifyingKey};
use openssl::bn::BigNum;
use openssl::ec::EcKey;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use serde_json::{Map, Value};

use super::error::{Malformed, TokenError, printable};
use super::json;
use crate::bundle::model::{JwsAlg, MAX_RSA_BITS, MIN_RSA_BITS, PublicKey};

/// Longest token accepted, checked before anything else: 8 KiB. A WSO2 token with a dozen
/// subscribed APIs is 2-3 KiB; common HTTP servers cap a whole header line at 8 KiB, so a longer
/// token would not reach most gateways anyway.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest protected-header segment (base64url): 1 KiB. A header is `alg`, `typ`, `kid` and
/// perhaps `x5t`/`x5t#S256`, well under 300 bytes.
pub const MAX_HEADER_B64: usize = 1024;
/// Longest `x5t`/`x5t#S256` header value read: WSO2's form (base64 of 64 hex digits for
/// SHA-256) is 88 characters.
const MAX_THUMBPRINT_CHARS: usize = 96;

/// `typ` values accepted (compared ASCII case-insensitively, RFC 7515 §4.1.9). Explicit typing
/// (RFC 8725 §3.11) is how an issuer keeps other JWT-shaped objects it signs with the same key —
/// ID tokens with another `typ`, logout tokens, DPoP proofs — from being replayed as access
/// tokens; so a `typ` we do not know is refused rather than ignored. An absent `typ` is accepted:
/// WSO2 and most issuers send `JWT` or nothing.
const ACCEPTED_TYP: [&str; 4] = ["JWT", "at+jwt", "application/jwt", "application/at+jwt"];

/// The signature lengths `alg` allows, in bytes, checked before the signature is decoded.
/// Ed25519 and ES256 are 64 bytes, ES384 96 (RFC 7518 §3.4: raw R || S, each as long as the
/// curve's order; a DER-encoded ECDSA signature, which some libraries emit by mistake, has
/// another length and is refused). An RSA signature is as long as the modulus, which the key
/// decides: here only the bounds of the moduli a bundle may hold; [`verify`] checks it exactly.
pub fn signature_len(alg: JwsAlg) -> (usize, usize) {
    match alg {
        JwsAlg::EdDsa | JwsAlg::Es256 => (64, 64),
        JwsAlg::Es384 => (96, 96),
        JwsAlg::Rs256 | JwsAlg::Rs384 | JwsAlg::Rs512 | JwsAlg::Ps256 | JwsAlg::Ps384 | JwsAlg::Ps512 => {
            (MIN_RSA_BITS as usize / 8, MAX_RSA_BITS as usize / 8)
        }
    }
}

/// A token whose framing and header passed, signature not yet checked.
#[derive(Debug)]
pub struct Jws<'t> {
    /// `BASE64URL(header) '.' BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'t str,
    pub alg: JwsAlg,
    pub kid: Option<String>,
    /// The certificate SHA-1 thumbprint the header names (`x5t`), in RFC 7515's form or WSO2's.
    pub x5t: Option<[u8; 20]>,
    /// The certificate SHA-256 thumbprint the header names (`x5t#S256`).
    pub x5t_s256: Option<[u8; 32]>,
    /// The decoded payload, not yet parsed.
    pub payload: Vec<u8>,
    /// Its length fits `alg` ([`signature_len`]).
    pub signature: Vec<u8>,
}

/// What the protected header says, once its rules passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: JwsAlg,
    pub kid: Option<String>,
    pub x5t: Option<[u8; 20]>,
    pub x5t_s256: Option<[u8; 32]>,
}

fn decode(segment: &str) -> Result<Vec<u8>, TokenError> {
    Base64UrlUnpadded::decode_vec(segment).map_err(|_| TokenError::Malformed(Malformed::Base64))
}

/// Splits and decodes a compact JWS and applies the header rules.
pub fn parse(token: &str) -> Result<Jws<'_>, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed(Malformed::Segments));
    };
    if h.is_empty() || p.is_empty() {
        return Err(TokenError::Malformed(Malformed::EmptySegment));
    }
    if h.len() > MAX_HEADER_B64 {
        return Err(TokenError::Malformed(Malformed::HeaderTooLarge));
    }
    let header = json::parse_object(&decode(h)?).map_err(TokenError::Malformed)?;
    let Header { alg, kid, x5t, x5t_s256 } = check_header(&header)?;
    // After the header, so that `alg: none` (whose signature segment is empty) is named as such.
    // The length is checked on the text first (unpadded base64url: 4 characters per 3 bytes), so
    // an oversized segment is never decoded.
    let (min, max) = signature_len(alg);
    let b64_len = |n: usize| (n * 4).div_ceil(3);
    if s.len() < b64_len(min) || s.len() > b64_len(max) {
        return Err(TokenError::Malformed(Malformed::SignatureLength));
    }
    let signature = decode(s)?;
    if signature.len() < min || signature.len() > max {
        return Err(TokenError::Malformed(Malformed::SignatureLength));
    }
    let payload = decode(p)?;
    Ok(Jws { signing_input: &token[..h.len() + 1 + p.len()], alg, kid, x5t, x5t_s256, payload, signature })
}

/// A certificate thumbprint from a header member, in any of the forms issuers write: RFC 7515's
/// base64url of the N-byte digest, or WSO2 API Manager's base64 (standard alphabet, padded; some
/// versions base64url, unpadded) of the digest's lower-case hex. Leniency is safe here: a
/// thumbprint only selects a bundle key, the signature decides.
pub fn thumbprint<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() > MAX_THUMBPRINT_CHARS {
        return None;
    }
    let bytes = Base64UrlUnpadded::decode_vec(text)
        .or_else(|_| Base64::decode_vec(text))
        .or_else(|_| Base64Url::decode_vec(text))
        .or_else(|_| Base64Unpadded::decode_vec(text))
        .ok()?;
    if let Ok(raw) = <[u8; N]>::try_from(bytes.as_slice()) {
        return Some(raw);
    }
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// The protected header's rules. Members not named here (`cty`, ...) are ignored; in particular
/// `jwk`, `jku`, `x5u` and `x5c` are never used to find a key: keys come from the bundle only.
pub fn check_header(header: &Map<String, Value>) -> Result<Header, TokenError> {
    let alg = match header.get("alg") {
        // `none` and `HS*` have no `JwsAlg`: they are refused here, whatever the keys.
        Some(Value::String(a)) => JwsAlg::parse(a).ok_or_else(|| TokenError::AlgRefused(printable(a)))?,
        Some(_) => return Err(TokenError::AlgRefused("(not a string)".into())),
        None => return Err(TokenError::AlgRefused("(absent)".into())),
    };
    // RFC 7515 §4.1.11: a recipient that does not understand a listed extension must refuse.
    // We implement none, so any `crit` (even an empty list, which the RFC forbids) is refused.
    if header.contains_key("crit") {
        return Err(TokenError::CritRefused);
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if ACCEPTED_TYP.iter().any(|a| a.eq_ignore_ascii_case(t)) => {}
        Some(_) => return Err(TokenError::TypRefused),
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::BadClaim("kid")),
    };
    let x5t = match header.get("x5t") {
        None => None,
        Some(Value::String(t)) => Some(thumbprint::<20>(t).ok_or(TokenError::BadClaim("x5t"))?),
        Some(_) => return Err(TokenError::BadClaim("x5t")),
    };
    let x5t_s256 = match header.get("x5t#S256") {
        None => None,
        Some(Value::String(t)) => Some(thumbprint::<32>(t).ok_or(TokenError::BadClaim("x5t#S256"))?),
        Some(_) => return Err(TokenError::BadClaim("x5t#S256")),
    };
    Ok(Header { alg, kid, x5t, x5t_s256 })
}

/// A bundle key made ready to verify: decompressed or parsed once, when the bundle loads.
pub enum VerifyKey {
    Ed25519(VerifyingKey),
    Rsa(PKey<Public>),
    /// The key and the byte length of its curve's order (32 for P-256, 48 for P-384).
    Ec(EcKey<Public>, usize),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyKey::Ed25519(k) => write!(f, "Ed25519({k:?})"),
            VerifyKey::Rsa(k) => write!(f, "Rsa({} bits)", k.bits()),
            VerifyKey::Ec(_, n) => write!(f, "Ec(P-{})", if *n == 32 { 256 } else { 384 }),
        }
    }
}

impl VerifyKey {
    /// Parses a bundle key. Fails only on a key [`crate::bundle::Manifest::check`] refuses.
    pub fn new(key: &PublicKey) -> Result<VerifyKey, String> {
        let pkey = |der: &[u8]| PKey::public_key_from_der(der).map_err(|_| "not a DER public key".to_owned());
        match key {
            PublicKey::Ed25519(raw) => VerifyingKey::from_bytes(raw)
                .map(VerifyKey::Ed25519)
                .map_err(|_| "not an Ed25519 point".into()),
            PublicKey::Rsa(der) => {
                let k = pkey(der)?;
                k.rsa().map_err(|_| "not an RSA key".to_owned())?;
                Ok(VerifyKey::Rsa(k))
            }
            PublicKey::EcP256(der) | PublicKey::EcP384(der) => {
                let ec = pkey(der)?.ec_key().map_err(|_| "not an EC key".to_owned())?;
                Ok(VerifyKey::Ec(ec, if matches!(key, PublicKey::EcP256(_)) { 32 } else { 48 }))
            }
        }
    }
}

fn digest(alg: JwsAlg) -> MessageDigest {
    match alg {
        JwsAlg::Rs256 | JwsAlg::Ps256 | JwsAlg::Es256 => MessageDigest::sha256(),
        JwsAlg::Rs384 | JwsAlg::Ps384 | JwsAlg::Es384 => MessageDigest::sha384(),
        // EdDSA hashes internally; never used for it.
        JwsAlg::Rs512 | JwsAlg::Ps512 | JwsAlg::EdDsa => MessageDigest::sha512(),
    }
}

/// Checks `signature` over `signing_input` with `key` under `alg`. The caller has already made
/// sure the key's type allows `alg` ([`PublicKey::allows`]); a pair it does not allow is false
/// here too, never a check under another algorithm.
pub fn verify(key: &VerifyKey, alg: JwsAlg, signing_input: &[u8], signature: &[u8]) -> bool {
    match (key, alg) {
        (VerifyKey::Ed25519(k), JwsAlg::EdDsa) => {
            <&[u8; 64]>::try_from(signature).is_ok_and(|s| verify_signature(k, signing_input, s))
        }
        (
            VerifyKey::Rsa(k),
            JwsAlg::Rs256 | JwsAlg::Rs384 | JwsAlg::Rs512 | JwsAlg::Ps256 | JwsAlg::Ps384 | JwsAlg::Ps512,
        ) => {
            // RFC 7518 §3.3/§3.5: the signature is exactly as long as the modulus.
            if signature.len() != k.size() {
                return false;
            }
            let pss = matches!(alg, JwsAlg::Ps256 | JwsAlg::Ps384 | JwsAlg::Ps512);
            verify_rsa(k, alg, pss, signing_input, signature).unwrap_or(false)
        }
        (VerifyKey::Ec(k, n), JwsAlg::Es256 | JwsAlg::Es384) => {
            let want = if alg == JwsAlg::Es256 { 32 } else { 48 };
            if *n != want || signature.len() != 2 * want {
                return false;
            }
            verify_ec(k, alg, signing_input, signature).unwrap_or(false)
        }
        _ => false,
    }
}

fn verify_rsa(
    key: &PKey<Public>,
    alg: JwsAlg,
    pss: bool,
    input: &[u8],
    signature: &[u8],
) -> Result<bool, openssl::error::ErrorStack> {
    let md = digest(alg);
    let mut v = Verifier::new(md, key)?;
    if pss {
        // RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash. DIGEST_LENGTH makes
        // OpenSSL refuse any other salt length rather than recover it from the signature.
        v.set_rsa_padding(Padding::PKCS1_PSS)?;
        v.set_rsa_mgf1_md(md)?;
        v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
    } else {
        v.set_rsa_padding(Padding::PKCS1)?;
    }
    v.update(input)?;
    v.verify(signature)
}

/// ECDSA over raw R || S (RFC 7518 §3.4). R and S become an `ECDSA_SIG` directly (what the DER
/// form would be parsed into); OpenSSL refuses R or S of zero or not below the group order.
fn verify_ec(
    key: &EcKey<Public>,
    alg: JwsAlg,
    input: &[u8],
    signature: &[u8],
) -> Result<bool, openssl::error::ErrorStack> {
    let (r, s) = signature.split_at(signature.len() / 2);
    let sig = EcdsaSig::from_private_components(BigNum::from_slice(r)?, BigNum::from_slice(s)?)?;
    let hash = openssl::hash::hash(digest(alg), input)?;
    sig.verify(&hash, key)
}

/// Ed25519 verification with `verify_strict`: besides the equation, it refuses a non-canonical
/// S (S ≥ ℓ, signature malleability), a small-order R, and a small-order (weak) public key, for
/// which a signature can be valid for many messages at once. Plain `verify` accepts the last two.
pub fn verify_signature(key: &VerifyingKey, signing_input: &[u8], signature: &[u8; 64]) -> bool {
    key.verify_strict(signing_input, &Signature::from_bytes(signature)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey, Verifier};

    /// An Ed25519 signature is 64 bytes: 86 base64url characters without padding.
    const SIGNATURE_B64_LEN: usize = 86;

    fn b64(bytes: &[u8]) -> String {
        Base64UrlUnpadded::encode_string(bytes)
    }

    fn token(header: &str, payload: &str, sig: &[u8; 64]) -> String {
        format!("{}.{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()), b64(sig))
    }

    fn field<'a>(text: &'a str, name: &str) -> &'a str {
        let prefix = format!("{name} = ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} missing from the vector file"))
    }

    #[test]
    fn rfc8037_appendix_a4_and_a5() {
        let text = include_str!("../../tests/data/rfc8037-appendix-a.txt");
        let d = Base64UrlUnpadded::decode_vec(field(text, "A.1 d")).expect("d");
        let x = Base64UrlUnpadded::decode_vec(field(text, "A.1 x")).expect("x");
        let jws_text = field(text, "A.4 jws");
        let signing = SigningKey::from_bytes(&d.try_into().expect("32-byte seed"));
        let key = VerifyingKey::from_bytes(&x.try_into().expect("32 bytes")).expect("point");
        assert_eq!(signing.verifying_key(), key, "A.1: x is the public half of d");

        let jws = parse(jws_text).expect("A.4 JWS parses");
        assert_eq!(jws.alg, JwsAlg::EdDsa);
        let sig64: [u8; 64] = jws.signature.as_slice().try_into().expect("64 bytes");
        assert_eq!(jws.signing_input, field(text, "A.4 signing input"));
        assert_eq!(jws.payload, field(text, "A.4 payload").as_bytes());
        // A.5: validation with the public key.
        assert!(verify_signature(&key, jws.signing_input.as_bytes(), &sig64));
        // A.4: Ed25519 is deterministic, so signing reproduces the published signature.
        let sig = signing.sign(jws.signing_input.as_bytes()).to_bytes();
        assert_eq!(b64(&sig), field(text, "A.4 signature"));
        // One bit off anywhere and it fails.
        let mut bad = sig64;
        bad[10] ^= 1;
        assert!(!verify_signature(&key, jws.signing_input.as_bytes(), &bad));
        assert!(!verify_signature(&key, b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmC", &sig64));
    }

    fn unhex(s: &str) -> Vec<u8> {
        assert!(s.len() % 2 == 0, "odd hex");
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    /// Wycheproof's Ed25519 vectors through the same check tokens get. Key and signature lengths
    /// are checked the way the token path checks them (a 32-byte bundle key, a 64-byte signature).
    #[test]
    fn wycheproof_ed25519() {
        let doc: Value = serde_json::from_str(include_str!("../../tests/data/wycheproof-ed25519_test.json"))
            .expect("vector file is JSON");
        let mut counted = (0, 0);
        for group in doc["testGroups"].as_array().expect("groups") {
            let pk = unhex(group["publicKey"]["pk"].as_str().expect("pk"));
            let key =
                <[u8; 32]>::try_from(pk.as_slice()).ok().and_then(|k| VerifyingKey::from_bytes(&k).ok());
            for t in group["tests"].as_array().expect("tests") {
                let id = t["tcId"].as_u64().expect("tcId");
                let msg = unhex(t["msg"].as_str().expect("msg"));
                let sig = unhex(t["sig"].as_str().expect("sig"));
                let want = t["result"].as_str().expect("result") == "valid";
                let got = match (&key, <[u8; 64]>::try_from(sig.as_slice())) {
                    (Some(k), Ok(s)) => verify_signature(k, &msg, &s),
                    _ => false,
                };
                assert_eq!(got, want, "Wycheproof tcId {id}: {}", t["comment"]);
                if want { counted.0 += 1 } else { counted.1 += 1 }
            }
        }
        assert_eq!(counted, (88, 63), "every vector ran");
    }

    #[test]
    fn small_order_key_is_refused_where_plain_verify_accepts() {
        // The identity point as public key, R = identity, S = 0: [S]B = R + [k]A holds for every
        // message, so non-strict verification accepts this "signature" of anything.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).expect("identity decodes");
        assert!(weak.is_weak());
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&identity);
        let msg = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZG1pbiJ9";
        assert!(weak.verify(msg, &Signature::from_bytes(&sig)).is_ok(), "plain verify is fooled");
        assert!(!verify_signature(&weak, msg, &sig), "verify_strict is not");
    }

    #[test]
    fn non_canonical_s_is_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let input = "eyJhbGciOiJFZERTQSJ9.e30";
        let sig = key.sign(input.as_bytes()).to_bytes();
        assert!(verify_signature(&key.verifying_key(), input.as_bytes(), &sig));
        // S + ℓ is the same scalar mod ℓ, so the equation still holds; only the S < ℓ rule stops it.
        let ell: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut s_plus_ell = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(sig[32 + i]) + u16::from(ell[i]) + carry;
            s_plus_ell[i] = (v & 0xff) as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "S + ℓ fits in 256 bits");
        let mut malleated = sig;
        malleated[32..].copy_from_slice(&s_plus_ell);
        assert!(!verify_signature(&key.verifying_key(), input.as_bytes(), &malleated));
    }

    #[test]
    fn framing() {
        let sig = [0u8; 64];
        let good = token(r#"{"alg":"EdDSA"}"#, "{}", &sig);
        assert!(parse(&good).is_ok());
        let m = |x| Err::<(), _>(TokenError::Malformed(x));
        let cases: Vec<(String, Result<(), TokenError>)> = vec![
            (String::new(), Err(TokenError::Missing)),
            ("a.b".into(), m(Malformed::Segments)),
            ("abc".into(), m(Malformed::Segments)),
            (format!("{good}.x"), m(Malformed::Segments)),
            (format!("{good}."), m(Malformed::Segments)),
            (format!(".{}", good.split_once('.').expect("dot").1), m(Malformed::EmptySegment)),
            (token(r#"{"alg":"EdDSA"}"#, "", &sig), m(Malformed::EmptySegment)),
            // Padding, whitespace, the standard alphabet, non-zero trailing bits.
            (good.replacen('.', "=.", 1), m(Malformed::Base64)),
            (good.replacen('.', " .", 1), m(Malformed::Base64)),
            (format!("{}.e30+.{}", b64(br#"{"alg":"EdDSA"}"#), b64(&sig)), m(Malformed::Base64)),
            (format!("{}.e31.{}", b64(br#"{"alg":"EdDSA"}"#), b64(&sig)), m(Malformed::Base64)),
            (
                format!("{}.e30.{}", b64(br#"{"alg":"EdDSA"}"#), &b64(&sig)[..85]),
                m(Malformed::SignatureLength),
            ),
            (format!("{}.e30.{}A", b64(br#"{"alg":"EdDSA"}"#), b64(&sig)), m(Malformed::SignatureLength)),
            (format!("{}.e30.{}B", b64(br#"{"alg":"EdDSA"}"#), &b64(&sig)[..85]), m(Malformed::Base64)),
            (token(r#"{"alg":"EdDSA","alg":"none"}"#, "{}", &sig), m(Malformed::DuplicateKey)),
            (token(r#"["alg"]"#, "{}", &sig), m(Malformed::NotObject)),
            (token(r#"{"alg":"EdDSA"} x"#, "{}", &sig), m(Malformed::Json)),
        ];
        for (t, want) in cases {
            assert_eq!(parse(&t).map(drop), want, "{t}");
        }
    }

    #[test]
    fn size_limits_are_exact() {
        let sig = [0u8; 64];
        let h = b64(br#"{"alg":"EdDSA"}"#);
        // Payload segment sized so the token is exactly MAX_TOKEN_LEN bytes ("AAAA" decodes to
        // zero bytes; parse() does not read the payload as JSON).
        let len = MAX_TOKEN_LEN - h.len() - 2 - SIGNATURE_B64_LEN;
        assert_ne!(len % 4, 1, "a valid base64 length");
        let at_limit = format!("{h}.{}.{}", "A".repeat(len), b64(&sig));
        assert_eq!(at_limit.len(), MAX_TOKEN_LEN);
        assert!(parse(&at_limit).is_ok(), "a token at the limit is parsed");
        let over = format!("{h}.{}.{}", "A".repeat(len + 1), b64(&sig));
        assert_eq!(parse(&over).map(drop), Err(TokenError::TooLarge));
        let mb = format!("{}.{}.{}", b64(br#"{"alg":"EdDSA"}"#), "A".repeat(1 << 20), b64(&sig));
        assert_eq!(parse(&mb).map(drop), Err(TokenError::TooLarge));

        // Header segment: exactly MAX_HEADER_B64 characters is read, one more is refused.
        let mut h = String::from(r#"{"alg":"EdDSA","x":""#);
        while b64(format!("{h}\"}}").as_bytes()).len() < MAX_HEADER_B64 {
            h.push('a');
        }
        let header = format!("{h}\"}}");
        assert_eq!(b64(header.as_bytes()).len(), MAX_HEADER_B64, "header length hits the limit");
        assert!(parse(&token(&header, "{}", &sig)).is_ok());
        let longer = format!("{h}aaa\"}}");
        assert_eq!(
            parse(&token(&longer, "{}", &sig)).map(drop),
            Err(TokenError::Malformed(Malformed::HeaderTooLarge))
        );
    }

    #[test]
    fn header_rules() {
        let sig = [0u8; 64];
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(b"{}"));
        assert_eq!(parse(&none).map(drop), Err(TokenError::AlgRefused("none".into())));
        let cases = [
            (r#"{"alg":"HS256"}"#, Err(TokenError::AlgRefused("HS256".into()))),
            (r#"{"alg":"HS512"}"#, Err(TokenError::AlgRefused("HS512".into()))),
            (r#"{"alg":"ES512"}"#, Err(TokenError::AlgRefused("ES512".into()))),
            (r#"{"alg":"ES256K"}"#, Err(TokenError::AlgRefused("ES256K".into()))),
            (r#"{"alg":"rs256"}"#, Err(TokenError::AlgRefused("rs256".into()))),
            // A 64-byte signature cannot be an RSA one (at least 2048 bits).
            (r#"{"alg":"RS256"}"#, Err(TokenError::Malformed(Malformed::SignatureLength))),
            (r#"{"alg":"PS512"}"#, Err(TokenError::Malformed(Malformed::SignatureLength))),
            (r#"{"alg":"ES384"}"#, Err(TokenError::Malformed(Malformed::SignatureLength))),
            (r#"{"alg":"ES256"}"#, Ok((JwsAlg::Es256, None))),
            (r#"{"alg":"Ed448"}"#, Err(TokenError::AlgRefused("Ed448".into()))),
            (r#"{"alg":"eddsa"}"#, Err(TokenError::AlgRefused("eddsa".into()))),
            (r#"{"alg":"None"}"#, Err(TokenError::AlgRefused("None".into()))),
            (r#"{"alg":["EdDSA"]}"#, Err(TokenError::AlgRefused("(not a string)".into()))),
            (r#"{"typ":"JWT"}"#, Err(TokenError::AlgRefused("(absent)".into()))),
            (r#"{"alg":"EdDSA","crit":["exp"]}"#, Err(TokenError::CritRefused)),
            (r#"{"alg":"EdDSA","crit":[]}"#, Err(TokenError::CritRefused)),
            (r#"{"alg":"EdDSA","b64":false,"crit":["b64"]}"#, Err(TokenError::CritRefused)),
            (r#"{"alg":"EdDSA","typ":"dpop+jwt"}"#, Err(TokenError::TypRefused)),
            (r#"{"alg":"EdDSA","typ":"JOSE"}"#, Err(TokenError::TypRefused)),
            (r#"{"alg":"EdDSA","typ":1}"#, Err(TokenError::TypRefused)),
            (r#"{"alg":"EdDSA","kid":5}"#, Err(TokenError::BadClaim("kid"))),
            (r#"{"alg":"EdDSA","x5t":"abc"}"#, Err(TokenError::BadClaim("x5t"))),
            (r#"{"alg":"EdDSA","x5t":7}"#, Err(TokenError::BadClaim("x5t"))),
            (r#"{"alg":"EdDSA","x5t#S256":"abc"}"#, Err(TokenError::BadClaim("x5t#S256"))),
            (r#"{"alg":"EdDSA","typ":"jwt"}"#, Ok((JwsAlg::EdDsa, None))),
            (r#"{"alg":"EdDSA","typ":"at+JWT"}"#, Ok((JwsAlg::EdDsa, None))),
            (r#"{"alg":"EdDSA","typ":"application/at+jwt"}"#, Ok((JwsAlg::EdDsa, None))),
            (r#"{"alg":"Ed25519","kid":"k1"}"#, Ok((JwsAlg::EdDsa, Some("k1".to_owned())))),
            (r#"{"alg":"EdDSA","jwk":{"kty":"OKP"}}"#, Ok((JwsAlg::EdDsa, None))),
        ];
        for (h, want) in cases {
            let got = parse(&token(h, "{}", &sig)).map(|j| (j.alg, j.kid));
            assert_eq!(got, want, "{h}");
        }
    }
}
