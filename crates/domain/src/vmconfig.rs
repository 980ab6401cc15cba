//! The domain model → the VMM's configuration ([`VmConfig`]).
//!
//! Each device kind has one arm in [`device`] filling its VmConfig field; what vireo-vmm
//! cannot run fails with the element's path.

use vireo_hypervisor::CpuTemplate;
use vireo_vmm::config::devices::{MAX_DISK_QUEUES, MAX_NET_QUEUES, MAX_SERIAL_LEN};
use vireo_vmm::config::{BalloonConfig, NetConfig, VsockConfig};
use vireo_vmm::config::{DiskConfig, DiskFormat as VmmDiskFormat};
use vireo_vmm::{ConsoleConfig, VmConfig};

use crate::error::DomainError;
use crate::model::*;

impl Domain {
    /// The VMM configuration for this domain. `console` is where the guest's serial port
    /// goes (the daemon passes its console socket; the domain's `<serial>`/`<console>`
    /// elements only say that there is one, which vireo always has).
    ///
    /// Mapping: `<kernel>`/`<initrd>`/`<cmdline>` (empty when absent) → boot;
    /// `<memory>` → RAM (`<currentMemory>` below it is the balloon's initial target);
    /// `<vcpu current>` → vCPUs (no hotplug: the guest gets the current count);
    /// `<cpu mode>` → CPU template ([`CpuMode::template`]; `host` when there is no
    /// `<cpu>`); `<on_reboot>` other than `restart` → `no_reboot` (the VMM exits on a guest
    /// reset and the daemon applies the action).
    ///
    /// Host limits (RAM, KVM's vCPU limit) are checked by [`VmConfig::validate`].
    pub fn to_vm_config(&self, console: ConsoleConfig) -> Result<VmConfig, DomainError> {
        self.validate()?;
        let kernel = self.os.kernel.clone().ok_or_else(|| {
            DomainError::not_runnable(
                "/domain/os/kernel",
                "direct kernel boot required: vireo runs no firmware that could boot from a disk \
                 (add <kernel>, and <initrd>/<cmdline> as needed, to <os>)",
            )
        })?;
        if let Some(Clock {
            offset: ClockOffset::Localtime,
            ..
        }) = &self.clock
        {
            return Err(DomainError::not_runnable(
                "/domain/clock[@offset='localtime']",
                "vireo's real-time clock runs in UTC for now (use offset='utc')",
            ));
        }
        let memory = self.memory_kib.checked_mul(1024).ok_or_else(|| {
            DomainError::invalid("/domain/memory", "does not fit in 64 bits of bytes")
        })?;
        let mut cfg = VmConfig {
            kernel,
            initrd: self.os.initrd.clone(),
            cmdline: self.os.cmdline.clone().unwrap_or_default(),
            memory,
            cpus: self.vcpu.current,
            console,
            cpu_template: self
                .cpu
                .as_ref()
                .map_or(CpuTemplate::Host, |c| c.mode.template()),
            no_reboot: self.on_reboot != LifecycleAction::Restart,
            // The daemon sets what the domain does not say (console_log).
            ..VmConfig::default()
        };
        for d in &self.devices {
            device(d, &mut cfg, self.current_memory_kib)?;
        }
        // The guest names virtio disks in PCI order: vda first.
        let mut disks: Vec<&Disk> = self.disks().collect();
        disks.sort_by(|a, b| {
            (a.target.dev.len(), &a.target.dev).cmp(&(b.target.dev.len(), &b.target.dev))
        });
        for d in disks {
            cfg.disks.push(disk(d)?);
        }
        Ok(cfg)
    }
}

/// Adds one device to the configuration, or says why the VMM cannot run it yet.
fn device(d: &Device, cfg: &mut VmConfig, current_kib: u64) -> Result<(), DomainError> {
    match d {
        // Added in target order by to_vm_config.
        Device::Disk(_) => Ok(()),
        Device::Interface(i) => {
            cfg.nets.push(interface(i)?);
            Ok(())
        }
        // Every backend maps to the VMM's getrandom(2): the host kernel's CSPRNG, which is
        // what /dev/urandom and (since Linux 5.6) /dev/random read too.
        Device::Rng(_) => {
            if cfg.rng.is_some() {
                return Err(DomainError::not_runnable(
                    "/domain/devices/rng[2]",
                    "vireo runs one virtio-rng device per VM",
                ));
            }
            cfg.rng = Some(vireo_vmm::RngConfig::default());
            Ok(())
        }
        Device::Vsock(v) => {
            cfg.vsock = Some(vsock(v)?);
            Ok(())
        }
        Device::Memballoon(
            m @ Memballoon {
                model: BalloonModel::Virtio,
                ..
            },
        ) => {
            let mut balloon = memballoon(m)?;
            // `<currentMemory>` below `<memory>`: the balloon holds the difference from
            // the start, as libvirt does.
            if current_kib < cfg.memory / 1024 {
                balloon.target_bytes = Some(current_kib * 1024);
            }
            cfg.balloon = Some(balloon);
            Ok(())
        }
        // `<console type='pty'><target type='virtio'/>`: the console is hvc0, on the same
        // backend as the serial port would be.
        Device::Console(c) if c.target_type.as_deref() == Some("virtio") => {
            cfg.virtio_console = true;
            Ok(())
        }
        // COM1 always exists; `console` says where it goes.
        Device::Serial(_) | Device::Console(_) => Ok(()),
        Device::Memballoon(_) | Device::Other(_) => Ok(()),
    }
}

