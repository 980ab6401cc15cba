//! `vireo install`: virt-install's options → a domain that defines, round-trips and runs.

use vireo_domain::install::*;
use vireo_domain::*;
use vireo_vmm::ConsoleConfig;

fn options(disks: &[&str], networks: &[&str], boot: &str) -> InstallOptions {
    InstallOptions {
        name: "inst".into(),
        memory: MemorySpec::parse("1024").unwrap(),
        vcpus: VcpuSpec::parse("2").unwrap(),
        disks: disks.iter().map(|d| DiskSpec::parse(d).unwrap()).collect(),
        networks: networks
            .iter()
            .map(|n| NetworkSpec::parse(n).unwrap())
            .collect(),
        boot: BootSpec::parse(boot).unwrap(),
        cpu: None,
        description: None,
    }
}

#[test]
fn full_guest() {
    let o = options(
        &["path=/var/lib/vireo/images/inst.qcow2,size=10,bus=virtio", "/dev/vg0/data,readonly=on,serial=D1,cache=none"],
        &["network=default", "bridge=br0,mac=52:54:00:aa:bb:cc", "type=ethernet,target=tap7"],
        "kernel=/boot/vmlinuz,initrd=/boot/initrd.img,kernel_args=\"console=ttyS0,115200 root=/dev/vda1\"",
    );
    let d = o.to_domain().unwrap();
    let xml = d.to_xml();
    let p = Domain::from_xml(&xml).unwrap();
    assert_eq!(p.domain, d, "{xml}");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    for fragment in [
        "  <memory unit='KiB'>1048576</memory>\n  <currentMemory unit='KiB'>1048576</currentMemory>\n  <vcpu placement='static'>2</vcpu>\n",
        "    <type arch='x86_64' machine='q35'>hvm</type>\n    <kernel>/boot/vmlinuz</kernel>\n    <initrd>/boot/initrd.img</initrd>\n    <cmdline>console=ttyS0,115200 root=/dev/vda1</cmdline>\n",
        "  <features>\n    <acpi/>\n    <apic/>\n  </features>\n  <cpu mode='host-passthrough'/>\n",
        "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='/var/lib/vireo/images/inst.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n",
        "    <disk type='block' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source dev='/dev/vg0/data'/>\n      <target dev='vdb' bus='virtio'/>\n      <readonly/>\n      <serial>D1</serial>\n    </disk>\n",
        "      <mac address='52:54:00:aa:bb:cc'/>\n      <source bridge='br0'/>\n      <model type='virtio'/>\n",
        "    <interface type='ethernet'>\n",
        "      <target dev='tap7'/>\n",
        "    <memballoon model='none'/>\n",
    ] {
        assert!(xml.contains(fragment), "missing\n{fragment}\nin\n{xml}");
    }
    assert_eq!(
        d.blk_rows()
            .iter()
            .map(|r| r.target.as_str())
            .collect::<Vec<_>>(),
        ["vda", "vdb"]
    );
    let rows = d.if_rows();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].source, "default");
    assert_eq!(rows[2].interface, "tap7");
}

#[test]
fn minimal_guest_runs() {
    let mut o = InstallOptions::new("tg", 64, 1, "/usr/lib/vireo/test-guest.elf".into());
    o.boot.kernel_args = Some("console=ttyS0 vtg.action=poweroff".into());
    o.networks.push(NetworkSpec::parse("none").unwrap());
    let d = o.to_domain().unwrap();
    let cfg = d.to_vm_config(ConsoleConfig::Stdio).unwrap();
    assert_eq!(cfg.memory, 64 << 20);
    assert_eq!(cfg.cpus, 1);
    assert_eq!(cfg.cmdline, "console=ttyS0 vtg.action=poweroff");
    assert!(!cfg.no_reboot);
}

#[test]
fn memory_vcpus_cpu() {
    let mut o = options(&[], &[], "kernel=/k");
    o.memory = MemorySpec::parse("memory=2048,currentMemory=1024").unwrap();
    o.vcpus = VcpuSpec::parse("2,maxvcpus=4").unwrap();
    o.cpu = Some("Nehalem".into());
    let d = o.to_domain().unwrap();
    assert_eq!((d.memory_kib, d.current_memory_kib), (2 << 20, 1 << 20));
    assert_eq!((d.vcpu.max, d.vcpu.current), (4, 2));
    assert_eq!(d.cpu.as_ref().unwrap().mode, CpuMode::Custom);
    assert!(d
        .to_xml()
        .contains("  <cpu mode='custom'>\n    <model>Nehalem</model>\n  </cpu>\n"));
}

