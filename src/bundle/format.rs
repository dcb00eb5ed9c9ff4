//! Bundle file format v2 (and v1, read only): framing, signing and the one verification path.
//!
//! ```text
//! offset  size  field
//!      0     8  magic            89 47 4C 42 0D 0A 1A 0A   ("\x89GLB\r\n\x1a\n")
//!      8     2  format version   u16 little-endian, 2 (1 is still read)
//!     10     2  flags            u16 little-endian, 0 (no flag is defined)
//!     12     8  signer key id    SHA-256(raw public key)[0..8]
//!     20     4  payload length   u32 little-endian, N <= MAX_PAYLOAD
//!     24     N  payload          postcard-encoded Manifest
//!   24+N    64  signature        Ed25519 over DOMAIN || bytes[0 .. 24+N]
//! ```
//!
//! The full byte-level specification is `bundle-format/SPEC.md`.

use std::fmt;
use std::io::Read;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::model::{Invalid, Manifest};
use crate::keys::{self, KEY_ID_LEN};

/// File magic. The high bit, CR LF, ^Z and LF catch text-mode and 7-bit mangling in transit.
pub const MAGIC: [u8; 8] = *b"\x89GLB\r\n\x1a\n";
/// The format version this gatelet writes.
pub const VERSION: u16 = 2;
/// The format versions this gatelet reads: version 1 bundles keep working after an upgrade.
pub const READ_VERSIONS: [u16; 2] = [1, 2];
/// Header length in bytes.
pub const HEADER_LEN: usize = 24;
/// Signature length in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Largest payload accepted: 16 MiB. A 1,000-API bundle is a few hundred KiB; the cap keeps a
/// hostile length from making a small board allocate.
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Largest file accepted.
pub const MAX_FILE: u64 = (HEADER_LEN + SIGNATURE_LEN) as u64 + MAX_PAYLOAD as u64;
/// Domain separation: the signature covers this prefix, then header and payload, so a bundle
/// signature can never be replayed as a signature over anything else the same key signs (nor a
/// version-1 signature as a version-2 one).
pub const DOMAIN: &[u8] = b"gatelet bundle v2\0";
/// Version 1's domain prefix.
pub const DOMAIN_V1: &[u8] = b"gatelet bundle v1\0";

fn domain(version: u16) -> &'static [u8] {
    if version == 1 { DOMAIN_V1 } else { DOMAIN }
}

/// Why a bundle was refused. Every variant but `Io` is the bundle's (or its signer's) fault.
#[derive(Debug)]
pub enum BundleError {
    /// The file could not be read.
    Io(std::io::Error),
    /// Shorter than a header and a signature, or shorter than its declared length.
    Truncated { expected: u64, actual: u64 },
    /// Longer than its declared length.
    TrailingBytes(u64),
    /// Not a gatelet bundle.
    BadMagic,
    /// A format version this reader does not know.
    UnsupportedVersion(u16),
    /// Flag bits this reader does not know.
    UnknownFlags(u16),
    /// Declared (or file) length above the limit, refused before allocating.
    TooLarge(u64),
    /// Signed by a key that is not among the trusted keys.
    UntrustedKey([u8; KEY_ID_LEN]),
    /// The signature does not verify: the bytes were changed, or it was signed by another key
    /// that happens to share the key id.
    BadSignature,
    /// Signed, but the payload does not decode as a v1 manifest.
    Decode(String),
    /// Signed and decoded, but breaks a semantic rule.
    Invalid(Invalid),
}

impl BundleError {
    /// A stable one-word kind, used by the test vectors and in metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            BundleError::Io(_) => "io",
            BundleError::Truncated { .. } => "truncated",
            BundleError::TrailingBytes(_) => "trailing-bytes",
            BundleError::BadMagic => "bad-magic",
            BundleError::UnsupportedVersion(_) => "unsupported-version",
            BundleError::UnknownFlags(_) => "unknown-flags",
            BundleError::TooLarge(_) => "too-large",
            BundleError::UntrustedKey(_) => "untrusted-key",
            BundleError::BadSignature => "bad-signature",
            BundleError::Decode(_) => "decode",
            BundleError::Invalid(_) => "invalid",
        }
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::Io(e) => write!(f, "cannot read bundle: {e}"),
            BundleError::Truncated { expected, actual } => {
                write!(f, "truncated bundle: {actual} bytes, expected {expected}")
            }
            BundleError::TrailingBytes(n) => write!(f, "{n} trailing bytes after the signature"),
            BundleError::BadMagic => f.write_str("not a gatelet bundle (bad magic)"),
            BundleError::UnsupportedVersion(v) => {
                write!(f, "unsupported bundle format version {v} (this gatelet reads version {VERSION})")
            }
            BundleError::UnknownFlags(x) => write!(f, "unknown header flags {x:#06x}"),
            BundleError::TooLarge(n) => {
                write!(f, "bundle payload of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit")
            }
            BundleError::UntrustedKey(id) => {
                write!(f, "signed by key {} which is not a trusted key", keys::hex(id))
            }
            BundleError::BadSignature => {
                f.write_str("bad signature: the bundle was altered or not signed by the trusted key")
            }
            BundleError::Decode(e) => write!(f, "signed payload does not decode: {e}"),
            BundleError::Invalid(e) => write!(f, "invalid bundle: {e}"),
        }
    }
}

