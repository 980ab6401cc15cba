//! `vireo install`: virt-install's main options → a [`Domain`].
//!
//! Each flag has a parser taking the flag's value as virt-install does (`--disk
//! path=/x.qcow2,size=10,format=qcow2,bus=virtio`, `--network network=default`, `--boot
//! kernel=…,initrd=…,kernel_args="console=ttyS0,115200"`); [`InstallOptions::to_domain`]
//! writes the definition. Creating a disk's volume (`size=`, `pool=`) is the CLI's job: it
//! asks [`DiskSpec::needs_volume`], creates the image and fills in `path` before calling
//! `to_domain`.

use std::path::PathBuf;

use vireo_vmm::config::MAX_XAPIC_CPUS;

use crate::error::DomainError;
use crate::ids::{MacAddr, Uuid};
use crate::model::*;
use crate::validate::check_name;

type Result<T> = std::result::Result<T, DomainError>;

fn bad(flag: &str, message: impl Into<String>) -> DomainError {
    DomainError::invalid(flag, message)
}

/// Splits `a=1,b="x,y",c` into (key, value) pairs; a bare word has no value. Values may be
/// quoted with `"` or `'` to hold commas.
pub fn split_options(flag: &str, s: &str) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut items = Vec::new();
    for c in s.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ',') => items.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    if let Some(q) = quote {
        return Err(bad(flag, format!("unterminated {q} quote in '{s}'")));
    }
    items.push(cur);
    for item in items {
        if item.is_empty() {
            return Err(bad(flag, format!("empty option in '{s}'")));
        }
        match item.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
            None => out.push((item, None)),
        }
    }
    Ok(out)
}

fn value(flag: &str, key: &str, v: Option<String>) -> Result<String> {
    match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(flag, format!("{key}= needs a value"))),
    }
}

fn yes(flag: &str, key: &str, v: Option<String>) -> Result<bool> {
    match v.as_deref() {
        None | Some("on" | "yes" | "true") => Ok(true),
        Some("off" | "no" | "false") => Ok(false),
        Some(o) => Err(bad(flag, format!("{key}='{o}' must be on or off"))),
    }
}

fn absolute(flag: &str, key: &str, v: String) -> Result<PathBuf> {
    if !v.starts_with('/') {
        return Err(bad(flag, format!("{key}='{v}' must be an absolute path")));
    }
    Ok(PathBuf::from(v))
}

/// `--memory MiB` or `--memory memory=MiB,currentMemory=MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySpec {
    pub memory_mib: u64,
    pub current_mib: Option<u64>,
}

impl MemorySpec {
    pub fn parse(s: &str) -> Result<MemorySpec> {
        const F: &str = "--memory";
        let num = |k: &str, v: &str| -> Result<u64> {
            v.parse::<u64>()
                .map_err(|_| bad(F, format!("{k} '{v}' is not a whole number of MiB")))
        };
        let mut spec = MemorySpec {
            memory_mib: 0,
            current_mib: None,
        };
        let mut have = false;
        for (k, v) in split_options(F, s)? {
            match (k.as_str(), v) {
                (n, None) if !have => {
                    spec.memory_mib = num("memory", n)?;
                    have = true;
                }
                ("memory", Some(v)) => {
                    spec.memory_mib = num("memory", &v)?;
                    have = true;
                }
                ("currentMemory", Some(v)) => spec.current_mib = Some(num("currentMemory", &v)?),
                (k, _) => {
                    return Err(bad(
                        F,
                        format!("unknown option '{k}' (use MiB, memory=MiB, currentMemory=MiB)"),
                    ))
                }
            }
        }
        if !have {
            return Err(bad(F, "give the guest's RAM in MiB, e.g. --memory 1024"));
        }
        Ok(spec)
    }
}

/// `--vcpus N` or `--vcpus N,maxvcpus=M` (`vcpus=N` also accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuSpec {
    pub vcpus: u32,
    pub max_vcpus: Option<u32>,
}

