//! The toolkit's compiler: a project directory (`gatelet.toml`, `apis/`, `keys/`) into a
//! [`Manifest`] ready to be sealed.
//!
//! Every reference is resolved here — tiers, key files, security schemes, endpoint references —
//! so that a mistake fails the build with the file (and, where it can be found, the line) at
//! fault, never a 500 on a device. Output is deterministic: the same inputs and serial give the
//! same bytes (inputs are read in sorted order, and the build time comes from
//! `SOURCE_DATE_EPOCH` or the newest input file, not the clock).
//!
//! The build time is never later than the builder's own clock: a device raises its clock floor
//! to it, and a floor in the future makes every token "expired". A file modified in the future
//! (`touch -d 2036-01-01`, a copy from a machine with a wrong clock) is clamped to now, with a
//! warning; a `SOURCE_DATE_EPOCH` in the future is refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use openssl::nid::Nid;
use openssl::pkey::Id;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::bundle::model::{
    self, Api, ApiKeyLocation, Cors, EndpointKind, Endpoints, HttpUrl, Issuer, IssuerKey, Manifest, Method,
    Operation, Policy, PolicyLevel, ScopeRule, UNLIMITED,
};
use crate::keys;

/// Largest project input file read (OpenAPI document or gatelet.toml).
pub const MAX_INPUT_FILE: u64 = 8 * 1024 * 1024;

/// A build failure: the file, the line when known, and the reason. The fault is the project's.
#[derive(Debug)]
pub struct ProjectError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ProjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

impl std::error::Error for ProjectError {}

fn err(file: &Path, line: Option<usize>, reason: impl Into<String>) -> ProjectError {
    ProjectError { file: file.to_owned(), line, reason: reason.into() }
}

/// The result of a build: the manifest and warnings worth printing (ignored extensions).
#[derive(Debug)]
pub struct Compiled {
    pub manifest: Manifest,
    pub warnings: Vec<String>,
}

