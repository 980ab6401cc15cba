//! Domain XML → [`Domain`]: one pass over the document, every element either modelled,
//! kept (cosmetic, see [`classify`](crate::classify)) or refused with its path.
//! Cross-field rules live in [`Domain::validate`], which runs last.

use std::collections::HashSet;
use std::path::PathBuf;

use roxmltree::{Document, Node, ParsingOptions};

use crate::classify::{self, Class};
use crate::error::DomainError;
use crate::ids::{MacAddr, Uuid};
use crate::model::*;
use crate::units;
use crate::xml::{self, XmlElement};

/// Largest domain XML accepted (libvirt definitions are a few KiB).
pub const MAX_XML_BYTES: usize = 4 << 20;
/// Largest number of XML nodes accepted.
const MAX_NODES: u32 = 200_000;

/// A parsed definition and what the user should know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub domain: Domain,
    /// One line each: elements kept but not used, approximations made.
    pub warnings: Vec<String>,
}

type Result<T> = std::result::Result<T, DomainError>;

pub(crate) fn parse(xml: &str) -> Result<Parsed> {
    if xml.len() > MAX_XML_BYTES {
        return Err(DomainError::TooLarge {
            size: xml.len(),
            limit: MAX_XML_BYTES,
        });
    }
    if xml.trim().is_empty() {
        return Err(DomainError::Xml("the document is empty".into()));
    }
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(xml, opts)
        .map_err(|e| DomainError::Xml(crate::error::one_line(e.to_string())))?;
    check_depth(&doc)?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(DomainError::NotDomain(qname(root).to_string()));
    }
    if let Some(ns) = root.tag_name().namespace() {
        return Err(DomainError::invalid(
            "/domain",
            format!(
                "the element is in namespace '{ns}'; libvirt's <domain> has none (remove xmlns=…)"
            ),
        ));
    }
    let mut p = Parser::default();
    let domain = p.domain(root)?;
    domain.validate()?;
    let mut warnings = Vec::new();
    if !p.kept.is_empty() {
        warnings.push(format!("kept but not used by vireo: {}", p.kept.join(", ")));
    }
    warnings.extend(p.warnings);
    Ok(Parsed { domain, warnings })
}

/// Deepest element nesting accepted (libvirt XML nests about 6 levels; kept elements are
/// copied and written recursively).
pub(crate) const MAX_DEPTH: usize = 64;

fn check_depth(doc: &Document) -> Result<()> {
    let mut depth = vec![0u16; doc.descendants().count() + 2];
    for n in doc.descendants() {
        let d = n.parent().map_or(0, |p| depth[p.id().get_usize()]) + 1;
        if usize::from(d) > MAX_DEPTH {
            return Err(DomainError::Xml(format!(
                "elements are nested more than {MAX_DEPTH} levels deep at {}",
                doc.text_pos_at(n.range().start)
            )));
        }
        depth[n.id().get_usize()] = d;
    }
    Ok(())
}

#[derive(Default)]
struct Parser {
    /// Paths of kept elements, first occurrence order, no repeats.
    kept: Vec<String>,
    warnings: Vec<String>,
}

/// An element's qualified name as written.
fn qname<'a>(node: Node<'a, '_>) -> &'a str {
    xml::element_qname(node.document().input_text(), node.range().start)
}

fn child_path(parent: &str, node: Node) -> String {
    format!("{parent}/{}", qname(node))
}

/// The attributes of a modelled element: `known` ones are returned for the caller to
/// read, `keep` ones are kept verbatim, anything else is an error.
struct AttrSet<'a> {
    known: Vec<(&'a str, &'a str)>,
    kept: Attrs,
}

impl<'a> AttrSet<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.known.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

fn attrs<'a>(node: Node<'a, '_>, path: &str, known: &[&str], keep: &[&str]) -> Result<AttrSet<'a>> {
    let input = node.document().input_text();
    let mut set = AttrSet {
        known: Vec::new(),
        kept: Vec::new(),
    };
    for a in node.attributes() {
        let name = a.name();
        if a.namespace().is_none() && known.contains(&name) {
            set.known.push((name, a.value()));
        } else if a.namespace().is_none() && keep.contains(&name) {
            set.kept.push((name.to_string(), a.value().to_string()));
        } else {
            return Err(DomainError::UnknownAttribute {
                path: path.to_string(),
                attr: input[a.range_qname()].to_string(),
            });
        }
    }
    Ok(set)
}

/// The element children; non-blank text between them is an error.
fn elements<'a, 'i>(node: Node<'a, 'i>, path: &str) -> Result<Vec<Node<'a, 'i>>> {
    let mut out = Vec::new();
    for c in node.children() {
        if c.is_element() {
            out.push(c);
        } else if c.is_text() {
            let t = c.text().unwrap_or("").trim();
            if !t.is_empty() {
                return Err(DomainError::invalid(
                    path,
                    format!("unexpected text '{}'", shorten(t)),
                ));
            }
        }
    }
    Ok(out)
}

/// The text of an element that may not have child elements.
fn text(node: Node, path: &str) -> Result<String> {
    let mut s = String::new();
    for c in node.children() {
        if c.is_element() {
            return Err(DomainError::UnknownElement {
                path: child_path(path, c),
            });
        }
        if c.is_text() {
            s.push_str(c.text().unwrap_or(""));
        }
    }
    Ok(s)
}

/// The trimmed text of a leaf element with no attributes.
fn leaf(node: Node, path: &str) -> Result<String> {
    attrs(node, path, &[], &[])?;
    Ok(text(node, path)?.trim().to_string())
}

