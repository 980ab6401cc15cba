//! vireo-storage: libvirt-style storage pools and volumes.
//!
//! A *pool* is a directory of disk images (libvirt's `dir` pool type); a
//! *volume* is one image file in it, raw or qcow2, created and inspected
//! through the block crate (`vireo-block`). [`PoolManager`] keeps the pool
//! definitions as libvirt pool XML in a config directory and offers the
//! operations of virsh's `pool-*` and `vol-*` verbs; the daemon exposes
//! them over its API. See `docs/storage.md`.
//!
//! ```no_run
//! use vireo_storage::{PoolManager, StorageDirs, VolCreateAs};
//! # fn main() -> vireo_storage::Result<()> {
//! let mgr = PoolManager::open(StorageDirs {
//!     config_dir: "/etc/vireo/storage".into(),
//!     state_dir: "/run/vireo/storage".into(),
//!     images_dir: "/var/lib/vireo/images".into(),
//! })?;
//! let base = mgr.vol_create_as("default", "base.qcow2", 10 << 30, &VolCreateAs {
//!     format: Some("qcow2".into()),
//!     ..Default::default()
//! })?;
//! let clone = mgr.vol_create_as("default", "vm1.qcow2", 10 << 30, &VolCreateAs {
//!     format: Some("qcow2".into()),
//!     backing_vol: Some("base.qcow2".into()),
//!     ..Default::default()
//! })?;
//! assert_eq!(clone.backing.unwrap().path, base.path);
//! # Ok(()) }
//! ```

mod error;
mod fsutil;
mod manager;
mod pool_xml;
pub mod units;
mod uuid;
mod vol_xml;
mod volume;
mod xml;

pub use error::{Error, ErrorKind, Result};
pub use manager::{
    PoolFilter, PoolInfo, PoolManager, PoolState, ResizeFlags, StorageDirs, VolCreateAs,
    DEFAULT_POOL,
};
pub use pool_xml::{normalize_target, Permissions, PoolDef, PoolType, PoolUsage};
pub use uuid::Uuid;
pub use vol_xml::{parse_format, BackingDef, VolumeDef};
pub use volume::{BackingInfo, VolumeInfo};

/// Checks a pool or volume name: it becomes a file name in a directory we
/// own, so it must not escape it or hide: no `/`, NUL or control
/// characters, not `.`/`..` nor starting with `.`, at most 255 bytes.
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "invalid {kind} name '{}': {why}",
            name.escape_debug()
        )))
    };
    if name.is_empty() {
        return Err(Error::invalid(format!("{kind} name must not be empty")));
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.contains('/') {
        return bad("must not contain '/'");
    }
    if name.contains('\0') {
        return bad("must not contain NUL");
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not names");
    }
    if name.starts_with('.') {
        return bad("must not start with '.' (hidden files are not volumes)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        for ok in ["a", "vm1.qcow2", "disk image with spaces.raw", "a..b", "ü"] {
            check_name("volume", ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("../x", "'/'"),
            ("a/b", "'/'"),
            ("..", "'..'"),
            (".", "'.'"),
            (".hidden", "start with '.'"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
        ] {
            let e = check_name("volume", bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert_eq!(
                check_name("volume", bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
        }
        assert!(check_name("pool", &"x".repeat(256)).is_err());
    }
}