impl std::error::Error for BundleError {}

/// The parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub flags: u16,
    pub key_id: [u8; KEY_ID_LEN],
    pub payload_len: u32,
}

/// A verified bundle. The only constructor is [`verify`]: holding one means the signature,
/// framing, decoding and every semantic rule were checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    manifest: Manifest,
    key_id: [u8; KEY_ID_LEN],
    payload_sha256: [u8; 32],
    size: usize,
}

impl Bundle {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn serial(&self) -> u64 {
        self.manifest.serial
    }
    /// Id of the trusted key that signed it.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        self.key_id
    }
    /// SHA-256 of the payload: with the serial, the anti-rollback mark.
    pub fn payload_sha256(&self) -> [u8; 32] {
        self.payload_sha256
    }
    /// Size of the file in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Reads and checks the fixed header and the overall length. Nothing is allocated.
pub fn parse_header(bytes: &[u8]) -> Result<Header, BundleError> {
    let min = (HEADER_LEN + SIGNATURE_LEN) as u64;
    let actual = bytes.len() as u64;
    // Magic first, so a file that is not a bundle says so whatever its length.
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(BundleError::BadMagic);
    }
    if actual < min {
        return Err(BundleError::Truncated { expected: min, actual });
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let version = u16_at(8);
    if !READ_VERSIONS.contains(&version) {
        return Err(BundleError::UnsupportedVersion(version));
    }
    let flags = u16_at(10);
    if flags != 0 {
        return Err(BundleError::UnknownFlags(flags));
    }
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&bytes[12..20]);
    let payload_len = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    if payload_len > MAX_PAYLOAD {
        return Err(BundleError::TooLarge(u64::from(payload_len)));
    }
    let expected = min + u64::from(payload_len);
    if actual < expected {
        return Err(BundleError::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(BundleError::TrailingBytes(actual - expected));
    }
    Ok(Header { version, flags, key_id, payload_len })
}

fn signed_message(version: u16, signed: &[u8]) -> Vec<u8> {
    let domain = domain(version);
    let mut msg = Vec::with_capacity(domain.len() + signed.len());
    msg.extend_from_slice(domain);
    msg.extend_from_slice(signed);
    msg
}

/// Checks a manifest, encodes it and signs it: the bytes of a bundle file.
pub fn seal(manifest: &Manifest, key: &SigningKey) -> Result<Vec<u8>, BundleError> {
    manifest.check().map_err(BundleError::Invalid)?;
    let payload = postcard::to_stdvec(manifest).map_err(|e| BundleError::Decode(e.to_string()))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or(BundleError::TooLarge(payload.len() as u64))?;
    Ok(frame_and_sign(&payload, len, key))
}

fn frame_and_sign(payload: &[u8], len: u32, key: &SigningKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&keys::key_id(&key.verifying_key()));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    let signature = key.sign(&signed_message(VERSION, &out));
    out.extend_from_slice(&signature.to_bytes());
    out
}

/// Frames and signs an arbitrary payload without checking it. For test vectors only (a signed
/// bundle whose content is wrong): nothing in gatelet calls it.
#[doc(hidden)]
pub fn danger_seal_unchecked_payload(payload: &[u8], key: &SigningKey) -> Vec<u8> {
    frame_and_sign(payload, u32::try_from(payload.len()).unwrap_or(u32::MAX), key)
}

