//! The `gatelet` binary: parses the command line and calls the library. The only place that
//! turns an error into an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

/// gatelet: offline API microgateway and its toolkit.
#[derive(FromArgs, Debug)]
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant (`token mint`'s flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Keygen(KeygenArgs),
    Bundle(BundleArgs),
    Token(TokenArgs),
    Run(RunArgs),
    Check(CheckArgs),
    Demo(DemoArgs),
    Usage(UsageArgs),
}

/// Run the gateway (the daemon): serve until SIGTERM or SIGINT; SIGHUP reloads the bundle.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
struct RunArgs {
    /// configuration file (default /etc/gatelet/gatelet.toml; every key may also come from
    /// GATELET_<SECTION>_<KEY> environment variables)
    #[argh(option)]
    config: Option<PathBuf>,
}

/// Validate the configuration and bundle exactly as run would, print a summary; exit 0 valid,
/// 1 invalid.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
struct CheckArgs {
    /// configuration file (default /etc/gatelet/gatelet.toml)
    #[argh(option)]
    config: Option<PathBuf>,
}

/// Run a throwaway gateway on the built-in pizzashack bundle with an echo backend, and print
/// ready-to-paste curl lines. Runs until Ctrl-C.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "demo")]
struct DemoArgs {
    /// address to listen on (default 127.0.0.1:9090)
    #[argh(option)]
    listen: Option<String>,
}

