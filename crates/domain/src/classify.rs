//! Which libvirt elements vireo keeps without using them and which it refuses.
//!
//! * **Kept** ("cosmetic"): they describe host-side policy, management hints or devices
//!   whose absence a direct-kernel-boot Linux guest does not depend on (a display, a
//!   tablet, USB and PCI controllers vireo lays out itself). They are stored verbatim,
//!   returned by `dumpxml` and listed in a warning.
//! * **Refused**: they would give the guest hardware or firmware vireo cannot provide, so
//!   running the definition would not be what it says. Defining it fails, naming the path.
//!
//! Anything in neither list (and not modelled) is an unknown element and is refused too:
//! a typo must not be silently kept. docs/domain-xml.md shows this table; a test checks
//! the two agree.

/// What to do with an element that is not part of the typed model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Keep verbatim and warn; the text says what the element is.
    Keep(&'static str),
    /// Refuse; the text says why.
    Refuse(&'static str),
}

/// (parent path, element name, class).
pub const TABLE: &[(&str, &str, Class)] = &[
    // <domain>
    (
        "/domain",
        "pm",
        Class::Keep("suspend-to-RAM/disk capabilities"),
    ),
    ("/domain", "seclabel", Class::Keep("host security labels")),
    ("/domain", "perf", Class::Keep("host perf events")),
    (
        "/domain",
        "resource",
        Class::Keep("host resource partition"),
    ),
    ("/domain", "blkiotune", Class::Keep("host block I/O tuning")),
    ("/domain", "memtune", Class::Keep("host memory limits")),
    (
        "/domain",
        "cputune",
        Class::Keep("host CPU tuning and pinning"),
    ),
    (
        "/domain",
        "numatune",
        Class::Keep("host NUMA memory placement"),
    ),
    (
        "/domain",
        "memoryBacking",
        Class::Keep("host memory backing (huge pages)"),
    ),
    ("/domain", "iothreads", Class::Keep("host I/O threads")),
    ("/domain", "iothreadids", Class::Keep("host I/O threads")),
    (
        "/domain",
        "on_lockfailure",
        Class::Keep("lock manager policy"),
    ),
    (
        "/domain",
        "maxMemory",
        Class::Refuse("memory hotplug slots need DIMM devices vireo does not provide"),
    ),
    (
        "/domain",
        "vcpus",
        Class::Refuse("per-vCPU hotplug settings need vCPU hotplug, which vireo does not have"),
    ),
    (
        "/domain",
        "genid",
        Class::Refuse("vireo provides no VM generation ID device"),
    ),
    (
        "/domain",
        "sysinfo",
        Class::Refuse("vireo provides no SMBIOS tables"),
    ),
    (
        "/domain",
        "bootloader",
        Class::Refuse("a host-side bootloader is a Xen feature"),
    ),
    (
        "/domain",
        "bootloader_args",
        Class::Refuse("a host-side bootloader is a Xen feature"),
    ),
    (
        "/domain",
        "idmap",
        Class::Refuse("user ID maps are for containers"),
    ),
    (
        "/domain",
        "keywrap",
        Class::Refuse("key wrapping is an s390 feature"),
    ),
    (
        "/domain",
        "launchSecurity",
        Class::Refuse("vireo does not provide encrypted guest memory (SEV/TDX)"),
    ),
    // <os>
    ("/domain/os", "bootmenu", Class::Keep("firmware boot menu")),
    ("/domain/os", "bios", Class::Keep("firmware settings")),
    ("/domain/os", "smbios", Class::Keep("SMBIOS source")),
    (
        "/domain/os",
        "loader",
        Class::Refuse("vireo boots the kernel directly and runs no BIOS or UEFI firmware"),
    ),
    (
        "/domain/os",
        "nvram",
        Class::Refuse("vireo runs no UEFI firmware, so it has no variable store"),
    ),
    (
        "/domain/os",
        "firmware",
        Class::Refuse("vireo runs no BIOS or UEFI firmware"),
    ),
    (
        "/domain/os",
        "acpi",
        Class::Refuse("vireo builds its own ACPI tables"),
    ),
    (
        "/domain/os",
        "dtb",
        Class::Refuse("device trees are not used on x86_64"),
    ),
    (
        "/domain/os",
        "init",
        Class::Refuse("an init program is for containers"),
    ),
    (
        "/domain/os",
        "shim",
        Class::Refuse("vireo runs no UEFI firmware"),
    ),
    // <features>
    ("/domain/features", "vmport", Class::Keep("VMware I/O port")),
    (
        "/domain/features",
        "hyperv",
        Class::Keep("Hyper-V enlightenments"),
    ),
    (
        "/domain/features",
        "kvm",
        Class::Keep("KVM paravirtual feature switches"),
    ),
    (
        "/domain/features",
        "pvspinlock",
        Class::Keep("paravirtual spinlocks"),
    ),
    (
        "/domain/features",
        "smm",
        Class::Keep("system management mode"),
    ),
    (
        "/domain/features",
        "ioapic",
        Class::Keep("IOAPIC driver choice"),
    ),
    (
        "/domain/features",
        "hap",
        Class::Keep("hardware-assisted paging switch"),
    ),
    (
        "/domain/features",
        "privnet",
        Class::Keep("private network namespace"),
    ),
    (
        "/domain/features",
        "viridian",
        Class::Keep("Hyper-V enlightenments"),
    ),
    (
        "/domain/features",
        "msrs",
        Class::Keep("unknown-MSR policy"),
    ),
    (
        "/domain/features",
        "vmcoreinfo",
        Class::Keep("crash-dump information device"),
    ),
    (
        "/domain/features",
        "pmu",
        Class::Keep("performance monitoring switch"),
    ),
    (
        "/domain/features",
        "gic",
        Class::Refuse("an ARM interrupt controller cannot be given to an x86_64 guest"),
    ),
    (
        "/domain/features",
        "hpt",
        Class::Refuse("a PowerPC feature"),
    ),
    // <cpu>
    ("/domain/cpu", "cache", Class::Keep("CPU cache reporting")),
    (
        "/domain/cpu",
        "feature",
        Class::Refuse("vireo's CPU templates cannot require or disable single CPU features"),
    ),
    (
        "/domain/cpu",
        "numa",
        Class::Refuse("vireo gives the guest no NUMA topology"),
    ),
    (
        "/domain/cpu",
        "vendor",
        Class::Refuse("vireo cannot change the CPU vendor the guest sees"),
    ),
    (
        "/domain/cpu",
        "maxphysaddr",
        Class::Refuse("vireo does not change the physical address width the guest sees"),
    ),
    // <devices>
    (
        "/domain/devices",
        "controller",
        Class::Keep("bus controller (vireo lays out its own buses)"),
    ),
    (
        "/domain/devices",
        "channel",
        Class::Keep("guest agent or SPICE channel"),
    ),
    ("/domain/devices", "input", Class::Keep("input device")),
    (
        "/domain/devices",
        "graphics",
        Class::Keep("graphical console"),
    ),
    ("/domain/devices", "video", Class::Keep("video adapter")),
    ("/domain/devices", "sound", Class::Keep("sound card")),
    ("/domain/devices", "audio", Class::Keep("audio backend")),
    (
        "/domain/devices",
        "redirdev",
        Class::Keep("USB redirection"),
    ),
    (
        "/domain/devices",
        "redirfilter",
        Class::Keep("USB redirection filter"),
    ),
    ("/domain/devices", "hub", Class::Keep("USB hub")),
    ("/domain/devices", "panic", Class::Keep("panic notifier")),
    (
        "/domain/devices",
        "lease",
        Class::Keep("lock manager lease"),
    ),
    (
        "/domain/devices",
        "hostdev",
        Class::Refuse("host device passthrough is not available in vireo"),
    ),
    (
        "/domain/devices",
        "filesystem",
        Class::Refuse("vireo has no shared filesystem device (virtiofs/9p)"),
    ),
    (
        "/domain/devices",
        "tpm",
        Class::Refuse("vireo provides no TPM"),
    ),
    (
        "/domain/devices",
        "watchdog",
        Class::Refuse("vireo provides no watchdog device"),
    ),
    (
        "/domain/devices",
        "parallel",
        Class::Refuse("vireo provides no parallel port"),
    ),
    (
        "/domain/devices",
        "smartcard",
        Class::Refuse("vireo provides no smartcard reader"),
    ),
    (
        "/domain/devices",
        "shmem",
        Class::Refuse("vireo provides no shared memory device"),
    ),
    (
        "/domain/devices",
        "iommu",
        Class::Refuse("vireo provides no IOMMU"),
    ),
    (
        "/domain/devices",
        "nvram",
        Class::Refuse("a PowerPC NVRAM device"),
    ),
    (
        "/domain/devices",
        "crypto",
        Class::Refuse("vireo provides no crypto device"),
    ),
    (
        "/domain/devices",
        "memory",
        Class::Refuse("memory hotplug DIMMs are not available in vireo"),
    ),
    (
        "/domain/devices",
        "pstore",
        Class::Refuse("vireo provides no pstore device"),
    ),
    // <disk>
    (
        "/domain/devices/disk",
        "address",
        Class::Keep("device address (vireo assigns its own)"),
    ),
    ("/domain/devices/disk", "alias", Class::Keep("device alias")),
    (
        "/domain/devices/disk",
        "shareable",
        Class::Keep("shared-image hint"),
    ),
    (
        "/domain/devices/disk",
        "backingStore",
        Class::Keep("backing chain description (read from the image)"),
    ),
    (
        "/domain/devices/disk",
        "iotune",
        Class::Keep("host I/O throttling"),
    ),
    (
        "/domain/devices/disk",
        "wwn",
        Class::Keep("SCSI world wide name"),
    ),
    (
        "/domain/devices/disk",
        "encryption",
        Class::Refuse("vireo cannot open encrypted images"),
    ),
    (
        "/domain/devices/disk",
        "auth",
        Class::Refuse("network disks are not available in vireo"),
    ),
    (
        "/domain/devices/disk",
        "geometry",
        Class::Refuse("vireo cannot set a disk geometry"),
    ),
    (
        "/domain/devices/disk",
        "blockio",
        Class::Refuse("vireo cannot change the block sizes the guest sees"),
    ),
    (
        "/domain/devices/disk",
        "transient",
        Class::Refuse("vireo cannot discard a disk's writes at shutdown"),
    ),
    // <interface>
    (
        "/domain/devices/interface",
        "address",
        Class::Keep("device address (vireo assigns its own)"),
    ),
    (
        "/domain/devices/interface",
        "alias",
        Class::Keep("device alias"),
    ),
    (
        "/domain/devices/interface",
        "link",
        Class::Keep("link state"),
    ),
    ("/domain/devices/interface", "mtu", Class::Keep("MTU")),
    (
        "/domain/devices/interface",
        "driver",
        Class::Keep("host backend tuning"),
    ),
    (
        "/domain/devices/interface",
        "rom",
        Class::Keep("option ROM (vireo runs no firmware)"),
    ),
    (
        "/domain/devices/interface",
        "bandwidth",
        Class::Keep("host bandwidth limits"),
    ),
    (
        "/domain/devices/interface",
        "filterref",
        Class::Keep("host packet filter"),
    ),
    (
        "/domain/devices/interface",
        "virtualport",
        Class::Keep("host virtual port profile"),
    ),
    (
        "/domain/devices/interface",
        "vlan",
        Class::Keep("host VLAN tagging"),
    ),
    (
        "/domain/devices/interface",
        "ip",
        Class::Keep("host-side address"),
    ),
    (
        "/domain/devices/interface",
        "route",
        Class::Keep("host-side route"),
    ),
    (
        "/domain/devices/interface",
        "coalesce",
        Class::Keep("host interrupt coalescing"),
    ),
    (
        "/domain/devices/interface",
        "tune",
        Class::Keep("host tap tuning"),
    ),
    (
        "/domain/devices/interface",
        "backend",
        Class::Keep("host backend paths"),
    ),
    (
        "/domain/devices/interface",
        "guest",
        Class::Keep("guest-side device name"),
    ),
    (
        "/domain/devices/interface",
        "teaming",
        Class::Refuse("failover teaming is not available in vireo"),
    ),
    // <serial>, <console>
    (
        "/domain/devices/serial",
        "source",
        Class::Keep("the host end (vireo uses its console socket)"),
    ),
    (
        "/domain/devices/serial",
        "alias",
        Class::Keep("device alias"),
    ),
    (
        "/domain/devices/serial",
        "log",
        Class::Keep("console log (vireo always logs the console)"),
    ),
    (
        "/domain/devices/serial",
        "address",
        Class::Keep("device address"),
    ),
    (
        "/domain/devices/console",
        "source",
        Class::Keep("the host end (vireo uses its console socket)"),
    ),
    (
        "/domain/devices/console",
        "alias",
        Class::Keep("device alias"),
    ),
    (
        "/domain/devices/console",
        "log",
        Class::Keep("console log (vireo always logs the console)"),
    ),
    // <rng>, <memballoon>, <vsock>
    (
        "/domain/devices/rng",
        "rate",
        Class::Keep("entropy rate limit"),
    ),
    ("/domain/devices/rng", "alias", Class::Keep("device alias")),
    (
        "/domain/devices/rng",
        "address",
        Class::Keep("device address (vireo assigns its own)"),
    ),
    (
        "/domain/devices/memballoon",
        "stats",
        Class::Keep("statistics period"),
    ),
    (
        "/domain/devices/memballoon",
        "alias",
        Class::Keep("device alias"),
    ),
    (
        "/domain/devices/memballoon",
        "address",
        Class::Keep("device address (vireo assigns its own)"),
    ),
    (
        "/domain/devices/memballoon",
        "driver",
        Class::Keep("device driver options"),
    ),
    (
        "/domain/devices/vsock",
        "alias",
        Class::Keep("device alias"),
    ),
    (
        "/domain/devices/vsock",
        "address",
        Class::Keep("device address (vireo assigns its own)"),
    ),
];

/// The class of `name` under `parent` (a path such as `/domain/devices`), if listed.
pub fn classify(parent: &str, name: &str) -> Option<Class> {
    TABLE
        .iter()
        .find(|(p, n, _)| *p == parent && *n == name)
        .map(|(_, _, c)| *c)
}

/// libvirt's order of `<domain>`'s children, so kept elements are written where libvirt
/// writes them. Names not listed go last.
pub(crate) const DOMAIN_ORDER: &[&str] = &[
    "name",
    "uuid",
    "genid",
    "title",
    "description",
    "metadata",
    "maxMemory",
    "memory",
    "currentMemory",
    "blkiotune",
    "memtune",
    "memoryBacking",
    "vcpu",
    "vcpus",
    "iothreads",
    "iothreadids",
    "cputune",
    "numatune",
    "resource",
    "sysinfo",
    "os",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_lockfailure",
    "pm",
    "perf",
    "devices",
    "seclabel",
];

/// libvirt's order of `<os>`'s children.
pub(crate) const OS_ORDER: &[&str] = &[
    "type", "kernel", "initrd", "cmdline", "boot", "bootmenu", "smbios", "bios",
];

/// Where `name` goes in `order` (unlisted names last).
pub(crate) fn rank(order: &[&str], name: &str) -> usize {
    order.iter().position(|n| *n == name).unwrap_or(order.len())
}
