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
    self, Api, Cors, EndpointKind, Endpoints, Issuer, IssuerKey, Manifest, Method, Operation, Policy,
    PolicyLevel, ScopeRule, UNLIMITED,
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
            tokens: true,
            api_keys: false,
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
        let api = compile_api(file, &policies, &mut warnings)?;
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

    let manifest = Manifest {
        label: project.label.clone(),
        serial,
        created_at,
        issuers,
        policies,
        apis,
        revoked_jti: revoked,
        scope_rule: ScopeRule::AllOf,
        default_subscription_tier: None,
    };
    manifest.check().map_err(|e| err(&toml_path, None, e.0))?;
    Ok(Compiled { manifest, warnings })
}

/// Extensions accepted and ignored with a warning: they change nothing gatelet decides.
const IGNORED_EXTENSIONS: &[&str] =
    &["x-wso2-owner", "x-wso2-transports", "x-wso2-response-cache", "x-wso2-endpoints"];

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

fn compile_api(file: &Path, policies: &[Policy], warnings: &mut Vec<String>) -> Result<Api, ProjectError> {
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
    let mut production = endpoints_field(&doc, root, "x-wso2-production-endpoints", &[])?;
    let sandbox = endpoints_field(&doc, root, "x-wso2-sandbox-endpoints", &[])?;
    if production.is_none() {
        production = server_fallback(&doc, root, swagger2)?;
    }
    let cors = cors_field(&doc, root)?;

    let schemes = if swagger2 {
        root.get("securityDefinitions")
    } else {
        root.get("components").and_then(|c| c.get("securitySchemes"))
    };
    let schemes = schemes.and_then(Value::as_object);
    let api_security = root.get("security");

    let paths = root.get("paths").and_then(Value::as_object).ok_or_else(|| doc.fail(&[], "missing paths"))?;
    let mut operations = Vec::new();
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
            let scopes = scopes_of(
                &doc,
                &Requirements {
                    operation: &format!("{} {path}", method.as_str()),
                    security,
                    at: &security_at,
                    security_disabled: op_disable,
                },
                schemes,
                warnings,
            )?;
            operations.push(Operation {
                method,
                path: path_norm.clone(),
                tier: op_tier,
                disable_security: op_disable,
                scopes,
                production: endpoints_field(&doc, opo, "x-wso2-production-endpoints", &at)?,
                sandbox: endpoints_field(&doc, opo, "x-wso2-sandbox-endpoints", &at)?,
                bearer: true,
                api_key: false,
            });
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
        https_only: false,
        api_key_locations: Vec::new(),
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
        if !matches!(k.as_str(), "urls" | "type") {
            return Err(doc.fail(&at, format!("{key}.{k} is not supported (only urls and type)")));
        }
    }
    let urls: Vec<String> = match o.get("urls") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|u| u.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| doc.fail(&at, format!("{key}.urls: every URL must be a string")))?,
        _ => return Err(doc.fail(&at, format!("{key}: urls must be a list"))),
    };
    if urls.is_empty() {
        return Err(doc.fail(&at, format!("{key}: urls is empty")));
    }
    for u in &urls {
        model::EndpointUrl::parse(u).map_err(|e| doc.fail_value(&at, u, format!("{key}: bad URL {e}")))?;
    }
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
    Ok(Some(Endpoints { kind, urls, ..Endpoints::default() }))
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
        // scheme://authority/path?query: the path, or "/" when there is none.
        let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let path_and_more = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
        path_and_more.split(['?', '#']).next().unwrap_or("").to_owned()
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
    model::EndpointUrl::parse(&url).map_err(|e| {
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

fn cors_field(doc: &Doc, root: &Map<String, Value>) -> Result<Option<Cors>, ProjectError> {
    let Some(v) = root.get("x-wso2-cors") else { return Ok(None) };
    let at = ["x-wso2-cors"];
    let o = v.as_object().ok_or_else(|| doc.fail(&at, "x-wso2-cors is not a mapping"))?;
    for k in o.keys() {
        if !matches!(
            k.as_str(),
            "access-control-allow-origins"
                | "access-control-allow-headers"
                | "access-control-allow-methods"
                | "access-control-allow-credentials"
                | "corsConfigurationEnabled"
        ) {
            return Err(doc.fail(&at, format!("x-wso2-cors.{k} is not a known CORS key")));
        }
    }
    if o.get("corsConfigurationEnabled") == Some(&Value::Bool(false)) {
        return Ok(None);
    }
    Ok(Some(Cors {
        allow_origins: string_list(
            doc,
            o.get("access-control-allow-origins"),
            &at,
            "access-control-allow-origins",
        )?,
        allow_headers: string_list(
            doc,
            o.get("access-control-allow-headers"),
            &at,
            "access-control-allow-headers",
        )?,
        allow_methods: string_list(
            doc,
            o.get("access-control-allow-methods"),
            &at,
            "access-control-allow-methods",
        )?,
        allow_credentials: bool_field(doc, o, "access-control-allow-credentials", &at)?.unwrap_or(false),
        expose_headers: Vec::new(),
    }))
}

/// What gatelet makes of a security scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemeKind {
    /// Carried as a bearer JWT (OAuth2, OpenID Connect, HTTP bearer): the token validator checks
    /// it, scopes included.
    Jwt,
    /// A credential gatelet does not read (an API key, HTTP basic, mutual TLS, anything else),
    /// named for messages. A requirement that needs one can never be met, so it is dropped: were
    /// it kept, a JWT would stand in for a credential nobody checked. WSO2 API keys (PRODUCT.md
    /// section 4) will give `apiKey` a kind of its own, compiled into a requirement of its own;
    /// until then it is here.
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
        other => SchemeKind::Unchecked(other.to_owned()),
    })
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
}

