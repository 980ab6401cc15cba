//! vireod inside L1 runs a real Linux guest defined from libvirt domain XML; `vireo
//! shutdown` presses the ACPI power button and the guest powers itself off.

use vireo_nested::{available, Scenario};

/// The guest waits for the power button's input event (ACPI button driver + evdev), then
/// powers off: what a distribution's logind or acpid does.
const GUEST: &str = r#"
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
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"#;

#[test]
fn daemon_runs_a_linux_domain_and_shutdown_uses_acpi() {
    let name = "daemon_runs_a_linux_domain_and_shutdown_uses_acpi";
    if !available(name) {
        return;
    }
    let uri = "vireo:///system?root=/vroot";
    let prelude = format!(
        "mkdir -p /vroot\n\
         vireod --root /vroot >/dev/ttyS2 2>&1 &\n\
         n=0; until vireo -c '{uri}' version >/dev/null 2>&1; do n=$((n+1)); [ $n -gt 300 ] && break; sleep 0.1; done\n\
         cat > /tmp/domain.xml <<'XML'\n{DOMAIN}XML\n\
         vireo -c '{uri}' define /tmp/domain.xml\n\
         vireo -c '{uri}' start nested-guest\n"
    );
    let script = format!(
        "log=$(find /vroot -name 'nested-guest.console.log')\n\
         n=0; until grep -q READY \"$log\" 2>/dev/null; do n=$((n+1)); [ $n -gt 1200 ] && break; sleep 0.1; done\n\
         echo \"STATE-BEFORE $(vireo -c '{uri}' domstate nested-guest)\"\n\
         vireo -c '{uri}' shutdown nested-guest\n\
         n=0; until vireo -c '{uri}' domstate nested-guest | grep -q 'shut off'; do n=$((n+1)); [ $n -gt 1200 ] && break; sleep 0.1; done\n\
         echo \"STATE-AFTER $(vireo -c '{uri}' domstate --reason nested-guest)\"\n\
         cat \"$log\" > /dev/ttyS1\n\
         echo VIREO-EXIT 0\n"
    );
    let o = Scenario::new(name)
        .l1_daemon()
        .init_script(GUEST)
        .l1_prelude(&prelude)
        .l1_script(&script)
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    let l1 = o.l1_lines();
    assert!(l1.contains(&"STATE-BEFORE running"), "{}", o.describe());
    assert!(
        l1.contains(&"STATE-AFTER shut off (shutdown)"),
        "{}",
        o.describe()
    );
    assert_eq!(o.count("VIREO-L2-INIT"), 1, "{}", o.describe());
    assert!(
        o.l2_lines()
            .iter()
            .any(|l| l.starts_with("READY /dev/input/event")),
        "{}",
        o.describe()
    );
    assert_eq!(o.count("POWER-BUTTON-PRESSED"), 1, "{}", o.describe());
}
