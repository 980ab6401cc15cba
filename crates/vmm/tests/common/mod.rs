//! Helpers for the `vireo-vmm` integration tests: spawning the VMM with its control
//! socket, talking to it, and the KVM skip rule shared with crates/cli/tests.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Bound on every wait: generous, since CI runs tests in parallel on 2 shared cores.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn vmm() -> &'static str {
    env!("CARGO_BIN_EXE_vireo-vmm")
}

pub fn test_guest() -> &'static str {
    vireo_test_guest::PATH
}

/// Whether KVM tests can run here; if not, either skips (returns false, printing why) or,
/// with VIREO_REQUIRE_KVM=1, fails the test.
pub fn kvm_or_skip(test: &str) -> bool {
    let reason = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => return true,
        Err(e) => format!("/dev/kvm is not usable: {e}"),
    };
    if std::env::var("VIREO_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{test}: {reason} (VIREO_REQUIRE_KVM=1)");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// A scratch directory removed at the end of the test. Short, because unix socket paths
/// are limited to 107 bytes.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/vvmm-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` until it holds; panics with `what` after [`TIMEOUT`].
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `vireo-vmm` with `--api-socket DIR/api.sock --exit-file DIR/exit.json`.
pub struct Vmm {
    child: Option<Child>,
    pub dir: TempDir,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

pub struct Ended {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Vmm {
    /// Starts the VMM with `args` (plus the API socket and exit file) and waits until its
    /// API socket accepts connections.
    pub fn spawn(name: &str, args: &[&str]) -> Vmm {
        Self::spawn_with(name, args, false)
    }

    /// [`Vmm::spawn`] with `VIREO_LOG=debug`, whose stdout and stderr pipes are closed at
    /// once, as when the process that launched it died: every write the VMM makes there
    /// fails with EPIPE.
    pub fn spawn_orphaned(name: &str, args: &[&str]) -> Vmm {
        Self::spawn_with(name, args, true)
    }