impl VcpuSpec {
    pub fn parse(s: &str) -> Result<VcpuSpec> {
        const F: &str = "--vcpus";
        let num = |k: &str, v: &str| -> Result<u32> {
            v.parse::<u32>()
                .map_err(|_| bad(F, format!("{k} '{v}' is not a whole number")))
        };
        let mut spec = VcpuSpec {
            vcpus: 0,
            max_vcpus: None,
        };
        let mut have = false;
        for (k, v) in split_options(F, s)? {
            match (k.as_str(), v) {
                (n, None) if !have => {
                    spec.vcpus = num("vcpus", n)?;
                    have = true;
                }
                ("vcpus", Some(v)) => {
                    spec.vcpus = num("vcpus", &v)?;
                    have = true;
                }
                ("maxvcpus", Some(v)) => spec.max_vcpus = Some(num("maxvcpus", &v)?),
                (k, _) => {
                    return Err(bad(
                        F,
                        format!("unknown option '{k}' (use N, vcpus=N, maxvcpus=M)"),
                    ))
                }
            }
        }
        if !have {
            return Err(bad(F, "give the vCPU count, e.g. --vcpus 2"));
        }
        Ok(spec)
    }
}

/// One `--disk`: `PATH` or `path=PATH,size=GiB,format=qcow2|raw,bus=virtio,readonly=on,
/// serial=S,pool=P,vol=POOL/VOL,cache=…,discard=…`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskSpec {
    /// The image (or block device). `None` until the CLI has created a volume for it.
    pub path: Option<PathBuf>,
    /// `size=` in GiB (fractions allowed), as bytes: create the image with this size.
    pub size_bytes: Option<u64>,
    pub format: Option<DiskFormat>,
    /// `pool=`: the storage pool to create the volume in (the CLI's default pool otherwise).
    pub pool: Option<String>,
    /// `vol=POOL/VOL`: an existing volume; the CLI resolves it to a path.
    pub vol: Option<String>,
    pub readonly: bool,
    pub serial: Option<String>,
    /// `cache=`, `discard=`, `io=`: kept on `<driver>`.
    pub driver_attrs: Vec<(String, String)>,
}

impl DiskSpec {
    pub fn parse(s: &str) -> Result<DiskSpec> {
        const F: &str = "--disk";
        let mut d = DiskSpec::default();
        for (i, (k, v)) in split_options(F, s)?.into_iter().enumerate() {
            match (k.as_str(), v) {
                (p, None) if i == 0 => d.path = Some(absolute(F, "path", p.to_string())?),
                ("path", v) => d.path = Some(absolute(F, "path", value(F, "path", v)?)?),
                ("size", v) => d.size_bytes = Some(parse_gib(&value(F, "size", v)?)?),
                ("format", v) => {
                    d.format = Some(match value(F, "format", v)?.as_str() {
                        "qcow2" => DiskFormat::Qcow2,
                        "raw" => DiskFormat::Raw,
                        f => {
                            return Err(bad(
                                F,
                                format!("format='{f}' is not supported (use qcow2 or raw)"),
                            ))
                        }
                    })
                }
                ("bus", v) => {
                    let b = value(F, "bus", v)?;
                    if b != "virtio" {
                        return Err(bad(
                            F,
                            format!("bus='{b}' is not supported: vireo's disks are virtio"),
                        ));
                    }
                }
                ("device", v) => {
                    let dev = value(F, "device", v)?;
                    if dev != "disk" {
                        return Err(bad(
                            F,
                            format!("device='{dev}' is not supported: vireo's disks are virtio block devices"),
                        ));
                    }
                }
                ("readonly", v) => d.readonly = yes(F, "readonly", v)?,
                ("serial", v) => d.serial = Some(value(F, "serial", v)?),
                ("pool", v) => d.pool = Some(value(F, "pool", v)?),
                ("vol", v) => {
                    let vol = value(F, "vol", v)?;
                    if !vol.contains('/') {
                        return Err(bad(F, format!("vol='{vol}' must be POOL/VOLUME")));
                    }
                    d.vol = Some(vol);
                }
                ("sparse", v) => {
                    yes(F, "sparse", v)?; // images are always sparse
                }
                (k @ ("cache" | "discard" | "io"), v) => {
                    d.driver_attrs.push((k.to_string(), value(F, k, v)?))
                }
                (k, _) => {
                    return Err(bad(
                        F,
                        format!(
                            "unknown option '{k}' (use path, size, format, bus, readonly, serial, pool, vol, cache, discard, io)"
                        ),
                    ))
                }
            }
        }
        if d.path.is_some() && d.vol.is_some() {
            return Err(bad(F, "give either path or vol, not both"));
        }
        if d.path.is_none() && d.vol.is_none() && d.size_bytes.is_none() {
            return Err(bad(
                F,
                "give a path, vol=POOL/VOLUME, or size=GiB for a new volume",
            ));
        }
        Ok(d)
    }

