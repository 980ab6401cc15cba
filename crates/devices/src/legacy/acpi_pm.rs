//! Hardware-reduced ACPI fixed registers (FADT sleep control/status and reset registers).
//!
//! One device over three consecutive ports ([`ports::ACPI_SLEEP_CONTROL`],
//! [`ports::ACPI_SLEEP_STATUS`], [`ports::ACPI_RESET`]): writing SLP_EN with the S5 sleep
//! type that the DSDT's `\_S5_` advertises powers the VM off, writing
//! [`ports::ACPI_RESET_VALUE`] to the reset register resets it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vireo_boot::layout::ports;

use crate::{BusDevice, PowerEvents, PowerRequest};

/// Length of the port range the device decodes.
pub const ACPI_PM_PORTS_LEN: u64 = 3;

// Offsets from the device's base, the sleep control register.
const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = (ports::ACPI_SLEEP_STATUS - ports::ACPI_SLEEP_CONTROL) as u64;
const RESET: u64 = (ports::ACPI_RESET - ports::ACPI_SLEEP_CONTROL) as u64;

/// Sleep control register: SLP_EN and the SLP_TYP field (ACPI 6.5 §4.8.3.7).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// Sleep status register: WAK_STS, write 1 to clear.
const WAK_STS: u8 = 1 << 7;

/// Guest-visible state of [`AcpiPmDevice`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    /// Sleep status register (only WAK_STS is meaningful).
    pub sleep_status: u8,
}

pub struct AcpiPmDevice {
    power: Arc<PowerEvents>,
    state: AcpiPmState,
}

impl AcpiPmDevice {
    pub fn new(power: Arc<PowerEvents>) -> Self {
        Self {
            power,
            state: AcpiPmState::default(),
        }
    }

    pub fn state(&self) -> AcpiPmState {
        self.state.clone()
    }

    pub fn restore(&mut self, state: AcpiPmState) {
        self.state = state;
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        match offset {
            SLEEP_CONTROL => {
                if value & SLP_EN == 0 {
                    return;
                }
                let typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if typ == ports::ACPI_S5_SLEEP_TYPE {
                    log::info!("guest entered ACPI S5: powering off");
                    self.power.request(PowerRequest::Poweroff);
                } else {
                    // Only S5 is advertised; other sleep states are not supported.
                    log::warn!("guest asked for unsupported ACPI sleep type {typ}; ignored");
                }
            }
            SLEEP_STATUS => self.state.sleep_status &= !(value & WAK_STS),
            RESET if value == ports::ACPI_RESET_VALUE => {
                log::info!("guest wrote the ACPI reset register: resetting");
                self.power.request(PowerRequest::Reset);
            }
            _ => {}
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.saturating_add(i as u64) {
                SLEEP_STATUS => self.state.sleep_status,
                // SLP_EN/SLP_TYP and the reset register are write-only.
                SLEEP_CONTROL | RESET => 0,
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.write_byte(offset.saturating_add(i as u64), b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (AcpiPmDevice, Arc<PowerEvents>) {
        let p = Arc::new(PowerEvents::new().unwrap());
        (AcpiPmDevice::new(p.clone()), p)
    }
    const BASE: u64 = ports::ACPI_SLEEP_CONTROL as u64;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut d, p) = dev();
        // What Linux's acpi_hw_extended_sleep writes for S5.
        d.write(BASE, 0, &[(ports::ACPI_S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(p.pending(), Some(PowerRequest::Poweroff));
    }

    #[test]
    fn other_sleep_writes_are_ignored() {
        let (mut d, p) = dev();
        d.write(BASE, 0, &[ports::ACPI_S5_SLEEP_TYPE << 2]); // no SLP_EN
        d.write(BASE, 0, &[(3 << 2) | SLP_EN]); // S3
        d.write(BASE, 0, &[!(SLP_TYP_MASK << SLP_TYP_SHIFT)]); // SLP_EN, S0
        d.write(BASE, 1, &[0xff]);
        d.write(BASE, 2, &[0x02]);
        d.write(BASE, 2, &[0x00]);
        assert_eq!(p.pending(), None);
    }

    #[test]
    fn reset_register_resets() {
        let (mut d, p) = dev();
        d.write(BASE, 2, &[ports::ACPI_RESET_VALUE]);
        assert_eq!(p.pending(), Some(PowerRequest::Reset));
    }

    #[test]
    fn wide_accesses_and_state_round_trip() {
        let (mut d, p) = dev();
        d.restore(AcpiPmState {
            sleep_status: WAK_STS,
        });
        let mut b = [0u8; 3];
        d.read(BASE, 0, &mut b);
        assert_eq!(b, [0, WAK_STS, 0]);
        // A 2-byte write at offset 1 clears WAK_STS and hits the reset register.
        d.write(BASE, 1, &[WAK_STS, ports::ACPI_RESET_VALUE]);
        assert_eq!(d.state(), AcpiPmState::default());
        assert_eq!(p.pending(), Some(PowerRequest::Reset));
        let mut far = [0u8; 2];
        d.read(BASE, u64::MAX, &mut far);
        assert_eq!(far, [0xff, 0xff]);
        let json = serde_json::to_string(&d.state()).unwrap();
        assert_eq!(
            serde_json::from_str::<AcpiPmState>(&json).unwrap(),
            d.state()
        );
    }
}
