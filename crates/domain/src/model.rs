//! The typed domain model: what a libvirt domain definition says, in Rust types.
//!
//! Each type mirrors one libvirt element. Values vireo reads are typed fields; attributes
//! and child elements libvirt defines but vireo does not use are kept (`extra_attrs`,
//! `extra`) so `dumpxml` gives back what was defined. The model is serde-serialisable (the
//! daemon may store it as JSON); [`Domain::validate`](crate::Domain::validate) checks one
//! built or deserialised without going through XML.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vireo_hypervisor::CpuTemplate;

use crate::ids::{MacAddr, Uuid};
use crate::xml::XmlElement;

/// Attributes kept verbatim: (qualified name, value), in document order.
pub type Attrs = Vec<(String, String)>;

/// A domain definition (`<domain type='kvm'>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// `<name>`: unique per connection; used in file names, so no `/`.
    pub name: String,
    /// `<uuid>`: generated (version 4) when the XML has none.
    pub uuid: Uuid,
    /// `<title>`: a one-line description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `<description>`: free text, kept exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `<metadata>`: applications' own elements, kept verbatim (`None` = no element).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Vec<XmlElement>>,
    /// `<memory>`: the guest's RAM at boot (libvirt: the maximum), KiB.
    pub memory_kib: u64,
    /// `<currentMemory>`: the balloon target, KiB (≤ `memory_kib`; equal when absent).
    pub current_memory_kib: u64,
    /// Kept attributes of `<memory>` (`dumpCore`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_attrs: Attrs,
    /// `<vcpu>`.
    pub vcpu: Vcpu,
    /// `<os>`: guest type and direct kernel boot.
    pub os: Os,
    /// `<features>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// `<cpu>`: the CPU model the guest sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// `<clock>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    /// `<on_poweroff>` (default destroy).
    pub on_poweroff: LifecycleAction,
    /// `<on_reboot>` (default restart).
    pub on_reboot: LifecycleAction,
    /// `<on_crash>` (default destroy).
    pub on_crash: LifecycleAction,
    /// `<devices><emulator>`: kept; vireo always runs `vireo-vmm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulator: Option<PathBuf>,
    /// The other children of `<devices>`, in document order.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Kept children of `<domain>` vireo does not use (`<pm>`, `<seclabel>`, tuning…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

/// `<vcpu placement='static' current='N' cpuset='…'>MAX</vcpu>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vcpu {
    /// The maximum vCPU count (the element's text).
    pub max: u32,
    /// vCPUs online at boot (`current`; equal to `max` when absent). vireo has no vCPU
    /// hotplug, so this is what the guest gets.
    pub current: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<VcpuPlacement>,
    /// Host CPUs the vCPUs may run on (kept; vireo does not pin yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VcpuPlacement {
    Static,
    Auto,
}

impl VcpuPlacement {
    pub fn as_str(self) -> &'static str {
        match self {
            VcpuPlacement::Static => "static",
            VcpuPlacement::Auto => "auto",
        }
    }
}

/// `<os>`: always `<type>hvm</type>` on x86_64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// `<type arch=…>`: always `x86_64` (the default when absent).
    pub arch: String,
    /// `<type machine=…>`: kept (vireo has one machine model of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// `<kernel>`: required to run (direct kernel boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// `<boot dev=…>` in order (kept: with a kernel there is nothing to choose).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot: Vec<BootDevice>,
    /// Kept attributes of `<os>` (`firmware='bios'`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
    /// Kept children (`<bootmenu>`, `<bios>`, `<smbios>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Hd,
    Cdrom,
    Network,
    Fd,
}

impl BootDevice {
    pub const ALL: [BootDevice; 4] = [
        BootDevice::Hd,
        BootDevice::Cdrom,
        BootDevice::Network,
        BootDevice::Fd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Hd => "hd",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Network => "network",
            BootDevice::Fd => "fd",
        }
    }
}

/// `<features>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// `<acpi/>`: vireo always provides ACPI.
    #[serde(default)]
    pub acpi: bool,
    /// `<apic/>`: vireo always provides local APICs and an IOAPIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apic: Option<Apic>,
    /// `<pae/>`: implied by a 64-bit guest.
    #[serde(default)]
    pub pae: bool,
    /// Kept children (`<vmport>`, `<hyperv>`, `<kvm>`, `<smm>`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

