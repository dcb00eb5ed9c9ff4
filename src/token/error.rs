//! Why a token was refused: one enum, each variant mapped in one place to a WSO2 fault code, an
//! HTTP status and a stable reason label for metrics.

use std::fmt;

use crate::bundle::model::JwsAlg;

/// WSO2 fault code: invalid credentials (401).
pub const FAULT_INVALID_CREDENTIALS: u32 = 900_901;
/// WSO2 fault code: missing credentials (401).
pub const FAULT_MISSING_CREDENTIALS: u32 = 900_902;
/// WSO2 fault code: expired credentials (401).
pub const FAULT_EXPIRED: u32 = 900_903;
/// WSO2 fault code: the application is not subscribed to the API (403).
pub const FAULT_NOT_SUBSCRIBED: u32 = 900_908;
/// WSO2 fault code: the token lacks a scope the operation needs (403).
pub const FAULT_SCOPE: u32 = 900_910;

/// What exactly is wrong with a token's framing. All of them are the caller's token's fault and
/// count under the one reason label `malformed`, so metrics stay low-cardinality; the detail is
/// in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not exactly three dot-separated segments.
    Segments,
    /// A segment is empty where content is required.
    EmptySegment,
    /// A segment is not canonical unpadded base64url.
    Base64,
    /// The protected header segment is longer than [`super::jws::MAX_HEADER_B64`].
    HeaderTooLarge,
    /// The signature segment does not decode to exactly 64 bytes.
    SignatureLength,
    /// The header or payload is not JSON, or has trailing data.
    Json,
    /// A JSON object repeats a member name (RFC 7515 §5.2 and RFC 7519 §4 allow refusing; we do,
    /// since two parsers could otherwise read two different tokens out of the same bytes).
    DuplicateKey,
    /// JSON nesting deeper than [`super::json::MAX_DEPTH`].
    TooDeep,
    /// The header or payload is JSON but not an object.
    NotObject,
}

impl Malformed {
    fn describe(self) -> &'static str {
        match self {
            Malformed::Segments => "not three dot-separated segments",
            Malformed::EmptySegment => "empty header or payload segment",
            Malformed::Base64 => "a segment is not canonical unpadded base64url",
            Malformed::HeaderTooLarge => "protected header too large",
            Malformed::SignatureLength => "signature length does not fit the algorithm",
            Malformed::Json => "header or payload is not valid JSON",
            Malformed::DuplicateKey => "duplicate JSON member name",
            Malformed::TooDeep => "JSON nested too deeply",
            Malformed::NotObject => "header or payload is not a JSON object",
        }
    }
}

/// Why a token was refused. Unless a variant says otherwise, the fault is the caller's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No token was presented.
    Missing,
    /// The token is longer than [`super::jws::MAX_TOKEN_LEN`]; refused before any decoding.
    TooLarge,
    /// Framing, base64 or JSON is broken.
    Malformed(Malformed),
    /// The `alg` is not one gatelet verifies (`none`, `HS256`, `ES512`, ...). The value, made
    /// printable and cut short, is kept for the message.
    AlgRefused(String),
    /// The issuer pins its algorithms (`algorithms = [...]`) and the token's is not one of them.
    AlgNotPinned(JwsAlg),
    /// No key the token may use can verify its algorithm: the key its `kid` names is of another
    /// type or curve, or names another `alg` (an RS256 token against an EC key, ES384 against a
    /// P-256 key: algorithm confusion), or, without a `kid`, no key of the issuer fits.
    KeyAlgMismatch(JwsAlg),
    /// The `typ` header names something other than a JWT access token.
    TypRefused,
    /// The header carries `crit`: an extension we would have to understand, so we refuse.
    CritRefused,
    /// `iss` names no issuer of the bundle (the token's, or the bundle author forgot an issuer).
    UnknownIssuer,
    /// `kid` (or, without a `kid` that matches, `x5t`/`x5t#S256`) names no key of the selected
    /// issuer (the token's, or a key rotation the bundle has not caught up with).
    UnknownKid,
    /// No `kid`, and the issuer has more keys than are tried without one.
    KidRequired,
    /// The signature does not verify with the selected key(s): forged, altered, signed by another
    /// key, or not canonical (S ≥ ℓ, small-order R).
    BadSignature,
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type or an unknown value.
    BadClaim(&'static str),
    /// `exp` (plus the clock skew) has passed.
    Expired,
    /// `nbf` is still ahead (beyond the clock skew).
    NotYetValid,
    /// `iat` is ahead of now by more than the clock skew.
    IssuedInFuture,
    /// The issuer sets an audience and `aud` does not contain it.
    WrongAudience,
    /// The `jti` is on the bundle's revoked list.
    Revoked,
    /// The issuer validates subscriptions and `subscribedAPIs` does not list this API.
    NotSubscribed,
    /// The operation needs scopes the token does not hold.
    MissingScope,
    /// A JWT presented as a bearer token that may only be an API key: its issuer accepts API
    /// keys only (`tokens = false`), or it is an API key (`token_type: apiKey`, or no `exp`).
    ApiKeyAsBearer,
    /// A JWT presented as an API key whose issuer is not an API-key issuer (`api_keys = false`).
    NotAnApiKey,
    /// An API key used from an address outside its `permittedIP`.
    IpNotPermitted,
    /// An API key used with a `Referer` outside its `permittedReferer` (or with none).
    RefererNotPermitted,
}

