//! virtio-blk request throughput, side by side with `qemu-img bench` on the same images
//! (`cargo bench -p vireo-devices --features test-utils --bench virtio_blk`).
//!
//! vireo: the device model with its queue worker thread, driven like a guest driver would
//! (the bench plays the driver on a guest memory of its own, `block::testing`): `DEPTH`
//! requests made available, one kick, wait for all completions, repeat. QEMU: `qemu-img
//! bench -d DEPTH` — QEMU's block layer alone, without a virtqueue in front, so the ratio
//! is conservative for vireo. Both use the host page cache (`-t writeback`) on images the
//! harness reads once before each run. Strided 4 KiB offsets as in docs/benchmarks.md:
//! a step of 10007 blocks modulo (image size − request size) visits every block.
//! Prints the median of `VIREO_BENCH_RUNS` (default 3) runs and the vireo/QEMU ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vireo_block::Format;
use vireo_devices::virtio::block::testing::{memory, r, w, Driver, DATA};
use vireo_devices::virtio::block::{Block, Disk, DiskOptions};
use vireo_devices::virtio::{Activation, ActiveQueue, VirtioDevice, VirtioInterrupt};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::eventfd::EventFd;

/// The driver sleeps until the device interrupts it, as a guest would (a spinning driver
/// would take CPU from the device's worker on a small host).
struct IrqFd(EventFd);

impl VirtioInterrupt for IrqFd {
    fn notify_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        self.0.write(1)
    }
    fn notify_config(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn needs_reset(&self) {
        panic!("the device asked for a reset");
    }
}

const IMAGE: u64 = 256 << 20;
const DEPTH: u16 = 16;
const STEP_BLOCKS: u64 = 10007;

struct Case {
    name: &'static str,
    format: Format,
    write: bool,
    size: u32,
    step: u64,
    count: u64,
}

fn image(dir: &Path, format: Format) -> PathBuf {
    let p = dir.join(format!("bench.{format}"));
    let _ = std::fs::remove_file(&p);
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", format.name()])
        .arg(&p)
        .arg(IMAGE.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && Command::new("qemu-io")
            .args(["-f", format.name(), "-c"])
            .arg(format!("write -q -P 0xa5 0 {IMAGE}"))
            .arg(&p)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    assert!(ok, "qemu-img/qemu-io could not create {}", p.display());
    p
}

fn warm(p: &Path) {
    let _ = std::fs::read(p);
}

fn vireo_run(p: &Path, c: &Case) -> Duration {
    warm(p);
    let disk = Arc::new(
        Disk::open(&DiskOptions {
            path: p.to_path_buf(),
            format: Some(c.format),
            ..Default::default()
        })
        .unwrap(),
    );
    let mut dev = Block::new(disk, 1);
    let mem = memory();
    let mut drv = Driver::new(&mem, 64);
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let irq = Arc::new(IrqFd(EventFd::new(0).unwrap()));
    dev.activate(Activation {
        mem: mem.clone(),
        // Without EVENT_IDX: this driver does not publish used_event, so it wants an
        // interrupt for every batch.
        acked_features: dev.features() & !(1 << VIRTIO_RING_F_EVENT_IDX),
        queues: vec![ActiveQueue {
            index: 0,
            queue: drv.queue(),
            kick: kick.try_clone().unwrap(),
        }],
        interrupt: irq.clone(),
    })
    .unwrap();
    let kind = if c.write {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };
    let modulus = IMAGE - u64::from(c.size);
    let slot = |i: u16| DATA + u64::from(i) * (u64::from(c.size) + 4096);
    if c.write {
        for i in 0..DEPTH {
            drv.put(slot(i) + 4096, &vec![0x5a; c.size as usize]);
        }
    }
    let mut offset = 0u64;
    let mut done = 0u64;
    let start = Instant::now();
    while done < c.count {
        let batch = (c.count - done).min(u64::from(DEPTH)) as u16;
        for i in 0..batch {
            let base = slot(i);
            let mut hdr = [0u8; 16];
            hdr[..4].copy_from_slice(&kind.to_le_bytes());
            hdr[8..].copy_from_slice(&(offset / 512).to_le_bytes());
            drv.put(base, &hdr);
            let data = if c.write {
                r(base + 4096, c.size)
            } else {
                w(base + 4096, c.size)
            };
            drv.push(&[r(base, 16), data, w(base + 16, 1)]);
            offset = (offset + c.step) % modulus;
        }
        let target = drv.used_idx().wrapping_add(batch);
        kick.write(1).unwrap();
        while drv.used_idx() != target {
            irq.0.read().unwrap();
        }
        done += u64::from(batch);
    }
    let t = start.elapsed();
    dev.reset();
    t
}

fn qemu_run(p: &Path, c: &Case) -> Option<Duration> {
    warm(p);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-q", "-f", c.format.name(), "-t", "writeback"])
        .args(["-d", &DEPTH.to_string(), "-c", &c.count.to_string()])
        .args(["-s", &c.size.to_string(), "-S", &c.step.to_string()]);
    if c.write {
        cmd.args(["-w", "--pattern=90"]);
    }
    let out = cmd.arg(p).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "Run completed in 1.234 seconds."
    let secs: f64 = text
        .split("completed in ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(secs))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("virtio_blk bench skipped: qemu-img not installed");
        return;
    }
    let runs: usize = std::env::var("VIREO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("virtio-blk-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let stride = STEP_BLOCKS * 4096;
    let cases = [
        Case {
            name: "raw 4 KiB strided read",
            format: Format::Raw,
            write: false,
            size: 4096,
            step: stride,
            count: 16384,
        },
        Case {
            name: "raw 4 KiB strided write",
            format: Format::Raw,
            write: true,
            size: 4096,
            step: stride,
            count: 4096,
        },
        Case {
            name: "raw 64 KiB sequential read",
            format: Format::Raw,
            write: false,
            size: 65536,
            step: 65536,
            count: 2048,
        },
        Case {
            name: "qcow2 4 KiB strided read",
            format: Format::Qcow2,
            write: false,
            size: 4096,
            step: stride,
            count: 16384,
        },
        Case {
            name: "qcow2 4 KiB strided write",
            format: Format::Qcow2,
            write: true,
            size: 4096,
            step: stride,
            count: 4096,
        },
    ];
    println!("| pattern | vireo virtio-blk | qemu-img bench | vireo / QEMU |");
    println!("| --- | --- | --- | --- |");
    for c in &cases {
        let p = image(&dir, c.format);
        let mut v = Vec::new();
        let mut q = Vec::new();
        for i in 0..runs {
            // Alternate which one runs first.
            if i % 2 == 0 {
                v.push(vireo_run(&p, c));
                q.extend(qemu_run(&p, c));
            } else {
                q.extend(qemu_run(&p, c));
                v.push(vireo_run(&p, c));
            }
        }
        let vt = median(v);
        let rate = |t: Duration| c.count as f64 / t.as_secs_f64();
        let unit = |t: Duration| {
            if c.size >= 65536 {
                format!("{:.0} MB/s", rate(t) * f64::from(c.size) / 1e6)
            } else {
                format!("{:.0} IOPS", rate(t))
            }
        };
        if q.is_empty() {
            println!("| {} | {} | (failed) | |", c.name, unit(vt));
            continue;
        }
        let qt = median(q);
        println!(
            "| {} | {} | {} | **{:.2}** |",
            c.name,
            unit(vt),
            unit(qt),
            qt.as_secs_f64() / vt.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
