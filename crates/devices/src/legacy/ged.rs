//! ACPI Generic Event Device (GED) register: how the VMM raises ACPI events such as a power
//! button press on a hardware-reduced platform.
//!
//! The DSDT's `\_SB.GED_` takes GSI [`irqs::ACPI_GED`](vireo_boot::layout::irqs::ACPI_GED);
//! on that interrupt OSPM runs `_EVT`, which reads the one-byte register at offset 0 (the
//! read returns the pending event bits and clears them) and notifies `PWRB` for bit 0.

use std::io;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::BusDevice;

/// Event bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;

/// Guest-visible state of [`GedDevice`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GedState {
    /// Events raised and not yet read by the guest.
    pub pending: u8,
}

pub struct GedDevice {
    irq: EventFd,
    state: GedState,
}

impl GedDevice {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            irq: EventFd::new(EFD_NONBLOCK)?,
            state: GedState::default(),
        })
    }

    /// The interrupt; the VMM registers it as an irqfd for GSI `irqs::ACPI_GED`.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq
    }

    /// Presses the power button: a guest with ACPI powers itself off in response.
    pub fn notify_power_button(&mut self) {
        self.raise(GED_EVENT_POWER_BUTTON);
    }

    fn raise(&mut self, events: u8) {
        self.state.pending |= events;
        if let Err(e) = self.irq.write(1) {
            log::warn!("cannot signal the ACPI GED interrupt: {e}");
        }
    }

    pub fn state(&self) -> GedState {
        self.state.clone()
    }

    /// Restores `state`; events still pending are signalled again since the edge that
    /// announced them belonged to the previous VM.
    pub fn restore(&mut self, state: GedState) {
        self.state = GedState::default();
        if state.pending != 0 {
            self.raise(state.pending);
        }
    }
}

impl BusDevice for GedDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = std::mem::take(&mut self.state.pending);
            }
        }
    }

    // The register is read-only: writes are ignored.
    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_boot::layout::ACPI_GED_MMIO_START as BASE;

    #[test]
    fn power_button_sets_bit_and_signals_once_read_clears() {
        let mut g = GedDevice::new().unwrap();
        assert!(g.irq_evt().read().is_err(), "no interrupt before an event");
        g.notify_power_button();
        assert_eq!(g.irq_evt().read().unwrap(), 1);
        let mut b = [0u8; 1];
        g.read(BASE, 0, &mut b);
        assert_eq!(b[0], GED_EVENT_POWER_BUTTON);
        g.read(BASE, 0, &mut b);
        assert_eq!(b[0], 0, "read clears");
    }

    #[test]
    fn other_offsets_and_writes_are_harmless() {
        let mut g = GedDevice::new().unwrap();
        g.notify_power_button();
        g.write(BASE, 0, &[0xff, 0xff]);
        let mut b = [0xaau8; 4];
        g.read(BASE, 8, &mut b);
        assert_eq!(b, [0; 4]);
        g.read(BASE, 0, &mut b);
        assert_eq!(b, [GED_EVENT_POWER_BUTTON, 0, 0, 0], "wide read at 0");
        g.read(BASE, 0, &mut []);
    }

    #[test]
    fn restore_re_signals_pending_events() {
        let mut g = GedDevice::new().unwrap();
        g.notify_power_button();
        let st = g.state();
        let json = serde_json::to_string(&st).unwrap();
        let mut g2 = GedDevice::new().unwrap();
        g2.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(g2.irq_evt().read().unwrap(), 1);
        assert_eq!(g2.state(), st);
    }
}