impl TokenError {
    /// The WSO2 fault code the response carries (PRODUCT.md section 5).
    pub fn fault_code(&self) -> u32 {
        match self {
            TokenError::Missing => FAULT_MISSING_CREDENTIALS,
            TokenError::Expired => FAULT_EXPIRED,
            // WSO2's API-key authenticator answers both restrictions with "Resource forbidden".
            TokenError::NotSubscribed | TokenError::IpNotPermitted | TokenError::RefererNotPermitted => {
                FAULT_NOT_SUBSCRIBED
            }
            TokenError::MissingScope => FAULT_SCOPE,
            TokenError::TooLarge
            | TokenError::Malformed(_)
            | TokenError::AlgRefused(_)
            | TokenError::AlgNotPinned(_)
            | TokenError::KeyAlgMismatch(_)
            | TokenError::TypRefused
            | TokenError::CritRefused
            | TokenError::UnknownIssuer
            | TokenError::UnknownKid
            | TokenError::KidRequired
            | TokenError::BadSignature
            | TokenError::MissingClaim(_)
            | TokenError::BadClaim(_)
            | TokenError::NotYetValid
            | TokenError::IssuedInFuture
            | TokenError::WrongAudience
            | TokenError::Revoked
            | TokenError::ApiKeyAsBearer
            | TokenError::NotAnApiKey => FAULT_INVALID_CREDENTIALS,
        }
    }

    /// The HTTP status: 401 when the credentials are missing or not good, 403 when they are good
    /// but do not grant this operation.
    pub fn http_status(&self) -> u16 {
        match self.fault_code() {
            FAULT_NOT_SUBSCRIBED | FAULT_SCOPE => 403,
            _ => 401,
        }
    }

    /// A short stable label for metrics (`auth failures by reason`). Changing one is a breaking
    /// change for dashboards.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::TooLarge => "too_large",
            TokenError::Malformed(_) => "malformed",
            TokenError::AlgRefused(_) => "alg_refused",
            TokenError::AlgNotPinned(_) => "alg_not_pinned",
            TokenError::KeyAlgMismatch(_) => "key_alg_mismatch",
            TokenError::TypRefused => "typ_refused",
            TokenError::CritRefused => "crit_refused",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::KidRequired => "kid_required",
            TokenError::BadSignature => "bad_signature",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::BadClaim(_) => "bad_claim",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::Revoked => "revoked",
            TokenError::NotSubscribed => "not_subscribed",
            TokenError::MissingScope => "missing_scope",
            TokenError::ApiKeyAsBearer => "api_key_as_bearer",
            TokenError::NotAnApiKey => "not_an_api_key",
            TokenError::IpNotPermitted => "ip_not_permitted",
            TokenError::RefererNotPermitted => "referer_not_permitted",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Missing => f.write_str("no token presented"),
            TokenError::TooLarge => {
                write!(f, "token longer than {} bytes", super::jws::MAX_TOKEN_LEN)
            }
            TokenError::Malformed(m) => write!(f, "malformed token: {}", m.describe()),
            TokenError::AlgRefused(alg) => {
                write!(
                    f,
                    "algorithm {alg:?} refused (only EdDSA, RS256/384/512, PS256/384/512, ES256, ES384)"
                )
            }
            TokenError::AlgNotPinned(alg) => {
                write!(f, "algorithm {} is not among the issuer's pinned algorithms", alg.as_str())
            }
            TokenError::KeyAlgMismatch(alg) => {
                write!(f, "algorithm {} cannot be verified by the issuer key the token may use", alg.as_str())
            }
            TokenError::TypRefused => f.write_str("token type (typ) is not a JWT"),
            TokenError::CritRefused => f.write_str("critical header extensions (crit) are not supported"),
            TokenError::UnknownIssuer => f.write_str("issuer (iss) is not trusted by the bundle"),
            TokenError::UnknownKid => {
                f.write_str("key id (kid) or certificate thumbprint (x5t) is not a key of the issuer")
            }
            TokenError::KidRequired => f.write_str("key id (kid) required: the issuer has too many keys"),
            TokenError::BadSignature => f.write_str("signature does not verify"),
            TokenError::MissingClaim(c) => write!(f, "required claim {c:?} missing"),
            TokenError::BadClaim(c) => write!(f, "claim {c:?} has the wrong type or value"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not yet valid (nbf)"),
            TokenError::IssuedInFuture => f.write_str("token issued in the future (iat)"),
            TokenError::WrongAudience => f.write_str("audience (aud) does not name this gateway"),
            TokenError::Revoked => f.write_str("token revoked"),
            TokenError::NotSubscribed => f.write_str("application not subscribed to this API"),
            TokenError::MissingScope => f.write_str("token lacks the scope this operation needs"),
            TokenError::ApiKeyAsBearer => {
                f.write_str("an API key (or an API-key issuer's JWT) presented as a bearer token")
            }
            TokenError::NotAnApiKey => f.write_str("an API key from an issuer that does not issue API keys"),
            TokenError::IpNotPermitted => {
                f.write_str("the API key is not permitted from this address (permittedIP)")
            }
            TokenError::RefererNotPermitted => {
                f.write_str("the API key is not permitted for this referer (permittedReferer)")
            }
        }
    }
}

