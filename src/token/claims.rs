//! The claims of a verified token, read from the payload with WSO2's self-contained token profile
//! (PRODUCT.md section 4), and the time rules.
//!
//! Types are checked strictly: a claim of the wrong JSON type is refused, not skipped, since
//! skipping a malformed `aud` or `nbf` would turn a restriction into no restriction. The one
//! leniency is `null` inside `application` and `subscribedAPIs` entries, which WSO2 writes for
//! unset fields; it reads as absent.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::error::TokenError;

/// Which endpoints a token may reach (`keytype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// The default when the claim is absent.
    Production,
    Sandbox,
}

impl KeyType {
    /// The claim's wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Production => "PRODUCTION",
            KeyType::Sandbox => "SANDBOX",
        }
    }

    /// From the claim value; exact upper case, as WSO2 writes it.
    pub fn parse(s: &str) -> Option<KeyType> {
        match s {
            "PRODUCTION" => Some(KeyType::Production),
            "SANDBOX" => Some(KeyType::Sandbox),
            _ => None,
        }
    }
}

/// The `application` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Application {
    /// WSO2 writes a number (API Manager 3.x) or a UUID string; kept as text either way.
    pub id: Option<String>,
    pub name: Option<String>,
    /// The application throttling tier.
    pub tier: Option<String>,
    pub owner: Option<String>,
}

/// One entry of `subscribedAPIs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribedApi {
    pub name: String,
    /// An API version, or `*` for every version.
    pub version: String,
    pub context: Option<String>,
    /// `subscriptionTier`: the subscription throttling tier.
    pub tier: Option<String>,
}

/// A token whose signature verified and whose claims passed every rule that does not depend on
/// the route. Only the validator makes one (the private field), so holding one means it was
/// checked; it is what the cache keeps.
#[derive(Debug)]
pub struct VerifiedToken {
    /// The bundle's short name for the issuer (for metrics and logs), not the `iss` URL.
    pub issuer: String,
    /// The `kid` of the issuer key that verified the signature.
    pub kid: String,
    pub subject: String,
    pub jti: Option<String>,
    pub expires_at: u64,
    pub not_before: Option<u64>,
    pub issued_at: Option<u64>,
    pub key_type: KeyType,
    pub application: Option<Application>,
    pub subscribed_apis: Vec<SubscribedApi>,
    /// The `scope` claim split on spaces.
    pub scopes: Vec<String>,
    /// Copied from the issuer when verified, so authorisation needs no second look-up.
    pub(super) validate_subscription: bool,
    /// Whether the token may be presented as a bearer token: its issuer accepts tokens, it has
    /// an `exp`, and it does not call itself an API key (`token_type: apiKey`, API Manager 3.2+).
    pub(super) bearer_ok: bool,
    /// Whether it may be presented as an API key: its issuer accepts API keys.
    pub(super) api_key_ok: bool,
    /// `permittedIP`: addresses and CIDR blocks an API key may be used from; empty: any.
    pub permitted_ips: Vec<(IpAddr, u8)>,
    /// `permittedReferer`: `Referer` patterns (`*` matches any run of characters) an API key may
    /// be used with; empty: any.
    pub permitted_referers: Vec<String>,
}

impl VerifiedToken {
    /// The time rules, each with `skew` seconds of tolerance for clocks that disagree. Run on
    /// every use, cached or not: a cached token expires like any other.
    pub(super) fn check_times(&self, now: u64, skew: u64) -> Result<(), TokenError> {
        // RFC 7519 §4.1.4: valid only while now is before exp.
        if now >= self.expires_at.saturating_add(skew) {
            return Err(TokenError::Expired);
        }
        if self.not_before.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
            return Err(TokenError::NotYetValid);
        }
        if self.issued_at.is_some_and(|iat| iat > now.saturating_add(skew)) {
            return Err(TokenError::IssuedInFuture);
        }
        Ok(())
    }

    /// The last second at which the token can pass the time rules, for the cache.
    pub(super) fn deadline(&self, skew: u64) -> u64 {
        self.expires_at.saturating_add(skew)
    }
}

