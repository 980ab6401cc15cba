//! The questions the daemon asks of a domain definition (crate vireo-domain), in one
//! place so that the API handlers and the supervisor stay free of model details.

use std::path::PathBuf;

use vireo_api::protocol::domain::{BlockDevice, Interface};
use vireo_domain::{DiskType, LifecycleAction};
pub use vireo_domain::{Domain, Parsed};
use vireo_vmm::{ConsoleConfig, VmConfig};

/// The VMM configuration with the serial console on `console` (a socket) and logged; a
/// `<vsock>`'s host socket is `vsock.sock` next to the console socket.
pub fn vm_config(d: &Domain, console: PathBuf, log: PathBuf) -> Result<VmConfig, String> {
    let vsock_socket = console.with_file_name("vsock.sock");
    let mut config = d
        .to_vm_config(ConsoleConfig::Socket(console))
        .map_err(|e| e.to_string())?;
    config.console_log = Some(log);
    if let Some(v) = config.vsock.as_mut() {
        v.socket = vsock_socket;
    }
    Ok(config)
}

/// `on_poweroff` is `restart` (or `rename-restart`, treated alike).
pub fn on_poweroff_restarts(d: &Domain) -> bool {
    restarts(d.on_poweroff)
}

/// `on_crash` is `restart`, `rename-restart` or `coredump-restart`.
pub fn on_crash_restarts(d: &Domain) -> bool {
    restarts(d.on_crash)
}

fn restarts(a: LifecycleAction) -> bool {
    matches!(
        a,
        LifecycleAction::Restart
            | LifecycleAction::RenameRestart
            | LifecycleAction::CoredumpRestart
    )
}

/// The vCPUs the guest boots with.
pub fn vcpus(d: &Domain) -> u32 {
    d.vcpu.current
}

pub fn max_vcpus(d: &Domain) -> u32 {
    d.vcpu.max
}

pub fn max_memory_kib(d: &Domain) -> u64 {
    d.memory_kib
}

pub fn current_memory_kib(d: &Domain) -> u64 {
    d.current_memory_kib
}

/// Whether the domain has a virtio memory balloon (what a live `setmem` works through).
pub fn has_balloon(d: &Domain) -> bool {
    d.devices.iter().any(|dev| {
        matches!(
            dev,
            vireo_domain::Device::Memballoon(m) if m.model == vireo_domain::BalloonModel::Virtio
        )
    })
}

/// Host files of the domain's file-backed disks (`undefine --remove-all-storage`); block
/// devices are never deleted.
pub fn disk_paths(d: &Domain) -> Vec<PathBuf> {
    d.disks()
        .filter(|disk| disk.kind == DiskType::File)
        .map(|disk| disk.source.clone())
        .collect()
}

/// The host files a running domain uses and that storage operations must leave alone:
/// every disk (files and block devices), and the kernel and initrd, which the VMM reads
/// again at every guest reset.
pub fn files_in_use(d: &Domain) -> Vec<PathBuf> {
    d.disks()
        .map(|disk| disk.source.clone())
        .chain(d.os.kernel.clone())
        .chain(d.os.initrd.clone())
        .collect()
}

pub fn block_devices(d: &Domain) -> Vec<BlockDevice> {
    d.blk_rows()
        .into_iter()
        .map(|r| BlockDevice {
            kind: r.kind,
            device: r.device,
            target: r.target,
            source: Some(r.source),
        })
        .collect()
}

pub fn interfaces(d: &Domain) -> Vec<Interface> {
    let opt = |s: String| (s != "-").then_some(s);
    d.if_rows()
        .into_iter()
        .map(|r| Interface {
            interface: opt(r.interface),
            kind: r.kind,
            source: opt(r.source),
            model: Some(r.model),
            mac: Some(r.mac),
        })
        .collect()
}

pub fn set_memory_kib(d: &mut Domain, kib: u64, maximum: bool) -> Result<(), String> {
    if maximum {
        d.set_max_memory(kib)
    } else {
        d.set_memory(kib)
    }
    .map_err(|e| e.to_string())
}

pub fn set_vcpus(d: &mut Domain, count: u32, maximum: bool) -> Result<(), String> {
    d.set_vcpus(count, maximum).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_socket_sits_next_to_the_console_socket() {
        let xml = "<domain type='kvm'><name>v</name><memory unit='MiB'>64</memory>\
                   <os><type>hvm</type><kernel>/k</kernel></os><devices>\
                   <vsock model='virtio'><cid auto='no' address='9'/></vsock></devices></domain>";
        let d = Domain::from_xml(xml).unwrap().domain;
        let c = vm_config(&d, "/run/vireo/v/console.sock".into(), "/l".into()).unwrap();
        let v = c.vsock.unwrap();
        assert_eq!((v.cid, v.socket), (9, "/run/vireo/v/vsock.sock".into()));
    }
}