// ----- gatelet.toml of a project -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectToml {
    #[serde(default)]
    label: String,
    #[serde(default)]
    issuer: Vec<IssuerToml>,
    #[serde(default)]
    policies: PoliciesToml,
    #[serde(default)]
    revoked: RevokedToml,
    /// How several scopes in one security requirement combine: `"any-of"` (WSO2's reading, the
    /// default) or `"all-of"` (OpenAPI's).
    scopes: Option<String>,
    /// The subscription tier of a token that names none for the API (see
    /// [`Manifest::default_subscription_tier`]): absent means WSO2's `Default`; `""` means none.
    default_subscription_tier: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerToml {
    name: String,
    issuer: String,
    audience: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    jwks: Option<String>,
    /// JWS algorithms the issuer's tokens may use (`["RS256"]`); default: any its keys allow.
    #[serde(default)]
    algorithms: Vec<String>,
    #[serde(default)]
    validate_subscription: bool,
    /// Its JWTs are accepted as bearer tokens (`false`: an API-key-only issuer).
    #[serde(default = "yes")]
    tokens: bool,
    /// Its JWTs are accepted as WSO2 API keys.
    #[serde(default)]
    api_keys: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliciesToml {
    #[serde(default)]
    api: BTreeMap<String, PolicyToml>,
    /// WSO2 calls API and resource tiers "resource policies"; both names are accepted.
    #[serde(default)]
    resource: BTreeMap<String, PolicyToml>,
    #[serde(default)]
    application: BTreeMap<String, PolicyToml>,
    #[serde(default)]
    subscription: BTreeMap<String, PolicyToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyToml {
    requests: u64,
    per: String,
    #[serde(default = "yes")]
    stop_on_quota_reach: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedToml {
    #[serde(default)]
    jti: Vec<String>,
}

/// WSO2 API Microgateway's default policies, applied where a project defines none of that name.
pub const DEFAULT_POLICIES: &[(PolicyLevel, &str, u64)] = &[
    (PolicyLevel::Subscription, "Gold", 5000),
    (PolicyLevel::Subscription, "Silver", 2000),
    (PolicyLevel::Subscription, "Bronze", 1000),
    (PolicyLevel::Subscription, "Unauthenticated", 500),
    (PolicyLevel::Subscription, "Default", 500),
    (PolicyLevel::Application, "10PerMin", 10),
    (PolicyLevel::Application, "20PerMin", 20),
    (PolicyLevel::Application, "50PerMin", 50),
    (PolicyLevel::Api, "10kPerMin", 10_000),
    (PolicyLevel::Api, "20kPerMin", 20_000),
    (PolicyLevel::Api, "50kPerMin", 50_000),
];

/// `"30s"`, `"1m"`, `"2h"`, `"1d"` → seconds.
pub fn parse_window(per: &str) -> Option<u32> {
    let (num, unit) = per.split_at(per.find(|c: char| !c.is_ascii_digit())?);
    let n: u32 = if num.is_empty() { 1 } else { num.parse().ok()? };
    let unit_s = match unit {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit_s).filter(|&w| (1..=model::MAX_WINDOW_S).contains(&w))
}

fn read_input(path: &Path) -> Result<String, ProjectError> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, None, e.to_string()))?;
    if meta.len() > MAX_INPUT_FILE {
        return Err(err(path, None, format!("larger than {MAX_INPUT_FILE} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| err(path, None, e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| err(path, None, "not UTF-8 text"))
}

/// Keeps the newest modification time seen, and its file.
fn bump(newest: &mut (u64, PathBuf), path: &Path) {
    let t = mtime(path);
    if t > newest.0 {
        *newest = (t, path.to_path_buf());
    }
}

fn mtime(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Line (1-based) of the first match of `keys` in order, each a mapping key in YAML or JSON.
/// A best-effort pointer for error messages; `None` when not found.
fn locate(text: &str, keys: &[&str]) -> Option<usize> {
    locate_offset(text, keys).map(|pos| text[..pos].matches('\n').count() + 1)
}

/// Byte offset of the last of `keys` found in order (see [`locate`]).
fn locate_offset(text: &str, keys: &[&str]) -> Option<usize> {
    let mut pos = 0;
    for key in keys {
        let mut found = None;
        let mut from = pos;
        while let Some(i) = text[from..].find(key) {
            let at = from + i;
            let after = text[at + key.len()..].trim_start_matches(['"', '\'']).trim_start_matches(' ');
            let before_ok = at == 0 || {
                let b = text.as_bytes()[at - 1];
                b == b'"' || b == b'\'' || b == b' ' || b == b'\n' || b == b'{' || b == b','
            };
            if before_ok && after.starts_with(':') {
                found = Some(at);
                break;
            }
            from = at + key.len();
        }
        pos = found?;
    }
    Some(pos)
}

/// A bundle key from an issuer key file (`file` as the project names it, for messages): its
/// type decides [`PublicKey`]'s variant, an RSA key's size is checked here so that the message
/// names the file, and a key without a `kid` gets its RFC 7638 thumbprint.
fn issuer_key(file: &str, f: keys::IssuerKeyFile) -> Result<IssuerKey, String> {
    let der = || f.key.public_key_to_der().map_err(|e| format!("{file}: key does not encode ({e})"));
    let key = match f.key.id() {
        Id::RSA => model::PublicKey::Rsa(der()?),
        Id::EC => match f.key.ec_key().ok().and_then(|ec| ec.group().curve_name()) {
            Some(Nid::X9_62_PRIME256V1) => model::PublicKey::EcP256(der()?),
            Some(Nid::SECP384R1) => model::PublicKey::EcP384(der()?),
            _ => return Err(format!("{file}: EC key on a curve other than P-256 or P-384")),
        },
        Id::ED25519 => {
            let raw = f.key.raw_public_key().map_err(|e| format!("{file}: Ed25519 key unreadable ({e})"))?;
            model::PublicKey::Ed25519(
                raw.try_into().map_err(|_| format!("{file}: Ed25519 key is not 32 bytes"))?,
            )
        }
        _ => return Err(format!("{file}: unsupported key type (RSA, EC P-256/P-384 or Ed25519)")),
    };
    let kid = match f.kid {
        Some(k) => k,
        None => keys::public_jwk_thumbprint(&f.key).map_err(|e| format!("{file}: {e}"))?,
    };
    key.check().map_err(|why| format!("{file}: key {kid:?}: {why}"))?;
    let alg = match f.alg.as_deref() {
        None => None,
        Some(a) => {
            let alg = model::JwsAlg::parse(a).ok_or_else(|| {
                format!("{file}: key {kid:?}: \"alg\" {a:?} is not an algorithm gatelet verifies")
            })?;
            if !key.allows(alg) {
                return Err(format!("{file}: key {kid:?}: \"alg\" {a} does not fit a {} key", key.kind()));
            }
            Some(alg)
        }
    };
    Ok(IssuerKey { kid, key, alg, x5t: f.x5t, x5t_s256: f.x5t_s256 })
}

/// Compiles the project at `dir` with the given serial.
pub fn compile(dir: &Path, serial: u64) -> Result<Compiled, ProjectError> {
    let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    compile_at(dir, serial, now)
}

/// [`compile`] on a builder whose clock reads `now` (Unix seconds).
pub fn compile_at(dir: &Path, serial: u64, now: u64) -> Result<Compiled, ProjectError> {
    let toml_path = dir.join("gatelet.toml");
    let toml_text = read_input(&toml_path)?;
    let project: ProjectToml = toml::from_str(&toml_text).map_err(|e| {
        let line = e.span().map(|s| toml_text[..s.start.min(toml_text.len())].matches('\n').count() + 1);
        err(&toml_path, line, e.message().to_owned())
    })?;
    let mut newest = (mtime(&toml_path), toml_path.clone());
    let mut warnings = Vec::new();

    // Issuers and their keys.
    let mut issuers = Vec::new();
    for it in &project.issuer {
        let line =
            toml_text.find(&format!("\"{}\"", it.name)).map(|p| toml_text[..p].matches('\n').count() + 1);
        let at = |why: String| err(&toml_path, line, format!("issuer {:?}: {why}", it.name));
        if it.keys.is_empty() && it.jwks.is_none() {
            return Err(at("no keys: give keys = [\"keys/x.pub\"] or jwks = \"keys/x.jwks.json\"".into()));
        }
        let mut ikeys = Vec::new();
        for k in &it.keys {
            let path = dir.join(k);
            if !path.exists() {
                return Err(at(format!("missing key file {k}")));
            }
            bump(&mut newest, &path);
            let file = keys::load_issuer_pem(&path).map_err(|e| at(e.to_string()))?;
            ikeys.push(issuer_key(k, file).map_err(at)?);
        }
        if let Some(j) = &it.jwks {
            let path = dir.join(j);
            if !path.exists() {
                return Err(at(format!("missing JWKS file {j}")));
            }
            bump(&mut newest, &path);
            for file in keys::load_jwks(&path).map_err(|e| at(e.to_string()))? {
                ikeys.push(issuer_key(j, file).map_err(at)?);
            }
        }
        let mut algorithms = Vec::with_capacity(it.algorithms.len());
        for a in &it.algorithms {
            let alg = model::JwsAlg::parse(a).ok_or_else(|| {
                at(format!(
                    "algorithms: unknown algorithm {a:?} (known: {}; none and HS* are never accepted)",
                    model::JwsAlg::ALL.map(model::JwsAlg::as_str).join(", ")
                ))
            })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        issuers.push(Issuer {
            name: it.name.clone(),
            issuer: it.issuer.clone(),
            audience: it.audience.clone(),
            keys: ikeys,
            validate_subscription: it.validate_subscription,
            algorithms,
            tokens: it.tokens,
            api_keys: it.api_keys,
        });
    }

    // Policies: the project's, then WSO2 defaults for names it does not define.
    let mut policies = Vec::new();
    let levels = [
        (PolicyLevel::Api, &project.policies.api, "api"),
        (PolicyLevel::Api, &project.policies.resource, "resource"),
        (PolicyLevel::Application, &project.policies.application, "application"),
        (PolicyLevel::Subscription, &project.policies.subscription, "subscription"),
    ];
    for (level, defs, section) in levels {
        for (name, p) in defs {
            let line = locate(&toml_text, &[name.as_str()]);
            let at = |why: String| err(&toml_path, line, format!("policies.{section}.{name}: {why}"));
            let window = parse_window(&p.per).ok_or_else(|| {
                at(format!("per = {:?}: use a count and s, m, h or d, up to 1d (e.g. \"1m\")", p.per))
            })?;
            if p.requests == 0 {
                return Err(at("requests must be at least 1".into()));
            }
            if name == UNLIMITED {
                return Err(at(format!("{UNLIMITED} is built in (no check) and cannot be redefined")));
            }
            if policies.iter().any(|q: &Policy| q.level == level && &q.name == name) {
                return Err(at("defined in both [policies.api] and [policies.resource]".into()));
            }
            policies.push(Policy {
                level,
                name: name.clone(),
                requests: p.requests,
                window_s: window,
                stop_on_quota_reach: p.stop_on_quota_reach,
            });
        }
    }
    for &(level, name, requests) in DEFAULT_POLICIES {
        if !policies.iter().any(|q| q.level == level && q.name == name) {
            policies.push(Policy {
                level,
                name: name.into(),
                requests,
                window_s: 60,
                stop_on_quota_reach: true,
            });
        }
    }
    policies.sort_by(|a, b| (a.level.as_str(), &a.name).cmp(&(b.level.as_str(), &b.name)));

    // WSO2 documents several scopes in one requirement as alternatives, and the definitions
    // people bring were written for it; OpenAPI's all-of reading is the opt-in.
    // `None`: the default (any-of), with a warning wherever it decides something.
    let scope_setting = match project.scopes.as_deref() {
        None => None,
        Some("any-of") => Some(ScopeRule::AnyOf),
        Some("all-of") => Some(ScopeRule::AllOf),
        Some(other) => {
            return Err(err(
                &toml_path,
                toml_text
                    .lines()
                    .position(|l| {
                        l.trim_start().strip_prefix("scopes").is_some_and(|r| r.trim_start().starts_with('='))
                    })
                    .map(|i| i + 1),
                format!(
                    "scopes = {other:?}: use \"any-of\" (one listed scope is enough, as WSO2 reads it) \
                     or \"all-of\" (every listed scope, as OpenAPI reads it)"
                ),
            ));
        }
    };

    // APIs.
    let apis_dir = dir.join("apis");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&apis_dir)
        .map_err(|e| err(&apis_dir, None, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(&apis_dir, None, "no OpenAPI files (*.yaml, *.yml, *.json)"));
    }
    let mut apis: Vec<Api> = Vec::new();
    let mut context_file: HashMap<String, PathBuf> = HashMap::new();
    for file in &files {
        bump(&mut newest, file);
        let api = compile_api(file, &policies, scope_setting, &mut warnings)?;
        if let Some(other) = context_file.get(&api.context) {
            let text = read_input(file)?;
            return Err(err(
                file,
                locate(&text, &["x-wso2-basePath"]),
                format!("duplicate context {:?}: also used by {}", api.context, other.display()),
            ));
        }
        context_file.insert(api.context.clone(), file.clone());
        apis.push(api);
    }
    apis.sort_by(|a, b| a.context.cmp(&b.context));

    let mut revoked = project.revoked.jti.clone();
    revoked.sort();
    revoked.dedup();

    let created_at = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => {
            let t: u64 = v.trim().parse().map_err(|_| {
                err(Path::new("SOURCE_DATE_EPOCH"), None, format!("{v:?} is not a Unix time"))
            })?;
            if t > now {
                return Err(err(
                    Path::new("SOURCE_DATE_EPOCH"),
                    None,
                    format!(
                        "{t} is later than this machine's clock ({now}): devices would take it as the \
                         earliest possible time and refuse every token as expired"
                    ),
                ));
            }
            t
        }
        Err(_) if newest.0 > now => {
            warnings.push(format!(
                "{}: modified in the future ({}, this machine's clock says {now}); the bundle's \
                 build time is clamped to now",
                newest.1.display(),
                newest.0
            ));
            now
        }
        Err(_) => newest.0,
    };

    let default_tier = default_subscription_tier(&project, &policies, &toml_text, &toml_path)?;
    let manifest = Manifest {
        label: project.label.clone(),
        serial,
        created_at,
        issuers,
        policies,
        apis,
        revoked_jti: revoked,
        scope_rule: scope_setting.unwrap_or(ScopeRule::AnyOf),
        default_subscription_tier: default_tier,
    };
    if !manifest.issuers.iter().any(|i| i.api_keys) {
        let takes_keys = |a: &Api| a.operations.iter().any(|o| o.api_key && !o.disable_security);
        for api in manifest.apis.iter().filter(|a| takes_keys(a)) {
            warnings.push(format!(
                "API {:?} {:?} accepts API keys, but no issuer has api_keys = true: every key will be \
                 refused",
                api.name, api.version
            ));
        }
    }
    manifest.check().map_err(|e| err(&toml_path, None, e.0))?;
    Ok(Compiled { manifest, warnings })
}

/// The project's `default_subscription_tier`: absent is WSO2's `Default` policy, `""` is none
/// (such callers are not limited at the subscription level), anything else a subscription
/// policy or `Unlimited`.
fn default_subscription_tier(
    project: &ProjectToml,
    policies: &[Policy],
    toml_text: &str,
    toml_path: &Path,
) -> Result<Option<String>, ProjectError> {
    match project.default_subscription_tier.as_deref() {
        None => Ok(Some(DEFAULT_SUBSCRIPTION_TIER.to_owned())),
        Some("") => Ok(None),
        Some(t)
            if t == UNLIMITED
                || policies.iter().any(|p| p.level == PolicyLevel::Subscription && p.name == t) =>
        {
            Ok(Some(t.to_owned()))
        }
        Some(t) => {
            let known: Vec<&str> = policies
                .iter()
                .filter(|p| p.level == PolicyLevel::Subscription)
                .map(|p| p.name.as_str())
                .collect();
            Err(err(
                toml_path,
                toml_text
                    .lines()
                    .position(|l| l.trim_start().starts_with("default_subscription_tier"))
                    .map(|i| i + 1),
                format!(
                    "default_subscription_tier {t:?} is not a subscription policy (known: {}, {UNLIMITED}; \
                     \"\" for none)",
                    known.join(", ")
                ),
            ))
        }
    }
}

/// The subscription tier of tokens that name none, unless the project says otherwise: WSO2's
/// `Default` subscription policy (500 requests a minute unless redefined).
pub const DEFAULT_SUBSCRIPTION_TIER: &str = "Default";

/// Extensions accepted and ignored with a warning: they change nothing gatelet decides.
const IGNORED_EXTENSIONS: &[&str] = &["x-wso2-owner", "x-wso2-response-cache", "x-wso2-endpoints"];

fn parse_document(file: &Path, text: &str) -> Result<Value, ProjectError> {
    let is_json = file.extension().and_then(|e| e.to_str()) == Some("json");
    if is_json {
        serde_json::from_str(text).map_err(|e| err(file, Some(e.line()), e.to_string()))
    } else {
        serde_saphyr::from_str::<Value>(text).map_err(|e| {
            let msg = e.to_string();
            // The parser's message carries the position; keep its first line.
            let first = msg.lines().next().unwrap_or("not valid YAML").to_owned();
            let line = msg
                .split("line ")
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok());
            err(file, line, format!("not valid YAML: {first}"))
        })
    }
}

struct Doc<'a> {
    file: &'a Path,
    text: String,
    root: Value,
}

impl Doc<'_> {
    fn fail(&self, at: &[&str], why: impl Into<String>) -> ProjectError {
        err(self.file, locate(&self.text, at), why.into())
    }

    /// Like [`Doc::fail`], pointing at the line of `value` after the keys when it can be found.
    fn fail_value(&self, at: &[&str], value: &str, why: impl Into<String>) -> ProjectError {
        let start = locate_offset(&self.text, at).unwrap_or(0);
        let line = match self.text[start..].find(value) {
            Some(i) => Some(self.text[..start + i].matches('\n').count() + 1),
            None => locate(&self.text, at),
        };
        err(self.file, line, why.into())
    }
}

fn compile_api(
    file: &Path,
    policies: &[Policy],
    scope_rule: Option<ScopeRule>,
    warnings: &mut Vec<String>,
) -> Result<Api, ProjectError> {
    let text = read_input(file)?;
    let root = parse_document(file, &text)?;
    let doc = Doc { file, text, root };
    let root =
        doc.root.as_object().ok_or_else(|| doc.fail(&[], "not an OpenAPI document (not a mapping)"))?;

    let swagger2 = match (root.get("openapi"), root.get("swagger")) {
        (Some(Value::String(v)), _) if v.starts_with("3.") => false,
        (_, Some(Value::String(v))) if v == "2.0" => true,
        (Some(v), _) => return Err(doc.fail(&["openapi"], format!("unsupported OpenAPI version {v}"))),
        _ => return Err(doc.fail(&[], "neither \"openapi: 3.x\" nor \"swagger: 2.0\"")),
    };
    let info = root.get("info").and_then(Value::as_object).ok_or_else(|| doc.fail(&[], "missing info"))?;
    let name = str_field(&doc, info, "title", &["info", "title"])?;
    let version = str_field(&doc, info, "version", &["info", "version"])?;

    for key in root.keys().filter(|k| k.starts_with("x-wso2-")) {
        check_extension(
            &doc,
            key,
            &[
                "x-wso2-basePath",
                "x-wso2-production-endpoints",
                "x-wso2-sandbox-endpoints",
                "x-wso2-throttling-tier",
                "x-wso2-disable-security",
                "x-wso2-auth-header",
                "x-wso2-cors",
                "x-wso2-transports",
                // Named endpoint lists, used through "#/x-wso2-endpoints/NAME" references.
                "x-wso2-endpoints",
            ],
            warnings,
        )?;
    }

    // The context: x-wso2-basePath, else (as Microgateway does) the path of servers[0] (OpenAPI 3)
    // or basePath (Swagger 2).
    let (base, base_at): (String, &[&str]) = match root.get("x-wso2-basePath") {
        Some(b) => (
            b.as_str()
                .ok_or_else(|| doc.fail(&["x-wso2-basePath"], "x-wso2-basePath is not a string"))?
                .to_owned(),
            &["x-wso2-basePath"],
        ),
        None => {
            let (path, at) = context_fallback(&doc, root, swagger2)?;
            (path, at)
        }
    };
    let context = base.replace("{version}", &version);
    let context = context.trim_end_matches('/').to_owned();
    model::check_context(&context).map_err(|e| doc.fail(base_at, format!("{}: {e}", base_at[0])))?;

    let tier = tier_field(&doc, root, &["x-wso2-throttling-tier"], policies)?;
    let disable_security = bool_field(&doc, root, "x-wso2-disable-security", &[])?.unwrap_or(false);
    let auth_header = match root.get("x-wso2-auth-header") {
        None => None,
        Some(Value::String(h)) => {
            let h = h.to_ascii_lowercase();
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(doc.fail(
                    &["x-wso2-auth-header"],
                    format!("x-wso2-auth-header {h:?} is not a header name"),
                ));
            }
            (h != "authorization").then_some(h)
        }
        Some(_) => return Err(doc.fail(&["x-wso2-auth-header"], "x-wso2-auth-header is not a string")),
    };
    let mut production = endpoints_field(&doc, root, "x-wso2-production-endpoints", &[], warnings)?;
    let sandbox = endpoints_field(&doc, root, "x-wso2-sandbox-endpoints", &[], warnings)?;
    if production.is_none() {
        production = server_fallback(&doc, root, swagger2)?;
    }
    let cors = cors_field(&doc, root)?;
    let https_only = transports_field(&doc, root)?;

    let schemes = if swagger2 {
        root.get("securityDefinitions")
    } else {
        root.get("components").and_then(|c| c.get("securitySchemes"))
    };
    let schemes = schemes.and_then(Value::as_object);
    let api_security = root.get("security");

    let paths = root.get("paths").and_then(Value::as_object).ok_or_else(|| doc.fail(&[], "missing paths"))?;
    let mut operations = Vec::new();
    let mut api_key_locations: Vec<ApiKeyLocation> = Vec::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .ok_or_else(|| doc.fail(&["paths", path], format!("path {path}: not a mapping")))?;
        let path_norm = if path == "/" { "/".to_owned() } else { path.trim_end_matches('/').to_owned() };
        model::check_path_template(&path_norm)
            .map_err(|e| doc.fail(&["paths", path], format!("path {e}")))?;
        for (key, op) in item {
            let Some(method) = Method::parse(key).filter(|_| key.bytes().all(|b| b.is_ascii_lowercase()))
            else {
                if key.starts_with("x-wso2-") {
                    return Err(doc.fail(
                        &["paths", path, key],
                        format!("{path}: {key} belongs on an operation, not on the path item"),
                    ));
                }
                continue;
            };
            let at = ["paths", path.as_str(), key.as_str()];
            let opo = op.as_object().ok_or_else(|| doc.fail(&at, format!("{key} {path}: not a mapping")))?;
            for ext in opo.keys().filter(|k| k.starts_with("x-wso2-")) {
                check_extension(
                    &doc,
                    ext,
                    &[
                        "x-wso2-production-endpoints",
                        "x-wso2-sandbox-endpoints",
                        "x-wso2-throttling-tier",
                        "x-wso2-disable-security",
                    ],
                    warnings,
                )?;
            }
            let op_tier = tier_field(&doc, opo, &[&at[..], &["x-wso2-throttling-tier"]].concat(), policies)?;
            let op_disable =
                bool_field(&doc, opo, "x-wso2-disable-security", &at)?.unwrap_or(disable_security);
            let (security, security_at): (_, Vec<&str>) = match opo.get("security") {
                Some(s) => (Some(s), [&at[..], &["security"]].concat()),
                None => (api_security, vec!["security"]),
            };
            let security = scopes_of(
                &doc,
                &Requirements {
                    operation: &format!("{} {path}", method.as_str()),
                    security,
                    at: &security_at,
                    security_disabled: op_disable,
                    scope_rule,
                },
                schemes,
                warnings,
            )?;
            operations.push(Operation {
                method,
                path: path_norm.clone(),
                tier: op_tier,
                disable_security: op_disable,
                scopes: security.scopes,
                production: endpoints_field(&doc, opo, "x-wso2-production-endpoints", &at, warnings)?,
                sandbox: endpoints_field(&doc, opo, "x-wso2-sandbox-endpoints", &at, warnings)?,
                bearer: security.bearer,
                api_key: security.api_key,
            });
            for loc in security.locations {
                if !api_key_locations.contains(&loc) {
                    api_key_locations.push(loc);
                }
            }
        }
    }
    if operations.is_empty() {
        return Err(doc.fail(&["paths"], "no operations"));
    }
    operations.sort_by(|a, b| (&a.path, a.method.as_str()).cmp(&(&b.path, b.method.as_str())));
    if let Some(w) = operations.windows(2).find(|w| w[0].path == w[1].path && w[0].method == w[1].method) {
        return Err(doc.fail(
            &["paths"],
            format!(
                "{} {} is declared twice (paths differing only by a trailing '/')",
                w[0].method.as_str(),
                w[0].path
            ),
        ));
    }

    // As in WSO2, credentials given for the API's endpoints also apply to an operation's own
    // endpoints of the same kind that give none, but only when those are the same backends
    // (scheme, host and port): a password is never handed to a server it was not written for.
    for op in &mut operations {
        let (method, path) = (op.method, op.path.clone());
        for (own, api_level) in [(&mut op.production, &production), (&mut op.sandbox, &sandbox)] {
            let (Some(own), Some(api_level)) = (own.as_mut(), api_level) else { continue };
            if own.basic_auth.is_some() || api_level.basic_auth.is_none() {
                continue;
            }
            let known: Vec<_> = api_level.urls.iter().map(HttpUrl::origin).collect();
            if own.urls.iter().all(|u| known.contains(&u.origin())) {
                own.basic_auth.clone_from(&api_level.basic_auth);
            } else {
                warnings.push(format!(
                    "{}: {} {path}: the API's endpoint securityConfig is not given to this operation's \
                     endpoints, which are other backends; give them their own securityConfig",
                    file.display(),
                    method.as_str()
                ));
            }
        }
    }

    let api = Api {
        name,
        version,
        context,
        tier,
        disable_security,
        auth_header,
        production,
        sandbox,
        cors,
        operations,
        https_only,
        api_key_locations: {
            api_key_locations.sort_by(|a, b| (a.query, &a.name).cmp(&(b.query, &b.name)));
            if api_key_locations.len() > model::MAX_API_KEY_LOCATIONS {
                return Err(doc.fail(
                    &["components"],
                    format!("more than {} API key locations", model::MAX_API_KEY_LOCATIONS),
                ));
            }
            api_key_locations
        },
    };
    let no_endpoint = api.production.is_none()
        && api.sandbox.is_none()
        && api.operations.iter().any(|o| o.production.is_none() && o.sandbox.is_none());
    if no_endpoint {
        if let Some(url) =
            (!swagger2).then(|| first_server_url(root)).flatten().filter(|u| u.starts_with('/'))
        {
            return Err(doc.fail(
                &["servers"],
                format!(
                    "no endpoint: servers[0] is a relative URL ({url}), which gives the context, not a \
                     backend; name the backend in x-wso2-production-endpoints"
                ),
            ));
        }
        return Err(doc.fail(&[], "no endpoint: give x-wso2-production-endpoints (or servers)"));
    }
    Ok(api)
}

