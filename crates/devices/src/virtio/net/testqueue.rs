//! Test helper: the driver's side of a split virtqueue in guest memory — lay out the rings,
//! publish descriptor chains (well-formed or hostile), read back the used ring.

use vm_memory::{Bytes, GuestAddress};

use crate::virtio::{GuestMemory, Queue, QueueT};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One split virtqueue laid out at `base`: descriptor table, available ring, used ring.
pub struct TestQueue {
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl TestQueue {
    pub fn new(base: u64, size: u16) -> TestQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        // avail: flags, idx, ring[size], used_event; used aligned to 4.
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        TestQueue {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// A `Queue` as the transport would hand it over.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` as is.
    pub fn write_desc(
        &self,
        mem: &GuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let a = GuestAddress(self.desc + 16 * u64::from(index));
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, a).unwrap();
    }

    /// Makes the chain starting at `head` available and bumps the index.
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    /// Writes the available index directly (hostile tests).
    pub fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Adds a chain of `(addr, len, device_writable)` pieces using the next free
    /// descriptors and publishes it; returns the head index.
    pub fn add(&mut self, mem: &GuestMemory, pieces: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in pieces.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == pieces.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(mem, idx, addr, len, flags, (idx + 1) % self.size);
        }
        self.next_desc = (self.next_desc + pieces.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// Used entries (id, len) the device added since the last call.
    pub fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.used + 4 + 8 * slot;
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// `avail_event` (EVENT_IDX): the available index at which the device wants a kick.
    pub fn avail_event(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 4 + 8 * u64::from(self.size)))
            .unwrap()
    }

    /// The used index as the device last wrote it.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }
}

pub const DESC_F_NEXT: u16 = F_NEXT;
pub const DESC_F_WRITE: u16 = F_WRITE;
