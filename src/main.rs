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

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Keygen(KeygenArgs),
    Bundle(BundleArgs),
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

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    let result = match cli.command {
        Command::Keygen(a) => gatelet::toolkit::keygen(&a.out),
        Command::Bundle(b) => match b.command {
            BundleCommand::Build(a) => {
                gatelet::toolkit::bundle_build(&a.project, &a.key, &a.out, a.serial, &mut std::io::stderr())
            }
            BundleCommand::Verify(a) => gatelet::toolkit::bundle_verify(&a.file, &a.trusted_key),
            BundleCommand::Inspect(a) => gatelet::toolkit::bundle_inspect(&a.file, &a.trusted_key),
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
