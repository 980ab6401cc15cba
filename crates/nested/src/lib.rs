//! Nested test harness: real Linux guests under vireo, inside QEMU.
//!
//! The `/dev/kvm` on vireo's CI machines cannot run a stock Linux kernel (see
//! docs/testing.md), so real-Linux tests run **nested**: `qemu-system-x86_64 -accel tcg
//! -cpu qemu64,+svm` boots Debian's stock kernel as the host ("L1") with `kvm-amd` loaded,
//! and vireo, inside L1, boots the Linux guest under test ("L2").
//!
//! A test declares a scenario in a few lines and asserts on what the guest printed:
//!
//! ```no_run
//! use vireo_nested::{Kernel, Scenario};
//! let out = Scenario::new("hello")
//!     .l2_kernel(Kernel::DebianStock)
//!     .init_script("echo hi; nproc; poweroff -f")
//!     .vireo_args(&["--cpus", "2", "--memory", "256M"])
//!     .run()
//!     .unwrap();
//! assert_eq!(out.vireo_status, Some(0), "{}", out.describe());
//! assert!(out.l2_lines().contains(&"2"));
//! ```
//!
//! What [`Scenario::run`] does:
//!
//! 1. once per process: resolves the kernel package `linux-image-amd64` depends on now
//!    (`apt-cache depends`), `apt-get download`s it and `busybox-static`, unpacks them
//!    (`dpkg-deb -x`) under `target/nested/pkgs/<package>_<version>/` (kept: later runs
//!    reuse them), and builds `vireo` (`cargo build --release -p vireo-cli`, a no-op when
//!    it is up to date);
//! 2. writes the L2 initramfs (busybox, an `/init` that mounts proc/sys/dev, prints
//!    `VIREO-L2-INIT` and runs the scenario's script) and the L1 initramfs (busybox, the
//!    kvm modules, `vireo` and the shared libraries `ldd` lists, the L2 kernel and
//!    initramfs, an `/init` that loads `irqbypass ccp kvm kvm-amd`, runs `vireo run` and
//!    prints `VIREO-EXIT <status>`, then powers L1 off) under `target/nested/runs/<name>/`;
//! 3. boots L1 under QEMU with a hard timeout. L1's COM1 (its own console and the
//!    markers) goes to `l1.log`, COM2 gets vireo's stdout (L2's serial console) and COM3
//!    vireo's stderr (`VIREO_LOG=debug` by default), each to its own file, so nothing is
//!    interleaved and everything written before a timeout is kept.
//!
//! Nothing here needs `/dev/kvm` on the machine running the tests: only
//! `qemu-system-x86_64`, `apt-get`, `apt-cache`, `dpkg-deb`, `ldd` and (for
//! [`Kernel::DebianStockPvh`]) `xz`. Without QEMU, [`available`] prints `SKIP …` and
//! returns false, or panics when `VIREO_REQUIRE_KVM=1`.

pub mod cpio;
pub mod modules;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Which kernel vireo boots as L2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Debian's stock kernel (the package `linux-image-amd64` depends on), as the bzImage
    /// Debian ships: vireo's Linux 64-bit boot protocol path.
    DebianStock,
    /// The same kernel as an ELF vmlinux extracted from the bzImage: it carries the PVH
    /// note (`CONFIG_PVH=y`), so vireo boots it through its PVH path.
    DebianStockPvh,
    /// The minimal kernel built from Debian's `linux-source-6.1` with
    /// `kernel/config-6.1-vireo` (see [`minimal_kernel`]), as the ELF vmlinux (PVH entry).
    MinimalPvh,
    /// The same minimal kernel as a bzImage.
    MinimalBzImage,
    /// Any kernel image on the host.
    File(PathBuf),
}

/// Errors of the harness itself (not of the guest).
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// One nested run: L1 boots, vireo boots `kernel` with a busybox initramfs running
/// `script`.
#[derive(Clone, Debug)]
pub struct Scenario {
    name: String,
    kernel: Kernel,
    script: String,
    cmdline: String,
    vireo_args: Vec<String>,
    vireo_log: String,
    timeout: Duration,
    l1_cpus: u32,
    l1_memory_mib: u32,
    /// Shell run by L2's init right after mounting /dev, before anything else.
    l2_early: String,
    /// L1 additions: kernel modules (loaded with their dependencies before vireo starts),
    /// host programs (with their libraries, on PATH), files, shell run before vireo starts
    /// and shell run while vireo runs.
    l1_modules: Vec<String>,
    l1_tools: Vec<String>,
    l1_files: Vec<(String, PathBuf)>,
    l1_prelude: String,
    l1_script: String,
    l1_epilogue: String,
    /// The management daemon and the VMM binary in L1 (`/bin/vireod`, `/bin/vireo-vmm`).
    l1_daemon: bool,
    /// L1's scripts start the VMMs themselves (no automatic `vireo run`).
    l1_scripted: bool,
    /// QEMU (binary, libraries, firmware) in L1, for side-by-side runs.
    l1_qemu: bool,
    /// L2 additions: host programs (with their libraries, on PATH) and files.
    l2_tools: Vec<String>,
    l2_files: Vec<(String, PathBuf)>,
}

/// What a scenario produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// L2's serial console (vireo's stdout), `\r` removed.
    pub l2_console: String,
    /// vireo's stderr.
    pub vireo_stderr: String,
    /// L1's console: its kernel messages, its init's markers.
    pub l1_log: String,
    /// vireo's exit status as L1's init saw it; `None` if vireo never returned.
    pub vireo_status: Option<i32>,
    /// QEMU was killed at the scenario's timeout.
    pub timed_out: bool,
    /// Wall time of the QEMU run.
    pub elapsed: Duration,
}

impl Outcome {
    /// L2 console lines, trimmed.
    pub fn l2_lines(&self) -> Vec<&str> {
        self.l2_console.lines().map(str::trim).collect()
    }

    /// How many L2 console lines are exactly `line`.
    pub fn count(&self, line: &str) -> usize {
        self.l2_lines().iter().filter(|l| **l == line).count()
    }

    /// The L2 console line after the first line equal to `marker` (a script prints a label,
    /// then the value).
    pub fn after(&self, marker: &str) -> Option<&str> {
        let lines = self.l2_lines();
        let i = lines.iter().position(|l| *l == marker)?;
        lines.get(i + 1).copied()
    }

