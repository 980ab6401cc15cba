//! Fuzz target: open arbitrary bytes as a disk image (format probing), read
//! it, query block status and (qcow2) run the consistency check. Must never
//! panic, hang or allocate more than the input justifies.
//!
//! Run: `cd crates/block/fuzz && cargo +nightly fuzz run open_read corpus/open_read`
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_block::{open, OpenOptions};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vireo-fuzz-{}.img", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let opts = OpenOptions {
        open_backing: false,
        cache_bytes: 1 << 20,
        ..OpenOptions::read_only()
    };
    if let Ok(img) = open(&path, &opts) {
        let size = img.size().min(16 << 20);
        let mut buf = vec![0u8; 65536];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(buf.len() as u64) as usize;
            if img.read_at(&mut buf[..n], off).is_err() {
                break;
            }
            off += n as u64;
        }
        let _ = img.block_status(0, size);
        if let Some(q) = img.as_qcow2() {
            let _ = q.check();
            let _ = q.snapshots();
        }
    }
    let _ = std::fs::remove_file(&path);
});
