//! Helpers shared by the `vireo` integration tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the `vireo` binary under test.
pub fn vireo() -> &'static str {
    env!("CARGO_BIN_EXE_vireo")
}

/// Path of the purpose-built test guest (a PVH ELF).
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

pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// Lines the test guest printed with the `vtg: ` prefix (prefix removed).
    pub fn guest_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once("vtg: ").map(|(_, rest)| rest.trim_end()))
            .collect()
    }
    /// The value of `key=` in the first guest line starting with `prefix`.
    pub fn guest_field(&self, prefix: &str, key: &str) -> Option<String> {
        let line = self
            .guest_lines()
            .into_iter()
            .find(|l| l.starts_with(prefix))?;
        field(line, key)
    }
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Extracts `key=value` (value up to the next space) from a line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let start = line
        .match_indices(&pat)
        .find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')?
        .0
        + pat.len();
    Some(line[start..].split(' ').next().unwrap_or("").to_string())
}

/// Runs `vireo` with `args`, killing it after `timeout`.
pub fn run_vireo(args: &[&str], timeout: Duration) -> Run {
    run_command(Command::new(vireo()).args(args), timeout)
}

pub fn run_command(cmd: &mut Command, timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("timed out after {timeout:?} ({st:?})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// A scratch directory removed at the end of the test.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}