    /// L1 console lines, trimmed (the output of `l1_prelude`/`l1_script` is there).
    pub fn l1_lines(&self) -> Vec<&str> {
        self.l1_log.lines().map(str::trim).collect()
    }

    /// Everything, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "vireo status {:?}, timed out {}, {:.1} s\n--- L2 console ---\n{}\n--- vireo stderr ---\n{}\n--- L1 log ---\n{}",
            self.vireo_status,
            self.timed_out,
            self.elapsed.as_secs_f64(),
            self.l2_console,
            self.vireo_stderr,
            self.l1_log
        )
    }
}

impl Scenario {
    /// A scenario; `name` names its work directory `target/nested/runs/<name>/`.
    pub fn new(name: &str) -> Self {
        Scenario {
            name: name.to_string(),
            kernel: Kernel::DebianStock,
            script: "poweroff -f".to_string(),
            cmdline: "console=ttyS0 panic=-1".to_string(),
            vireo_args: Vec::new(),
            vireo_log: "debug".to_string(),
            timeout: Duration::from_secs(300),
            l1_cpus: 1,
            l1_memory_mib: 1024,
            l2_early: String::new(),
            l1_modules: Vec::new(),
            l1_tools: Vec::new(),
            l1_files: Vec::new(),
            l1_prelude: String::new(),
            l1_script: String::new(),
            l1_epilogue: String::new(),
            l1_daemon: false,
            l1_scripted: false,
            l1_qemu: false,
            l2_tools: Vec::new(),
            l2_files: Vec::new(),
        }
    }

    pub fn l2_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Shell (busybox `sh`) run by L2's `/init` after proc, sys and devtmpfs are mounted;
    /// its output goes to L2's console. It should end with `poweroff -f` or `reboot -f`:
    /// falling off its end makes init exit, which panics the guest kernel.
    pub fn init_script(mut self, script: &str) -> Self {
        self.script = script.to_string();
        self
    }