/// An element that must be empty (`<acpi/>`, `<readonly/>`).
fn empty(node: Node, path: &str) -> Result<()> {
    if let Some(c) = elements(node, path)?.first() {
        return Err(DomainError::UnknownElement {
            path: child_path(path, *c),
        });
    }
    Ok(())
}

fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Sets a once-only value.
fn once<T>(slot: &mut Option<T>, value: T, path: &str) -> Result<()> {
    if slot.is_some() {
        return Err(DomainError::Duplicate {
            path: path.to_string(),
        });
    }
    *slot = Some(value);
    Ok(())
}

/// Fails on a second `<name>` under the same parent.
fn check_once(seen: &mut HashSet<String>, path: &str) -> Result<()> {
    if !seen.insert(path.to_string()) {
        return Err(DomainError::Duplicate {
            path: path.to_string(),
        });
    }
    Ok(())
}

fn absolute_path(value: &str, path: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(DomainError::invalid(path, "the path is empty"));
    }
    if !value.starts_with('/') {
        return Err(DomainError::invalid(
            path,
            format!("'{value}' is not an absolute path"),
        ));
    }
    if value.contains('\0') {
        return Err(DomainError::invalid(path, "the path contains a NUL byte"));
    }
    Ok(PathBuf::from(value))
}

fn parse_u32(value: &str, path: &str, what: &str) -> Result<u32> {
    let n = units::parse_u64(value)
        .map_err(|e| DomainError::invalid(path, format!("invalid {what}: {e}")))?;
    u32::try_from(n)
        .map_err(|_| DomainError::invalid(path, format!("invalid {what}: '{n}' is too large")))
}

fn required<'a>(set: &AttrSet<'a>, name: &str, path: &str, hint: &str) -> Result<&'a str> {
    set.get(name)
        .ok_or_else(|| DomainError::missing(format!("{path}/@{name}"), hint))
}

fn yes_no(value: &str, path: &str, attr: &str) -> Result<bool> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        v => Err(DomainError::invalid(
            path,
            format!("{attr}='{v}' must be 'yes' or 'no'"),
        )),
    }
}

impl Parser {
    /// An element that is not modelled under `parent`: kept, refused or unknown.
    fn other(&mut self, node: Node, parent: &str) -> Result<XmlElement> {
        let path = child_path(parent, node);
        if let Some(ns) = node.tag_name().namespace() {
            return Err(DomainError::unsupported(
                path,
                format!("elements of namespace '{ns}' are hypervisor-specific extensions vireo cannot honour"),
            ));
        }
        match classify::classify(parent, node.tag_name().name()) {
            Some(Class::Keep(_)) => {
                if !self.kept.contains(&path) {
                    self.kept.push(path);
                }
                Ok(xml::capture(node))
            }
            Some(Class::Refuse(why)) => Err(DomainError::unsupported(path, why)),
            None => Err(DomainError::UnknownElement { path }),
        }
    }

