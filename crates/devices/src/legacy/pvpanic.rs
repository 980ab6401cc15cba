//! The pvpanic device (port 0x505, ACPI `QEMU0001`): the guest kernel writes here when it
//! panics, so the VMM can report a crash instead of seeing only the reset or hang that
//! follows.
//!
//! Reading the port returns the events the device supports; writing sets event bits:
//! bit 0 "panicked" (the VM is ended as a crash) and bit 1 "crash kernel loaded" (kdump
//! takes over inside the guest, so the VM keeps running and the event is only logged).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, PowerEvents, PowerRequest};

/// The guest panicked and no crash kernel will take over.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest panicked and is starting its kdump crash kernel.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// Every event this device understands (what a guest reads from the port).
pub const PVPANIC_SUPPORTED: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// Guest-visible state: the events the guest has reported so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvPanicState {
    pub events: u8,
}

pub struct PvPanic {
    power: Arc<PowerEvents>,
    events: u8,
}

impl PvPanic {
    pub fn new(power: Arc<PowerEvents>) -> Self {
        Self { power, events: 0 }
    }

    /// Events reported so far (bits [`PVPANIC_PANICKED`], [`PVPANIC_CRASH_LOADED`]).
    pub fn events(&self) -> u8 {
        self.events
    }

    pub fn state(&self) -> PvPanicState {
        PvPanicState {
            events: self.events,
        }
    }

    pub fn restore(&mut self, state: PvPanicState) {
        self.events = state.events & PVPANIC_SUPPORTED;
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = PVPANIC_SUPPORTED;
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first().filter(|_| offset == 0) else {
            return;
        };
        // Unknown bits are ignored, as the guest was told which ones exist.
        let value = value & PVPANIC_SUPPORTED;
        self.events |= value;
        if value & PVPANIC_PANICKED != 0 {
            log::error!("the guest kernel panicked (pvpanic)");
            self.power.request(PowerRequest::Panic);
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            log::warn!("the guest kernel panicked; its crash kernel is taking over (pvpanic)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = vireo_boot::layout::ports::PVPANIC as u64;

    fn device() -> (PvPanic, Arc<PowerEvents>) {
        let power = Arc::new(PowerEvents::new().unwrap());
        (PvPanic::new(power.clone()), power)
    }

    #[test]
    fn read_reports_supported_events() {
        let (mut d, _) = device();
        let mut b = [0xffu8; 2];
        d.read(BASE, 0, &mut b);
        assert_eq!(b, [PVPANIC_SUPPORTED, 0]);
    }

    #[test]
    fn panicked_ends_the_vm_as_a_panic() {
        let (mut d, power) = device();
        d.write(BASE, 0, &[PVPANIC_PANICKED]);
        assert_eq!(power.pending(), Some(PowerRequest::Panic));
        assert_eq!(d.events(), PVPANIC_PANICKED);
    }

    #[test]
    fn crash_loaded_only_records() {
        let (mut d, power) = device();
        d.write(BASE, 0, &[PVPANIC_CRASH_LOADED | 0xf0]);
        assert_eq!(power.pending(), None, "kdump runs inside the guest");
        assert_eq!(d.state(), PvPanicState { events: 2 });
        let (mut e, _) = device();
        e.restore(serde_json::from_str(&serde_json::to_string(&d.state()).unwrap()).unwrap());
        assert_eq!(e.state(), d.state());
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut d, power) = device();
        d.write(BASE, 0, &[]);
        d.write(BASE, 1, &[PVPANIC_PANICKED]);
        d.read(BASE, 0, &mut []);
        assert_eq!(power.pending(), None);
        assert_eq!(d.events(), 0);
    }
}
