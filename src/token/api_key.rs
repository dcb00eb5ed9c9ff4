//! WSO2 API keys: self-contained JWTs read from an API's `apiKey` locations (a header or a query
//! parameter) instead of `Authorization: Bearer`. Pure, like the rest of the validator: the key,
//! the route, the caller's address, its `Referer` and a time in; a [`Principal`] or a
//! [`TokenError`] out.
//!
//! What differs from a bearer token:
//! - the issuer must be an API-key issuer (`api_keys = true` in the project); a bearer token
//!   from an API-key-only issuer (`tokens = false`) is refused, and so is an API key presented
//!   as a bearer token (`token_type: apiKey`, or a key without `exp`);
//! - the API must be in `subscribedAPIs`, whatever the issuer's `validate_subscription`, as WSO2
//!   checks API keys;
//! - `permittedIP` and `permittedReferer` restrict where the key may be used from (403, 900908,
//!   WSO2's "Resource forbidden");
//! - no scopes: an API key carries none, and an operation's scopes are for bearer tokens;
//! - a key without `exp` (API Manager 3.x, "infinite validity") is accepted when it has a `jti`,
//!   so that the project's `[revoked] jti` can still withdraw it.

use std::net::IpAddr;

use super::{Principal, TokenError, Validator, claims};
use crate::bundle::model::Api;

impl Validator {
    /// Validates a WSO2 API key (a self-contained JWT read from one of the API's `apiKey`
    /// locations) for one request: the JWT rules of [`Validator::verify`] (cached the same way),
    /// an issuer that issues API keys, the API in `subscribedAPIs` whatever the issuer's
    /// `validate_subscription` (as WSO2 checks API keys), then the key's own restrictions:
    /// `permittedIP` against `client_ip` (the caller as gatelet determines it, behind
    /// `server.trusted_proxies`) and `permittedReferer` against the `Referer` header.
    pub fn validate_api_key(
        &self,
        key: &str,
        api: &Api,
        client_ip: Option<IpAddr>,
        referer: Option<&str>,
        now: u64,
    ) -> Result<Principal, TokenError> {
        let verified = self.verify(key, now)?;
        if !verified.api_key_ok {
            return Err(TokenError::NotAnApiKey);
        }
        let subscription = verified
            .subscribed_apis
            .iter()
            .position(|s| s.name == api.name && (s.version == api.version || s.version == "*"))
            .ok_or(TokenError::NotSubscribed)?;
        if !claims::ip_permitted(&verified.permitted_ips, client_ip) {
            return Err(TokenError::IpNotPermitted);
        }
        if !claims::referer_permitted(&verified.permitted_referers, referer) {
            return Err(TokenError::RefererNotPermitted);
        }
        Ok(Principal {
            token: verified,
            subscription: Some(subscription),
            default_tier: self.default_subscription_tier.clone(),
        })
    }
}

/// The value of query parameter `name` in `query` (without the `?`), percent-decoded; the first
/// one when repeated. `None` when absent or not UTF-8 once decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some(name)).then(|| percent_decode(v)).flatten()
    })
}

/// `query` without every parameter whose (decoded) name is one of `names`: an API key in the
/// query string never reaches the backend. Other parameters keep their order and spelling.
pub fn strip_query_params(query: &str, names: &[&str]) -> String {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            // A name that does not decode is not one of ours, but is dropped anyway if it could
            // hide one (an invalid escape next to a key name): keep only what decodes.
            match percent_decode(k) {
                Some(k) => !names.contains(&k.as_str()),
                None => false,
            }
        })
        .collect();
    kept.join("&")
}