/// `<apic eoi='on|off'/>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Apic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eoi: Option<String>,
}

/// `<cpu mode=…>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub mode: CpuMode,
    /// `<model>` (custom mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<CpuModel>,
    /// `<topology>`: must be what vireo gives (one socket of single-threaded cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// Kept attributes (`match`, `check`, `migratable`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
    /// Kept children (`<cache>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

/// libvirt's CPU modes and the vireo CPU template each maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuMode {
    /// Everything the host (KVM) offers → template `host`.
    HostPassthrough,
    /// A named model close to the host → template `host` (vireo has no named models;
    /// `host` is the closest).
    HostModel,
    /// Everything the hypervisor can offer → template `host`.
    Maximum,
    /// A named model (`qemu64`, `Skylake-Client`…) → template `baseline`, the conservative
    /// x86-64 vireo has; newer named models lose their extensions (warned at parse).
    Custom,
}

impl CpuMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuMode::HostPassthrough => "host-passthrough",
            CpuMode::HostModel => "host-model",
            CpuMode::Maximum => "maximum",
            CpuMode::Custom => "custom",
        }
    }

    /// The vireo CPU template for this mode (docs/domain-xml.md has the table).
    pub fn template(self) -> CpuTemplate {
        match self {
            CpuMode::HostPassthrough | CpuMode::HostModel | CpuMode::Maximum => CpuTemplate::Host,
            CpuMode::Custom => CpuTemplate::Baseline,
        }
    }
}

/// `<model fallback='…' vendor_id='…'>NAME</model>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModel {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
}

/// `<topology sockets dies clusters cores threads/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub sockets: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dies: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<u32>,
    pub cores: u32,
    pub threads: u32,
}

/// `<clock offset=…>` with its timers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    pub offset: ClockOffset,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<Timer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockOffset {
    /// The RTC runs in UTC (vireo's CMOS clock).
    Utc,
    /// The RTC runs in the host's local time (defined, not yet runnable).
    Localtime,
}

impl ClockOffset {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockOffset::Utc => "utc",
            ClockOffset::Localtime => "localtime",
        }
    }
}

/// `<timer name=… present=… tickpolicy=…/>`: kept; vireo's timers are fixed (PIT, CMOS
/// RTC, LAPIC, kvmclock as KVM offers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub name: String,
    /// The other attributes (`present`, `tickpolicy`, `track`, `frequency`, `mode`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attrs: Attrs,
}

/// What to do when the guest powers off, reboots or crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LifecycleAction {
    Destroy,
    Restart,
    Preserve,
    RenameRestart,
    CoredumpDestroy,
    CoredumpRestart,
}

impl LifecycleAction {
    pub const ALL: [LifecycleAction; 6] = [
        LifecycleAction::Destroy,
        LifecycleAction::Restart,
        LifecycleAction::Preserve,
        LifecycleAction::RenameRestart,
        LifecycleAction::CoredumpDestroy,
        LifecycleAction::CoredumpRestart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleAction::Destroy => "destroy",
            LifecycleAction::Restart => "restart",
            LifecycleAction::Preserve => "preserve",
            LifecycleAction::RenameRestart => "rename-restart",
            LifecycleAction::CoredumpDestroy => "coredump-destroy",
            LifecycleAction::CoredumpRestart => "coredump-restart",
        }
    }

    /// Whether libvirt allows it for `on_poweroff`/`on_reboot` (the coredump ones are for
    /// `on_crash` only).
    pub fn allowed_for_non_crash(self) -> bool {
        !matches!(
            self,
            LifecycleAction::CoredumpDestroy | LifecycleAction::CoredumpRestart
        )
    }
}

/// A child of `<devices>` (other than `<emulator>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Disk(Disk),
    Interface(Interface),
    Serial(CharDevice),
    Console(CharDevice),
    Rng(Rng),
    Memballoon(Memballoon),
    Vsock(Vsock),
    /// A cosmetic device kept verbatim (`<graphics>`, `<video>`, `<controller>`, …).
    Other(XmlElement),
}

