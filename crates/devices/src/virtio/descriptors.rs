//! Taking descriptor chains off a queue with every guest-supplied value checked: the
//! available index, the head index, the number of descriptors, each buffer's range in
//! guest memory, and the rule that device-readable buffers come before device-writable
//! ones. virtio-queue walks the rings; what it tolerates silently (a chain cut short by a
//! loop, a buffer outside RAM) is an error here, so a device can answer it or mark itself
//! broken instead of acting on half a request.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::GuestMemory;

/// Why a queue or one of its chains cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the available ring index moved by more than the queue size")]
    AvailIndex,
    #[error("the queue's rings cannot be read or written: {0}")]
    Ring(String),
    #[error("chain head {head} is outside the queue of size {size}")]
    Head { head: u16, size: u16 },
    #[error("chain is empty")]
    Empty,
    #[error("chain has more than {0} descriptors (or loops)")]
    TooLong(usize),
    #[error("a device-readable buffer follows a device-writable one")]
    Order,
    #[error("buffer {addr:#x}+{len:#x} is not in guest RAM")]
    OutOfRange { addr: u64, len: u32 },
    #[error("chain is longer than 4 GiB")]
    Overflow,
    #[error("chain is cut short (a next index outside the table, a loop or a bad indirect table)")]
    Truncated,
}

/// One checked descriptor chain: its head (for the used ring) and its buffers, each inside
/// guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<(GuestAddress, u32)>,
    pub writable: Vec<(GuestAddress, u32)>,
}

impl Chain {
    /// Total bytes the device may read.
    pub fn readable_len(&self) -> usize {
        self.readable.iter().map(|&(_, l)| l as usize).sum()
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> usize {
        self.writable.iter().map(|&(_, l)| l as usize).sum()
    }

    /// Reads up to `max` bytes of the readable part, from its start.
    pub fn read(&self, mem: &GuestMemory, max: usize) -> Result<Vec<u8>, ChainError> {
        let want = self.readable_len().min(max);
        let mut out = vec![0u8; want];
        let mut done = 0;
        for &(addr, len) in &self.readable {
            if done == want {
                break;
            }
            let n = (len as usize).min(want - done);
            mem.read_slice(&mut out[done..done + n], addr)
                .map_err(|_| ChainError::OutOfRange { addr: addr.0, len })?;
            done += n;
        }
        Ok(out)
    }

    /// Writes `data` into the writable part starting `offset` bytes in; returns how many
    /// bytes fit.
    pub fn write_at(
        &self,
        mem: &GuestMemory,
        mut offset: usize,
        mut data: &[u8],
    ) -> Result<usize, ChainError> {
        let mut written = 0;
        for &(addr, len) in &self.writable {
            if data.is_empty() {
                break;
            }
            let len = len as usize;
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = (len - offset).min(data.len());
            let at = GuestAddress(addr.0 + offset as u64);
            mem.write_slice(&data[..n], at)
                .map_err(|_| ChainError::OutOfRange {
                    addr: addr.0,
                    len: len as u32,
                })?;
            offset = 0;
            data = &data[n..];
            written += n;
        }
        Ok(written)
    }
}

/// Takes the next chain the driver made available, if any, and checks it: at most
/// `max_descriptors` descriptors, every buffer inside guest RAM, readable buffers first.
///
/// `Err` for a chain means the chain was consumed (its head is in the error's context:
/// [`pop_chain`] returns it with the head so the caller can still return it to the driver).
pub fn pop_chain(
    queue: &mut Queue,
    mem: &GuestMemory,
    max_descriptors: usize,
) -> Result<Option<Chain>, (Option<u16>, ChainError)> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| (None, ChainError::Ring(e.to_string())))?;
    if avail == Wrapping(queue.next_avail()) {
        return Ok(None);
    }
    let size = queue.size();
    if (avail - Wrapping(queue.next_avail())).0 > size {
        return Err((None, ChainError::AvailIndex));
    }
    let chain = {
        let mut iter = queue
            .iter(mem)
            .map_err(|e| (None, ChainError::Ring(e.to_string())))?;
        match iter.next() {
            Some(c) => c,
            // The available ring entry could not be read.
            None => return Err((None, ChainError::Ring("unreadable available ring".into()))),
        }
    };
    let head = chain.head_index();
    if head >= size {
        return Err((None, ChainError::Head { head, size }));
    }
    check_chain(chain, mem, max_descriptors)
        .map(Some)
        .map_err(|e| (Some(head), e))
}

