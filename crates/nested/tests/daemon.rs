//! vireod inside L1 runs a real Linux guest defined from libvirt domain XML, its root a
//! qcow2 volume of the `default` storage pool (a linked clone of a base volume); `vireo
//! shutdown` presses the ACPI power button and the guest, from its own root file system,
//! powers itself off.

use std::fs;

use vireo_nested::{
    available, busybox_rootfs, ext4_image, nested_dir, qcow2_from_raw, Scenario, SWITCH_ROOT_TO_VDA,
};

/// `/sbin/init` of the root volume: waits for the power button's input event (ACPI button
/// driver + evdev), then powers off — what a distribution's logind or acpid does.
const GUEST: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "ROOT-FS $(awk '$2 == "/" {print $1, $3}' /proc/mounts) $(cat /etc/volume-id)"
for e in /sys/class/input/event*; do
  [ "$(cat $e/device/name)" = "Power Button" ] && ev=/dev/input/${e##*/}
done
echo "READY ${ev:-no-power-button}"
dd if=$ev bs=24 count=1 of=/dev/null 2>/dev/null
echo POWER-BUTTON-PRESSED
poweroff -f
"#;

const DOMAIN: &str = r#"<domain type='kvm'>
  <name>nested-guest</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/l2/kernel</kernel>
    <initrd>/l2/initrd</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='ROOT_PATH'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"#;

/// The base volume: an ext4 root with busybox and [`GUEST`] as its init, as qcow2.
fn base_volume(name: &str) -> std::path::PathBuf {
    let dir = nested_dir().join("images").join(name);
    let applets = [
        "sh", "mount", "umount", "cat", "echo", "dd", "poweroff", "awk",
    ];
    let root = busybox_rootfs(&dir, GUEST, &applets).unwrap();
    fs::write(root.join("etc/volume-id"), "base-volume\n").unwrap();
    let (raw, qcow2) = (dir.join("base.raw"), dir.join("base.qcow2"));
    ext4_image(&root, &raw, 32).unwrap();
    qcow2_from_raw(&raw, &qcow2).unwrap();
    qcow2
}

#[test]
fn daemon_runs_a_linux_domain_and_shutdown_uses_acpi() {
    let name = "daemon_runs_a_linux_domain_and_shutdown_uses_acpi";
    if !available(name) {
        return;
    }
    let base = base_volume(name);
    let uri = "vireo:///system?root=/vroot";
    let v = format!("vireo -c '{uri}'");
    // The base image goes into the default pool's directory (found in its XML) and the
    // pool is refreshed; the domain's root is a linked clone of it, by its volume path.
    let prelude = format!(
        "mkdir -p /vroot\n\
         vireod --root /vroot >/dev/ttyS2 2>&1 &\n\
         n=0; until {v} version >/dev/null 2>&1; do n=$((n+1)); [ $n -gt 300 ] && break; sleep 0.1; done\n\
         pool=$({v} pool-dumpxml default | sed -n 's:.*<path>\\(.*\\)</path>.*:\\1:p')\n\
         echo \"POOL-PATH $pool\"\n\
         cp /in/base.qcow2 \"$pool/base.qcow2\"\n\
         {v} pool-refresh default\n\
         {v} vol-create-as default root.qcow2 64M --format qcow2 --backing-vol base.qcow2 --backing-vol-format qcow2\n\
         root=$({v} vol-path --pool default root.qcow2)\n\
         echo \"ROOT-VOL $root\"\n\
         echo \"VOLUMES $({v} vol-list default | awk 'NR > 2 && NF {{print $1}}' | tr '\\n' ' ')\"\n\
         cat > /tmp/domain.xml.in <<'XML'\n{DOMAIN}XML\n\
         sed \"s:ROOT_PATH:$root:\" /tmp/domain.xml.in > /tmp/domain.xml\n\
         {v} define /tmp/domain.xml\n\
         {v} start nested-guest\n"
    );
    let script = format!(
        "log=$(find /vroot -name 'nested-guest.console.log')\n\
         n=0; until grep -q READY \"$log\" 2>/dev/null; do n=$((n+1)); [ $n -gt 1200 ] && break; sleep 0.1; done\n\
         echo \"STATE-BEFORE $({v} domstate nested-guest)\"\n\
         {v} vol-delete --pool default base.qcow2 >/dev/null 2>&1; echo \"DELETE-IN-USE $?\"\n\
         {v} shutdown nested-guest\n\
         n=0; until {v} domstate nested-guest | grep -q 'shut off'; do n=$((n+1)); [ $n -gt 1200 ] && break; sleep 0.1; done\n\
         echo \"STATE-AFTER $({v} domstate --reason nested-guest)\"\n\
         echo \"CHECK $(qemu-img check \"$root\" 2>&1 | tr '\\n' ' ')\"\n\
         echo \"BACKING $(qemu-img info \"$root\" | grep '^backing file:')\"\n\
         cat \"$log\" > /dev/ttyS1\n\
         echo VIREO-EXIT 0\n"
    );
    let o = Scenario::new(name)
        .l1_daemon()
        .l1_tools(&["qemu-img"])
        .l1_file("/in/base.qcow2", &base)
        .init_script(SWITCH_ROOT_TO_VDA)
        .l1_prelude(&prelude)
        .l1_script(&script)
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    let d = o.describe();
    let l1 = o.l1_lines();
    let value = |p: &str| l1.iter().find_map(|l| l.strip_prefix(p)).unwrap_or("");
    let pool = value("POOL-PATH ");
    assert!(pool.starts_with("/vroot/"), "{d}");
    assert_eq!(value("ROOT-VOL "), format!("{pool}/root.qcow2"), "{d}");
    assert_eq!(value("VOLUMES "), "base.qcow2 root.qcow2", "{d}");
    assert!(l1.contains(&"STATE-BEFORE running"), "{d}");
    // The running domain's backing volume is protected.
    assert_eq!(value("DELETE-IN-USE "), "1", "{d}");
    assert!(l1.contains(&"STATE-AFTER shut off (shutdown)"), "{d}");
    assert!(value("CHECK ").contains("No errors were found"), "{d}");
    assert_eq!(
        value("BACKING "),
        format!("backing file: {pool}/base.qcow2"),
        "{d}"
    );
    // The guest ran from the volume: its root file system is the qcow2 on vda.
    assert!(
        o.l2_lines().contains(&"ROOT-FS /dev/vda ext4 base-volume"),
        "{d}"
    );
    assert_eq!(o.count("VIREO-L2-INIT"), 1, "{d}");
    assert!(
        o.l2_lines()
            .iter()
            .any(|l| l.starts_with("READY /dev/input/event")),
        "{d}"
    );
    assert_eq!(o.count("POWER-BUTTON-PRESSED"), 1, "{d}");
}