/// `<disk type='file|block' device='disk'>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub kind: DiskType,
    /// `<driver name='qemu' type='qcow2' …>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<DiskDriver>,
    /// `<source file=…>` or `<source dev=…>`.
    pub source: PathBuf,
    /// Kept attributes of `<source>` (`index`, `startupPolicy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_attrs: Attrs,
    /// `<target dev='vda' bus='virtio'/>`.
    pub target: DiskTarget,
    /// `<readonly/>`.
    #[serde(default)]
    pub readonly: bool,
    /// `<serial>`: the serial number the guest sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// `<boot order='N'/>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// Kept attributes of `<disk>` (`snapshot`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
    /// Kept children (`<address>`, `<alias>`, `<iotune>`, `<shareable>`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    /// An image file (`<source file=…>`).
    File,
    /// A block device (`<source dev=…>`).
    Block,
}

impl DiskType {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskType::File => "file",
            DiskType::Block => "block",
        }
    }
}

/// `<driver>` of a disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDriver {
    /// `name`: always `qemu` when given (libvirt's name for its own block layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `type`: the image format (raw when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Kept attributes (`cache`, `io`, `discard`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// `<target dev=… bus='virtio'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskTarget {
    /// `vda`, `vdb`, …: a name hint; the guest kernel names its disks itself.
    pub dev: String,
    /// Kept attributes (`removable`, `rotation_rate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
}

impl Disk {
    /// The image format (`<driver type>`; raw when absent, as libvirt assumes).
    pub fn format(&self) -> DiskFormat {
        self.driver
            .as_ref()
            .and_then(|d| d.format)
            .unwrap_or(DiskFormat::Raw)
    }
}

/// `<interface type='network|bridge|ethernet'>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub kind: InterfaceType,
    /// `<mac address>`: generated (52:54:00:…) when absent.
    pub mac: MacAddr,
    /// `<source network=…>` / `<source bridge=…>` (none for ethernet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Kept attributes of `<source>` (`portgroup`, `portid`, a network's `bridge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_attrs: Attrs,
    /// `<target dev=…>`: the host tap device's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_dev: Option<String>,
    /// Kept attributes of `<target>` (`managed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_attrs: Attrs,
    /// `<boot order='N'/>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// Kept attributes of `<interface>` (`trustGuestRxFilters`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
    /// Kept children (`<address>`, `<link>`, `<mtu>`, `<driver>`, `<bandwidth>`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceType {
    /// Attached to a libvirt-style virtual network (`<source network=…>`).
    Network,
    /// Attached to a host bridge (`<source bridge=…>`).
    Bridge,
    /// A tap device the host configures (`<target dev=…>`).
    Ethernet,
}

impl InterfaceType {
    pub fn as_str(self) -> &'static str {
        match self {
            InterfaceType::Network => "network",
            InterfaceType::Bridge => "bridge",
            InterfaceType::Ethernet => "ethernet",
        }
    }
}

/// `<serial type='pty'>` or `<console type='pty'>`: the guest's COM1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharDevice {
    /// `<target type=…>` (`isa-serial` for a serial port, `serial` for a console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    /// `<target port=…>`: always 0 (vireo has one UART).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
    /// `<target><model name=…/></target>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_model: Option<String>,
    /// Kept attributes (`tty` of a running domain's console).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
    /// Kept children (`<source path>`, `<alias>`, `<log>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

/// `<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    pub backend: RngBackend,
    /// Kept children (`<rate>`, `<alias>`, `<address>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RngBackend {
    /// `<backend model='random'>PATH</backend>`: /dev/urandom, /dev/random or /dev/hwrng.
    Random(PathBuf),
    /// `<backend model='builtin'/>`: the VMM's own source (getrandom).
    Builtin,
}

/// `<memballoon model='virtio|none'>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memballoon {
    pub model: BalloonModel,
    /// Kept attributes (`autodeflate`, `freePageReporting`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_attrs: Attrs,
    /// Kept children (`<stats>`, `<alias>`, `<address>`, `<driver>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BalloonModel {
    Virtio,
    /// No balloon device.
    None,
}

impl BalloonModel {
    pub fn as_str(self) -> &'static str {
        match self {
            BalloonModel::Virtio => "virtio",
            BalloonModel::None => "none",
        }
    }
}

/// `<vsock model='virtio'><cid auto='yes|no' address='N'/></vsock>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// `model='virtio'` written explicitly.
    #[serde(default)]
    pub model_virtio: bool,
    /// `<cid auto='yes'>`: the host picks a free context ID at start.
    pub cid_auto: bool,
    /// `<cid address=…>`: the guest's context ID (≥ 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<u32>,
    /// Kept children (`<alias>`, `<address>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<XmlElement>,
}