#[test]
fn disk_specs() {
    let d = DiskSpec::parse("size=8").unwrap();
    assert!(d.needs_volume());
    assert_eq!(d.size_bytes, Some(8 << 30));
    assert_eq!(d.format_or_default(), DiskFormat::Qcow2);
    let d = DiskSpec::parse("/nonexistent/x.img,size=1.5").unwrap();
    assert!(d.needs_volume());
    assert_eq!(d.size_bytes, Some(3 << 29));
    assert_eq!(d.format_or_default(), DiskFormat::Raw);
    let d = DiskSpec::parse("path=/dev/null,format=qcow2").unwrap();
    assert!(!d.needs_volume());
    assert_eq!(d.format_or_default(), DiskFormat::Qcow2);
    let d = DiskSpec::parse("vol=default/base.qcow2").unwrap();
    assert_eq!(d.vol.as_deref(), Some("default/base.qcow2"));
    assert!(!d.needs_volume());
    // A spec without a path cannot be written until the CLI made the volume.
    let mut o = options(&[], &[], "kernel=/k");
    o.disks
        .push(DiskSpec::parse("size=8,pool=default").unwrap());
    assert_eq!(
        o.to_domain().unwrap_err().to_string(),
        "--disk: disk 1 has no path yet (create its volume first)"
    );
}

#[test]
fn bad_options_are_named() {
    let cases: Vec<(Result<(), DomainError>, &str)> = vec![
        (DiskSpec::parse("path=/x,bus=sata").map(drop), "--disk: bus='sata' is not supported: vireo's disks are virtio"),
        (DiskSpec::parse("path=/x,format=vmdk").map(drop), "--disk: format='vmdk' is not supported (use qcow2 or raw)"),
        (DiskSpec::parse("x.img").map(drop), "--disk: path='x.img' must be an absolute path"),
        (DiskSpec::parse("path=/x,size=ten").map(drop), "--disk: size='ten' is not a size in GiB (e.g. size=10 or size=0.5)"),
        (DiskSpec::parse("path=/x,device=cdrom").map(drop), "--disk: device='cdrom' is not supported: vireo's disks are virtio block devices"),
        (DiskSpec::parse("path=/x,speed=9").map(drop), "--disk: unknown option 'speed' (use path, size, format, bus, readonly, serial, pool, vol, cache, discard, io)"),
        (DiskSpec::parse("format=raw").map(drop), "--disk: give a path, vol=POOL/VOLUME, or size=GiB for a new volume"),
        (NetworkSpec::parse("network=default,model=e1000").map(drop), "--network: model='e1000' is not supported: vireo's network devices are virtio"),
        (NetworkSpec::parse("type=user").map(drop), "--network: type='user' is not supported (use network, bridge or ethernet)"),
        (NetworkSpec::parse("mac=52:54:00:aa:bb:cc").map(drop), "--network: give network=NAME, bridge=BRIDGE, type=ethernet or none"),
        (NetworkSpec::parse("network=default,mac=zz").map(drop), "--network: invalid MAC address 'zz': expected six hex octets such as 52:54:00:12:34:56"),
        (BootSpec::parse("uefi").map(drop), "--boot: uefi: vireo runs no firmware; boot a kernel directly (kernel=…,initrd=…)"),
        (BootSpec::parse("kernel=vmlinuz").map(drop), "--boot: kernel='vmlinuz' must be an absolute path"),
        (BootSpec::parse("kernel=/k,kernel_args=\"x").map(drop), "--boot: unterminated \" quote in 'kernel=/k,kernel_args=\"x'"),
        (MemorySpec::parse("2G").map(drop), "--memory: memory '2G' is not a whole number of MiB"),
        (VcpuSpec::parse("sockets=2").map(drop), "--vcpus: unknown option 'sockets' (use N, vcpus=N, maxvcpus=M)"),
    ];
    for (r, msg) in cases {
        assert_eq!(r.unwrap_err().to_string(), msg);
    }
    let mut o = options(&[], &[], "kernel=/k");
    o.boot = BootSpec::default();
    assert_eq!(
        o.to_domain().unwrap_err().to_string(),
        "--boot: vireo boots kernels directly: give --boot kernel=PATH[,initrd=PATH,kernel_args=…]"
    );
    o.boot = BootSpec::parse("kernel=/k").unwrap();
    o.name = "a/b".into();
    assert!(o
        .to_domain()
        .unwrap_err()
        .to_string()
        .starts_with("--name: 'a/b' is not a usable name"));
    o.name = "ok".into();
    o.vcpus = VcpuSpec::parse("4,maxvcpus=2").unwrap();
    assert_eq!(
        o.to_domain().unwrap_err().to_string(),
        "--vcpus: 4 is more than maxvcpus=2"
    );
    o.vcpus = VcpuSpec::parse("256").unwrap();
    assert_eq!(
        o.to_domain().unwrap_err().to_string(),
        "--vcpus: 256 is above vireo's limit of 255"
    );
    o.vcpus = VcpuSpec::parse("1").unwrap();
    o.memory = MemorySpec::parse("memory=512,currentMemory=1024").unwrap();
    assert_eq!(
        o.to_domain().unwrap_err().to_string(),
        "--memory: currentMemory=1024 is more than memory=512"
    );
    o.memory = MemorySpec::parse("512").unwrap();
    o.networks = vec![NetworkSpec::None, NetworkSpec::parse("default").unwrap()];
    assert_eq!(
        o.to_domain().unwrap_err().to_string(),
        "--network: 'none' cannot be combined with other networks"
    );
}
