//! Key files: Ed25519 generation and PEM (PKCS#8 private, SPKI public) for publishers and
//! issuers; issuer public keys as SPKI PEM, X.509 certificates or JWKS (RSA, EC P-256/P-384,
//! Ed25519); token signing keys for `token mint`; and the key identifiers gatelet uses.
//!
//! The file formats are the ones `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`
//! write, so keys move freely between gatelet, openssl and any JWT library.
//!
//! Identifiers:
//! - the **bundle key id** ([`key_id`]): the first 8 bytes of SHA-256 over the raw 32-byte public
//!   key. It only selects which trusted key to verify with; the signature decides.
//! - the **JWK thumbprint** ([`jwk_thumbprint`], RFC 7638): the `kid` a token carries for an issuer
//!   key given as PEM.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::Rsa;
use openssl::x509::X509;
use sha2::{Digest, Sha256};

/// Length of a bundle key id in bytes.
pub const KEY_ID_LEN: usize = 8;

/// Largest key file read (PEM or JWKS). A real PEM key is under 200 bytes and a JWKS of a few keys
/// a few KiB; anything larger is not a key file.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Most keys taken from one JWKS file.
pub const MAX_JWKS_KEYS: usize = 16;

/// Why a key could not be read or written. The fault is the operator's key file.
#[derive(Debug)]
pub enum KeyError {
    /// The file could not be read or written.
    Io(PathBuf, std::io::Error),
    /// The file is larger than [`MAX_KEY_FILE`].
    TooLarge(PathBuf),
    /// The file is not an Ed25519 key in the expected format.
    Format(PathBuf, String),
    /// The key is an Ed25519 point of small order (or not canonical): no signature by it means
    /// anything, so it is refused.
    Weak(PathBuf),
    /// `keygen` would overwrite an existing file.
    Exists(PathBuf),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            KeyError::TooLarge(p) => {
                write!(f, "{}: larger than {MAX_KEY_FILE} bytes, not a key file", p.display())
            }
            KeyError::Format(p, why) => write!(f, "{}: {why}", p.display()),
            KeyError::Weak(p) => write!(f, "{}: weak (small-order) Ed25519 public key refused", p.display()),
            KeyError::Exists(p) => write!(f, "{}: already exists, not overwritten", p.display()),
        }
    }
}

impl std::error::Error for KeyError {}

/// A fresh signing key from the operating system's random source.
pub fn generate() -> Result<SigningKey, std::io::Error> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    // The seed is the private key; do not leave a copy on the stack frame longer than needed.
    seed.fill(0);
    Ok(key)
}

/// Bundle key id: SHA-256 of the raw public key, first [`KEY_ID_LEN`] bytes.
///
/// Reproducible with standard tools:
/// `openssl pkey -pubin -in k.pub -outform DER | tail -c 32 | sha256sum | cut -c1-16`.
pub fn key_id(key: &VerifyingKey) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// Lower-case hex, the way key ids and hashes are printed.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// RFC 7638 thumbprint of an Ed25519 key as a JWK (RFC 8037): base64url(SHA-256 of
/// `{"crv":"Ed25519","kty":"OKP","x":"..."}`), members in lexicographic order, no whitespace.
pub fn jwk_thumbprint(key: &VerifyingKey) -> String {
    let x = Base64UrlUnpadded::encode_string(key.as_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    Base64UrlUnpadded::encode_string(&Sha256::digest(canonical.as_bytes()))
}

fn read_limited(path: &Path) -> Result<Vec<u8>, KeyError> {
    let meta = fs::metadata(path).map_err(|e| KeyError::Io(path.to_owned(), e))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyError::TooLarge(path.to_owned()));
    }
    fs::read(path).map_err(|e| KeyError::Io(path.to_owned(), e))
}

/// A small file (a key, a certificate, a claims file), at most [`MAX_KEY_FILE`] bytes.
pub fn read_small(path: &Path) -> Result<Vec<u8>, KeyError> {
    read_limited(path)
}