fn check_extension(
    doc: &Doc,
    key: &str,
    allowed: &[&str],
    warnings: &mut Vec<String>,
) -> Result<(), ProjectError> {
    if allowed.contains(&key) {
        return Ok(());
    }
    if IGNORED_EXTENSIONS.contains(&key) {
        warnings.push(format!("{}: {key} is ignored by gatelet", doc.file.display()));
        return Ok(());
    }
    Err(doc.fail(&[key], format!("{key} is not supported here; refusing rather than ignoring it")))
}

fn str_field(doc: &Doc, obj: &Map<String, Value>, key: &str, at: &[&str]) -> Result<String, ProjectError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(doc.fail(at, format!("{key} is not a non-empty string"))),
        None => Err(doc.fail(at, format!("missing {key}"))),
    }
}

fn bool_field(
    doc: &Doc,
    obj: &Map<String, Value>,
    key: &str,
    at: &[&str],
) -> Result<Option<bool>, ProjectError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(doc.fail(&[at, &[key]].concat(), format!("{key} is not true or false"))),
    }
}

fn tier_field(
    doc: &Doc,
    obj: &Map<String, Value>,
    at: &[&str],
    policies: &[Policy],
) -> Result<Option<String>, ProjectError> {
    let key = "x-wso2-throttling-tier";
    let at: Vec<&str> = if at.last() == Some(&key) { at.to_vec() } else { [at, &[key]].concat() };
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(t)) => {
            if t == UNLIMITED || policies.iter().any(|p| p.level == PolicyLevel::Api && &p.name == t) {
                Ok(Some(t.clone()))
            } else {
                let known: Vec<&str> = policies
                    .iter()
                    .filter(|p| p.level == PolicyLevel::Api)
                    .map(|p| p.name.as_str())
                    .collect();
                Err(doc.fail(
                    &at,
                    format!(
                        "unknown tier {t:?} (known API/resource tiers: {}, {UNLIMITED})",
                        known.join(", ")
                    ),
                ))
            }
        }
        Some(_) => Err(doc.fail(&at, format!("{key} is not a string"))),
    }
}

