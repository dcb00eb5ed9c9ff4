//! What the backend is told about the caller (`[backend_jwt]` of the device configuration):
//! the caller's token as it came (`forward`, the default), nothing (`none`), or a short-lived JWT
//! the device signs itself with WSO2's backend claims (`sign`).
//!
//! Signing costs tens of microseconds (Ed25519) to a millisecond (RSA-2048), so signed JWTs are
//! cached per (credential, API, tier, key type) and reused until shortly before they expire; the
//! cache holds at most [`CACHE_ENTRIES`] entries. Caching never lets one caller's JWT reach
//! another: the key is a SHA-256 of the caller's whole credential and of every input of the
//! claims.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::Signer as _;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::StartError;
use crate::bundle::model::Api;
use crate::config::{BackendJwtConfig, BackendJwtMode};
use crate::token::Principal;

/// Signed JWTs kept for reuse. Each is under 2 KiB, so the cache stays under about 2 MiB.
pub const CACHE_ENTRIES: usize = 1024;

/// Namespace of WSO2's backend claims.
const WSO2: &str = "http://wso2.org/claims/";

enum DeviceKey {
    Ed25519 { key: Box<ed25519_dalek::SigningKey>, kid: String },
    Rsa(openssl::pkey::PKey<openssl::pkey::Private>),
}

struct Cached {
    value: HeaderValue,
    /// Reused while the time is before this: some time before the JWT's `exp`, so that a backend
    /// never receives one about to expire.
    reuse_until: u64,
}

/// The backend-JWT policy of a running gateway, built once at start.
pub struct BackendJwt {
    mode: BackendJwtMode,
    header: HeaderName,
    ttl_s: u64,
    issuer: String,
    key: Option<DeviceKey>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl std::fmt::Debug for BackendJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("BackendJwt").field("mode", &self.mode).field("header", &self.header).finish()
    }
}

impl BackendJwt {
    /// Reads the device key when `mode = "sign"`; a missing or unusable key file is a
    /// configuration error naming the file.
    pub fn new(config: &BackendJwtConfig) -> Result<BackendJwt, StartError> {
        let header = HeaderName::from_bytes(config.header.to_ascii_lowercase().as_bytes()).map_err(|_| {
            StartError(format!("backend_jwt.header = {:?}: not a header name", config.header))
        })?;
        let key = match config.mode {
            BackendJwtMode::Sign => Some(load_key(&config.key)?),
            BackendJwtMode::Forward | BackendJwtMode::None => None,
        };
        Ok(BackendJwt {
            mode: config.mode,
            header,
            ttl_s: config.ttl_s,
            issuer: config.issuer.clone(),
            key,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The header the backend reads.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The header value for one request, or `None` for no header. `credential` is the caller's
    /// token or API key as presented; an API key is never forwarded as it came (it is a
    /// long-lived credential, and one from the query string must never reach the backend).
    pub fn value(
        &self,
        credential: &str,
        api_key: bool,
        principal: &Principal,
        api: &Api,
        now: u64,
    ) -> Option<HeaderValue> {
        match self.mode {
            BackendJwtMode::None => None,
            BackendJwtMode::Forward if api_key => None,
            BackendJwtMode::Forward => HeaderValue::from_str(credential).ok(),
            BackendJwtMode::Sign => self.signed(credential, principal, api, now),
        }
    }

    fn signed(&self, credential: &str, principal: &Principal, api: &Api, now: u64) -> Option<HeaderValue> {
        let token = principal.token();
        let tier = principal.subscription_tier().unwrap_or("");
        let mut h = Sha256::new();
        for part in [credential, &api.context, &api.version, tier, token.key_type.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let id: [u8; 32] = h.finalize().into();
        if let Ok(cache) = self.cache.lock() {
            if let Some(c) = cache.get(&id).filter(|c| now < c.reuse_until) {
                return Some(c.value.clone());
            }
        }
        // Never valid longer than the credential it stands for.
        let exp = now.saturating_add(self.ttl_s).min(token.expires_at);
        let jwt = self.sign(&claims(&self.issuer, principal, api, now, exp))?;
        let value = HeaderValue::from_str(&jwt).ok()?;
        // Reuse for the first four fifths of its life.
        let reuse_until = exp.saturating_sub(exp.saturating_sub(now) / 5);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, c| now < c.reuse_until);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(id, Cached { value: value.clone(), reuse_until });
        }
        Some(value)
    }

    fn sign(&self, claims: &Map<String, Value>) -> Option<String> {
        let key = self.key.as_ref()?;
        let header = match key {
            DeviceKey::Ed25519 { kid, .. } => json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
            DeviceKey::Rsa(_) => json!({"alg": "RS256", "typ": "JWT"}),
        };
        let enc = |v: &Value| Base64UrlUnpadded::encode_string(v.to_string().as_bytes());
        let input = format!("{}.{}", enc(&header), enc(&Value::Object(claims.clone())));
        let sig = match key {
            DeviceKey::Ed25519 { key, .. } => key.sign(input.as_bytes()).to_bytes().to_vec(),
            DeviceKey::Rsa(pkey) => {
                let mut s = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), pkey).ok()?;
                s.update(input.as_bytes()).ok()?;
                s.sign_to_vec().ok()?
            }
        };
        Some(format!("{input}.{}", Base64UrlUnpadded::encode_string(&sig)))
    }