impl std::error::Error for TokenError {}

/// An attacker-chosen string made safe for a log line: printable ASCII only, at most 16 chars.
pub(crate) fn printable(s: &str) -> String {
    const MAX: usize = 16;
    let mut out: String = s.chars().take(MAX).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<TokenError> {
        let mut v = vec![
            TokenError::Missing,
            TokenError::TooLarge,
            TokenError::AlgRefused("HS256".into()),
            TokenError::AlgNotPinned(JwsAlg::Rs256),
            TokenError::KeyAlgMismatch(JwsAlg::Es384),
            TokenError::TypRefused,
            TokenError::CritRefused,
            TokenError::UnknownIssuer,
            TokenError::UnknownKid,
            TokenError::KidRequired,
            TokenError::BadSignature,
            TokenError::MissingClaim("sub"),
            TokenError::BadClaim("exp"),
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::IssuedInFuture,
            TokenError::WrongAudience,
            TokenError::Revoked,
            TokenError::NotSubscribed,
            TokenError::MissingScope,
            TokenError::ApiKeyAsBearer,
            TokenError::NotAnApiKey,
            TokenError::IpNotPermitted,
            TokenError::RefererNotPermitted,
        ];
        for m in [
            Malformed::Segments,
            Malformed::EmptySegment,
            Malformed::Base64,
            Malformed::HeaderTooLarge,
            Malformed::SignatureLength,
            Malformed::Json,
            Malformed::DuplicateKey,
            Malformed::TooDeep,
            Malformed::NotObject,
        ] {
            v.push(TokenError::Malformed(m));
        }
        v
    }

    #[test]
    fn codes_statuses_and_labels() {
        let mut labels = std::collections::HashSet::new();
        for e in all() {
            let code = e.fault_code();
            let status = e.http_status();
            match code {
                FAULT_INVALID_CREDENTIALS | FAULT_MISSING_CREDENTIALS | FAULT_EXPIRED => {
                    assert_eq!(status, 401, "{e}")
                }
                FAULT_NOT_SUBSCRIBED | FAULT_SCOPE => assert_eq!(status, 403, "{e}"),
                other => panic!("{e}: unexpected fault code {other}"),
            }
            let r = e.reason();
            assert!(!r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{r}");
            if !matches!(e, TokenError::Malformed(_)) {
                assert!(labels.insert(r), "label {r} used twice");
            }
            let msg = e.to_string();
            assert!(!msg.contains('\n') && msg.chars().next().is_some_and(|c| !c.is_uppercase()), "{msg}");
        }
        assert_eq!(TokenError::Missing.fault_code(), 900_902);
        assert_eq!(TokenError::Expired.fault_code(), 900_903);
        assert_eq!(TokenError::NotSubscribed.fault_code(), 900_908);
        assert_eq!(TokenError::MissingScope.fault_code(), 900_910);
        assert_eq!(TokenError::BadSignature.fault_code(), 900_901);
        // Algorithm confusion is a bad credential, as a bad signature is.
        assert_eq!(TokenError::KeyAlgMismatch(JwsAlg::Rs256).fault_code(), 900_901);
        assert_eq!(TokenError::AlgNotPinned(JwsAlg::Ps256).http_status(), 401);
    }

    #[test]
    fn printable_cuts_and_masks() {
        assert_eq!(printable("HS256"), "HS256");
        assert_eq!(printable("a\nb c"), "a?b?c");
        assert_eq!(printable(&"x".repeat(40)), format!("{}…", "x".repeat(16)));
    }
}