/// Reads a PKCS#8 PEM private key of any type (`openssl genpkey`), for `token mint`.
pub fn load_private_pem(path: &Path) -> Result<PKey<Private>, KeyError> {
    let pem = zeroize::Zeroizing::new(read_limited(path)?);
    PKey::private_key_from_pem(&pem)
        .map_err(|_| KeyError::Format(path.to_owned(), "not an unencrypted PEM private key".into()))
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    String::from_utf8(read_limited(path)?)
        .map_err(|_| KeyError::Format(path.to_owned(), "not a text (PEM) file".into()))
}

/// Reads a PKCS#8 PEM Ed25519 private key (`-----BEGIN PRIVATE KEY-----`).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = zeroize::Zeroizing::new(read_text(path)?);
    SigningKey::from_pkcs8_pem(pem.trim())
        .map_err(|e| KeyError::Format(path.to_owned(), format!("not a PKCS#8 PEM Ed25519 private key ({e})")))
}

/// Reads an SPKI PEM Ed25519 public key (`-----BEGIN PUBLIC KEY-----`), refusing weak keys.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read_text(path)?;
    let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
        KeyError::Format(path.to_owned(), format!("not an SPKI PEM Ed25519 public key ({e})"))
    })?;
    check_strong(path, key)
}

fn check_strong(path: &Path, key: VerifyingKey) -> Result<VerifyingKey, KeyError> {
    if key.is_weak() {
        return Err(KeyError::Weak(path.to_owned()));
    }
    Ok(key)
}

/// An issuer's public key as read from a key file, before the builder turns it into a bundle
/// key: the key itself (RSA, EC P-256/P-384 or Ed25519, as an OpenSSL key), and what the file
/// says about it.
pub struct IssuerKeyFile {
    /// The JWK `kid`; `None` for a PEM key or a JWK without one (the builder then uses the RFC
    /// 7638 thumbprint, [`public_jwk_thumbprint`]).
    pub kid: Option<String>,
    pub key: PKey<Public>,
    /// The JWK `alg`, unchecked (the builder knows which names exist).
    pub alg: Option<String>,
    /// SHA-1 of the DER certificate the key came from or was published with (`x5t`).
    pub x5t: Option<[u8; 20]>,
    /// SHA-256 of that certificate (`x5t#S256`).
    pub x5t_s256: Option<[u8; 32]>,
}

