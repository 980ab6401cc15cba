//! A type-0 PCI configuration space: the 64-byte header, up to six memory BARs, and a
//! capability list in the rest of the first 256 bytes. PCIe extended space (256..4096)
//! reads as 0 (no extended capabilities).
//!
//! Guest writes go through per-dword write masks, so read-only fields (ids, class, status,
//! capability contents the device does not let the guest change) stay put. BARs follow the
//! sizing protocol: writing all-ones makes the next read return the size mask, and the BAR
//! keeps decoding at its previous address until a real address is written.

/// Registers (dwords) of the conventional configuration space.
pub const CONFIG_REGS: usize = 64;
/// Registers of the whole (PCIe-sized) configuration space.
pub const EXT_CONFIG_REGS: usize = 1024;
/// First byte of the capability list.
pub const CAP_START: usize = 0x40;

const REG_COMMAND: usize = 1;
const REG_BAR0: usize = 4;
const REG_CAP_PTR: usize = 13;
const REG_INTERRUPT: usize = 15;
/// Command register bits the guest may change: I/O and memory decode, bus master, parity
/// and SERR reporting, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0547;
/// Status register bit: the device has a capability list.
const STATUS_CAP_LIST: u32 = 1 << 20;
pub const COMMAND_MEMORY: u32 = 1 << 1;
pub const COMMAND_INTX_DISABLE: u32 = 1 << 10;

/// Memory BAR kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    /// Takes two registers (index and index + 1).
    Mem64,
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    addr: u64,
    size: u64,
    kind: BarKind,
    /// All-ones was written to the low / high register (the guest is sizing the BAR).
    sizing: [bool; 2],
}

impl Bar {
    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Mem32 => 0,
            BarKind::Mem64 => 0b100,
        }
    }
}

/// A configuration space under construction and in use.
#[derive(Debug, Clone)]
pub struct PciConfig {
    regs: [u32; CONFIG_REGS],
    wmask: [u32; CONFIG_REGS],
    bars: [Option<Bar>; 6],
    /// Offset of the next capability to add, and of the last one's "next" byte.
    next_cap: usize,
    last_next_ptr: usize,
}

/// Identity of a function: what the header's read-only fields say.
#[derive(Debug, Clone, Copy)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class code, subclass and programming interface (24 bits).
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    /// Interrupt pin: 0 none, 1 INTA# … 4 INTD#.
    pub interrupt_pin: u8,
}

/// Why a capability cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("capability of {0} bytes does not fit in the configuration space")]
pub struct CapabilityFull(pub usize);

impl PciConfig {
    pub fn new(ids: PciIds) -> Self {
        let mut regs = [0u32; CONFIG_REGS];
        let mut wmask = [0u32; CONFIG_REGS];
        regs[0] = u32::from(ids.vendor) | u32::from(ids.device) << 16;
        wmask[REG_COMMAND] = COMMAND_WRITABLE;
        regs[2] = u32::from(ids.revision) | (ids.class & 0xff_ffff) << 8;
        regs[11] = u32::from(ids.subsystem_vendor) | u32::from(ids.subsystem) << 16;
        regs[REG_INTERRUPT] = u32::from(ids.interrupt_pin) << 8;
        // The interrupt line is a scratch byte for the OS.
        wmask[REG_INTERRUPT] = 0xff;
        Self {
            regs,
            wmask,
            bars: [None; 6],
            next_cap: CAP_START,
            last_next_ptr: REG_CAP_PTR * 4,
        }
    }

    /// Declares memory BAR `index` at `addr` (aligned to `size`, a power of two ≥ 16).
    pub fn add_bar(&mut self, index: usize, addr: u64, size: u64, kind: BarKind) {
        assert!(size.is_power_of_two() && size >= 16 && addr.is_multiple_of(size));
        assert!(index < 6 && (kind == BarKind::Mem32 || index < 5));
        self.bars[index] = Some(Bar {
            addr,
            size,
            kind,
            sizing: [false; 2],
        });
    }