    /// L2's kernel command line (default `console=ttyS0 panic=-1`).
    pub fn l2_cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = cmdline.to_string();
        self
    }

    /// Extra arguments of `vireo run` (after `--kernel`, `--initrd`, `--cmdline`).
    pub fn vireo_args(mut self, args: &[&str]) -> Self {
        self.vireo_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `VIREO_LOG` for vireo (default `debug`).
    pub fn vireo_log(mut self, level: &str) -> Self {
        self.vireo_log = level.to_string();
        self
    }

    /// Hard limit on the whole QEMU run (default 300 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Memory of the L1 QEMU in MiB (default 1024).
    pub fn l1_memory(mut self, mib: u32) -> Self {
        self.l1_memory_mib = mib;
        self
    }

    /// vCPUs of the L1 QEMU (default 1; more means more host threads under MTTCG).
    pub fn l1_cpus(mut self, cpus: u32) -> Self {
        self.l1_cpus = cpus;
        self
    }

    /// L1 kernel modules to load (names as `modprobe` takes them, e.g. `tun`, `bridge`,
    /// `veth`); their dependencies come along.
    pub fn l1_modules(mut self, names: &[&str]) -> Self {
        self.l1_modules = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Host programs to put in L1 (found on the host's PATH, copied with the shared
    /// libraries `ldd` lists; on L1's PATH), e.g. `qemu-img`, `ip`, `socat`.
    pub fn l1_tools(mut self, names: &[&str]) -> Self {
        self.l1_tools = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// A host file to put in L1 at `dest` (absolute), e.g. a disk image.
    pub fn l1_file(mut self, dest: &str, host: &Path) -> Self {
        self.l1_files.push((dest.to_string(), host.to_path_buf()));
        self
    }

    /// Shell run in L1 before vireo starts (network namespaces, TAP devices, images…). Its
    /// output goes to L1's console ([`Outcome::l1_lines`]).
    pub fn l1_prelude(mut self, script: &str) -> Self {
        self.l1_prelude = script.to_string();
        self
    }

    /// Shell run in L1 while vireo runs (vireo's pid in `$VIREO_PID`), e.g. a host-side
    /// client of the guest. vireo is waited for after it ends. Output to L1's console.
    pub fn l1_script(mut self, script: &str) -> Self {
        self.l1_script = script.to_string();
        self
    }

    /// Shell run in L1 after vireo ended and `VIREO-EXIT` was printed: checks of the images
    /// a guest left behind, or a second boot with `run_vireo [EXTRA-ARGS]` (the scenario's
    /// vireo command; its console also goes to [`Outcome::l2_console`]). Output to L1's
    /// console.
    pub fn l1_epilogue(mut self, script: &str) -> Self {
        self.l1_epilogue = script.to_string();
        self
    }

    /// Also put `vireod` and `vireo-vmm` in L1's `/bin`. The scenario's scripts then start
    /// the daemon and the guests themselves (no `vireo run`) and print `VIREO-EXIT <n>`.
    pub fn l1_daemon(mut self) -> Self {
        self.l1_daemon = true;
        self.l1_scripted = true;
        self
    }

    /// The scenario's L1 prelude and script start the guests themselves (with
    /// `run_vireo [EXTRA-ARGS]`, or another VMM) instead of one automatic `vireo run`; they
    /// print `VIREO-EXIT <n>`.
    pub fn l1_scripted(mut self) -> Self {
        self.l1_scripted = true;
        self
    }

    /// Also put QEMU (`qemu-system-x86_64` with its libraries and the firmware of `-M
    /// microvm` and `-M q35`) in L1, to run the same guest under both VMMs.
    pub fn l1_qemu(mut self) -> Self {
        self.l1_qemu = true;
        self
    }

    /// Host programs to put in L2's initramfs (with their libraries, on PATH): names
    /// looked up on the host's PATH, or paths.
    pub fn l2_tools(mut self, names: &[&str]) -> Self {
        self.l2_tools = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// A host file to put in L2's initramfs at `dest` (absolute).
    pub fn l2_file(mut self, dest: &str, host: &Path) -> Self {
        self.l2_files.push((dest.to_string(), host.to_path_buf()));
        self
    }

    /// Builds the images, boots L1 and collects the outcome.
    pub fn run(&self) -> Result<Outcome> {
        if let Some(reason) = skip_reason() {
            return err(format!("cannot run nested tests: {reason}"));
        }
        let p = prepared()?;
        let dir = nested_dir().join("runs").join(&self.name);
        let _ = fs::remove_dir_all(&dir);
        mkdirs(&dir)?;

        let l2_kernel = self.l2_kernel_path(p)?;
        let l2_initrd = self.l2_initramfs(p)?;
        let l1_initrd = dir.join("l1.cpio");
        let mut args = vec![
            "--kernel".to_string(),
            "/l2/kernel".to_string(),
            "--initrd".to_string(),
            "/l2/initrd".to_string(),
            "--cmdline".to_string(),
            self.cmdline.clone(),
        ];
        args.extend(self.vireo_args.iter().cloned());
        let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        // `run_vireo [EXTRA-ARGS]`: the scenario's vireo command, also for its scripts (a
        // second boot on the same disk images, say).
        let vireo = format!(
            "run_vireo() {{ VIREO_LOG={log} /bin/vireo run {args} \"$@\" </dev/null >/dev/ttyS1 2>/dev/ttyS2; }}",
            log = shell_quote(&self.vireo_log),
            args = args.join(" "),
        );
        let run = if self.l1_scripted {
            // The scripts start the guests themselves and report VIREO-EXIT.
            format!("{vireo}\n{}\n{}", self.l1_prelude, self.l1_script)
        } else if self.l1_script.is_empty() {
            format!(
                "{vireo}\n{}\nrun_vireo\necho \"VIREO-EXIT $?\"",
                self.l1_prelude
            )
        } else {
            format!(
                "{vireo}\n{}\nrun_vireo &\nVIREO_PID=$!\n{}\nwait $VIREO_PID\necho \"VIREO-EXIT $?\"",
                self.l1_prelude, self.l1_script
            )
        };
        let run = format!("{run}\n{}", self.l1_epilogue);
        // Diagnostics: L1's kvm_exit tracepoint around the run, dumped to vireo's stderr
        // log (every exit of L2 with its reason and guest RIP).
        let run = if std::env::var("VIREO_NESTED_L1_TRACE").as_deref() == Ok("1") {
            let t = "/sys/kernel/tracing";
            format!(
                "mount -t tracefs tracefs {t}; echo 100000 > {t}/buffer_size_kb\n\
                 echo 1 > {t}/events/kvm/kvm_exit/enable; echo 1 > {t}/events/kvm/kvm_userspace_exit/enable\n\
                 {run}\necho 0 > {t}/tracing_on; cat {t}/trace > /dev/ttyS2"
            )
        } else {
            run
        };
        let extras = self.l1_extras(p)?;
        l1_initramfs(
            p,
            &l2_kernel,
            &l2_initrd,
            &l1_initrd,
            &run,
            self.l1_qemu,
            &extras,
        )?;
        self.boot_l1(p, &dir, &l1_initrd)
    }

    /// What this scenario adds to L1's initramfs and init.
    fn l1_extras(&self, p: &Prepared) -> Result<L1Extras> {
        let mut files: Vec<(String, PathBuf, u32)> = Vec::new();
        let mut setup = String::new();
        if !self.l1_modules.is_empty() {
            let wanted: Vec<&str> = self.l1_modules.iter().map(String::as_str).collect();
            let set = modules::resolve(&p.modules_root, &wanted)?;
            for (dest, host) in &set.files {
                files.push((dest.clone(), host.clone(), 0o644));
            }
            let dep = format!("/lib/modules/{}/modules.dep", set.release);
            let dep_file = nested_dir()
                .join("runs")
                .join(&self.name)
                .join("l1-modules.dep");
            fs::write(&dep_file, &set.modules_dep)
                .map_err(|e| Error(format!("{}: {e}", dep_file.display())))?;
            files.push((dep, dep_file, 0o644));
            setup.push_str(&format!(
                "for m in {}; do modprobe $m || echo \"VIREO-L1-ERROR modprobe $m\"; done\n",
                wanted.join(" ")
            ));
        }
        files.extend(tool_files(&self.l1_tools)?);
        for (dest, host) in &self.l1_files {
            files.push((dest.clone(), host.clone(), 0o644));
        }
        if self.l1_daemon {
            let (vireod, vmm) = daemon_binaries()?;
            for lib in shared_libraries(&vireod)?
                .into_iter()
                .chain(shared_libraries(&vmm)?)
            {
                let dest = lib.to_string_lossy().into_owned();
                files.push((dest, lib, 0o755));
            }
            files.push(("/bin/vireod".into(), vireod, 0o755));
            files.push(("/bin/vireo-vmm".into(), vmm, 0o755));
        }
        Ok(L1Extras { files, setup })
    }

    fn l2_kernel_path(&self, p: &Prepared) -> Result<PathBuf> {
        Ok(match &self.kernel {
            Kernel::DebianStock => p.bzimage.clone(),
            Kernel::DebianStockPvh => debian_vmlinux(p)?,
            Kernel::MinimalPvh => minimal_kernel()?.vmlinux,
            Kernel::MinimalBzImage => minimal_kernel()?.bzimage,
            Kernel::File(path) => path.clone(),
        })
    }

    /// Boots L1 with `l1_initrd` and collects what its serial ports received.
    fn boot_l1(&self, p: &Prepared, dir: &Path, l1_initrd: &Path) -> Result<Outcome> {
        let (l1_log, l2_log, stderr_log) = (
            dir.join("l1.log"),
            dir.join("l2-console.log"),
            dir.join("vireo-stderr.log"),
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        // `npt`: TCG emulates AMD-V's nested paging, so L1's kvm-amd runs L2 without
        // shadow paging (whose page-fault, INVLPG and CR3 exits double L2's boot time).
        cmd.args(["-accel", "tcg", "-cpu", "qemu64,+svm,+npt", "-m"])
            .arg(self.l1_memory_mib.to_string())
            .arg("-smp")
            .arg(self.l1_cpus.to_string())
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(["-nodefaults", "-no-user-config"])
            .arg("-serial")
            .arg(format!("file:{}", l1_log.display()))
            .arg("-serial")
            .arg(format!("file:{}", l2_log.display()))
            .arg("-serial")
            .arg(format!("file:{}", stderr_log.display()))
            .arg("-kernel")
            .arg(&p.bzimage)
            .arg("-initrd")
            .arg(l1_initrd)
            .args(["-append", "console=ttyS0 panic=-1 loglevel=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| Error(format!("starting qemu-system-x86_64: {e}")))?;
        let mut timed_out = false;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    timed_out = true;
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return err(format!("waiting for qemu: {e}")),
            }
        }
        let elapsed = start.elapsed();
        let out = child.wait_with_output().ok();
        let read = |p: &Path| {
            fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
                .unwrap_or_default()
        };
        let mut l1 = read(&l1_log);
        if let Some(out) = out {
            if !out.stderr.is_empty() {
                l1.push_str("\n--- qemu stderr ---\n");
                l1.push_str(&String::from_utf8_lossy(&out.stderr));
            }
        }
        let vireo_status = l1.lines().find_map(|l| {
            l.trim()
                .strip_prefix("VIREO-EXIT ")
                .and_then(|s| s.trim().parse().ok())
        });
        Ok(Outcome {
            l2_console: read(&l2_log),
            vireo_stderr: read(&stderr_log),
            l1_log: l1,
            vireo_status,
            timed_out,
            elapsed,
        })
    }

    fn l2_initramfs(&self, p: &Prepared) -> Result<Vec<u8>> {
        // A stock kernel gets its driver modules, as a distribution's initramfs would.
        let stock = matches!(self.kernel, Kernel::DebianStock | Kernel::DebianStockPvh);
        let load_modules = if stock {
            format!(
                "for m in {}; do modprobe $m || echo \"VIREO-L2-ERROR modprobe $m\"; done\n",
                modules::STOCK_L2_MODULES.join(" ")
            )
        } else {
            String::new()
        };
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /tmp\n\
             /bin/busybox --install -s\n\
             export PATH=/opt/tools/bin:$PATH\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             {early}\n\
             {load_modules}\
             echo VIREO-L2-INIT\n\
             {}\n",
            self.script,
            early = self.l2_early,
        );
        let mut a = cpio::Archive::new();
        a.dir("bin")
            .dir("dev")
            .char_dev("dev/console", 0o600, 5, 1)
            .file("bin/busybox", 0o755, &read(&p.busybox)?)
            .file("init", 0o755, init.as_bytes());
        let mut seen = vec!["bin".to_string(), "dev".to_string()];
        let mut extra: Vec<(String, PathBuf, u32)> = tool_files(&self.l2_tools)?;
        for (dest, host) in &self.l2_files {
            extra.push((dest.clone(), host.clone(), 0o644));
        }
        let mut done = std::collections::BTreeSet::new();
        for (dest, host, mode) in extra {
            let dest = dest.trim_start_matches('/').to_string();
            if done.insert(dest.clone()) {
                a.parents(&dest, &mut seen).file(&dest, mode, &read(&host)?);
            }
        }
        if stock {
            let m = &p.stock_modules;
            for (path, host) in &m.files {
                a.parents(path, &mut seen).file(path, 0o644, &read(host)?);
            }
            let dep = format!("lib/modules/{}/modules.dep", m.release);
            a.parents(&dep, &mut seen)
                .file(&dep, 0o644, m.modules_dep.as_bytes());
        }
        let mut out = Vec::new();
        a.finish(&mut out)
            .map_err(|e| Error(format!("L2 initramfs: {e}")))?;
        Ok(out)
    }
}

/// Writes L1's initramfs to `out`: busybox, the kvm modules, vireo (and, with `qemu`,
/// QEMU with its firmware), the boot timer, the L2 kernel and initramfs, and an `/init`
/// that loads kvm-amd, runs the shell `run` (which starts the VMMs; COM2 is meant for
/// their stdout, COM3 for their stderr) and powers L1 off.
fn l1_initramfs(
    p: &Prepared,
    l2_kernel: &Path,
    l2_initrd: &[u8],
    out: &Path,
    run: &str,
    qemu: bool,
    extras: &L1Extras,
) -> Result<()> {
    let modules: Vec<String> = p
        .modules
        .iter()
        .map(|m| format!("/lib/nested/{}", file_name(m)))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /tmp\n\
         /bin/busybox --install -s\n\
         export PATH=/opt/tools/bin:$PATH\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo VIREO-L1-INIT\n\
         for m in {modules}; do insmod $m || echo \"VIREO-L1-ERROR insmod $m failed\"; done\n\
         {setup}\
         if [ ! -c /dev/kvm ]; then echo 'VIREO-L1-ERROR no /dev/kvm'; poweroff -f; fi\n\
         stty -F /dev/ttyS1 raw -echo; stty -F /dev/ttyS2 raw -echo\n\
         echo VIREO-L2-BEGIN\n\
         {run}\n\
         poweroff -f\n",
        modules = modules.join(" "),
        setup = extras.setup,
    );
    let mut a = cpio::Archive::new();
    let mut seen = Vec::new();
    for d in ["bin", "dev", "lib", "lib/nested", "l2"] {
        seen.push(d.to_string());
        a.dir(d);
    }
    a.char_dev("dev/console", 0o600, 5, 1)
        .file("bin/busybox", 0o755, &read(&p.busybox)?)
        .file("bin/vireo", 0o755, &read(&p.vireo)?)
        .file("bin/vireo-boot-timer", 0o755, &read(&p.boot_timer)?)
        .file("init", 0o755, init.as_bytes())
        .file("l2/kernel", 0o644, &read(l2_kernel)?)
        .file("l2/initrd", 0o644, l2_initrd);
    for m in &p.modules {
        a.file(&format!("lib/nested/{}", file_name(m)), 0o644, &read(m)?);
    }
    let mut files: Vec<(String, PathBuf, u32)> = p
        .libs
        .iter()
        .map(|l| (l.to_string_lossy().into_owned(), l.clone(), 0o755))
        .collect();
    if qemu {
        let q = qemu_files()?;
        files.extend(
            q.into_iter()
                .map(|f| (f.to_string_lossy().into_owned(), f, 0o755)),
        );
    }
    files.extend(extras.files.iter().cloned());
    let mut done = std::collections::BTreeSet::new();
    for (dest, file, mode) in files {
        let dest = dest.trim_start_matches('/').to_string();
        if !done.insert(dest.clone()) {
            continue;
        }
        a.parents(&dest, &mut seen).file(&dest, mode, &read(&file)?);
    }
    let mut f = std::io::BufWriter::new(
        fs::File::create(out).map_err(|e| Error(format!("{}: {e}", out.display())))?,
    );
    a.finish(&mut f)
        .map_err(|e| Error(format!("{}: {e}", out.display())))
}

/// Files and init lines a scenario adds to L1.
#[derive(Default)]
struct L1Extras {
    /// (absolute path in the initramfs, host file, mode)
    files: Vec<(String, PathBuf, u32)>,
    /// Shell run after the kvm modules are loaded, before the VMM starts.
    setup: String,
}

/// Host programs as initramfs files: each under `/opt/tools/bin/` (on PATH in L1 and L2),
/// its shared libraries at their own paths.
fn tool_files(names: &[String]) -> Result<Vec<(String, PathBuf, u32)>> {
    let mut files = Vec::new();
    for name in names {
        // A path is taken as it is; a bare name is looked up on PATH.
        let bin = if name.contains('/') {
            PathBuf::from(name)
        } else {
            which(name).ok_or_else(|| {
                Error(format!(
                    "{name} not found on PATH (install the Debian package that has it)"
                ))
            })?
        };
        for lib in shared_libraries(&bin)? {
            files.push((lib.to_string_lossy().into_owned(), lib, 0o755));
        }
        files.push((format!("/opt/tools/bin/{}", file_name(&bin)), bin, 0o755));
    }
    Ok(files)
}

/// `vireod` and `vireo-vmm`, built in release mode like `vireo`.
fn daemon_binaries() -> Result<(PathBuf, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let target = target_dir();
    output(
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                "vireo-daemon",
                "-p",
                "vireo-vmm",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(workspace_root()),
    )?;
    let (d, v) = (
        target.join("release/vireod"),
        target.join("release/vireo-vmm"),
    );
    if !d.is_file() || !v.is_file() {
        return err(format!("{} or {} was not built", d.display(), v.display()));
    }
    Ok((d, v))
}

/// QEMU in L1: the binary, its shared libraries and the firmware that `-M microvm`
/// (qboot) and `-M q35` (SeaBIOS, the linuxboot option ROM) load.
fn qemu_files() -> Result<Vec<PathBuf>> {
    let qemu =
        which("qemu-system-x86_64").ok_or_else(|| Error("qemu-system-x86_64 not found".into()))?;
    let mut files = vec![qemu.clone()];
    files.extend(shared_libraries(&qemu)?);
    for f in [
        "/usr/share/qemu/bios-microvm.bin",
        "/usr/share/qemu/qboot.rom",
        "/usr/share/qemu/linuxboot_dma.bin",
        "/usr/share/qemu/linuxboot.bin",
        "/usr/share/qemu/kvmvapic.bin",
        "/usr/share/qemu/pvh.bin",
        "/usr/share/seabios/bios-256k.bin",
        "/usr/share/seabios/bios.bin",
    ] {
        let p = PathBuf::from(f);
        if p.exists() {
            files.push(p);
        }
    }
    Ok(files)
}

/// A VMM that boots the L2 guest inside L1, for [`boot_benchmark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vmm {
    Vireo,
    /// `qemu-system-x86_64 -accel kvm -M microvm` (qboot firmware).
    QemuMicrovm,
    /// `qemu-system-x86_64 -accel kvm -M q35` (SeaBIOS).
    QemuQ35,
}

impl Vmm {
    pub fn label(self) -> &'static str {
        match self {
            Vmm::Vireo => "vireo",
            Vmm::QemuMicrovm => "qemu-microvm",
            Vmm::QemuQ35 => "qemu-q35",
        }
    }

    /// The L1 shell line that boots L2 under this VMM through the boot timer.
    fn command(self, b: &BootBench) -> String {
        let cmdline = shell_quote(&b.cmdline);
        let io = "</dev/null >/dev/ttyS1 2>/dev/ttyS2";
        match self {
            Vmm::Vireo => format!(
                "VIREO_LOG=info /bin/vireo-boot-timer stderr -- /bin/vireo run \
                 --kernel /l2/kernel --initrd /l2/initrd --cmdline {cmdline} \
                 --cpus {} --memory {}M {io}",
                b.cpus, b.memory_mib
            ),
            Vmm::QemuMicrovm | Vmm::QemuQ35 => format!(
                "rm -f /tmp/marker; mkfifo /tmp/marker; \
                 /bin/vireo-boot-timer fifo:/tmp/marker -- /usr/bin/qemu-system-x86_64 \
                 -accel kvm -cpu host -M {} -m {}M -smp {} -nodefaults -no-user-config \
                 -display none -monitor none -serial stdio -no-reboot \
                 -kernel /l2/kernel -initrd /l2/initrd -append {cmdline} \
                 -chardev pipe,id=marker,path=/tmp/marker \
                 -device isa-debugcon,iobase=0x80,chardev=marker {io}",
                if self == Vmm::QemuMicrovm {
                    "microvm"
                } else {
                    "q35"
                },
                b.memory_mib,
                b.cpus
            ),
        }
    }
}

/// Boot-time benchmark: the same L2 kernel and initramfs booted by several VMMs inside
/// one L1, `rounds` times each (the order rotates every round so that drift in L1 spreads
/// evenly). The L2 init writes the boot-complete marker (123 to port 0x80) first thing
/// and powers off.
#[derive(Clone, Debug)]
pub struct BootBench {
    pub name: String,
    pub kernel: Kernel,
    pub cmdline: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub rounds: u32,
    pub vmms: Vec<Vmm>,
}

/// One measured boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSample {
    pub vmm: Vmm,
    pub round: u32,
    /// Microseconds from starting the VMM until it saw the marker; `None` if it never did.
    pub marker_us: Option<u64>,
    /// The VMM's exit status.
    pub status: Option<i32>,
}

