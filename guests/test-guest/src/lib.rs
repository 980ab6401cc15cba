//! Path of the built test guest: a PVH ELF (`vireo-test-guest.elf`) built
//! from `guest/` by `build.rs`. See `docs/test-guest.md`.

/// Absolute path of the test guest ELF image (PVH entry note).
pub const PATH: &str = concat!(env!("OUT_DIR"), "/vireo-test-guest.elf");

/// The same guest as an ELF without the PVH note: entered at `e_entry` through the Linux
/// 64-bit boot protocol (long mode, zero page).
pub const NOPVH_ELF_PATH: &str = concat!(env!("OUT_DIR"), "/vireo-test-guest-nopvh.elf");

/// The same guest as a bzImage (boot protocol 2.15, 64-bit entry), booted like a Linux
/// bzImage.
pub const BZIMAGE_PATH: &str = concat!(env!("OUT_DIR"), "/vireo-test-guest.bzImage");