/// What the issuer contributes to reading a payload.
pub(super) struct IssuerView<'a> {
    pub name: &'a str,
    pub audience: Option<&'a str>,
    pub validate_subscription: bool,
    pub kid: &'a str,
    /// The issuer's JWTs are accepted as bearer tokens.
    pub tokens: bool,
    /// The issuer's JWTs are accepted as API keys.
    pub api_keys: bool,
}

/// Most entries in `permittedIP` or `permittedReferer`: a key restricted to more places than
/// this is better split; the limit keeps a per-request check short.
pub const MAX_PERMITTED: usize = 64;

/// `permittedIP`: comma-separated addresses and CIDR blocks (`10.0.0.1`, `192.168.0.0/16`,
/// `fd00::/8`). An entry that is neither is refused, not skipped: skipping it would widen the
/// key's restriction to nothing.
fn read_permitted_ips(map: &Map<String, Value>) -> Result<Vec<(IpAddr, u8)>, TokenError> {
    const CLAIM: &str = "permittedIP";
    let Some(list) = opt_str(map, CLAIM)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (addr, bits) = match item.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| TokenError::BadClaim(CLAIM))?)),
            None => (item, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| TokenError::BadClaim(CLAIM))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max || out.len() == MAX_PERMITTED {
            return Err(TokenError::BadClaim(CLAIM));
        }
        out.push((ip, bits));
    }
    Ok(out)
}

/// `permittedReferer`: comma-separated patterns.
fn read_permitted_referers(map: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    const CLAIM: &str = "permittedReferer";
    let Some(list) = opt_str(map, CLAIM)? else { return Ok(Vec::new()) };
    let out: Vec<String> =
        list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if out.len() > MAX_PERMITTED {
        return Err(TokenError::BadClaim(CLAIM));
    }
    Ok(out)
}

/// Whether `ip` is inside one of `permitted` (an IPv4-mapped IPv6 address counts as its IPv4
/// form). An empty list permits every address.
pub fn ip_permitted(permitted: &[(IpAddr, u8)], ip: Option<IpAddr>) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if permitted.is_empty() {
        return true;
    }
    // An unknown caller meets no restriction.
    let Some(ip) = ip else { return false };
    let ip = canonical(ip);
    permitted.iter().any(|&(net, bits)| match (canonical(net), ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
        (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
        _ => false,
    })
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    let (Some(a_whole), Some(b_whole)) = (a.get(..whole), b.get(..whole)) else { return false };
    if a_whole != b_whole {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    matches!((a.get(whole), b.get(whole)), (Some(x), Some(y)) if x & mask == y & mask)
}

/// Whether a `Referer` value meets one of `patterns`. A pattern is `[scheme://]host[:port][/path]`
/// with `*` for any run of characters, and it is matched part by part, never across parts: the
/// host pattern against the referer's host only (case-insensitively), so `*.example.com/*`
/// cannot be met by `https://evil.test/x.example.com/`; the path pattern, when the pattern has
/// one, against the referer's path and query; the scheme and port, when the pattern names them,
/// exactly. A pattern without a path permits any path on its host. An empty list permits any
/// (or no) referer; a non-empty one needs a referer, and a referer with user information (which
/// browsers never send) meets none.
pub fn referer_permitted(patterns: &[String], referer: Option<&str>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(referer) = referer.and_then(UrlParts::split) else { return false };
    if referer.authority.contains('@') {
        return false;
    }
    patterns.iter().any(|p| {
        let Some(p) = UrlParts::split(p) else { return false };
        let scheme_ok = p.scheme.is_none_or(|s| referer.scheme.is_some_and(|r| r.eq_ignore_ascii_case(s)));
        let (p_host, p_port) = host_port(p.authority);
        let (r_host, r_port) = host_port(referer.authority);
        let port_ok = p_port.is_none_or(|pp| pp == "*" || r_port == Some(pp));
        let host_ok =
            wildcard_match(p_host.to_ascii_lowercase().as_bytes(), r_host.to_ascii_lowercase().as_bytes());
        let path_ok = p.rest.is_empty() || wildcard_match(p.rest.as_bytes(), referer.rest.as_bytes());
        scheme_ok && port_ok && host_ok && path_ok
    })
}

/// A URL (or a pattern of one) cut into scheme, authority and the rest (path, query, fragment).
struct UrlParts<'a> {
    scheme: Option<&'a str>,
    authority: &'a str,
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    fn split(s: &'a str) -> Option<UrlParts<'a>> {
        let (scheme, after) = match s.split_once("://") {
            Some((scheme, after)) => (Some(scheme), after),
            None => (None, s),
        };
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        (!authority.is_empty()).then_some(UrlParts { scheme, authority, rest })
    }
}

/// `host[:port]` (an IPv6 literal keeps its brackets).
fn host_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    }
}

