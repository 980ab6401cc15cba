//! PC platform devices a Linux guest expects at their classic addresses.
//!
//! | device | where (see `vireo_boot::layout`) | what for |
//! | --- | --- | --- |
//! | [`SerialDevice`] | ports 0x3f8..0x3ff, GSI 4 | COM1 console |
//! | [`I8042Device`] | ports 0x60 and 0x64 (inserted twice) | reset via command 0xfe |
//! | [`Cmos`] | ports 0x70..0x71 | RTC wall clock and NVRAM |
//! | [`PostCode`] | port 0x80 | boot progress, boot-complete marker |
//! | [`AcpiPmDevice`] | ports 0x600..0x602 | ACPI sleep control (poweroff) and reset registers |
//! | [`GedDevice`] | MMIO `ACPI_GED_MMIO_START`, GSI 9 | ACPI power button events |
//! | [`PvPanic`] | port 0x505 (ACPI `QEMU0001`) | guest kernel panic reports |
//!
//! Every device's guest-visible state can be taken with `state()` as a plain serde
//! structure and put back (`restore()` or `from_state()`), for snapshots and migration.

pub mod acpi_pm;
pub mod cmos;
pub mod ged;
pub mod i8042;
pub mod post_code;
pub mod pvpanic;
pub mod serial;

pub use acpi_pm::{AcpiPmDevice, AcpiPmState, ACPI_PM_PORTS_LEN};
pub use cmos::{Cmos, CmosState, RtcTime, CMOS_PORTS_LEN};
pub use ged::{GedDevice, GedState, GED_EVENT_POWER_BUTTON};
pub use i8042::{I8042Device, I8042State};
pub use post_code::{PostCode, PostCodeState, BOOT_COMPLETE_MARKER};
pub use pvpanic::{PvPanic, PvPanicState};
pub use serial::{
    ConsoleOutput, EventFdTrigger, SerialDevice, SerialDeviceState, SERIAL_PORTS_LEN,
};