/// Runs `b` and returns every sample and the whole L1 run's outcome (for diagnostics).
pub fn boot_benchmark(b: &BootBench) -> Result<(Vec<BootSample>, Outcome)> {
    if let Some(reason) = skip_reason() {
        return err(format!("cannot run nested benchmarks: {reason}"));
    }
    let p = prepared()?;
    let dir = nested_dir().join("runs").join(&b.name);
    let _ = fs::remove_dir_all(&dir);
    mkdirs(&dir)?;
    let mut scenario = Scenario::new(&b.name)
        .l2_kernel(b.kernel.clone())
        .l2_cmdline(&b.cmdline)
        .timeout(Duration::from_secs(
            120 + 90 * u64::from(b.rounds) * b.vmms.len() as u64,
        ));
    scenario.l2_early =
        "printf '\\173' | dd of=/dev/port bs=1 seek=128 count=1 2>/dev/null; poweroff -f"
            .to_string();
    let l2_kernel = scenario.l2_kernel_path(p)?;
    let l2_initrd = scenario.l2_initramfs(p)?;
    let mut run = String::new();
    for round in 0..b.rounds {
        let n = b.vmms.len();
        for i in 0..n {
            let vmm = b.vmms[(i + round as usize) % n];
            let label = vmm.label();
            run.push_str(&format!(
                "echo 'VIREO-RUN {label} {round}' >/dev/ttyS2\n{}\n\
                 echo \"VIREO-RUN-EXIT {label} {round} $?\" >/dev/ttyS2\n",
                vmm.command(b)
            ));
        }
    }
    let l1_initrd = dir.join("l1.cpio");
    let qemu = b.vmms.iter().any(|v| *v != Vmm::Vireo);
    l1_initramfs(
        p,
        &l2_kernel,
        &l2_initrd,
        &l1_initrd,
        &run,
        qemu,
        &L1Extras::default(),
    )?;
    let outcome = scenario.boot_l1(p, &dir, &l1_initrd)?;
    Ok((parse_samples(&outcome.vireo_stderr, &b.vmms), outcome))
}