/// `*`-only glob over bytes, iterative (linear backtracking, no recursion on attacker input).
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

fn opt_str<'a>(map: &'a Map<String, Value>, name: &'static str) -> Result<Option<&'a str>, TokenError> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::BadClaim(name)),
    }
}

/// A string inside `application` or a `subscribedAPIs` entry: `null` reads as absent.
fn nested_str(
    map: &Map<String, Value>,
    name: &str,
    claim: &'static str,
) -> Result<Option<String>, TokenError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::BadClaim(claim)),
    }
}

/// RFC 7519 NumericDate: seconds since the epoch, possibly fractional. A fractional value is
/// rounded towards refusal: `exp` down, `nbf` and `iat` up.
#[expect(clippy::cast_possible_truncation, reason = "range checked just before: 0 <= f < 2^64")]
fn numeric_date(
    map: &Map<String, Value>,
    name: &'static str,
    round_up: bool,
) -> Result<Option<u64>, TokenError> {
    let n = match map.get(name) {
        None => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(_) => return Err(TokenError::BadClaim(name)),
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        // 2^64: every value below it fits in a u64 once rounded.
        Some(f) if (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
            Ok(Some(if round_up { f.ceil() } else { f.floor() } as u64))
        }
        _ => Err(TokenError::BadClaim(name)),
    }
}

fn check_audience(map: &Map<String, Value>, expected: Option<&str>) -> Result<(), TokenError> {
    let found = match map.get("aud") {
        None => false,
        Some(Value::String(a)) => expected.is_some_and(|e| a == e),
        Some(Value::Array(list)) => {
            let mut found = false;
            for a in list {
                match a {
                    Value::String(a) => found |= expected.is_some_and(|e| a == e),
                    _ => return Err(TokenError::BadClaim("aud")),
                }
            }
            found
        }
        Some(_) => return Err(TokenError::BadClaim("aud")),
    };
    if expected.is_some() && !found {
        return Err(TokenError::WrongAudience);
    }
    Ok(())
}

fn read_application(map: &Map<String, Value>) -> Result<Option<Application>, TokenError> {
    const CLAIM: &str = "application";
    let app = match map.get(CLAIM) {
        None => return Ok(None),
        Some(Value::Object(app)) => app,
        Some(_) => return Err(TokenError::BadClaim(CLAIM)),
    };
    let id = match app.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Some(_) => return Err(TokenError::BadClaim(CLAIM)),
    };
    Ok(Some(Application {
        id,
        name: nested_str(app, "name", CLAIM)?,
        tier: nested_str(app, "tier", CLAIM)?,
        owner: nested_str(app, "owner", CLAIM)?,
    }))
}

fn read_subscriptions(map: &Map<String, Value>) -> Result<Vec<SubscribedApi>, TokenError> {
    const CLAIM: &str = "subscribedAPIs";
    let list = match map.get(CLAIM) {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(TokenError::BadClaim(CLAIM)),
    };
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let Value::Object(e) = entry else {
            return Err(TokenError::BadClaim(CLAIM));
        };
        let (Some(name), Some(version)) = (nested_str(e, "name", CLAIM)?, nested_str(e, "version", CLAIM)?)
        else {
            return Err(TokenError::BadClaim(CLAIM));
        };
        out.push(SubscribedApi {
            name,
            version,
            context: nested_str(e, "context", CLAIM)?,
            tier: nested_str(e, "subscriptionTier", CLAIM)?,
        });
    }
    Ok(out)
}

