//! [`Domain`] → XML (`dumpxml`), in libvirt's element order and layout. Parsing the
//! output gives back an equal [`Domain`].

use crate::classify::{self, DOMAIN_ORDER, OS_ORDER};
use crate::model::*;
use crate::xml::XmlElement;

fn path_text(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Sorts elements into libvirt's order (stable: equal ranks keep their order).
fn ordered(mut v: Vec<XmlElement>, order: &[&str]) -> Vec<XmlElement> {
    v.sort_by_key(|e| classify::rank(order, e.local_name()));
    v
}

fn memory(name: &str, kib: u64, attrs: &[(String, String)]) -> XmlElement {
    XmlElement::new(name)
        .attr("unit", "KiB")
        .attrs_from(attrs)
        .text(kib.to_string())
}

pub(crate) fn domain(d: &Domain) -> XmlElement {
    let mut children = vec![
        XmlElement::new("name").text(&d.name),
        XmlElement::new("uuid").text(d.uuid.to_string()),
    ];
    if let Some(t) = &d.title {
        children.push(XmlElement::new("title").text(t));
    }
    if let Some(t) = &d.description {
        children.push(XmlElement::new("description").text(t));
    }
    if let Some(m) = &d.metadata {
        children.push(XmlElement::new("metadata").children(m.iter().cloned()));
    }
    children.push(memory("memory", d.memory_kib, &d.memory_attrs));
    children.push(memory("currentMemory", d.current_memory_kib, &[]));
    children.push(vcpu(&d.vcpu));
    children.push(os(&d.os));
    if let Some(f) = &d.features {
        children.push(features(f));
    }
    if let Some(c) = &d.cpu {
        children.push(cpu(c));
    }
    if let Some(c) = &d.clock {
        children.push(clock(c));
    }
    children.push(XmlElement::new("on_poweroff").text(d.on_poweroff.as_str()));
    children.push(XmlElement::new("on_reboot").text(d.on_reboot.as_str()));
    children.push(XmlElement::new("on_crash").text(d.on_crash.as_str()));
    let mut devices = XmlElement::new("devices");
    if let Some(e) = &d.emulator {
        devices = devices.child(XmlElement::new("emulator").text(path_text(e)));
    }
    devices = devices.children(d.devices.iter().map(device));
    children.push(devices);
    children.extend(d.extra.iter().cloned());
    XmlElement::new("domain")
        .attr("type", "kvm")
        .children(ordered(children, DOMAIN_ORDER))
}

fn vcpu(v: &Vcpu) -> XmlElement {
    XmlElement::new("vcpu")
        .attr_opt("placement", v.placement.map(|p| p.as_str()))
        .attr_opt("cpuset", v.cpuset.as_deref())
        .attr_opt(
            "current",
            (v.current != v.max).then(|| v.current.to_string()),
        )
        .text(v.max.to_string())
}

fn os(o: &Os) -> XmlElement {
    let mut children = vec![XmlElement::new("type")
        .attr("arch", &o.arch)
        .attr_opt("machine", o.machine.as_deref())
        .text("hvm")];
    if let Some(k) = &o.kernel {
        children.push(XmlElement::new("kernel").text(path_text(k)));
    }
    if let Some(i) = &o.initrd {
        children.push(XmlElement::new("initrd").text(path_text(i)));
    }
    if let Some(c) = &o.cmdline {
        children.push(XmlElement::new("cmdline").text(c));
    }
    for b in &o.boot {
        children.push(XmlElement::new("boot").attr("dev", b.as_str()));
    }
    children.extend(o.extra.iter().cloned());
    XmlElement::new("os")
        .attrs_from(&o.extra_attrs)
        .children(ordered(children, OS_ORDER))
}

fn features(f: &Features) -> XmlElement {
    let mut e = XmlElement::new("features");
    if f.acpi {
        e = e.child(XmlElement::new("acpi"));
    }
    if let Some(a) = &f.apic {
        e = e.child(XmlElement::new("apic").attr_opt("eoi", a.eoi.as_deref()));
    }
    if f.pae {
        e = e.child(XmlElement::new("pae"));
    }
    e.children(f.extra.iter().cloned())
}

fn cpu(c: &Cpu) -> XmlElement {
    let mut e = XmlElement::new("cpu")
        .attr("mode", c.mode.as_str())
        .attrs_from(&c.extra_attrs);
    if let Some(m) = &c.model {
        e = e.child(
            XmlElement::new("model")
                .attrs_from(&m.extra_attrs)
                .text(&m.name),
        );
    }
    if let Some(t) = &c.topology {
        e = e.child(
            XmlElement::new("topology")
                .attr("sockets", t.sockets.to_string())
                .attr_opt("dies", t.dies.map(|n| n.to_string()))
                .attr_opt("clusters", t.clusters.map(|n| n.to_string()))
                .attr("cores", t.cores.to_string())
                .attr("threads", t.threads.to_string()),
        );
    }
    e.children(c.extra.iter().cloned())
}

fn clock(c: &Clock) -> XmlElement {
    XmlElement::new("clock")
        .attr("offset", c.offset.as_str())
        .children(c.timers.iter().map(|t| {
            XmlElement::new("timer")
                .attr("name", &t.name)
                .attrs_from(&t.attrs)
        }))
}

fn boot(order: Option<u32>) -> Option<XmlElement> {
    order.map(|o| XmlElement::new("boot").attr("order", o.to_string()))
}

fn device(d: &Device) -> XmlElement {
    match d {
        Device::Disk(disk) => {
            let mut e = XmlElement::new("disk")
                .attr("type", disk.kind.as_str())
                .attr("device", "disk")
                .attrs_from(&disk.extra_attrs);
            if let Some(drv) = &disk.driver {
                e = e.child(
                    XmlElement::new("driver")
                        .attr_opt("name", drv.name.as_deref())
                        .attr_opt("type", drv.format.map(|f| f.as_str()))
                        .attrs_from(&drv.extra_attrs),
                );
            }
            let src_attr = match disk.kind {
                DiskType::File => "file",
                DiskType::Block => "dev",
            };
            e = e
                .child(
                    XmlElement::new("source")
                        .attr(src_attr, path_text(&disk.source))
                        .attrs_from(&disk.source_attrs),
                )
                .child(
                    XmlElement::new("target")
                        .attr("dev", &disk.target.dev)
                        .attr("bus", "virtio")
                        .attrs_from(&disk.target.extra_attrs),
                );
            if disk.readonly {
                e = e.child(XmlElement::new("readonly"));
            }
            if let Some(s) = &disk.serial {
                e = e.child(XmlElement::new("serial").text(s));
            }
            e.children(boot(disk.boot_order))
                .children(disk.extra.iter().cloned())
        }
        Device::Interface(i) => {
            let mut e = XmlElement::new("interface")
                .attr("type", i.kind.as_str())
                .attrs_from(&i.extra_attrs)
                .child(XmlElement::new("mac").attr("address", i.mac.to_string()));
            if let Some(s) = &i.source {
                e = e.child(
                    XmlElement::new("source")
                        .attr(i.kind.as_str(), s)
                        .attrs_from(&i.source_attrs),
                );
            }
            if let Some(t) = &i.target_dev {
                e = e.child(
                    XmlElement::new("target")
                        .attr("dev", t)
                        .attrs_from(&i.target_attrs),
                );
            }
            e.child(XmlElement::new("model").attr("type", "virtio"))
                .children(boot(i.boot_order))
                .children(i.extra.iter().cloned())
        }
        Device::Serial(c) => char_device("serial", c),
        Device::Console(c) => char_device("console", c),
        Device::Rng(r) => {
            let backend = match &r.backend {
                RngBackend::Random(p) => XmlElement::new("backend")
                    .attr("model", "random")
                    .text(path_text(p)),
                RngBackend::Builtin => XmlElement::new("backend").attr("model", "builtin"),
            };
            XmlElement::new("rng")
                .attr("model", "virtio")
                .child(backend)
                .children(r.extra.iter().cloned())
        }
        Device::Memballoon(m) => XmlElement::new("memballoon")
            .attr("model", m.model.as_str())
            .attrs_from(&m.extra_attrs)
            .children(m.extra.iter().cloned()),
        Device::Vsock(v) => XmlElement::new("vsock")
            .attr_opt("model", v.model_virtio.then_some("virtio"))
            .child(
                XmlElement::new("cid")
                    .attr("auto", if v.cid_auto { "yes" } else { "no" })
                    .attr_opt("address", v.cid.map(|c| c.to_string())),
            )
            .children(v.extra.iter().cloned()),
        Device::Other(e) => e.clone(),
    }
}

fn char_device(name: &str, c: &CharDevice) -> XmlElement {
    let (sources, rest): (Vec<_>, Vec<_>) = c
        .extra
        .iter()
        .cloned()
        .partition(|e| e.local_name() == "source");
    let mut target = XmlElement::new("target")
        .attr_opt("type", c.target_type.as_deref())
        .attr_opt("port", c.target_port.map(|p| p.to_string()));
    if let Some(m) = &c.target_model {
        target = target.child(XmlElement::new("model").attr("name", m));
    }
    let mut e = XmlElement::new(name)
        .attr("type", "pty")
        .attrs_from(&c.extra_attrs)
        .children(sources);
    if c.target_type.is_some() || c.target_port.is_some() || c.target_model.is_some() {
        e = e.child(target);
    }
    e.children(rest)
}
