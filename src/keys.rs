//! Ed25519 key files: generation, PEM (PKCS#8 private, SPKI public), JWKS (RFC 8037 OKP keys),
//! and the two key identifiers gatelet uses.
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

/// A public key taken from a JWKS, with the `kid` it was published under (if any).
#[derive(Debug, Clone)]
pub struct JwkKey {
    pub kid: Option<String>,
    pub key: VerifyingKey,
}

/// Reads a JWKS (`{"keys":[...]}`) or a single JWK. Only RFC 8037 `OKP`/`Ed25519` public keys are
/// accepted; a key with private material (`d`) is refused rather than copied into a bundle.
pub fn load_jwks(path: &Path) -> Result<Vec<JwkKey>, KeyError> {
    let bytes = read_limited(path)?;
    parse_jwks(&bytes).map_err(|why| KeyError::Format(path.to_owned(), why))
}

/// The pure part of [`load_jwks`].
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<JwkKey>, String> {
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
        match field("kty") {
            Some("OKP") => {}
            Some(other) => {
                return Err(format!("{at}: unsupported key type {other:?} (only OKP Ed25519 keys)"));
            }
            None => return Err(format!("{at}: missing \"kty\"")),
        }
        match field("crv") {
            Some("Ed25519") => {}
            Some(other) => return Err(format!("{at}: unsupported curve {other:?} (only Ed25519)")),
            None => return Err(format!("{at}: missing \"crv\"")),
        }
        if jwk.get("d").is_some() {
            return Err(format!("{at}: holds a private key (\"d\"); publish public keys only"));
        }
        if let Some(alg) = field("alg") {
            if alg != "EdDSA" && alg != "Ed25519" {
                return Err(format!("{at}: \"alg\" {alg:?} does not fit an Ed25519 key"));
            }
        }
        if let Some(u) = field("use") {
            if u != "sig" {
                return Err(format!("{at}: \"use\" {u:?} is not \"sig\""));
            }
        }
        let x = field("x").ok_or_else(|| format!("{at}: missing \"x\""))?;
        let raw =
            Base64UrlUnpadded::decode_vec(x).map_err(|_| format!("{at}: \"x\" is not unpadded base64url"))?;
        let raw: [u8; 32] = raw.try_into().map_err(|_| format!("{at}: \"x\" is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|_| format!("{at}: \"x\" is not a valid Ed25519 point"))?;
        if key.is_weak() {
            return Err(format!("{at}: weak (small-order) Ed25519 public key refused"));
        }
        out.push(JwkKey { kid, key });
    }
    Ok(out)
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
    fn jwks_refusals() {
        let ok = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let keys = parse_jwks(ok.as_bytes()).expect("valid JWKS");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        let cases = [
            (r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}"#, "unsupported key type"),
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
