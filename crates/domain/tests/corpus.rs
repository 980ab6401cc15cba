//! The corpus: domain XML in the shapes libvirt and virt-install write (virt-install
//! `--print-xml`, `virsh dumpxml` of defined and running guests). Each file defines
//! unchanged, round-trips through dumpxml, and keeps its metadata and cosmetic elements.

use std::path::PathBuf;

use vireo_domain::*;

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "corpus files missing in {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

fn parse(file: &str) -> Parsed {
    let (_, xml) = corpus().into_iter().find(|(n, _)| n == file).unwrap();
    Domain::from_xml(&xml).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn every_file_defines_and_round_trips() {
    for (file, xml) in corpus() {
        let parsed = Domain::from_xml(&xml).unwrap_or_else(|e| panic!("{file}: {e}"));
        let out = parsed.domain.to_xml();
        let again =
            Domain::from_xml(&out).unwrap_or_else(|e| panic!("{file} (dumped): {e}\n{out}"));
        assert_eq!(
            again.domain, parsed.domain,
            "{file}: round trip changed the domain\n{out}"
        );
        assert_eq!(again.domain.to_xml(), out, "{file}: dumpxml is not stable");
        // The model is serialisable (the daemon may store it as JSON).
        let json = serde_json::to_string(&parsed.domain).unwrap();
        let back: Domain = serde_json::from_str(&json).unwrap();
        assert_eq!(back, parsed.domain, "{file}: JSON round trip");
    }
}

#[test]
fn virt_install_q35_guest_is_read_fully() {
    let p = parse("debian12-q35-defined.xml");
    let d = &p.domain;
    assert_eq!(d.name(), "debian12");
    assert_eq!(d.uuid().to_string(), "6f1c2e0a-5b7d-4c39-9a51-2f0d8e4b7a13");
    assert_eq!(d.memory_kib, 2 << 20);
    assert_eq!(d.current_memory_kib, 2 << 20);
    assert_eq!((d.vcpu.max, d.vcpu.current), (2, 2));
    assert_eq!(d.vcpu.placement, Some(VcpuPlacement::Static));
    assert_eq!(d.os.machine.as_deref(), Some("pc-q35-7.2"));
    assert_eq!(
        d.os.kernel.as_deref(),
        Some(std::path::Path::new(
            "/var/lib/libvirt/boot/debian12-vmlinuz"
        ))
    );
    assert_eq!(
        d.os.cmdline.as_deref(),
        Some("console=ttyS0 root=/dev/vda1 ro quiet")
    );
    assert_eq!(d.os.boot, vec![BootDevice::Hd]);
    assert_eq!(d.cpu.as_ref().unwrap().mode, CpuMode::HostPassthrough);
    assert_eq!(d.clock.as_ref().unwrap().timers.len(), 3);
    assert!(d.features.as_ref().unwrap().acpi);
    assert_eq!(
        d.blk_rows(),
        vec![BlkRow {
            kind: "file".into(),
            device: "disk".into(),
            target: "vda".into(),
            source: "/var/lib/libvirt/images/debian12.qcow2".into(),
        }]
    );
    assert_eq!(d.disks().next().unwrap().format(), DiskFormat::Qcow2);
    assert_eq!(
        d.if_rows(),
        vec![IfRow {
            interface: "-".into(),
            kind: "network".into(),
            source: "default".into(),
            model: "virtio".into(),
            mac: "52:54:00:3b:9e:71".into(),
        }]
    );
    // The cosmetic elements are listed once each in one warning.
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    let w = &p.warnings[0];
    assert!(w.starts_with("kept but not used by vireo: "), "{w}");
    for path in [
        "/domain/pm",
        "/domain/features/vmport",
        "/domain/devices/controller",
        "/domain/devices/channel",
        "/domain/devices/input",
        "/domain/devices/graphics",
        "/domain/devices/sound",
        "/domain/devices/audio",
        "/domain/devices/video",
        "/domain/devices/redirdev",
        "/domain/devices/disk/address",
        "/domain/devices/memballoon/address",
    ] {
        assert_eq!(
            w.matches(&format!("{path},")).count()
                + w.matches(&format!("{path}\n")).count()
                + usize::from(w.ends_with(path)),
            1,
            "{path} in {w}"
        );
    }
    // Devices keep their document order, cosmetic ones included.
    let kinds: Vec<&str> = d
        .devices
        .iter()
        .map(|d| match d {
            Device::Disk(_) => "disk",
            Device::Interface(_) => "interface",
            Device::Serial(_) => "serial",
            Device::Console(_) => "console",
            Device::Rng(_) => "rng",
            Device::Memballoon(_) => "memballoon",
            Device::Vsock(_) => "vsock",
            Device::Other(e) => e.local_name(),
        })
        .collect();
    assert_eq!(kinds.first(), Some(&"disk"));
    assert_eq!(kinds.iter().filter(|k| **k == "controller").count(), 11);
    assert_eq!(kinds.last(), Some(&"rng"));
}

#[test]
fn metadata_and_kept_elements_come_back_verbatim() {
    let p = parse("ubuntu-running.xml");
    let out = p.domain.to_xml();
    for fragment in [
        "  <metadata>\n    <libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>\n      <libosinfo:os id='http://ubuntu.com/ubuntu/24.04'/>\n    </libosinfo:libosinfo>\n",
        "    <ci:owner xmlns:ci='https://example.org/ci/1.0' team='platform'>\n      <ci:queue priority='high'>release</ci:queue>\n    </ci:owner>\n  </metadata>\n",
        "      <backingStore type='file' index='3'>\n        <format type='qcow2'/>\n        <source file='/var/lib/libvirt/images/ubuntu-base.qcow2'/>\n        <backingStore/>\n      </backingStore>\n",
        "    <channel type='unix'>\n      <source mode='bind' path='/run/libvirt/qemu/channel/7-ubuntu2404/org.qemu.guest_agent.0'/>\n      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>\n",
        "  </devices>\n  <seclabel type='dynamic' model='apparmor' relabel='yes'>\n    <label>libvirt-b2c6d0f4-3a8e-4e5d-a7c1-9f0b1e2d3c4a</label>\n",
        "  <description>Builds release artefacts.\nOwner: platform team &lt;platform@example.org&gt;</description>\n",
        "    <console type='pty' tty='/dev/pts/4'>\n      <source path='/dev/pts/4'/>\n      <target type='serial' port='0'/>\n      <alias name='serial0'/>\n    </console>\n",
        "      <source network='default' portid='2f4c9e1a-6b3d-4f8e-9a0c-1d2e3f4a5b6c' bridge='virbr0'/>\n      <target dev='vnet3'/>\n",
        "  <vcpu placement='static' current='4'>8</vcpu>\n  <resource>\n",
    ] {
        assert!(out.contains(fragment), "missing:\n{fragment}\nin:\n{out}");
    }
    // The runtime id is not part of the definition.
    assert!(
        out.starts_with("<domain type='kvm'>\n  <name>ubuntu2404</name>\n"),
        "{out}"
    );
    let d = &p.domain;
    assert_eq!(d.on_crash, LifecycleAction::CoredumpRestart);
    assert_eq!(d.current_memory_kib, 6 << 20);
    assert_eq!(d.if_rows()[0].interface, "vnet3");
    assert_eq!(d.blk_rows()[1].kind, "block");
    assert_eq!(d.blk_rows()[1].source, "/dev/vg0/ubuntu-scratch");
}

#[test]
fn print_xml_style_with_double_quotes_and_no_units() {
    let p = parse("fedora-print-xml.xml");
    let d = &p.domain;
    assert_eq!(d.memory_kib, 4 << 20); // no unit: KiB
    assert_eq!(d.on_reboot, LifecycleAction::Restart); // defaults
    assert_eq!(d.disks().count(), 2);
    assert_eq!(
        d.disks().nth(1).unwrap().serial.as_deref(),
        Some("DATA-0001")
    );
    assert_eq!(
        d.interfaces().next().unwrap().mac.to_string(),
        "52:54:00:a1:0c:5e"
    );
    let out = d.to_xml();
    assert!(out.contains("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <pm>\n"), "{out}");
    assert!(out.contains("    <console type='pty'/>\n"), "{out}");
}

#[test]
fn bridge_block_vsock_and_custom_cpu() {
    let p = parse("alpine-bridge-vsock.xml");
    let d = &p.domain;
    assert_eq!((d.memory_kib, d.current_memory_kib), (512 << 10, 384 << 10));
    assert_eq!(
        d.cpu.as_ref().unwrap().mode.template(),
        vireo_hypervisor::CpuTemplate::Baseline
    );
    assert!(p.warnings.iter().any(|w| w == "/domain/cpu/model: CPU model 'Nehalem' is approximated by vireo's 'baseline' CPU template"), "{:?}", p.warnings);
    let vs: Vec<_> = d
        .devices
        .iter()
        .filter_map(|x| match x {
            Device::Vsock(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!((vs[0].cid_auto, vs[0].cid), (false, Some(42)));
    assert!(d.disks().nth(1).unwrap().readonly);
    assert_eq!(d.disks().next().unwrap().kind, DiskType::Block);
    let i = d.interfaces().next().unwrap();
    assert_eq!(
        (i.kind, i.source.as_deref(), i.target_dev.as_deref()),
        (InterfaceType::Bridge, Some("br0"), Some("alpine0"))
    );
}

#[test]
fn boot_order_ethernet_and_host_model() {
    let p = parse("arch-ethernet-bootorder.xml");
    let d = &p.domain;
    assert_eq!(d.memory_kib, 1 << 20);
    assert_eq!(d.current_memory_kib, 1 << 20);
    assert_eq!(d.vcpu.placement, Some(VcpuPlacement::Auto));
    assert_eq!(d.disks().next().unwrap().boot_order, Some(1));
    let rows = d.if_rows();
    assert_eq!(rows[0].kind, "ethernet");
    assert_eq!(rows[0].source, "-");
    assert_eq!(rows[0].interface, "tap-arch0");
    assert_eq!(rows[1].source, "isolated");
    assert!(p
        .warnings
        .iter()
        .any(|w| w.contains("mode='host-model' is given vireo's 'host' CPU template")));
    let out = d.to_xml();
    assert!(out.contains("  <os firmware='bios'>\n"), "{out}");
    assert!(
        out.contains("    <bootmenu enable='no'/>\n  </os>\n"),
        "{out}"
    );
    assert!(
        out.contains("  <vcpu placement='auto' cpuset='0-3'>2</vcpu>\n  <numatune>\n"),
        "{out}"
    );
}

/// The exact dumpxml layout for a small guest: libvirt's order, 2-space indent, single
/// quotes, KiB.
#[test]
fn dumpxml_layout() {
    let p = parse("testguest-runnable.xml");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let expected = "\
<domain type='kvm'>
  <name>vtg</name>
  <uuid>5a4d3c2b-1e0f-4a9b-8c7d-6e5f4a3b2c1d</uuid>
  <description>vireo's purpose-built test guest: boots, checks the machine, powers off.</description>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>/usr/lib/vireo/test-guest.elf</kernel>
    <cmdline>console=ttyS0 vtg.action=poweroff</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='custom'>
    <model>qemu64</model>
    <topology sockets='1' cores='2' threads='1'/>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='pty'>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
";
    assert_eq!(p.domain.to_xml(), expected);
}
