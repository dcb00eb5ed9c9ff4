//! The state store across process kills: a child process accepts bundles and raises the clock
//! floor in a loop, printing each value once `accept_bundle`/`raise_clock_floor` returned (i.e.
//! after the slot was written and fsynced); the parent kills it with SIGKILL at a random moment,
//! reopens the store and checks that it opens, and that nothing acknowledged was lost or mangled.
//! Many rounds. Each step of a write, and what a power cut there could leave, is replayed
//! deterministically by `src/state.rs::every_crash_point_of_a_write_leaves_the_facts_before_or_after_it`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatelet::state::StateStore;

const CHILD_DIR_ENV: &str = "GATELET_STATE_CHILD_DIR";
const FLOOR_BASE: u64 = 1_000_000;

fn hash_of(serial: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::try_from(serial.wrapping_mul(31).wrapping_add(i as u64) % 251).expect("below 251");
    }
    h
}

/// The child's body. Run only as a child process (see below); ignored in a normal test run.
#[test]
#[ignore = "child process of state_survives_sigkill"]
fn child_writer() {
    let dir = PathBuf::from(std::env::var_os(CHILD_DIR_ENV).expect("run by state_survives_sigkill"));
    let store = StateStore::open(&dir).expect("child opens the store");
    let mut serial = store.rollback_mark().expect("mark").map_or(0, |m| m.serial);
    loop {
        serial += 1;
        store.accept_bundle(serial, &hash_of(serial)).expect("accept");
        store.raise_clock_floor(FLOOR_BASE + serial).expect("floor");
        println!("acked {serial}");
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("randomness");
    u64::from_le_bytes(b)
}

fn run_round(dir: &Path) -> u64 {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("acked ").and_then(|n| n.parse::<u64>().ok()) {
                let _ = tx.send(n);
            }
        }
    });
    // Wait for the first acknowledgement, then kill at a random moment within the next 40 ms.
    let mut last = rx.recv_timeout(Duration::from_secs(30)).expect("child acknowledges a write");
    let deadline = Instant::now() + Duration::from_micros(random_u64() % 40_000);
    while Instant::now() < deadline {
        if let Ok(n) = rx.try_recv() {
            last = n;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    reader.join().expect("reader");
    while let Ok(n) = rx.try_recv() {
        last = n;
    }
    last
}

#[test]
fn state_survives_sigkill() {
    let dir = std::env::temp_dir().join(format!("gatelet-state-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rounds = 25;
    let mut total = 0;
    for round in 0..rounds {
        let acked = run_round(&dir);
        let store = StateStore::open(&dir).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let mark = store.rollback_mark().expect("readable").expect("a mark was written");
        assert!(
            mark.serial >= acked,
            "round {round}: acknowledged serial {acked} lost (mark {})",
            mark.serial
        );
        assert_eq!(mark.payload_sha256, hash_of(mark.serial), "round {round}: mark mangled");
        let floor = store.clock_floor().expect("readable");
        assert!(floor >= FLOOR_BASE + acked, "round {round}: acknowledged floor lost");
        // Rollback still refused after the crash.
        assert!(store.check_rollback(mark.serial - 1, &hash_of(mark.serial - 1)).is_err());
        total = mark.serial;
    }
    assert!(total > rounds, "the child made too little progress to test anything ({total} writes)");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
