//! virtio-vsock's packet and chain parsing on rings and buffers made of the input
//! (../README.md). The host socket is a listener in a temporary directory, shared by all
//! runs; guest connections go to ports nobody listens on.
#![no_main]

mod common;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::vsock::muxer::VsockMuxer;
use vireo_devices::virtio::vsock::VsockBackend;

fn backend() -> Arc<VsockBackend> {
    static B: OnceLock<Arc<VsockBackend>> = OnceLock::new();
    B.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vireo-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        Arc::new(VsockBackend::open(3, &dir.join("v.sock")).unwrap())
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let mut m = VsockMuxer::new(mem, common::queue(0), common::queue(1), common::irq(), backend())
        .unwrap();
    m.process();
    let _ = m.poll_once(0);
});
