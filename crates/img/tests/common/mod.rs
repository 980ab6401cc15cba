#![allow(dead_code)]
//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub use vireo_img::Rng;

/// Returns false (and prints why) when qemu-img / qemu-io are missing.
pub fn have_qemu() -> bool {
    for tool in ["qemu-img", "qemu-io"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            // Written to the real stderr (not the captured test output) so
            // the skip is visible in a normal `cargo test` run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: {tool} not found (install qemu-utils) — interop test skipped"
            );
            return false;
        }
    }
    true
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vireo-img-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn join(&self, n: &str) -> PathBuf {
        self.0.join(n)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

/// Runs qemu-img; panics with its stderr if it fails.
pub fn qemu_img(args: &[&str]) -> String {
    let out = run(Command::new("qemu-img").args(args));
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code of `qemu-img check` (0 clean, 2 corrupt, 3 leaks).
pub fn qemu_check(path: &Path) -> (i32, String) {
    let out = run(Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(path));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn assert_qemu_clean(path: &Path) {
    let (code, out) = qemu_check(path);
    assert_eq!(code, 0, "qemu-img check {}:\n{out}", path.display());
}

pub fn qemu_io(path: &Path, fmt: &str, cmds: &[String]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    c.arg(path);
    let out = run(&mut c);
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io {cmds:?}: {s}");
    assert!(
        !s.contains("Pattern verification failed"),
        "qemu-io {cmds:?}: {s}"
    );
    assert!(!s.contains("failed:"), "qemu-io {cmds:?}: {s}");
    s
}

/// Reads the whole guest-visible content through qemu-img convert -O raw.
pub fn qemu_read_all(path: &Path, dir: &TempDir) -> Vec<u8> {
    let out = dir.join("qemu-read.raw");
    let _ = std::fs::remove_file(&out);
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        path.to_str().unwrap_or(""),
        out.to_str().unwrap_or(""),
    ]);
    let v = std::fs::read(&out).expect("read converted");
    let _ = std::fs::remove_file(&out);
    v
}

/// Reads the whole image through vireo-block.
pub fn vireo_read_all(path: &Path) -> Vec<u8> {
    let img = vireo_block::open(path, &vireo_block::OpenOptions::read_only()).expect("vireo open");
    let mut v = vec![0u8; img.size() as usize];
    img.read_at(&mut v, 0).expect("vireo read");
    v
}

/// The vireo-img test binary.
pub fn vireo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vireo-img"))
        .args(args)
        .output()
        .expect("spawn vireo-img")
}

pub fn vireo_ok(args: &[&str]) -> String {
    let out = vireo(args);
    assert!(
        out.status.success(),
        "vireo-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn fill(rng: &mut Rng, buf: &mut [u8]) {
    for c in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// Semi-compressible data: random bytes from a tiny alphabet in runs.
pub fn fill_compressible(rng: &mut Rng, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let run = (rng.next() % 64 + 1) as usize;
        let b = (rng.next() % 4) as u8 * 0x11;
        let end = (i + run).min(buf.len());
        buf[i..end].fill(b);
        i = end;
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap_or("")
}

/// First differing offset, for readable assertion messages.
pub fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length differs");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "{what}: first difference at byte {i} ({:#x} vs {:#x})",
            a[i], b[i]
        );
    }
}