fn endpoints_field(
    doc: &Doc,
    obj: &Map<String, Value>,
    key: &str,
    at: &[&str],
    warnings: &mut Vec<String>,
) -> Result<Option<Endpoints>, ProjectError> {
    let Some(v) = obj.get(key) else { return Ok(None) };
    let at: Vec<&str> = [at, &[key]].concat();
    let resolved;
    let v = match v {
        Value::String(r) => {
            // A reference into the document's x-wso2-endpoints: "#/x-wso2-endpoints/NAME".
            let name = r.strip_prefix("#/x-wso2-endpoints/").ok_or_else(|| {
                doc.fail(&at, format!("{key}: {r:?} is not a reference like #/x-wso2-endpoints/NAME"))
            })?;
            resolved = lookup_endpoint(&doc.root, name)
                .ok_or_else(|| doc.fail(&at, format!("{key}: no endpoint {name:?} in x-wso2-endpoints")))?;
            &resolved
        }
        v => v,
    };
    let o = v.as_object().ok_or_else(|| doc.fail(&at, format!("{key} is not a mapping with urls")))?;
    for k in o.keys() {
        if !matches!(k.as_str(), "urls" | "type" | "securityConfig" | "advanceEndpointConfig") {
            return Err(doc.fail(
                &at,
                format!("{key}.{k} is not supported (urls, type, securityConfig, advanceEndpointConfig)"),
            ));
        }
    }
    let texts: Vec<&str> = match o.get("urls") {
        Some(Value::Array(a)) => a
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or_else(|| doc.fail(&at, format!("{key}.urls: every URL must be a string")))?,
        _ => return Err(doc.fail(&at, format!("{key}: urls must be a list"))),
    };
    if texts.is_empty() {
        return Err(doc.fail(&at, format!("{key}: urls is empty")));
    }
    let urls = texts
        .into_iter()
        .map(|u| HttpUrl::parse(u).map_err(|e| doc.fail_value(&at, u, format!("{key}: bad URL {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let kind = match o.get("type").map(|t| t.as_str()) {
        None if urls.len() == 1 => EndpointKind::Single,
        None => EndpointKind::LoadBalance,
        Some(Some("failover")) => EndpointKind::Failover,
        Some(Some("load_balance")) => EndpointKind::LoadBalance,
        Some(other) => {
            return Err(
                doc.fail(&at, format!("{key}.type {:?}: use failover or load_balance", other.unwrap_or("?")))
            );
        }
    };
    let kind = if urls.len() == 1 { EndpointKind::Single } else { kind };
    let basic_auth = match o.get("securityConfig") {
        None => None,
        Some(v) => Some(security_config(doc, &at, key, v)?),
    };
    let (timeout_ms, retries) = match o.get("advanceEndpointConfig") {
        None => (None, 0),
        Some(v) => advance_config(doc, &at, key, v, warnings)?,
    };
    Ok(Some(Endpoints { kind, urls, timeout_ms, retries, basic_auth }))
}

/// `securityConfig` of an endpoint list: HTTP basic credentials for the backend. The password
/// never appears in a message (nor does anything else of the mapping's values).
fn security_config(doc: &Doc, at: &[&str], key: &str, v: &Value) -> Result<model::BasicAuth, ProjectError> {
    let what = format!("{key}.securityConfig");
    let o = v.as_object().ok_or_else(|| doc.fail(at, format!("{what} is not a mapping")))?;
    for k in o.keys() {
        if !matches!(k.as_str(), "type" | "username" | "password") {
            return Err(doc.fail(at, format!("{what}.{k} is not supported (type, username, password)")));
        }
    }
    match o.get("type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("basic") => {}
        Some(t) => {
            return Err(doc.fail(
                at,
                format!(
                    "{what}.type {t:?} is not supported: gatelet sends only HTTP basic credentials to a \
                     backend (type: basic); a backend can instead trust the caller's token gatelet \
                     forwards in X-JWT-Assertion"
                ),
            ));
        }
        None => return Err(doc.fail(at, format!("{what}.type is missing: say type: basic"))),
    }
    let username = match o.get("username") {
        Some(Value::String(u)) if !u.is_empty() => u.clone(),
        _ => return Err(doc.fail(at, format!("{what}.username is missing or not a non-empty string"))),
    };
    if username.contains(':') {
        return Err(doc.fail(at, format!("{what}.username cannot contain ':' (RFC 7617)")));
    }
    let password = match o.get("password") {
        Some(Value::String(p)) => p.clone(),
        Some(_) => return Err(doc.fail(at, format!("{what}.password is not a string"))),
        None => {
            return Err(doc.fail(
                at,
                format!(
                    "{what}.password is missing: a device reads nothing but the signed bundle, so the \
                     password must be in the definition"
                ),
            ));
        }
    };
    Ok(model::BasicAuth { username, password })
}

/// `advanceEndpointConfig` of an endpoint list: the response timeout and the retry count.
fn advance_config(
    doc: &Doc,
    at: &[&str],
    key: &str,
    v: &Value,
    warnings: &mut Vec<String>,
) -> Result<(Option<u32>, u8), ProjectError> {
    let what = format!("{key}.advanceEndpointConfig");
    let o = v.as_object().ok_or_else(|| doc.fail(at, format!("{what} is not a mapping")))?;
    for k in o.keys() {
        if !matches!(k.as_str(), "timeoutInMillis" | "retryConfig") {
            return Err(doc.fail(at, format!("{what}.{k} is not supported (timeoutInMillis, retryConfig)")));
        }
    }
    let timeout_ms = match o.get("timeoutInMillis") {
        None => None,
        Some(t) => Some(
            t.as_u64()
                .filter(|t| (1..=u64::from(model::MAX_ENDPOINT_TIMEOUT_MS)).contains(t))
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    doc.fail(
                        at,
                        format!(
                            "{what}.timeoutInMillis: give a whole number of milliseconds from 1 to {}",
                            model::MAX_ENDPOINT_TIMEOUT_MS
                        ),
                    )
                })?,
        ),
    };
    let Some(retry) = o.get("retryConfig") else { return Ok((timeout_ms, 0)) };
    let r = retry.as_object().ok_or_else(|| doc.fail(at, format!("{what}.retryConfig is not a mapping")))?;
    let mut ignored = Vec::new();
    for k in r.keys() {
        match k.as_str() {
            "count" => {}
            "statusCodes" | "intervalInMillis" | "backOffFactor" | "maxWaitIntervalInMillis" => {
                ignored.push(k.as_str());
            }
            _ => {
                return Err(doc.fail(
                    at,
                    format!(
                        "{what}.retryConfig.{k} is not supported (count; statusCodes, intervalInMillis, \
                         backOffFactor and maxWaitIntervalInMillis are read and ignored)"
                    ),
                ));
            }
        }
    }
    let retries = match r.get("count") {
        None => 0,
        Some(c) => c
            .as_u64()
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c <= model::MAX_RETRIES)
            .ok_or_else(|| {
                doc.fail(
                    at,
                    format!("{what}.retryConfig.count: give a whole number from 0 to {}", model::MAX_RETRIES),
                )
            })?,
    };
    if !ignored.is_empty() {
        let line = locate(&doc.text, &[at, &["retryConfig"]].concat())
            .or_else(|| locate(&doc.text, at))
            .map_or(String::new(), |l| format!(":{l}"));
        warnings.push(format!(
            "{}{line}: {what}.retryConfig: {} ignored: gatelet retries only a request that never reached \
             a backend (its connection failed before any byte of it was sent), at once, on the next URL; \
             retrying after a status code or a wait would repeat a request the backend already received, \
             which can repeat a non-idempotent action",
            doc.file.display(),
            ignored.join(", ")
        ));
    }
    Ok((timeout_ms, retries))
}

fn lookup_endpoint(root: &Value, name: &str) -> Option<Value> {
    match root.get("x-wso2-endpoints")? {
        Value::Object(m) => m.get(name).cloned(),
        Value::Array(list) => list.iter().find_map(|e| e.get(name).cloned()),
        _ => None,
    }
}

/// `servers[0].url` with its variables filled from their defaults (OpenAPI 3).
fn first_server_url(root: &Map<String, Value>) -> Option<String> {
    let server = root.get("servers")?.as_array()?.first()?;
    let mut url = server.get("url")?.as_str()?.to_owned();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            if let Some(default) = var.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{name}}}"), default);
            }
        }
    }
    Some(url)
}

/// The context of an API without `x-wso2-basePath`: the path of `servers[0]` (absolute or
/// relative URL) or Swagger 2's `basePath`, and where it was found.
fn context_fallback(
    doc: &Doc,
    root: &Map<String, Value>,
    swagger2: bool,
) -> Result<(String, &'static [&'static str]), ProjectError> {
    let missing = |what: &str| {
        doc.fail(
            &[],
            format!(
                "no x-wso2-basePath, and {what} to take the context from (the path the gateway serves \
                 this API under)"
            ),
        )
    };
    if swagger2 {
        let base = root.get("basePath").and_then(Value::as_str).ok_or_else(|| missing("no basePath"))?;
        return Ok((base.to_owned(), &["basePath"]));
    }
    let url = first_server_url(root).ok_or_else(|| missing("no servers[0].url"))?;
    let path = if url.starts_with('/') {
        url.clone()
    } else {
        // scheme://authority/path?query: the path as written (a '/' in the query is not one).
        let parsed = HttpUrl::parse(&url)
            .map_err(|e| doc.fail(&["servers"], format!("servers[0].url is not usable: {e}")))?;
        parsed.target().split('?').next().unwrap_or("").to_owned()
    };
    if path.is_empty() || path == "/" {
        return Err(missing(&format!("servers[0].url ({url}) has no path")));
    }
    Ok((path, &["servers"]))
}

