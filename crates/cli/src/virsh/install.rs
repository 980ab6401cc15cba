//! `vireo install`: virt-install's main flags → a libvirt domain XML, defined and started
//! through vireod (the daemon validates it like any `define`).

use std::fmt::Write as _;

use clap::Args;
use vireo_api::protocol::domain::{DefineParams, DomainDefine, DomainStart, StartParams};
use vireo_api::protocol::storage::{
    PoolGetInfo, PoolList, PoolListParams, PoolRef, VolCreateAs, VolCreateAsParams, VolDelete,
    VolGetPath, VolRef,
};
use vireo_api::{Client, ClientError, ErrorKind};

use super::{connect, err, Error, Result};

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Domain name.
    #[arg(long)]
    pub name: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// A disk: PATH or path=PATH[,format=raw|qcow2][,bus=virtio][,readonly=on]; or
    /// size=GiB[,pool=POOL][,format=…] for a new volume NAME.qcow2 in the pool (default:
    /// the `default` pool) (repeatable).
    #[arg(long, value_name = "OPTIONS")]
    pub disk: Vec<String>,
    /// A NIC: network=NAME | bridge=BR, [,model=virtio][,mac=MAC]; or none (repeatable).
    #[arg(long, value_name = "OPTIONS")]
    pub network: Vec<String>,
    /// Direct kernel boot: kernel=PATH[,initrd=PATH][,kernel_args=ARGS].
    #[arg(long, value_name = "OPTIONS")]
    pub boot: String,
    /// Boot the existing disk image (no installer run); vireo always does.
    #[arg(long)]
    pub import: bool,
    /// Do not attach to the console after starting.
    #[arg(long)]
    pub noautoconsole: bool,
    /// Print the XML and stop (define nothing).
    #[arg(long)]
    pub print_xml: bool,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Splits `a=1,b=2` (virt-install's option syntax; a bare first word is `first_key`).
/// `kernel_args` takes the rest of the string, commas included.
fn options(flag: &str, s: &str, first_key: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(v) = rest.strip_prefix("kernel_args=") {
            out.push(("kernel_args".into(), v.to_string()));
            break;
        }
        let (item, tail) = rest.split_once(',').unwrap_or((rest, ""));
        match item.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None if out.is_empty() && !first_key.is_empty() => {
                out.push((first_key.to_string(), item.to_string()))
            }
            None => return err(format!("--{flag} '{s}': '{item}' is not key=value")),
        }
        rest = tail;
    }
    Ok(out)
}

