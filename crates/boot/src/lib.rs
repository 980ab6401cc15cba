//! Everything needed to put a Linux kernel into guest memory and describe the machine to it.
//!
//! * [`layout`]: where things live in guest physical memory (the one source of truth).
//! * [`acpi`]: RSDP/XSDT/FADT/MADT/DSDT describing CPUs, power button, sleep and reset.

pub mod acpi;
pub mod layout;
pub mod loader;
pub mod mptable;

pub use loader::{BootEntry, BootError, KernelFormat, KernelInfo};
