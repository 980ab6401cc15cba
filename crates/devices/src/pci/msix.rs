//! MSI-X: a table of message vectors and a pending-bit array (PBA), mapped in a BAR.
//!
//! Each vector owns a GSI and an irqfd registered with KVM on it; when the guest writes a
//! vector's address or data the GSI's route is updated (KVM GSI routing), so raising the
//! vector is one eventfd write, from any thread. A masked vector (its own mask bit, or the
//! function mask) does not fire: its pending bit is set instead and it fires when
//! unmasked, as PCI 3.0 §6.8.3.5 asks.

use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{MsiMessage, VmHooks};

/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Largest table the capability can describe.
pub const MAX_VECTORS: u16 = 2048;
/// "No vector" in virtio's vector registers.
pub const NO_VECTOR: u16 = 0xffff;
/// Message control bits.
pub const CONTROL_ENABLE: u16 = 1 << 15;
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn masked(&self) -> bool {
        self.control & 1 != 0
    }
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (i, v) in [self.addr_lo, self.addr_hi, self.data, self.control]
            .iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
    fn from_bytes(b: &[u8; 16]) -> Self {
        let d = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            addr_lo: d(0),
            addr_hi: d(4),
            data: d(8),
            control: d(12),
        }
    }
}

/// Guest-visible MSI-X state (for snapshots).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixState {
    pub entries: Vec<Entry>,
    pub pending: Vec<bool>,
    pub enabled: bool,
    pub function_masked: bool,
}

/// The MSI-X state of one function.
pub struct Msix {
    hooks: Arc<dyn VmHooks>,
    entries: Vec<Entry>,
    pending: Vec<bool>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    /// A table of `vectors` entries, all masked; allocates a GSI and an irqfd per vector.
    pub fn new(vectors: u16, hooks: Arc<dyn VmHooks>) -> std::io::Result<Self> {
        let n = usize::from(vectors.clamp(1, MAX_VECTORS));
        let mut gsis = Vec::with_capacity(n);
        let mut irqfds = Vec::with_capacity(n);
        for _ in 0..n {
            let gsi = hooks.allocate_gsi()?;
            let fd = EventFd::new(EFD_NONBLOCK)?;
            hooks.register_irqfd(&fd, gsi)?;
            gsis.push(gsi);
            irqfds.push(fd);
        }
        Ok(Self {
            hooks,
            entries: vec![
                Entry {
                    control: 1,
                    ..Default::default()
                };
                n
            ],
            pending: vec![false; n],
            gsis,
            irqfds,
            enabled: false,
            function_masked: false,
        })
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the PBA in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The guest wrote the capability's message control register.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.fire_pending();
    }

    /// Message control as the capability shows it (table size - 1 in bits 10:0).
    pub fn control(&self) -> u16 {
        let mut c = self.vectors() - 1;
        if self.enabled {
            c |= CONTROL_ENABLE;
        }
        if self.function_masked {
            c |= CONTROL_FUNCTION_MASK;
        }
        c
    }

