//! `gatelet token mint`: development tokens with the claims a WSO2 API Manager puts in a
//! self-contained token, signed with an issuer's key: Ed25519, RSA or EC P-256/P-384, as
//! `openssl genpkey` writes them. Claims from a JSON file are merged over the generated ones, and
//! the header can carry a certificate thumbprint (`x5t`) in RFC 7515's form or WSO2's, so the
//! exact shapes of real issuers can be reproduced.
//!
//! An Ed25519 header says `alg: EdDSA` (RFC 8037), not RFC 9864's `Ed25519`: every JWT library
//! we know of reads the former, few read the latter yet, and gatelet accepts both.

use std::path::Path;

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use ed25519_dalek::{Signer as _, SigningKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer};
use openssl::x509::X509;
use serde_json::{Map, Value, json};

use super::claims::KeyType;
use super::jws::MAX_TOKEN_LEN;
use crate::bundle::model::JwsAlg;
use crate::keys;

/// Lifetime when `--ttl` is not given: one hour.
pub const DEFAULT_TTL_S: u64 = 3600;

/// What to put in a token; strings as typed on the command line.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    /// `iss`: must equal an issuer's `issuer` in the bundle.
    pub issuer: String,
    pub subject: String,
    /// Default: the RFC 7638 thumbprint of the signing key, the `kid` gatelet gives a PEM key.
    pub kid: Option<String>,
    pub audience: Option<String>,
    /// `NAME:VERSION` of each subscribed API (VERSION may be `*`).
    pub apis: Vec<String>,
    pub app_id: Option<String>,
    /// The application tier.
    pub app_tier: Option<String>,
    /// The subscription tier of every listed API.
    pub tier: Option<String>,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// `PRODUCTION` (default) or `SANDBOX`.
    pub key_type: Option<String>,
    /// Default [`DEFAULT_TTL_S`].
    pub ttl_s: Option<u64>,
    /// A JOSE `alg` the key allows; default: the key's ([`TokenKey::default_alg`]).
    pub alg: Option<String>,
    /// Claims set over the generated ones, member by member (`--claims FILE`).
    pub extra_claims: Option<Map<String, Value>>,
    /// The header's `x5t`, already encoded ([`x5t_of_cert`]). Without an explicit `kid`, a token
    /// with an `x5t` carries no `kid`, as WSO2 API Manager 3.0's do.
    pub x5t: Option<String>,
}

/// Splits `NAME:VERSION` at the last colon (API names may hold one, versions do not).
pub fn parse_api_ref(s: &str) -> Result<(&str, &str), String> {
    match s.rsplit_once(':') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => Ok((name, version)),
        _ => Err(format!("--api {s:?}: expected NAME:VERSION, e.g. PizzaShackAPI:1.0.0")),
    }
}

/// A random token id, formatted as a UUID v4 like WSO2's.
pub fn random_jti() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = keys::hex(&b);
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

/// The claims of the token, as JSON.
pub fn claims(req: &MintRequest, now: u64, jti: &str) -> Result<Map<String, Value>, String> {
    if req.issuer.is_empty() {
        return Err("--issuer must not be empty".into());
    }
    if req.subject.is_empty() {
        return Err("--subject must not be empty".into());
    }
    let key_type = match req.key_type.as_deref() {
        None => KeyType::Production,
        Some(k) => {
            KeyType::parse(k).ok_or_else(|| format!("--keytype {k:?}: expected PRODUCTION or SANDBOX"))?
        }
    };
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if ttl == 0 {
        return Err("--ttl must be at least 1 second".into());
    }
    let mut c = Map::new();
    c.insert("iss".into(), json!(req.issuer));
    c.insert("sub".into(), json!(req.subject));
    if let Some(aud) = &req.audience {
        c.insert("aud".into(), json!(aud));
    }
    c.insert("iat".into(), json!(now));
    c.insert("exp".into(), json!(now.saturating_add(ttl)));
    c.insert("jti".into(), json!(jti));
    c.insert("keytype".into(), json!(key_type.as_str()));
    if let Some(scope) = &req.scope {
        let scope = scope.split_whitespace().collect::<Vec<_>>().join(" ");
        c.insert("scope".into(), json!(scope));
    }
    if req.app_id.is_some() || req.app_tier.is_some() {
        let id = req.app_id.as_deref().unwrap_or("default");
        c.insert(
            "application".into(),
            json!({
                "id": id,
                "name": id,
                "tier": req.app_tier.as_deref().unwrap_or(crate::bundle::model::UNLIMITED),
                "owner": req.subject,
            }),
        );
    }
    if !req.apis.is_empty() {
        let tier = req.tier.as_deref().unwrap_or(crate::bundle::model::UNLIMITED);
        let mut list = Vec::with_capacity(req.apis.len());
        for a in &req.apis {
            let (name, version) = parse_api_ref(a)?;
            list.push(json!({"name": name, "version": version, "subscriptionTier": tier}));
        }
        c.insert("subscribedAPIs".into(), Value::Array(list));
    } else if req.tier.is_some() {
        return Err("--tier is the subscription tier of the --api entries; give at least one --api".into());
    }
    Ok(c)
}

