//! `vireo img bench` against `qemu-img bench` on the same image files.
//!
//! Run: `cargo bench -p vireo-img --bench img_bench` (a few minutes on 2 vCPUs).
//!
//! Rows: format (qcow2, qcow2 over a qcow2 backing file, raw) × access pattern (4 KiB
//! strided-random read/write, 64 KiB sequential read/write). Both tools get exactly the same
//! command line (`bench -f FMT -t CACHE -d DEPTH -c COUNT -s SIZE -S STEP [-w
//! --pattern=90] FILE`) on the same file; read rows use images prefilled by qemu-io, write
//! rows a freshly created image for every run (so every run allocates, and with a backing
//! file every first write to a cluster copies the rest of it from the backing file).
//!
//! "Random": qemu-img bench has no random mode, only a start offset and a step that wraps
//! modulo (image size − request size). With a 512 MiB image and 4 KiB requests that modulus
//! is 131071 blocks, a prime, so a step of 81007 blocks (≈ 0.618 of the image) visits every
//! 4 KiB block exactly once per 131071 requests in a scattered order, each request about
//! 316 MiB away from the previous one: the closest to random access both tools support.
//!
//! Cache modes: `-t none` (O_DIRECT, the page cache is bypassed for data) and `-t writeback`
//! (page cache; the read images were just written, so reads are served from memory), env
//! IMG_BENCH_CACHE (default "writeback,none"). With `-t none` the request counts are divided
//! by 4. Before every run the harness calls sync(1), and before a read run it reads the image
//! file once (page cache warm for writeback).
//!
//! Each measurement is the median of REPS runs (default 3, env IMG_BENCH_REPS); the order of
//! the two tools alternates between repetitions. The time is each tool's own "Run completed
//! in X seconds." (both exclude process start-up, image open and the flush at close).
//! Depth: env IMG_BENCH_DEPTH (default 16).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const VIREO: &str = env!("CARGO_BIN_EXE_vireo-img");
const IMG_SIZE: u64 = 512 << 20;
/// 4 KiB blocks in the wrap modulus (IMG_SIZE - 4 KiB) / 4 KiB = 2^17 - 1, prime.
const BLOCKS_4K: u64 = (IMG_SIZE - 4096) / 4096;
const STRIDE_4K: u64 = 81007;

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Qcow2,
    Qcow2Backing,
    Raw,
}

impl Layout {
    fn fmt(self) -> &'static str {
        match self {
            Layout::Raw => "raw",
            _ => "qcow2",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Layout::Qcow2 => "qcow2",
            Layout::Qcow2Backing => "qcow2 + backing",
            Layout::Raw => "raw",
        }
    }
}

#[derive(Clone, Copy)]
struct Pattern {
    label: &'static str,
    write: bool,
    size: u64,
    step: u64,
    count: u64,
}

const PATTERNS: [Pattern; 4] = [
    Pattern {
        label: "4 KiB random read",
        write: false,
        size: 4096,
        step: STRIDE_4K * 4096,
        count: BLOCKS_4K,
    },
    Pattern {
        label: "4 KiB random write",
        write: true,
        size: 4096,
        step: STRIDE_4K * 4096,
        count: BLOCKS_4K,
    },
    Pattern {
        label: "64 KiB seq read",
        write: false,
        size: 65536,
        step: 65536,
        count: 2 * IMG_SIZE / 65536,
    },
    Pattern {
        label: "64 KiB seq write",
        write: true,
        size: 65536,
        step: 65536,
        count: IMG_SIZE / 65536 - 1,
    },
];

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Seconds from a "Run completed in X seconds." line.
fn parse_time(out: &str) -> f64 {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")
                .and_then(|r| r.strip_suffix(" seconds."))
        })
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 'Run completed' line in:\n{out}"))
}

struct Images {
    dir: PathBuf,
    base: PathBuf,
    overlay: PathBuf,
    raw: PathBuf,
}

