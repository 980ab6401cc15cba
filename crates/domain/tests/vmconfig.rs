//! The domain model → VmConfig step.

use std::path::PathBuf;

use vireo_domain::Domain;
use vireo_hypervisor::CpuTemplate;
use vireo_vmm::config::NetConfig;
use vireo_vmm::{ConsoleConfig, VmConfig};

fn corpus(name: &str) -> Domain {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    Domain::from_xml(&std::fs::read_to_string(p).unwrap())
        .unwrap()
        .domain
}

#[test]
fn runnable_domain_maps_every_field() {
    let d = corpus("testguest-runnable.xml");
    let cfg = d
        .to_vm_config(ConsoleConfig::File("/tmp/c.log".into()))
        .unwrap();
    assert_eq!(
        cfg,
        VmConfig {
            kernel: "/usr/lib/vireo/test-guest.elf".into(),
            initrd: None,
            cmdline: "console=ttyS0 vtg.action=poweroff".into(),
            memory: 64 << 20,
            cpus: 2,
            console: ConsoleConfig::File("/tmp/c.log".into()),
            cpu_template: CpuTemplate::Baseline,
            no_reboot: true,
            ..VmConfig::default()
        }
    );
}

const SMALL: &str = "<domain type='kvm'><name>s</name><memory unit='MiB'>256</memory>\
<vcpu current='3'>4</vcpu><os><type>hvm</type><kernel>/k</kernel><initrd>/i</initrd></os>\
<features><acpi/></features>CPU<on_reboot>REBOOT</on_reboot><devices>DEVICES</devices></domain>";

fn small(cpu: &str, reboot: &str, devices: &str) -> Domain {
    let xml = SMALL
        .replace("CPU", cpu)
        .replace("REBOOT", reboot)
        .replace("DEVICES", devices);
    Domain::from_xml(&xml).unwrap().domain
}

#[test]
fn cpu_modes_reboot_and_vcpus() {
    let c = small("", "restart", "")
        .to_vm_config(ConsoleConfig::Stdio)
        .unwrap();
    assert_eq!(c.cpu_template, CpuTemplate::Host); // no <cpu>: vireo's default
    assert!(!c.no_reboot);
    assert_eq!(c.cpus, 3); // the current count: no vCPU hotplug
    assert_eq!(c.cmdline, ""); // no <cmdline>: empty, as libvirt passes it
    assert_eq!(c.initrd, Some("/i".into()));
    for (cpu, t) in [
        ("<cpu mode='host-passthrough'/>", CpuTemplate::Host),
        ("<cpu mode='host-model'/>", CpuTemplate::Host),
        ("<cpu mode='maximum'/>", CpuTemplate::Host),
        (
            "<cpu mode='custom'><model>qemu64</model></cpu>",
            CpuTemplate::Baseline,
        ),
        (
            "<cpu><model>Skylake-Client</model></cpu>",
            CpuTemplate::Baseline,
        ),
    ] {
        let c = small(cpu, "restart", "")
            .to_vm_config(ConsoleConfig::Stdio)
            .unwrap();
        assert_eq!(c.cpu_template, t, "{cpu}");
    }
    for (action, no_reboot) in [
        ("destroy", true),
        ("restart", false),
        ("preserve", true),
        ("rename-restart", true),
    ] {
        let c = small("", action, "")
            .to_vm_config(ConsoleConfig::Stdio)
            .unwrap();
        assert_eq!(c.no_reboot, no_reboot, "{action}");
    }
}

#[test]
fn devices_the_vmm_cannot_run_yet_are_named() {
    let cases = [
        (
            "<interface type='network'><mac address='52:54:00:00:00:09'/><source network='default'/><model type='virtio'/></interface>",
            "/domain/devices/interface[@type='network'] (network 'default') cannot be run yet: vireo has no virtual networks yet: use type='bridge' with <source bridge=…/>, or type='ethernet' with <target dev=…/> naming a TAP",
        ),
        (
            "<vsock model='virtio'><cid auto='yes'/></vsock>",
            "/domain/devices/vsock/cid[@auto='yes'] cannot be run yet: vireo does not pick context IDs yet: give <cid auto='no' address='N'/> (N ≥ 3)",
        ),
    ];
    for (dev, msg) in cases {
        let e = small("", "restart", dev)
            .to_vm_config(ConsoleConfig::Stdio)
            .unwrap_err();
        assert_eq!(e.to_string(), msg);
    }
    // Cosmetic devices, the serial console and a disabled balloon are fine.
    small(
        "",
        "restart",
        "<serial type='pty'/><console type='pty'/><memballoon model='none'/><video><model type='virtio'/></video><input type='tablet' bus='usb'/>",
    )
    .to_vm_config(ConsoleConfig::Stdio)
    .unwrap();
    // The corpus' virt-install guests are parsed but not runnable until virtio lands.
    let e = corpus("debian12-q35-defined.xml")
        .to_vm_config(ConsoleConfig::Stdio)
        .unwrap_err();
    assert!(
        e.to_string().starts_with(
            "/domain/devices/interface[@type='network'] (network 'default') cannot be run yet"
        ),
        "{e}"
    );
}