    /// Whether the CLI must create an image: a size was given and there is no volume to use
    /// (no path yet, or a path that does not exist).
    pub fn needs_volume(&self) -> bool {
        self.size_bytes.is_some()
            && self.vol.is_none()
            && self.path.as_ref().is_none_or(|p| !p.exists())
    }

    /// The format: as given, else from the path's extension (`.qcow2` → qcow2, else raw);
    /// a new volume without a path is qcow2, as virt-install creates it.
    pub fn format_or_default(&self) -> DiskFormat {
        if let Some(f) = self.format {
            return f;
        }
        match &self.path {
            Some(p) if p.extension().is_some_and(|e| e == "qcow2") => DiskFormat::Qcow2,
            Some(_) => DiskFormat::Raw,
            None => DiskFormat::Qcow2,
        }
    }
}

/// virt-install sizes are GiB, fractions allowed (`size=0.5`).
fn parse_gib(v: &str) -> Result<u64> {
    const F: &str = "--disk";
    let err = || {
        bad(
            F,
            format!("size='{v}' is not a size in GiB (e.g. size=10 or size=0.5)"),
        )
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(err());
    }
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err())?
    };
    let frac_num: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| err())?
    };
    let frac_den = 10u64.pow(frac.len() as u32);
    let bytes = whole
        .checked_mul(1 << 30)
        .and_then(|b| b.checked_add(((frac_num as u128 * (1u128 << 30)) / frac_den as u128) as u64))
        .ok_or_else(|| bad(F, format!("size='{v}' is too large")))?;
    if bytes == 0 {
        return Err(bad(F, "size must be greater than 0"));
    }
    Ok(bytes)
}

/// One `--network`: `network=NAME`, `bridge=BR`, `type=ethernet[,target=TAP]`, `default`
/// (the network named default), or `none`; with `mac=`, `model=virtio`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkSpec {
    None,
    Attach {
        kind: InterfaceType,
        /// Network or bridge name (none for ethernet).
        source: Option<String>,
        /// Tap device name (`target=`).
        target: Option<String>,
        mac: Option<MacAddr>,
    },
}

impl NetworkSpec {
    pub fn parse(s: &str) -> Result<NetworkSpec> {
        const F: &str = "--network";
        let opts = split_options(F, s)?;
        if let [(w, None)] = opts.as_slice() {
            match w.as_str() {
                "none" => return Ok(NetworkSpec::None),
                "default" => {
                    return Ok(NetworkSpec::Attach {
                        kind: InterfaceType::Network,
                        source: Some("default".into()),
                        target: None,
                        mac: None,
                    })
                }
                _ => {}
            }
        }
        let mut kind = None;
        let mut source = None;
        let mut target = None;
        let mut mac = None;
        for (k, v) in opts {
            match k.as_str() {
                "network" | "bridge" => {
                    let t = if k == "network" {
                        InterfaceType::Network
                    } else {
                        InterfaceType::Bridge
                    };
                    if kind.is_some_and(|k| k != t) {
                        return Err(bad(F, "give one of network=, bridge= or type=ethernet"));
                    }
                    kind = Some(t);
                    source = Some(value(F, &k, v)?);
                }
                "type" => match value(F, "type", v)?.as_str() {
                    "ethernet" if source.is_none() => kind = Some(InterfaceType::Ethernet),
                    "network" | "bridge" => {} // the network=/bridge= option says it
                    t => {
                        return Err(bad(
                            F,
                            format!("type='{t}' is not supported (use network, bridge or ethernet)"),
                        ))
                    }
                },
                "target" | "target.dev" => target = Some(value(F, &k, v)?),
                "mac" | "mac.address" => {
                    mac = Some(
                        value(F, &k, v)?
                            .parse::<MacAddr>()
                            .map_err(|e| bad(F, e))?,
                    )
                }
                "model" | "model.type" => {
                    let m = value(F, &k, v)?;
                    if m != "virtio" {
                        return Err(bad(
                            F,
                            format!("model='{m}' is not supported: vireo's network devices are virtio"),
                        ));
                    }
                }
                k => {
                    return Err(bad(
                        F,
                        format!("unknown option '{k}' (use network, bridge, type=ethernet, target, mac, model, or none)"),
                    ))
                }
            }
        }
        let kind =
            kind.ok_or_else(|| bad(F, "give network=NAME, bridge=BRIDGE, type=ethernet or none"))?;
        Ok(NetworkSpec::Attach {
            kind,
            source,
            target,
            mac,
        })
    }
}

