//! virtio-console's chain parsing on rings and buffers made of the input (../README.md).
#![no_main]

mod common;

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::console::{ConsoleInput, ConsoleQueues};

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let input = ConsoleInput::new().unwrap();
    input.enqueue(b"console input for the guest");
    let mut q = ConsoleQueues {
        mem,
        rx: common::queue(0),
        tx: common::queue(1),
        interrupt: common::irq(),
        input,
        output: Arc::new(Mutex::new(Box::new(std::io::sink()))),
        broken: false,
    };
    q.process();
    q.process();
});