impl fmt::Debug for IssuerKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKeyFile")
            .field("kid", &self.kid)
            .field("key", &format_args!("{:?}, {} bits", self.key.id(), self.key.bits()))
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Reads an issuer key from a PEM file: an SPKI public key (`-----BEGIN PUBLIC KEY-----`, RSA,
/// EC or Ed25519) or an X.509 certificate (`-----BEGIN CERTIFICATE-----`, as WSO2 and many IdPs
/// publish their signing key), whose SHA-1 and SHA-256 thumbprints are kept for `x5t` selection.
pub fn load_issuer_pem(path: &Path) -> Result<IssuerKeyFile, KeyError> {
    let text = read_limited(path)?;
    parse_issuer_pem(&text).map_err(|why| KeyError::Format(path.to_owned(), why))
}

/// The pure part of [`load_issuer_pem`].
pub fn parse_issuer_pem(text: &[u8]) -> Result<IssuerKeyFile, String> {
    let s = std::str::from_utf8(text).map_err(|_| "not a text (PEM) file".to_owned())?;
    if s.contains("-----BEGIN CERTIFICATE-----") {
        let cert = X509::from_pem(text).map_err(|e| format!("not a PEM X.509 certificate ({e})"))?;
        let der = cert.to_der().map_err(|e| format!("certificate does not encode ({e})"))?;
        let key = cert.public_key().map_err(|e| format!("certificate's public key unreadable ({e})"))?;
        let key = known_public_key(key)?;
        return Ok(IssuerKeyFile {
            kid: None,
            key,
            alg: None,
            x5t: Some(openssl::sha::sha1(&der)),
            x5t_s256: Some(Sha256::digest(&der).into()),
        });
    }
    if s.contains("PRIVATE KEY-----") {
        return Err("holds a private key; give the issuer's public key or certificate".into());
    }
    let key = PKey::public_key_from_pem(text)
        .map_err(|_| "neither an SPKI PEM public key nor a PEM certificate".to_owned())?;
    Ok(IssuerKeyFile { kid: None, key: known_public_key(key)?, alg: None, x5t: None, x5t_s256: None })
}

/// Refuses key types no JWS algorithm of gatelet's uses (DSA, X25519, P-521, ...) and weak
/// Ed25519 points.
fn known_public_key(key: PKey<Public>) -> Result<PKey<Public>, String> {
    match key.id() {
        Id::RSA => Ok(key),
        Id::EC => {
            let nid = key.ec_key().ok().and_then(|ec| ec.group().curve_name());
            match nid {
                Some(Nid::X9_62_PRIME256V1 | Nid::SECP384R1) => Ok(key),
                _ => Err("EC key on a curve other than P-256 or P-384".into()),
            }
        }
        Id::ED25519 => {
            let raw = key.raw_public_key().map_err(|e| format!("Ed25519 key unreadable ({e})"))?;
            let point = <[u8; 32]>::try_from(raw.as_slice())
                .ok()
                .and_then(|r| VerifyingKey::from_bytes(&r).ok())
                .ok_or_else(|| "not a valid Ed25519 point".to_owned())?;
            if point.is_weak() {
                return Err("weak (small-order) Ed25519 public key refused".into());
            }
            Ok(key)
        }
        other => Err(format!("unsupported key type ({other:?}); RSA, EC P-256/P-384 or Ed25519")),
    }
}

/// RFC 7638 thumbprint of a public key as a JWK: base64url(SHA-256) of its required members in
/// lexicographic order, no whitespace (`e`, `kty`, `n` for RSA; `crv`, `kty`, `x`, `y` for EC,
/// coordinates as long as the field; `crv`, `kty`, `x` for Ed25519, RFC 8037). The `kid`
/// gatelet gives a key from a PEM file, and what `jwt.PyJWK(...).thumbprint()`-style tools print.
pub fn public_jwk_thumbprint(key: &PKey<Public>) -> Result<String, String> {
    let b64 = |b: &[u8]| Base64UrlUnpadded::encode_string(b);
    let canonical = match key.id() {
        Id::RSA => {
            let rsa = key.rsa().map_err(|e| e.to_string())?;
            format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(&rsa.e().to_vec()), b64(&rsa.n().to_vec()))
        }
        Id::EC => {
            let ec = key.ec_key().map_err(|e| e.to_string())?;
            let (crv, len) = match ec.group().curve_name() {
                Some(Nid::X9_62_PRIME256V1) => ("P-256", 32),
                Some(Nid::SECP384R1) => ("P-384", 48),
                _ => return Err("EC key on a curve other than P-256 or P-384".into()),
            };
            let (x, y) = affine(&ec).map_err(|e| e.to_string())?;
            let (x, y) = (
                x.to_vec_padded(len).map_err(|e| e.to_string())?,
                y.to_vec_padded(len).map_err(|e| e.to_string())?,
            );
            format!(r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#, b64(&x), b64(&y))
        }
        Id::ED25519 => {
            let raw = key.raw_public_key().map_err(|e| e.to_string())?;
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(&raw))
        }
        other => return Err(format!("unsupported key type ({other:?})")),
    };
    Ok(b64(&Sha256::digest(canonical.as_bytes())))
}

fn affine(ec: &EcKey<Public>) -> Result<(BigNum, BigNum), openssl::error::ErrorStack> {
    let mut ctx = BigNumContext::new()?;
    let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
    ec.public_key().affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
    Ok((x, y))
}

/// Reads a JWKS (`{"keys":[...]}`) or a single JWK, as IdPs publish them at their `jwks_uri`.
pub fn load_jwks(path: &Path) -> Result<Vec<IssuerKeyFile>, KeyError> {
    let bytes = read_limited(path)?;
    parse_jwks(&bytes).map_err(|why| KeyError::Format(path.to_owned(), why))
}