/// RFC 3986 percent-decoding (`+` is left as it is: JWTs never contain one). `None` for a
/// broken escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::model::{
        ApiKeyLocation, EndpointKind, Endpoints, Issuer, IssuerKey, Manifest, Method, Operation, Policy,
        PolicyLevel, ScopeRule,
    };
    use crate::token::{ValidatorConfig, mint};
    use ed25519_dalek::SigningKey;
    use serde_json::{Map, Value, json};

    const NOW: u64 = 1_800_000_000;
    const APIM: &str = "https://apim.example/oauth2/token";
    const IDP: &str = "https://idp.example/";
    const KEYS: &str = "https://keys.example/";

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn issuer(name: &str, iss: &str, k: &SigningKey, tokens: bool, api_keys: bool) -> Issuer {
        Issuer {
            name: name.into(),
            issuer: iss.into(),
            audience: None,
            keys: vec![IssuerKey::ed25519("k".into(), k.verifying_key().to_bytes())],
            validate_subscription: false,
            algorithms: Vec::new(),
            tokens,
            api_keys,
        }
    }

    fn api() -> Api {
        Api {
            name: "Pets".into(),
            version: "1.0.0".into(),
            context: "/pets/1.0.0".into(),
            tier: None,
            disable_security: false,
            auth_header: None,
            production: Some(Endpoints {
                kind: EndpointKind::Single,
                urls: vec![crate::url::HttpUrl::parse("http://127.0.0.1:8081").expect("valid")],
                ..Endpoints::default()
            }),
            sandbox: None,
            cors: None,
            operations: vec![Operation {
                method: Method::Get,
                path: "/pets".into(),
                tier: None,
                disable_security: false,
                scopes: Vec::new(),
                production: None,
                sandbox: None,
                bearer: true,
                api_key: true,
            }],
            https_only: false,
            api_key_locations: vec![ApiKeyLocation { query: false, name: "apikey".into() }],
        }
    }

    fn manifest(default_tier: Option<&str>) -> Manifest {
        let m = Manifest {
            label: "t".into(),
            serial: 1,
            created_at: NOW - 100,
            issuers: vec![
                issuer("apim", APIM, &key(1), true, true),
                issuer("idp", IDP, &key(2), true, false),
                issuer("keys", KEYS, &key(3), false, true),
            ],
            policies: vec![Policy {
                level: PolicyLevel::Subscription,
                name: "Default".into(),
                requests: 500,
                window_s: 60,
                stop_on_quota_reach: true,
            }],
            apis: vec![api()],
            revoked_jti: vec!["revoked-key".into()],
            scope_rule: ScopeRule::AnyOf,
            default_subscription_tier: default_tier.map(str::to_owned),
        };
        m.check().expect("valid manifest");
        m
    }

    /// A WSO2 API Manager 3.x API key's claims (the shape of the one in WSO2's documentation).
    fn wso2_key(iss: &str) -> Map<String, Value> {
        json!({
            "iss": iss, "sub": "admin@carbon.super", "jti": "5f3c-key", "iat": NOW - 10,
            "exp": NOW + 3600, "keytype": "PRODUCTION", "token_type": "apiKey",
            "application": {"owner": "admin", "tier": "Unlimited", "name": "DefaultApplication", "id": 1,
                            "uuid": "null"},
            "tierInfo": {"Gold": {"stopOnQuotaReach": true, "spikeArrestLimit": 0, "spikeArrestUnit": null}},
            "subscribedAPIs": [{"subscriberTenantDomain": "carbon.super", "name": "Pets",
                "context": "/pets/1.0.0", "publisher": "admin", "version": "1.0.0", "subscriptionTier": "Gold"}],
            "permittedIP": "", "permittedReferer": ""
        })
        .as_object()
        .expect("object")
        .clone()
    }

    fn signed(k: &SigningKey, claims: &Map<String, Value>) -> String {
        mint::sign(k, "k", claims).expect("signs")
    }

    fn with(mut c: Map<String, Value>, k: &str, v: Value) -> Map<String, Value> {
        c.insert(k.into(), v);
        c
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn check(v: &Validator, key: &str) -> Result<Principal, TokenError> {
        v.validate_api_key(key, &api(), Some(LOCAL), None, NOW)
    }

    #[test]
    fn a_wso2_api_key_is_accepted_with_its_subscription_tier() {
        let v = Validator::new(&manifest(None), &ValidatorConfig::default());
        let p = check(&v, &signed(&key(1), &wso2_key(APIM))).expect("valid key");
        assert_eq!(p.subscription_tier(), Some("Gold"));
        assert_eq!(p.application_tier(), Some("Unlimited"));
        assert_eq!(p.token().application.as_ref().and_then(|a| a.id.as_deref()), Some("1"));
        // From an API-key-only issuer too.
        assert!(check(&v, &signed(&key(3), &wso2_key(KEYS))).is_ok());
    }

    #[test]
    fn roles_are_kept_apart() {
        let v = Validator::new(&manifest(None), &ValidatorConfig::default());
        let a = api();
        let op = &a.operations[0];
        // A JWT of an issuer that issues no API keys is not an API key ...
        let idp_token = signed(&key(2), &with(wso2_key(IDP), "token_type", json!("Bearer")));
        assert_eq!(check(&v, &idp_token).map(drop), Err(TokenError::NotAnApiKey));
        assert!(v.validate(&idp_token, &a, op, NOW).is_ok());
        // ... an API-key-only issuer's JWT is not a bearer token ...
        let only_key = signed(&key(3), &with(wso2_key(KEYS), "token_type", json!("Bearer")));
        assert_eq!(v.validate(&only_key, &a, op, NOW).map(drop), Err(TokenError::ApiKeyAsBearer));
        // ... and an API key is not a bearer token, even from an issuer of both.
        let apim_key = signed(&key(1), &wso2_key(APIM));
        assert_eq!(v.validate(&apim_key, &a, op, NOW).map(drop), Err(TokenError::ApiKeyAsBearer));
        let apim_token = signed(&key(1), &with(wso2_key(APIM), "token_type", json!("Bearer")));
        assert!(v.validate(&apim_token, &a, op, NOW).is_ok());
        // An issuer of both: the access token is not an API key (it would skip the scopes an
        // operation asks of tokens), whether it says so or looks like one (a `consumerKey`, or
        // no `application`).
        assert_eq!(check(&v, &apim_token).map(drop), Err(TokenError::NotAnApiKey));
        let mut untyped = wso2_key(APIM);
        untyped.remove("token_type");
        let access = signed(&key(1), &with(untyped.clone(), "consumerKey", json!("c0nsum3r")));
        assert_eq!(check(&v, &access).map(drop), Err(TokenError::NotAnApiKey));
        assert!(v.validate(&access, &a, op, NOW).is_ok());
        let mut no_app = untyped.clone();
        no_app.remove("application");
        assert_eq!(check(&v, &signed(&key(1), &no_app)).map(drop), Err(TokenError::NotAnApiKey));
        // API Manager 3.0/3.1 keys carry no `token_type`: an `application` and no `consumerKey`.
        let old_key = signed(&key(1), &untyped);
        assert!(check(&v, &old_key).is_ok());
        assert_eq!(v.validate(&old_key, &a, op, NOW).map(drop), Err(TokenError::ApiKeyAsBearer));
        // A JWT restricted by `permittedIP` or `permittedReferer` is never a bearer token: only
        // the API-key path enforces those.
        for (claim, value) in [("permittedIP", "192.0.2.0/24"), ("permittedReferer", "example.com")] {
            let restricted = signed(
                &key(2),
                &with(with(wso2_key(IDP), "token_type", json!("Bearer")), claim, json!(value)),
            );
            assert_eq!(
                v.validate(&restricted, &a, op, NOW).map(drop),
                Err(TokenError::ApiKeyAsBearer),
                "{claim}"
            );
        }
        assert_eq!(TokenError::ApiKeyAsBearer.fault_code(), 900_901);
        assert_eq!(TokenError::NotAnApiKey.http_status(), 401);
    }

    #[test]
    fn the_api_must_be_subscribed_whatever_the_issuer_says() {
        let v = Validator::new(&manifest(Some("Default")), &ValidatorConfig::default());
        let other = with(wso2_key(APIM), "subscribedAPIs", json!([{"name": "Other", "version": "1.0.0"}]));
        assert_eq!(check(&v, &signed(&key(1), &other)).map(drop), Err(TokenError::NotSubscribed));
        let none = {
            let mut c = wso2_key(APIM);
            c.remove("subscribedAPIs");
            c
        };
        assert_eq!(check(&v, &signed(&key(1), &none)).map(drop), Err(TokenError::NotSubscribed));
        // Listed without a tier: the bundle's default subscription tier.
        let no_tier = with(wso2_key(APIM), "subscribedAPIs", json!([{"name": "Pets", "version": "*"}]));
        assert_eq!(check(&v, &signed(&key(1), &no_tier)).expect("ok").subscription_tier(), Some("Default"));
    }

    #[test]
    fn permitted_ip() {
        let v = Validator::new(&manifest(None), &ValidatorConfig::default());
        let a = api();
        let k = signed(
            &key(1),
            &with(wso2_key(APIM), "permittedIP", json!("10.1.2.3, 192.0.2.0/24,2001:db8::/32")),
        );
        for ok in ["192.0.2.7", "10.1.2.3", "2001:db8::1", "::ffff:192.0.2.200"] {
            let ip: IpAddr = ok.parse().expect("ip");
            assert!(v.validate_api_key(&k, &a, Some(ip), None, NOW).is_ok(), "{ok}");
        }
        // A caller a trusted proxy did not name is unknown: no restriction is met.
        assert_eq!(v.validate_api_key(&k, &a, None, None, NOW).map(drop), Err(TokenError::IpNotPermitted));
        assert!(check(&v, &signed(&key(1), &wso2_key(APIM))).is_ok(), "an unrestricted key needs no address");
        for bad in ["10.1.2.4", "192.0.3.1", "2001:db9::1", "::1"] {
            let ip: IpAddr = bad.parse().expect("ip");
            assert_eq!(
                v.validate_api_key(&k, &a, Some(ip), None, NOW).map(drop),
                Err(TokenError::IpNotPermitted),
                "{bad}"
            );
        }
        assert_eq!(
            (TokenError::IpNotPermitted.http_status(), TokenError::IpNotPermitted.fault_code()),
            (403, 900_908)
        );
        for broken in ["10.0.0.300", "10.0.0.0/33", "example.com", "::/129", "10.0.0.1/x"] {
            let k = signed(&key(1), &with(wso2_key(APIM), "permittedIP", json!(broken)));
            assert_eq!(check(&v, &k).map(drop), Err(TokenError::BadClaim("permittedIP")), "{broken}");
        }
    }

    #[test]
    fn permitted_referer() {
        let v = Validator::new(&manifest(None), &ValidatorConfig::default());
        let a = api();
        let k = signed(
            &key(1),
            &with(wso2_key(APIM), "permittedReferer", json!("www.example.com/shop/*, *.partner.example/*")),
        );
        let at = |r: Option<&str>| v.validate_api_key(&k, &a, Some(LOCAL), r, NOW).map(drop);
        assert_eq!(at(Some("https://www.example.com/shop/cart")), Ok(()));
        assert_eq!(at(Some("http://app.partner.example/x")), Ok(()));
        assert_eq!(at(Some("https://www.example.com/admin")), Err(TokenError::RefererNotPermitted));
        assert_eq!(
            at(Some("https://evil.example/www.example.com/shop/")),
            Err(TokenError::RefererNotPermitted)
        );
        assert_eq!(at(None), Err(TokenError::RefererNotPermitted));
        // A wildcard never crosses from the path into the host, nor from the host into the path.
        assert_eq!(at(Some("https://evil.test/x.partner.example/")), Err(TokenError::RefererNotPermitted));
        assert_eq!(at(Some("https://evil.test/.partner.example/")), Err(TokenError::RefererNotPermitted));
        assert_eq!(at(Some("https://app.partner.example.evil.test/")), Err(TokenError::RefererNotPermitted));
        assert_eq!(
            at(Some("https://www.example.com@evil.test/shop/x")),
            Err(TokenError::RefererNotPermitted)
        );
        assert_eq!(at(Some("https://APP.Partner.Example/x")), Ok(()));
        let ok = |p: &str, r: &str| claims::referer_permitted(&[p.into()], Some(r));
        assert!(claims::referer_permitted(&[], None));
        assert!(ok("a*b*c", "aXXbYYc"));
        assert!(!ok("a*b*c", "aXXbYYcd"));
        assert!(ok("example.com", "https://example.com/any/page?x=1"), "no path in the pattern: any path");
        assert!(!ok("example.com", "https://example.com.evil.test/"));
        assert!(!ok("https://example.com/*", "http://example.com/x"), "the scheme, when named, must match");
        assert!(ok("example.com:8443/*", "https://example.com:8443/x"));
        assert!(!ok("example.com:8443/*", "https://example.com:9443/x"));
        assert!(!ok("*", ""), "a referer with no host meets nothing");
        // Linear in the input: a pattern of many stars against a long referer returns at once.
        let long = "a".repeat(8000);
        assert!(!claims::referer_permitted(&["*a*a*a*a*a*a*a*a*b".into()], Some(&long)));
    }

    #[test]
    fn an_endless_key_needs_a_jti_and_is_never_a_bearer_token() {
        let v = Validator::new(&manifest(None), &ValidatorConfig::default());
        let endless = {
            let mut c = wso2_key(APIM);
            c.remove("exp");
            c
        };
        let k = signed(&key(1), &endless);
        assert!(v.validate_api_key(&k, &api(), Some(LOCAL), None, u64::MAX / 2).is_ok());
        let a = api();
        assert_eq!(v.validate(&k, &a, &a.operations[0], NOW).map(drop), Err(TokenError::ApiKeyAsBearer));
        let mut no_jti = endless.clone();
        no_jti.remove("jti");
        assert_eq!(check(&v, &signed(&key(1), &no_jti)).map(drop), Err(TokenError::MissingClaim("exp")));
        // Revocable.
        let revoked = with(endless, "jti", json!("revoked-key"));
        assert_eq!(check(&v, &signed(&key(1), &revoked)).map(drop), Err(TokenError::Revoked));
        // A bearer-only issuer's token without exp is refused as before.
        let mut idp = wso2_key(IDP);
        idp.remove("exp");
        assert_eq!(
            v.validate(&signed(&key(2), &idp), &a, &a.operations[0], NOW).map(drop),
            Err(TokenError::MissingClaim("exp"))
        );
    }

    #[test]
    fn default_subscription_tier_for_tokens_without_subscriptions() {
        let a = api();
        let mut c = wso2_key(IDP);
        c.remove("subscribedAPIs");
        c.insert("token_type".into(), json!("Bearer"));
        let t = signed(&key(2), &c);
        let v = Validator::new(&manifest(Some("Default")), &ValidatorConfig::default());
        assert_eq!(
            v.validate(&t, &a, &a.operations[0], NOW).expect("ok").subscription_tier(),
            Some("Default")
        );
        let v = Validator::new(&manifest(None), &ValidatorConfig::default());
        assert_eq!(v.validate(&t, &a, &a.operations[0], NOW).expect("ok").subscription_tier(), None);
    }

    #[test]
    fn query_parameters() {
        assert_eq!(query_param("a=1&apikey=k.e.y&b=2", "apikey").as_deref(), Some("k.e.y"));
        assert_eq!(query_param("api%6Bey=k%2Ey", "apikey").as_deref(), Some("k.y"));
        assert_eq!(query_param("a=1", "apikey"), None);
        assert_eq!(query_param("apikey", "apikey").as_deref(), Some(""));
        assert_eq!(query_param("apikey=%zz", "apikey"), None);
        assert_eq!(strip_query_params("a=1&apikey=x&b=2&apikey=y", &["apikey"]), "a=1&b=2");
        assert_eq!(strip_query_params("api%6Bey=x&c", &["apikey"]), "c");
        assert_eq!(strip_query_params("apikey=x", &["apikey"]), "");
        assert_eq!(strip_query_params("a=%25&b=%zz", &["apikey"]), "a=%25&b=%zz");
        assert_eq!(strip_query_params("%zzapikey=x&c", &["apikey"]), "c");
        assert_eq!(strip_query_params("q=a+b", &[]), "q=a+b");
    }
}