/// Signs `claims` as a compact JWS with an Ed25519 key.
pub fn sign(key: &SigningKey, kid: &str, claims: &Map<String, Value>) -> Result<String, String> {
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    seal(&header, claims, |input| Ok(key.sign(input).to_bytes().to_vec()))
}

fn seal(
    header: &Value,
    claims: &Map<String, Value>,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    let enc = |v: &Value| Base64UrlUnpadded::encode_string(v.to_string().as_bytes());
    let input = format!("{}.{}", enc(header), enc(&Value::Object(claims.clone())));
    let sig = sign(input.as_bytes())?;
    let token = format!("{input}.{}", Base64UrlUnpadded::encode_string(&sig));
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "the token would be {} bytes; gatelet refuses tokens over {MAX_TOKEN_LEN}",
            token.len()
        ));
    }
    Ok(token)
}

/// A signed token for `req` at time `now`, with an Ed25519 key.
pub fn mint(key: &SigningKey, req: &MintRequest, now: u64, jti: &str) -> Result<String, String> {
    let kid = match &req.kid {
        Some(k) => k.clone(),
        None => keys::jwk_thumbprint(&key.verifying_key()),
    };
    sign(key, &kid, &claims(req, now, jti)?)
}

/// A token signing key: a PKCS#8 PEM private key as `openssl genpkey` writes it (Ed25519, RSA of
/// at least 2048 bits, EC P-256 or P-384).
pub struct TokenKey(PKey<Private>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({:?}, {} bits)", self.0.id(), self.0.bits())
    }
}

impl TokenKey {
    /// Reads a PKCS#8 PEM private key file.
    pub fn load(path: &Path) -> Result<TokenKey, keys::KeyError> {
        let key = keys::load_private_pem(path)?;
        TokenKey::new(key).map_err(|why| keys::KeyError::Format(path.to_owned(), why))
    }

