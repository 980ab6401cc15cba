//! virtio-rng's request handling on rings and buffers made of the input (../README.md):
//! whatever the chains say, it never writes outside guest RAM or panics.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::rng::process;
use vireo_devices::virtio::ActiveQueue;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let mut q = ActiveQueue {
        index: 0,
        queue: common::queue(0),
        kick: EventFd::new(0).unwrap(),
    };
    let irq = common::irq();
    process(&mut q, &mem, irq.as_ref());
    process(&mut q, &mem, irq.as_ref());
});
