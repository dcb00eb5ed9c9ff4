//! Device configuration (`gatelet.toml`), resolved in one place.
//!
//! Precedence: command line > environment (`GATELET_<SECTION>_<KEY>`) > file > default. Every key
//! is optional; unknown keys — in the file or as `GATELET_<SECTION>_*` variables — are errors that
//! name the key, so a typo never silently falls back to a default.
//!
//! Environment values are read with the type of the key's default: integers and booleans are
//! parsed, lists are comma-separated (`GATELET_BUNDLE_TRUSTED_KEYS=/a.pub,/b.pub`), strings are
//! taken as they are.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest configuration file read.
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// The default configuration file of `run` and `check`.
pub const DEFAULT_PATH: &str = "/etc/gatelet/gatelet.toml";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub bundle: BundleConfig,
    pub state: StateConfig,
    pub auth: AuthConfig,
    pub throttle: ThrottleConfig,
    pub usage: crate::usage::UsageConfig,
    pub log: LogConfig,
    pub backend_jwt: BackendJwtConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Plain HTTP listener; empty = off.
    pub listen: String,
    /// HTTPS listener (TLS 1.2+); empty = off.
    pub listen_tls: String,
    /// PEM certificate chain, read only when `listen_tls` is set.
    pub tls_cert: PathBuf,
    /// PKCS#8 PEM private key, read only when `listen_tls` is set.
    pub tls_key: PathBuf,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`); empty = off. Keep it on loopback.
    pub admin_listen: String,
    /// Open client connections across all listeners; further connections wait in the backlog.
    pub max_connections: u32,
    /// Time to receive a whole request head, and the idle keep-alive timeout (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: u32,
    /// Memory all unfinished request heads may hold together (slow clients); past it, the
    /// connections that have held an unfinished head longest are closed first.
    pub max_head_memory_bytes: u64,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: u64,
    /// Longest wait for the next bytes of a request body; longer gets 408 (the client's fault,
    /// not the backend's). The backend's `backend_timeout_ms` starts once the body is sent.
    pub body_idle_timeout_ms: u64,
    /// Time to connect to a backend before trying the next or answering 502.
    pub backend_connect_timeout_ms: u64,
    /// Time for a backend's response head before answering 504.
    pub backend_timeout_ms: u64,
    /// Idle keep-alive connections kept per backend.
    pub backend_pool_size: u32,
    /// Extra trusted root certificate (PEM) for HTTPS backends with a private CA; the system
    /// roots stay trusted. Empty: system roots only.
    pub backend_ca_file: PathBuf,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout_s: u64,
    /// Add `RateLimit-Policy`/`RateLimit` headers to successful responses too.
    pub ratelimit_headers: bool,
    /// Worker threads; 0 = one per CPU.
    pub threads: u32,
    /// Proxies in front of gatelet (addresses or CIDR blocks) whose `X-Forwarded-*`, `Forwarded`
    /// and `X-Real-IP` are kept and appended to; from anyone else they are replaced.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:9090".into(),
            listen_tls: String::new(),
            tls_cert: "/etc/gatelet/tls.crt".into(),
            tls_key: "/etc/gatelet/tls.key".into(),
            admin_listen: "127.0.0.1:9091".into(),
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            max_head_memory_bytes: 4 * 1024 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            body_idle_timeout_ms: 10_000,
            backend_connect_timeout_ms: 2_000,
            backend_timeout_ms: 30_000,
            backend_pool_size: 16,
            backend_ca_file: PathBuf::new(),
            drain_timeout_s: 15,
            ratelimit_headers: true,
            threads: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleConfig {
    /// The installed bundle; replaced atomically when a newer one is accepted.
    pub path: PathBuf,
    /// Publisher keys (SPKI PEM) a bundle must be signed by.
    pub trusted_keys: Vec<PathBuf>,
    /// A newer bundle dropped here is verified and swapped in; empty = off.
    pub inbox: String,
    /// How often the inbox is looked at.
    pub inbox_poll_ms: u64,
}

impl Default for BundleConfig {
    fn default() -> Self {
        BundleConfig {
            path: "/var/lib/gatelet/bundle.glb".into(),
            trusted_keys: vec!["/etc/gatelet/publisher.pub".into()],
            inbox: "/var/lib/gatelet/inbox".into(),
            inbox_poll_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: "/var/lib/gatelet/state".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tolerance for `exp`, `nbf` and `iat`.
    pub clock_skew_s: u64,
    /// Verified tokens remembered (fixed memory).
    pub token_cache_entries: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { clock_skew_s: 60, token_cache_entries: 4096 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Counter entries per throttling table (fixed memory).
    pub table_entries: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig { table_entries: 4096 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

/// What the backend is told about the caller (`[backend_jwt]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendJwtMode {
    /// The caller's validated bearer token, as it came (an API key is never forwarded).
    #[default]
    Forward,
    /// Nothing.
    None,
    /// A short-lived JWT signed by the device with WSO2's backend claims.
    Sign,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendJwtConfig {
    pub mode: BackendJwtMode,
    /// The device's signing key (`sign` only): Ed25519 (EdDSA) or RSA of at least 2048 bits
    /// (RS256), PKCS#8 PEM as `gatelet keygen` or `openssl genpkey` write it.
    pub key: PathBuf,
    /// Lifetime of a signed JWT (`sign` only); never beyond the caller's own credential.
    pub ttl_s: u64,
    /// The header the backend reads (`forward` and `sign`).
    pub header: String,
    /// The `iss` of a signed JWT; WSO2's gateway writes `wso2.org/products/am`.
    pub issuer: String,
}

impl Default for BackendJwtConfig {
    fn default() -> Self {
        BackendJwtConfig {
            mode: BackendJwtMode::Forward,
            key: "/etc/gatelet/backend.key".into(),
            ttl_s: 300,
            header: "x-jwt-assertion".into(),
            issuer: "wso2.org/products/am".into(),
        }
    }
}

/// Headers `[backend_jwt] header` may not name: gatelet sets or strips them for other reasons.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-request-id",
];

