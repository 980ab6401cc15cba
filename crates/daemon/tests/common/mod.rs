//! A real `vireod --root TMPDIR` driven by the real `vireo` CLI, for end-to-end tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A binary built next to vireod (cargo builds every workspace binary into one directory).
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_vireod")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p vireo-cli -p vireo-vmm), or run cargo test --workspace",
        p.display()
    );
    p
}

pub fn vireo_bin() -> PathBuf {
    sibling("vireo")
}

pub fn test_guest() -> &'static str {
    vireo_test_guest::PATH
}

/// Whether KVM tests can run here; skips (false, printing why) unless VIREO_REQUIRE_KVM=1.
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
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

pub fn run_command(cmd: &mut Command, timeout: Duration) -> Run {
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
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("timed out after {timeout:?}: {cmd:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        status,
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
    }
}

/// A daemon with its own root directory; killed (with its VMs) when dropped.
pub struct Daemon {
    pub root: PathBuf,
    pub uri: String,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(test: &str) -> Self {
        let root = std::env::temp_dir().join(format!("vireod-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let uri = format!("vireo:///system?root={}", root.display());
        let mut d = Self {
            root,
            uri,
            child: None,
        };
        d.spawn();
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("vireod.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("run/vireo/vireod.sock")
    }

    /// Starts vireod and waits until it answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("vireod.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vireod"))
            .arg("--root")
            .arg(&self.root)
            .env("VIREO_VMM", sibling("vireo-vmm"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vireod");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let r = self.vireo(&["version"]);
            if r.ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vireod exited ({st}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "vireod did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn vireo(&self, args: &[&str]) -> Run {
        run_command(
            Command::new(vireo_bin())
                .arg("-c")
                .arg(&self.uri)
                .args(args),
            TIMEOUT,
        )
    }

    /// Runs `vireo args` and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.vireo(args);
        assert!(
            r.ok(),
            "vireo {args:?} failed:\n{}\n--- vireod ---\n{}",
            r.describe(),
            self.log()
        );
        r.stdout
    }

    /// Runs `vireo args` and asserts a one-line error; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let r = self.vireo(args);
        assert!(!r.ok(), "vireo {args:?} should fail:\n{}", r.describe());
        assert_eq!(r.status.code(), Some(1), "{}", r.describe());
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected:\n{}", r.describe());
        assert!(lines[0].starts_with("vireo: error: "), "{}", r.describe());
        lines[0].to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes a domain XML booting the test guest with `cmdline` and returns its path.
    pub fn guest_xml(&self, name: &str, cmdline: &str, extra: &str) -> String {
        let xml = format!(
            "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>32</memory>\n  <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64'>hvm</type>\n    <kernel>{}</kernel>\n    <cmdline>console=ttyS0 vtg.quick=1 {cmdline}</cmdline>\n  </os>\n{extra}</domain>\n",
            test_guest()
        );
        let path = self.path(&format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        path.display().to_string()
    }

    pub fn state(&self, domain: &str) -> String {
        self.ok(&["domstate", "--reason", domain])
            .trim()
            .to_string()
    }

    /// Waits (up to TIMEOUT) until `domstate --reason` starts with `prefix`.
    pub fn wait_state(&self, domain: &str, prefix: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.state(domain);
            if s.starts_with(prefix) {
                return s;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "domain {domain} stayed '{s}', expected '{prefix}'\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The guest's serial output so far.
    pub fn console_log(&self, domain: &str) -> String {
        std::fs::read_to_string(self.path(&format!("var/log/vireo/{domain}.console.log")))
            .unwrap_or_default()
    }

    /// Waits until the console log contains `needle`.
    pub fn wait_console(&self, domain: &str, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.console_log(domain);
            if s.contains(needle) {
                return s;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "console of {domain} never showed '{needle}':\n{s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of running VMMs according to the state files.
    pub fn vmm_pids(&self) -> Vec<i32> {
        let Ok(dirs) = std::fs::read_dir(self.root.join("run/vireo/vm")) else {
            return Vec::new();
        };
        dirs.flatten()
            .filter_map(|d| std::fs::read_to_string(d.path().join("state.json")).ok())
            .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter_map(|v| v["pid"].as_i64().map(|p| p as i32))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.vmm_pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("vireo-vmm") {
                // SAFETY: kill has no memory effects; the pid is a VMM this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
