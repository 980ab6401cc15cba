#![allow(dead_code)]
//! Helpers shared by the storage integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use vireo_storage::{PoolManager, StorageDirs};

/// Returns false (and prints why) when qemu-img is missing; with
/// VIREO_REQUIRE_KVM=1 (CI) a missing qemu-img fails the test instead.
pub fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("VIREO_REQUIRE_KVM").as_deref() != Ok("1"),
            "qemu-img not found but VIREO_REQUIRE_KVM=1 (install qemu-utils)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: qemu-img not found (install qemu-utils) — interop test skipped"
        );
    }
    ok
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vireo-storage-test-{tag}-{}-{}",
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
    pub fn dirs(&self) -> StorageDirs {
        StorageDirs {
            config_dir: self.join("etc/storage"),
            state_dir: self.join("run/storage"),
            images_dir: self.join("lib/images"),
        }
    }
    /// A manager over this directory (the `default` pool is created the
    /// first time).
    pub fn manager(&self) -> PoolManager {
        PoolManager::open(self.dirs()).expect("open pool manager")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs qemu-img; panics with its output if it fails.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("spawn qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img info --output json` of an image (`-U`: no lock needed).
pub fn qemu_info(p: &Path) -> serde_json::Value {
    let s = qemu_img(&["info", "-U", "--output", "json", p.to_str().unwrap_or("")]);
    serde_json::from_str(&s).expect("qemu-img info json")
}

/// Asserts `qemu-img check` finds the qcow2 image clean.
pub fn assert_qemu_clean(p: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "-U", "-f", "qcow2"])
        .arg(p)
        .output()
        .expect("spawn qemu-img");
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img check {}: {}{}",
        p.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Guest-visible contents as qemu sees them (qemu-img convert -O raw).
pub fn qemu_read_all(p: &Path, scratch: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(scratch);
    qemu_img(&[
        "convert",
        "-U",
        "-O",
        "raw",
        p.to_str().unwrap_or(""),
        scratch.to_str().unwrap_or(""),
    ]);
    let v = std::fs::read(scratch).expect("read converted");
    let _ = std::fs::remove_file(scratch);
    v
}

/// Writes `data` at `off` through vireo-block.
pub fn write_guest(p: &Path, off: u64, data: &[u8]) {
    let img = vireo_block::open(p, &vireo_block::OpenOptions::default()).expect("open rw");
    img.write_at(data, off).expect("write");
    img.flush().expect("flush");
}

/// Deterministic pattern bytes.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