fn server_fallback(
    doc: &Doc,
    root: &Map<String, Value>,
    swagger2: bool,
) -> Result<Option<Endpoints>, ProjectError> {
    let url = if swagger2 {
        let Some(host) = root.get("host").and_then(Value::as_str) else { return Ok(None) };
        let scheme = root
            .get("schemes")
            .and_then(Value::as_array)
            .and_then(|s| s.first())
            .and_then(Value::as_str)
            .unwrap_or("https");
        let base = root.get("basePath").and_then(Value::as_str).unwrap_or("");
        format!("{scheme}://{host}{base}")
    } else {
        let Some(url) = first_server_url(root) else { return Ok(None) };
        // A relative URL is a path on the gateway (the context), not a backend.
        if url.starts_with('/') {
            return Ok(None);
        }
        url
    };
    let url = HttpUrl::parse(&url).map_err(|e| {
        doc.fail(
            &[if swagger2 { "host" } else { "servers" }],
            format!("no x-wso2-production-endpoints and the server URL is not usable: {e}"),
        )
    })?;
    Ok(Some(Endpoints { kind: EndpointKind::Single, urls: vec![url], ..Endpoints::default() }))
}

fn string_list(doc: &Doc, v: Option<&Value>, at: &[&str], what: &str) -> Result<Vec<String>, ProjectError> {
    match v {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| doc.fail(at, format!("{what}: every entry must be a string"))),
        Some(_) => Err(doc.fail(at, format!("{what} is not a list"))),
    }
}

/// `x-wso2-transports`: `[https]` makes the API HTTPS-only; `[http]` or `[http, https]` (and no
/// list at all) serve it on both listeners, as Microgateway did.
fn transports_field(doc: &Doc, root: &Map<String, Value>) -> Result<bool, ProjectError> {
    let key = "x-wso2-transports";
    let Some(v) = root.get(key) else { return Ok(false) };
    let list = string_list(doc, Some(v), &[key], key)?;
    if list.is_empty() {
        return Err(doc.fail(&[key], format!("{key} is empty: list http, https or both")));
    }
    let (mut http, mut https) = (false, false);
    for t in &list {
        match t.to_ascii_lowercase().as_str() {
            "http" => http = true,
            "https" => https = true,
            _ => {
                return Err(doc.fail_value(
                    &[key],
                    t,
                    format!("{key}: unknown transport {t:?} (use http, https or both)"),
                ));
            }
        }
    }
    Ok(https && !http)
}

/// The keys of `x-wso2-cors`, as words; each is accepted in the three spellings WSO2 accepts
/// (`accessControlAllowOrigins`, `access_control_allow_origins`, `access-control-allow-origins`).
const CORS_KEYS: [&[&str]; 6] = [
    &["access", "control", "allow", "origins"],
    &["access", "control", "allow", "headers"],
    &["access", "control", "allow", "methods"],
    &["access", "control", "allow", "credentials"],
    &["access", "control", "expose", "headers"],
    &["cors", "configuration", "enabled"],
];

/// Which of [`CORS_KEYS`] `key` spells, if any.
fn cors_key(key: &str) -> Option<usize> {
    CORS_KEYS.iter().position(|words| {
        let camel: String = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    (*w).to_owned()
                } else {
                    let mut c = w.chars();
                    c.next().map_or(String::new(), |f| f.to_ascii_uppercase().to_string() + c.as_str())
                }
            })
            .collect();
        key == camel || key == words.join("_") || key == words.join("-")
    })
}

fn cors_field(doc: &Doc, root: &Map<String, Value>) -> Result<Option<Cors>, ProjectError> {
    let Some(v) = root.get("x-wso2-cors") else { return Ok(None) };
    let at = ["x-wso2-cors"];
    let o = v.as_object().ok_or_else(|| doc.fail(&at, "x-wso2-cors is not a mapping"))?;
    // The value of each key, and the spelling it was found under.
    let mut found: [Option<(&str, &Value)>; CORS_KEYS.len()] = Default::default();
    for (k, v) in o {
        let i = cors_key(k)
            .ok_or_else(|| doc.fail_value(&at, k, format!("x-wso2-cors.{k} is not a known CORS key")))?;
        if let Some((other, _)) = found[i] {
            return Err(doc.fail_value(
                &at,
                k,
                format!("x-wso2-cors: {other} and {k} are two spellings of one key; keep one"),
            ));
        }
        found[i] = Some((k.as_str(), v));
    }
    let list = |i: usize| match found[i] {
        Some((k, v)) => string_list(doc, Some(v), &at, &format!("x-wso2-cors.{k}")),
        None => Ok(Vec::new()),
    };
    let flag = |i: usize| match found[i] {
        None => Ok(None),
        Some((_, Value::Bool(b))) => Ok(Some(*b)),
        Some((k, _)) => Err(doc.fail_value(&at, k, format!("x-wso2-cors.{k} is not true or false"))),
    };
    let enabled = flag(5)?.unwrap_or(true);
    let cors = Cors {
        allow_origins: list(0)?,
        allow_headers: list(1)?,
        allow_methods: list(2)?,
        allow_credentials: flag(3)?.unwrap_or(false),
        expose_headers: list(4)?,
    };
    Ok(enabled.then_some(cors))
}

/// What gatelet makes of a security scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemeKind {
    /// Carried as a bearer JWT (OAuth2, OpenID Connect, HTTP bearer): the token validator checks
    /// it, scopes included.
    Jwt,
    /// A WSO2 API key (a self-contained JWT) read from a header or a query parameter.
    ApiKey(ApiKeyLocation),
    /// A credential gatelet does not read (HTTP basic, mutual TLS, anything else), named for
    /// messages. A requirement that needs one can never be met, so it is dropped: were it kept, a
    /// JWT would stand in for a credential nobody checked.
    Unchecked(String),
}

fn scheme_kind(doc: &Doc, name: &str, def: &Value, at: &[&str]) -> Result<SchemeKind, ProjectError> {
    let Some(kind) = def.get("type").and_then(Value::as_str) else {
        return Err(doc.fail(at, format!("security scheme {name:?} has no type")));
    };
    Ok(match kind {
        "oauth2" | "openIdConnect" => SchemeKind::Jwt,
        // RFC 7235: auth scheme names are case-insensitive.
        "http" => match def.get("scheme").and_then(Value::as_str) {
            Some(s) if s.eq_ignore_ascii_case("bearer") => SchemeKind::Jwt,
            Some(s) => SchemeKind::Unchecked(format!("http {}", s.to_ascii_lowercase())),
            None => SchemeKind::Unchecked("http".into()),
        },
        "apiKey" => {
            let key_name = def.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
            let Some(key_name) = key_name else {
                return Err(doc.fail(at, format!("apiKey security scheme {name:?} has no name")));
            };
            match def.get("in").and_then(Value::as_str) {
                Some("header") => {
                    let lower = key_name.to_ascii_lowercase();
                    if !model::is_header_name(&lower) {
                        return Err(doc.fail(
                            at,
                            format!("apiKey security scheme {name:?}: {key_name:?} is not a header name"),
                        ));
                    }
                    SchemeKind::ApiKey(ApiKeyLocation { query: false, name: lower })
                }
                Some("query") => {
                    SchemeKind::ApiKey(ApiKeyLocation { query: true, name: key_name.to_owned() })
                }
                Some("cookie") => {
                    return Err(doc.fail(
                        at,
                        format!(
                            "apiKey security scheme {name:?}: in: cookie is not supported (a cookie is sent \
                             to every path of the site, and gatelet does not strip it); use in: header or \
                             in: query"
                        ),
                    ));
                }
                _ => {
                    return Err(
                        doc.fail(at, format!("apiKey security scheme {name:?}: in must be header or query"))
                    );
                }
            }
        }
        other => SchemeKind::Unchecked(other.to_owned()),
    })
}

/// What an operation's `security` compiles to.
#[derive(Debug, Default)]
struct Security {
    /// See [`model::Operation::scopes`].
    scopes: Vec<Vec<String>>,
    /// A bearer JWT is accepted.
    bearer: bool,
    /// An API key is accepted, from one of `locations`.
    api_key: bool,
    /// Where the API keys of the operation's requirements are read.
    locations: Vec<ApiKeyLocation>,
}

/// An operation's `security`, and what [`scopes_of`] needs to say where it is.
struct Requirements<'a> {
    /// `METHOD /path`, for messages.
    operation: &'a str,
    /// The operation's own requirements, else the API's.
    security: Option<&'a Value>,
    /// Where `security` is in the document.
    at: &'a [&'a str],
    /// `x-wso2-disable-security`: the requirements are never checked.
    security_disabled: bool,
    /// Whether the scopes of one requirement are alternatives or all needed; `None`: the
    /// project did not say (any-of, with a warning where it matters).
    scope_rule: Option<ScopeRule>,
}