impl BackendJwtConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.ttl_s) {
            return Err(ConfigError("backend_jwt.ttl_s must be 1 to 86400".into()));
        }
        let h = self.header.to_ascii_lowercase();
        if !crate::bundle::model::is_header_name(&h) || RESERVED_HEADERS.contains(&h.as_str()) {
            return Err(ConfigError(format!(
                "backend_jwt.header = {:?}: not a header name gatelet can set (reserved: {})",
                self.header,
                RESERVED_HEADERS.join(", ")
            )));
        }
        if self.mode == BackendJwtMode::Sign && self.key.as_os_str().is_empty() {
            return Err(ConfigError("backend_jwt.mode = \"sign\" needs backend_jwt.key".into()));
        }
        if self.issuer.is_empty() || self.issuer.chars().any(char::is_control) {
            return Err(ConfigError("backend_jwt.issuer must be a non-empty line of text".into()));
        }
        Ok(())
    }
}

/// A configuration the operator must fix. The fault is the config file, the environment or the
/// command line.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
}

const ENV_PREFIX: &str = "GATELET_";

/// Converts an environment string to the type of the default value at the same key.
fn env_value(name: &str, raw: &str, like: &toml::Value) -> Result<toml::Value, ConfigError> {
    let bad = |what: &str| ConfigError(format!("environment {name}={raw:?}: not {what}"));
    Ok(match like {
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad("true or false")),
        }),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_owned()),
    })
}

impl Config {
    /// Resolves the configuration: defaults, then the file (if any), then `env`, then `cli`.
    /// `env` is injected so tests do not touch the process environment.
    pub fn resolve(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &Overrides,
    ) -> Result<Config, ConfigError> {
        let table = match file {
            Some(path) => read_table(path)?,
            None => toml::Table::new(),
        };
        Config::resolve_table(table, file, gatelet_vars(env), cli)
    }

