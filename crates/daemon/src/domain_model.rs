//! The domain model the daemon works with (crate vireo-domain once it lands; a stand-in
//! until then), plus the few questions the supervisor asks of it.

pub use crate::standin_domain::{Domain, Parsed};

/// `on_poweroff` is `restart`.
pub fn on_poweroff_restarts(d: &Domain) -> bool {
    d.on_poweroff == "restart"
}

/// `on_crash` is `restart` or `coredump-restart`.
pub fn on_crash_restarts(d: &Domain) -> bool {
    matches!(d.on_crash.as_str(), "restart" | "coredump-restart")
}

pub fn vcpus(d: &Domain) -> u32 {
    d.vcpus
}

pub fn max_memory_kib(d: &Domain) -> u64 {
    d.memory_kib
}

pub fn current_memory_kib(d: &Domain) -> u64 {
    d.current_memory_kib
}

/// Host files of the domain's disks (`undefine --remove-all-storage`).
pub fn disk_paths(d: &Domain) -> Vec<std::path::PathBuf> {
    d.disk_paths()
}

pub fn block_devices(d: &Domain) -> Vec<vireo_api::protocol::domain::BlockDevice> {
    d.disk_paths()
        .into_iter()
        .enumerate()
        .map(|(i, p)| vireo_api::protocol::domain::BlockDevice {
            kind: "file".into(),
            device: "disk".into(),
            target: format!("vd{}", (b'a' + i as u8) as char),
            source: Some(p.display().to_string()),
        })
        .collect()
}

pub fn interfaces(_d: &Domain) -> Vec<vireo_api::protocol::domain::Interface> {
    Vec::new()
}

pub fn set_memory_kib(_d: &mut Domain, _kib: u64, _maximum: bool) -> Result<(), String> {
    Err("setmem needs the domain model (crate vireo-domain), not landed yet".into())
}

pub fn set_vcpus(_d: &mut Domain, _count: u32, _maximum: bool) -> Result<(), String> {
    Err("setvcpus needs the domain model (crate vireo-domain), not landed yet".into())
}
