//! Test helpers: a guest memory with a split virtqueue the test plays the driver of, and
//! an interrupt recorder.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::{GuestMemory, Queue, QueueT, VirtioInterrupt};

/// Guest RAM of the tests: [0, MEM_SIZE).
pub const MEM_SIZE: u64 = 16 << 20;
const DESC_TABLE: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
/// Where tests put request buffers.
pub const DATA: u64 = 0x10_0000;

pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// One descriptor as the test driver describes it.
#[derive(Debug, Clone, Copy)]
pub struct D {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub fn r(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: false,
    }
}

pub fn w(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: true,
    }
}

/// The driver side of one split virtqueue (size at most 256).
pub struct Driver {
    pub mem: GuestMemory,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    /// Added to the ring addresses: lets several queues share the test memory.
    base: u64,
}

impl Driver {
    pub fn new(mem: &GuestMemory, size: u16) -> Driver {
        Driver::at(mem, size, 0)
    }

    /// A queue whose rings start `base` bytes above the default ones (a multiple of 4 KiB
    /// below [`DATA`] - 0x5000 keeps them clear of the request buffers).
    pub fn at(mem: &GuestMemory, size: u16, base: u64) -> Driver {
        assert!(size <= 256);
        // A driver sets its rings up from zero: an earlier driver's used index left at the
        // same address would otherwise read as requests already served.
        let rings = vec![0u8; (USED + 4 + 8 * 256 - DESC_TABLE) as usize];
        mem.write_slice(&rings, GuestAddress(base + DESC_TABLE))
            .unwrap();
        Driver {
            mem: mem.clone(),
            size,
            next_desc: 0,
            avail_idx: 0,
            base,
        }
    }

    /// The device side, as a transport would set it up.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.set_size(self.size);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (l, h) = split(self.base + DESC_TABLE);
        q.set_desc_table_address(l, h);
        let (l, h) = split(self.base + AVAIL);
        q.set_avail_ring_address(l, h);
        let (l, h) = split(self.base + USED);
        q.set_used_ring_address(l, h);
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` of the table at `table`.
    pub fn write_desc(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(table + 16 * u64::from(index));
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&b, at).unwrap();
    }

    pub fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc(self.base + DESC_TABLE, index, addr, len, flags, next)
    }

    /// Writes `descs` as a chain in free table slots and makes it available.
    pub fn push(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let mut flags = if d.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.desc(idx, d.addr, d.len, flags, (idx + 1) % self.size);
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Puts `descs` in an indirect table at `table` and makes a one-descriptor chain
    /// pointing at it available.
    pub fn push_indirect(&mut self, table: u64, descs: &[D]) -> u16 {
        for (i, d) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if d.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.write_desc(table, i as u16, d.addr, d.len, flags, i as u16 + 1);
        }
        let head = self.next_desc;
        self.desc(
            head,
            table,
            16 * descs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        self.next_desc = (head + 1) % self.size;
        self.publish(head);
        head
    }

    /// Adds `head` to the available ring.
    pub fn publish(&mut self, head: u16) {
        let slot = self.base + AVAIL + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), GuestAddress(self.base + AVAIL + 2))
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(self.base + USED + 2))
            .unwrap()
    }

    /// Used-ring entry `i`: (head, length).
    pub fn used(&self, i: u16) -> (u16, u32) {
        let at = self.base + USED + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id as u16, len)
    }

    pub fn byte(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn put(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}

/// Records what a device asked of its transport.
#[derive(Default)]
pub struct Recorder {
    pub queue_irqs: AtomicUsize,
    pub needs_reset: AtomicBool,
}

impl VirtioInterrupt for Recorder {
    fn notify_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        self.queue_irqs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn notify_config(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

impl Recorder {
    pub fn broken(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }
    pub fn irqs(&self) -> usize {
        self.queue_irqs.load(Ordering::SeqCst)
    }
}

/// Serves `queue` once, synchronously, as the device's worker would on a kick (for fuzz
/// targets and benchmarks that have no transport).
pub fn serve_once(
    disk: &std::sync::Arc<super::Disk>,
    features: u64,
    mem: &GuestMemory,
    queue: Queue,
    interrupt: std::sync::Arc<dyn VirtioInterrupt>,
) -> std::io::Result<()> {
    let q = crate::virtio::ActiveQueue {
        index: 0,
        queue,
        kick: vmm_sys_util::eventfd::EventFd::new(0)?,
    };
    let stop = vmm_sys_util::eventfd::EventFd::new(0)?;
    let mut w = super::worker::Worker::new(disk, features, mem.clone(), q, interrupt, stop);
    w.serve();
    Ok(())
}