/// The one verification path, used by every command and by the daemon:
/// header and limits → key id → `verify_strict` over the raw bytes → decode → semantic checks.
pub fn verify(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<Bundle, BundleError> {
    let header = parse_header(bytes)?;
    let key = trusted
        .iter()
        .find(|k| keys::key_id(k) == header.key_id)
        .ok_or(BundleError::UntrustedKey(header.key_id))?;
    let signed_len = HEADER_LEN + header.payload_len as usize;
    let (signed, sig) = bytes.split_at(signed_len);
    let sig: [u8; SIGNATURE_LEN] = sig.try_into().map_err(|_| BundleError::BadSignature)?;
    // verify_strict: refuses non-canonical S (malleability) and small-order keys or R, so one
    // bundle has one valid signature and a weak key cannot validate a forged one.
    key.verify_strict(&signed_message(header.version, signed), &Signature::from_bytes(&sig))
        .map_err(|_| BundleError::BadSignature)?;
    let payload = &signed[HEADER_LEN..];
    let manifest = decode_payload(header.version, payload)?;
    manifest.check().map_err(BundleError::Invalid)?;
    Ok(Bundle {
        manifest,
        key_id: header.key_id,
        payload_sha256: Sha256::digest(payload).into(),
        size: bytes.len(),
    })
}

/// Decodes a payload of the header's version, refusing trailing bytes inside it.
fn decode_payload(version: u16, payload: &[u8]) -> Result<Manifest, BundleError> {
    fn take<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, BundleError> {
        let (value, rest) =
            postcard::take_from_bytes::<T>(payload).map_err(|e| BundleError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(BundleError::Decode(format!(
                "{} unread bytes at the end of the payload",
                rest.len()
            )));
        }
        Ok(value)
    }
    if version == 1 { Ok(take::<super::v1::ManifestV1>(payload)?.into()) } else { take::<Manifest>(payload) }
}

/// Decodes without a trusted key, for `bundle inspect`: framing is checked, the signature is
/// not. The result must never be acted upon.
pub fn decode_unverified(bytes: &[u8]) -> Result<(Header, Manifest), BundleError> {
    let header = parse_header(bytes)?;
    let payload = &bytes[HEADER_LEN..HEADER_LEN + header.payload_len as usize];
    Ok((header, decode_payload(header.version, payload)?))
}

/// Reads a bundle file, refusing anything above [`MAX_FILE`] before reading it.
pub fn read_file(path: &Path) -> Result<Vec<u8>, BundleError> {
    let file = std::fs::File::open(path).map_err(BundleError::Io)?;
    let len = file.metadata().map_err(BundleError::Io)?.len();
    if len > MAX_FILE {
        return Err(BundleError::TooLarge(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // `take` guards against a file that grows while it is read.
    file.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(BundleError::Io)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(BundleError::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::model::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest() -> Manifest {
        Manifest {
            label: "t".into(),
            serial: 7,
            created_at: 1_700_000_000,
            issuers: vec![],
            policies: vec![],
            apis: vec![Api {
                name: "A".into(),
                version: "1".into(),
                context: "/a/1".into(),
                tier: None,
                disable_security: true,
                auth_header: None,
                production: Some(Endpoints {
                    kind: EndpointKind::Single,
                    urls: vec![HttpUrl::parse("http://127.0.0.1:1").expect("valid")],
                    timeout_ms: None,
                    retries: 0,
                    basic_auth: None,
                }),
                sandbox: None,
                cors: None,
                operations: vec![Operation {
                    method: Method::Get,
                    path: "/x".into(),
                    tier: None,
                    disable_security: false,
                    scopes: vec![],
                    production: None,
                    sandbox: None,
                    bearer: true,
                    api_key: false,
                }],
                https_only: false,
                api_key_locations: Vec::new(),
            }],
            revoked_jti: vec![],
            scope_rule: ScopeRule::AllOf,
            default_subscription_tier: None,
        }
    }

    #[test]
    fn round_trip_and_every_byte_matters() {
        let k = key(1);
        let bytes = seal(&manifest(), &k).expect("seals");
        let trusted = [k.verifying_key()];
        let b = verify(&bytes, &trusted).expect("verifies");
        assert_eq!(b.manifest(), &manifest());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(verify(&bad, &trusted).is_err(), "flip at byte {i} accepted");
        }
        let err = verify(&bytes, &[key(2).verifying_key()]).expect_err("wrong key");
        assert_eq!(err.kind(), "untrusted-key");
    }

    #[test]
    fn length_limits_before_allocation() {
        let k = key(1);
        let mut bytes = seal(&manifest(), &k).expect("seals");
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(verify(&bytes, &[k.verifying_key()]).expect_err("huge").kind(), "too-large");
        assert_eq!(verify(&bytes[..10], &[]).expect_err("short").kind(), "truncated");
        assert_eq!(verify(b"", &[]).expect_err("empty").kind(), "truncated");
        assert_eq!(verify(b"PK\x03\x04", &[]).expect_err("zip").kind(), "bad-magic");
    }

    #[test]
    fn sealing_refuses_invalid_manifests() {
        let mut m = manifest();
        m.apis[0].tier = Some("Nope".into());
        assert_eq!(seal(&m, &key(1)).expect_err("unknown tier").kind(), "invalid");
        // Two APIs with the same name and version under different contexts.
        let mut m = manifest();
        let mut twin = m.apis[0].clone();
        twin.context = "/b/1".into();
        m.apis.push(twin.clone());
        assert!(
            seal(&m, &key(1))
                .expect_err("same name and version")
                .to_string()
                .contains("same name and version")
        );
        twin.version = "2".into();
        m.apis[1] = twin;
        seal(&m, &key(1)).expect("another version is another API");
        // Templates that differ only by parameter names.
        let mut m = manifest();
        let mut a = m.apis[0].operations[0].clone();
        a.path = "/x/{id}".into();
        let mut b = a.clone();
        b.path = "/x/{name}".into();
        m.apis[0].operations.extend([a.clone(), b]);
        assert!(
            seal(&m, &key(1)).expect_err("shadowed template").to_string().contains("matching the same paths")
        );
        a.method = Method::Delete;
        m.apis[0].operations[2] = a;
        seal(&m, &key(1)).expect("another method is another operation");
    }
}