/// Usage files: move closed ones off the device.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "usage")]
struct UsageArgs {
    #[argh(subcommand)]
    command: UsageCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum UsageCommand {
    Export(UsageExportArgs),
}

/// Move closed usage files (usage-*.ndjson.gz, and *.ndjson.gz.rejected ones the collector
/// refused) from the spool to DIR: copy, fsync, then delete. Safe while the gateway runs.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "export")]
struct UsageExportArgs {
    /// destination directory (created if missing), e.g. a mounted USB stick
    #[argh(option)]
    to: PathBuf,
    /// spool directory (default: GATELET_USAGE_SPOOL_DIR, else [usage] spool_dir of the config)
    #[argh(option)]
    spool_dir: Option<PathBuf>,
    /// configuration file whose [usage] spool_dir is used (default /etc/gatelet/gatelet.toml
    /// when it exists)
    #[argh(option)]
    config: Option<PathBuf>,
}

/// Generate an Ed25519 key pair: PREFIX.key (PKCS#8 PEM, 0600) and PREFIX.pub (SPKI PEM).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "keygen")]
struct KeygenArgs {
    /// path prefix of the two files
    #[argh(option)]
    out: PathBuf,
}

/// Build, verify or inspect a signed bundle.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "bundle")]
struct BundleArgs {
    #[argh(subcommand)]
    command: BundleCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum BundleCommand {
    Build(BuildArgs),
    Verify(VerifyArgs),
    Inspect(InspectArgs),
}

/// Compile a project directory (gatelet.toml, apis/, keys/) into a signed bundle.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "build")]
struct BuildArgs {
    /// the project directory
    #[argh(positional)]
    project: PathBuf,
    /// signing key (PKCS#8 PEM Ed25519)
    #[argh(option)]
    key: PathBuf,
    /// bundle file to write
    #[argh(option)]
    out: PathBuf,
    /// anti-rollback serial (default: the current Unix time)
    #[argh(option)]
    serial: Option<u64>,
}

/// Check a bundle's signature, framing and content; exit 0 when valid, 1 otherwise.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
struct VerifyArgs {
    /// the bundle file
    #[argh(positional)]
    file: PathBuf,
    /// a trusted publisher key (SPKI PEM); may be repeated
    #[argh(option)]
    trusted_key: Vec<PathBuf>,
}

/// Print a bundle's manifest as JSON (verified when --trusted-key is given).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "inspect")]
struct InspectArgs {
    /// the bundle file
    #[argh(positional)]
    file: PathBuf,
    /// a trusted publisher key (SPKI PEM); may be repeated
    #[argh(option)]
    trusted_key: Vec<PathBuf>,
}

/// Mint a development token, or check one against a bundle as the gateway would.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "token")]
struct TokenArgs {
    #[argh(subcommand)]
    command: TokenCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum TokenCommand {
    Mint(MintArgs),
    Verify(TokenVerifyArgs),
}

/// Print a signed development JWT (WSO2 claims: application, subscribedAPIs, keytype).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "mint")]
struct MintArgs {
    /// the issuer's signing key (PKCS#8 PEM: Ed25519, RSA, EC P-256 or P-384)
    #[argh(option)]
    key: PathBuf,
    /// the iss claim: an issuer's `issuer` in the bundle
    #[argh(option)]
    issuer: String,
    /// the sub claim
    #[argh(option)]
    subject: String,
    /// key id (default: the key's RFC 7638 thumbprint, the kid of a PEM issuer key)
    #[argh(option)]
    kid: Option<String>,
    /// the aud claim
    #[argh(option)]
    audience: Option<String>,
    /// a subscribed API as NAME:VERSION (VERSION may be *); may be repeated
    #[argh(option)]
    api: Vec<String>,
    /// application id
    #[argh(option)]
    app_id: Option<String>,
    /// application throttling tier
    #[argh(option)]
    app_tier: Option<String>,
    /// subscription throttling tier of the --api entries
    #[argh(option)]
    tier: Option<String>,
    /// space-separated scopes
    #[argh(option)]
    scope: Option<String>,
    /// PRODUCTION (default) or SANDBOX
    #[argh(option)]
    keytype: Option<String>,
    /// lifetime in seconds (default 3600)
    #[argh(option)]
    ttl: Option<u64>,
    /// JWS algorithm (default from the key: RS256, ES256, ES384 or EdDSA; RSA keys also RS384,
    /// RS512, PS256, PS384, PS512)
    #[argh(option)]
    alg: Option<String>,
    /// a JSON file holding one object whose members are set over the generated claims
    #[argh(option)]
    claims: Option<PathBuf>,
    /// a PEM certificate whose SHA-1 thumbprint goes in the header's x5t (then no kid unless
    /// --kid is given)
    #[argh(option)]
    x5t_cert: Option<PathBuf>,
    /// write the x5t as WSO2 API Manager does: base64 of the thumbprint's lower-case hex
    #[argh(switch)]
    x5t_wso2: bool,
}

/// Decide on one request's token exactly as the gateway would: prints the decision as one line
/// of JSON (fault code and reason, or the principal); exit 0 allowed, 1 refused or error.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
struct TokenVerifyArgs {
    /// the token (read from stdin when omitted, which keeps it out of ps and shell history)
    #[argh(positional)]
    token: Option<String>,
    /// the bundle file
    #[argh(option)]
    bundle: PathBuf,
    /// a trusted publisher key (SPKI PEM); may be repeated
    #[argh(option)]
    trusted_key: Vec<PathBuf>,
    /// the API as NAME:VERSION
    #[argh(option)]
    api: String,
    /// the request method (default GET)
    #[argh(option, default = "String::from(\"GET\")")]
    method: String,
    /// the request path or operation template, e.g. /order/42 or /order/{orderId}
    #[argh(option)]
    path: String,
    /// wall-clock time to use, in Unix seconds (default: now)
    #[argh(option)]
    now: Option<u64>,
}

/// The config file to read: the one given, else the default path if it exists (the environment
/// alone may configure a device).
fn config_file(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| {
        let default = PathBuf::from(gatelet::config::DEFAULT_PATH);
        default.exists().then_some(default)
    })
}

fn resolve_config(
    file: Option<PathBuf>,
    overrides: &gatelet::config::Overrides,
) -> Result<gatelet::config::Config, Box<dyn std::error::Error>> {
    let file = config_file(file);
    // Variables that are not UTF-8 cannot be configuration (std::env::vars would panic on them).
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    Ok(gatelet::config::Config::resolve(file.as_deref(), env, overrides)?)
}

/// Logging to stderr, one line per event; no timestamps under journald, which adds its own.
fn init_logging(level: &str) {
    let filter = gatelet::config::log_level(level).unwrap_or(log::LevelFilter::Info);
    let mut cfg = simplelog::ConfigBuilder::new();
    cfg.set_target_level(log::LevelFilter::Off).set_thread_level(log::LevelFilter::Off);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        cfg.set_time_level(log::LevelFilter::Off);
    } else {
        cfg.set_time_format_rfc3339();
    }
    let _ = simplelog::WriteLogger::init(filter, cfg.build(), std::io::stderr());
}

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    let result = match cli.command {
        Command::Run(a) => resolve_config(a.config, &Default::default()).and_then(|config| {
            init_logging(&config.log.level);
            gatelet::daemon::run(config)?;
            Ok(String::new())
        }),
        Command::Check(a) => resolve_config(a.config, &Default::default()).and_then(|config| {
            init_logging("warn");
            Ok(gatelet::daemon::check(&config)?)
        }),
        Command::Demo(a) => {
            init_logging("info");
            gatelet::demo::run(a.listen.as_deref()).map(|()| String::new())
        }
        Command::Keygen(a) => gatelet::toolkit::keygen(&a.out),
        Command::Usage(u) => match u.command {
            UsageCommand::Export(a) => {
                gatelet::usage::export::export_command(&a.to, a.spool_dir.as_deref(), a.config.as_deref())
            }
        },
        Command::Bundle(b) => match b.command {
            BundleCommand::Build(a) => {
                gatelet::toolkit::bundle_build(&a.project, &a.key, &a.out, a.serial, &mut std::io::stderr())
            }
            BundleCommand::Verify(a) => gatelet::toolkit::bundle_verify(&a.file, &a.trusted_key),
            BundleCommand::Inspect(a) => gatelet::toolkit::bundle_inspect(&a.file, &a.trusted_key),
        },
        Command::Token(t) => match t.command {
            TokenCommand::Mint(a) => (|| {
                use gatelet::token::mint;
                let x5t = match &a.x5t_cert {
                    Some(c) => Some(
                        gatelet::keys::read_small(c)
                            .map_err(|e| e.to_string())
                            .and_then(|pem| mint::x5t_of_cert(&pem, a.x5t_wso2))
                            .map_err(|e| format!("--x5t-cert {}: {e}", c.display()))?,
                    ),
                    None if a.x5t_wso2 => return Err("--x5t-wso2 needs --x5t-cert".into()),
                    None => None,
                };
                let request = gatelet::token::MintRequest {
                    issuer: a.issuer,
                    subject: a.subject,
                    kid: a.kid,
                    audience: a.audience,
                    apis: a.api,
                    app_id: a.app_id,
                    app_tier: a.app_tier,
                    tier: a.tier,
                    scope: a.scope,
                    key_type: a.keytype,
                    ttl_s: a.ttl,
                    alg: a.alg,
                    extra_claims: a.claims.as_deref().map(mint::claims_file).transpose()?,
                    x5t,
                };
                gatelet::toolkit::token_mint(&a.key, &request)
            })(),
            TokenCommand::Verify(a) => {
                let args = gatelet::toolkit::TokenVerify {
                    bundle: &a.bundle,
                    trusted_keys: &a.trusted_key,
                    api: &a.api,
                    method: &a.method,
                    path: &a.path,
                    token: a.token.as_deref(),
                    now: a.now,
                };
                // The one command whose refusal is also an answer: the JSON goes to stdout either way.
                match gatelet::toolkit::token_verify(&args) {
                    Ok((json, allowed)) => {
                        print!("{json}");
                        return if allowed { ExitCode::SUCCESS } else { ExitCode::FAILURE };
                    }
                    Err(e) => Err(e),
                }
            }
        },
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatelet: {e}");
            ExitCode::FAILURE
        }
    }
}
