//! Boot benchmark, side by side with QEMU (`cargo bench -p vireo-vmm --bench boot`):
//!
//! * exec → first guest instruction: the test guest's very first instructions write `@` to
//!   COM1; the time from spawning the VMM to reading that byte on its stdout;
//! * RSS of the VMM process with a 128 MiB guest idling in its halt loop.
//!
//! Anchor: `qemu-system-x86_64 -M microvm -accel kvm` booting the same PVH ELF. Prints a
//! table and the vireo/QEMU ratios; results are recorded in docs/benchmarks.md. Set
//! `VIREO_BENCH_RUNS` to change the number of runs (default 15).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_CMDLINE: &str = "console=ttyS0 vtg.quick=1 vtg.action=halt";

struct Vmm {
    name: &'static str,
    command: fn(&str) -> Command,
}

fn vireo(guest: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vireo-vmm"));
    c.args([
        "--kernel",
        guest,
        "--memory",
        "128M",
        "--cpus",
        "1",
        "--cmdline",
        GUEST_CMDLINE,
    ]);
    c
}

fn qemu(guest: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,isa-serial=on,rtc=on",
        "-accel",
        "kvm",
        // arch-capabilities: some nested hosts refuse MSR 0x10a, which -cpu host sets.
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "128M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-kernel",
        guest,
        "-append",
        GUEST_CMDLINE,
    ]);
    c
}

fn spawn(vmm: &Vmm, guest: &str) -> Child {
    (vmm.command)(guest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", vmm.name))
}

/// Reads the child's stdout until `pattern` appears or `timeout` passes; returns the time
/// it appeared (measured from `start`).
fn wait_for(
    child: &mut Child,
    pattern: &[u8],
    start: Instant,
    timeout: Duration,
) -> Option<Duration> {
    let pid = child.id() as i32;
    let out = child.stdout.as_mut().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let (tx, rx) = std::sync::mpsc::channel();
    // Reading happens on this thread; a watchdog kills the child on timeout so read ends.
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
            // SAFETY: kill has no memory-safety preconditions; `pid` is our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut result = None;
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(pattern.len()).any(|w| w == pattern) {
            result = Some(start.elapsed());
            break;
        }
    }
    let _ = tx.send(());
    let _ = watchdog.join();
    result
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Result {
    first_instruction: Option<Duration>,
    min_first: Option<Duration>,
    rss_kib: Option<u64>,
}

fn measure(vmm: &Vmm, guest: &str, runs: usize) -> Result {
    let mut firsts = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = spawn(vmm, guest);
        if let Some(t) = wait_for(&mut child, b"@", start, Duration::from_secs(30)) {
            firsts.push(t);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    // RSS once the guest is idle in its halt loop.
    let start = Instant::now();
    let mut child = spawn(vmm, guest);
    let idle = wait_for(
        &mut child,
        b"vtg: action halt",
        start,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(200));
    let rss = idle.and_then(|_| rss_kib(child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let min_first = firsts.iter().min().copied();
    Result {
        first_instruction: (!firsts.is_empty()).then(|| median(&mut firsts)),
        min_first,
        rss_kib: rss,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful to us.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let guest = vireo_test_guest::PATH;
    let runs: usize = std::env::var("VIREO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIP boot benchmark: /dev/kvm is not usable");
        return;
    }
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    let vmms = [
        Vmm {
            name: "vireo-vmm",
            command: vireo,
        },
        Vmm {
            name: "qemu microvm",
            command: qemu,
        },
    ];
    let mut results = Vec::new();
    for vmm in &vmms {
        if vmm.name.starts_with("qemu") && !have_qemu {
            eprintln!("SKIP {}: qemu-system-x86_64 not installed", vmm.name);
            continue;
        }
        results.push((vmm.name, measure(vmm, guest, runs)));
    }
    let fmt_d = |d: Option<Duration>| {
        d.map_or("n/a".to_string(), |d| {
            format!("{:.2} ms", d.as_secs_f64() * 1e3)
        })
    };
    let fmt_k = |k: Option<u64>| {
        k.map_or("n/a".to_string(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    println!("guest: vireo test guest (PVH ELF), 1 vCPU, 128 MiB; {runs} runs, median (min)");
    println!(
        "{:<14} {:>26} {:>14}",
        "VMM", "exec -> first instruction", "RSS (idle)"
    );
    for (name, r) in &results {
        println!(
            "{:<14} {:>16} ({:>8}) {:>14}",
            name,
            fmt_d(r.first_instruction),
            fmt_d(r.min_first).trim_end_matches(" ms"),
            fmt_k(r.rss_kib)
        );
    }
    if let [(_, v), (_, q)] = &results[..] {
        if let (Some(vf), Some(qf)) = (v.first_instruction, q.first_instruction) {
            println!(
                "ratio vireo/qemu: exec -> first instruction {:.3}",
                vf.as_secs_f64() / qf.as_secs_f64()
            );
        }
        if let (Some(vr), Some(qr)) = (v.rss_kib, q.rss_kib) {
            println!("ratio vireo/qemu: RSS {:.3}", vr as f64 / qr as f64);
        }
    }
}