    fn spawn_with(name: &str, args: &[&str], orphaned: bool) -> Vmm {
        let dir = TempDir::new(name);
        let api = dir.path("api.sock");
        let exit = dir.path("exit.json");
        let mut cmd = Command::new(vmm());
        cmd.args(args)
            .arg("--api-socket")
            .arg(&api)
            .arg("--exit-file")
            .arg(&exit)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if orphaned {
            cmd.env("VIREO_LOG", "debug");
        }
        let mut child = cmd.spawn().expect("spawn vireo-vmm");
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        if orphaned {
            // The read ends go away; the threads below then read nothing.
            drop(out);
            drop(err);
            out = std::process::ChildStdout::from(std::os::fd::OwnedFd::from(
                std::fs::File::open("/dev/null").unwrap(),
            ));
            err = std::process::ChildStderr::from(std::os::fd::OwnedFd::from(
                std::fs::File::open("/dev/null").unwrap(),
            ));
        }
        let read_all = |r: &mut dyn Read| {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        };
        let out = std::thread::spawn(move || read_all(&mut out));
        let err = std::thread::spawn(move || read_all(&mut err));
        let mut vmm = Vmm {
            child: Some(child),
            dir,
            out: Some(out),
            err: Some(err),
        };
        let start = Instant::now();
        while UnixStream::connect(&api).is_err() {
            if let Some(st) = vmm.child.as_mut().unwrap().try_wait().unwrap() {
                let ended = vmm.finish(st);
                panic!(
                    "vireo-vmm exited before listening ({:?})\n{}",
                    ended.status, ended.stderr
                );
            }
            assert!(start.elapsed() < TIMEOUT, "API socket never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        vmm
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn api_path(&self) -> PathBuf {
        self.dir.path("api.sock")
    }

    pub fn api(&self) -> ApiClient {
        ApiClient::connect(&self.api_path())
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill() on our own child's pid; it has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, sig) }, 0);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    fn finish(&mut self, status: ExitStatus) -> Ended {
        self.child = None;
        Ended {
            status,
            stdout: self.out.take().unwrap().join().unwrap(),
            stderr: self.err.take().unwrap().join().unwrap(),
        }
    }

    /// Waits for the process to exit (killing it after [`TIMEOUT`], which fails the test).
    pub fn wait(mut self) -> Ended {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return self.finish(st);
            }
            if start.elapsed() > TIMEOUT {
                let _ = self.child.as_mut().unwrap().kill();
                let st = self.child.as_mut().unwrap().wait().unwrap();
                let e = self.finish(st);
                panic!("vireo-vmm did not exit\n{}\n{}", e.stdout, e.stderr);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit file, parsed.
    pub fn exit_file(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.path("exit.json")).expect("exit file");
        serde_json::from_str(&text).expect("exit file is JSON")
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One control connection. Events that arrive while waiting for a reply are kept for
/// [`ApiClient::event`].
pub struct ApiClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub events: VecDeque<Value>,
}

impl ApiClient {
    pub fn connect(path: &Path) -> ApiClient {
        let s = UnixStream::connect(path).expect("connect to the API socket");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        ApiClient {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            events: VecDeque::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next line from the VMM; `None` at EOF.
    pub fn read_line(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("read from the API socket");
        if n == 0 {
            return None;
        }
        assert!(line.ends_with('\n'), "unterminated line {line:?}");
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
    }

    /// The next reply (a line with "return" or "error"), queueing events read before it.
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self
                .read_line()
                .expect("connection closed before the reply");
            if v.get("event").is_some() {
                self.events.push_back(v);
            } else {
                return v;
            }
        }
    }

    /// Runs `command` and returns its whole reply.
    pub fn request(&mut self, command: &str) -> Value {
        let id = json!(format!("t-{command}"));
        let mut line = serde_json::to_vec(&json!({"execute": command, "id": id})).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
        let r = self.reply();
        assert_eq!(r["id"], id, "reply to {command}: {r}");
        r
    }

    /// Runs `command` and returns its "return" value; fails the test on an error reply.
    pub fn execute(&mut self, command: &str) -> Value {
        let r = self.request(command);
        match r.get("return") {
            Some(v) => v.clone(),
            None => panic!("{command} failed: {r}"),
        }
    }

    /// The next event named `name`; other events before it are returned too (in order),
    /// so a test can check what came first.
    pub fn event(&mut self, name: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let v = match self.events.pop_front() {
                Some(v) => v,
                None => self.read_line().unwrap_or_else(|| {
                    panic!("connection closed before event {name}; saw {before:?}")
                }),
            };
            if v["event"] == name {
                return (v, before);
            }
            before.push(v);
        }
    }

    /// Reads until the VMM closes the connection; returns the events seen.
    pub fn until_closed(&mut self) -> Vec<Value> {
        let mut seen: Vec<Value> = self.events.drain(..).collect();
        while let Some(v) = self.read_line() {
            seen.push(v);
        }
        seen
    }
}

/// A console socket client.
pub struct ConsoleClient {
    stream: UnixStream,
    pub seen: Vec<u8>,
}

impl ConsoleClient {
    pub fn connect(path: &Path) -> ConsoleClient {
        let stream = UnixStream::connect(path).expect("connect to the console socket");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        ConsoleClient {
            stream,
            seen: Vec::new(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads until the output so far contains `pattern`.
    pub fn read_until(&mut self, pattern: &str) {
        self.read_until_n(pattern, 1)
    }

    /// Reads until the output so far contains `pattern` `n` times.
    pub fn read_until_n(&mut self, pattern: &str, n: usize) {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while self.text().matches(pattern).count() < n {
            assert!(
                start.elapsed() < TIMEOUT,
                "console never showed {pattern:?}:\n{}",
                self.text()
            );
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("console closed before {pattern:?}:\n{}", self.text()),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!("console read: {e}\n{}", self.text()),
            }
        }
    }

    /// Reads until the VMM closes the console.
    pub fn read_to_end(&mut self) {
        let _ = self.stream.read_to_end(&mut self.seen);
    }

    pub fn type_text(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }
}

/// The per-vCPU counters of a `query-stats` reply: (exits, mmio_exits) of vCPU 0.
pub fn vcpu0_counters(stats: &Value) -> (u64, u64) {
    let v = &stats["vcpus"][0];
    (
        v["exits"].as_u64().expect("exits"),
        v["mmio_exits"].as_u64().expect("mmio_exits"),
    )
}
