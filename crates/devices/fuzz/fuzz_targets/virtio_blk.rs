//! virtio-blk request parsing and execution on arbitrary descriptor tables (see ../README.md).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::block::testing::{memory, serve_once, Driver, Recorder, DATA, MEM_SIZE};
use vireo_devices::virtio::block::{Disk, DiskOptions};
use vireo_devices::virtio::GuestMemory;

const DISK_SIZE: usize = 1 << 20;

/// One small raw disk and one guest memory for the whole run (opening is the slow part).
fn setup() -> &'static (Arc<Disk>, GuestMemory) {
    static S: OnceLock<(Arc<Disk>, GuestMemory)> = OnceLock::new();
    S.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vireo-fuzz-blk-{}.raw", std::process::id()));
        std::fs::write(&path, vec![0u8; DISK_SIZE]).unwrap();
        let disk = Disk::open(&DiskOptions {
            path,
            format: Some(vireo_block::Format::Raw),
            ..Default::default()
        })
        .unwrap();
        (Arc::new(disk), memory())
    })
}

// Input: features (8 bytes), the request bytes at DATA (64), then descriptors of 16 bytes
// each (addr, len, flags, next; addresses mostly near DATA so they land in RAM), and the
// last byte picks the head.
fuzz_target!(|data: &[u8]| {
    if data.len() < 8 + 64 + 16 {
        return;
    }
    let (disk, mem) = setup();
    let features = u64::from_le_bytes(data[..8].try_into().unwrap());
    let mut drv = Driver::new(mem, 16);
    drv.put(DATA, &data[8..72]);
    drv.set_avail_idx(0);
    let descs = &data[72..];
    for (i, d) in descs.chunks_exact(16).take(16).enumerate() {
        let raw = u64::from_le_bytes(d[..8].try_into().unwrap());
        // Half the addresses near the request bytes, the rest anywhere.
        let addr = if raw & 1 == 0 {
            DATA + (raw >> 1) % (MEM_SIZE - DATA)
        } else {
            raw
        };
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
        let next = u16::from_le_bytes(d[14..16].try_into().unwrap());
        drv.desc(i as u16, addr, len, flags, next);
    }
    let head = u16::from(*data.last().unwrap());
    drv.publish(head % 20);
    let irq = Arc::new(Recorder::default());
    serve_once(disk, features, mem, drv.queue(), irq.clone()).unwrap();
    // Every request is answered, or the queue is declared broken.
    assert!(drv.used_idx() == 1 || irq.broken());
});