    /// Refuses key types and sizes gatelet would not verify.
    pub fn new(key: PKey<Private>) -> Result<TokenKey, String> {
        let k = TokenKey(key);
        if k.0.id() == Id::RSA && k.0.bits() < crate::bundle::model::MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {} bits; gatelet refuses keys under {}",
                k.0.bits(),
                crate::bundle::model::MIN_RSA_BITS
            ));
        }
        k.algs().first().ok_or_else(|| "not an Ed25519, RSA, P-256 or P-384 private key".to_owned())?;
        Ok(k)
    }

    /// The algorithms the key can sign, its default first.
    fn algs(&self) -> &'static [JwsAlg] {
        use JwsAlg::*;
        match self.0.id() {
            Id::ED25519 => &[EdDsa],
            Id::RSA => &[Rs256, Rs384, Rs512, Ps256, Ps384, Ps512],
            Id::EC => match self.0.ec_key().ok().and_then(|ec| ec.group().curve_name()) {
                Some(Nid::X9_62_PRIME256V1) => &[Es256],
                Some(Nid::SECP384R1) => &[Es384],
                _ => &[],
            },
            _ => &[],
        }
    }

    /// RSA → RS256, P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA.
    pub fn default_alg(&self) -> JwsAlg {
        self.algs().first().copied().unwrap_or(JwsAlg::EdDsa)
    }

    /// The public half as DER SubjectPublicKeyInfo (what a bundle holds for an RSA or EC key).
    pub fn public_der(&self) -> Vec<u8> {
        self.0.public_key_to_der().unwrap_or_default()
    }

    /// The RFC 7638 thumbprint of the public half: the `kid` gatelet gives the key's PEM.
    pub fn thumbprint(&self) -> Result<String, String> {
        let der = self.0.public_key_to_der().map_err(|e| e.to_string())?;
        let public = PKey::public_key_from_der(&der).map_err(|e| e.to_string())?;
        keys::public_jwk_thumbprint(&public)
    }

    /// A JWS signature of `input` (RFC 7518: PKCS#1 v1.5, PSS with MGF1 and a salt as long as
    /// the hash, ECDSA as raw R || S).
    pub fn sign(&self, alg: JwsAlg, input: &[u8]) -> Result<Vec<u8>, String> {
        if !self.algs().contains(&alg) {
            return Err(format!("--alg {}: the key cannot sign it", alg.as_str()));
        }
        let md = match alg {
            JwsAlg::EdDsa => {
                let mut s = Signer::new_without_digest(&self.0).map_err(|e| e.to_string())?;
                return s.sign_oneshot_to_vec(input).map_err(|e| e.to_string());
            }
            JwsAlg::Rs256 | JwsAlg::Ps256 | JwsAlg::Es256 => MessageDigest::sha256(),
            JwsAlg::Rs384 | JwsAlg::Ps384 | JwsAlg::Es384 => MessageDigest::sha384(),
            JwsAlg::Rs512 | JwsAlg::Ps512 => MessageDigest::sha512(),
        };
        let e = |e: openssl::error::ErrorStack| e.to_string();
        if let (Ok(ec), Some(n)) =
            (self.0.ec_key(), self.algs().first().map(|a| if *a == JwsAlg::Es256 { 32 } else { 48 }))
        {
            let hash = openssl::hash::hash(md, input).map_err(e)?;
            let sig = EcdsaSig::sign(&hash, &ec).map_err(e)?;
            let mut out = sig.r().to_vec_padded(n).map_err(e)?;
            out.extend(sig.s().to_vec_padded(n).map_err(e)?);
            return Ok(out);
        }
        let mut s = Signer::new(md, &self.0).map_err(e)?;
        if matches!(alg, JwsAlg::Ps256 | JwsAlg::Ps384 | JwsAlg::Ps512) {
            s.set_rsa_padding(Padding::PKCS1_PSS).map_err(e)?;
            s.set_rsa_mgf1_md(md).map_err(e)?;
            s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).map_err(e)?;
        }
        s.update(input).map_err(e)?;
        s.sign_to_vec().map_err(e)
    }
}

/// A signed token for `req` at time `now`, with any [`TokenKey`]: `alg` from the request or the
/// key, `kid` from the request or the key's thumbprint (none when the header has an `x5t` and
/// no `kid` was asked for), the extra claims set over the generated ones.
pub fn mint_with(key: &TokenKey, req: &MintRequest, now: u64, jti: &str) -> Result<String, String> {
    let alg = match req.alg.as_deref() {
        None => key.default_alg(),
        Some(a) => JwsAlg::parse(a).ok_or_else(|| {
            format!("--alg {a:?}: expected one of {}", JwsAlg::ALL.map(JwsAlg::as_str).join(", "))
        })?,
    };
    let mut header = Map::new();
    header.insert("alg".into(), json!(alg.as_str()));
    header.insert("typ".into(), json!("JWT"));
    match (&req.kid, &req.x5t) {
        (Some(k), _) => {
            header.insert("kid".into(), json!(k));
        }
        (None, None) => {
            header.insert("kid".into(), json!(key.thumbprint()?));
        }
        (None, Some(_)) => {}
    }
    if let Some(t) = &req.x5t {
        header.insert("x5t".into(), json!(t));
    }
    let mut c = claims(req, now, jti)?;
    for (k, v) in req.extra_claims.iter().flatten() {
        c.insert(k.clone(), v.clone());
    }
    seal(&Value::Object(header), &c, |input| key.sign(alg, input))
}