/// OpenAPI security requirements → the scope alternatives a bearer JWT must meet (see
/// [`model::Operation::scopes`]).
///
/// A requirement whose schemes are all JWT schemes becomes the union of their scopes; one that
/// needs no scope makes any valid token enough, as does no `security` at all (WSO2's default:
/// security on, no scope). A requirement that needs a scheme gatelet cannot check is dropped
/// with a warning, and an operation left with none fails the build, unless its security is
/// disabled.
fn scopes_of(
    doc: &Doc,
    reqs: &Requirements,
    schemes: Option<&Map<String, Value>>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Vec<String>>, ProjectError> {
    let Some(security) = reqs.security else { return Ok(vec![]) };
    let at = reqs.at;
    let list = security.as_array().ok_or_else(|| doc.fail(at, "security is not a list"))?;
    let mut alts = Vec::new();
    let mut any_token = list.is_empty();
    let mut dropped = Vec::new();
    for req in list {
        let req = req.as_object().ok_or_else(|| doc.fail(at, "a security requirement is not a mapping"))?;
        let mut all = Vec::new();
        let mut unchecked = Vec::new();
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
                SchemeKind::Unchecked(what) => unchecked.push(format!("{scheme:?} ({what})")),
            }
        }
        if !unchecked.is_empty() {
            dropped.push(unchecked.join(" with "));
            continue;
        }
        all.sort();
        all.dedup();
        if all.is_empty() {
            any_token = true;
        } else {
            alts.push(all);
        }
    }
    alts.sort();
    alts.dedup();
    if any_token {
        alts.clear();
    }
    if reqs.security_disabled {
        return Ok(alts);
    }
    let op = reqs.operation;
    if !any_token && alts.is_empty() {
        return Err(doc.fail(
            at,
            format!(
                "{op}: no security requirement gatelet can check is left: {} cannot be met with a \
                 JWT (use an oauth2, openIdConnect or http bearer scheme, or x-wso2-disable-security)",
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
    Ok(alts)
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
            api.production.as_ref().map(|e| e.urls.clone()),
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
        // The review's case: an API key "needs no scope", which used to make any JWT enough.
        for (scheme, kind) in [("api_key", "apiKey"), ("basic", "http basic"), ("mtls", "mutualTLS")] {
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
    }

    #[test]
    fn an_operation_left_with_no_checkable_alternative_fails_the_build() {
        for security in
            ["[{api_key: []}]", "[{basic: []}, {api_key: []}]", "[{oauth2: [write:pets], api_key: []}]"]
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
        // Two JWT schemes in one requirement: one token, the union of their scopes.
        let c = pets("union", "[{oauth2: [write:pets], oidc: [read:pets]}]", "").expect("valid");
        assert_eq!(scopes(&c), [vec!["read:pets".to_owned(), "write:pets".to_owned()]]);
        // Every alternative that remains is a non-empty list: the bundle's check refuses anything else.
        let c =
            pets("alts", "[{oauth2: [write:pets]}, {oidc: [read:pets]}, {basic: []}]", "").expect("valid");
        assert_eq!(scopes(&c).len(), 2);
        // A scheme with no type is the document's mistake, not something to guess at.
        let e =
            pets("untyped", "[{untyped: []}, {oauth2: [write:pets]}]", "").map(|_| ()).expect_err("no type");
        assert!(e.to_string().contains("security scheme \"untyped\" has no type"), "{e}");
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
