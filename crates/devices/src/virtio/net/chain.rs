//! Descriptor-chain parsing for virtio-net: every address, length, direction and count the
//! guest supplies is checked here, before a byte moves.
//!
//! virtio-queue walks the rings, but its chain iterator simply stops on a problem (a loop
//! longer than the queue, an unreadable descriptor, a bad indirect table). A chain whose
//! last descriptor still says NEXT therefore did not end properly: [`ChainError::Broken`].
//!
//! Errors come in two kinds ([`ChainError::is_fatal`]): a driver that breaks the ring
//! protocol (broken chain, address outside RAM, wrong direction) gets DEVICE_NEEDS_RESET;
//! a well-formed request the device will not carry (too long, too many pieces, shorter
//! than the header) is dropped and the buffer handed back, like a NIC dropping a frame.

use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::BS;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions, VolatileSlice};

use super::tap::VNET_HDR_LEN;

/// Longest Ethernet frame carried, excluding the virtio-net header: a 64 KiB IP packet
/// (the GSO limit) plus an Ethernet header with one VLAN tag.
pub const MAX_FRAME: usize = 65_535 + 14 + 4;
/// Longest transmit chain accepted, header included.
pub const MAX_TX_LEN: usize = VNET_HDR_LEN + MAX_FRAME;
/// Most descriptors in one chain. Linux sends at most MAX_SKB_FRAGS + 2 (19) per frame;
/// this leaves room for other drivers while bounding per-frame work.
pub const MAX_CHAIN_DESCRIPTORS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain does not end (a loop, a bad index or indirect table, or an unreadable descriptor)")]
    Broken,
    #[error("descriptor {index} ({addr:#x}, {len} bytes) is outside guest memory")]
    OutOfRange { index: usize, addr: u64, len: u32 },
    #[error("descriptor {0} points the wrong way (device-writable in a transmit chain or device-readable in a receive chain)")]
    WrongDirection(usize),
    #[error("chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("transmit chain is longer than {MAX_TX_LEN} bytes")]
    TooLong,
    #[error(
        "transmit chain of {0} bytes is shorter than the {VNET_HDR_LEN}-byte virtio-net header"
    )]
    TooShort(usize),
    #[error("control command has no device-writable byte for its ack")]
    NoAck,
}

impl ChainError {
    /// Whether the driver broke the ring protocol (the device then needs a reset), as
    /// opposed to a request that is merely dropped.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ChainError::Broken
                | ChainError::OutOfRange { .. }
                | ChainError::WrongDirection(_)
                | ChainError::NoAck
        )
    }
}

/// Checks one descriptor: direction, and that its whole range is guest RAM.
fn check<M: GuestMemory>(
    mem: &M,
    index: usize,
    d: &Descriptor,
    writable: bool,
) -> Result<(), ChainError> {
    if d.is_write_only() != writable {
        return Err(ChainError::WrongDirection(index));
    }
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize, access) {
        return Err(ChainError::OutOfRange {
            index,
            addr: d.addr().0,
            len: d.len(),
        });
    }
    Ok(())
}

/// Most guest memory slices one frame is sent from: the kernel's limit on a `writev`
/// (UIO_MAXIOV). A chain has at most [`MAX_CHAIN_DESCRIPTORS`] pieces, but one piece may
/// straddle guest memory regions and so need several slices.
pub const MAX_TX_SLICES: usize = 1024;

/// A slice of guest memory as `M` hands it out.
pub type GuestSlice<'m, M> = VolatileSlice<'m, BS<'m, <M as GuestMemory>::Bitmap>>;

/// Checks a transmit chain (virtio-net header + frame) and collects, in order, the guest
/// memory slices that hold it into `out` (cleared first), without copying a byte; returns
/// the chain's length. Every slice lies inside guest RAM and is device-readable.
pub fn tx_slices<'m, M: GuestMemory>(
    mem: &'m M,
    chain: impl Iterator<Item = Descriptor>,
    out: &mut Vec<GuestSlice<'m, M>>,
) -> Result<usize, ChainError> {
    out.clear();
    let mut total = 0usize;
    let mut last_next = true;
    for (index, d) in chain.enumerate() {
        if index >= MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooManyDescriptors);
        }
        check(mem, index, &d, false)?;
        let len = d.len() as usize;
        if total + len > MAX_TX_LEN {
            return Err(ChainError::TooLong);
        }
        let out_of_range = || ChainError::OutOfRange {
            index,
            addr: d.addr().0,
            len: d.len(),
        };
        if len > 0 {
            let slices = mem
                .get_slices(d.addr(), len, Permissions::Read)
                .map_err(|_| out_of_range())?;
            let mut got = 0;
            for slice in slices {
                let slice = slice.map_err(|_| out_of_range())?;
                if out.len() == MAX_TX_SLICES {
                    return Err(ChainError::TooManyDescriptors);
                }
                got += slice.len();
                out.push(slice);
            }
            // The iterator covers the whole range or reports an error; make sure.
            if got != len {
                return Err(out_of_range());
            }
        }
        total += len;
        last_next = d.has_next();
    }
    if last_next {
        return Err(ChainError::Broken);
    }
    if total < VNET_HDR_LEN {
        return Err(ChainError::TooShort(total));
    }
    Ok(total)
}

