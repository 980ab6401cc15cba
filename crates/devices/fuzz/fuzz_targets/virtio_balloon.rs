//! virtio-balloon's chain parsing (frame numbers, statistics) on rings and buffers made of
//! the input (../README.md). Released pages are the fuzzer's own guest memory.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::balloon::{BalloonControl, BalloonQueues};

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let mut q = BalloonQueues::new(
        mem,
        common::queue(0),
        common::queue(1),
        Some(common::queue(2)),
        common::irq(),
        BalloonControl::new().unwrap(),
    );
    q.process();
    q.release_stats();
    q.process();
});
