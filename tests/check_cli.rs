//! `gatelet check` (the real binary) against a real state directory: exit 1 whenever `run`
//! would refuse or the rollback check could not be made, exit 0 only when it was made and
//! passed. The store is unlocked (the `ExecStartPre` case), locked by a live `gatelet run`
//! started here (an operator checking beside the daemon), or corrupt.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["check", "--config", path_str(config)])
        .output()
        .expect("gatelet check runs")
}

/// Exit code, stdout and stderr of a finished command.
fn outcome(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `gatelet run` holding the state store open; stopped with SIGTERM (or killed, when a test
/// fails first) when dropped.
struct Daemon(Child);

impl Daemon {
    /// Starts `gatelet run` and waits until it logs that it is ready.
    fn start(config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatelet"))
            .args(["run", "--config", path_str(config)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gatelet run starts");
        let stderr = child.stderr.take().expect("piped");
        let daemon = Daemon(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx.recv_timeout(Duration::from_secs(20)).expect("gatelet run logs that it is ready");
            if line.contains("ready: bundle serial") {
                // The rest of its log is drained by the thread until it exits.
                return daemon;
            }
        }
    }

    fn stop(mut self) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        assert_eq!(self.0.wait().expect("exits").code(), Some(0));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn check_beside_a_running_daemon_reads_its_store_and_refuses_a_rollback() {
    let f = Fixture::new("check-locked");
    let config = f.config(20, "");
    let installed = std::fs::read(f.dir.join("bundle.glb")).expect("bundle 20");
    let daemon = Daemon::start(&config);

    // An older bundle at bundle.path: run would refuse it, so check must too.
    std::fs::write(f.dir.join("bundle.glb"), f.bundle(10)).expect("write");
    let (code, stdout, stderr) = outcome(&check(&config));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("rollback refused: serial 10 is older than the accepted serial 20"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // The bundle the daemon accepted, and a newer one: valid, and the check was really made.
    for (bytes, serial) in [(installed, 20), (f.bundle(30), 30)] {
        std::fs::write(f.dir.join("bundle.glb"), bytes).expect("write");
        let (code, stdout, stderr) = outcome(&check(&config));
        assert_eq!(code, Some(0), "serial {serial}: {stdout}{stderr}");
        assert!(stdout.contains(&format!("serial {serial}")), "{stdout}");
        assert!(stdout.contains("rollback: ok (last accepted serial 20"), "{stdout}");
        assert!(stdout.contains("read beside the running gatelet"), "{stdout}");
    }
    // The daemon never noticed.
    daemon.stop();
    std::fs::remove_dir_all(&f.dir).expect("cleanup");
}

#[test]
fn check_fails_when_a_locked_store_cannot_be_read() {
    let f = Fixture::new("check-locked-unreadable");
    let config = f.config(20, "");
    let daemon = Daemon::start(&config);
    // A slot that cannot be read (as for an operator without access to the service's files),
    // while the daemon holds the store.
    let slot = f.dir.join("state/state.1");
    std::fs::remove_file(&slot).expect("rm");
    std::fs::create_dir(&slot).expect("mkdir");
    let (code, stdout, stderr) = outcome(&check(&config));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("in use by a running gatelet"), "{stderr}");
    assert!(stderr.contains("stop gatelet"), "says what to do: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    daemon.stop();
    std::fs::remove_dir_all(&f.dir).expect("cleanup");
}

#[test]
fn check_fails_on_a_corrupt_store() {
    let f = Fixture::new("check-corrupt");
    let config = f.config(10, "");
    let state = f.dir.join("state");
    // Unlocked and sound: the ExecStartPre case.
    let (code, stdout, stderr) = outcome(&check(&config));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("rollback: ok (no bundle accepted yet)"), "the store itself: {stdout}");

    // Slots that hold no valid record (bytes that are not one; a record cut short).
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(state.join("state.0"), vec![0xA5; 112]).expect("write");
    std::fs::write(state.join("state.1"), b"GLTSTATE\x00\x00\x00\x01").expect("write");
    let (code, stdout, stderr) = outcome(&check(&config));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("each copy of the state is corrupt"), "{stderr}");
    assert!(stderr.contains(path_str(&state)), "names the directory: {stderr}");
    assert!(stderr.contains("move the directory aside"), "says what to do: {stderr}");
    // run refuses the same store.
    let run = Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["run", "--config", path_str(&config)])
        .output()
        .expect("gatelet run runs");
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    std::fs::remove_dir_all(&f.dir).expect("cleanup");
}

#[test]
fn a_store_of_an_older_gatelet_is_said_and_the_installed_bundle_sets_the_mark() {
    let f = Fixture::new("check-sled");
    let config = f.config(20, "");
    let state = f.dir.join("state");
    // sled's files, as a gatelet before the slot format left them.
    std::fs::create_dir_all(state.join("blobs")).expect("mkdir");
    std::fs::write(state.join("conf"), b"segment_size: 524288\n").expect("write");
    std::fs::write(state.join("db"), vec![0xA5; 4096]).expect("write");
    let (code, stdout, stderr) = outcome(&check(&config));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("rollback: ok (no bundle accepted yet)"), "{stdout}");
    assert!(stderr.contains("holds a store of an older gatelet (sled), which is not read"), "{stderr}");
    assert!(!state.join("state.0").exists() && !state.join("state.1").exists(), "check writes nothing");
    // run accepts the installed bundle as the mark; an older one is refused from then on.
    Daemon::start(&config).stop();
    std::fs::write(f.dir.join("bundle.glb"), f.bundle(10)).expect("write");
    let (code, stdout, stderr) = outcome(&check(&config));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("rollback refused: serial 10 is older than the accepted serial 20"), "{stderr}");
    assert!(!stderr.contains("older gatelet"), "said once, while the store was new: {stderr}");
    assert!(state.join("db").exists(), "sled's files are left in place");
    std::fs::remove_dir_all(&f.dir).expect("cleanup");
}
