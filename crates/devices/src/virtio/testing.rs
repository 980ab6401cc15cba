//! Test helpers: guest memory, a driver side of a split virtqueue (descriptor table,
//! available ring, used ring in guest memory), and an interrupt
//! that records what the device raised. Used by the unit tests and the fuzz targets
//! (feature `test-utils`).

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

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

/// The driver's side of one split queue, written straight into guest memory (virtio-queue's
/// own mock lays the used ring over the second half of the available ring, so it is not
/// used here).
pub struct Driver<'a> {
    mem: &'a GuestMemory,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    size: u16,
    next_desc: u16,
    used_seen: u16,
}

impl<'a> Driver<'a> {
    /// A queue of `size` (at most 2048) entries whose rings sit in slot `slot` (0..15) of
    /// the first MiB.
    pub fn new(mem: &'a GuestMemory, slot: u64, size: u16) -> Self {
        assert!(slot < 16 && size <= 2048 && size.is_power_of_two());
        let desc = GuestAddress(0x1000 + slot * 0x1_0000);
        let avail = GuestAddress(desc.0 + 16 * u64::from(size));
        // Used ring: 4-byte aligned after flags, idx, ring and used_event.
        let used = GuestAddress((avail.0 + 6 + 2 * u64::from(size) + 3) & !3);
        for a in [avail, used] {
            mem.write_obj(0u32, a).expect("ring header");
        }
        Self {
            mem,
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// The device's view of the queue (ready, addresses set).
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue size");
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_size(self.size);
        q.set_ready(true);
        q
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
            self.store(idx, addr.0, len, flags, next);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Points descriptor `idx`'s next field at `next` (with the NEXT flag).
    pub fn set_next(&self, idx: u16, next: u16) {
        let at = self.desc_addr(idx);
        let flags: u16 = self.mem.read_obj(GuestAddress(at.0 + 12)).expect("flags");
        self.mem
            .write_obj(flags | VRING_DESC_F_NEXT as u16, GuestAddress(at.0 + 12))
            .expect("flags");
        self.mem
            .write_obj(next, GuestAddress(at.0 + 14))
            .expect("next");
    }

    fn desc_addr(&self, idx: u16) -> GuestAddress {
        GuestAddress(self.desc.0 + 16 * u64::from(idx % self.size))
    }

    fn store(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, self.desc_addr(idx))
            .expect("descriptor slot");
    }

    /// Puts `head` in the available ring.
    pub fn publish(&self, head: u16) {
        let idx = self.avail_idx();
        let slot = GuestAddress(self.avail.0 + 4 + 2 * u64::from(idx % self.size));
        self.mem.write_obj(head, slot).expect("avail slot");
        self.set_avail_idx(idx.wrapping_add(1));
    }

    pub fn avail_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.avail.0 + 2))
            .expect("avail idx")
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail.0 + 2))
            .expect("avail idx");
    }

    /// Used-ring entries (head, length) added since the last call.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let end: u16 = self
            .mem
            .read_obj(GuestAddress(self.used.0 + 2))
            .expect("used idx");
        let mut out = Vec::new();
        while self.used_seen != end {
            let at = self.used.0 + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A small deterministic pseudo-random generator (xorshift64) for fuzz-style tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

impl<'a> Driver<'a> {
    /// Makes a random, mostly hostile chain available: 1–8 descriptors with random
    /// directions, lengths (sometimes huge), addresses (sometimes outside `mem`), random
    /// bytes in the buffers, and now and then a loop or a next index outside the table.
    pub fn add_random(&mut self, rng: &mut Rng) -> u16 {
        let n = 1 + rng.below(8) as usize;
        let bufs: Vec<(GuestAddress, u32, bool)> = (0..n)
            .map(|_| {
                let addr = if rng.chance(8) {
                    GuestAddress(rng.next_u64())
                } else {
                    GuestAddress(TestMemory::BUF_BASE + rng.below(200) * 4096)
                };
                let len = if rng.chance(8) {
                    rng.next_u64() as u32
                } else {
                    rng.below(256) as u32
                };
                (addr, len, rng.chance(2))
            })
            .collect();
        for &(addr, len, _) in &bufs {
            let fill: Vec<u8> = (0..len.min(256)).map(|_| rng.next_u64() as u8).collect();
            let _ = self.mem.write_slice(&fill, addr);
        }
        let head = self.add(&bufs);
        if rng.chance(10) {
            let last = (head + n as u16 - 1) % self.size;
            let target = if rng.chance(2) {
                head
            } else {
                rng.next_u64() as u16
            };
            self.set_next(last, target);
        }
        head
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