#[test]
fn vsock_balloon_and_virtio_console() {
    use vireo_vmm::config::{BalloonConfig, VsockConfig};
    let c = small(
        "",
        "restart",
        "<vsock model='virtio'><cid auto='no' address='7'/></vsock>\
         <memballoon model='virtio' autodeflate='on'><stats period='10'/></memballoon>\
         <console type='pty'><target type='virtio' port='0'/></console>",
    )
    .to_vm_config(ConsoleConfig::Stdio)
    .unwrap();
    // The socket is the daemon's to set.
    assert_eq!(
        c.vsock,
        Some(VsockConfig {
            cid: 7,
            socket: Default::default()
        })
    );
    assert_eq!(
        c.balloon,
        Some(BalloonConfig {
            deflate_on_oom: true,
            target_bytes: None,
        })
    );
    // <currentMemory> below <memory>: the balloon's initial target.
    let xml = SMALL
        .replace("CPU", "<currentMemory unit='MiB'>192</currentMemory>")
        .replace("REBOOT", "restart")
        .replace("DEVICES", "<memballoon model='virtio'/>");
    let cm = Domain::from_xml(&xml)
        .unwrap()
        .domain
        .to_vm_config(ConsoleConfig::Stdio)
        .unwrap();
    assert_eq!(cm.balloon.unwrap().target_bytes, Some(192 << 20));
    assert!(c.virtio_console);
    // Without them: none; model='none' is no balloon; a serial console target is COM1.
    let c = small(
        "",
        "restart",
        "<memballoon model='none'/><console type='pty'><target type='serial'/></console>",
    )
    .to_vm_config(ConsoleConfig::Stdio)
    .unwrap();
    assert_eq!((c.vsock, c.balloon, c.virtio_console), (None, None, false));
    let c = small("", "restart", "<memballoon model='virtio'/>")
        .to_vm_config(ConsoleConfig::Stdio)
        .unwrap();
    assert_eq!(c.balloon, Some(BalloonConfig::default()));
    for (dev, want) in [
        // (A reserved context ID is refused by the parser already.)
        ("<vsock model='virtio'/>", "cid[@auto='yes']"),
        (
            "<memballoon model='virtio' autodeflate='maybe'/>",
            "/domain/devices/memballoon/@autodeflate",
        ),
    ] {
        let e = small("", "restart", dev)
            .to_vm_config(ConsoleConfig::Stdio)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{dev}: {e}");
    }
    // Another console target is refused by the parser, naming the choices.
    let xml = SMALL
        .replace("CPU", "")
        .replace("REBOOT", "restart")
        .replace(
            "DEVICES",
            "<console type='pty'><target type='sclp'/></console>",
        );
    let e = Domain::from_xml(&xml).unwrap_err().to_string();
    assert!(e.contains("target type='virtio'"), "{e}");
}

#[test]
fn disks_map_in_target_order() {
    use vireo_vmm::config::{DiskConfig, DiskFormat};
    let c = small(
        "",
        "restart",
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2' queues='4'/>\
         <source file='/img/b.qcow2'/><target dev='vdb' bus='virtio'/><serial>data-1</serial></disk>\
         <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdaa'/><readonly/></disk>\
         <disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>\
         <source file='/img/a.raw'/><target dev='vda' bus='virtio'/><boot order='1'/></disk>",
    )
    .to_vm_config(ConsoleConfig::Stdio)
    .unwrap();
    assert_eq!(
        c.disks,
        vec![
            DiskConfig {
                path: "/img/a.raw".into(),
                format: Some(DiskFormat::Raw),
                ..Default::default()
            },
            DiskConfig {
                path: "/img/b.qcow2".into(),
                format: Some(DiskFormat::Qcow2),
                serial: Some("data-1".into()),
                queues: Some(4),
                ..Default::default()
            },
            DiskConfig {
                // No <driver type>: raw, as libvirt assumes (never probed).
                path: "/dev/sdz".into(),
                format: Some(DiskFormat::Raw),
                readonly: true,
                ..Default::default()
            },
        ]
    );
    let disk = |inner: &str| {
        small(
            "",
            "restart",
            &format!("<disk type='file' device='disk'><source file='/d'/><target dev='vda'/>{inner}</disk>"),
        )
        .to_vm_config(ConsoleConfig::Stdio)
        .unwrap_err()
        .to_string()
    };
    let e = disk("<serial>this-serial-is-too-long-for-virtio</serial>");
    assert!(
        e.contains("/domain/devices/disk[target/@dev='vda']/serial") && e.contains("at most 20"),
        "{e}"
    );
    for q in ["0", "17", "many"] {
        let e = disk(&format!("<driver name='qemu' queues='{q}'/>"));
        assert!(e.contains("driver/@queues") && e.contains(q), "{e}");
    }
}

