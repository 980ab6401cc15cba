//! The PCI root bus (segment 0, bus 0): 32 slots of one function each, the host bridge in
//! slot 0, configuration access through ports 0xCF8/0xCFC ([`PciConfigIo`]) and through
//! the ECAM window ([`PciConfigMmio`]), and the BARs of every device on the MMIO bus.
//!
//! Devices are added through one function, [`PciRoot::add_device`], which picks a free slot
//! and maps the device's BARs — the same path hot-plug will take. When the guest reprograms
//! a BAR the root moves the device's range on the MMIO bus (and tells the device, for its
//! ioeventfds); a BAR the guest moves onto something else stays where it was.

use std::sync::{Arc, Mutex, MutexGuard};

use super::config::{PciConfig, PciIds, EXT_CONFIG_REGS};
use super::PciDevice;
use crate::{Bus, BusDevice, BusError};

/// Slots (device numbers) on the bus.
pub const BUS_SLOTS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    #[error("no free PCI slot left on bus 0 (32 slots)")]
    NoSlot,
    #[error("no room for a {size:#x}-byte BAR in the PCI MMIO windows")]
    NoMmioSpace { size: u64 },
    #[error("cannot map a BAR: {0}")]
    Bus(#[from] BusError),
}

/// A bump allocator over one address window; allocations are naturally aligned.
#[derive(Debug, Clone)]
struct Window {
    next: u64,
    end: u64,
}

impl Window {
    fn allocate(&mut self, size: u64) -> Option<u64> {
        let at = self.next.checked_next_multiple_of(size)?;
        let end = at.checked_add(size)?;
        (end <= self.end).then(|| {
            self.next = end;
            at
        })
    }
}

struct Slot {
    device: Arc<Mutex<dyn PciDevice>>,
    /// BARs as mapped on the MMIO bus now: (index, address, size).
    mapped: Vec<(usize, u64, u64)>,
}

/// The host bridge at 00.0: identifies the root complex, no BARs.
struct HostBridge(PciConfig);

impl BusDevice for HostBridge {}

impl PciDevice for HostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.0.read(reg)
    }
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.0.write(reg, offset, data)
    }
    fn bars(&self) -> Vec<(usize, u64, u64)> {
        Vec::new()
    }
}

/// Identity of the host bridge: a generic PCIe host bridge (class 06/00/00).
pub const HOST_BRIDGE_IDS: PciIds = PciIds {
    vendor: 0x1b36,
    device: 0x0008,
    revision: 0,
    class: 0x06_0000,
    subsystem_vendor: 0x1b36,
    subsystem: 0x0008,
    interrupt_pin: 0,
};

struct Inner {
    slots: Vec<Option<Slot>>,
    mmio32: Window,
    mmio64: Window,
}

/// The root bus. Shared by the two configuration mechanisms and the device manager.
pub struct PciRoot {
    inner: Mutex<Inner>,
    mmio_bus: Bus,
}

/// BARs at least this large go to the 64-bit window; smaller ones stay below 4 GiB, where
/// every guest (the 32-bit-paging test guest included) reaches them.
const LARGE_BAR: u64 = 64 << 20;