/// The pure part of [`load_jwks`]. Takes `kty` `RSA` (`n`, `e`), `EC` (`crv` P-256/P-384, `x`,
/// `y`) and `OKP` (`crv` Ed25519, `x`) keys; skips keys marked `"use": "enc"` (Keycloak
/// publishes its encryption key beside its signing keys); refuses a key with private members
/// rather than copy it into a bundle. Certificate thumbprints come from `x5c[0]` when present
/// (whose key must be the JWK's), else from the `x5t` and `x5t#S256` members.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<IssuerKeyFile>, String> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let jwks: Vec<&serde_json::Value> = match doc.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err("\"keys\" is not an array".into()),
        None if doc.get("kty").is_some() => vec![&doc],
        None => return Err("neither a JWKS (\"keys\") nor a JWK (\"kty\")".into()),
    };
    if jwks.is_empty() {
        return Err("JWKS holds no keys".into());
    }
    if jwks.len() > MAX_JWKS_KEYS {
        return Err(format!("JWKS holds {} keys, at most {MAX_JWKS_KEYS} are accepted", jwks.len()));
    }
    let mut out = Vec::with_capacity(jwks.len());
    for (i, jwk) in jwks.into_iter().enumerate() {
        let field = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
        let kid = field("kid").map(str::to_owned);
        let at = match &kid {
            Some(k) => format!("key {i} (kid {k:?})"),
            None => format!("key {i}"),
        };
        match field("use") {
            None | Some("sig") => {}
            Some("enc") => continue,
            Some(u) => return Err(format!("{at}: \"use\" {u:?} is neither \"sig\" nor \"enc\"")),
        }
        if ["d", "p", "q", "dp", "dq", "qi", "k"].iter().any(|m| jwk.get(*m).is_some()) {
            return Err(format!("{at}: holds private key material; publish public keys only"));
        }
        let member = |name: &str| -> Result<Vec<u8>, String> {
            let text = field(name).ok_or_else(|| format!("{at}: missing \"{name}\""))?;
            Base64UrlUnpadded::decode_vec(text)
                .map_err(|_| format!("{at}: \"{name}\" is not unpadded base64url"))
        };
        let key = match field("kty") {
            Some("RSA") => jwk_rsa(&member("n")?, &member("e")?).map_err(|e| format!("{at}: {e}"))?,
            Some("EC") => {
                let (nid, len) = match field("crv") {
                    Some("P-256") => (Nid::X9_62_PRIME256V1, 32),
                    Some("P-384") => (Nid::SECP384R1, 48),
                    Some(other) => return Err(format!("{at}: unsupported curve {other:?} (P-256 or P-384)")),
                    None => return Err(format!("{at}: missing \"crv\"")),
                };
                let (x, y) = (member("x")?, member("y")?);
                if x.len() != len || y.len() != len {
                    return Err(format!("{at}: \"x\" and \"y\" must be {len} bytes each"));
                }
                jwk_ec(nid, &x, &y).map_err(|_| format!("{at}: \"x\", \"y\" is not a point on the curve"))?
            }
            Some("OKP") => {
                match field("crv") {
                    Some("Ed25519") => {}
                    Some(other) => return Err(format!("{at}: unsupported curve {other:?} (only Ed25519)")),
                    None => return Err(format!("{at}: missing \"crv\"")),
                }
                let raw = member("x")?;
                if raw.len() != 32 {
                    return Err(format!("{at}: \"x\" is not 32 bytes"));
                }
                PKey::public_key_from_raw_bytes(&raw, Id::ED25519)
                    .map_err(|_| format!("{at}: \"x\" is not a valid Ed25519 point"))?
            }
            Some(other) => {
                return Err(format!("{at}: unsupported key type {other:?} (RSA, EC or OKP)"));
            }
            None => return Err(format!("{at}: missing \"kty\"")),
        };
        let key = known_public_key(key).map_err(|e| format!("{at}: {e}"))?;
        let (x5t, x5t_s256) = jwk_thumbprints(jwk, &key).map_err(|e| format!("{at}: {e}"))?;
        out.push(IssuerKeyFile { kid, key, alg: field("alg").map(str::to_owned), x5t, x5t_s256 });
    }
    if out.is_empty() {
        return Err("JWKS holds no signing keys (every key is \"use\": \"enc\")".into());
    }
    Ok(out)
}

