//! First boot through the real binary: `gatelet run` with an inbox but no bundle yet waits with
//! 503s, sets aside a bundle it would not start with, takes the first good one, and then serves
//! it as any start does (installed at `bundle.path`, rollback mark recorded). `gatelet check`
//! says the same without failing.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::{Fixture, eventually, get, path_str};

/// A config with an inbox and nothing at `bundle.path`.
fn unprovisioned(name: &str) -> (Fixture, std::path::PathBuf) {
    let f = Fixture::new(name);
    let config = f.config(1, "");
    std::fs::remove_file(f.dir.join("bundle.glb")).expect("no bundle yet");
    (f, config)
}

struct Gatelet {
    child: Child,
    lines: Receiver<String>,
    http: SocketAddr,
    admin: SocketAddr,
}

fn spawn(config: &std::path::Path, notify: &std::path::Path) -> Gatelet {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["run", "--config", path_str(config)])
        .env("NOTIFY_SOCKET", notify)
        .stderr(Stdio::piped())
        .spawn()
        .expect("gatelet runs");
    let stderr = child.stderr.take().expect("piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut http, mut admin) = (None, None);
    while http.is_none() || admin.is_none() {
        let line = lines.recv_timeout(Duration::from_secs(10)).expect("gatelet logs its listeners");
        if let Some(a) = line.split("listening http ").nth(1) {
            http = Some(a.trim().parse().expect("address"));
        }
        if let Some(a) = line.split("listening admin ").nth(1) {
            admin = Some(a.trim().parse().expect("address"));
        }
    }
    Gatelet { child, lines, http: http.expect("bound"), admin: admin.expect("bound") }
}

impl Drop for Gatelet {
    /// A failed assertion must not leave the daemon running (it would hold the test's output).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gatelet {
    /// Waits for a log line containing `what`.
    fn logged(&self, what: &str) -> String {
        loop {
            let line =
                self.lines.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("no {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().expect("kill").success());
    }
}

fn heard(notify: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    notify.set_nonblocking(true).expect("nonblocking");
    let mut heard = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = notify.recv(&mut buf) {
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    heard
}

fn check(config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["check", "--config", path_str(config)])
        .output()
        .expect("check runs");
    (
        out.status.code(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn waits_for_the_first_bundle_then_serves_it() {
    let (f, config) = unprovisioned("first-boot");
    let (code, said) = check(&config);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("none yet") && said.contains("waiting for the first bundle"), "{said}");

    let notify_path = f.dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    let mut g = spawn(&config, &notify_path);
    g.logged("waiting for the first bundle");

    // Up, not ready: /readyz and the data plane say why.
    let r = get(g.admin, "/readyz", None);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "waiting for the first bundle");
    assert_eq!(get(g.admin, "/healthz", None).status, 200);
    let token = f.token(|_| {});
    let r = get(g.http, "/shop/1.0.0/items/1", Some(&token));
    assert_eq!((r.status, r.fault_code()), (503, 101503));
    assert_eq!(r.json()["fault"]["description"], "waiting for the first bundle");
    assert_eq!(r.header("content-type"), Some("application/json"));

    // A bundle signed by a key the board does not trust is set aside; it keeps waiting.
    let stranger = gatelet::bundle::seal(
        &gatelet::project::compile(&f.dir.join("project"), 9).expect("compiles").manifest,
        &common::key(7),
    )
    .expect("seals");
    std::fs::write(f.dir.join("inbox/a-stranger.glb"), stranger).expect("write");
    g.logged("a-stranger.glb: refused");
    // Logged, then set aside.
    let aside = f.dir.join("inbox/.refused-a-stranger.glb");
    assert!(eventually(Duration::from_secs(5), || aside.exists()));
    assert!(!f.dir.join("bundle.glb").exists());
    assert_eq!(get(g.admin, "/readyz", None).status, 503);

    // An update agent writes the first bundle under a dot name, then renames it.
    let first = f.bundle(5);
    std::fs::write(f.dir.join("inbox/.partial"), &first).expect("write");
    std::fs::rename(f.dir.join("inbox/.partial"), f.dir.join("inbox/b-first.glb")).expect("rename");
    let serial = || get(g.admin, "/readyz", None).json()["bundle_serial"].as_u64();
    assert!(eventually(Duration::from_secs(10), || serial() == Some(5)), "the first bundle is served");
    assert_eq!(std::fs::read(f.dir.join("bundle.glb")).expect("installed"), first);
    assert!(!f.dir.join("inbox/b-first.glb").exists(), "taken from the inbox");
    // The listeners were handed over: same addresses, now the real pipeline.
    let r = get(g.http, "/shop/1.0.0/items/1", Some(&token));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(g.http, "/shop/1.0.0/items/1", None).status, 401);
    // The rollback mark was recorded, as on any start (check reads a copy of the store).
    let (code, said) = check(&config);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("last accepted serial 5"), "{said}");

    g.signal("-TERM");
    assert_eq!(g.child.wait().expect("exits").code(), Some(0));
    let heard = heard(&notify);
    assert_eq!(
        heard.first().map(String::as_str),
        Some("READY=1\nSTATUS=waiting for the first bundle in ".to_owned() + path_str(&f.dir.join("inbox")))
            .as_deref(),
        "{heard:?}"
    );
    assert_eq!(heard.last().map(String::as_str), Some("STOPPING=1"), "{heard:?}");

    // The next start finds the bundle where the first one was installed.
    let mut g = spawn(&config, &f.dir.join("absent.sock"));
    assert!(eventually(Duration::from_secs(10), || get(g.admin, "/readyz", None).status == 200));
    g.signal("-TERM");
    assert_eq!(g.child.wait().expect("exits").code(), Some(0));
}

#[test]
fn sigterm_while_waiting_exits_zero_and_without_an_inbox_a_missing_bundle_fails() {
    let (f, config) = unprovisioned("first-boot-term");
    let mut g = spawn(&config, &f.dir.join("absent.sock"));
    g.logged("waiting for the first bundle");
    g.signal("-HUP");
    g.logged("SIGHUP: looking at the inbox");
    assert_eq!(get(g.admin, "/readyz", None).status, 503, "SIGHUP with an empty inbox keeps waiting");
    g.signal("-TERM");
    assert_eq!(g.child.wait().expect("exits").code(), Some(0));
    assert!(!f.dir.join("bundle.glb").exists());

    // No inbox: nothing can arrive, so a missing bundle is an error for both commands.
    let text = std::fs::read_to_string(&config).expect("config");
    let inbox_line = format!("inbox = \"{}\"", path_str(&f.dir.join("inbox")));
    assert!(text.contains(&inbox_line));
    std::fs::write(&config, text.replace(&inbox_line, "inbox = \"\"")).expect("write");
    let (code, said) = check(&config);
    assert_ne!(code, Some(0), "{said}");
    let out = Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["run", "--config", path_str(&config)])
        .output()
        .expect("runs");
    assert_ne!(out.status.code(), Some(0));
}