    /// [`Config::resolve`] with the file's text in hand; `origin` names it in error messages.
    /// The same parsing and checks as from a file, without touching the file system (the config
    /// fuzz target drives it).
    pub fn resolve_text(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &Overrides,
    ) -> Result<Config, ConfigError> {
        if text.len() as u64 > MAX_CONFIG_FILE {
            return Err(ConfigError(format!("{}: larger than {MAX_CONFIG_FILE} bytes", origin.display())));
        }
        Config::resolve_table(parse_table(text, origin)?, Some(origin), gatelet_vars(env), cli)
    }

    /// Not generic over the environment's iterator (see [`gatelet_vars`]): one copy of this
    /// start-up code in the binary.
    fn resolve_table(
        mut table: toml::Table,
        file: Option<&Path>,
        mut env: Vec<(String, String)>,
        cli: &Overrides,
    ) -> Result<Config, ConfigError> {
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError(format!("internal: defaults do not serialize: {e}")))?;
        env.sort();
        for (name, raw) in env {
            let rest = &name[ENV_PREFIX.len()..];
            // Only GATELET_<SECTION>_<KEY> for a known section is configuration; other GATELET_*
            // variables belong to something else.
            let Some((section, key)) = defaults.iter().find_map(|(section, _)| {
                let upper = section.to_ascii_uppercase();
                rest.strip_prefix(&upper)
                    .and_then(|r| r.strip_prefix('_'))
                    .map(|k| (section.clone(), k.to_ascii_lowercase()))
            }) else {
                continue;
            };
            let like = defaults
                .get(&section)
                .and_then(|s| s.get(&key))
                .ok_or_else(|| ConfigError(format!("environment {name}: unknown key {section}.{key}")))?;
            let value = env_value(&name, &raw, like)?;
            let sect = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| ConfigError(format!("[{section}] is not a table")))?;
            sect.insert(key, value);
        }
        let mut config: Config = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            let where_ = file.map(|p| format!("{}: ", p.display())).unwrap_or_default();
            ConfigError(format!("{where_}{}", e.message().trim()))
        })?;
        if let Some(l) = &cli.listen {
            config.server.listen = l.clone();
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        for (key, v) in [
            ("server.listen", &s.listen),
            ("server.listen_tls", &s.listen_tls),
            ("server.admin_listen", &s.admin_listen),
        ] {
            if !v.is_empty() && v.parse::<SocketAddr>().is_err() {
                return Err(ConfigError(format!("{key} = {v:?}: not an address like 0.0.0.0:9090")));
            }
        }
        if s.listen.is_empty() && s.listen_tls.is_empty() {
            return Err(ConfigError(
                "server.listen and server.listen_tls are both off: nothing to serve".into(),
            ));
        }
        let positive = [
            ("server.max_connections", u64::from(s.max_connections)),
            ("server.header_read_timeout_ms", s.header_read_timeout_ms),
            ("server.body_idle_timeout_ms", s.body_idle_timeout_ms),
            ("server.backend_connect_timeout_ms", s.backend_connect_timeout_ms),
            ("server.backend_timeout_ms", s.backend_timeout_ms),
            ("bundle.inbox_poll_ms", self.bundle.inbox_poll_ms),
            ("auth.token_cache_entries", u64::from(self.auth.token_cache_entries)),
            ("throttle.table_entries", u64::from(self.throttle.table_entries)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{key} must be at least 1")));
        }
        // Upper bounds: far beyond any real use, and far from memory exhaustion or timer overflow.
        let at_most = [
            ("server.max_connections", u64::from(s.max_connections), 1 << 20),
            ("server.header_read_timeout_ms", s.header_read_timeout_ms, 3_600_000),
            ("server.body_idle_timeout_ms", s.body_idle_timeout_ms, 3_600_000),
            ("server.backend_connect_timeout_ms", s.backend_connect_timeout_ms, 3_600_000),
            ("server.backend_timeout_ms", s.backend_timeout_ms, 86_400_000),
            ("server.backend_pool_size", u64::from(s.backend_pool_size), 4096),
            ("server.drain_timeout_s", s.drain_timeout_s, 3600),
            ("server.threads", u64::from(s.threads), 256),
            ("bundle.inbox_poll_ms", self.bundle.inbox_poll_ms, 3_600_000),
            ("auth.token_cache_entries", u64::from(self.auth.token_cache_entries), 1 << 20),
            (
                "throttle.table_entries",
                u64::from(self.throttle.table_entries),
                crate::throttle::MAX_TABLE_ENTRIES as u64,
            ),
        ];
        if let Some((key, _, max)) = at_most.iter().find(|(_, v, max)| v > max) {
            return Err(ConfigError(format!("{key} must be at most {max}")));
        }
        // hyper's read buffer cannot be smaller than 8 KiB.
        if !(8192..=1024 * 1024).contains(&s.max_header_bytes) {
            return Err(ConfigError("server.max_header_bytes must be 8192 to 1048576".into()));
        }
        crate::server::forwarded::TrustedProxies::parse(&s.trusted_proxies).map_err(ConfigError)?;
        if s.max_head_memory_bytes < u64::from(s.max_header_bytes) || s.max_head_memory_bytes > 1 << 30 {
            return Err(ConfigError(
                "server.max_head_memory_bytes must be at least server.max_header_bytes and at most 1073741824".into(),
            ));
        }
        if self.bundle.trusted_keys.is_empty() {
            return Err(ConfigError("bundle.trusted_keys is empty: no bundle could ever be accepted".into()));
        }
        self.usage.validate().map_err(|e| ConfigError(format!("[usage] {e}")))?;
        self.backend_jwt.check()?;
        if log_level(&self.log.level).is_none() {
            return Err(ConfigError(format!(
                "log.level = {:?}: use error, warn, info, debug or trace",
                self.log.level
            )));
        }
        Ok(())
    }
}