    /// Reads the table at `offset` (bytes outside it read as 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            let e = (o / ENTRY_SIZE) as usize;
            *b = self
                .entries
                .get(e)
                .map_or(0, |e| e.bytes()[(o % ENTRY_SIZE) as usize]);
        }
    }

    /// Writes the table at `offset`; bytes outside it are ignored. Only the mask bit of
    /// vector control is writable.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let first = offset / ENTRY_SIZE;
        let last = (offset + data.len() as u64).saturating_sub(1) / ENTRY_SIZE;
        for e in first..=last {
            let Some(old) = self.entries.get(e as usize).copied() else {
                continue;
            };
            let mut bytes = old.bytes();
            for (i, b) in data.iter().enumerate() {
                let o = offset + i as u64;
                if o / ENTRY_SIZE == e {
                    bytes[(o % ENTRY_SIZE) as usize] = *b;
                }
            }
            let mut new = Entry::from_bytes(&bytes);
            new.control = (old.control & !1) | (new.control & 1);
            self.update_entry(e as usize, old, new);
        }
    }

    fn update_entry(&mut self, v: usize, old: Entry, new: Entry) {
        self.entries[v] = new;
        if old.message() != new.message() {
            if let Err(e) = self.hooks.set_msi_route(self.gsis[v], Some(new.message())) {
                log::warn!("MSI-X vector {v}: cannot route GSI {}: {e}", self.gsis[v]);
            }
        }
        if old.masked() && !new.masked() {
            self.fire_pending();
        }
    }

    /// Reads the PBA at `offset` (read-only).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let bit0 = (offset + i as u64) * 8;
            *b = (0..8u64)
                .filter(|k| {
                    self.pending
                        .get((bit0 + k) as usize)
                        .copied()
                        .unwrap_or(false)
                })
                .fold(0u8, |acc, k| acc | 1 << k);
        }
    }

    /// Raises `vector`: fires it, or marks it pending while masked. Vectors out of range
    /// (including [`NO_VECTOR`]) raise nothing.
    pub fn trigger(&mut self, vector: u16) {
        let v = usize::from(vector);
        let Some(entry) = self.entries.get(v) else {
            return;
        };
        if self.function_masked || entry.masked() {
            self.pending[v] = true;
        } else if let Err(e) = self.irqfds[v].write(1) {
            log::warn!("MSI-X vector {v}: cannot signal the irqfd: {e}");
        }
    }

    fn fire_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for v in 0..self.entries.len() {
            if self.pending[v] && !self.entries[v].masked() {
                self.pending[v] = false;
                let _ = self.irqfds[v].write(1);
            }
        }
    }

    /// Function reset: every vector masked and unprogrammed, MSI-X disabled.
    pub fn reset(&mut self) {
        for v in 0..self.entries.len() {
            if self.entries[v].message() != MsiMessage::default() {
                let _ = self.hooks.set_msi_route(self.gsis[v], None);
            }
            self.entries[v] = Entry {
                control: 1,
                ..Default::default()
            };
            self.pending[v] = false;
        }
        self.enabled = false;
        self.function_masked = false;
    }

    pub fn state(&self) -> MsixState {
        MsixState {
            entries: self.entries.clone(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// The irqfd of `vector` (tests watch it).
    pub fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.irqfds.get(usize::from(vector))
    }

    pub fn gsi(&self, vector: u16) -> Option<u32> {
        self.gsis.get(usize::from(vector)).copied()
    }
}

impl Drop for Msix {
    fn drop(&mut self) {
        for (fd, gsi) in self.irqfds.iter().zip(&self.gsis) {
            let _ = self.hooks.unregister_irqfd(fd, *gsi);
            let _ = self.hooks.set_msi_route(*gsi, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::testing::FakeHooks;

    fn fired(m: &Msix, v: u16) -> bool {
        m.irqfd(v).unwrap().read().is_ok()
    }

    #[test]
    fn table_routes_masks_and_pending_bits() {
        let hooks = Arc::new(FakeHooks::default());
        let mut m = Msix::new(3, hooks.clone()).unwrap();
        assert_eq!(m.control(), 2);
        assert_eq!((m.table_size(), m.pba_size()), (48, 8));
        assert_eq!(hooks.irqfds.lock().unwrap().len(), 3);
        // Program vector 1: address, data; the route follows.
        m.write_table(16, &0xfee0_1000u32.to_le_bytes());
        m.write_table(24, &0x4041u32.to_le_bytes());
        let gsi = m.gsi(1).unwrap();
        assert_eq!(
            hooks.routes.lock().unwrap().get(&gsi),
            Some(&MsiMessage {
                address: 0xfee0_1000,
                data: 0x4041
            })
        );
        let mut b = [0u8; 16];
        m.read_table(16, &mut b);
        assert_eq!(&b[..4], &0xfee0_1000u32.to_le_bytes());
        assert_eq!(b[12], 1, "vectors start masked");
        // Disabled or masked: pending, not fired.
        m.set_control(CONTROL_ENABLE);
        m.trigger(1);
        assert!(!fired(&m, 1));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        // Unmask: the pending vector fires.
        m.write_table(28, &0u32.to_le_bytes());
        assert!(fired(&m, 1));
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        m.trigger(1);
        assert!(fired(&m, 1));
        // Function mask holds it back too.
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        m.trigger(1);
        assert!(!fired(&m, 1));
        m.set_control(CONTROL_ENABLE);
        assert!(fired(&m, 1));
        // Out of range: nothing, no panic.
        m.trigger(NO_VECTOR);
        m.trigger(3);
        m.write_table(48, &[1; 8]);
        m.write_table(u64::MAX - 2, &[1; 2]);
        let mut big = [0xaau8; 8];
        m.read_table(44, &mut big);
        assert_eq!(&big[4..], &[0; 4]);
        // Only the mask bit of vector control is writable.
        m.write_table(12, &0xffff_ffffu32.to_le_bytes());
        m.read_table(12, &mut b[..4]);
        assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()), 1);
        m.reset();
        assert!(hooks.routes.lock().unwrap().is_empty());
        assert!(!m.enabled());
    }
}