impl Images {
    fn prepare(dir: PathBuf) -> Images {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.qcow2");
        let overlay = dir.join("overlay.qcow2");
        let raw = dir.join("data.raw");
        let size = IMG_SIZE.to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", s(&base), &size]);
        qemu_img(&["create", "-q", "-f", "raw", s(&raw), &size]);
        for (f, p) in [("qcow2", &base), ("raw", &raw)] {
            run(Command::new("qemu-io").args([
                "-f",
                f,
                "-c",
                &format!("write -P 0xa5 0 {IMG_SIZE}"),
                s(p),
            ]));
        }
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            s(&overlay),
        ]);
        Images {
            dir,
            base,
            overlay,
            raw,
        }
    }

    /// The file a run works on; write runs get a fresh image.
    fn target(&self, layout: Layout, write: bool) -> PathBuf {
        if !write {
            return match layout {
                Layout::Qcow2 => self.base.clone(),
                Layout::Qcow2Backing => self.overlay.clone(),
                Layout::Raw => self.raw.clone(),
            };
        }
        let p = self.dir.join(format!("w.{}", layout.fmt()));
        let _ = std::fs::remove_file(&p);
        let size = IMG_SIZE.to_string();
        match layout {
            Layout::Qcow2 => qemu_img(&["create", "-q", "-f", "qcow2", s(&p), &size]),
            Layout::Qcow2Backing => qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                s(&p),
            ]),
            Layout::Raw => qemu_img(&["create", "-q", "-f", "raw", s(&p), &size]),
        };
        p
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us with no such flag:
    // then only check that the harness builds.
    if !std::env::args().any(|a| a == "--bench") {
        println!("img_bench: run with `cargo bench -p vireo-img --bench img_bench`");
        return;
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        println!("img_bench: qemu-img not found, skipping");
        return;
    }
    let reps: usize = std::env::var("IMG_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let depth: u64 = std::env::var("IMG_BENCH_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let only = std::env::var("IMG_BENCH_ONLY").unwrap_or_default();
    let caches = std::env::var("IMG_BENCH_CACHE").unwrap_or_else(|_| "writeback,none".into());
    let t0 = Instant::now();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("img_bench");
    let images = Images::prepare(dir.clone());
    let qver = qemu_img(&["--version"]);
    for cache in caches.split(',') {
        // With O_DIRECT every request goes to the disk: a quarter of the
        // requests (the 4 KiB pattern still spans the whole image).
        let div = if cache == "none" { 4 } else { 1 };
        println!(
            "img_bench: {} vs {}; image {} MiB, depth {depth}, -t {cache}, median of {reps}",
            VIREO,
            qver.lines().next().unwrap_or("qemu-img"),
            IMG_SIZE >> 20
        );
        println!();
        println!("| image | pattern | vireo | qemu-img | vireo / QEMU |");
        println!("| --- | --- | --- | --- | --- |");
        for layout in [Layout::Qcow2, Layout::Qcow2Backing, Layout::Raw] {
            for pat in PATTERNS {
                let name = format!("{} / {}", layout.label(), pat.label);
                if !only.is_empty() && !name.contains(&only) {
                    continue;
                }
                let mut times = [Vec::new(), Vec::new()]; // vireo, qemu
                for rep in 0..reps {
                    let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
                    for tool in order {
                        let file = images.target(layout, pat.write);
                        if !pat.write {
                            // Page cache warm for every read run (writeback), and
                            // no dirty data of earlier runs being written back.
                            for f in [&images.base, &images.raw] {
                                let mut f = std::fs::File::open(f).expect("open");
                                std::io::copy(&mut f, &mut std::io::sink()).expect("warm");
                            }
                        }
                        run(&mut Command::new("sync"));
                        let mut args: Vec<String> = vec![
                            "bench".into(),
                            "-f".into(),
                            layout.fmt().into(),
                            "-t".into(),
                            cache.into(),
                            "-d".into(),
                            depth.to_string(),
                            "-c".into(),
                            (pat.count / div).to_string(),
                            "-s".into(),
                            pat.size.to_string(),
                            "-S".into(),
                            pat.step.to_string(),
                        ];
                        if pat.write {
                            args.push("-w".into());
                            args.push("--pattern=90".into());
                        }
                        args.push(s(&file).into());
                        let prog = if tool == 0 { VIREO } else { "qemu-img" };
                        let out = run(Command::new(prog).args(&args));
                        times[tool].push(parse_time(&out));
                        if pat.write && layout != Layout::Raw && tool == 0 {
                            // vireo's result must be a consistent image.
                            qemu_img(&["check", "-q", "-f", "qcow2", s(&file)]);
                        }
                    }
                }
                let [tv, tq] = times.map(median);
                let count = pat.count / div;
                let bytes = (count * pat.size) as f64;
                let fmt_rate = |t: f64| {
                    if pat.size == 4096 {
                        format!("{:.0} IOPS", count as f64 / t)
                    } else {
                        format!("{:.0} MB/s", bytes / t / 1e6)
                    }
                };
                println!(
                    "| {} | {} | {} | {} | **{:.2}** |",
                    layout.label(),
                    pat.label,
                    fmt_rate(tv),
                    fmt_rate(tq),
                    tq / tv
                );
            }
        }
        println!();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("img_bench: done in {:.0} s", t0.elapsed().as_secs_f64());
}