/// Reads and checks every route-independent claim but `iss` (already used to pick the issuer),
/// `jti` revocation and time, which the validator checks.
pub(super) fn read(map: &Map<String, Value>, issuer: &IssuerView<'_>) -> Result<VerifiedToken, TokenError> {
    let subject = match opt_str(map, "sub")? {
        Some(s) if !s.is_empty() => s.to_owned(),
        Some(_) => return Err(TokenError::BadClaim("sub")),
        None => return Err(TokenError::MissingClaim("sub")),
    };
    let jti = opt_str(map, "jti")?.map(str::to_owned);
    // Which role the JWT plays. An issuer with one role decides it. An issuer of both (API
    // Manager signs its access tokens and its API keys with the same key and `iss`) leaves it to
    // the token, as API Manager does: `token_type: apiKey` (3.2 and later) is a key; without
    // `token_type`, an `application` claim and no `consumerKey` (3.0/3.1 keys) is a key; anything
    // else is an access token. A JWT is never both.
    let token_type = opt_str(map, "token_type")?;
    let key_shaped = match token_type {
        Some(t) => t.eq_ignore_ascii_case("apiKey"),
        None => map.contains_key("application") && !map.contains_key("consumerKey"),
    };
    let is_key = issuer.api_keys && (!issuer.tokens || key_shaped);
    // WSO2 API Manager 3.x writes no `exp` in an API key created with infinite validity. Such a
    // key is accepted as an API key only, and only with a `jti`: it can then still be revoked
    // (`[revoked] jti` of the project). Never as a bearer token.
    let (expires_at, endless) = match numeric_date(map, "exp", false)? {
        Some(e) => (e, false),
        None if is_key && jti.is_some() => (u64::MAX, true),
        None => return Err(TokenError::MissingClaim("exp")),
    };
    let not_before = numeric_date(map, "nbf", true)?;
    let issued_at = numeric_date(map, "iat", true)?;
    check_audience(map, issuer.audience)?;
    let key_type = match opt_str(map, "keytype")? {
        None => KeyType::Production,
        Some(k) => KeyType::parse(k).ok_or(TokenError::BadClaim("keytype"))?,
    };
    let scopes = opt_str(map, "scope")?
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let permitted_ips = read_permitted_ips(map)?;
    let permitted_referers = read_permitted_referers(map)?;
    Ok(VerifiedToken {
        issuer: issuer.name.to_owned(),
        kid: issuer.kid.to_owned(),
        subject,
        jti,
        expires_at,
        not_before,
        issued_at,
        key_type,
        application: read_application(map)?,
        subscribed_apis: read_subscriptions(map)?,
        scopes,
        validate_subscription: issuer.validate_subscription,
        // A JWT restricted to some callers (`permittedIP`, `permittedReferer`) is a key whose
        // restrictions only the API-key path enforces: never a bearer token.
        bearer_ok: issuer.tokens
            && !is_key
            && !endless
            && permitted_ips.is_empty()
            && permitted_referers.is_empty(),
        api_key_ok: is_key,
        permitted_ips,
        permitted_referers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: IssuerView<'static> = IssuerView {
        name: "central",
        audience: Some("gatelet"),
        validate_subscription: true,
        kid: "k1",
        tokens: true,
        api_keys: false,
    };

    fn claims(json: &str) -> Result<VerifiedToken, TokenError> {
        let map = super::super::json::parse_object(json.as_bytes()).expect("test JSON");
        read(&map, &ISSUER)
    }

    const BASE: &str = r#""sub":"alice","exp":2000,"aud":"gatelet""#;

    #[test]
    fn wso2_profile() {
        let t = claims(
            r#"{"sub":"alice","exp":2000,"nbf":900,"iat":1000.2,"aud":["x","gatelet"],"jti":"j1",
                "scope":"order:read  order:write","keytype":"SANDBOX",
                "application":{"id":7,"name":"App","tier":"10PerMin","owner":"bob","uuid":null,
                               "tierQuotaType":null},
                "subscribedAPIs":[{"name":"PizzaShackAPI","version":"1.0.0","context":"/pizzashack/1.0.0",
                    "subscriptionTier":"Gold","publisher":"admin","subscriberTenantDomain":"carbon.super"},
                    {"name":"Other","version":"*","context":null,"subscriptionTier":null}],
                "tierInfo":{"Gold":{"stopOnQuotaReach":true,"spikeArrestLimit":0,"spikeArrestUnit":null}}}"#,
        )
        .expect("valid");
        assert_eq!((t.issuer.as_str(), t.kid.as_str(), t.subject.as_str()), ("central", "k1", "alice"));
        assert_eq!((t.expires_at, t.not_before, t.issued_at), (2000, Some(900), Some(1001)));
        assert_eq!(t.jti.as_deref(), Some("j1"));
        assert_eq!(t.scopes, ["order:read", "order:write"]);
        assert_eq!(t.key_type, KeyType::Sandbox);
        let app = t.application.expect("application");
        assert_eq!(
            (app.id.as_deref(), app.name.as_deref(), app.tier.as_deref(), app.owner.as_deref()),
            (Some("7"), Some("App"), Some("10PerMin"), Some("bob"))
        );
        assert_eq!(t.subscribed_apis.len(), 2);
        assert_eq!(t.subscribed_apis[0].tier.as_deref(), Some("Gold"));
        assert_eq!(t.subscribed_apis[0].context.as_deref(), Some("/pizzashack/1.0.0"));
        assert_eq!(t.subscribed_apis[1].version, "*");
        assert!(t.validate_subscription);
    }

    #[test]
    fn defaults() {
        let t = claims(&format!("{{{BASE}}}")).expect("minimal");
        assert_eq!(t.key_type, KeyType::Production);
        assert!(t.scopes.is_empty() && t.subscribed_apis.is_empty() && t.application.is_none());
        assert_eq!((t.jti, t.not_before, t.issued_at), (None, None, None));
    }

    #[test]
    fn refusals() {
        let cases: &[(&str, TokenError)] = &[
            (r#"{"exp":2000,"aud":"gatelet"}"#, TokenError::MissingClaim("sub")),
            (r#"{"sub":"","exp":2000,"aud":"gatelet"}"#, TokenError::BadClaim("sub")),
            (r#"{"sub":5,"exp":2000,"aud":"gatelet"}"#, TokenError::BadClaim("sub")),
            (r#"{"sub":"a","aud":"gatelet"}"#, TokenError::MissingClaim("exp")),
            (r#"{"sub":"a","exp":"2000","aud":"gatelet"}"#, TokenError::BadClaim("exp")),
            (r#"{"sub":"a","exp":-1,"aud":"gatelet"}"#, TokenError::BadClaim("exp")),
            (r#"{"sub":"a","exp":1e30,"aud":"gatelet"}"#, TokenError::BadClaim("exp")),
            (r#"{"sub":"a","exp":null,"aud":"gatelet"}"#, TokenError::BadClaim("exp")),
            (r#"{"sub":"a","exp":2000,"nbf":"0","aud":"gatelet"}"#, TokenError::BadClaim("nbf")),
            (r#"{"sub":"a","exp":2000,"iat":true,"aud":"gatelet"}"#, TokenError::BadClaim("iat")),
            (r#"{"sub":"a","exp":2000}"#, TokenError::WrongAudience),
            (r#"{"sub":"a","exp":2000,"aud":"other"}"#, TokenError::WrongAudience),
            (r#"{"sub":"a","exp":2000,"aud":["other"]}"#, TokenError::WrongAudience),
            (r#"{"sub":"a","exp":2000,"aud":[]}"#, TokenError::WrongAudience),
            (r#"{"sub":"a","exp":2000,"aud":["gatelet",1]}"#, TokenError::BadClaim("aud")),
            (r#"{"sub":"a","exp":2000,"aud":{"gatelet":1}}"#, TokenError::BadClaim("aud")),
            (&format!(r#"{{{BASE},"jti":7}}"#), TokenError::BadClaim("jti")),
            (&format!(r#"{{{BASE},"scope":["a"]}}"#), TokenError::BadClaim("scope")),
            (&format!(r#"{{{BASE},"keytype":"production"}}"#), TokenError::BadClaim("keytype")),
            (&format!(r#"{{{BASE},"keytype":"STAGING"}}"#), TokenError::BadClaim("keytype")),
            (&format!(r#"{{{BASE},"application":"App"}}"#), TokenError::BadClaim("application")),
            (&format!(r#"{{{BASE},"application":{{"id":1.5}}}}"#), TokenError::BadClaim("application")),
            (&format!(r#"{{{BASE},"application":{{"tier":5}}}}"#), TokenError::BadClaim("application")),
            (&format!(r#"{{{BASE},"subscribedAPIs":{{}}}}"#), TokenError::BadClaim("subscribedAPIs")),
            (&format!(r#"{{{BASE},"subscribedAPIs":["A"]}}"#), TokenError::BadClaim("subscribedAPIs")),
            (
                &format!(r#"{{{BASE},"subscribedAPIs":[{{"name":"A"}}]}}"#),
                TokenError::BadClaim("subscribedAPIs"),
            ),
            (
                &format!(r#"{{{BASE},"subscribedAPIs":[{{"name":"A","version":1}}]}}"#),
                TokenError::BadClaim("subscribedAPIs"),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(claims(json).map(drop).as_ref(), Err(want), "{json}");
        }
    }

    #[test]
    fn audience_optional_when_issuer_sets_none() {
        let open = IssuerView { audience: None, ..ISSUER };
        let map = |j: &str| super::super::json::parse_object(j.as_bytes()).expect("json");
        assert!(read(&map(r#"{"sub":"a","exp":1}"#), &open).is_ok());
        assert!(read(&map(r#"{"sub":"a","exp":1,"aud":"anything"}"#), &open).is_ok());
        // Still type-checked: a malformed restriction is not silently dropped.
        assert_eq!(
            read(&map(r#"{"sub":"a","exp":1,"aud":7}"#), &open).map(drop),
            Err(TokenError::BadClaim("aud"))
        );
    }

    #[test]
    fn time_rules_with_skew() {
        let t = claims(r#"{"sub":"a","exp":1000,"nbf":500,"iat":400,"aud":"gatelet"}"#).expect("valid");
        let skew = 60;
        assert_eq!(t.check_times(700, skew), Ok(()));
        // exp: valid strictly before exp + skew.
        assert_eq!(t.check_times(1059, skew), Ok(()));
        assert_eq!(t.check_times(1060, skew), Err(TokenError::Expired));
        assert_eq!(t.check_times(1000, 0), Err(TokenError::Expired));
        // nbf: valid from nbf - skew.
        assert_eq!(t.check_times(440, skew), Ok(()));
        assert_eq!(t.check_times(439, skew), Err(TokenError::NotYetValid));
        let t = claims(r#"{"sub":"a","exp":5000,"iat":1000,"aud":"gatelet"}"#).expect("valid");
        assert_eq!(t.check_times(940, skew), Ok(()));
        assert_eq!(t.check_times(939, skew), Err(TokenError::IssuedInFuture));
        assert_eq!(t.deadline(skew), 5060);
        // Fractional dates round towards refusal.
        let t = claims(r#"{"sub":"a","exp":1000.9,"nbf":500.1,"aud":"gatelet"}"#).expect("valid");
        assert_eq!((t.expires_at, t.not_before), (1000, Some(501)));
        // Saturation, not overflow, at the top of the range.
        let t = claims(r#"{"sub":"a","exp":18446744073709551615,"aud":"gatelet"}"#).expect("valid");
        assert_eq!(t.check_times(u64::MAX - 1, skew), Ok(()));
    }
}
