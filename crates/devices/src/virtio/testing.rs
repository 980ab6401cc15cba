//! Test helpers: guest memory, a driver side of a split virtqueue on top of virtio-queue's
//! mock (descriptor table, available ring, used ring in guest memory), and an interrupt
//! that records what the device raised. Used by the unit tests and the fuzz targets
//! (feature `test-utils`).

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestAddress;

use super::{GuestMemory, VirtioInterrupt};

/// Guest RAM for tests: rings in the first MiB, then buffers of [`TestMemory::BUF_SIZE`].
pub struct TestMemory(GuestMemory);

impl TestMemory {
    pub const SIZE: usize = 16 << 20;
    pub const BUF_BASE: u64 = 1 << 20;
    pub const BUF_SIZE: u64 = 64 << 10;

    pub fn new() -> Self {
        Self::with_size(Self::SIZE)
    }

    pub fn with_size(size: usize) -> Self {
        Self(GuestMemory::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory"))
    }

    /// The `i`th 64 KiB buffer above the rings.
    pub fn buf(&self, i: u64) -> GuestAddress {
        GuestAddress(Self::BUF_BASE + i * Self::BUF_SIZE)
    }

    pub fn memory(&self) -> GuestMemory {
        self.0.clone()
    }
}

impl Default for TestMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for TestMemory {
    type Target = GuestMemory;
    fn deref(&self) -> &GuestMemory {
        &self.0
    }
}

/// The driver's side of one split queue.
pub struct Driver<'a> {
    mock: MockSplitQueue<'a, GuestMemory>,
    size: u16,
    next_desc: u16,
    used_seen: u16,
}

impl<'a> Driver<'a> {
    /// A queue of `size` entries whose rings sit in slot `slot` (0..15) of the first MiB.
    pub fn new(mem: &'a GuestMemory, slot: u64, size: u16) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(0x1000 + slot * 0x1_0000), size);
        Self {
            mock,
            size,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// The device's view of the queue (ready, addresses set).
    pub fn queue(&self) -> Queue {
        self.mock.create_queue().expect("mock queue")
    }

    /// Writes a chain of (address, length, device-writable) buffers into free descriptor
    /// slots and makes it available; returns its head.
    pub fn add(&mut self, bufs: &[(GuestAddress, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = (idx + 1) % self.size;
            self.store(idx, SplitDescriptor::new(addr.0, len, flags, next));
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Points descriptor `idx`'s next field at `next` (with the NEXT flag).
    pub fn set_next(&self, idx: u16, next: u16) {
        let d = SplitDescriptor::from(self.mock.desc_table().load(idx).expect("descriptor"));
        let flags = d.flags() | VRING_DESC_F_NEXT as u16;
        self.store(idx, SplitDescriptor::new(d.addr().0, d.len(), flags, next));
    }

    fn store(&self, idx: u16, d: SplitDescriptor) {
        self.mock
            .desc_table()
            .store(idx, RawDescriptor::from(d))
            .expect("descriptor slot");
    }

    /// Puts `head` in the available ring.
    pub fn publish(&self, head: u16) {
        let idx = self.avail_idx();
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(idx % self.size))
            .expect("avail slot")
            .store(head);
        self.set_avail_idx(idx.wrapping_add(1));
    }

    pub fn avail_idx(&self) -> u16 {
        self.mock.avail().idx().load()
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mock.avail().idx().store(idx);
    }

    /// Used-ring entries (head, length) added since the last call.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let end = self.mock.used().idx().load();
        let mut out = Vec::new();
        while self.used_seen != end {
            let e = self
                .mock
                .used()
                .ring()
                .ref_at(usize::from(self.used_seen % self.size))
                .expect("used slot")
                .load();
            out.push((e.id() as u16, e.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// An interrupt that records what the device raised.
#[derive(Default)]
pub struct TestInterrupt {
    pub queues: Mutex<Vec<u16>>,
    pub configs: AtomicUsize,
    pub broken: AtomicBool,
}

impl TestInterrupt {
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }
    /// Queue notifications so far (and forgets them).
    pub fn take_queues(&self) -> Vec<u16> {
        std::mem::take(&mut self.queues.lock().unwrap())
    }
}

impl VirtioInterrupt for TestInterrupt {
    fn notify_queue(&self, queue_index: u16) -> std::io::Result<()> {
        self.queues.lock().unwrap().push(queue_index);
        Ok(())
    }
    fn notify_config(&self) -> std::io::Result<()> {
        self.configs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn needs_reset(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }
}