/// `--boot kernel=PATH,initrd=PATH,kernel_args="…"` (`cmdline=` is accepted for
/// `kernel_args=`); boot devices (`hd`, `network`, …) are recorded as `<os><boot>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootSpec {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub kernel_args: Option<String>,
    pub devices: Vec<BootDevice>,
}

impl BootSpec {
    pub fn parse(s: &str) -> Result<BootSpec> {
        const F: &str = "--boot";
        let mut b = BootSpec::default();
        for (k, v) in split_options(F, s)? {
            match (k.as_str(), v) {
                ("kernel", v) => b.kernel = Some(absolute(F, "kernel", value(F, "kernel", v)?)?),
                ("initrd", v) => b.initrd = Some(absolute(F, "initrd", value(F, "initrd", v)?)?),
                ("kernel_args" | "cmdline", v) => b.kernel_args = Some(v.unwrap_or_default()),
                ("uefi" | "loader" | "firmware", _) => {
                    return Err(bad(
                        F,
                        format!(
                        "{k}: vireo runs no firmware; boot a kernel directly (kernel=…,initrd=…)"
                    ),
                    ))
                }
                (dev, None) => match BootDevice::ALL.into_iter().find(|d| d.as_str() == dev) {
                    Some(d) => b.devices.push(d),
                    None => {
                        return Err(bad(
                            F,
                            format!("unknown option '{dev}' (use kernel=, initrd=, kernel_args=)"),
                        ))
                    }
                },
                (k, Some(_)) => {
                    return Err(bad(
                        F,
                        format!("unknown option '{k}' (use kernel=, initrd=, kernel_args=)"),
                    ))
                }
            }
        }
        Ok(b)
    }
}

/// What `vireo install` was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOptions {
    pub name: String,
    pub memory: MemorySpec,
    pub vcpus: VcpuSpec,
    pub disks: Vec<DiskSpec>,
    pub networks: Vec<NetworkSpec>,
    pub boot: BootSpec,
    /// `--cpu`: `host-passthrough` (default), `host-model`, `maximum`, or a model name.
    pub cpu: Option<String>,
    /// `--description`.
    pub description: Option<String>,
}

impl InstallOptions {
    /// A guest with `memory_mib` of RAM and `vcpus`, no disks or networks, booting `kernel`.
    pub fn new(name: &str, memory_mib: u64, vcpus: u32, kernel: PathBuf) -> InstallOptions {
        InstallOptions {
            name: name.to_string(),
            memory: MemorySpec {
                memory_mib,
                current_mib: None,
            },
            vcpus: VcpuSpec {
                vcpus,
                max_vcpus: None,
            },
            disks: Vec::new(),
            networks: Vec::new(),
            boot: BootSpec {
                kernel: Some(kernel),
                ..BootSpec::default()
            },
            cpu: None,
            description: None,
        }
    }