    fn domain(&mut self, root: Node) -> Result<Domain> {
        const P: &str = "/domain";
        let a = attrs(root, P, &["type", "id"], &[])?;
        match a.get("type") {
            Some("kvm") => {}
            Some(t) => {
                return Err(DomainError::unsupported(
                    format!("/domain[@type='{t}']"),
                    "vireo runs KVM guests (use type='kvm')",
                ))
            }
            None => return Err(DomainError::missing("/domain/@type", "use type='kvm'")),
        }
        let mut seen = HashSet::new();
        let mut name = None;
        let mut uuid = None;
        let mut title = None;
        let mut description = None;
        let mut metadata = None;
        let mut memory = None;
        let mut memory_attrs = Vec::new();
        let mut current_memory = None;
        let mut vcpu = None;
        let mut os = None;
        let mut features = None;
        let mut cpu = None;
        let mut clock = None;
        let mut on_poweroff = None;
        let mut on_reboot = None;
        let mut on_crash = None;
        let mut emulator = None;
        let mut devices = Vec::new();
        let mut extra = Vec::new();
        for c in elements(root, P)? {
            let path = child_path(P, c);
            if c.tag_name().namespace().is_some() {
                extra.push(self.other(c, P)?);
                continue;
            }
            let modelled = matches!(
                c.tag_name().name(),
                "name"
                    | "uuid"
                    | "title"
                    | "description"
                    | "metadata"
                    | "memory"
                    | "currentMemory"
                    | "vcpu"
                    | "os"
                    | "features"
                    | "cpu"
                    | "clock"
                    | "on_poweroff"
                    | "on_reboot"
                    | "on_crash"
                    | "devices"
            );
            if modelled {
                check_once(&mut seen, &path)?;
            }
            match c.tag_name().name() {
                "name" => name = Some(leaf(c, &path)?),
                "uuid" => {
                    let v = leaf(c, &path)?;
                    uuid = Some(
                        v.parse::<Uuid>()
                            .map_err(|e| DomainError::invalid(&path, e))?,
                    );
                }
                "title" => {
                    attrs(c, &path, &[], &[])?;
                    title = Some(text(c, &path)?);
                }
                "description" => {
                    attrs(c, &path, &[], &[])?;
                    description = Some(text(c, &path)?);
                }
                "metadata" => {
                    attrs(c, &path, &[], &[])?;
                    metadata = Some(elements(c, &path)?.into_iter().map(xml::capture).collect());
                }
                "memory" => {
                    let a = attrs(c, &path, &["unit"], &["dumpCore"])?;
                    memory = Some(memory_value(c, &a, &path)?);
                    memory_attrs = a.kept;
                }
                "currentMemory" => {
                    let a = attrs(c, &path, &["unit"], &[])?;
                    current_memory = Some(memory_value(c, &a, &path)?);
                }
                "vcpu" => vcpu = Some(parse_vcpu(c, &path)?),
                "os" => os = Some(self.os(c, &path)?),
                "features" => features = Some(self.features(c, &path)?),
                "cpu" => cpu = Some(self.cpu(c, &path)?),
                "clock" => clock = Some(self.clock(c, &path)?),
                "on_poweroff" => on_poweroff = Some(lifecycle(c, &path)?),
                "on_reboot" => on_reboot = Some(lifecycle(c, &path)?),
                "on_crash" => on_crash = Some(lifecycle(c, &path)?),
                "devices" => {
                    attrs(c, &path, &[], &[])?;
                    for d in elements(c, &path)? {
                        let dpath = child_path(&path, d);
                        if d.tag_name().namespace().is_none() && d.tag_name().name() == "emulator" {
                            let v = leaf(d, &dpath)?;
                            once(&mut emulator, absolute_path(&v, &dpath)?, &dpath)?;
                        } else {
                            devices.push(self.device(d, &path)?);
                        }
                    }
                }
                _ => extra.push(self.other(c, P)?),
            }
        }
        let name = name.ok_or_else(|| DomainError::missing("/domain/name", ""))?;
        let memory_kib = memory.ok_or_else(|| {
            DomainError::missing(
                "/domain/memory",
                "give the guest's RAM, e.g. <memory unit='MiB'>512</memory>",
            )
        })?;
        let os = os.ok_or_else(|| {
            DomainError::missing(
                "/domain/os",
                "vireo needs <os><type>hvm</type><kernel>…</kernel></os>",
            )
        })?;
        let uuid = match uuid {
            Some(u) => u,
            None => Uuid::new_v4().map_err(|e| DomainError::Random {
                what: "a UUID",
                message: e.to_string(),
            })?,
        };
        match &features {
            Some(Features { acpi: true, .. }) => {}
            _ => self.warnings.push(
                "no <features><acpi/>: vireo always gives the guest ACPI (power button, shutdown)"
                    .to_string(),
            ),
        }
        extra.sort_by_key(|e: &XmlElement| classify::rank(classify::DOMAIN_ORDER, e.local_name()));
        Ok(Domain {
            name,
            uuid,
            title,
            description,
            metadata,
            memory_kib,
            current_memory_kib: current_memory.unwrap_or(memory_kib),
            memory_attrs,
            vcpu: vcpu.unwrap_or(Vcpu {
                max: 1,
                current: 1,
                placement: None,
                cpuset: None,
            }),
            os,
            features,
            cpu,
            clock,
            on_poweroff: on_poweroff.unwrap_or(LifecycleAction::Destroy),
            on_reboot: on_reboot.unwrap_or(LifecycleAction::Restart),
            on_crash: on_crash.unwrap_or(LifecycleAction::Destroy),
            emulator,
            devices,
            extra,
        })
    }

