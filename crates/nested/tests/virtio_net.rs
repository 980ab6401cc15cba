//! virtio-net seen by a real Linux guest (Debian's stock kernel and its virtio_net driver,
//! which negotiates mergeable buffers, event idx and the checksum/TSO offloads), on a TAP
//! in L1 with L1's address 10.0.2.1. Every assertion is about what the guest printed.

use std::time::Duration;

use vireo_nested::{available, Kernel, Scenario};

const SCRIPT: &str = "\
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo MAC; cat /sys/class/net/eth0/address
echo DRIVER; basename $(readlink /sys/class/net/eth0/device/driver)
echo FEATURES; cat /sys/class/net/eth0/device/features
n=0; until ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1; do n=$((n+1)); [ $n -gt 60 ] && break; done
echo PINGS; ping -c 3 -s 3000 10.0.2.1 | grep -c 'bytes from'
echo IPERF-TX; iperf3 -c 10.0.2.1 -n 8M 2>&1 | grep -c sender
echo IPERF-RX; iperf3 -c 10.0.2.1 -n 8M -R 2>&1 | grep -c receiver
poweroff -f
";

#[test]
fn linux_virtio_net_pings_and_streams_over_a_tap() {
    let name = "linux_virtio_net_pings_and_streams_over_a_tap";
    if !available(name) {
        return;
    }
    let o = Scenario::new(name)
        .l2_kernel(Kernel::DebianStock)
        .l2_cmdline("console=ttyS0 panic=-1 quiet")
        .l1_modules(&["tun"])
        .l1_tools(&["ip", "iperf3"])
        .l2_tools(&["iperf3"])
        .l1_prelude(
            "/opt/tools/bin/ip tuntap add dev vtap0 mode tap\n\
             /opt/tools/bin/ip addr add 10.0.2.1/24 dev vtap0\n\
             /opt/tools/bin/ip link set vtap0 up\n\
             iperf3 -s -D\n",
        )
        .init_script(SCRIPT)
        .vireo_args(&[
            "--memory",
            "256M",
            "--net",
            "tap=vtap0,mac=52:54:00:12:34:56",
        ])
        .timeout(Duration::from_secs(900))
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    assert_eq!(
        o.after("MAC"),
        Some("52:54:00:12:34:56"),
        "{}",
        o.describe()
    );
    assert_eq!(o.after("DRIVER"), Some("virtio_net"), "{}", o.describe());
    // The driver's accepted features (bit 0 first): CSUM, GUEST_CSUM, MAC, MRG_RXBUF,
    // STATUS, VERSION_1.
    let f = o.after("FEATURES").unwrap_or_default();
    for bit in [0usize, 1, 5, 15, 16, 32] {
        assert_eq!(
            f.as_bytes().get(bit),
            Some(&b'1'),
            "bit {bit}: {f}\n{}",
            o.describe()
        );
    }
    assert_eq!(o.after("PINGS"), Some("3"), "{}", o.describe());
    assert_eq!(o.after("IPERF-TX"), Some("1"), "{}", o.describe());
    assert_eq!(o.after("IPERF-RX"), Some("1"), "{}", o.describe());
}