    /// The definition virt-install would write for these options, for a direct-kernel-boot
    /// KVM guest: q35, ACPI/APIC, host-passthrough CPU, UTC clock, virtio disks `vda…`,
    /// virtio interfaces (MAC generated when not given), a pty serial console, and no memory
    /// balloon (`<memballoon model='none'/>`) until vireo has one. It passes
    /// [`Domain::validate`].
    pub fn to_domain(&self) -> Result<Domain> {
        check_name(&self.name).map_err(|_| {
            bad(
                "--name",
                format!(
                    "'{}' is not a usable name (1-200 bytes, no '/', no control characters)",
                    self.name
                ),
            )
        })?;
        let m = self.memory;
        if m.memory_mib == 0 {
            return Err(bad("--memory", "must be at least 1 MiB"));
        }
        let memory_kib = m
            .memory_mib
            .checked_mul(1024)
            .filter(|k| *k <= u64::MAX / 1024)
            .ok_or_else(|| bad("--memory", format!("{} MiB is too large", m.memory_mib)))?;
        let current_kib = match m.current_mib {
            None => memory_kib,
            Some(0) => return Err(bad("--memory", "currentMemory must be at least 1 MiB")),
            Some(c) if c > m.memory_mib => {
                return Err(bad(
                    "--memory",
                    format!("currentMemory={c} is more than memory={}", m.memory_mib),
                ))
            }
            Some(c) => c * 1024,
        };
        let v = self.vcpus;
        let max = v.max_vcpus.unwrap_or(v.vcpus);
        if v.vcpus == 0 {
            return Err(bad("--vcpus", "must be at least 1"));
        }
        if max > MAX_XAPIC_CPUS {
            return Err(bad(
                "--vcpus",
                format!("{max} is above vireo's limit of {MAX_XAPIC_CPUS}"),
            ));
        }
        if v.vcpus > max {
            return Err(bad(
                "--vcpus",
                format!("{} is more than maxvcpus={max}", v.vcpus),
            ));
        }
        let kernel = self.boot.kernel.clone().ok_or_else(|| {
            bad(
                "--boot",
                "vireo boots kernels directly: give --boot kernel=PATH[,initrd=PATH,kernel_args=…]",
            )
        })?;
        let cpu_mode = match self.cpu.as_deref() {
            None | Some("host-passthrough") | Some("host") => (CpuMode::HostPassthrough, None),
            Some("host-model") => (CpuMode::HostModel, None),
            Some("maximum") => (CpuMode::Maximum, None),
            Some(model) => (
                CpuMode::Custom,
                Some(CpuModel {
                    name: model.to_string(),
                    extra_attrs: Vec::new(),
                }),
            ),
        };

        let mut devices = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            let path = d.path.clone().ok_or_else(|| {
                bad(
                    "--disk",
                    format!(
                        "disk {} has no path yet (create its volume first{})",
                        i + 1,
                        d.vol
                            .as_ref()
                            .map(|v| format!(", or resolve vol={v}"))
                            .unwrap_or_default()
                    ),
                )
            })?;
            let kind = if path.starts_with("/dev/") {
                DiskType::Block
            } else {
                DiskType::File
            };
            devices.push(Device::Disk(Disk {
                kind,
                driver: Some(DiskDriver {
                    name: Some("qemu".into()),
                    format: Some(d.format_or_default()),
                    extra_attrs: d.driver_attrs.clone(),
                }),
                source: path,
                source_attrs: Vec::new(),
                target: DiskTarget {
                    dev: disk_name(i)
                        .ok_or_else(|| bad("--disk", "too many disks (at most 18278)"))?,
                    extra_attrs: Vec::new(),
                },
                readonly: d.readonly,
                serial: d.serial.clone(),
                boot_order: None,
                extra_attrs: Vec::new(),
                extra: Vec::new(),
            }));
        }
        let none = self.networks.contains(&NetworkSpec::None);
        if none && self.networks.len() > 1 {
            return Err(bad(
                "--network",
                "'none' cannot be combined with other networks",
            ));
        }
        for n in &self.networks {
            if let NetworkSpec::Attach {
                kind,
                source,
                target,
                mac,
            } = n
            {
                let mac = match mac {
                    Some(m) => *m,
                    None => MacAddr::generate().map_err(|e| DomainError::Random {
                        what: "a MAC address",
                        message: e.to_string(),
                    })?,
                };
                devices.push(Device::Interface(Interface {
                    kind: *kind,
                    mac,
                    source: source.clone(),
                    source_attrs: Vec::new(),
                    target_dev: target.clone(),
                    target_attrs: Vec::new(),
                    boot_order: None,
                    extra_attrs: Vec::new(),
                    extra: Vec::new(),
                }));
            }
        }
        devices.push(Device::Serial(CharDevice {
            target_type: Some("isa-serial".into()),
            target_port: Some(0),
            target_model: Some("isa-serial".into()),
            extra_attrs: Vec::new(),
            extra: Vec::new(),
        }));
        devices.push(Device::Console(CharDevice {
            target_type: Some("serial".into()),
            target_port: Some(0),
            target_model: None,
            extra_attrs: Vec::new(),
            extra: Vec::new(),
        }));
        devices.push(Device::Memballoon(Memballoon {
            model: BalloonModel::None,
            extra_attrs: Vec::new(),
            extra: Vec::new(),
        }));