fn jwk_rsa(n: &[u8], e: &[u8]) -> Result<PKey<Public>, String> {
    let bn = |b: &[u8]| BigNum::from_slice(b).map_err(|e| e.to_string());
    let rsa = Rsa::from_public_components(bn(n)?, bn(e)?).map_err(|e| e.to_string())?;
    PKey::from_rsa(rsa).map_err(|e| e.to_string())
}

fn jwk_ec(nid: Nid, x: &[u8], y: &[u8]) -> Result<PKey<Public>, openssl::error::ErrorStack> {
    let group = EcGroup::from_curve_name(nid)?;
    let ec = EcKey::from_public_key_affine_coordinates(
        &group,
        &*BigNum::from_slice(x)?,
        &*BigNum::from_slice(y)?,
    )?;
    ec.check_key()?;
    PKey::from_ec_key(ec)
}

/// A JWK's certificate thumbprints: computed from `x5c[0]` (standard base64 DER, RFC 7517
/// §4.7) when present, after checking the certificate holds this very key; else decoded from
/// `x5t` / `x5t#S256` (base64url, RFC 7517 §4.8-4.9).
type Thumbprints = (Option<[u8; 20]>, Option<[u8; 32]>);
fn jwk_thumbprints(jwk: &serde_json::Value, key: &PKey<Public>) -> Result<Thumbprints, String> {
    if let Some(chain) = jwk.get("x5c") {
        let first = chain
            .as_array()
            .and_then(|c| c.first())
            .and_then(serde_json::Value::as_str)
            .ok_or("\"x5c\" is not a list of base64 certificates")?;
        let der = base64ct::Base64::decode_vec(first).map_err(|_| "\"x5c\"[0] is not base64")?;
        let cert = X509::from_der(&der).map_err(|_| "\"x5c\"[0] is not a DER X.509 certificate")?;
        let cert_key = cert.public_key().map_err(|_| "\"x5c\"[0]'s public key is unreadable")?;
        if !cert_key.public_eq(key) {
            return Err("\"x5c\"[0] certifies another key than the JWK's".into());
        }
        return Ok((Some(openssl::sha::sha1(&der)), Some(Sha256::digest(&der).into())));
    }
    let digest = |name: &str| -> Result<Option<Vec<u8>>, String> {
        match jwk.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(t)) => Base64UrlUnpadded::decode_vec(t)
                .map(Some)
                .map_err(|_| format!("\"{name}\" is not unpadded base64url")),
            Some(_) => Err(format!("\"{name}\" is not a string")),
        }
    };
    let x5t = match digest("x5t")? {
        None => None,
        Some(d) => Some(<[u8; 20]>::try_from(d.as_slice()).map_err(|_| "\"x5t\" is not a SHA-1 digest")?),
    };
    let x5t_s256 = match digest("x5t#S256")? {
        None => None,
        Some(d) => {
            Some(<[u8; 32]>::try_from(d.as_slice()).map_err(|_| "\"x5t#S256\" is not a SHA-256 digest")?)
        }
    };
    Ok((x5t, x5t_s256))
}