fn get<'a>(opts: &'a [(String, String)], key: &str) -> Option<&'a str> {
    opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn check_keys(flag: &str, opts: &[(String, String)], known: &[&str]) -> Result {
    for (k, _) in opts {
        if !known.contains(&k.as_str()) {
            return err(format!(
                "--{flag}: unknown option '{k}' (vireo knows: {})",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

const DISK_KEYS: &[&str] = &["path", "format", "bus", "readonly", "size", "pool"];

/// The domain XML for these options (every `--disk` with a path; see [`create_volumes`]).
pub fn domain_xml(a: &InstallArgs) -> Result<String> {
    let boot = options("boot", &a.boot, "")?;
    check_keys("boot", &boot, &["kernel", "initrd", "kernel_args"])?;
    let kernel = get(&boot, "kernel")
        .ok_or_else(|| Error("--boot needs kernel=PATH (vireo boots kernels directly)".into()))?;
    let mut x = String::new();
    let _ = writeln!(x, "<domain type='kvm'>");
    let _ = writeln!(x, "  <name>{}</name>", escape(&a.name));
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", a.memory);
    let _ = writeln!(
        x,
        "  <currentMemory unit='MiB'>{}</currentMemory>",
        a.memory
    );
    let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", a.vcpus);
    let _ = writeln!(x, "  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>");
    let _ = writeln!(x, "    <kernel>{}</kernel>", escape(kernel));
    if let Some(initrd) = get(&boot, "initrd") {
        let _ = writeln!(x, "    <initrd>{}</initrd>", escape(initrd));
    }
    if let Some(args) = get(&boot, "kernel_args") {
        let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(args));
    }
    let _ = writeln!(
        x,
        "  </os>\n  <features>\n    <acpi/>\n    <apic/>\n  </features>"
    );
    let _ = writeln!(
        x,
        "  <cpu mode='host-passthrough'/>\n  <clock offset='utc'/>"
    );
    let _ = writeln!(x, "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>");
    let _ = writeln!(x, "  <devices>");
    for (i, disk) in a.disk.iter().enumerate() {
        let o = options("disk", disk, "path")?;
        check_keys("disk", &o, DISK_KEYS)?;
        let path = get(&o, "path").ok_or_else(|| Error(format!("--disk '{disk}' has no path")))?;
        if get(&o, "size").is_some() && !std::path::Path::new(path).exists() {
            return err(format!(
                "--disk '{disk}': {path} does not exist (vireo install creates it in its pool)"
            ));
        }
        let format = get(&o, "format").unwrap_or(if path.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        });
        let bus = get(&o, "bus").unwrap_or("virtio");
        if i >= 26 {
            return err("--disk: at most 26 disks");
        }
        let dev = format!("vd{}", (b'a' + i as u8) as char);
        let _ = writeln!(x, "    <disk type='file' device='disk'>");
        let _ = writeln!(x, "      <driver name='qemu' type='{}'/>", escape(format));
        let _ = writeln!(x, "      <source file='{}'/>", escape(path));
        let _ = writeln!(x, "      <target dev='{dev}' bus='{}'/>", escape(bus));
        if matches!(get(&o, "readonly"), Some("on" | "yes" | "true")) {
            let _ = writeln!(x, "      <readonly/>");
        }
        let _ = writeln!(x, "    </disk>");
    }
    for net in &a.network {
        if net == "none" {
            continue;
        }
        let o = options("network", net, "")?;
        check_keys("network", &o, &["network", "bridge", "model", "mac"])?;
        let (kind, source) = match (get(&o, "network"), get(&o, "bridge")) {
            (Some(n), None) => ("network", format!("<source network='{}'/>", escape(n))),
            (None, Some(b)) => ("bridge", format!("<source bridge='{}'/>", escape(b))),
            _ => {
                return err(format!(
                    "--network '{net}': give one of network=NAME or bridge=BR"
                ))
            }
        };
        let _ = writeln!(x, "    <interface type='{kind}'>\n      {source}");
        if let Some(mac) = get(&o, "mac") {
            let _ = writeln!(x, "      <mac address='{}'/>", escape(mac));
        }
        let _ = writeln!(
            x,
            "      <model type='{}'/>",
            escape(get(&o, "model").unwrap_or("virtio"))
        );
        let _ = writeln!(x, "    </interface>");
    }
    let _ = writeln!(
        x,
        "    <serial type='pty'>\n      <target port='0'/>\n    </serial>"
    );
    let _ = writeln!(
        x,
        "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>"
    );
    let _ = writeln!(x, "  </devices>\n</domain>");
    Ok(x)
}

/// virt-install's size= is GiB, fractions allowed (`size=0.5`).
fn gib(disk: &str, v: &str) -> Result<u64> {
    let bad = || {
        Error(format!(
            "--disk '{disk}': size='{v}' is not a size in GiB (e.g. size=10 or size=0.5)"
        ))
    };
    let f: f64 = v.parse().map_err(|_| bad())?;
    if !f.is_finite() || f <= 0.0 || f > (1u64 << 23) as f64 {
        return Err(bad());
    }
    // Whole 512-byte sectors, as the guest sees them.
    Ok(((f * (1u64 << 30) as f64) / 512.0).ceil() as u64 * 512)
}

/// A volume `vireo install` created, deleted again if the domain cannot be defined.
struct Created {
    pool: String,
    name: String,
}

/// virt-install's "create a new volume" step: every `--disk size=N` without an existing
/// image becomes a volume — `NAME.qcow2` (`NAME-1.qcow2`, … if taken) in `pool=` or the
/// `default` pool, or the file named by `path=` when that lies in an active pool — and the
/// disk option is rewritten to `path=` the volume. `dry_run` (`--print-xml`) creates
/// nothing and prints the path the volume would get.
fn create_volumes(
    c: &mut Client,
    a: &mut InstallArgs,
    dry_run: bool,
    created: &mut Vec<Created>,
) -> Result {
    let mut taken: Vec<String> = Vec::new();
    for disk in a.disk.iter_mut() {
        let o = options("disk", disk, "path")?;
        check_keys("disk", &o, DISK_KEYS)?;
        let Some(size) = get(&o, "size") else {
            continue;
        };
        let capacity = gib(disk, size)?;
        if get(&o, "path").is_some_and(|p| std::path::Path::new(p).exists()) {
            continue; // virt-install uses an existing image as it is
        }
        let format = get(&o, "format").unwrap_or("qcow2").to_string();
        let (pool, vol) = match (get(&o, "path"), get(&o, "pool")) {
            (Some(_), Some(_)) => {
                return err(format!(
                    "--disk '{disk}': give either path= or pool=, not both"
                ))
            }
            (Some(path), None) => {
                let p = std::path::Path::new(path);
                let parent = p.parent().and_then(|d| std::fs::canonicalize(d).ok());
                let pools = c.call::<PoolList>(&PoolListParams::default())?.pools;
                let pool = pools
                    .into_iter()
                    .find(|q| parent.is_some() && std::fs::canonicalize(&q.target).ok() == parent)
                    .ok_or_else(|| {
                        Error(format!(
                            "--disk '{disk}': {path} does not exist and its directory is no active storage pool (use pool=, or create the image with vireo img create)"
                        ))
                    })?;
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (pool, name)
            }
            (None, pool) => {
                let pool = match pool {
                    Some(p) => c.call::<PoolGetInfo>(&PoolRef::new(p))?,
                    None => super::storage::ensure_default_pool(c)?,
                };
                let ext = if format == "qcow2" { "qcow2" } else { "img" };
                let mut name = None;
                for i in 0..1000 {
                    let n = if i == 0 {
                        format!("{}.{ext}", a.name)
                    } else {
                        format!("{}-{i}.{ext}", a.name)
                    };
                    let free = !taken.contains(&n)
                        && matches!(
                            c.call::<VolGetPath>(&VolRef::new(Some(&pool.name), &n)),
                            Err(ClientError::Rpc(e)) if e.kind() == ErrorKind::NoVolume
                        );
                    if free {
                        name = Some(n);
                        break;
                    }
                }
                let name = name.ok_or_else(|| {
                    Error(format!(
                        "--disk: no free volume name for '{}' in pool '{}'",
                        a.name, pool.name
                    ))
                })?;
                (pool, name)
            }
        };
        taken.push(vol.clone());
        let path = if dry_run {
            pool.target.join(&vol)
        } else {
            let v = c.call::<VolCreateAs>(&VolCreateAsParams {
                pool: pool.name.clone(),
                name: vol.clone(),
                capacity,
                format: Some(format.clone()),
                ..Default::default()
            })?;
            created.push(Created {
                pool: pool.name.clone(),
                name: v.name.clone(),
            });
            eprintln!("vireo: created volume '{}' in pool '{}'", v.name, pool.name);
            v.path
        };
        let mut rest: Vec<String> = o
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "path" | "size" | "pool" | "format"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        rest.insert(0, format!("format={format}"));
        rest.insert(0, format!("path={}", path.display()));
        *disk = rest.join(",");
    }
    Ok(())
}

pub fn run(uri: Option<&str>, mut a: InstallArgs) -> Result {
    let needs_pool = a
        .disk
        .iter()
        .any(|d| options("disk", d, "path").is_ok_and(|o| get(&o, "size").is_some()));
    if a.print_xml && !needs_pool {
        print!("{}", domain_xml(&a)?);
        return Ok(());
    }
    let mut c = connect(uri)?;
    let mut created = Vec::new();
    let dry_run = a.print_xml;
    let r = create_volumes(&mut c, &mut a, dry_run, &mut created)
        .and_then(|()| domain_xml(&a))
        .and_then(|xml| {
            if a.print_xml {
                print!("{xml}");
                return Ok(None);
            }
            Ok(Some(c.call::<DomainDefine>(&DefineParams { xml })?))
        });
    let r = match r {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(e) => {
            // Nothing half-made stays behind.
            for v in created {
                let _ = c.call::<VolDelete>(&VolRef::new(Some(&v.pool), &v.name));
            }
            return Err(e);
        }
    };
    for w in &r.warnings {
        eprintln!("vireo: warning: {w}");
    }
    println!("Domain '{}' defined", r.name);
    if a.noautoconsole {
        c.call::<DomainStart>(&StartParams {
            domain: r.name.clone(),
            paused: false,
        })?;
        println!("Domain '{}' started", r.name);
        return Ok(());
    }
    super::domain::start_with_console(&mut c, &r.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(boot: &str) -> InstallArgs {
        InstallArgs {
            name: "a<b".into(),
            memory: 64,
            vcpus: 2,
            disk: vec![
                "/img/root.qcow2".into(),
                "path=/img/data.raw,readonly=on".into(),
            ],
            network: vec!["bridge=br0,mac=52:54:00:00:00:01".into(), "none".into()],
            boot: boot.into(),
            import: true,
            noautoconsole: true,
            print_xml: true,
        }
    }

    #[test]
    fn virt_install_options_become_xml() {
        let x = domain_xml(&args(
            "kernel=/k,initrd=/i,kernel_args=console=ttyS0 a=1,b=2",
        ))
        .unwrap();
        assert!(x.contains("<name>a&lt;b</name>"), "{x}");
        assert!(
            x.contains("<cmdline>console=ttyS0 a=1,b=2</cmdline>"),
            "{x}"
        );
        assert!(x.contains("<driver name='qemu' type='qcow2'/>"), "{x}");
        assert!(
            x.contains("<target dev='vdb' bus='virtio'/>\n      <readonly/>"),
            "{x}"
        );
        assert!(x.contains("<source bridge='br0'/>"), "{x}");
        assert!(x.contains("<vcpu placement='static'>2</vcpu>"), "{x}");
        assert!(domain_xml(&args("initrd=/i"))
            .unwrap_err()
            .0
            .contains("kernel=PATH"));
        assert!(domain_xml(&args("kernel=/k,foo=1"))
            .unwrap_err()
            .0
            .contains("unknown option 'foo'"));
    }
}
