//! Path of the built test guest: a PVH ELF (`vireo-test-guest.elf`) built
//! from `guest/` by `build.rs`. See `docs/test-guest.md`.

/// Absolute path of the test guest ELF image.
pub const PATH: &str = concat!(env!("OUT_DIR"), "/vireo-test-guest.elf");
