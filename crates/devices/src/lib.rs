//! Devices of a vireo VM.
//!
//! * [`bus`]: the port-I/O and MMIO buses that vCPU exits are dispatched on.
//! * [`power`]: how devices ask the VMM to power the VM off or reset it.
//! * [`legacy`]: the PC platform devices a Linux guest expects (UART, i8042, CMOS RTC,
//!   debug port, ACPI power-management registers).
//! * [`pci`]: the PCI root bus, configuration space, BAR allocation, MSI-X.
//! * [`virtio`]: the interface between virtio device models and their transport.

pub mod bus;
pub mod legacy;
pub mod pci;
pub mod power;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
pub use power::{PowerEvents, PowerRequest};