        let timer = |name: &str, k: &str, v: &str| Timer {
            name: name.into(),
            attrs: vec![(k.into(), v.into())],
        };
        let domain = Domain {
            name: self.name.clone(),
            uuid: Uuid::new_v4().map_err(|e| DomainError::Random {
                what: "a UUID",
                message: e.to_string(),
            })?,
            title: None,
            description: self.description.clone(),
            metadata: None,
            memory_kib,
            current_memory_kib: current_kib,
            memory_attrs: Vec::new(),
            vcpu: Vcpu {
                max,
                current: v.vcpus,
                placement: Some(VcpuPlacement::Static),
                cpuset: None,
            },
            os: Os {
                arch: "x86_64".into(),
                machine: Some("q35".into()),
                kernel: Some(kernel),
                initrd: self.boot.initrd.clone(),
                cmdline: self.boot.kernel_args.clone(),
                boot: self.boot.devices.clone(),
                extra_attrs: Vec::new(),
                extra: Vec::new(),
            },
            features: Some(Features {
                acpi: true,
                apic: Some(Apic::default()),
                pae: false,
                extra: Vec::new(),
            }),
            cpu: Some(Cpu {
                mode: cpu_mode.0,
                model: cpu_mode.1,
                topology: None,
                extra_attrs: Vec::new(),
                extra: Vec::new(),
            }),
            clock: Some(Clock {
                offset: ClockOffset::Utc,
                timers: vec![
                    timer("rtc", "tickpolicy", "catchup"),
                    timer("pit", "tickpolicy", "delay"),
                    timer("hpet", "present", "no"),
                ],
            }),
            on_poweroff: LifecycleAction::Destroy,
            on_reboot: LifecycleAction::Restart,
            on_crash: LifecycleAction::Destroy,
            emulator: None,
            devices,
            extra: Vec::new(),
        };
        domain.validate()?;
        Ok(domain)
    }
}

/// `vda`, …, `vdz`, `vdaa`, … (the index-th virtio disk name), up to `vdzzz`.
pub fn disk_name(index: usize) -> Option<String> {
    let mut n = index + 1;
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    if letters.len() > 3 {
        return None;
    }
    letters.reverse();
    Some(format!("vd{}", String::from_utf8(letters).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names() {
        assert_eq!(disk_name(0).as_deref(), Some("vda"));
        assert_eq!(disk_name(25).as_deref(), Some("vdz"));
        assert_eq!(disk_name(26).as_deref(), Some("vdaa"));
        assert_eq!(disk_name(701).as_deref(), Some("vdzz"));
        assert_eq!(disk_name(702).as_deref(), Some("vdaaa"));
        assert_eq!(disk_name(18277).as_deref(), Some("vdzzz"));
        assert_eq!(disk_name(18278), None);
    }

    #[test]
    fn gib_sizes() {
        assert_eq!(parse_gib("10"), Ok(10 << 30));
        assert_eq!(parse_gib("0.5"), Ok(512 << 20));
        assert_eq!(parse_gib(".25"), Ok(256 << 20));
        assert!(parse_gib("0").is_err());
        assert!(parse_gib("1e3").is_err());
        assert!(parse_gib("-1").is_err());
        assert!(parse_gib(".").is_err());
        assert!(parse_gib("99999999999999")
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn options_split_with_quotes() {
        let o = split_options(
            "--boot",
            "kernel=/k,kernel_args=\"console=ttyS0,115200 quiet\",hd",
        )
        .unwrap();
        assert_eq!(
            o,
            vec![
                ("kernel".to_string(), Some("/k".to_string())),
                (
                    "kernel_args".to_string(),
                    Some("console=ttyS0,115200 quiet".to_string())
                ),
                ("hd".to_string(), None),
            ]
        );
        assert!(split_options("--boot", "a='x")
            .unwrap_err()
            .to_string()
            .contains("unterminated"));
        assert!(split_options("--boot", "a,,b")
            .unwrap_err()
            .to_string()
            .contains("empty option"));
    }
}