fn parse_samples(stderr: &str, vmms: &[Vmm]) -> Vec<BootSample> {
    let mut samples = Vec::new();
    let mut marker = None;
    for line in stderr.lines().map(str::trim) {
        if line.starts_with("VIREO-RUN ") {
            marker = None;
        } else if let Some(v) = line.strip_prefix("VIREO-BOOT-MARKER-US ") {
            marker = v.parse().ok();
        } else if let Some(rest) = line.strip_prefix("VIREO-RUN-EXIT ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (Some(label), Some(round)) = (f.first(), f.get(1).and_then(|r| r.parse().ok()))
            else {
                continue;
            };
            if let Some(vmm) = vmms.iter().copied().find(|v| v.label() == *label) {
                samples.push(BootSample {
                    vmm,
                    round,
                    marker_us: marker.take(),
                    status: f.get(2).and_then(|s| s.parse().ok()),
                });
            }
        }
    }
    samples
}

/// Why nested tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    for tool in [
        "qemu-system-x86_64",
        "apt-get",
        "apt-cache",
        "dpkg-deb",
        "ldd",
    ] {
        if which(tool).is_none() {
            return Some(format!("{tool} is not installed (scripts/install-deps.sh)"));
        }
    }
    None
}

/// Whether nested tests can run here; if not, prints `SKIP <test>: <reason>` and returns
/// false, or with `VIREO_REQUIRE_KVM=1` panics.
pub fn available(test: &str) -> bool {
    let Some(reason) = skip_reason() else {
        return true;
    };
    if std::env::var("VIREO_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{test}: {reason} (VIREO_REQUIRE_KVM=1)");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// The cache and work area: `<cargo target dir>/nested`.
pub fn nested_dir() -> PathBuf {
    target_dir().join("nested")
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // Test binaries live in <target>/<profile>/deps/; cargo marks <target> with
    // CACHEDIR.TAG.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(t) = exe.ancestors().find(|a| a.join("CACHEDIR.TAG").is_file()) {
            return t.to_path_buf();
        }
    }
    workspace_root().join("target")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

