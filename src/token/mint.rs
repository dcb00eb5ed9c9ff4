//! `gatelet token mint`: development tokens with the claims a WSO2 API Manager puts in a
//! self-contained token, signed with an issuer's Ed25519 key.
//!
//! The header says `alg: EdDSA` (RFC 8037), not RFC 9864's `Ed25519`: every JWT library we know
//! of reads the former, few read the latter yet, and gatelet accepts both.

use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Map, Value, json};

use super::claims::KeyType;
use super::jws::MAX_TOKEN_LEN;
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

/// Signs `claims` as a compact JWS.
pub fn sign(key: &SigningKey, kid: &str, claims: &Map<String, Value>) -> Result<String, String> {
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let enc = |v: &Value| Base64UrlUnpadded::encode_string(v.to_string().as_bytes());
    let input = format!("{}.{}", enc(&header), enc(&Value::Object(claims.clone())));
    let sig = key.sign(input.as_bytes());
    let token = format!("{input}.{}", Base64UrlUnpadded::encode_string(&sig.to_bytes()));
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "the token would be {} bytes; gatelet refuses tokens over {MAX_TOKEN_LEN}",
            token.len()
        ));
    }
    Ok(token)
}

/// A signed token for `req` at time `now`.
pub fn mint(key: &SigningKey, req: &MintRequest, now: u64, jti: &str) -> Result<String, String> {
    let kid = match &req.kid {
        Some(k) => k.clone(),
        None => keys::jwk_thumbprint(&key.verifying_key()),
    };
    sign(key, &kid, &claims(req, now, jti)?)
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
    fn jti_is_a_random_uuid_v4() {
        let a = random_jti().expect("randomness");
        let b = random_jti().expect("randomness");
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }
}