/// OpenAPI security requirements → the scope alternatives a bearer JWT must meet (see
/// [`model::Operation::scopes`]), and whether an API key is accepted instead.
///
/// A requirement whose schemes are all JWT schemes stands for the union of their scopes: under
/// [`ScopeRule::AnyOf`] (WSO2's reading) each of them is an alternative of its own, under
/// [`ScopeRule::AllOf`] (OpenAPI's) the union is one alternative. One that needs no scope makes
/// any valid token enough, as does no `security` at all (WSO2's default: security on, no scope).
/// A requirement of one `apiKey` scheme alone accepts an API key from that scheme's header or
/// query parameter (an API key carries no scopes). A requirement that needs a scheme gatelet
/// cannot check, or an API key together with another credential, is dropped with a warning, and
/// an operation left with none fails the build, unless its security is disabled.
fn scopes_of(
    doc: &Doc,
    reqs: &Requirements,
    schemes: Option<&Map<String, Value>>,
    warnings: &mut Vec<String>,
) -> Result<Security, ProjectError> {
    let Some(security) = reqs.security else { return Ok(Security { bearer: true, ..Security::default() }) };
    let at = reqs.at;
    let list = security.as_array().ok_or_else(|| doc.fail(at, "security is not a list"))?;
    let mut alts = Vec::new();
    let mut any_token = list.is_empty();
    let mut dropped = Vec::new();
    let mut locations: Vec<ApiKeyLocation> = Vec::new();
    for req in list {
        let req = req.as_object().ok_or_else(|| doc.fail(at, "a security requirement is not a mapping"))?;
        let mut all = Vec::new();
        let mut unchecked = Vec::new();
        let mut keys = Vec::new();
        for (scheme, scopes) in req {
            let def = schemes
                .and_then(|s| s.get(scheme))
                .ok_or_else(|| doc.fail(at, format!("security scheme {scheme:?} is not defined")))?;
            let list = string_list(doc, Some(scopes), at, &format!("scopes of {scheme}"))?;
            match scheme_kind(doc, scheme, def, at)? {
                SchemeKind::Jwt => {
                    if def.get("type").and_then(Value::as_str) == Some("oauth2") {
                        let declared = declared_scopes(def);
                        // WSO2 accepts a scope its scheme does not declare; so does gatelet,
                        // with a warning (it is most often a typo).
                        for s in list.iter().filter(|s| !declared.contains(s)) {
                            let line = locate(&doc.text, at).map_or(String::new(), |l| format!(":{l}"));
                            warnings.push(format!(
                                "{}{line}: scope {s:?} is not declared in security scheme {scheme:?}; \
                                 it is required as written",
                                doc.file.display()
                            ));
                        }
                    }
                    all.extend(list);
                }
                SchemeKind::ApiKey(loc) => keys.push((scheme.clone(), loc)),
                SchemeKind::Unchecked(what) => unchecked.push(format!("{scheme:?} ({what})")),
            }
        }
        if !keys.is_empty() && (keys.len() > 1 || !unchecked.is_empty() || req.len() > 1) {
            // One request, two credentials: gatelet checks one credential per request.
            unchecked
                .extend(keys.iter().map(|(name, _)| format!("{name:?} (apiKey, with another credential)")));
            keys.clear();
        }
        if !unchecked.is_empty() {
            dropped.push(unchecked.join(" with "));
            continue;
        }
        if let Some((_, loc)) = keys.pop() {
            if !locations.contains(&loc) {
                locations.push(loc);
            }
            continue;
        }
        all.sort();
        all.dedup();
        if all.is_empty() {
            any_token = true;
        } else if reqs.scope_rule.unwrap_or(ScopeRule::AnyOf) == ScopeRule::AnyOf {
            if reqs.scope_rule.is_none() && all.len() > 1 {
                // A project rebuilt from definitions that were read all-of before would silently
                // open its operations wider: say so until the project chooses.
                let line = locate(&doc.text, reqs.at).map_or(String::new(), |l| format!(":{l}"));
                warnings.push(format!(
                    "{}{line}: {}: scopes {} in one requirement are alternatives (any one is \
                     enough, as in WSO2); set scopes = \"all-of\" in gatelet.toml to need all of \
                     them, or scopes = \"any-of\" to keep this and silence the warning",
                    doc.file.display(),
                    reqs.operation,
                    all.join(", ")
                ));
            }
            alts.extend(all.into_iter().map(|s| vec![s]));
        } else {
            alts.push(all);
        }
    }
    alts.sort();
    alts.dedup();
    if any_token {
        alts.clear();
    }
    let api_key = !locations.is_empty();
    let bearer = any_token || !alts.is_empty();
    if reqs.security_disabled {
        // Never checked; still a valid operation for the bundle's rules.
        return Ok(Security { scopes: alts, bearer: bearer || !api_key, api_key, locations });
    }
    let op = reqs.operation;
    if !bearer && !api_key {
        return Err(doc.fail(
            at,
            format!(
                "{op}: no security requirement gatelet can check is left: {} cannot be met with a \
                 JWT or an API key (use an oauth2, openIdConnect, http bearer or apiKey scheme, or \
                 x-wso2-disable-security)",
                dropped.join(", ")
            ),
        ));
    }
    let line = locate(&doc.text, at).map_or(String::new(), |l| format!(":{l}"));
    for d in &dropped {
        warnings.push(format!(
            "{}{line}: {op}: security requirement {d} dropped: gatelet does not check this scheme, and \
             a JWT must never stand in for it",
            doc.file.display()
        ));
    }
    Ok(Security { scopes: alts, bearer, api_key, locations })
}