/// Everything built or downloaded once per process.
#[derive(Debug)]
struct Prepared {
    /// The unpacked kernel package (L1 kernel, L2 stock kernel, modules).
    kernel_pkg: PathBuf,
    bzimage: PathBuf,
    modules: Vec<PathBuf>,
    busybox: PathBuf,
    vireo: PathBuf,
    /// Runs a VMM and measures its guest's boot (src/bin/vireo-boot-timer.rs).
    boot_timer: PathBuf,
    libs: Vec<PathBuf>,
    /// The stock kernel's modules a stock-kernel L2 initramfs carries.
    stock_modules: modules::ModuleSet,
    /// `lib/modules/<release>` of the kernel package (L1's extra modules come from here).
    modules_root: PathBuf,
}

/// The static busybox the harness puts in its initramfs images (for a test's own disk
/// images).
pub fn busybox() -> Result<PathBuf> {
    Ok(prepared()?.busybox.clone())
}

/// Writes an ext4 file system of `size_mib` MiB to the raw image `out`, populated from the
/// directory `root` (`mkfs.ext4 -d`), for L2's disks.
pub fn ext4_image(root: &Path, out: &Path, size_mib: u64) -> Result<()> {
    let _ = fs::remove_file(out);
    let f = fs::File::create(out).map_err(|e| Error(format!("{}: {e}", out.display())))?;
    f.set_len(size_mib << 20)
        .map_err(|e| Error(format!("{}: {e}", out.display())))?;
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(root)
        .arg(out)
        .status()
        .map_err(|e| Error(format!("mkfs.ext4: {e}")))?;
    if !status.success() {
        return err(format!(
            "mkfs.ext4 -d {} {} failed",
            root.display(),
            out.display()
        ));
    }
    Ok(())
}

/// L2 initramfs script for a guest whose root is an ext4 disk on `/dev/vda`: mounts it and
/// `switch_root`s into its `/sbin/init`, as a distribution's initramfs does (a stock
/// kernel's virtio and ext4 modules are loaded before the script runs).
pub const SWITCH_ROOT_TO_VDA: &str = r#"
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || { echo ROOT-MOUNT-FAILED; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"#;

/// A root file system tree at `dir/rootfs` (made afresh): the static busybox with the given
/// applets linked in `/bin`, `init` (a busybox `sh` script) as `/sbin/init`, and the empty
/// mount points. Make it an image with [`ext4_image`].
pub fn busybox_rootfs(dir: &Path, init: &str, applets: &[&str]) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    let _ = fs::remove_dir_all(&root);
    let io = |e: std::io::Error| Error(format!("{}: {e}", root.display()));
    for d in ["bin", "sbin", "dev", "proc", "sys", "mnt", "etc", "tmp"] {
        fs::create_dir_all(root.join(d)).map_err(io)?;
    }
    fs::copy(busybox()?, root.join("bin/busybox")).map_err(io)?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).map_err(io)?;
    }
    let init_path = root.join("sbin/init");
    fs::write(&init_path, init).map_err(io)?;
    fs::set_permissions(
        &init_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(io)?;
    Ok(root)
}