fn check_chain<M>(
    chain: virtio_queue::DescriptorChain<M>,
    mem: &GuestMemory,
    max_descriptors: usize,
) -> Result<Chain, ChainError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut out = Chain {
        head: chain.head_index(),
        readable: Vec::new(),
        writable: Vec::new(),
    };
    let mut total: u32 = 0;
    // virtio-queue ends the iteration quietly where a chain goes wrong; a last descriptor
    // that still says NEXT is how that shows.
    let mut wants_next = false;
    for (count, desc) in chain.enumerate() {
        if count >= max_descriptors {
            return Err(ChainError::TooLong(max_descriptors));
        }
        wants_next = desc.has_next();
        let (addr, len) = (desc.addr(), desc.len());
        total = total.checked_add(len).ok_or(ChainError::Overflow)?;
        if !GuestMemoryBackend::check_range(mem, addr, len as usize) {
            return Err(ChainError::OutOfRange { addr: addr.0, len });
        }
        if desc.is_write_only() {
            out.writable.push((addr, len));
        } else if !out.writable.is_empty() {
            return Err(ChainError::Order);
        } else {
            out.readable.push((addr, len));
        }
    }
    if out.readable.is_empty() && out.writable.is_empty() {
        return Err(ChainError::Empty);
    }
    if wants_next {
        return Err(ChainError::Truncated);
    }
    Ok(out)
}

/// Puts a finished chain in the used ring.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
) -> Result<(), ChainError> {
    queue
        .add_used(mem, head, len)
        .map_err(|e| ChainError::Ring(e.to_string()))
}

/// Whether the driver wants an interrupt for what was just used (EVENT_IDX aware); errors
/// count as "yes" so that a driver is never left waiting.
pub fn needs_notification(queue: &mut Queue, mem: &GuestMemory) -> bool {
    queue.needs_notification(mem).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{Driver, TestMemory};

    #[test]
    fn chains_are_checked() {
        let mem = TestMemory::new();
        let mut d = Driver::new(&mem, 0, 16);
        let mut q = d.queue();
        let a = mem.buf(0);
        let b = mem.buf(1);
        d.add(&[(a, 8, false), (b, 16, true)]);
        let c = pop_chain(&mut q, &mem, 4).unwrap().unwrap();
        assert_eq!(c.readable, vec![(a, 8)]);
        assert_eq!(c.writable, vec![(b, 16)]);
        assert_eq!((c.readable_len(), c.writable_len()), (8, 16));
        assert_eq!(pop_chain(&mut q, &mem, 4).unwrap(), None);

        // Out of RAM, wrong order, too long, and a loop.
        d.add(&[(GuestAddress(1 << 40), 8, false)]);
        let (head, e) = pop_chain(&mut q, &mem, 4).unwrap_err();
        assert!(head.is_some());
        assert!(matches!(e, ChainError::OutOfRange { .. }), "{e}");
        d.add(&[(b, 16, true), (a, 8, false)]);
        assert_eq!(pop_chain(&mut q, &mem, 4).unwrap_err().1, ChainError::Order);
        d.add(&[(a, 1, false); 5]);
        assert_eq!(
            pop_chain(&mut q, &mem, 4).unwrap_err().1,
            ChainError::TooLong(4)
        );
        let head = d.add(&[(a, 1, false), (a, 1, false)]);
        d.set_next(head + 1, head); // the second descriptor points back at the first
        assert_eq!(
            pop_chain(&mut q, &mem, 8).unwrap_err().1,
            ChainError::TooLong(8)
        );
        // The same loop with a cap above the queue size, and a next index outside the table.
        let head = d.add(&[(a, 1, false), (a, 1, false)]);
        d.set_next(head + 1, head);
        assert_eq!(
            pop_chain(&mut q, &mem, 64).unwrap_err().1,
            ChainError::Truncated
        );
        let head = d.add(&[(a, 1, false)]);
        d.set_next(head, 500);
        assert_eq!(
            pop_chain(&mut q, &mem, 64).unwrap_err().1,
            ChainError::Truncated
        );
        // A head outside the table and an available index that jumps too far.
        d.publish(99);
        assert!(matches!(
            pop_chain(&mut q, &mem, 4).unwrap_err().1,
            ChainError::Head { head: 99, .. }
        ));
        d.set_avail_idx(d.avail_idx().wrapping_add(100));
        assert_eq!(
            pop_chain(&mut q, &mem, 4).unwrap_err().1,
            ChainError::AvailIndex
        );
    }

    #[test]
    fn reads_and_writes_span_buffers() {
        let mem = TestMemory::new();
        let mut d = Driver::new(&mem, 0, 16);
        let mut q = d.queue();
        let (a, b) = (mem.buf(0), mem.buf(1));
        mem.write_slice(b"hello", a).unwrap();
        mem.write_slice(b" world", b).unwrap();
        d.add(&[(a, 5, false), (b, 6, false)]);
        let c = pop_chain(&mut q, &mem, 4).unwrap().unwrap();
        assert_eq!(c.read(&mem, 100).unwrap(), b"hello world");
        assert_eq!(c.read(&mem, 7).unwrap(), b"hello w");
        d.add(&[(a, 3, true), (b, 4, true)]);
        let c = pop_chain(&mut q, &mem, 4).unwrap().unwrap();
        assert_eq!(c.write_at(&mem, 2, b"abcdefgh").unwrap(), 5);
        let mut out = [0u8; 4];
        mem.read_slice(&mut out, b).unwrap();
        assert_eq!(&out, b"bcde");
        let mut out = [0u8; 3];
        mem.read_slice(&mut out, a).unwrap();
        assert_eq!(&out[2..], b"a");
        add_used(&mut q, &mem, c.head, 5).unwrap();
        assert_eq!(d.used(), vec![(c.head, 5)]);
    }
}
