//! Guest RAM: anonymous mappings laid out around the MMIO hole (see `vireo_boot::layout`).

use vireo_boot::layout;
use vm_memory::GuestAddress;

use crate::{Error, Result};

/// Guest memory of a vireo VM. A type alias so that switching to a dirty-tracking bitmap
/// (for live migration) changes one line.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Total physical memory of the host in bytes.
pub fn host_memory_bytes() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64).saturating_mul(page_size.max(0) as u64)
}

/// Allocates `size` bytes of guest RAM, split around the 32-bit MMIO hole.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(size)
        .into_iter()
        .map(|r| (GuestAddress(r.start), r.size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory {
        size,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn memory_above_the_hole_is_mapped_at_4g() {
        // Sparse anonymous mappings: cheap even for large sizes.
        let mem = create_guest_memory(layout::MMIO_HOLE_START + (64 << 20)).unwrap();
        let regions: Vec<_> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(
            regions,
            vec![(0, layout::MMIO_HOLE_START), (1 << 32, 64 << 20)]
        );
        assert!(host_memory_bytes() > 0);
    }
}