/// The `GATELET_*` variables of `env`.
fn gatelet_vars(env: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect()
}

/// `log.level` as a filter.
pub fn log_level(level: &str) -> Option<log::LevelFilter> {
    match level {
        "off" => Some(log::LevelFilter::Off),
        "error" => Some(log::LevelFilter::Error),
        "warn" => Some(log::LevelFilter::Warn),
        "info" => Some(log::LevelFilter::Info),
        "debug" => Some(log::LevelFilter::Debug),
        "trace" => Some(log::LevelFilter::Trace),
        _ => None,
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let io = |e: std::io::Error| ConfigError(format!("{}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_CONFIG_FILE {
        return Err(ConfigError(format!("{}: larger than {MAX_CONFIG_FILE} bytes", path.display())));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_table(&text, path)
}

fn parse_table(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        ConfigError(format!("{}{at}: {}", path.display(), e.message().trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn file(text: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("gatelet-config-{}-{}.toml", std::process::id(), text.len()));
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn defaults_and_precedence() {
        let c = Config::resolve(None, env(&[]), &Overrides::default()).expect("defaults are valid");
        assert_eq!(c, Config::default());
        let f =
            file("[server]\nlisten = \"127.0.0.1:1000\"\nmax_connections = 7\n[auth]\nclock_skew_s = 5\n");
        let c = Config::resolve(
            Some(&f),
            env(&[
                ("GATELET_SERVER_LISTEN", "127.0.0.1:2000"),
                ("GATELET_BUNDLE_TRUSTED_KEYS", "/a.pub, /b.pub"),
                ("GATELET_SERVER_RATELIMIT_HEADERS", "false"),
                ("GATELET_REGEN_VECTORS", "1"),
                ("HOME", "/root"),
            ]),
            &Overrides::default(),
        )
        .expect("valid");
        assert_eq!(c.server.listen, "127.0.0.1:2000", "environment beats file");
        assert_eq!(c.server.max_connections, 7, "file beats default");
        assert_eq!(c.auth.clock_skew_s, 5);
        assert!(!c.server.ratelimit_headers);
        assert_eq!(c.bundle.trusted_keys, [PathBuf::from("/a.pub"), PathBuf::from("/b.pub")]);
        let c = Config::resolve(
            Some(&f),
            env(&[("GATELET_SERVER_LISTEN", "127.0.0.1:2000")]),
            &Overrides { listen: Some("127.0.0.1:3000".into()) },
        )
        .expect("valid");
        assert_eq!(c.server.listen, "127.0.0.1:3000", "command line beats environment");
        std::fs::remove_file(f).expect("cleanup");
    }

    #[test]
    fn text_resolves_as_the_file_does() {
        let text = "[server]\nlisten = \"127.0.0.1:1000\"\n[auth]\nclock_skew_s = 5\n";
        let f = file(text);
        let vars = || env(&[("GATELET_SERVER_MAX_CONNECTIONS", "9")]);
        let from_file = Config::resolve(Some(&f), vars(), &Overrides::default()).expect("valid");
        let from_text = Config::resolve_text(text, &f, vars(), &Overrides::default()).expect("valid");
        assert_eq!(from_text, from_file);
        assert_eq!((from_text.auth.clock_skew_s, from_text.server.max_connections), (5, 9));
        let e = Config::resolve_text("[server\n", &f, env(&[]), &Overrides::default()).expect_err("bad toml");
        assert!(e.0.starts_with(&format!("{}:1", f.display())), "{e}");
        std::fs::remove_file(f).expect("cleanup");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let f = file("[server]\nlisten = \"127.0.0.1:1000\"\nmax_conections = 7\n");
        let e = Config::resolve(Some(&f), env(&[]), &Overrides::default()).expect_err("typo");
        assert!(e.0.contains("max_conections"), "{e}");
        std::fs::remove_file(f).expect("cleanup");
        let e = Config::resolve(None, env(&[("GATELET_SERVER_LISTN", "x")]), &Overrides::default())
            .expect_err("typo");
        assert!(e.0.contains("GATELET_SERVER_LISTN") && e.0.contains("server.listn"), "{e}");
        let e =
            Config::resolve(None, env(&[("GATELET_SERVER_MAX_CONNECTIONS", "many")]), &Overrides::default())
                .expect_err("not a number");
        assert!(e.0.contains("not an integer"), "{e}");
        let e = Config::resolve(None, env(&[("GATELET_SERVER_LISTEN", "nowhere")]), &Overrides::default())
            .expect_err("bad address");
        assert!(e.0.contains("server.listen"), "{e}");
        let f = file("[server\n");
        let e = Config::resolve(Some(&f), env(&[]), &Overrides::default()).expect_err("bad toml");
        assert!(e.0.contains(":1:") || e.0.contains(":2:"), "{e}");
        std::fs::remove_file(f).expect("cleanup");
    }

    #[test]
    fn backend_jwt_section() {
        let c = Config::resolve(None, env(&[]), &Overrides::default()).expect("defaults");
        assert_eq!(c.backend_jwt.mode, BackendJwtMode::Forward, "as before: the caller's token");
        let f = file(
            "[backend_jwt]\nmode = \"sign\"\nkey = \"/k.pem\"\nttl_s = 60\nheader = \"X-Backend-JWT\"\n",
        );
        let c = Config::resolve(Some(&f), env(&[("GATELET_BACKEND_JWT_TTL_S", "30")]), &Overrides::default())
            .expect("valid");
        std::fs::remove_file(f).expect("cleanup");
        assert_eq!((c.backend_jwt.mode, c.backend_jwt.ttl_s), (BackendJwtMode::Sign, 30));
        assert_eq!(c.backend_jwt.key, PathBuf::from("/k.pem"));
        let c = Config::resolve(None, env(&[("GATELET_BACKEND_JWT_MODE", "none")]), &Overrides::default())
            .expect("valid");
        assert_eq!(c.backend_jwt.mode, BackendJwtMode::None);
        for (var, value, named) in [
            ("GATELET_BACKEND_JWT_MODE", "signed", "signed"),
            ("GATELET_BACKEND_JWT_TTL_S", "0", "backend_jwt.ttl_s"),
            ("GATELET_BACKEND_JWT_HEADER", "authorization", "backend_jwt.header"),
            ("GATELET_BACKEND_JWT_HEADER", "x bad", "backend_jwt.header"),
        ] {
            let e = Config::resolve(None, env(&[(var, value)]), &Overrides::default()).expect_err(value);
            assert!(e.0.contains(named), "{e}");
        }
    }
}