/// Converts the raw image `raw` to the qcow2 image `out` (`qemu-img convert`; unallocated
/// and zero ranges stay unallocated).
pub fn qcow2_from_raw(raw: &Path, out: &Path) -> Result<()> {
    let _ = fs::remove_file(out);
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out)
        .status()
        .map_err(|e| Error(format!("qemu-img: {e}")))?;
    if !status.success() {
        return err(format!("qemu-img convert {} failed", raw.display()));
    }
    Ok(())
}

fn prepared() -> Result<&'static Prepared> {
    static P: OnceLock<std::result::Result<Prepared, String>> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    P.get_or_init(|| prepare().map_err(|e| e.0))
        .as_ref()
        .map_err(|e| Error(e.clone()))
}

fn prepare() -> Result<Prepared> {
    let kpkg = match std::env::var("VIREO_NESTED_KERNEL_PKG") {
        Ok(p) => p,
        Err(_) => kernel_package()?,
    };
    let kernel_pkg = unpacked_package(&kpkg)?;
    let bzimage = only_entry(&kernel_pkg.join("boot"), "vmlinuz-")?;
    let mods = kernel_pkg.join("lib/modules");
    let release = only_entry(&mods, "")?;
    let k = release.join("kernel");
    let mut modules = Vec::new();
    for rel in [
        "virt/lib/irqbypass",
        "drivers/crypto/ccp/ccp",
        "arch/x86/kvm/kvm",
        "arch/x86/kvm/kvm-amd",
    ] {
        let ko = k.join(format!("{rel}.ko"));
        if !ko.is_file() {
            // busybox insmod cannot decompress; Debian 12 ships plain .ko files.
            return err(format!(
                "{} not found (compressed modules are not supported)",
                ko.display()
            ));
        }
        modules.push(ko);
    }
    let busybox = unpacked_package("busybox-static")?.join("bin/busybox");
    if !busybox.is_file() {
        return err(format!("{} missing", busybox.display()));
    }
    let vireo = vireo_binary()?;
    let boot_timer = boot_timer_binary()?;
    let mut libs = shared_libraries(&vireo)?;
    libs.extend(shared_libraries(&boot_timer)?);
    let stock_modules = modules::resolve(&release, modules::STOCK_L2_MODULES)?;
    Ok(Prepared {
        kernel_pkg,
        bzimage,
        modules,
        busybox,
        vireo,
        boot_timer,
        libs,
        stock_modules,
        modules_root: release,
    })
}

/// The kernel image package `linux-image-amd64` depends on (e.g. linux-image-6.1.0-56-amd64).
fn kernel_package() -> Result<String> {
    let out = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| Error(format!("no linux-image dependency in:\n{out}")))
}

/// Downloads (`apt-get download`) and unpacks (`dpkg-deb -x`) `pkg` at its candidate
/// version into `target/nested/pkgs/<pkg>_<version>/`, unless already there.
fn unpacked_package(pkg: &str) -> Result<PathBuf> {
    let show = output(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().replace(':', "%3a"))
        .ok_or_else(|| Error(format!("apt-cache show {pkg}: no Version")))?;
    let pkgs = nested_dir().join("pkgs");
    let dest = pkgs.join(format!("{pkg}_{version}"));
    if dest.join(".complete").is_file() {
        return Ok(dest);
    }
    let dl = pkgs.join(format!("download-{pkg}"));
    let _ = fs::remove_dir_all(&dl);
    mkdirs(&dl)?;
    output(
        Command::new("apt-get")
            .args(["download", "-q", pkg])
            .current_dir(&dl),
    )?;
    let deb = only_entry(&dl, pkg)?;
    let tmp = pkgs.join(format!("unpack-{pkg}"));
    let _ = fs::remove_dir_all(&tmp);
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    fs::write(tmp.join(".complete"), b"").map_err(|e| Error(format!("{}: {e}", tmp.display())))?;
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest).map_err(|e| Error(format!("{}: {e}", dest.display())))?;
    let _ = fs::remove_dir_all(&dl);
    Ok(dest)
}

/// The ELF vmlinux inside Debian's bzImage (xz-compressed payload), extracted once.
fn debian_vmlinux(p: &Prepared) -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = p.kernel_pkg.join("vmlinux");
    if out.is_file() {
        return Ok(out);
    }
    let image = read(&p.bzimage)?;
    let magic = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
    let mut at = 0;
    while let Some(off) = find(&image[at..], &magic) {
        let start = at + off;
        let tail = p.kernel_pkg.join("vmlinux.xz");
        fs::write(&tail, &image[start..]).map_err(|e| Error(format!("{e}")))?;
        let res = Command::new("xz")
            .args(["-dc", "--single-stream"])
            .arg(&tail)
            .stderr(Stdio::null())
            .output();
        let _ = fs::remove_file(&tail);
        if let Ok(o) = res {
            if o.stdout.starts_with(b"\x7fELF") {
                let tmp = p.kernel_pkg.join("vmlinux.tmp");
                fs::write(&tmp, &o.stdout).map_err(|e| Error(format!("{e}")))?;
                fs::rename(&tmp, &out).map_err(|e| Error(format!("{e}")))?;
                return Ok(out);
            }
        }
        at = start + 1;
    }
    err(format!(
        "no xz-compressed ELF found in {}",
        p.bzimage.display()
    ))
}

/// The config fragment of the minimal kernel (on top of `make tinyconfig`).
pub const MINIMAL_CONFIG: &str = include_str!("../kernel/config-6.1-vireo");

/// The minimal guest kernel's images.
#[derive(Clone, Debug)]
pub struct MinimalKernel {
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
}