impl PciRoot {
    /// A bus with only the host bridge; BARs are allocated from the 32-bit window
    /// `mmio32` and the 64-bit window `mmio64` (start, size) and mapped on `mmio_bus`.
    pub fn new(mmio_bus: Bus, mmio32: (u64, u64), mmio64: (u64, u64)) -> Self {
        let bridge: Arc<Mutex<HostBridge>> =
            Arc::new(Mutex::new(HostBridge(PciConfig::new(HOST_BRIDGE_IDS))));
        let mut slots: Vec<Option<Slot>> = (0..BUS_SLOTS).map(|_| None).collect();
        slots[0] = Some(Slot {
            device: bridge,
            mapped: Vec::new(),
        });
        Self {
            inner: Mutex::new(Inner {
                slots,
                mmio32: Window {
                    next: mmio32.0,
                    end: mmio32.0 + mmio32.1,
                },
                mmio64: Window {
                    next: mmio64.0,
                    end: mmio64.0 + mmio64.1,
                },
            }),
            mmio_bus,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot the next [`add_device`](Self::add_device) will use.
    pub fn free_slot(&self) -> Option<usize> {
        self.lock().slots.iter().position(Option::is_none)
    }

    /// Space for a BAR of `size` bytes (a power of two), naturally aligned.
    pub fn allocate_bar(&self, size: u64) -> Result<u64, PciRootError> {
        let size = size.max(16).next_power_of_two();
        let mut inner = self.lock();
        let first = if size >= LARGE_BAR {
            inner.mmio64.allocate(size)
        } else {
            inner.mmio32.allocate(size)
        };
        first
            .or_else(|| inner.mmio64.allocate(size))
            .ok_or(PciRootError::NoMmioSpace { size })
    }

    /// Plugs `device` into the first free slot and maps its BARs; returns the slot.
    pub fn add_device<D: PciDevice + 'static>(
        &self,
        device: Arc<Mutex<D>>,
    ) -> Result<usize, PciRootError> {
        let mut inner = self.lock();
        let slot = inner
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciRootError::NoSlot)?;
        let bars = device.lock().unwrap_or_else(|e| e.into_inner()).bars();
        let mut mapped = Vec::new();
        for &(index, addr, size) in &bars {
            if let Err(e) = self.mmio_bus.insert(device.clone(), addr, size) {
                for &(_, a, _) in &mapped {
                    let _ = self.mmio_bus.remove(a);
                }
                return Err(e.into());
            }
            mapped.push((index, addr, size));
        }
        inner.slots[slot] = Some(Slot { device, mapped });
        Ok(slot)
    }

    /// Reads configuration register `reg` of `bus:slot.function`; absent functions read
    /// as all-ones.
    pub fn config_read(&self, bus: u8, slot: usize, function: u8, reg: usize) -> u32 {
        if bus != 0 || function != 0 || reg >= EXT_CONFIG_REGS {
            return u32::MAX;
        }
        let inner = self.lock();
        match inner.slots.get(slot) {
            Some(Some(s)) => s
                .device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(reg),
            _ => u32::MAX,
        }
    }

    /// Writes configuration space, then moves BARs the write reprogrammed.
    pub fn config_write(
        &self,
        bus: u8,
        slot: usize,
        function: u8,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) {
        if bus != 0 || function != 0 || reg >= EXT_CONFIG_REGS {
            return;
        }
        let mut inner = self.lock();
        let Some(Some(s)) = inner.slots.get_mut(slot) else {
            return;
        };
        let mut dev = s.device.lock().unwrap_or_else(|e| e.into_inner());
        dev.config_write(reg, offset, data);
        for (index, addr, size) in dev.bars() {
            let Some(m) = s.mapped.iter_mut().find(|m| m.0 == index) else {
                continue;
            };
            if m.1 == addr || m.2 != size {
                continue;
            }
            match self.mmio_bus.relocate(m.1, addr) {
                Ok(()) => {
                    log::debug!("PCI 00:{slot:02x}.0 BAR{index}: {:#x} -> {addr:#x}", m.1);
                    let old = m.1;
                    m.1 = addr;
                    dev.bar_moved(index, old, addr);
                }
                Err(e) => log::warn!(
                    "PCI 00:{slot:02x}.0 BAR{index}: guest moved it to {addr:#x}: {e}; \
                     it stays at {:#x}",
                    m.1
                ),
            }
        }
    }
}

/// Configuration mechanism #1: the address register at 0xCF8 and the data window at
/// 0xCFC..0xCFF (placed on the I/O bus at 0xCF8, 8 bytes).
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root, address: 0 }
    }

    /// (bus, slot, function, register) the address register selects, if enabled.
    fn target(&self) -> Option<(u8, usize, u8, usize)> {
        let a = self.address;
        (a & 0x8000_0000 != 0).then_some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as usize,
            ((a >> 8) & 0x7) as u8,
            ((a >> 2) & 0x3f) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 if offset as usize - 4 + data.len() <= 4 => {
                let v = match self.target() {
                    Some((b, s, f, r)) => self.root.config_read(b, s, f, r),
                    None => u32::MAX,
                };
                let at = offset as usize - 4;
                data.copy_from_slice(&v.to_le_bytes()[at..at + data.len()]);
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                // Bits 1:0 are reserved (read as 0); bits 30:24 reserved too.
                let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
                self.address = v & 0x80ff_fffc;
            }
            4..=7 if offset as usize - 4 + data.len() <= 4 => {
                if let Some((b, s, f, r)) = self.target() {
                    self.root
                        .config_write(b, s, f, r, offset as usize - 4, data);
                }
            }
            _ => {}
        }
    }
}