    fn os(&mut self, node: Node, path: &str) -> Result<Os> {
        let a = attrs(node, path, &["firmware"], &[])?;
        let mut extra_attrs = Vec::new();
        match a.get("firmware") {
            None => {}
            Some("bios") => extra_attrs.push(("firmware".to_string(), "bios".to_string())),
            Some(f) => {
                return Err(DomainError::unsupported(
                    format!("{path}[@firmware='{f}']"),
                    "vireo runs no BIOS or UEFI firmware; it boots the kernel directly",
                ))
            }
        }
        let mut seen = HashSet::new();
        let mut ty = None;
        let mut kernel = None;
        let mut initrd = None;
        let mut cmdline = None;
        let mut boot = Vec::new();
        let mut extra = Vec::new();
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            let name = if c.tag_name().namespace().is_none() {
                c.tag_name().name()
            } else {
                ""
            };
            if matches!(name, "type" | "kernel" | "initrd" | "cmdline") {
                check_once(&mut seen, &cpath)?;
            }
            match name {
                "type" => {
                    let t = attrs(c, &cpath, &["arch", "machine"], &[])?;
                    let kind = text(c, &cpath)?;
                    if kind.trim() != "hvm" {
                        return Err(DomainError::unsupported(
                            format!("{cpath}[.='{}']", shorten(kind.trim())),
                            "vireo runs full virtualization guests (<type>hvm</type>)",
                        ));
                    }
                    let arch = t.get("arch").unwrap_or("x86_64");
                    if arch != "x86_64" {
                        return Err(DomainError::unsupported(
                            format!("{cpath}[@arch='{arch}']"),
                            "vireo runs x86_64 guests only",
                        ));
                    }
                    ty = Some((arch.to_string(), t.get("machine").map(str::to_string)));
                }
                "kernel" => kernel = Some(absolute_path(&leaf(c, &cpath)?, &cpath)?),
                "initrd" => initrd = Some(absolute_path(&leaf(c, &cpath)?, &cpath)?),
                "cmdline" => {
                    attrs(c, &cpath, &[], &[])?;
                    cmdline = Some(text(c, &cpath)?);
                }
                "boot" => {
                    let b = attrs(c, &cpath, &["dev"], &[])?;
                    empty(c, &cpath)?;
                    let dev = required(&b, "dev", &cpath, "use hd, cdrom, network or fd")?;
                    let d = BootDevice::ALL
                        .into_iter()
                        .find(|d| d.as_str() == dev)
                        .ok_or_else(|| {
                            DomainError::invalid(
                                &cpath,
                                format!(
                                    "unknown boot device '{dev}' (use hd, cdrom, network or fd)"
                                ),
                            )
                        })?;
                    boot.push(d);
                }
                _ => extra.push(self.other(c, path)?),
            }
        }
        let (arch, machine) = ty.ok_or_else(|| {
            DomainError::missing(format!("{path}/type"), "use <type arch='x86_64'>hvm</type>")
        })?;
        extra.sort_by_key(|e: &XmlElement| classify::rank(classify::OS_ORDER, e.local_name()));
        Ok(Os {
            arch,
            machine,
            kernel,
            initrd,
            cmdline,
            boot,
            extra_attrs,
            extra,
        })
    }

    fn features(&mut self, node: Node, path: &str) -> Result<Features> {
        attrs(node, path, &[], &[])?;
        let mut seen = HashSet::new();
        let mut f = Features::default();
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            let name = if c.tag_name().namespace().is_none() {
                c.tag_name().name()
            } else {
                ""
            };
            match name {
                "acpi" | "pae" => {
                    check_once(&mut seen, &cpath)?;
                    attrs(c, &cpath, &[], &[])?;
                    empty(c, &cpath)?;
                    if name == "acpi" {
                        f.acpi = true;
                    } else {
                        f.pae = true;
                    }
                }
                "apic" => {
                    check_once(&mut seen, &cpath)?;
                    let a = attrs(c, &cpath, &["eoi"], &[])?;
                    empty(c, &cpath)?;
                    if let Some(eoi) = a.get("eoi") {
                        if !matches!(eoi, "on" | "off") {
                            return Err(DomainError::invalid(
                                &cpath,
                                format!("eoi='{eoi}' must be 'on' or 'off'"),
                            ));
                        }
                    }
                    f.apic = Some(Apic {
                        eoi: a.get("eoi").map(str::to_string),
                    });
                }
                _ => f.extra.push(self.other(c, path)?),
            }
        }
        Ok(f)
    }

    fn cpu(&mut self, node: Node, path: &str) -> Result<Cpu> {
        let a = attrs(
            node,
            path,
            &["mode"],
            &["match", "check", "migratable", "deprecated_features"],
        )?;
        let mode = match a.get("mode").unwrap_or("custom") {
            "host-passthrough" => CpuMode::HostPassthrough,
            "host-model" => CpuMode::HostModel,
            "maximum" => CpuMode::Maximum,
            "custom" => CpuMode::Custom,
            m => {
                return Err(DomainError::invalid(
                    path,
                    format!(
                    "unknown CPU mode '{m}' (use host-passthrough, host-model, maximum or custom)"
                ),
                ))
            }
        };
        let mut model = None;
        let mut topology = None;
        let mut extra = Vec::new();
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            let name = if c.tag_name().namespace().is_none() {
                c.tag_name().name()
            } else {
                ""
            };
            match name {
                "model" => {
                    let m = attrs(c, &cpath, &[], &["fallback", "vendor_id"])?;
                    let name = text(c, &cpath)?.trim().to_string();
                    once(
                        &mut model,
                        CpuModel {
                            name,
                            extra_attrs: m.kept,
                        },
                        &cpath,
                    )?;
                }
                "topology" => {
                    let t = attrs(
                        c,
                        &cpath,
                        &["sockets", "dies", "clusters", "cores", "threads"],
                        &[],
                    )?;
                    empty(c, &cpath)?;
                    let num = |n: &str| -> Result<Option<u32>> {
                        t.get(n).map(|v| parse_u32(v, &cpath, n)).transpose()
                    };
                    let need = |n: &str| -> Result<u32> {
                        num(n)?.ok_or_else(|| DomainError::missing(format!("{cpath}/@{n}"), ""))
                    };
                    once(
                        &mut topology,
                        Topology {
                            sockets: need("sockets")?,
                            dies: num("dies")?,
                            clusters: num("clusters")?,
                            cores: need("cores")?,
                            threads: need("threads")?,
                        },
                        &cpath,
                    )?;
                }
                _ => extra.push(self.other(c, path)?),
            }
        }
        match (mode, &model) {
            // qemu64 and kvm64 are what the baseline template is: no approximation.
            (CpuMode::Custom, Some(m)) if !matches!(m.name.as_str(), "" | "qemu64" | "kvm64") => {
                self.warnings.push(format!(
                "{path}/model: CPU model '{}' is approximated by vireo's 'baseline' CPU template",
                m.name
            ))
            }
            (CpuMode::HostModel, _) => self.warnings.push(format!(
                "{path}: mode='host-model' is given vireo's 'host' CPU template"
            )),
            _ => {}
        }
        Ok(Cpu {
            mode,
            model,
            topology,
            extra_attrs: a.kept,
            extra,
        })
    }

    fn clock(&mut self, node: Node, path: &str) -> Result<Clock> {
        let a = attrs(
            node,
            path,
            &["offset", "adjustment", "basis", "timezone"],
            &[],
        )?;
        let offset = match a.get("offset").unwrap_or("utc") {
            "utc" => ClockOffset::Utc,
            "localtime" => ClockOffset::Localtime,
            o @ ("variable" | "timezone" | "absolute") => return Err(DomainError::unsupported(
                format!("{path}[@offset='{o}']"),
                "vireo's real-time clock runs in UTC or local time (offset='utc' or 'localtime')",
            )),
            o => {
                return Err(DomainError::invalid(
                    path,
                    format!("unknown clock offset '{o}' (use utc or localtime)"),
                ))
            }
        };
        for extra in ["adjustment", "basis", "timezone"] {
            if a.get(extra).is_some() {
                return Err(DomainError::unsupported(
                    format!("{path}/@{extra}"),
                    "only offset='utc' or 'localtime' without adjustments is supported",
                ));
            }
        }
        const TIMERS: [&str; 7] = [
            "platform",
            "pit",
            "rtc",
            "hpet",
            "tsc",
            "kvmclock",
            "hypervclock",
        ];
        let mut timers = Vec::new();
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            if c.tag_name().namespace().is_some() || c.tag_name().name() != "timer" {
                return Err(self
                    .other(c, path)
                    .err()
                    .unwrap_or(DomainError::UnknownElement { path: cpath }));
            }
            let t = attrs(
                c,
                &cpath,
                &[
                    "name",
                    "present",
                    "tickpolicy",
                    "track",
                    "frequency",
                    "mode",
                ],
                &[],
            )?;
            empty(c, &cpath)?;
            let name = required(&t, "name", &cpath, "")?;
            if !TIMERS.contains(&name) {
                return Err(DomainError::invalid(
                    &cpath,
                    format!("unknown timer '{name}' (known: {})", TIMERS.join(", ")),
                ));
            }
            if let Some(p) = t.get("present") {
                let present = yes_no(p, &cpath, "present")?;
                if present && name == "hpet" {
                    self.warnings.push(format!(
                        "{cpath}: vireo provides no HPET; the guest uses the PIT, LAPIC timer and kvmclock"
                    ));
                }
            }
            timers.push(Timer {
                name: name.to_string(),
                attrs: t
                    .known
                    .iter()
                    .filter(|(k, _)| *k != "name")
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
        }
        Ok(Clock { offset, timers })
    }

    fn device(&mut self, node: Node, parent: &str) -> Result<Device> {
        let path = child_path(parent, node);
        if node.tag_name().namespace().is_some() {
            return self.other(node, parent).map(Device::Other);
        }
        Ok(match node.tag_name().name() {
            "disk" => Device::Disk(self.disk(node, &path)?),
            "interface" => Device::Interface(self.interface(node, &path)?),
            "serial" => Device::Serial(self.char_device(node, &path, false)?),
            "console" => Device::Console(self.char_device(node, &path, true)?),
            "rng" => Device::Rng(self.rng(node, &path)?),
            "memballoon" => Device::Memballoon(self.memballoon(node, &path)?),
            "vsock" => Device::Vsock(self.vsock(node, &path)?),
            _ => Device::Other(self.other(node, parent)?),
        })
    }

    fn disk(&mut self, node: Node, path: &str) -> Result<Disk> {
        let a = attrs(node, path, &["type", "device", "model"], &["snapshot"])?;
        let kind = match a.get("type").unwrap_or("file") {
            "file" => DiskType::File,
            "block" => DiskType::Block,
            t => {
                return Err(DomainError::unsupported(
                    format!("{path}[@type='{t}']"),
                    "vireo opens local image files and block devices (type='file' or 'block')",
                ))
            }
        };
        match a.get("device").unwrap_or("disk") {
            "disk" => {}
            d @ ("cdrom" | "floppy") => {
                return Err(DomainError::unsupported(
                    format!("{path}[@device='{d}']"),
                    "vireo's disks are virtio block devices; CD-ROM and floppy drives need buses vireo does not have",
                ))
            }
            d => {
                return Err(DomainError::unsupported(
                    format!("{path}[@device='{d}']"),
                    "vireo's disks are virtio block devices (device='disk')",
                ))
            }
        }
        let model = a.get("model");
        let mut extra_attrs = a.kept;
        if let Some(m) = model {
            if m != "virtio" {
                return Err(DomainError::unsupported(
                    format!("{path}[@model='{m}']"),
                    "vireo's disks are modern virtio devices (model='virtio')",
                ));
            }
            extra_attrs.insert(0, ("model".to_string(), m.to_string()));
        }
        let mut seen = HashSet::new();
        let mut driver = None;
        let mut source = None;
        let mut target = None;
        let mut readonly = false;
        let mut serial = None;
        let mut boot_order = None;
        let mut extra = Vec::new();
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            let name = if c.tag_name().namespace().is_none() {
                c.tag_name().name()
            } else {
                ""
            };
            if matches!(
                name,
                "driver" | "source" | "target" | "readonly" | "serial" | "boot"
            ) {
                check_once(&mut seen, &cpath)?;
            }
            match name {
                "driver" => {
                    let d = attrs(
                        c,
                        &cpath,
                        &["name", "type"],
                        &[
                            "cache",
                            "io",
                            "ioeventfd",
                            "event_idx",
                            "copy_on_read",
                            "discard",
                            "detect_zeroes",
                            "error_policy",
                            "rerror_policy",
                            "iothread",
                            "queues",
                            "queue_size",
                        ],
                    )?;
                    if let Some(n) = d.get("name") {
                        if n != "qemu" {
                            return Err(DomainError::unsupported(
                                format!("{cpath}[@name='{n}']"),
                                "vireo reads images itself (driver name='qemu')",
                            ));
                        }
                    }
                    let format = match d.get("type") {
                        None => None,
                        Some("raw") => Some(DiskFormat::Raw),
                        Some("qcow2") => Some(DiskFormat::Qcow2),
                        Some(t) => {
                            return Err(DomainError::unsupported(
                                format!("{cpath}[@type='{t}']"),
                                "vireo runs raw and qcow2 images (convert others with 'vireo img convert')",
                            ))
                        }
                    };
                    driver = Some(DiskDriver {
                        name: d.get("name").map(str::to_string),
                        format,
                        extra_attrs: d.kept,
                    });
                }
                "source" => {
                    let s = attrs(c, &cpath, &["file", "dev"], &["index", "startupPolicy"])?;
                    if let Some(sc) = elements(c, &cpath)?.first() {
                        return Err(self.other(*sc, &cpath).err().unwrap_or(
                            DomainError::UnknownElement {
                                path: child_path(&cpath, *sc),
                            },
                        ));
                    }
                    let (want, other) = match kind {
                        DiskType::File => ("file", "dev"),
                        DiskType::Block => ("dev", "file"),
                    };
                    if s.get(other).is_some() {
                        return Err(DomainError::invalid(
                            &cpath,
                            format!(
                                "a type='{}' disk takes {want}=, not {other}=",
                                kind.as_str()
                            ),
                        ));
                    }
                    let v = required(&s, want, &cpath, "the image to use")?;
                    source = Some((absolute_path(v, &format!("{cpath}/@{want}"))?, s.kept));
                }
                "target" => {
                    let t = attrs(
                        c,
                        &cpath,
                        &["dev", "bus"],
                        &["tray", "removable", "rotation_rate"],
                    )?;
                    empty(c, &cpath)?;
                    let dev = required(&t, "dev", &cpath, "name it, e.g. dev='vda'")?;
                    let bus = t.get("bus").unwrap_or(if dev.starts_with("vd") {
                        "virtio"
                    } else {
                        "(inferred from the name)"
                    });
                    if bus != "virtio" {
                        let p = match t.get("bus") {
                            Some(b) => format!("{cpath}[@bus='{b}']"),
                            None => format!("{cpath}[@dev='{dev}']"),
                        };
                        return Err(DomainError::unsupported(
                            p,
                            "vireo's disks are virtio (bus='virtio', dev='vda', 'vdb', …)",
                        ));
                    }
                    if !valid_virtio_disk_name(dev) {
                        return Err(DomainError::invalid(
                            &cpath,
                            format!("dev='{dev}' is not a virtio disk name (vda, vdb, …, vdaa)"),
                        ));
                    }
                    target = Some(DiskTarget {
                        dev: dev.to_string(),
                        extra_attrs: t.kept,
                    });
                }
                "readonly" => {
                    attrs(c, &cpath, &[], &[])?;
                    empty(c, &cpath)?;
                    readonly = true;
                }
                "serial" => {
                    let s = leaf(c, &cpath)?;
                    if s.is_empty()
                        || !s
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || "_ .+-".contains(ch))
                    {
                        return Err(DomainError::invalid(
                            &cpath,
                            format!(
                                "serial '{}' may only contain letters, digits, '_', ' ', '.', '+' and '-'",
                                shorten(&s)
                            ),
                        ));
                    }
                    serial = Some(s);
                }
                "boot" => boot_order = Some(boot_order_of(c, &cpath)?),
                _ => extra.push(self.other(c, path)?),
            }
        }
        let (source, source_attrs) = source.ok_or_else(|| {
            DomainError::missing(
                format!("{path}/source"),
                "a disk needs an image (empty drives are CD-ROMs, which vireo does not have)",
            )
        })?;
        let target = target.ok_or_else(|| {
            DomainError::missing(
                format!("{path}/target"),
                "e.g. <target dev='vda' bus='virtio'/>",
            )
        })?;
        Ok(Disk {
            kind,
            driver,
            source,
            source_attrs,
            target,
            readonly,
            serial,
            boot_order,
            extra_attrs,
            extra,
        })
    }

    fn interface(&mut self, node: Node, path: &str) -> Result<Interface> {
        let a = attrs(node, path, &["type"], &["trustGuestRxFilters"])?;
        let kind = match required(&a, "type", path, "use network, bridge or ethernet")? {
            "network" => InterfaceType::Network,
            "bridge" => InterfaceType::Bridge,
            "ethernet" => InterfaceType::Ethernet,
            "user" => return Err(DomainError::unsupported(
                format!("{path}[@type='user']"),
                "user-mode networking is not available in vireo (use network, bridge or ethernet)",
            )),
            t => {
                return Err(DomainError::unsupported(
                    format!("{path}[@type='{t}']"),
                    "vireo's interfaces are type network, bridge or ethernet",
                ))
            }
        };
        let mut seen = HashSet::new();
        let mut mac = None;
        let mut source = None;
        let mut source_attrs = Vec::new();
        let mut target_dev = None;
        let mut target_attrs = Vec::new();
        let mut model = None;
        let mut boot_order = None;
        let mut extra = Vec::new();
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            let name = if c.tag_name().namespace().is_none() {
                c.tag_name().name()
            } else {
                ""
            };
            if matches!(name, "mac" | "source" | "target" | "model" | "boot") {
                check_once(&mut seen, &cpath)?;
            }
            match name {
                "mac" => {
                    let m = attrs(c, &cpath, &["address"], &[])?;
                    empty(c, &cpath)?;
                    let addr = required(&m, "address", &cpath, "")?;
                    mac = Some(
                        addr.parse::<MacAddr>()
                            .map_err(|e| DomainError::invalid(&cpath, e))?,
                    );
                }
                "source" => {
                    empty(c, &cpath)?;
                    let (want, keep): (&str, &[&str]) = match kind {
                        InterfaceType::Network => ("network", &["portgroup", "portid", "bridge"]),
                        InterfaceType::Bridge => ("bridge", &[]),
                        InterfaceType::Ethernet => {
                            return Err(DomainError::invalid(
                                &cpath,
                                "an ethernet interface has no source; name its tap device with <target dev=…/>",
                            ))
                        }
                    };
                    let s = attrs(c, &cpath, &[want], keep)?;
                    let hint = format!("a type='{want}' interface needs <source {want}=…/>");
                    let v = required(&s, want, &cpath, &hint)?;
                    if v.is_empty() {
                        return Err(DomainError::invalid(&cpath, format!("{want}='' is empty")));
                    }
                    source = Some(v.to_string());
                    source_attrs = s.kept;
                }
                "target" => {
                    let t = attrs(c, &cpath, &["dev"], &["managed"])?;
                    empty(c, &cpath)?;
                    let dev = required(&t, "dev", &cpath, "")?;
                    if dev.is_empty() || dev.len() > 15 || dev.contains(['/', ' ', '\0']) {
                        return Err(DomainError::invalid(
                            &cpath,
                            format!("dev='{}' is not a valid interface name (1-15 characters, no '/' or spaces)", shorten(dev)),
                        ));
                    }
                    target_dev = Some(dev.to_string());
                    target_attrs = t.kept;
                }
                "model" => {
                    let m = attrs(c, &cpath, &["type"], &[])?;
                    empty(c, &cpath)?;
                    let t = required(&m, "type", &cpath, "use type='virtio'")?;
                    if t != "virtio" {
                        return Err(DomainError::unsupported(
                            format!("{cpath}[@type='{t}']"),
                            "vireo's network devices are virtio (model type='virtio')",
                        ));
                    }
                    model = Some(());
                }
                "boot" => boot_order = Some(boot_order_of(c, &cpath)?),
                _ => extra.push(self.other(c, path)?),
            }
        }
        if model.is_none() {
            self.warnings.push(format!(
                "{path}: no <model type=…/>: vireo gives the guest a virtio network device"
            ));
        }
        if source.is_none() && kind != InterfaceType::Ethernet {
            return Err(DomainError::missing(
                format!("{path}/source"),
                format!(
                    "a type='{}' interface needs <source {}=…/>",
                    kind.as_str(),
                    kind.as_str()
                ),
            ));
        }
        let mac = match mac {
            Some(m) => m,
            None => MacAddr::generate().map_err(|e| DomainError::Random {
                what: "a MAC address",
                message: e.to_string(),
            })?,
        };
        Ok(Interface {
            kind,
            mac,
            source,
            source_attrs,
            target_dev,
            target_attrs,
            boot_order,
            extra_attrs: a.kept,
            extra,
        })
    }

    fn char_device(&mut self, node: Node, path: &str, console: bool) -> Result<CharDevice> {
        let keep: &[&str] = if console { &["tty"] } else { &[] };
        let a = attrs(node, path, &["type"], keep)?;
        let ty = required(&a, "type", path, "use type='pty'")?;
        if ty != "pty" {
            return Err(DomainError::unsupported(
                format!("{path}[@type='{ty}']"),
                "vireo connects the guest's serial console to its own console socket (use type='pty')",
            ));
        }
        let mut seen = HashSet::new();
        let mut dev = CharDevice {
            target_type: None,
            target_port: None,
            target_model: None,
            extra_attrs: a.kept,
            extra: Vec::new(),
        };
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            if c.tag_name().namespace().is_some() || c.tag_name().name() != "target" {
                dev.extra.push(self.other(c, path)?);
                continue;
            }
            check_once(&mut seen, &cpath)?;
            let t = attrs(c, &cpath, &["type", "port"], &[])?;
            if let Some(ty) = t.get("type") {
                let ok = if console {
                    ty == "serial" || ty == "virtio"
                } else {
                    ty == "isa-serial"
                };
                if !ok {
                    let why = if console {
                        "vireo's console is the serial port (target type='serial') or a \
                         virtio-console (target type='virtio')"
                    } else {
                        "vireo's serial port is an ISA 16550 UART (target type='isa-serial')"
                    };
                    return Err(DomainError::unsupported(
                        format!("{cpath}[@type='{ty}']"),
                        why,
                    ));
                }
                dev.target_type = Some(ty.to_string());
            }
            if let Some(port) = t.get("port") {
                let n = parse_u32(port, &cpath, "port")?;
                if n != 0 {
                    return Err(DomainError::unsupported(
                        format!("{cpath}[@port='{n}']"),
                        "vireo has one serial port (port 0, COM1)",
                    ));
                }
                dev.target_port = Some(n);
            }
            for m in elements(c, &cpath)? {
                let mpath = child_path(&cpath, m);
                if console || m.tag_name().namespace().is_some() || m.tag_name().name() != "model" {
                    return Err(DomainError::UnknownElement { path: mpath });
                }
                let ma = attrs(m, &mpath, &["name"], &[])?;
                empty(m, &mpath)?;
                let name = required(&ma, "name", &mpath, "")?;
                if name != "isa-serial" {
                    return Err(DomainError::unsupported(
                        format!("{mpath}[@name='{name}']"),
                        "vireo's serial port is an ISA 16550 UART (model name='isa-serial')",
                    ));
                }
                once(&mut dev.target_model, name.to_string(), &mpath)?;
            }
        }
        // libvirt writes <source> before <target>; the rest after.
        dev.extra.sort_by_key(|e| e.local_name() != "source");
        Ok(dev)
    }

    fn rng(&mut self, node: Node, path: &str) -> Result<Rng> {
        let a = attrs(node, path, &["model"], &[])?;
        let model = required(&a, "model", path, "use model='virtio'")?;
        if model != "virtio" {
            return Err(DomainError::unsupported(
                format!("{path}[@model='{model}']"),
                "vireo's random number generator is a modern virtio device (model='virtio')",
            ));
        }
        let mut backend = None;
        let mut extra = Vec::new();
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            if c.tag_name().namespace().is_some() || c.tag_name().name() != "backend" {
                extra.push(self.other(c, path)?);
                continue;
            }
            let b = attrs(c, &cpath, &["model"], &[])?;
            let m = required(&b, "model", &cpath, "use model='random'")?;
            let value = match m {
                "random" => {
                    let dev = text(c, &cpath)?.trim().to_string();
                    const OK: [&str; 3] = ["/dev/urandom", "/dev/random", "/dev/hwrng"];
                    if !OK.contains(&dev.as_str()) {
                        return Err(DomainError::invalid(
                            &cpath,
                            format!(
                                "'{}' is not a host random device (use /dev/urandom, /dev/random or /dev/hwrng)",
                                shorten(&dev)
                            ),
                        ));
                    }
                    RngBackend::Random(dev.into())
                }
                "builtin" => {
                    empty(c, &cpath)?;
                    if !text(c, &cpath)?.trim().is_empty() {
                        return Err(DomainError::invalid(
                            &cpath,
                            "a builtin backend takes no device path",
                        ));
                    }
                    RngBackend::Builtin
                }
                m => return Err(DomainError::unsupported(
                    format!("{cpath}[@model='{m}']"),
                    "vireo feeds the guest from a host random device (model='random' or 'builtin')",
                )),
            };
            once(&mut backend, value, &cpath)?;
        }
        let backend = backend.ok_or_else(|| {
            DomainError::missing(
                format!("{path}/backend"),
                "e.g. <backend model='random'>/dev/urandom</backend>",
            )
        })?;
        Ok(Rng { backend, extra })
    }

    fn memballoon(&mut self, node: Node, path: &str) -> Result<Memballoon> {
        let a = attrs(
            node,
            path,
            &["model"],
            &["autodeflate", "freePageReporting"],
        )?;
        let model =
            match required(&a, "model", path, "use model='virtio' or 'none'")? {
                "virtio" => BalloonModel::Virtio,
                "none" => BalloonModel::None,
                m => return Err(DomainError::unsupported(
                    format!("{path}[@model='{m}']"),
                    "vireo's memory balloon is a modern virtio device (model='virtio' or 'none')",
                )),
            };
        let mut extra = Vec::new();
        for c in elements(node, path)? {
            extra.push(self.other(c, path)?);
        }
        Ok(Memballoon {
            model,
            extra_attrs: a.kept,
            extra,
        })
    }

    fn vsock(&mut self, node: Node, path: &str) -> Result<Vsock> {
        let a = attrs(node, path, &["model"], &[])?;
        let model_virtio = match a.get("model") {
            None => false,
            Some("virtio") => true,
            Some(m) => {
                return Err(DomainError::unsupported(
                    format!("{path}[@model='{m}']"),
                    "vireo's vsock is a modern virtio device (model='virtio')",
                ))
            }
        };
        let mut cid: Option<(bool, Option<u32>)> = None;
        let mut extra = Vec::new();
        for c in elements(node, path)? {
            let cpath = child_path(path, c);
            if c.tag_name().namespace().is_some() || c.tag_name().name() != "cid" {
                extra.push(self.other(c, path)?);
                continue;
            }
            let ca = attrs(c, &cpath, &["auto", "address"], &[])?;
            empty(c, &cpath)?;
            let auto = ca
                .get("auto")
                .map(|v| yes_no(v, &cpath, "auto"))
                .transpose()?;
            let address = ca
                .get("address")
                .map(|v| parse_u32(v, &cpath, "context ID"))
                .transpose()?;
            let auto = auto.unwrap_or(address.is_none());
            once(&mut cid, (auto, address), &cpath)?;
        }
        let (cid_auto, cid) = cid.unwrap_or((true, None));
        Ok(Vsock {
            model_virtio,
            cid_auto,
            cid,
            extra,
        })
    }
}