fn write_new(path: &Path, mode: u32, contents: &[u8]) -> Result<(), KeyError> {
    let io = |e| KeyError::Io(path.to_owned(), e);
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_owned())
            } else {
                KeyError::Io(path.to_owned(), e)
            }
        })?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Writes `PREFIX.key` (PKCS#8 PEM, mode 0600) and `PREFIX.pub` (SPKI PEM, mode 0644).
/// Existing files are never overwritten. Returns the two paths.
pub fn write_key_pair(prefix: &Path, key: &SigningKey) -> Result<(PathBuf, PathBuf), KeyError> {
    let mut key_path = prefix.as_os_str().to_owned();
    key_path.push(".key");
    let mut pub_path = prefix.as_os_str().to_owned();
    pub_path.push(".pub");
    let (key_path, pub_path) = (PathBuf::from(key_path), PathBuf::from(pub_path));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    // PKCS#8 v1 (seed only), the form `openssl genpkey` writes: OpenSSL 3.0 refuses the v2 form
    // (with the public key) that `SigningKey::to_pkcs8_pem` would produce.
    let seed = zeroize::Zeroizing::new(key.to_bytes());
    let private = ed25519_dalek::pkcs8::KeypairBytes { secret_key: *seed, public_key: None }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Format(key_path.clone(), e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Format(pub_path.clone(), e.to_string()))?;
    write_new(&key_path, 0o600, private.as_bytes())?;
    write_new(&pub_path, 0o644, public.as_bytes())?;
    Ok((key_path, pub_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8037_thumbprint() {
        // RFC 8037 appendix A.3: the thumbprint of the A.2 public key.
        let x = Base64UrlUnpadded::decode_vec("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .expect("vector is valid base64url");
        let key = VerifyingKey::from_bytes(&x.try_into().expect("32 bytes")).expect("valid point");
        assert_eq!(jwk_thumbprint(&key), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn thumbprints_of_jwks_keys() {
        // RFC 7638 §3.1 (RSA) and RFC 8037 A.3 (Ed25519), read as JWKS members and thumbprinted
        // from the OpenSSL key the builder keeps.
        let rsa = r#"{"keys":[{"kty":"RSA","alg":"RS256","kid":"2011-04-29","e":"AQAB","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}]}"#;
        let k = parse_jwks(rsa.as_bytes()).expect("RFC 7638 key");
        assert_eq!((k[0].kid.as_deref(), k[0].alg.as_deref()), (Some("2011-04-29"), Some("RS256")));
        assert_eq!(
            public_jwk_thumbprint(&k[0].key).expect("thumbprint"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        let okp = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let k = parse_jwks(okp.as_bytes()).expect("RFC 8037 key");
        assert_eq!(
            public_jwk_thumbprint(&k[0].key).expect("thumbprint"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // The same key as SPKI PEM.
        let pem = k[0].key.public_key_to_pem().expect("pem");
        let f = parse_issuer_pem(&pem).expect("PEM");
        assert_eq!(
            public_jwk_thumbprint(&f.key).expect("thumbprint"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert!(
            parse_issuer_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .expect_err("private")
                .contains("private key")
        );
    }

    #[test]
    fn jwks_refusals() {
        let ok = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let keys = parse_jwks(ok.as_bytes()).expect("valid JWKS");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        let cases = [
            (r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, "private key material"),
            (r#"{"keys":[{"kty":"oct"}]}"#, "unsupported key type"),
            (r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}"#, "\"n\" is not unpadded base64url"),
            (r#"{"keys":[{"kty":"RSA","use":"enc","n":"x","e":"AQAB"}]}"#, "no signing keys"),
            (r#"{"keys":[{"kty":"RSA","use":"tls","n":"AQAB","e":"AQAB"}]}"#, "neither"),
            (r#"{"keys":[{"kty":"EC","crv":"P-521","x":"AQAB","y":"AQAB"}]}"#, "unsupported curve"),
            (r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"}]}"#, "32 bytes each"),
            (
                r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
                "not a point on the curve",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
                "unsupported curve",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
                "private key",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
                "not 32 bytes",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUR"}]}"#,
                "not unpadded base64url",
            ),
            // The identity point: small order.
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
                "weak",
            ),
            (r#"{"keys":[]}"#, "no keys"),
            ("not json", "not JSON"),
        ];
        for (doc, want) in cases {
            let err = parse_jwks(doc.as_bytes()).expect_err(doc);
            assert!(err.contains(want), "{doc}: {err} does not mention {want}");
        }
    }

    #[test]
    fn key_pair_round_trip() {
        let dir = std::env::temp_dir().join(format!("gatelet-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let key = generate().expect("randomness");
        let (k, p) = write_key_pair(&dir.join("t"), &key).expect("written");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&k).expect("key file").permissions().mode() & 0o777, 0o600);
        assert_eq!(load_signing_key(&k).expect("reads back").to_bytes(), key.to_bytes());
        assert_eq!(load_verifying_key(&p).expect("reads back"), key.verifying_key());
        assert!(matches!(write_key_pair(&dir.join("t"), &key), Err(KeyError::Exists(_))));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