/// Enhanced configuration access (ECAM): 4 KiB of configuration space per function,
/// `bus << 20 | device << 15 | function << 12 | register`, in an MMIO window.
pub struct PciConfigMmio {
    root: Arc<PciRoot>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }

    fn decode(offset: u64, len: usize) -> Option<(u8, usize, u8, usize, usize)> {
        let in_reg = (offset & 3) as usize;
        // Accesses of 1, 2 or 4 bytes that do not cross a dword.
        if !matches!(len, 1 | 2 | 4) || in_reg + len > 4 {
            return None;
        }
        Some((
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1f) as usize,
            ((offset >> 12) & 0x7) as u8,
            ((offset & 0xfff) >> 2) as usize,
            in_reg,
        ))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match Self::decode(offset, data.len()) {
            Some((b, s, f, r, at)) => {
                let v = self.root.config_read(b, s, f, r);
                data.copy_from_slice(&v.to_le_bytes()[at..at + data.len()]);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((b, s, f, r, at)) = Self::decode(offset, data.len()) {
            self.root.config_write(b, s, f, r, at, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::BarKind;

    /// A device with one 64-bit BAR that records accesses and moves.
    struct Dummy {
        config: PciConfig,
        moves: Vec<(u64, u64)>,
        writes: Vec<(u64, u64)>,
    }
    impl BusDevice for Dummy {
        fn write(&mut self, base: u64, offset: u64, _data: &[u8]) {
            self.writes.push((base, offset));
        }
    }
    impl PciDevice for Dummy {
        fn config_read(&mut self, reg: usize) -> u32 {
            self.config.read(reg)
        }
        fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
            self.config.write(reg, offset, data)
        }
        fn bars(&self) -> Vec<(usize, u64, u64)> {
            self.config.decoded_bars()
        }
        fn bar_moved(&mut self, _index: usize, old: u64, new: u64) {
            self.moves.push((old, new));
        }
    }

    fn setup() -> (Arc<PciRoot>, Bus, Arc<Mutex<Dummy>>) {
        let bus = Bus::new();
        let root = Arc::new(PciRoot::new(
            bus.clone(),
            (0xc000_0000, 0x2000_0000),
            (0x1_0000_0000, 0x1_0000_0000),
        ));
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0xff_0000,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
            interrupt_pin: 1,
        });
        let addr = root.allocate_bar(0x4000).unwrap();
        assert_eq!(addr, 0xc000_0000);
        config.add_bar(0, addr, 0x4000, BarKind::Mem64);
        let dev = Arc::new(Mutex::new(Dummy {
            config,
            moves: vec![],
            writes: vec![],
        }));
        assert_eq!(root.add_device(dev.clone()).unwrap(), 1);
        (root, bus, dev)
    }

    fn cf8(io: &mut PciConfigIo, slot: u32, reg: u32) {
        io.write(
            0xcf8,
            0,
            &(0x8000_0000 | slot << 11 | reg << 2).to_le_bytes(),
        );
    }

    #[test]
    fn port_mechanism_reads_ids_and_misses_read_all_ones() {
        let (root, _bus, _dev) = setup();
        let mut io = PciConfigIo::new(root);
        let mut d = [0u8; 4];
        cf8(&mut io, 0, 0);
        io.read(0xcf8, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36, "host bridge");
        cf8(&mut io, 1, 0);
        io.read(0xcf8, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1044_1af4);
        let mut w = [0u8; 2];
        io.read(0xcf8, 6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1044);
        // Empty slot, other functions, other buses, disabled address: all-ones.
        for a in [
            0x8000_0000u32 | 2 << 11,
            0x8000_0000 | 1 << 11 | 1 << 8,
            0x8001_0000,
            1 << 11,
        ] {
            io.write(0xcf8, 0, &a.to_le_bytes());
            io.read(0xcf8, 4, &mut d);
            assert_eq!(d, [0xff; 4], "{a:#x}");
        }
        // The address register reads back (reserved bits clear).
        io.write(0xcf8, 0, &0xffff_ffffu32.to_le_bytes());
        io.read(0xcf8, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x80ff_fffc);
        // Odd accesses: ignored / all-ones, no panic.
        io.write(0xcf8, 1, &[1]);
        io.write(0xcf8, 6, &[1, 2, 3, 4]);
        let mut b = [0u8; 1];
        io.read(0xcf8, 2, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn guest_moves_a_bar_through_ecam() {
        let (root, bus, dev) = setup();
        let mut ecam = PciConfigMmio::new(root.clone());
        let bar0 = (1 << 15) | 0x10;
        let mut d = [0u8; 4];
        ecam.read(0, bar0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xc000_0004);
        // Sizing leaves the BAR where it is.
        ecam.write(0, bar0, &u32::MAX.to_le_bytes());
        ecam.read(0, bar0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_c004);
        assert!(bus.write(0xc000_0010, &[1]));
        ecam.write(0, bar0, &0xc000_0004u32.to_le_bytes());
        // A real move: the bus follows, the device is told.
        ecam.write(0, bar0, &0xd000_0000u32.to_le_bytes());
        assert!(!bus.write(0xc000_0010, &[1]));
        assert!(bus.write(0xd000_0010, &[1]));
        assert_eq!(dev.lock().unwrap().moves, vec![(0xc000_0000, 0xd000_0000)]);
        assert_eq!(
            dev.lock().unwrap().writes,
            vec![(0xc000_0000, 0x10), (0xd000_0000, 0x10)]
        );
        // Onto another device (the ECAM window itself): refused, stays put.
        bus.insert(
            Arc::new(Mutex::new(Dummy {
                config: PciConfig::new(HOST_BRIDGE_IDS),
                moves: vec![],
                writes: vec![],
            })),
            0xe000_0000,
            0x1000,
        )
        .unwrap();
        ecam.write(0, bar0, &0xe000_0000u32.to_le_bytes());
        assert!(bus.write(0xd000_0010, &[1]));
        assert_eq!(dev.lock().unwrap().moves.len(), 1);
        // Extended space of an existing function reads 0; odd-sized accesses all-ones.
        ecam.read(0, (1 << 15) | 0x100, &mut d);
        assert_eq!(d, [0; 4]);
        let mut q = [0u8; 8];
        ecam.read(0, 1 << 15, &mut q);
        assert_eq!(q, [0xff; 8]);
        ecam.read(0, (1 << 15) | 3, &mut d[..2]);
        assert_eq!(&d[..2], &[0xff; 2]);
        ecam.write(0, (1 << 15) | 3, &[1, 2]);
    }

    #[test]
    fn slots_and_windows_run_out_cleanly() {
        let bus = Bus::new();
        let root = PciRoot::new(bus, (0xc000_0000, 0x1_0000), (0x1_0000_0000, 0x10_0000));
        assert_eq!(root.allocate_bar(0x8000).unwrap(), 0xc000_0000);
        assert_eq!(root.allocate_bar(0x8000).unwrap(), 0xc000_8000);
        // 32-bit window full: the 64-bit one takes it.
        assert_eq!(root.allocate_bar(0x8000).unwrap(), 0x1_0000_0000);
        assert!(matches!(
            root.allocate_bar(1 << 30),
            Err(PciRootError::NoMmioSpace { .. })
        ));
        for _ in 1..BUS_SLOTS {
            let d = Arc::new(Mutex::new(Dummy {
                config: PciConfig::new(HOST_BRIDGE_IDS),
                moves: vec![],
                writes: vec![],
            }));
            root.add_device(d).unwrap();
        }
        let d = Arc::new(Mutex::new(Dummy {
            config: PciConfig::new(HOST_BRIDGE_IDS),
            moves: vec![],
            writes: vec![],
        }));
        assert!(matches!(root.add_device(d), Err(PciRootError::NoSlot)));
    }
}