    /// Appends a capability: `body` is everything after the id and next-pointer bytes.
    /// Returns its offset in the configuration space.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, CapabilityFull> {
        let len = 2 + body.len();
        let at = self.next_cap;
        if at + len > CONFIG_REGS * 4 {
            return Err(CapabilityFull(len));
        }
        self.set_byte(self.last_next_ptr, at as u8);
        self.set_byte(at, id);
        self.set_byte(at + 1, 0);
        for (i, b) in body.iter().enumerate() {
            self.set_byte(at + 2 + i, *b);
        }
        self.regs[REG_COMMAND] |= STATUS_CAP_LIST;
        self.last_next_ptr = at + 1;
        // Capabilities are dword-aligned.
        self.next_cap = (at + len).next_multiple_of(4);
        Ok(at)
    }

    /// Lets the guest write the bits `mask` of the dword at byte `offset` (a capability's
    /// writable fields).
    pub fn set_writable(&mut self, offset: usize, mask: u32) {
        self.wmask[offset / 4] |= mask;
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let r = &mut self.regs[offset / 4];
        *r = (*r & !(0xff << shift)) | u32::from(value) << shift;
    }

    /// A byte of the configuration space (capability fields, for the device model).
    pub fn byte(&self, offset: usize) -> u8 {
        self.regs
            .get(offset / 4)
            .map_or(0, |r| (r >> ((offset % 4) * 8)) as u8)
    }

    /// A dword at byte `offset` (dword-aligned).
    pub fn dword(&self, offset: usize) -> u32 {
        self.regs.get(offset / 4).copied().unwrap_or(0)
    }

    /// Sets a dword at byte `offset` regardless of the write mask (device-side updates).
    pub fn set_dword(&mut self, offset: usize, value: u32) {
        if let Some(r) = self.regs.get_mut(offset / 4) {
            *r = value;
        }
    }

    pub fn command(&self) -> u32 {
        self.regs[REG_COMMAND] & 0xffff
    }

    /// Which BAR register `reg` belongs to: (BAR index, high half).
    fn bar_of(&self, reg: usize) -> Option<(usize, bool)> {
        if !(REG_BAR0..REG_BAR0 + 6).contains(&reg) {
            return None;
        }
        let i = reg - REG_BAR0;
        if self.bars[i].is_some() {
            return Some((i, false));
        }
        let p = i.checked_sub(1)?;
        match self.bars[p] {
            Some(b) if b.kind == BarKind::Mem64 => Some((p, true)),
            _ => None,
        }
    }

    /// Reads register `reg` (any index below [`EXT_CONFIG_REGS`]; others read as 0).
    pub fn read(&self, reg: usize) -> u32 {
        if reg >= CONFIG_REGS {
            return 0;
        }
        if let Some((i, high)) = self.bar_of(reg) {
            // Checked by bar_of.
            let b = self.bars[i].expect("BAR exists");
            let mask = !(b.size - 1);
            return match (high, b.sizing[usize::from(high)]) {
                (false, true) => mask as u32 | b.flags(),
                (false, false) => (b.addr & mask) as u32 | b.flags(),
                (true, true) => (mask >> 32) as u32,
                (true, false) => (b.addr >> 32) as u32,
            };
        }
        self.regs[reg]
    }

    /// Writes `data` (1 to 4 bytes) at byte `offset` of register `reg`; bits outside the
    /// write mask, bytes past the dword and registers out of range are ignored.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if reg >= CONFIG_REGS || offset >= 4 || data.is_empty() || offset + data.len() > 4 {
            return;
        }
        let mut value = 0u32;
        let mut bytes_mask = 0u32;
        for (i, b) in data.iter().enumerate() {
            value |= u32::from(*b) << ((offset + i) * 8);
            bytes_mask |= 0xff << ((offset + i) * 8);
        }
        if let Some((i, high)) = self.bar_of(reg) {
            self.write_bar(i, high, value, bytes_mask);
            return;
        }
        let mask = self.wmask[reg] & bytes_mask;
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
    }

    fn write_bar(&mut self, index: usize, high: bool, value: u32, bytes_mask: u32) {
        let cur = self.read(REG_BAR0 + index + usize::from(high));
        let value = (cur & !bytes_mask) | (value & bytes_mask);
        let Some(b) = self.bars[index].as_mut() else {
            return;
        };
        let mask = !(b.size - 1);
        if high {
            b.sizing[1] = value == u32::MAX;
            if !b.sizing[1] {
                b.addr = ((u64::from(value) << 32) | (b.addr & 0xffff_ffff)) & mask;
            }
        } else {
            // All ones in the address bits: the guest is sizing the BAR.
            b.sizing[0] = value | 0xf == u32::MAX;
            if !b.sizing[0] {
                b.addr = ((b.addr & !0xffff_ffff) | u64::from(value & !0xf)) & mask;
            }
        }
    }

    /// BAR `index`'s address as programmed (also while it is being sized).
    pub fn bar_addr(&self, index: usize) -> Option<u64> {
        self.bars.get(index)?.map(|b| b.addr)
    }

    /// Memory BARs to decode: `(index, address, size)`, leaving out BARs being sized.
    pub fn decoded_bars(&self) -> Vec<(usize, u64, u64)> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b)))
            .filter(|(_, b)| !b.sizing[0] && !b.sizing[1])
            .map(|(i, b)| (i, b.addr, b.size))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0xff_0000,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
            interrupt_pin: 1,
        }
    }

    #[test]
    fn header_is_read_only_except_command_and_line() {
        let mut c = PciConfig::new(ids());
        assert_eq!(c.read(0), 0x1044_1af4);
        assert_eq!(c.read(2), 0xff00_0001);
        c.write(0, 0, &[0, 0, 0, 0]);
        c.write(2, 0, &[9, 9, 9, 9]);
        assert_eq!(c.read(0), 0x1044_1af4);
        assert_eq!(c.read(2), 0xff00_0001);
        c.write(1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(c.read(1), COMMAND_WRITABLE, "status bits are not writable");
        c.write(15, 0, &[11]);
        assert_eq!(c.read(15), 0x10b);
        c.write(15, 1, &[3]);
        assert_eq!(c.read(15), 0x10b, "interrupt pin is read-only");
        // Out of range: ignored, reads 0.
        c.write(64, 0, &[1]);
        c.write(3, 3, &[1, 2]);
        assert_eq!(c.read(64), 0);
        assert_eq!(c.read(1023), 0);
        assert_eq!(c.read(5000), 0);
    }

    #[test]
    fn bar64_sizing_and_moving() {
        let mut c = PciConfig::new(ids());
        c.add_bar(0, 0xc000_0000, 0x8000, BarKind::Mem64);
        assert_eq!(c.read(4), 0xc000_0004);
        assert_eq!(c.read(5), 0);
        // Sizing, the way Linux does it: low, high, then restore both.
        c.write(4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(c.read(4), 0xffff_8004);
        assert!(c.decoded_bars().is_empty(), "not decoded while sized");
        c.write(5, 0, &u32::MAX.to_le_bytes());
        assert_eq!(c.read(5), u32::MAX);
        c.write(4, 0, &0xc000_0004u32.to_le_bytes());
        c.write(5, 0, &0u32.to_le_bytes());
        assert_eq!(c.decoded_bars(), vec![(0, 0xc000_0000, 0x8000)]);
        // A new address, low bits beyond the size alignment dropped.
        c.write(4, 0, &0xd000_1234u32.to_le_bytes());
        c.write(5, 0, &1u32.to_le_bytes());
        assert_eq!(c.decoded_bars(), vec![(0, 0x1_d000_0000, 0x8000)]);
        assert_eq!(c.read(4), 0xd000_0004);
        // Byte writes merge into the register.
        c.write(4, 3, &[0xe0]);
        assert_eq!(c.bar_addr(0), Some(0x1_e000_0000));
        // Unimplemented BARs read 0 and ignore writes.
        c.write(6, 0, &u32::MAX.to_le_bytes());
        assert_eq!(c.read(6), 0);
    }

    #[test]
    fn capabilities_are_linked() {
        let mut c = PciConfig::new(ids());
        assert_eq!(c.read(1) & STATUS_CAP_LIST, 0);
        let a = c.add_capability(0x09, &[16, 1, 2]).unwrap();
        let b = c.add_capability(0x11, &[0; 10]).unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_ne!(c.read(1) & STATUS_CAP_LIST, 0);
        assert_eq!(c.byte(0x34), 0x40);
        assert_eq!(c.byte(0x41), 0x48);
        assert_eq!(c.byte(0x49), 0);
        assert_eq!(c.byte(0x42), 16);
        // Capability bytes are read-only unless the device says otherwise.
        c.write(0x48 / 4, 2, &[0xff, 0xff]);
        assert_eq!(c.read(0x48 / 4) >> 16, 0);
        c.set_writable(0x48, 0xc000_0000);
        c.write(0x48 / 4, 2, &[0xff, 0xff]);
        assert_eq!(c.read(0x48 / 4) >> 16, 0xc000);
        assert_eq!(c.add_capability(0x09, &[0; 200]), Err(CapabilityFull(202)));
    }
}