/// Claims from a JSON file holding one object (`--claims FILE`), at most 64 KiB.
pub fn claims_file(path: &Path) -> Result<Map<String, Value>, String> {
    let text = keys::read_small(path).map_err(|e| e.to_string())?;
    match serde_json::from_slice(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{}: not a JSON object", path.display())),
        Err(e) => Err(format!("{}: not JSON ({e})", path.display())),
    }
}

/// The `x5t` header of a PEM certificate: base64url of its SHA-1 (RFC 7515 §4.1.7), or with
/// `wso2`, WSO2 API Manager's form: standard base64, padded, of the SHA-1's lower-case hex.
pub fn x5t_of_cert(pem: &[u8], wso2: bool) -> Result<String, String> {
    let cert = X509::from_pem(pem).map_err(|e| format!("not a PEM certificate ({e})"))?;
    let der = cert.to_der().map_err(|e| e.to_string())?;
    let sha1 = openssl::sha::sha1(&der);
    Ok(if wso2 {
        Base64::encode_string(keys::hex(&sha1).as_bytes())
    } else {
        Base64UrlUnpadded::encode_string(&sha1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_part(token: &str, i: usize) -> Value {
        let part = token.split('.').nth(i).expect("segment");
        serde_json::from_slice(&Base64UrlUnpadded::decode_vec(part).expect("base64url")).expect("JSON")
    }

    #[test]
    fn claims_and_header() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let req = MintRequest {
            issuer: "https://apim.example.com/oauth2/token".into(),
            subject: "alice".into(),
            audience: Some("gatelet".into()),
            apis: vec!["PizzaShackAPI:1.0.0".into(), "Odd:Name:*".into()],
            app_id: Some("42".into()),
            app_tier: Some("10PerMin".into()),
            tier: Some("Gold".into()),
            scope: Some(" order:read   order:write ".into()),
            key_type: Some("SANDBOX".into()),
            ttl_s: Some(600),
            ..MintRequest::default()
        };
        let t = mint(&key, &req, 1_000, "jti-1").expect("minted");
        let h = decode_part(&t, 0);
        assert_eq!(h, json!({"alg":"EdDSA","typ":"JWT","kid": keys::jwk_thumbprint(&key.verifying_key())}));
        let c = decode_part(&t, 1);
        assert_eq!(c["exp"], json!(1_600));
        assert_eq!(c["iat"], json!(1_000));
        assert_eq!(c["scope"], json!("order:read order:write"));
        assert_eq!(c["keytype"], json!("SANDBOX"));
        assert_eq!(c["application"], json!({"id":"42","name":"42","tier":"10PerMin","owner":"alice"}));
        assert_eq!(
            c["subscribedAPIs"],
            json!([{"name":"PizzaShackAPI","version":"1.0.0","subscriptionTier":"Gold"},
                   {"name":"Odd:Name","version":"*","subscriptionTier":"Gold"}])
        );
        let with_kid = mint(&key, &MintRequest { kid: Some("partner-2026-11".into()), ..req }, 1_000, "j")
            .expect("minted");
        assert_eq!(decode_part(&with_kid, 0)["kid"], json!("partner-2026-11"));
    }

    #[test]
    fn refusals() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let base = MintRequest { issuer: "i".into(), subject: "s".into(), ..MintRequest::default() };
        assert!(mint(&key, &base, 0, "j").is_ok());
        for bad in [
            MintRequest { issuer: String::new(), ..base.clone() },
            MintRequest { subject: String::new(), ..base.clone() },
            MintRequest { key_type: Some("production".into()), ..base.clone() },
            MintRequest { apis: vec!["NoVersion".into()], ..base.clone() },
            MintRequest { apis: vec!["Name:".into()], ..base.clone() },
            MintRequest { tier: Some("Gold".into()), ..base.clone() },
            MintRequest { ttl_s: Some(0), ..base.clone() },
            MintRequest { subject: "x".repeat(MAX_TOKEN_LEN), ..base.clone() },
        ] {
            assert!(mint(&key, &bad, 0, "j").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rsa_and_ec_keys_claims_file_and_x5t() {
        use openssl::ec::{EcGroup, EcKey};
        let p256 = EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve"))
            .and_then(PKey::from_ec_key)
            .expect("key");
        let rsa = openssl::rsa::Rsa::generate(2048).and_then(PKey::from_rsa).expect("key");
        let short = openssl::rsa::Rsa::generate(1024).and_then(PKey::from_rsa).expect("key");
        let (p256, rsa) = (TokenKey::new(p256).expect("P-256"), TokenKey::new(rsa).expect("RSA"));
        assert!(TokenKey::new(short).expect_err("1024 bits").contains("1024 bits"));
        assert_eq!((p256.default_alg(), rsa.default_alg()), (JwsAlg::Es256, JwsAlg::Rs256));
        let mut extra = Map::new();
        extra.insert("application".into(), json!({"id": 42, "name": "App"}));
        extra.insert("tierInfo".into(), json!({"Gold": {"stopOnQuotaReach": true}}));
        let req = MintRequest {
            issuer: "i".into(),
            subject: "s".into(),
            app_id: Some("replaced".into()),
            extra_claims: Some(extra),
            ..MintRequest::default()
        };
        let t = mint_with(&p256, &req, 1_000, "j").expect("minted");
        assert_eq!(
            decode_part(&t, 0),
            json!({"alg":"ES256","typ":"JWT","kid": p256.thumbprint().expect("kid")})
        );
        let c = decode_part(&t, 1);
        assert_eq!(c["application"], json!({"id": 42, "name": "App"}), "the file's claims win");
        assert_eq!(c["tierInfo"]["Gold"]["stopOnQuotaReach"], json!(true));
        assert_eq!(c["sub"], json!("s"));
        let sig = Base64UrlUnpadded::decode_vec(t.rsplit('.').next().expect("sig")).expect("b64");
        assert_eq!(sig.len(), 64, "raw R || S");
        let ps = mint_with(&rsa, &MintRequest { alg: Some("PS384".into()), ..req.clone() }, 1, "j")
            .expect("PS384");
        assert_eq!(decode_part(&ps, 0)["alg"], json!("PS384"));
        for bad in ["ES256", "HS256", "none"] {
            assert!(
                mint_with(&rsa, &MintRequest { alg: Some(bad.into()), ..req.clone() }, 1, "j").is_err(),
                "{bad}"
            );
        }

        // A certificate's x5t in both forms; no kid beside it unless asked for.
        let mut b = openssl::x509::X509Builder::new().expect("builder");
        let rsa_pkey = openssl::rsa::Rsa::generate(2048).and_then(PKey::from_rsa).expect("key");
        b.set_pubkey(&rsa_pkey).expect("key");
        let day = openssl::asn1::Asn1Time::days_from_now(1).expect("time");
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).expect("time")).expect("nbf");
        b.set_not_after(&day).expect("naf");
        b.sign(&rsa_pkey, MessageDigest::sha256()).expect("self-signed");
        let pem = b.build().to_pem().expect("pem");
        let der = X509::from_pem(&pem).and_then(|c| c.to_der()).expect("der");
        let sha1 = openssl::sha::sha1(&der);
        let rfc = x5t_of_cert(&pem, false).expect("x5t");
        let wso2 = x5t_of_cert(&pem, true).expect("x5t");
        assert_eq!(Base64UrlUnpadded::decode_vec(&rfc).expect("b64url"), sha1);
        assert_eq!(Base64::decode_vec(&wso2).expect("b64"), keys::hex(&sha1).as_bytes());
        assert!(wso2.ends_with('='), "40 bytes of hex: padded standard base64");
        let t =
            mint_with(&rsa, &MintRequest { x5t: Some(wso2.clone()), ..req.clone() }, 1, "j").expect("x5t");
        assert_eq!(decode_part(&t, 0), json!({"alg":"RS256","typ":"JWT","x5t": wso2}));
        let t = mint_with(&rsa, &MintRequest { x5t: Some(rfc), kid: Some("k".into()), ..req }, 1, "j")
            .expect("x5t");
        assert_eq!(decode_part(&t, 0)["kid"], json!("k"));
    }

    #[test]
    fn jti_is_a_random_uuid_v4() {
        let a = random_jti().expect("randomness");
        let b = random_jti().expect("randomness");
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }
}
