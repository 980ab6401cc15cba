//! Address-range buses (port I/O and MMIO) on which vCPU exits are dispatched.
//!
//! A device occupies one or more non-overlapping ranges; an access is routed to the device
//! whose range contains it, with the offset relative to the range's base. Accesses that hit
//! no device are ignored on writes and read as all-ones, as on a PC's floating bus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable over a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let _ = (base, offset);
        data.fill(0xff);
    }
    /// Writes `data` at `offset` from the start of the device's range `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let _ = (base, offset, data);
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error(
        "bus range {base:#x}+{len:#x} overlaps a device already at {other_base:#x}+{other_len:#x}"
    )]
    Overlap {
        base: u64,
        len: u64,
        other_base: u64,
        other_len: u64,
    },
}

/// A device as the buses hold it: shared between vCPU threads and the VMM.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of devices keyed by the address ranges they decode.
#[derive(Default, Clone)]
pub struct Bus {
    // base -> (len, device)
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The only candidates for overlap: the range starting at or below `base`, and any
        // range starting inside the new one.
        let below = self.ranges.range(..=base).next_back();
        let inside = self.ranges.range(base..end).next();
        for (&other_base, &(other_len, _)) in below.into_iter().chain(inside) {
            if other_base < end && base < other_base + other_len {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base,
                    other_len,
                });
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the range.
        (offset.checked_add(size as u64)? <= *len).then_some((base, dev))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) when no device decodes it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, dev)) => {
                lock(dev).read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device decodes it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, dev)) => {
                lock(dev).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panicking vCPU thread is still
/// usable (its state is plain data), so the poison is ignored rather than spread.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.writes.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_relative_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.write(0x3fb, &[0x80]));
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert_eq!(dev.lock().unwrap().writes, vec![(0x3f8, 3, vec![0x80])]);
    }

    #[test]
    fn unclaimed_reads_float_high_and_partial_overlaps_miss() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 1)
            .unwrap();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x60, &mut b), "2-byte access past a 1-byte range");
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.write(0x61, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d(), 0x70, 2).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x71, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0x6f, 2),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0x10, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(d(), 0x72, 1).unwrap();
        bus.insert(d(), 0x6f, 1).unwrap();
    }
}