fn valid_virtio_disk_name(dev: &str) -> bool {
    match dev.strip_prefix("vd") {
        Some(rest) => {
            !rest.is_empty() && rest.len() <= 3 && rest.bytes().all(|c| c.is_ascii_lowercase())
        }
        None => false,
    }
}

fn boot_order_of(node: Node, path: &str) -> Result<u32> {
    let b = attrs(node, path, &["order"], &[])?;
    empty(node, path)?;
    let order = parse_u32(required(&b, "order", path, "")?, path, "boot order")?;
    if order == 0 {
        return Err(DomainError::invalid(path, "boot order must be at least 1"));
    }
    Ok(order)
}

fn memory_value(node: Node, a: &AttrSet, path: &str) -> Result<u64> {
    let v = text(node, path)?;
    units::parse_memory_kib(&v, a.get("unit"))
        .map_err(|e| DomainError::invalid(path, format!("invalid memory size: {e}")))
}

fn parse_vcpu(node: Node, path: &str) -> Result<Vcpu> {
    let a = attrs(node, path, &["placement", "current", "cpuset"], &[])?;
    let max = parse_u32(&text(node, path)?, path, "vCPU count")?;
    let current = match a.get("current") {
        Some(c) => parse_u32(c, &format!("{path}/@current"), "vCPU count")?,
        None => max,
    };
    let placement = match a.get("placement") {
        None => None,
        Some("static") => Some(VcpuPlacement::Static),
        Some("auto") => Some(VcpuPlacement::Auto),
        Some(p) => {
            return Err(DomainError::invalid(
                path,
                format!("placement='{p}' must be 'static' or 'auto'"),
            ))
        }
    };
    Ok(Vcpu {
        max,
        current,
        placement,
        cpuset: a.get("cpuset").map(str::to_string),
    })
}

fn lifecycle(node: Node, path: &str) -> Result<LifecycleAction> {
    let v = leaf(node, path)?;
    LifecycleAction::ALL
        .into_iter()
        .find(|a| a.as_str() == v)
        .ok_or_else(|| {
            DomainError::invalid(
                path,
                format!(
                    "unknown action '{}' (use destroy, restart, preserve, rename-restart, coredump-destroy or coredump-restart)",
                    shorten(&v)
                ),
            )
        })
}