    /// Signed JWTs in the cache.
    pub fn cached(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }
}

/// WSO2's backend claims for `principal` calling `api`. A claim whose value the caller's
/// credential does not give is left out rather than sent empty.
fn claims(issuer: &str, principal: &Principal, api: &Api, now: u64, exp: u64) -> Map<String, Value> {
    let t = principal.token();
    let app = t.application.as_ref();
    let mut c = Map::new();
    c.insert("iss".into(), json!(issuer));
    c.insert("iat".into(), json!(now));
    c.insert("exp".into(), json!(exp));
    c.insert("sub".into(), json!(t.subject));
    // Which of the bundle's issuers vouched for the caller: two issuers may both have a user
    // `admin`, and the backend must be able to tell them apart (`sub`, `enduser` and
    // `subscriber` alone cannot).
    c.insert("idp".into(), json!(t.issuer));
    let mut put = |name: &str, v: Option<&str>| {
        if let Some(v) = v {
            c.insert(format!("{WSO2}{name}"), json!(v));
        }
    };
    // WSO2's subscriber is the application's owner, the user who subscribed.
    put("subscriber", app.and_then(|a| a.owner.as_deref()).or(Some(&t.subject)));
    put("applicationid", app.and_then(|a| a.id.as_deref()));
    put("applicationname", app.and_then(|a| a.name.as_deref()));
    put("applicationtier", app.and_then(|a| a.tier.as_deref()));
    put("apiname", Some(&api.name));
    put("apicontext", Some(&api.context));
    put("version", Some(&api.version));
    put("tier", principal.subscription_tier());
    put("keytype", Some(t.key_type.as_str()));
    put("enduser", Some(&t.subject));
    c
}

/// Most bytes read from a key file (a PEM RSA-8192 key is under 7 KiB).
const MAX_KEY_FILE: u64 = 64 * 1024;

fn load_key(path: &Path) -> Result<DeviceKey, StartError> {
    let at = |why: &str| StartError(format!("backend_jwt.key {}: {why}", path.display()));
    let len = std::fs::metadata(path).map_err(|e| at(&e.to_string()))?.len();
    if len > MAX_KEY_FILE {
        return Err(at("too large for a key file"));
    }
    if let Ok(key) = crate::keys::load_signing_key(path) {
        let kid = crate::keys::jwk_thumbprint(&key.verifying_key());
        return Ok(DeviceKey::Ed25519 { key: Box::new(key), kid });
    }
    let pem = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| at(&e.to_string()))?);
    let pkey = openssl::pkey::PKey::private_key_from_pem(&pem)
        .map_err(|_| at("not a PKCS#8 PEM Ed25519 or RSA private key"))?;
    if pkey.id() != openssl::pkey::Id::RSA {
        return Err(at("not an Ed25519 or RSA private key"));
    }
    if pkey.bits() < crate::bundle::model::MIN_RSA_BITS {
        return Err(at(&format!(
            "RSA key of {} bits; at least {} are required",
            pkey.bits(),
            crate::bundle::model::MIN_RSA_BITS
        )));
    }
    Ok(DeviceKey::Rsa(pkey))
}