fn declared_scopes(scheme: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |m: Option<&Value>| {
        if let Some(Value::Object(m)) = m {
            out.extend(m.keys().cloned());
        }
    };
    // Swagger 2.0 puts scopes on the scheme; OpenAPI 3 under each flow.
    add(scheme.get("scopes"));
    if let Some(Value::Object(flows)) = scheme.get("flows") {
        for flow in flows.values() {
            add(flow.get("scopes"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_window("1m"), Some(60));
        assert_eq!(parse_window("30s"), Some(30));
        assert_eq!(parse_window("1d"), Some(86_400));
        assert_eq!(parse_window("min"), Some(60));
        assert_eq!(parse_window("2d"), None);
        assert_eq!(parse_window("0s"), None);
        assert_eq!(parse_window("1w"), None);
        assert_eq!(parse_window("60"), None);
    }

    /// A project with one API, `POST /pets`, whose `security` is `security` (a YAML flow list),
    /// offering every kind of scheme; `extra` goes into the operation.
    fn pets(name: &str, security: &str, extra: &str) -> Result<Compiled, ProjectError> {
        let dir = std::env::temp_dir().join(format!("gatelet-project-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("apis")).expect("temp dir");
        std::fs::write(dir.join("gatelet.toml"), "label = \"t\"\n").expect("write");
        std::fs::write(
            dir.join("apis/pets.yaml"),
            format!(
                "openapi: 3.0.3
info: {{title: Pets, version: 1.0.0}}
x-wso2-basePath: /pets/{{version}}
x-wso2-production-endpoints: {{urls: [\"http://127.0.0.1:8080\"]}}
paths:
  /pets:
    post:
      security: {security}
{extra}      responses: {{'200': {{description: ok}}}}
components:
  securitySchemes:
    api_key: {{type: apiKey, in: header, name: X-API-Key}}
    basic: {{type: http, scheme: basic}}
    bearer: {{type: http, scheme: Bearer, bearerFormat: JWT}}
    oidc: {{type: openIdConnect, openIdConnectUrl: https://idp.example/.well-known/openid-configuration}}
    oauth2:
      type: oauth2
      flows: {{clientCredentials: {{tokenUrl: https://idp.example/token, scopes: {{write:pets: w, read:pets: r}}}}}}
    mtls: {{type: mutualTLS}}
    untyped: {{description: no type}}
"
            ),
        )
        .expect("write");
        let out = compile(&dir, 1);
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    /// A project with one definition, `api`, as written.
    fn one_api(name: &str, api: &str) -> Result<Compiled, ProjectError> {
        let dir = std::env::temp_dir().join(format!("gatelet-project-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("apis")).expect("temp dir");
        std::fs::write(dir.join("gatelet.toml"), "label = \"t\"\n").expect("write");
        std::fs::write(dir.join("apis/api.yaml"), api).expect("write");
        let out = compile(&dir, 1);
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    const PATHS: &str = "paths:\n  /pets:\n    get:\n      x-wso2-disable-security: true\n      responses: {'200': {description: ok}}\n";

    #[test]
    fn without_x_wso2_base_path_the_context_comes_from_servers_or_base_path() {
        // OpenAPI 3, absolute server URL with variables filled from their defaults: context and
        // backend both come from it.
        let c = one_api(
            "srv-abs",
            &format!(
                "openapi: 3.0.3\ninfo: {{title: Pets, version: 1.0.0}}\nservers:\n  - url: 'http://{{host}}:8080/api/{{v}}'\n\
                 \x20   variables: {{host: {{default: backend.local}}, v: {{default: v3}}}}\n{PATHS}"
            ),
        )
        .expect("builds");
        let api = &c.manifest.apis[0];
        assert_eq!(api.context, "/api/v3");
        assert_eq!(
            api.production.as_ref().map(|e| e.urls.iter().map(|u| u.as_str().to_owned()).collect::<Vec<_>>()),
            Some(vec!["http://backend.local:8080/api/v3".to_owned()])
        );
        // A relative server URL is the context; the backend comes from the extension.
        let c = one_api(
            "srv-rel",
            &format!(
                "openapi: 3.0.3\ninfo: {{title: Pets, version: 1.0.0}}\nservers: [{{url: /api/v3}}]\n\
                 x-wso2-production-endpoints: {{urls: ['http://127.0.0.1:9000/v3']}}\n{PATHS}"
            ),
        )
        .expect("builds");
        assert_eq!(c.manifest.apis[0].context, "/api/v3");
        // Relative, and no backend: the error says exactly that.
        let e = one_api(
            "srv-rel-nobackend",
            &format!(
                "openapi: 3.0.3\ninfo: {{title: Pets, version: 1.0.0}}\nservers: [{{url: /api/v3}}]\n{PATHS}"
            ),
        )
        .expect_err("no backend");
        assert!(
            e.to_string().contains("relative URL (/api/v3)")
                && e.to_string().contains("x-wso2-production-endpoints"),
            "{e}"
        );
        // Swagger 2: basePath.
        let c = one_api(
            "swagger-base",
            &format!("swagger: '2.0'\ninfo: {{title: Pets, version: 1.0.0}}\nhost: 127.0.0.1:9000\nbasePath: /v2\nschemes: [http]\n{PATHS}"),
        )
        .expect("builds");
        assert_eq!(c.manifest.apis[0].context, "/v2");
        // Nothing to take it from.
        let e = one_api(
            "no-context",
            &format!("openapi: 3.0.3\ninfo: {{title: Pets, version: 1.0.0}}\nservers: [{{url: 'http://h:1'}}]\n{PATHS}"),
        )
        .expect_err("no context");
        assert!(e.to_string().contains("no x-wso2-basePath") && e.to_string().contains("has no path"), "{e}");
        // x-wso2-basePath still wins.
        let c = one_api(
            "base-wins",
            &format!(
                "openapi: 3.0.3\ninfo: {{title: Pets, version: 1.0.0}}\nx-wso2-basePath: /pets/{{version}}\n\
                 servers: [{{url: 'http://h:1/other'}}]\n{PATHS}"
            ),
        )
        .expect("builds");
        assert_eq!(c.manifest.apis[0].context, "/pets/1.0.0");
    }

    #[test]
    fn an_undeclared_scope_is_a_warning_and_still_required() {
        let c = pets("undeclared", "[{oauth2: [admin:pets]}]", "").expect("builds, as WSO2 does");
        assert_eq!(scopes(&c), [vec!["admin:pets".to_owned()]]);
        assert!(c.warnings.iter().any(|w| w.contains("\"admin:pets\" is not declared")), "{:?}", c.warnings);
    }

    fn scopes(c: &Compiled) -> &[Vec<String>] {
        &c.manifest.apis[0].operations[0].scopes
    }

    #[test]
    fn a_jwt_never_satisfies_a_scheme_gatelet_cannot_check() {
        // The review's case: a credential that "needs no scope" must not make any JWT enough.
        for (scheme, kind) in [("basic", "http basic"), ("mtls", "mutualTLS")] {
            let c = pets(scheme, &format!("[{{{scheme}: []}}, {{oauth2: [write:pets]}}]"), "")
                .expect("the oauth2 alternative remains");
            assert_eq!(scopes(&c), [vec!["write:pets".to_owned()]], "{scheme}");
            assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
            let w = &c.warnings[0];
            assert!(
                w.contains("pets.yaml:") && w.contains("POST /pets") && w.contains(&format!("{scheme:?}")),
                "{w}"
            );
            assert!(w.contains(kind) && w.contains("dropped"), "{w}");
        }
        // A requirement that needs an API key *and* a JWT is dropped whole: gatelet would check
        // only half of it.
        let c = pets("and", "[{oauth2: [read:pets], api_key: []}, {oidc: [write:pets]}]", "")
            .expect("the oidc alternative remains");
        assert_eq!(scopes(&c), [vec!["write:pets".to_owned()]]);
        assert!(c.warnings[0].contains("\"api_key\""), "{:?}", c.warnings);
        assert!(!c.manifest.apis[0].operations[0].api_key);
    }

    #[test]
    fn an_api_key_scheme_is_an_alternative_of_its_own() {
        let c = pets("apikey-alt", "[{api_key: []}, {oauth2: [write:pets]}]", "").expect("builds");
        let op = &c.manifest.apis[0].operations[0];
        assert!(op.api_key && op.bearer);
        assert_eq!(scopes(&c), [vec!["write:pets".to_owned()]], "the JWT keeps its scopes");
        assert_eq!(
            c.manifest.apis[0].api_key_locations,
            [ApiKeyLocation { query: false, name: "x-api-key".into() }]
        );
        // No issuer of API keys in this project: said at build time.
        assert!(c.warnings.iter().any(|w| w.contains("no issuer has api_keys = true")), "{:?}", c.warnings);
        // An API key alone: API keys only, no bearer token.
        let c = pets("apikey-only", "[{api_key: []}]", "").expect("builds");
        let op = &c.manifest.apis[0].operations[0];
        assert!(op.api_key && !op.bearer && op.scopes.is_empty());
        // No security at all: WSO2's default, a bearer token.
        let c = pets("apikey-default", "[{oauth2: []}]", "").expect("builds");
        assert!(c.manifest.apis[0].operations[0].bearer && !c.manifest.apis[0].operations[0].api_key);
    }

    #[test]
    fn api_key_locations_header_query_and_cookie() {
        let scheme = |name: &str, def: &str| {
            let dir = std::env::temp_dir().join(format!("gatelet-project-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("apis")).expect("temp dir");
            std::fs::write(dir.join("gatelet.toml"), "label = \"t\"\n").expect("write");
            std::fs::write(
                dir.join("apis/k.yaml"),
                format!(
                    "openapi: 3.0.3\ninfo: {{title: K, version: '1'}}\nx-wso2-basePath: /k\n\
                     x-wso2-production-endpoints: {{urls: ['http://127.0.0.1:1']}}\nsecurity: [{{k: []}}]\n\
                     paths:\n  /a:\n    get: {{responses: {{'200': {{description: ok}}}}}}\n\
                     components:\n  securitySchemes:\n    k: {def}\n"
                ),
            )
            .expect("write");
            let out = compile(&dir, 1);
            let _ = std::fs::remove_dir_all(&dir);
            out
        };
        let c = scheme("q", "{type: apiKey, in: query, name: api_key}").expect("query");
        assert_eq!(
            c.manifest.apis[0].api_key_locations,
            [ApiKeyLocation { query: true, name: "api_key".into() }]
        );
        let c = scheme("h", "{type: apiKey, in: header, name: ApiKey}").expect("header");
        assert_eq!(
            c.manifest.apis[0].api_key_locations,
            [ApiKeyLocation { query: false, name: "apikey".into() }]
        );
        let e = scheme("c", "{type: apiKey, in: cookie, name: key}").map(drop).expect_err("cookie");
        assert!(
            e.to_string().contains("in: cookie is not supported") && e.to_string().contains("k.yaml"),
            "{e}"
        );
        let e = scheme("n", "{type: apiKey, in: header}").map(drop).expect_err("no name");
        assert!(e.to_string().contains("has no name"), "{e}");
        let e = scheme("b", "{type: apiKey, in: header, name: 'a b'}").map(drop).expect_err("bad header");
        assert!(e.to_string().contains("not a header name"), "{e}");
    }

    #[test]
    fn issuer_roles_and_default_subscription_tier() {
        let build = |name: &str, toml: &str| {
            let dir = std::env::temp_dir().join(format!("gatelet-project-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("apis")).expect("temp dir");
            std::fs::create_dir_all(dir.join("keys")).expect("temp dir");
            let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
            use ed25519_dalek::pkcs8::EncodePublicKey;
            std::fs::write(
                dir.join("keys/k.pub"),
                k.verifying_key().to_public_key_pem(Default::default()).expect("pem"),
            )
            .expect("write");
            std::fs::write(dir.join("gatelet.toml"), toml).expect("write");
            std::fs::write(
                dir.join("apis/a.yaml"),
                "openapi: 3.0.3\ninfo: {title: A, version: '1'}\nx-wso2-basePath: /a\n\
                 x-wso2-production-endpoints: {urls: ['http://127.0.0.1:1']}\n\
                 paths:\n  /a:\n    get: {responses: {'200': {description: ok}}}\n",
            )
            .expect("write");
            let out = compile(&dir, 1);
            let _ = std::fs::remove_dir_all(&dir);
            out
        };
        let issuer = "[[issuer]]\nname = \"k\"\nissuer = \"https://k/\"\nkeys = [\"keys/k.pub\"]\n";
        let c = build("roles-default", &format!("label = \"t\"\n{issuer}")).expect("builds");
        let i = &c.manifest.issuers[0];
        assert!(i.tokens && !i.api_keys, "default: tokens only, as before");
        assert_eq!(c.manifest.default_subscription_tier.as_deref(), Some("Default"));
        let c = build("roles-keys", &format!("label = \"t\"\n{issuer}api_keys = true\ntokens = false\n"))
            .expect("builds");
        assert!(!c.manifest.issuers[0].tokens && c.manifest.issuers[0].api_keys);
        let e = build("roles-none", &format!("label = \"t\"\n{issuer}tokens = false\n"))
            .map(drop)
            .expect_err("none");
        assert!(e.to_string().contains("accepts neither tokens nor API keys"), "{e}");
        for (value, want) in
            [("\"\"", None), ("\"Unlimited\"", Some("Unlimited")), ("\"Gold\"", Some("Gold"))]
        {
            let c = build("tier", &format!("label = \"t\"\ndefault_subscription_tier = {value}\n{issuer}"))
                .expect(value);
            assert_eq!(c.manifest.default_subscription_tier.as_deref(), want, "{value}");
        }
        let e =
            build("tier-bad", &format!("label = \"t\"\ndefault_subscription_tier = \"10PerMin\"\n{issuer}"))
                .map(drop)
                .expect_err("an application tier");
        let text = e.to_string();
        assert!(text.contains("gatelet.toml:2") && text.contains("not a subscription policy"), "{text}");
    }

    #[test]
    fn an_operation_left_with_no_checkable_alternative_fails_the_build() {
        for security in
            ["[{basic: []}]", "[{basic: []}, {mtls: []}]", "[{oauth2: [write:pets], api_key: []}]"]
        {
            let e = pets("none", security, "").map(|_| ()).expect_err(security);
            let text = e.to_string();
            assert!(e.file.ends_with("apis/pets.yaml"), "{text}");
            assert!(text.contains("POST /pets") && text.contains("no security requirement"), "{text}");
        }
        // ...unless security is off for the operation: its requirements are never checked.
        let c =
            pets("off", "[{api_key: []}]", "      x-wso2-disable-security: true\n").expect("security off");
        assert!(c.manifest.apis[0].operations[0].disable_security);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn jwt_schemes_keep_their_meaning() {
        // A bearer JWT requirement without scopes really is "any valid token".
        let c = pets("bearer", "[{bearer: []}, {oauth2: [write:pets]}]", "").expect("valid");
        assert!(scopes(&c).is_empty() && c.warnings.is_empty(), "{:?} {:?}", scopes(&c), c.warnings);
        let c = pets("empty", "[{}]", "").expect("valid");
        assert!(scopes(&c).is_empty());
        // Two JWT schemes in one requirement: one token, the union of their scopes, each an
        // alternative under the default (WSO2's) reading.
        let c = pets("union", "[{oauth2: [write:pets], oidc: [read:pets]}]", "").expect("valid");
        assert_eq!(scopes(&c), [vec!["read:pets".to_owned()], vec!["write:pets".to_owned()]]);
        // Every alternative that remains is a non-empty list: the bundle's check refuses anything else.
        let c =
            pets("alts", "[{oauth2: [write:pets]}, {oidc: [read:pets]}, {basic: []}]", "").expect("valid");
        assert_eq!(scopes(&c).len(), 2);
        // A scheme with no type is the document's mistake, not something to guess at.
        let e =
            pets("untyped", "[{untyped: []}, {oauth2: [write:pets]}]", "").map(|_| ()).expect_err("no type");
        assert!(e.to_string().contains("security scheme \"untyped\" has no type"), "{e}");
    }

    /// A project with `toml` as its gatelet.toml and one definition, `api`.
    fn project(name: &str, toml: &str, api: &str) -> Result<Compiled, ProjectError> {
        let dir = std::env::temp_dir().join(format!("gatelet-project-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("apis")).expect("temp dir");
        std::fs::write(dir.join("gatelet.toml"), toml).expect("write");
        std::fs::write(dir.join("apis/api.yaml"), api).expect("write");
        let out = compile(&dir, 1);
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    /// An API with `top` at its top level and `security` on `GET /pets`.
    fn wso2_api(top: &str, security: &str) -> String {
        format!(
            "openapi: 3.0.3\ninfo: {{title: Pets, version: 1.0.0}}\nx-wso2-basePath: /pets/{{version}}\n\
             x-wso2-production-endpoints: {{urls: ['http://127.0.0.1:8080']}}\n{top}\n\
             paths:\n  /pets:\n    get:\n      security: {security}\n      responses: {{'200': {{description: ok}}}}\n\
             components:\n  securitySchemes:\n    oauth: {{type: oauth2, flows: {{clientCredentials: {{tokenUrl: 'https://idp/t', scopes: {{a: a, b: b, c: c}}}}}}}}\n"
        )
    }

    #[test]
    fn scopes_in_one_requirement_are_alternatives_unless_the_project_says_all_of() {
        let api = wso2_api("", "[{oauth: [b, a]}, {oauth: [c]}]");
        for (toml, warned) in [("label = \"t\"\n", true), ("label = \"t\"\nscopes = \"any-of\"\n", false)] {
            let c = project("any-of", toml, &api).expect("builds");
            assert_eq!(c.manifest.scope_rule, ScopeRule::AnyOf);
            assert_eq!(scopes(&c), [vec!["a".to_owned()], vec!["b".to_owned()], vec!["c".to_owned()]]);
            // Left to the default, the reading is said wherever it decides something: a project
            // rebuilt from definitions read all-of before must not open up silently.
            let said: Vec<_> =
                c.warnings.iter().filter(|w| w.contains("scopes a, b in one requirement")).collect();
            assert_eq!(said.len(), usize::from(warned), "{toml:?}: {:?}", c.warnings);
        }
        let c = project("all-of", "label = \"t\"\nscopes = \"all-of\"\n", &api).expect("builds");
        assert_eq!(c.manifest.scope_rule, ScopeRule::AllOf);
        assert_eq!(scopes(&c), [vec!["a".to_owned(), "b".to_owned()], vec!["c".to_owned()]]);
        let e =
            project("bad-rule", "label = \"t\"\n\nscopes = \"some\"\n", &api).map(|_| ()).expect_err("bad");
        assert!(
            e.to_string().contains("gatelet.toml:3: scopes = \"some\"") && e.to_string().contains("all-of"),
            "{e}"
        );
    }

    #[test]
    fn cors_keys_in_every_spelling_wso2_accepts() {
        let sec = "[{oauth: []}]";
        for (origins, headers, methods, credentials, expose) in [
            (
                "accessControlAllowOrigins",
                "accessControlAllowHeaders",
                "accessControlAllowMethods",
                "accessControlAllowCredentials",
                "accessControlExposeHeaders",
            ),
            (
                "access_control_allow_origins",
                "access_control_allow_headers",
                "access_control_allow_methods",
                "access_control_allow_credentials",
                "access_control_expose_headers",
            ),
            (
                "access-control-allow-origins",
                "access-control-allow-headers",
                "access-control-allow-methods",
                "access-control-allow-credentials",
                "access-control-expose-headers",
            ),
        ] {
            let top = format!(
                "x-wso2-cors: {{{origins}: ['https://a.example'], {headers}: [authorization], {methods}: [GET], \
                 {credentials}: true, {expose}: [x-total-count, etag]}}"
            );
            let c = project("cors", "label = \"t\"\n", &wso2_api(&top, sec)).expect(origins);
            let cors = c.manifest.apis[0].cors.clone().expect("cors on");
            assert_eq!(cors.allow_origins, ["https://a.example"], "{origins}");
            assert_eq!((cors.allow_headers.len(), cors.allow_methods.len()), (1, 1), "{origins}");
            assert!(cors.allow_credentials, "{credentials}");
            assert_eq!(cors.expose_headers, ["x-total-count", "etag"], "{expose}");
        }
        for off in ["corsConfigurationEnabled", "cors_configuration_enabled", "cors-configuration-enabled"] {
            let top = format!("x-wso2-cors: {{{off}: false, accessControlAllowOrigins: ['*']}}");
            let c = project("cors-off", "label = \"t\"\n", &wso2_api(&top, sec)).expect(off);
            assert!(c.manifest.apis[0].cors.is_none(), "{off}");
        }
        let top = "x-wso2-cors: {accessControlAllowOrigins: ['*'], access-control-allow-origins: ['*']}";
        let e = project("cors-twice", "label = \"t\"\n", &wso2_api(top, sec)).map(|_| ()).expect_err("twice");
        assert!(e.to_string().contains("access-control-allow-origins and accessControlAllowOrigins"), "{e}");
        for bad in ["AccessControlAllowOrigins", "access-control-allowOrigins", "accessControlAllowOrigin"] {
            let top = format!("x-wso2-cors: {{{bad}: ['*']}}");
            let e = project("cors-bad", "label = \"t\"\n", &wso2_api(&top, sec)).map(|_| ()).expect_err(bad);
            assert!(e.to_string().contains("is not a known CORS key"), "{e}");
        }
    }

    #[test]
    fn transports_https_alone_makes_an_api_https_only() {
        let sec = "[{oauth: []}]";
        for (t, https_only) in [
            ("", false),
            ("x-wso2-transports: [http]", false),
            ("x-wso2-transports: [http, https]", false),
            ("x-wso2-transports: [https]", true),
            ("x-wso2-transports: [HTTPS]", true),
        ] {
            let c = project("transports", "label = \"t\"\n", &wso2_api(t, sec)).expect(t);
            assert_eq!(c.manifest.apis[0].https_only, https_only, "{t}");
            assert!(c.warnings.is_empty(), "{t}: {:?}", c.warnings);
        }
        for (t, why) in [
            ("x-wso2-transports: [https, ftp]", "unknown transport \"ftp\""),
            ("x-wso2-transports: []", "is empty"),
            ("x-wso2-transports: https", "is not a list"),
        ] {
            let e = project("transports-bad", "label = \"t\"\n", &wso2_api(t, sec)).map(|_| ()).expect_err(t);
            assert!(e.to_string().contains(why) && e.to_string().contains("api.yaml:"), "{t}: {e}");
        }
    }

    #[test]
    fn endpoint_security_and_advanced_config() {
        let sec = "[{oauth: []}]";
        let api = wso2_api(
            "x-wso2-sandbox-endpoints:\n  urls: ['http://127.0.0.1:8081']\n  securityConfig: {type: BASIC, username: sb, password: 's3cret!'}\n  \
             advanceEndpointConfig:\n    timeoutInMillis: 2500\n    retryConfig: {count: 2, statusCodes: [504], intervalInMillis: 100, backOffFactor: 1.5, maxWaitIntervalInMillis: 900}",
            sec,
        );
        let c = project("ep", "label = \"t\"\n", &api).expect("builds");
        let sb = c.manifest.apis[0].sandbox.clone().expect("sandbox");
        assert_eq!((sb.timeout_ms, sb.retries), (Some(2500), 2));
        let b = sb.basic_auth.expect("basic");
        assert_eq!((b.username.as_str(), b.password.as_str()), ("sb", "s3cret!"));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert!(
            w.contains("backOffFactor, intervalInMillis, maxWaitIntervalInMillis, statusCodes ignored")
                && w.contains("non-idempotent"),
            "{w}"
        );
        // Credentials given for the API's endpoints apply to an operation's own list of that kind,
        // when it names the same backends (scheme, host, port); never to another server.
        let inherit = |name: &str, op_url: &str| {
            let api = format!(
                "openapi: 3.0.3\ninfo: {{title: P, version: '1'}}\nx-wso2-basePath: /p\n\
                 x-wso2-endpoints:\n  - backend: {{urls: ['http://127.0.0.1:1/base'], securityConfig: {{type: basic, username: u, password: p}}}}\n\
                 x-wso2-production-endpoints: '#/x-wso2-endpoints/backend'\n\
                 paths:\n  /a:\n    get:\n      x-wso2-production-endpoints: {{urls: ['{op_url}']}}\n      x-wso2-disable-security: true\n      responses: {{'200': {{description: ok}}}}\n"
            );
            let c = project(name, "label = \"t\"\n", &api).expect("builds");
            let user = c.manifest.apis[0].operations[0]
                .production
                .as_ref()
                .and_then(|e| e.basic_auth.as_ref())
                .map(|b| b.username.clone());
            (user, c.warnings)
        };
        let (user, warnings) = inherit("ep-inherit", "http://127.0.0.1:1/other");
        assert!(warnings.is_empty(), "a referenced x-wso2-endpoints is used, not ignored: {warnings:?}");
        assert_eq!(user.as_deref(), Some("u"));
        for other in ["http://127.0.0.1:2/base", "https://127.0.0.1:1/base", "http://localhost:1/base"] {
            let (user, warnings) = inherit("ep-other", other);
            assert_eq!(user, None, "{other} got the API backend's password");
            assert!(warnings.iter().any(|w| w.contains("other backends")), "{other}: {warnings:?}");
        }
        // Refusals: each names the key, none shows the password.
        for (ep, why) in [
            (
                "securityConfig: {type: digest, username: u, password: hunter2}",
                "type \"digest\" is not supported",
            ),
            ("securityConfig: {type: oauth, username: u, password: hunter2}", "only HTTP basic"),
            ("securityConfig: {type: basic, username: u}", "password is missing"),
            ("securityConfig: {type: basic, password: hunter2}", "username is missing"),
            ("securityConfig: {type: basic, username: 'a:b', password: hunter2}", "cannot contain ':'"),
            (
                "securityConfig: {type: basic, username: u, password: hunter2, tokenUrl: x}",
                "securityConfig.tokenUrl is not supported",
            ),
            ("advanceEndpointConfig: {timeoutInMillis: 0}", "timeoutInMillis: give a whole number"),
            ("advanceEndpointConfig: {timeoutInMillis: 600001}", "timeoutInMillis"),
            ("advanceEndpointConfig: {retryConfig: {count: 9}}", "count: give a whole number from 0 to 8"),
            (
                "advanceEndpointConfig: {retryConfig: {count: 1, jitter: 2}}",
                "retryConfig.jitter is not supported",
            ),
            (
                "advanceEndpointConfig: {circuitBreaker: {}}",
                "advanceEndpointConfig.circuitBreaker is not supported",
            ),
        ] {
            let top = format!("x-wso2-sandbox-endpoints: {{urls: ['http://127.0.0.1:8081'], {ep}}}");
            let e = project("ep-bad", "label = \"t\"\n", &wso2_api(&top, sec)).map(|_| ()).expect_err(ep);
            let text = e.to_string();
            assert!(text.contains(why) && text.contains("x-wso2-sandbox-endpoints"), "{ep}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn locates_keys() {
        let y = "a:\n  b:\n    x-wso2-throttling-tier: Nope\n";
        assert_eq!(locate(y, &["a", "b", "x-wso2-throttling-tier"]), Some(3));
        let j = "{\n \"paths\": {\n  \"/m\": {\"get\": {}}}}";
        assert_eq!(locate(j, &["paths", "/m", "get"]), Some(3));
        assert_eq!(locate(y, &["zzz"]), None);
    }
}