/// Copies a transmit chain (virtio-net header + frame) into `out`, which is cleared first;
/// the same checks as [`tx_slices`] (the device itself sends straight from the slices).
pub fn gather_tx<M: GuestMemory>(
    mem: &M,
    chain: impl Iterator<Item = Descriptor>,
    out: &mut Vec<u8>,
) -> Result<(), ChainError> {
    out.clear();
    let mut slices = Vec::new();
    let total = tx_slices(mem, chain, &mut slices)?;
    out.resize(total, 0);
    let mut at = 0;
    for s in &slices {
        let n = s.len();
        s.copy_to(&mut out[at..at + n]);
        at += n;
    }
    Ok(())
}

/// A checked receive buffer: the device-writable pieces of one chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RxBuffer {
    pub head: u16,
    segments: Vec<(GuestAddress, u32)>,
    /// Total writable bytes (a chain cannot exceed 4 GiB: virtio-queue stops there).
    pub capacity: usize,
}

impl RxBuffer {
    /// A buffer that can hold nothing (an unusable chain handed back empty).
    pub fn unusable(head: u16) -> RxBuffer {
        RxBuffer {
            head,
            ..Default::default()
        }
    }

    /// Checks a receive chain: all pieces device-writable and inside guest RAM.
    pub fn parse<M: GuestMemory>(
        mem: &M,
        head: u16,
        chain: impl Iterator<Item = Descriptor>,
    ) -> Result<RxBuffer, ChainError> {
        let mut buf = RxBuffer {
            head,
            segments: Vec::new(),
            capacity: 0,
        };
        let mut last_next = true;
        for (index, d) in chain.enumerate() {
            if index >= MAX_CHAIN_DESCRIPTORS {
                return Err(ChainError::TooManyDescriptors);
            }
            check(mem, index, &d, true)?;
            if d.len() > 0 {
                buf.segments.push((d.addr(), d.len()));
                buf.capacity += d.len() as usize;
            }
            last_next = d.has_next();
        }
        if last_next {
            return Err(ChainError::Broken);
        }
        Ok(buf)
    }

    /// Writes `data` from the start of the buffer; returns the bytes written (at most the
    /// capacity). The ranges were checked by [`RxBuffer::parse`]; guest RAM does not shrink.
    pub fn write<M: GuestMemory>(&self, mem: &M, data: &[u8]) -> Result<usize, ChainError> {
        let mut done = 0;
        for (index, &(addr, len)) in self.segments.iter().enumerate() {
            if done == data.len() {
                break;
            }
            let n = (len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + n], addr)
                .map_err(|_| ChainError::OutOfRange {
                    index,
                    addr: addr.0,
                    len,
                })?;
            done += n;
        }
        Ok(done)
    }
}

/// Longest control command accepted (class, command and data; a MAC table could be long,
/// but vireo only takes the 4-byte VQ_PAIRS_SET).
pub const MAX_CTRL_LEN: usize = 4096;

/// Checks a control-queue chain: device-readable pieces (class, command, data) then
/// device-writable ones, the first byte of which takes the ack. Returns the command bytes
/// (at most [`MAX_CTRL_LEN`]) and where the ack goes.
pub fn parse_ctrl<M: GuestMemory>(
    mem: &M,
    chain: impl Iterator<Item = Descriptor>,
) -> Result<(Vec<u8>, GuestAddress), ChainError> {
    let mut cmd = Vec::new();
    let mut ack = None;
    let mut last_next = true;
    for (index, d) in chain.enumerate() {
        if index >= MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooManyDescriptors);
        }
        let writable = d.is_write_only();
        // Readable pieces come first (virtio 1.x §2.7.4.2).
        if !writable && ack.is_some() {
            return Err(ChainError::WrongDirection(index));
        }
        check(mem, index, &d, writable)?;
        if writable {
            if ack.is_none() && d.len() > 0 {
                ack = Some(d.addr());
            }
        } else {
            let take = (d.len() as usize).min(MAX_CTRL_LEN - cmd.len());
            let start = cmd.len();
            cmd.resize(start + take, 0);
            mem.read_slice(&mut cmd[start..], d.addr())
                .map_err(|_| ChainError::OutOfRange {
                    index,
                    addr: d.addr().0,
                    len: d.len(),
                })?;
        }
        last_next = d.has_next();
    }
    if last_next {
        return Err(ChainError::Broken);
    }
    ack.map(|a| (cmd, a)).ok_or(ChainError::NoAck)
}
