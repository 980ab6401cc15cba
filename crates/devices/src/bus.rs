//! Address-range buses (port I/O and MMIO) on which vCPU exits are dispatched.
//!
//! A device occupies one or more non-overlapping ranges; an access is routed to the device
//! whose range contains it, with the offset relative to the range's base. Accesses that hit
//! no device are ignored on writes and read as all-ones, as on a PC's floating bus.
//!
//! Ranges can be added, removed and moved while vCPUs run (a guest reprogramming a PCI
//! BAR moves the device's range; hot-plug adds one): the map sits behind a read-write lock
//! that is released before the device itself is locked, so a device may move its own
//! range from inside an access.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

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
    #[error("no bus range starts at {0:#x}")]
    NotFound(u64),
}

/// A device as the buses hold it: shared between vCPU threads and the VMM.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

type RangeMap = BTreeMap<u64, (u64, SharedDevice)>;

/// A set of devices keyed by the address ranges they decode. Clones share the same map.
#[derive(Default, Clone)]
pub struct Bus {
    // base -> (len, device)
    ranges: Arc<RwLock<RangeMap>>,
}

fn check_free(ranges: &RangeMap, base: u64, len: u64) -> Result<(), BusError> {
    let end = base
        .checked_add(len)
        .filter(|_| len > 0)
        .ok_or(BusError::InvalidRange { base, len })?;
    // The only candidates for overlap: the range starting at or below `base`, and any
    // range starting inside the new one.
    let below = ranges.range(..=base).next_back();
    let inside = ranges.range(base..end).next();
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
    Ok(())
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    fn map_read(&self) -> std::sync::RwLockReadGuard<'_, RangeMap> {
        self.ranges.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_write(&self) -> std::sync::RwLockWriteGuard<'_, RangeMap> {
        self.ranges.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let mut ranges = self.map_write();
        check_free(&ranges, base, len)?;
        ranges.insert(base, (len, device));
        Ok(())
    }

    /// Removes every device (a boot's teardown: devices that refer back to the bus, like
    /// the PCI root bus, would otherwise keep it and themselves alive).
    pub fn clear(&self) {
        self.ranges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Removes the range starting at `base`, returning its device.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        self.map_write()
            .remove(&base)
            .map(|(_, dev)| dev)
            .ok_or(BusError::NotFound(base))
    }

    /// Moves the range starting at `old_base` to `new_base` (same length, same device).
    /// On error the range stays where it was.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut ranges = self.map_write();
        let (len, dev) = ranges
            .remove(&old_base)
            .ok_or(BusError::NotFound(old_base))?;
        if let Err(e) = check_free(&ranges, new_base, len) {
            ranges.insert(old_base, (len, dev));
            return Err(e);
        }
        ranges.insert(new_base, (len, dev));
        Ok(())
    }

    /// The range starting at `base`, if any: its length.
    pub fn range_len(&self, base: u64) -> Option<u64> {
        self.map_read().get(&base).map(|(len, _)| *len)
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, SharedDevice)> {
        let ranges = self.map_read();
        let (&base, (len, dev)) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the range.
        (offset.checked_add(size as u64)? <= *len).then(|| (base, dev.clone()))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) when no device decodes it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, dev)) => {
                lock(&dev).read(base, addr - base, data);
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
                lock(&dev).write(base, addr - base, data);
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
        let bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.write(0x3fb, &[0x80]));
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert_eq!(dev.lock().unwrap().writes, vec![(0x3f8, 3, vec![0x80])]);
    }

    #[test]
    fn unclaimed_reads_float_high_and_partial_overlaps_miss() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 1)
            .unwrap();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x60, &mut b), "2-byte access past a 1-byte range");
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.write(0x61, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let bus = Bus::new();
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

    #[test]
    fn ranges_move_and_go() {
        let bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x1000, 0x100).unwrap();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x2000, 0x100)
            .unwrap();
        // Onto another range: refused, and the range stays.
        assert!(matches!(
            bus.relocate(0x1000, 0x1f80),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.write(0x1004, &[1]));
        bus.relocate(0x1000, 0x3000).unwrap();
        assert!(!bus.write(0x1004, &[2]));
        assert!(bus.write(0x3004, &[3]));
        assert_eq!(
            a.lock().unwrap().writes,
            vec![(0x1000, 4, vec![1]), (0x3000, 4, vec![3])]
        );
        assert_eq!(
            bus.relocate(0x1000, 0x4000),
            Err(BusError::NotFound(0x1000))
        );
        // Clones share the map.
        let clone = bus.clone();
        clone.remove(0x3000).unwrap();
        assert!(!bus.write(0x3004, &[4]));
        assert_eq!(bus.range_len(0x2000), Some(0x100));
    }
}
