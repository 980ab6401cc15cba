//! Boot time of a real Linux guest to its init, vireo vs QEMU (`-M microvm` and `-M q35`),
//! each booting the same kernel and initramfs inside the same nested L1 (QEMU TCG with
//! emulated AMD-V; see crates/nested). The init writes the boot-complete marker (123 to
//! port 0x80) first thing; the time is from starting the VMM until it saw that write.
//!
//! ```sh
//! cargo bench -p vireo-nested --bench nested_boot            # 3 rounds, stock kernel
//! VIREO_BENCH_ROUNDS=5 VIREO_BENCH_KERNEL=minimal cargo bench -p vireo-nested --bench nested_boot
//! ```
//! `VIREO_BENCH_CMDLINE` replaces the L2 command line (default `console=ttyS0 panic=-1
//! quiet`); the L2 consoles are kept in target/nested/runs/bench-nested-boot/.
//! Prints each sample, the median per VMM and vireo's ratio to each QEMU machine.

use vireo_nested::{boot_benchmark, skip_reason, BootBench, Kernel, Vmm};

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Some(reason) = skip_reason() {
        eprintln!("SKIP nested_boot: {reason}");
        return;
    }
    let rounds = std::env::var("VIREO_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (kernel, kname) = match std::env::var("VIREO_BENCH_KERNEL").as_deref() {
        Ok("minimal") => (Kernel::MinimalBzImage, "minimal 6.1 bzImage"),
        _ => (Kernel::DebianStock, "Debian stock bzImage"),
    };
    let vmms = vec![Vmm::Vireo, Vmm::QemuMicrovm, Vmm::QemuQ35];
    let bench = BootBench {
        name: "bench-nested-boot".into(),
        kernel,
        cmdline: std::env::var("VIREO_BENCH_CMDLINE")
            .unwrap_or_else(|_| "console=ttyS0 panic=-1 quiet".into()),
        cpus: 1,
        memory_mib: 256,
        rounds,
        vmms: vmms.clone(),
    };
    let (samples, outcome) = boot_benchmark(&bench).unwrap_or_else(|e| {
        eprintln!("nested_boot: {e}");
        std::process::exit(1)
    });
    println!(
        "kernel: {kname}, 1 vCPU, 256 MiB, cmdline {:?}, {rounds} rounds",
        bench.cmdline
    );
    for s in &samples {
        println!(
            "  round {} {:<13} marker {:>10} µs  exit {:?}",
            s.round,
            s.vmm.label(),
            s.marker_us.map_or("none".to_string(), |v| v.to_string()),
            s.status
        );
    }
    let med = |v: Vmm| {
        median(
            samples
                .iter()
                .filter(|s| s.vmm == v)
                .filter_map(|s| s.marker_us)
                .collect(),
        )
    };
    println!("\n| VMM | median boot to init marker (ms) |\n|---|---|");
    for v in &vmms {
        match med(*v) {
            Some(us) => println!("| {} | {:.0} |", v.label(), us as f64 / 1000.0),
            None => println!("| {} | no sample |", v.label()),
        }
    }
    if let Some(vireo) = med(Vmm::Vireo) {
        for q in [Vmm::QemuMicrovm, Vmm::QemuQ35] {
            if let Some(qv) = med(q) {
                println!(
                    "ratio vireo / {}: {:.2}",
                    q.label(),
                    vireo as f64 / qv as f64
                );
            }
        }
    }
    if samples.len() != vmms.len() * rounds as usize
        || samples.iter().any(|s| s.marker_us.is_none())
    {
        eprintln!("some boots were not measured:\n{}", outcome.describe());
        std::process::exit(1);
    }
}