#[test]
fn interfaces_become_virtio_nets_on_taps() {
    let c = small(
        "",
        "restart",
        "<interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='tap7'/><model type='virtio'/></interface>\
         <interface type='ethernet'><mac address='52:54:00:00:00:02'/></interface>\
         <interface type='bridge'><mac address='52:54:00:00:00:03'/><source bridge='br0'/><model type='virtio'/></interface>\
         <interface type='bridge'><mac address='52:54:00:00:00:04'/><source bridge='br1'/><target dev='vnet3'/></interface>\
         <interface type='bridge'><mac address='52:54:00:00:00:05'/><source bridge='br1'/><target dev='mytap'/></interface>",
    )
    .to_vm_config(ConsoleConfig::Stdio)
    .unwrap();
    let net = |tap: Option<&str>, mac: &str, bridge: Option<&str>| NetConfig {
        tap: tap.map(String::from),
        mac: Some(mac.into()),
        bridge: bridge.map(String::from),
        queues: None,
    };
    assert_eq!(
        c.nets,
        vec![
            net(Some("tap7"), "52:54:00:00:00:01", None),
            net(None, "52:54:00:00:00:02", None),
            net(None, "52:54:00:00:00:03", Some("br0")),
            // A libvirt-generated name: vireo makes a fresh TAP.
            net(None, "52:54:00:00:00:04", Some("br1")),
            net(Some("mytap"), "52:54:00:00:00:05", Some("br1")),
        ]
    );
    // What the VMM then checks passes: the domain's names and MACs are valid flags.
    c.validate(u64::MAX, 8).unwrap();
    // Without <mac>, the domain generated one, which the configuration carries.
    let c = small("", "restart", "<interface type='ethernet'/>")
        .to_vm_config(ConsoleConfig::Stdio)
        .unwrap();
    assert!(c.nets[0].mac.as_deref().unwrap().starts_with("52:54:00:"));
    // <driver queues='N'/> → queue pairs; out of range is named.
    let c = small(
        "",
        "restart",
        "<interface type='ethernet'><mac address='52:54:00:00:00:07'/><driver name='vhost' queues='4'/></interface>",
    )
    .to_vm_config(ConsoleConfig::Stdio)
    .unwrap();
    assert_eq!(c.nets[0].queues, Some(4));
    let e = small(
        "",
        "restart",
        "<interface type='ethernet'><mac address='52:54:00:00:00:07'/><driver queues='99'/></interface>",
    )
    .to_vm_config(ConsoleConfig::Stdio)
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/domain/devices/interface[mac/@address='52:54:00:00:00:07']/driver/@queues: '99' is not a queue count (1..=16)"
    );
    // A model other than virtio is refused when the XML is read.
    let e = Domain::from_xml(
        &SMALL
            .replace("CPU", "")
            .replace("REBOOT", "restart")
            .replace(
                "DEVICES",
                "<interface type='ethernet'><model type='e1000'/></interface>",
            ),
    )
    .unwrap_err();
    assert!(e.to_string().contains("virtio"), "{e}");
}

#[test]
fn direct_kernel_boot_required_and_localtime() {
    let d = Domain::from_xml(
        "<domain type='kvm'><name>n</name><memory>65536</memory><os><type>hvm</type><boot dev='hd'/></os><features><acpi/></features></domain>",
    )
    .unwrap()
    .domain;
    assert_eq!(
        d.to_vm_config(ConsoleConfig::Stdio).unwrap_err().to_string(),
        "/domain/os/kernel cannot be run yet: direct kernel boot required: vireo runs no firmware that could boot from a disk (add <kernel>, and <initrd>/<cmdline> as needed, to <os>)"
    );
    let d = Domain::from_xml(
        &SMALL
            .replace("CPU", "<clock offset='localtime'/>")
            .replace("REBOOT", "restart")
            .replace("DEVICES", ""),
    )
    .unwrap()
    .domain;
    assert_eq!(
        d.to_vm_config(ConsoleConfig::Stdio).unwrap_err().to_string(),
        "/domain/clock[@offset='localtime'] cannot be run yet: vireo's real-time clock runs in UTC for now (use offset='utc')"
    );
}

#[test]
fn rng_maps_to_the_virtio_rng_device() {
    for backend in [
        "<backend model='random'>/dev/urandom</backend>",
        "<backend model='random'>/dev/random</backend>",
        "<backend model='builtin'/>",
    ] {
        let cfg = small(
            "",
            "restart",
            &format!("<rng model='virtio'>{backend}</rng>"),
        )
        .to_vm_config(ConsoleConfig::Stdio)
        .unwrap();
        assert_eq!(cfg.rng, Some(vireo_vmm::RngConfig::default()), "{backend}");
    }
    let cfg = small("", "restart", "")
        .to_vm_config(ConsoleConfig::Stdio)
        .unwrap();
    assert_eq!(cfg.rng, None);
    let e = small(
        "",
        "restart",
        "<rng model='virtio'><backend model='builtin'/></rng><rng model='virtio'><backend model='builtin'/></rng>",
    )
    .to_vm_config(ConsoleConfig::Stdio)
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/domain/devices/rng[2] cannot be run yet: vireo runs one virtio-rng device per VM"
    );
}
