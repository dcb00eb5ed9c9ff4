//! The signed offline API bundle: what it holds ([`model`]), how it is framed, signed and
//! verified ([`format`](mod@format)), and its JSON view for `bundle inspect` ([`inspect_json`]).

pub mod format;
pub mod model;
mod v1;

pub use format::{Bundle, BundleError, read_file, seal, verify};
pub use model::Manifest;

use serde_json::{Value, json};

use crate::keys::hex;
use model::{Endpoints, Policy};

fn endpoints_json(ep: &Option<Endpoints>) -> Value {
    match ep {
        None => Value::Null,
        Some(ep) => json!({
            "type": ep.kind.as_str(),
            "urls": ep.urls,
            "timeout_ms": ep.timeout_ms,
            "retries": ep.retries,
            // The password is never printed: inspect output ends up in tickets and logs.
            "basic_auth": ep.basic_auth.as_ref().map(|b| json!({"username": b.username, "password": "(hidden)"})),
        }),
    }
}

fn key_json(k: &model::IssuerKey) -> Value {
    use base64ct::{Base64, Base64UrlUnpadded, Encoding};
    let mut v = json!({"kid": k.kid, "type": k.key.kind(), "alg": k.alg.map(|a| a.as_str())});
    match &k.key {
        model::PublicKey::Ed25519(raw) => v["x"] = json!(Base64UrlUnpadded::encode_string(raw)),
        model::PublicKey::Rsa(der) | model::PublicKey::EcP256(der) | model::PublicKey::EcP384(der) => {
            v["spki"] = json!(Base64::encode_string(der));
        }
    }
    if let Some(t) = &k.x5t {
        v["x5t"] = json!(Base64UrlUnpadded::encode_string(t));
    }
    if let Some(t) = &k.x5t_s256 {
        v["x5t#S256"] = json!(Base64UrlUnpadded::encode_string(t));
    }
    v
}

fn policy_json(p: &Policy) -> Value {
    json!({
        "name": p.name,
        "requests": p.requests,
        "window_s": p.window_s,
        "stop_on_quota_reach": p.stop_on_quota_reach,
    })
}

/// The manifest as JSON, with the header facts beside it. `verified` says whether the signature
/// was checked against a trusted key.
pub fn inspect_json(header: &format::Header, manifest: &Manifest, verified: bool) -> Value {
    let level = |l: model::PolicyLevel| -> Vec<Value> {
        manifest.policies.iter().filter(|p| p.level == l).map(policy_json).collect()
    };
    json!({
        "format_version": header.version,
        "signer_key_id": hex(&header.key_id),
        "signature_verified": verified,
        "label": manifest.label,
        "serial": manifest.serial,
        "created_at": manifest.created_at,
        "scope_rule": manifest.scope_rule.as_str(),
        "default_subscription_tier": manifest.default_subscription_tier,
        "issuers": manifest.issuers.iter().map(|i| json!({
            "name": i.name,
            "issuer": i.issuer,
            "audience": i.audience,
            "validate_subscription": i.validate_subscription,
            "algorithms": i.algorithms.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "tokens": i.tokens,
            "api_keys": i.api_keys,
            "keys": i.keys.iter().map(key_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "policies": {
            "api": level(model::PolicyLevel::Api),
            "application": level(model::PolicyLevel::Application),
            "subscription": level(model::PolicyLevel::Subscription),
        },
        "apis": manifest.apis.iter().map(|a| json!({
            "name": a.name,
            "version": a.version,
            "context": a.context,
            "tier": a.tier,
            "disable_security": a.disable_security,
            "auth_header": a.auth_header,
            "production_endpoints": endpoints_json(&a.production),
            "sandbox_endpoints": endpoints_json(&a.sandbox),
            "cors": a.cors.as_ref().map(|c| json!({
                "allow_origins": c.allow_origins,
                "allow_headers": c.allow_headers,
                "allow_methods": c.allow_methods,
                "allow_credentials": c.allow_credentials,
                "expose_headers": c.expose_headers,
            })),
            "https_only": a.https_only,
            "api_key_locations": a.api_key_locations.iter().map(|l| json!({
                "in": if l.query { "query" } else { "header" },
                "name": l.name,
            })).collect::<Vec<_>>(),
            "operations": a.operations.iter().map(|o| json!({
                "method": o.method.as_str(),
                "path": o.path,
                "tier": o.tier,
                "disable_security": o.disable_security,
                "bearer": o.bearer,
                "api_key": o.api_key,
                "scopes": o.scopes,
                "production_endpoints": endpoints_json(&o.production),
                "sandbox_endpoints": endpoints_json(&o.sandbox),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "revoked_jti": manifest.revoked_jti,
    })
}