/// Builds (once; cached under `target/nested/kernels/minimal-<source version>-<config
/// hash>/`) the minimal guest kernel: Debian's `linux-source-6.1` (`apt-get download`ed and
/// unpacked like the other packages), `make tinyconfig`, [`MINIMAL_CONFIG`] merged with
/// `scripts/kconfig/merge_config.sh`, `make olddefconfig`, a check that every `=y` option
/// of the fragment survived, then `make bzImage` with one job per CPU. Build log:
/// `build.log` in the kernel's build directory.
pub fn minimal_kernel() -> Result<MinimalKernel> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src_pkg = unpacked_package("linux-source-6.1")?;
    let version = file_name(&src_pkg);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in MINIMAL_CONFIG.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let name = format!("minimal-{version}-{hash:016x}");
    let dest = nested_dir().join("kernels").join(&name);
    let done = MinimalKernel {
        vmlinux: dest.join("vmlinux"),
        bzimage: dest.join("bzImage"),
    };
    if dest.join(".complete").is_file() {
        return Ok(done);
    }
    let tarball = only_entry(&src_pkg.join("usr/src"), "linux-source-6.1.tar")?;
    let src = nested_dir().join("kbuild").join(&version);
    let tree = src.join("linux-source-6.1");
    if !src.join(".complete").is_file() {
        let _ = fs::remove_dir_all(&src);
        mkdirs(&src)?;
        output(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .arg("-C")
                .arg(&src),
        )?;
        fs::write(src.join(".complete"), b"").map_err(|e| Error(e.to_string()))?;
    }
    let out = nested_dir().join("kernels").join(format!("{name}.build"));
    let _ = fs::remove_dir_all(&out);
    mkdirs(&out)?;
    let fragment = out.join("config-6.1-vireo");
    fs::write(&fragment, MINIMAL_CONFIG).map_err(|e| Error(e.to_string()))?;
    let make = |args: &[&str]| -> Result<String> {
        output(
            Command::new("make")
                .arg("-C")
                .arg(&tree)
                .arg(format!("O={}", out.display()))
                .args(args),
        )
    };
    make(&["tinyconfig"])?;
    output(
        Command::new(tree.join("scripts/kconfig/merge_config.sh"))
            .args(["-m", "-O"])
            .arg(&out)
            .arg(out.join(".config"))
            .arg(&fragment)
            .current_dir(&tree),
    )?;
    make(&["olddefconfig"])?;
    let config = fs::read_to_string(out.join(".config")).map_err(|e| Error(e.to_string()))?;
    let missing: Vec<&str> = MINIMAL_CONFIG
        .lines()
        .filter(|l| l.starts_with("CONFIG_") && l.ends_with("=y"))
        .filter(|l| !config.lines().any(|c| c == *l))
        .collect();
    if !missing.is_empty() {
        return err(format!(
            "minimal kernel config: not set after olddefconfig: {missing:?} ({})",
            out.join(".config").display()
        ));
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let log = out.join("build.log");
    let status = Command::new("make")
        .arg("-C")
        .arg(&tree)
        .arg(format!("O={}", out.display()))
        .arg(format!("-j{jobs}"))
        .arg("bzImage")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).map_err(|e| Error(e.to_string()))?)
        .stderr(Stdio::from(
            fs::File::options()
                .append(true)
                .open(&log)
                .map_err(|e| Error(e.to_string()))?,
        ))
        .status()
        .map_err(|e| Error(format!("make: {e}")))?;
    if !status.success() {
        return err(format!(
            "minimal kernel build failed ({status}), see {}",
            log.display()
        ));
    }
    mkdirs(&dest)?;
    for (from, to) in [
        (out.join("vmlinux"), &done.vmlinux),
        (out.join("arch/x86/boot/bzImage"), &done.bzimage),
        (out.join(".config"), &dest.join("config")),
    ] {
        fs::copy(&from, to).map_err(|e| Error(format!("{}: {e}", from.display())))?;
    }
    fs::write(dest.join(".complete"), b"").map_err(|e| Error(e.to_string()))?;
    let _ = fs::remove_dir_all(&out);
    Ok(done)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `vireo` from the workspace's release build, brought up to date first.
fn vireo_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIREO_NESTED_VIREO") {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let target = target_dir();
    output(
        Command::new(cargo)
            .args(["build", "--release", "-q", "-p", "vireo-cli"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(workspace_root()),
    )?;
    let bin = target.join("release/vireo");
    if !bin.is_file() {
        return err(format!("{} was not built", bin.display()));
    }
    Ok(bin)
}

/// The boot timer L1 runs VMMs under when a boot is measured.
fn boot_timer_binary() -> Result<PathBuf> {
    harness_binary("vireo-boot-timer")
}

/// A program of this crate (`src/bin/NAME.rs`), built in release mode, e.g.
/// `vireo-disk-bench` for a guest's initramfs ([`Scenario::l2_tools`] takes its path).
pub fn harness_binary(name: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let target = target_dir();
    output(
        Command::new(cargo)
            .args(["build", "--release", "-q", "-p", "vireo-nested"])
            .args(["--bin", name])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(workspace_root()),
    )?;
    let bin = target.join("release").join(name);
    if !bin.is_file() {
        return err(format!("{} was not built", bin.display()));
    }
    Ok(bin)
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `bin`.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(bin))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("{cmd:?}: {e}")))?;
    if !o.status.success() {
        return err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn only_entry(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| file_name(p).starts_with(prefix))
        .collect();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        _ => err(format!(
            "expected one `{prefix}*` in {}, found {entries:?}",
            dir.display()
        )),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).map_err(|e| Error(format!("{}: {e}", p.display())))
}

fn mkdirs(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| Error(format!("{}: {e}", p.display())))
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Today's UTC date as `YYYY-MM-DD` (what `date -u +%F` prints).
pub fn utc_date_today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_date((secs / 86_400) as i64)
}

/// The proleptic Gregorian date of day `days` since 1970-01-01.
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_513), "2026-03-01");
    }

    #[test]
    fn bench_samples_are_parsed_per_run() {
        let log = "VIREO-RUN vireo 0\nvireo: info: x\nVIREO-BOOT-MARKER-US 1500\n\
                   VIREO-RUN-EXIT vireo 0 0\nVIREO-RUN qemu-q35 0\nVIREO-BOOT-MARKER-US none\n\
                   VIREO-RUN-EXIT qemu-q35 0 1\nVIREO-RUN vireo 1\nVIREO-RUN-EXIT vireo 1 0\n";
        let s = parse_samples(log, &[Vmm::Vireo, Vmm::QemuQ35]);
        assert_eq!(
            s,
            [
                BootSample {
                    vmm: Vmm::Vireo,
                    round: 0,
                    marker_us: Some(1500),
                    status: Some(0)
                },
                BootSample {
                    vmm: Vmm::QemuQ35,
                    round: 0,
                    marker_us: None,
                    status: Some(1)
                },
                BootSample {
                    vmm: Vmm::Vireo,
                    round: 1,
                    marker_us: None,
                    status: Some(0)
                },
            ]
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
