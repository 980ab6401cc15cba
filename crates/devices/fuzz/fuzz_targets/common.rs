//! Shared by the chain-parsing targets: guest memory whose rings and buffers are the fuzz
//! input, and queues pointing into it.

use std::sync::Arc;

use vireo_devices::virtio::{GuestMemory, Queue, QueueT, VirtioInterrupt};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM: 64 KiB, so that random addresses often land inside it (and often not).
pub const MEM_SIZE: usize = 64 << 10;
/// Every queue has 16 entries; queue `i`'s rings are in the `i`th 4 KiB page.
pub const QUEUE_SIZE: u16 = 16;

/// The input becomes guest memory (repeated to fill it, so rings and buffers are both
/// made of it).
pub fn memory(data: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    if !data.is_empty() {
        // The input repeated by doubling, then one write: a write (or a loop step) per
        // repetition made short inputs thousands of times slower than long ones.
        let mut filled = data[..data.len().min(MEM_SIZE)].to_vec();
        while filled.len() < MEM_SIZE {
            let n = filled.len().min(MEM_SIZE - filled.len());
            filled.extend_from_within(..n);
        }
        mem.write_slice(&filled, GuestAddress(0)).unwrap();
    }
    mem
}

/// Queue `i`: descriptors at page `i`, available ring after them, used ring after that.
pub fn queue(i: u64) -> Queue {
    let base = i * 0x1000;
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(base);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(base + 16 * u64::from(QUEUE_SIZE));
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(base + 0x200);
    q.set_used_ring_address(lo, hi);
    q.set_size(QUEUE_SIZE);
    q.set_ready(true);
    q
}

/// An interrupt that ignores everything.
pub struct NoIrq;

impl VirtioInterrupt for NoIrq {
    fn notify_queue(&self, _: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn notify_config(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn needs_reset(&self) {}
}

pub fn irq() -> Arc<dyn VirtioInterrupt> {
    Arc::new(NoIrq)
}
