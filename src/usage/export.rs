//! `gatelet usage export --to DIR`: moves closed usage files off the device for sites with no
//! uplink. Each file is copied under a hidden temporary name, fsynced, renamed to its own name,
//! the destination directory fsynced, and only then deleted from the spool, so an export
//! interrupted at any point (stick pulled, power cut) leaves every file in the spool, at the
//! destination, or both — never in neither. `.part` files are not touched: the running writer
//! owns them, and the next start (or shutdown) closes them. Files the collector refused for good
//! (`<name>.rejected`) are moved too, under that name, after the closed ones: they leave the
//! device no other way, and the name keeps saying the collector would not take them (a
//! `*.ndjson.gz` glob skips them; `zcat` reads them as they are).
//!
//! Safe while the daemon runs: it only reads and removes closed files, as the uploader does; a
//! file both export and upload took is a duplicate with the same name, for the collector to
//! deduplicate.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::UsageError;
use super::config::UsageConfig;
use super::spool;

/// The configuration file read when `--config` is not given, if it exists (the one `gatelet run`
/// reads by default).
pub const DEFAULT_CONFIG: &str = "/etc/gatelet/gatelet.toml";
/// The environment override of `usage.spool_dir`, as for `gatelet run`.
pub const SPOOL_DIR_ENV: &str = "GATELET_USAGE_SPOOL_DIR";
/// Largest configuration file read.
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// What an export moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Names and sizes of the files moved, oldest first (set-aside ones after the others).
    pub moved: Vec<(String, u64)>,
    /// Files left in the spool because the destination holds a different file of the same name.
    pub conflicts: Vec<String>,
    /// Files copied (and fsynced) but not deleted from the spool (a read-only flash): they are
    /// still there, and a later export or upload sends them again under the same name.
    pub not_removed: Vec<(String, String)>,
}

fn io_err(what: &str, path: &Path) -> impl Fn(io::Error) -> UsageError {
    let what = format!("{what} {}", path.display());
    move |e| UsageError::Io(what.clone(), e)
}

/// Whether two files hold the same bytes.
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Moves every closed and set-aside (`.rejected`) file of `spool_dir` into `to` (created if
/// missing). A file whose tail does not verify is cut to its verified members first, as before
/// an upload.
pub fn export(spool_dir: &Path, to: &Path) -> Result<ExportReport, UsageError> {
    let listing = spool::list(spool_dir).map_err(io_err("cannot list spool", spool_dir))?;
    fs::create_dir_all(to).map_err(io_err("cannot create", to))?;
    let mut report = ExportReport::default();
    for file in listing.closed.iter().chain(&listing.rejected) {
        // A corrupt tail is cut first, as before an upload (on a read-only flash the file is
        // checked, and one that cannot be cut stops the export with the reason).
        let Some(_scan) = spool::check_closed(&file.path).map_err(io_err("cannot read", &file.path))? else {
            continue;
        };
        let dest = to.join(&file.name);
        if dest.exists() {
            if same_content(&file.path, &dest).map_err(io_err("cannot compare", &dest))? {
                // A previous export copied it and stopped before deleting it.
                remove_source(&mut report, &file.name, &file.path, file.len);
            } else {
                report.conflicts.push(file.name.clone());
            }
            continue;
        }
        let mut tmp_name = OsString::from(".");
        tmp_name.push(&file.name);
        tmp_name.push(".tmp");
        let tmp = to.join(tmp_name);
        let copied = (|| -> io::Result<u64> {
            let mut src = match File::open(&file.path) {
                Ok(f) => f,
                // Uploaded (or dropped by the cap) since the listing: nothing to move.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            let mut out = File::create(&tmp)?;
            let n = io::copy(&mut src, &mut out)?;
            out.sync_all()?;
            drop(out);
            fs::rename(&tmp, &dest)?;
            spool::fsync_dir(to)?;
            Ok(n)
        })();
        let n = match copied {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(UsageError::Io(
                    format!("cannot copy {} to {}", file.path.display(), dest.display()),
                    e,
                ));
            }
        };
        remove_source(&mut report, &file.name, &file.path, n);
    }
    if report.moved.len() > report.not_removed.len() {
        spool::fsync_dir(spool_dir).map_err(io_err("cannot sync", spool_dir))?;
    }
    Ok(report)
}

/// Deletes an exported file from the spool; one that cannot be deleted is reported, not fatal:
/// its copy is safe at the destination.
fn remove_source(report: &mut ExportReport, name: &str, path: &Path, len: u64) {
    report.moved.push((name.to_owned(), len));
    if let Err(e) = spool::remove_if_present(path) {
        report.not_removed.push((name.to_owned(), e.to_string()));
    }
}

/// Which spool directory `gatelet usage export` works on: `--spool-dir`, else the environment's
/// `GATELET_USAGE_SPOOL_DIR`, else `[usage] spool_dir` of the configuration file (`--config`, or
/// [`DEFAULT_CONFIG`] when it exists), else the default. Only the `[usage]` table of the file is
/// read (and checked for unknown keys).
pub fn resolve_spool_dir(
    spool_dir: Option<&Path>,
    config: Option<&Path>,
    env: Option<OsString>,
) -> Result<PathBuf, UsageError> {
    if let Some(d) = spool_dir {
        return Ok(d.to_owned());
    }
    if let Some(d) = env.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let file = match config {
        Some(p) => Some(p.to_owned()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let Some(file) = file else { return Ok(UsageConfig::default().spool_dir) };
    let len = fs::metadata(&file).map_err(io_err("cannot read", &file))?.len();
    if len > MAX_CONFIG_FILE {
        return Err(UsageError::Config(format!("{}: larger than {MAX_CONFIG_FILE} bytes", file.display())));
    }
    let text = fs::read_to_string(&file).map_err(io_err("cannot read", &file))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| UsageError::Config(format!("{}: {}", file.display(), e.message())))?;
    let usage: UsageConfig = match table.get("usage") {
        Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
            UsageError::Config(format!("{}: [usage]: {}", file.display(), e.message()))
        })?,
        None => UsageConfig::default(),
    };
    Ok(usage.spool_dir)
}

/// `gatelet usage export --to DIR [--spool-dir DIR] [--config PATH]`, as `main` calls it: the
/// operator's summary, or an error when something could not be moved.
pub fn export_command(
    to: &Path,
    spool_dir: Option<&Path>,
    config: Option<&Path>,
) -> Result<String, Box<dyn std::error::Error>> {
    let spool_dir = resolve_spool_dir(spool_dir, config, std::env::var_os(SPOOL_DIR_ENV))?;
    let report = export(&spool_dir, to)?;
    let mut out = String::new();
    for (name, len) in &report.moved {
        out.push_str(&format!("{name} ({len} bytes)\n"));
    }
    let bytes: u64 = report.moved.iter().map(|(_, n)| n).sum();
    out.push_str(&format!(
        "moved {} usage file(s), {bytes} bytes, from {} to {}\n",
        report.moved.len(),
        spool_dir.display(),
        to.display()
    ));
    if let Some((_, why)) = report.not_removed.first() {
        return Err(format!(
            "{out}{} file(s) were copied but could not be deleted from the spool ({why}); they stay there and will be sent again under the same names",
            report.not_removed.len()
        )
        .into());
    }
    if !report.conflicts.is_empty() {
        return Err(format!(
            "{out}{} already holds different files named {}; they stay in the spool (export each device to its own directory)",
            to.display(),
            report.conflicts.join(", ")
        )
        .into());
    }
    Ok(out)
}
