//! Bad definitions: each gives one clear, one-line error naming what is wrong.

use vireo_domain::{Domain, DomainError, MAX_XML_BYTES};

const BASE: &str = "\
<domain type='kvm'>
  <name>t</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <title>T</title>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/boot/vmlinuz</kernel>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='host-passthrough'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/t.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:00:00:01'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <vsock model='virtio'><cid auto='yes'/></vsock>
  </devices>
</domain>
";

/// BASE with `find` replaced by `replace` (which must occur).
fn with(find: &str, replace: &str) -> String {
    assert!(BASE.contains(find), "'{find}' is not in BASE");
    BASE.replacen(find, replace, 1)
}

fn err(xml: &str) -> String {
    let e = Domain::from_xml(xml).expect_err("should be refused");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    msg
}

#[test]
fn base_is_valid() {
    let p = Domain::from_xml(BASE).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn malformed_xml() {
    assert_eq!(
        err(&with("</devices>", "")),
        "malformed XML: expected 'devices' tag, not 'domain' at 32:1"
    );
    assert_eq!(err(" \n"), "malformed XML: the document is empty");
    assert_eq!(
        err("<domain type='kvm'><name>t</name>"),
        "malformed XML: the root node was opened but never closed"
    );
    assert_eq!(
        err(&with(
            "<memory unit='MiB'>",
            "<memory unit='MiB' unit='GiB'>"
        )),
        "malformed XML: attribute 'unit' at 5:22 is already defined"
    );
    // No DTDs, so no entity expansion tricks.
    let dtd = format!("<!DOCTYPE domain [<!ENTITY a 'aaaa'>]>\n{BASE}");
    assert!(err(&dtd).starts_with("malformed XML: "), "{}", err(&dtd));
    assert!(matches!(
        Domain::from_xml(&"x".repeat(MAX_XML_BYTES + 1)),
        Err(DomainError::TooLarge { .. })
    ));
    assert_eq!(
        err(&with("<domain type='kvm'>", "<domain type='kvm' xmlns='urn:x'>")),
        "/domain: the element is in namespace 'urn:x'; libvirt's <domain> has none (remove xmlns=…)"
    );
    assert_eq!(
        err(&with("<title>T</title>", "<title>a\u{1}</title>")),
        "malformed XML: a non-XML character '\\u{1}' found at 4:11"
    );
    assert_eq!(
        err(&with("<vcpu>2</vcpu>", "<vcpu>2\n3</vcpu>")),
        "/domain/vcpu: invalid vCPU count: '2\\n3' is not a non-negative integer"
    );
    assert_eq!(
        err("<pool type='dir'><name>p</name></pool>"),
        "the root element is <pool>, expected <domain>"
    );
}

#[test]
fn domain_type_and_identity() {
    let cases = [
        (
            with("<domain type='kvm'>", "<domain type='qemu'>"),
            "/domain[@type='qemu'] is not supported: vireo runs KVM guests (use type='kvm')",
        ),
        (
            with("<domain type='kvm'>", "<domain>"),
            "/domain/@type is missing: use type='kvm'",
        ),
        (with("  <name>t</name>\n", ""), "/domain/name is missing"),
        (with("<name>t</name>", "<name>a/b</name>"), "/domain/name: 'a/b' contains '/'"),
        (with("<name>t</name>", "<name> </name>"), "/domain/name: the name is empty"),
        (
            with("<name>t</name>", "<name>t</name><name>u</name>"),
            "duplicate element /domain/name (it may appear only once)",
        ),
        (
            with("4dea22b3-1d52-d8f3-2516-782e98ab3fa0", "4dea22b3-1d52-d8f3-2516"),
            "/domain/uuid: invalid UUID '4dea22b3-1d52-d8f3-2516': expected 32 hex digits such as 4dea22b3-1d52-d8f3-2516-782e98ab3fa0",
        ),
        (
            with("4dea22b3-1d52-d8f3-2516-782e98ab3fa0", "00000000-0000-0000-0000-000000000000"),
            "/domain/uuid: invalid UUID '00000000-0000-0000-0000-000000000000': all digits are the same",
        ),
        (
            with("<title>T</title>", "<title>two\nlines</title>"),
            "/domain/title: the title must be a single line",
        ),
        (with("<title>T</title>", "<titel>T</titel>"), "unknown element /domain/titel"),
        (
            with("<title>T</title>", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'/>"),
            "/domain/qemu:commandline is not supported: elements of namespace 'http://libvirt.org/schemas/domain/qemu/1.0' are hypervisor-specific extensions vireo cannot honour",
        ),
    ];
    for (xml, msg) in cases {
        assert_eq!(err(&xml), msg);
    }
}

#[test]
fn memory_and_units() {
    let cases = [
        (
            with("<memory unit='MiB'>512", "<memory unit='GiBs'>512"),
            "/domain/memory: invalid memory size: unknown unit 'GiBs' (use b, KB, KiB (k), MB, MiB (M), GB, GiB (G), TB, TiB (T), PB, PiB (P), EB, EiB (E))",
        ),
        (
            with("<memory unit='MiB'>512", "<memory unit='MiB'>-1"),
            "/domain/memory: invalid memory size: '-1' is negative",
        ),
        (
            with("<memory unit='MiB'>512", "<memory unit='EiB'>16"),
            "/domain/memory: invalid memory size: 16 EiB does not fit in 64 bits of bytes",
        ),
        (
            with("<memory unit='MiB'>512", "<memory unit='MiB'>99999999999999999999"),
            "/domain/memory: invalid memory size: '99999999999999999999' is too large",
        ),
        (
            with("<memory unit='MiB'>512", "<memory unit='MiB'>1.5"),
            "/domain/memory: invalid memory size: '1.5' is not a non-negative integer",
        ),
        (
            with("<memory unit='MiB'>512", "<memory unit='MiB'>0"),
            "/domain/memory: the memory size must be greater than 0",
        ),
        (
            with("<memory unit='MiB'>512", "<memory unti='MiB'>512"),
            "unknown attribute 'unti' on /domain/memory",
        ),
        (
            with("<currentMemory unit='MiB'>512", "<currentMemory unit='GiB'>2"),
            "/domain/currentMemory: 2 GiB is more than <memory> (512 MiB)",
        ),
        (
            with("<currentMemory unit='MiB'>512</currentMemory>", "<memory>1</memory>"),
            "duplicate element /domain/memory (it may appear only once)",
        ),
        (
            with("  <memory unit='MiB'>512</memory>\n", ""),
            "/domain/memory is missing: give the guest's RAM, e.g. <memory unit='MiB'>512</memory>",
        ),
    ];
    for (xml, msg) in cases {
        assert_eq!(err(&xml), msg);
    }
}

#[test]
fn vcpus_cpu_clock_lifecycle() {
    let cases = [
        (with("<vcpu>2</vcpu>", "<vcpu>0</vcpu>"), "/domain/vcpu: the vCPU count must be at least 1"),
        (
            with("<vcpu>2</vcpu>", "<vcpu>300</vcpu>"),
            "/domain/vcpu: 300 vCPUs is above vireo's limit of 255 (8-bit xAPIC IDs)",
        ),
        (
            with("<vcpu>2</vcpu>", "<vcpu>two</vcpu>"),
            "/domain/vcpu: invalid vCPU count: 'two' is not a non-negative integer",
        ),
        (
            with("<vcpu>2</vcpu>", "<vcpu current='4'>2</vcpu>"),
            "/domain/vcpu/@current: 4 is more than the maximum of 2",
        ),
        (
            with("<vcpu>2</vcpu>", "<vcpu current='0'>2</vcpu>"),
            "/domain/vcpu/@current: the vCPU count must be at least 1",
        ),
        (
            with("<cpu mode='host-passthrough'/>", "<cpu mode='host-passthrough'><topology sockets='1' cores='4' threads='1'/></cpu>"),
            "/domain/cpu/topology: sockets × dies × clusters × cores × threads must equal the 2 vCPUs of <vcpu>",
        ),
        (
            with("<cpu mode='host-passthrough'/>", "<cpu mode='host-passthrough'><topology sockets='2' cores='1' threads='1'/></cpu>"),
            "/domain/cpu/topology is not supported: vireo gives the guest one socket of single-threaded cores (sockets='1' cores='2' threads='1')",
        ),
        (
            with("<cpu mode='host-passthrough'/>", "<cpu mode='host-passthrough'><numa><cell id='0' cpus='0-1' memory='512' unit='MiB'/></numa></cpu>"),
            "/domain/cpu/numa is not supported: vireo gives the guest no NUMA topology",
        ),
        (
            with("<cpu mode='host-passthrough'/>", "<cpu mode='custom'><model>Skylake</model><feature policy='require' name='avx2'/></cpu>"),
            "/domain/cpu/feature is not supported: vireo's CPU templates cannot require or disable single CPU features",
        ),
        (
            with("<cpu mode='host-passthrough'/>", "<cpu mode='fast'/>"),
            "/domain/cpu: unknown CPU mode 'fast' (use host-passthrough, host-model, maximum or custom)",
        ),
        (
            with("<clock offset='utc'/>", "<clock offset='variable' adjustment='3600'/>"),
            "/domain/clock[@offset='variable'] is not supported: vireo's real-time clock runs in UTC or local time (offset='utc' or 'localtime')",
        ),
        (
            with("<clock offset='utc'/>", "<clock offset='utc'><timer name='warp'/></clock>"),
            "/domain/clock/timer: unknown timer 'warp' (known: platform, pit, rtc, hpet, tsc, kvmclock, hypervclock)",
        ),
        (
            with("<on_poweroff>destroy</on_poweroff>", "<on_poweroff>coredump-destroy</on_poweroff>"),
            "/domain/on_poweroff: 'coredump-destroy' is only allowed for on_crash",
        ),
        (
            with("<on_reboot>restart</on_reboot>", "<on_reboot>explode</on_reboot>"),
            "/domain/on_reboot: unknown action 'explode' (use destroy, restart, preserve, rename-restart, coredump-destroy or coredump-restart)",
        ),
    ];
    for (xml, msg) in cases {
        assert_eq!(err(&xml), msg);
    }
}

#[test]
fn os_and_firmware() {
    let cases = [
        (
            with("<type arch='x86_64' machine='q35'>", "<type arch='aarch64' machine='virt'>"),
            "/domain/os/type[@arch='aarch64'] is not supported: vireo runs x86_64 guests only",
        ),
        (
            with(">hvm</type>", ">exe</type>"),
            "/domain/os/type[.='exe'] is not supported: vireo runs full virtualization guests (<type>hvm</type>)",
        ),
        (
            with("<os>", "<os firmware='efi'>"),
            "/domain/os[@firmware='efi'] is not supported: vireo runs no BIOS or UEFI firmware; it boots the kernel directly",
        ),
        (
            with("<kernel>", "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader><kernel>"),
            "/domain/os/loader is not supported: vireo boots the kernel directly and runs no BIOS or UEFI firmware",
        ),
        (
            with("<kernel>", "<nvram>/var/lib/libvirt/qemu/nvram/t_VARS.fd</nvram><kernel>"),
            "/domain/os/nvram is not supported: vireo runs no UEFI firmware, so it has no variable store",
        ),
        (
            with("<kernel>/boot/vmlinuz</kernel>", "<kernel>vmlinuz</kernel>"),
            "/domain/os/kernel: 'vmlinuz' is not an absolute path",
        ),
        (
            with("<kernel>/boot/vmlinuz</kernel>", "<boot dev='usb'/>"),
            "/domain/os/boot: unknown boot device 'usb' (use hd, cdrom, network or fd)",
        ),
        (
            with("    <type arch='x86_64' machine='q35'>hvm</type>\n", ""),
            "/domain/os/type is missing: use <type arch='x86_64'>hvm</type>",
        ),
        (
            with("<features><acpi/>", "<features><acpi/><gic version='3'/>"),
            "/domain/features/gic is not supported: an ARM interrupt controller cannot be given to an x86_64 guest",
        ),
        (
            with("<features><acpi/>", "<features><acpi/><acpi/>"),
            "duplicate element /domain/features/acpi (it may appear only once)",
        ),
        (
            with("<title>T</title>", "<maxMemory slots='16' unit='KiB'>16777216</maxMemory>"),
            "/domain/maxMemory is not supported: memory hotplug slots need DIMM devices vireo does not provide",
        ),
    ];
    for (xml, msg) in cases {
        assert_eq!(err(&xml), msg);
    }
}

#[test]
fn devices() {
    let cases = [
        (
            with("<devices>", "<devices><hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>"),
            "/domain/devices/hostdev is not supported: host device passthrough is not available in vireo",
        ),
        (
            with("<devices>", "<devices><filesystem type='mount'><source dir='/srv'/><target dir='srv'/></filesystem>"),
            "/domain/devices/filesystem is not supported: vireo has no shared filesystem device (virtiofs/9p)",
        ),
        (
            with("<devices>", "<devices><tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"),
            "/domain/devices/tpm is not supported: vireo provides no TPM",
        ),
        (with("<devices>", "<devices><floppy/>"), "unknown element /domain/devices/floppy"),
        (with("<devices>", "<devices>junk"), "/domain/devices: unexpected text 'junk'"),
        (
            with("<target dev='vda' bus='virtio'/>", "<target dev='sda' bus='sata'/>"),
            "/domain/devices/disk/target[@bus='sata'] is not supported: vireo's disks are virtio (bus='virtio', dev='vda', 'vdb', …)",
        ),
        (
            with("<target dev='vda' bus='virtio'/>", "<target dev='hda'/>"),
            "/domain/devices/disk/target[@dev='hda'] is not supported: vireo's disks are virtio (bus='virtio', dev='vda', 'vdb', …)",
        ),
        (
            with("<target dev='vda' bus='virtio'/>", "<target dev='vd1' bus='virtio'/>"),
            "/domain/devices/disk/target: dev='vd1' is not a virtio disk name (vda, vdb, …, vdaa)",
        ),
        (
            with("device='disk'>", "device='cdrom'>"),
            "/domain/devices/disk[@device='cdrom'] is not supported: vireo's disks are virtio block devices; CD-ROM and floppy drives need buses vireo does not have",
        ),
        (
            with("<disk type='file'", "<disk type='network'"),
            "/domain/devices/disk[@type='network'] is not supported: vireo opens local image files and block devices (type='file' or 'block')",
        ),
        (
            with("type='qcow2'/>", "type='vmdk'/>"),
            "/domain/devices/disk/driver[@type='vmdk'] is not supported: vireo runs raw and qcow2 images (convert others with 'vireo img convert')",
        ),
        (
            with("<source file='/img/t.qcow2'/>", ""),
            "/domain/devices/disk/source is missing: a disk needs an image (empty drives are CD-ROMs, which vireo does not have)",
        ),
        (
            with("<source file='/img/t.qcow2'/>", "<source dev='/dev/sdb'/>"),
            "/domain/devices/disk/source: a type='file' disk takes file=, not dev=",
        ),
        (
            with("<source file='/img/t.qcow2'/>", "<source file='t.qcow2'/>"),
            "/domain/devices/disk/source/@file: 't.qcow2' is not an absolute path",
        ),
        (
            with("</disk>", "<encryption format='luks'/></disk>"),
            "/domain/devices/disk/encryption is not supported: vireo cannot open encrypted images",
        ),
        (
            with("</disk>", "</disk><disk type='file' device='disk'><source file='/img/b.raw'/><target dev='vda' bus='virtio'/></disk>"),
            "/domain/devices/disk/target: dev='vda' is used by two disks",
        ),
        (
            with("<driver name='qemu' type='qcow2'/>", "<driver name='qemu' type='qcow2' turbo='yes'/>"),
            "unknown attribute 'turbo' on /domain/devices/disk/driver",
        ),
        (
            with("<model type='virtio'/>", "<model type='e1000'/>"),
            "/domain/devices/interface/model[@type='e1000'] is not supported: vireo's network devices are virtio (model type='virtio')",
        ),
        (
            with("<interface type='network'>", "<interface type='user'>"),
            "/domain/devices/interface[@type='user'] is not supported: user-mode networking is not available in vireo (use network, bridge or ethernet)",
        ),
        (
            with("<interface type='network'>", "<interface type='direct'>"),
            "/domain/devices/interface[@type='direct'] is not supported: vireo's interfaces are type network, bridge or ethernet",
        ),
        (
            with("52:54:00:00:00:01", "52:54:00:00:01"),
            "/domain/devices/interface/mac: invalid MAC address '52:54:00:00:01': expected six hex octets such as 52:54:00:12:34:56",
        ),
        (
            with("<source network='default'/>", ""),
            "/domain/devices/interface/source is missing: a type='network' interface needs <source network=…/>",
        ),
        (
            with("<source network='default'/>", "<source bridge='br0'/>"),
            "/domain/devices/interface/source/@network is missing: a type='network' interface needs <source network=…/>",
        ),
        (
            with("<serial type='pty'>", "<serial type='file'>"),
            "/domain/devices/serial[@type='file'] is not supported: vireo connects the guest's serial console to its own console socket (use type='pty')",
        ),
        (
            with("<target port='0'/>", "<target port='1'/>"),
            "/domain/devices/serial/target[@port='1'] is not supported: vireo has one serial port (port 0, COM1)",
        ),
        (
            with("</serial>", "</serial><serial type='pty'/>"),
            "/domain/devices/serial[2] is not supported: vireo has one serial port (COM1)",
        ),
        (
            with("<serial type='pty'><target port='0'/></serial>", "<console type='pty'><target type='sclp' port='0'/></console>"),
            "/domain/devices/console/target[@type='sclp'] is not supported: vireo's console is the serial port (target type='serial') or a virtio-console (target type='virtio')",
        ),
        (
            with("<backend model='random'>/dev/urandom</backend>", "<backend model='egd' type='tcp'/>"),
            "unknown attribute 'type' on /domain/devices/rng/backend",
        ),
        (
            with("<backend model='random'>/dev/urandom</backend>", "<backend model='egd'/>"),
            "/domain/devices/rng/backend[@model='egd'] is not supported: vireo feeds the guest from a host random device (model='random' or 'builtin')",
        ),
        (
            with("/dev/urandom", "/etc/passwd"),
            "/domain/devices/rng/backend: '/etc/passwd' is not a host random device (use /dev/urandom, /dev/random or /dev/hwrng)",
        ),
        (
            with("<cid auto='yes'/>", "<cid auto='no' address='2'/>"),
            "/domain/devices/vsock/cid: context ID 2 is reserved (use 3 or more, below 4294967295)",
        ),
        (
            with("<cid auto='yes'/>", "<cid auto='no'/>"),
            "/domain/devices/vsock/cid/@address is missing: auto='no' needs an address",
        ),
        (
            with("</devices>", "<memballoon model='xen'/></devices>"),
            "/domain/devices/memballoon[@model='xen'] is not supported: vireo's memory balloon is a modern virtio device (model='virtio' or 'none')",
        ),
        (
            with("<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><boot order='1'/>")
                .replace("<model type='virtio'/>", "<model type='virtio'/><boot order='1'/>"),
            "/domain/devices: boot order 1 is used by two devices",
        ),
        (
            with("<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><boot order='1'/>")
                .replace("<kernel>", "<boot dev='hd'/><kernel>"),
            "/domain/devices: per-device <boot order=…/> and <os><boot dev=…/> cannot be used together",
        ),
    ];
    for (xml, msg) in cases {
        assert_eq!(err(&xml), msg);
    }
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    let depth = 100_000;
    let xml = with(
        "<title>T</title>",
        &format!(
            "<metadata>{}{}</metadata>",
            "<x:a xmlns:x='urn:x'>".repeat(depth),
            "</x:a>".repeat(depth)
        ),
    );
    let msg = err(&xml);
    assert!(msg.contains("nested"), "{msg}");
}