/// `<vsock model='virtio'><cid auto='no' address='N'/></vsock>` → a virtio-vsock with
/// context id N. The host socket is the daemon's to choose (it sets
/// [`VsockConfig::socket`] next to the domain's console socket); it is left empty here.
fn vsock(v: &Vsock) -> Result<VsockConfig, DomainError> {
    use vireo_vmm::config::devices::{MAX_GUEST_CID, MIN_GUEST_CID};
    let cid =
        match (v.cid_auto, v.cid) {
            (false, Some(cid)) => u64::from(cid),
            _ => return Err(DomainError::not_runnable(
                "/domain/devices/vsock/cid[@auto='yes']",
                "vireo does not pick context IDs yet: give <cid auto='no' address='N'/> (N ≥ 3)",
            )),
        };
    if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        return Err(DomainError::invalid(
            "/domain/devices/vsock/cid/@address",
            format!("context ID {cid} is reserved (guests use {MIN_GUEST_CID} and above)"),
        ));
    }
    Ok(VsockConfig {
        cid,
        socket: Default::default(),
    })
}

/// `<memballoon model='virtio' [autodeflate='on']>` → a virtio-balloon (autodeflate is
/// VIRTIO_BALLOON_F_DEFLATE_ON_OOM). `model='none'`: no balloon.
fn memballoon(m: &Memballoon) -> Result<BalloonConfig, DomainError> {
    let autodeflate = m
        .extra_attrs
        .iter()
        .find(|(k, _)| k == "autodeflate")
        .map(|(_, v)| v.as_str());
    let deflate_on_oom = match autodeflate {
        None | Some("off") => false,
        Some("on") => true,
        Some(v) => {
            return Err(DomainError::invalid(
                "/domain/devices/memballoon/@autodeflate",
                format!("'{v}' (use on or off)"),
            ))
        }
    };
    Ok(BalloonConfig {
        deflate_on_oom,
        target_bytes: None,
    })
}

/// `<disk type='file|block' device='disk'>` → a virtio-blk disk: `<source>` is the image,
/// `<driver type>` its format (raw when absent, as libvirt assumes: vireo never probes a
/// domain's disk), `<readonly/>`, `<serial>`, `<driver queues>`.
fn disk(d: &Disk) -> Result<DiskConfig, DomainError> {
    let at = format!("/domain/devices/disk[target/@dev='{}']", d.target.dev);
    if let Some(s) = &d.serial {
        if s.len() > MAX_SERIAL_LEN || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(DomainError::invalid(
                format!("{at}/serial"),
                format!(
                    "'{s}' is not a virtio-blk serial (at most {MAX_SERIAL_LEN} printable ASCII \
                     characters)"
                ),
            ));
        }
    }
    let queues = match d
        .driver
        .as_ref()
        .and_then(|dr| dr.extra_attrs.iter().find(|(k, _)| k == "queues"))
    {
        None => None,
        Some((_, v)) => match v.parse::<u16>() {
            Ok(q) if (1..=MAX_DISK_QUEUES).contains(&q) => Some(q),
            _ => {
                return Err(DomainError::invalid(
                    format!("{at}/driver/@queues"),
                    format!("'{v}' is not a queue count (1..={MAX_DISK_QUEUES})"),
                ))
            }
        },
    };
    Ok(DiskConfig {
        path: d.source.clone(),
        format: Some(match d.format() {
            DiskFormat::Raw => VmmDiskFormat::Raw,
            DiskFormat::Qcow2 => VmmDiskFormat::Qcow2,
        }),
        readonly: d.readonly,
        serial: d.serial.clone(),
        queues,
    })
}

/// `<interface>` → a virtio-net on a TAP (`<model>` is virtio or absent: the parser
/// refuses others).
///
/// * `type='ethernet'`: `<target dev>` names an existing TAP (vireo does not create named
///   TAPs); without it vireo creates `vireo-tapN`.
/// * `type='bridge'`: vireo creates a TAP (or uses `<target dev>`) and adds it to the
///   `<source bridge>` when the VM starts.
/// * `type='network'`: libvirt-style virtual networks do not exist in vireo yet.
///
/// A `<target dev>` named `vnet…` or `vireo-tap…` is a name a previous run generated
/// (libvirt writes `vnetN` back into live XML and regenerates it on start): vireo creates
/// a fresh TAP instead of looking for that one.
fn interface(i: &Interface) -> Result<NetConfig, DomainError> {
    let bridge =
        match i.kind {
            InterfaceType::Ethernet => None,
            InterfaceType::Bridge => i.source.clone(),
            InterfaceType::Network => return Err(DomainError::not_runnable(
                format!(
                    "/domain/devices/interface[@type='network'] (network '{}')",
                    i.source.as_deref().unwrap_or_default()
                ),
                "vireo has no virtual networks yet: use type='bridge' with <source bridge=…/>, \
                 or type='ethernet' with <target dev=…/> naming a TAP",
            )),
        };
    let tap = i
        .target_dev
        .clone()
        .filter(|dev| !dev.starts_with("vnet") && !dev.starts_with("vireo-tap"));
    // <driver queues='N'/>: queue pairs (kept verbatim among the interface's children).
    let queues = match i
        .extra
        .iter()
        .filter(|e| e.name == "driver")
        .flat_map(|e| e.attrs.iter())
        .find(|(k, _)| k == "queues")
    {
        None => None,
        Some((_, v)) => match v.parse::<u16>() {
            Ok(q) if (1..=MAX_NET_QUEUES).contains(&q) => Some(q).filter(|&q| q > 1),
            _ => {
                return Err(DomainError::invalid(
                    format!(
                        "/domain/devices/interface[mac/@address='{}']/driver/@queues",
                        i.mac
                    ),
                    format!("'{v}' is not a queue count (1..={MAX_NET_QUEUES})"),
                ))
            }
        },
    };
    Ok(NetConfig {
        tap,
        mac: Some(i.mac.to_string()),
        bridge,
        queues,
    })
}
