//! The workstation commands: `keygen` and `bundle build|verify|inspect`. Each returns what it has
//! to say on stdout, or an error whose one-line text `main` prints before exiting non-zero.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bundle::{self, format};
use crate::keys;
use crate::project;

/// A command's failure, already worded for the operator.
pub type ToolResult = Result<String, Box<dyn std::error::Error>>;

/// `gatelet keygen --out PREFIX`.
pub fn keygen(prefix: &Path) -> ToolResult {
    let key = keys::generate()?;
    let (k, p) = keys::write_key_pair(prefix, &key)?;
    Ok(format!(
        "private key {} (mode 0600)\npublic key  {}\nkey id      {}\nkid (RFC 7638 thumbprint) {}\n",
        k.display(),
        p.display(),
        keys::hex(&keys::key_id(&key.verifying_key())),
        keys::jwk_thumbprint(&key.verifying_key()),
    ))
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// write a temporary file beside it, fsync, rename over, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `gatelet bundle build PROJECT --key KEY --out FILE [--serial N]`. Warnings go to `warn`.
pub fn bundle_build(
    project_dir: &Path,
    key: &Path,
    out: &Path,
    serial: Option<u64>,
    warn: &mut dyn Write,
) -> ToolResult {
    let signing = keys::load_signing_key(key)?;
    let compiled = project::compile(project_dir, serial.unwrap_or_else(now_unix))?;
    for w in &compiled.warnings {
        let _ = writeln!(warn, "warning: {w}");
    }
    let bytes = bundle::seal(&compiled.manifest, &signing)?;
    // Read back through the one verification path before anyone else does.
    let verified = bundle::verify(&bytes, &[signing.verifying_key()])?;
    write_atomically(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    let m = verified.manifest();
    Ok(format!(
        "{}: {} bytes, serial {}, {} APIs, {} operations, {} issuers, signer key id {}\n",
        out.display(),
        bytes.len(),
        m.serial,
        m.apis.len(),
        m.apis.iter().map(|a| a.operations.len()).sum::<usize>(),
        m.issuers.len(),
        keys::hex(&verified.key_id()),
    ))
}

fn load_trusted(paths: &[PathBuf]) -> Result<Vec<ed25519_dalek::VerifyingKey>, keys::KeyError> {
    paths.iter().map(|p| keys::load_verifying_key(p)).collect()
}

/// `gatelet bundle verify FILE --trusted-key PUB...`.
pub fn bundle_verify(file: &Path, trusted: &[PathBuf]) -> ToolResult {
    if trusted.is_empty() {
        return Err("at least one --trusted-key is required".into());
    }
    let trusted = load_trusted(trusted)?;
    let bytes = format::read_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let b = bundle::verify(&bytes, &trusted).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(format!(
        "{}: valid, serial {}, label {:?}, {} APIs, signed by key id {}, payload sha256 {}\n",
        file.display(),
        b.serial(),
        b.manifest().label,
        b.manifest().apis.len(),
        keys::hex(&b.key_id()),
        keys::hex(&b.payload_sha256()),
    ))
}

/// `gatelet bundle inspect FILE [--trusted-key PUB]...`: the manifest as JSON. With trusted keys
/// the signature is verified first; without, framing is checked and `signature_verified` is false.
pub fn bundle_inspect(file: &Path, trusted: &[PathBuf]) -> ToolResult {
    let bytes = format::read_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let json = if trusted.is_empty() {
        let (header, manifest) =
            format::decode_unverified(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        bundle::inspect_json(&header, &manifest, false)
    } else {
        let trusted = load_trusted(trusted)?;
        let b = bundle::verify(&bytes, &trusted).map_err(|e| format!("{}: {e}", file.display()))?;
        let header = format::parse_header(&bytes)?;
        bundle::inspect_json(&header, b.manifest(), true)
    };
    let mut s = serde_json::to_string_pretty(&json)?;
    s.push('\n');
    Ok(s)
}

/// `gatelet token mint --key KEY ...`: a signed development token on stdout.
pub fn token_mint(key: &Path, request: &crate::token::MintRequest) -> ToolResult {
    let signing = crate::token::mint::TokenKey::load(key)?;
    let jti = crate::token::mint::random_jti()?;
    let mut token = crate::token::mint::mint_with(&signing, request, now_unix(), &jti)?;
    token.push('\n');
    Ok(token)
}

/// What `gatelet token verify` checks a token against.
#[derive(Debug)]
pub struct TokenVerify<'a> {
    pub bundle: &'a Path,
    pub trusted_keys: &'a [PathBuf],
    /// `NAME:VERSION` of an API in the bundle.
    pub api: &'a str,
    pub method: &'a str,
    /// An operation's path template (`/order/{id}`) or a concrete path, with or without the
    /// API's context.
    pub path: &'a str,
    /// The token; `None` reads it from stdin (keeps it out of `ps` and shell history).
    pub token: Option<&'a str>,
    /// Wall-clock override in Unix seconds (the bundle's clock floor still applies).
    pub now: Option<u64>,
}

fn path_matches(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') && !ps.is_empty() => {}
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

/// `gatelet token verify`: the decision the gateway would make for one request, as one line of
/// JSON, and whether it allows it. Reads the bundle like `bundle verify`; opens no state store
/// (it must not contend with a running daemon), so the clock floor is the bundle's `created_at`.
pub fn token_verify(args: &TokenVerify<'_>) -> Result<(String, bool), Box<dyn std::error::Error>> {
    use crate::token::{self, Clock, ManualTime, SystemTime, TimeSource, Validator, ValidatorConfig};
    use std::io::Read as _;
    if args.trusted_keys.is_empty() {
        return Err("at least one --trusted-key is required".into());
    }
    let trusted = load_trusted(args.trusted_keys)?;
    let file = args.bundle;
    let bytes = format::read_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let b = bundle::verify(&bytes, &trusted).map_err(|e| format!("{}: {e}", file.display()))?;
    let m = b.manifest();
    let (name, version) = token::mint::parse_api_ref(args.api)?;
    let api = m
        .apis
        .iter()
        .find(|a| a.name == name && a.version == version)
        .ok_or_else(|| format!("--api {}: no such API in {}", args.api, file.display()))?;
    let method = bundle::model::Method::parse(args.method)
        .ok_or_else(|| format!("--method {}: unknown", args.method))?;
    let path =
        args.path.strip_prefix(api.context.as_str()).filter(|p| p.starts_with('/')).unwrap_or(args.path);
    let ops = || api.operations.iter().filter(|o| o.method == method);
    let op = ops()
        .find(|o| o.path == path)
        .or_else(|| ops().find(|o| path_matches(&o.path, path)))
        .ok_or_else(|| format!("no operation {} {path} in API {}", method.as_str(), args.api))?;
    let token = match args.token {
        Some(t) => t.trim().to_owned(),
        None => {
            // One byte more than the limit, plus a newline, is enough to tell "too large".
            let mut s = String::new();
            std::io::stdin().take(token::jws::MAX_TOKEN_LEN as u64 + 2).read_to_string(&mut s)?;
            s.trim().to_owned()
        }
    };
    let source: Box<dyn TimeSource> = match args.now {
        Some(t) => Box::new(ManualTime::new(t)),
        None => Box::new(SystemTime),
    };
    let clock = Clock::new(source, m.created_at, 0);
    let reading = clock.now();
    let validator = Validator::new(m, &ValidatorConfig::default());
    let result = validator.validate(&token, api, op, reading.now);
    let mut json = token::decision_json(&result);
    json["api"] = serde_json::json!({"name": api.name, "version": api.version, "context": api.context});
    json["operation"] = serde_json::json!(format!("{} {}", op.method.as_str(), op.path));
    json["security_disabled"] = serde_json::json!(api.disable_security || op.disable_security);
    json["clock"] = serde_json::json!({
        "now": reading.now, "wall": reading.wall, "floor": reading.floor,
        "floor_origin": reading.origin.as_str(), "floored": reading.floored(),
    });
    Ok((format!("{json}\n"), result.is_ok()))
}
