//! virtio-net descriptor-chain parsing under arbitrary guest memory (see ../README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::net::chain::{gather_tx, RxBuffer, MAX_TX_LEN};
use vireo_devices::virtio::{GuestMemory, Queue, QueueT};
use virtio_queue::QueueOwnedT;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x1_0000;
const SIZE: u16 = 16;
/// Where the rings live (the descriptor table at 0 comes from the input).
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    // One available entry: a head index from the input, possibly out of range.
    let head = u16::from(data.first().copied().unwrap_or(0) % 32);
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(head, GuestAddress(AVAIL + 4)).unwrap();
    let mut q = Queue::new(SIZE).unwrap();
    q.set_size(SIZE);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    let Some(chain) = q.iter(&mem).unwrap().next() else {
        return;
    };
    let mut out = Vec::new();
    if gather_tx(&mem, chain.clone(), &mut out).is_ok() {
        assert!(out.len() >= 12 && out.len() <= MAX_TX_LEN);
    }
    if let Ok(b) = RxBuffer::parse(&mem, head, chain) {
        let fill = vec![0xa5u8; b.capacity.min(MAX_TX_LEN)];
        assert_eq!(b.write(&mem, &fill), Ok(fill.len()));
    }
});
