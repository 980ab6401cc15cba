//! virtio-net seen by a real Linux guest (Debian's stock kernel and its virtio_net driver,
//! which negotiates mergeable buffers, event idx and the checksum/TSO offloads): vireo
//! creates a TAP (`tap=auto`), L1 moves it into a network namespace that plays the host's
//! side, and the guest pings the host and moves files of known checksum both ways over
//! HTTP. Every assertion is about what the guest or the host side printed.

use vireo_nested::{available, Scenario};

const GUEST: &str = r#"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo "MAC $(cat /sys/class/net/eth0/address)"
echo "DRIVER $(basename $(readlink /sys/class/net/eth0/device/driver))"
echo "FEATURES $(cat /sys/class/net/eth0/device/features)"
n=0; until ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1; do n=$((n+1)); [ $n -gt 90 ] && break; done
echo "PING $(ping -c 3 -s 3000 10.0.2.1 | grep 'packets transmitted')"
wget -q -O /tmp/blob http://10.0.2.1/blob
echo "GOT-SHA $(sha256sum /tmp/blob | cut -d' ' -f1)"
mkdir -p /tmp/www
head -c 3000000 /dev/urandom > /tmp/www/guest-blob
echo "GUEST-SHA $(sha256sum /tmp/www/guest-blob | cut -d' ' -f1)"
httpd -p 8080 -h /tmp/www
# The host fetches guest-blob, then publishes 'done'.
n=0; until wget -q -O /dev/null http://10.0.2.1/done 2>/dev/null; do n=$((n+1)); [ $n -gt 600 ] && break; sleep 0.1; done
echo "HOST-DONE $n"
poweroff -f
"#;

#[test]
fn guest_pings_the_host_and_moves_files_over_a_tap() {
    let name = "guest_pings_the_host_and_moves_files_over_a_tap";
    if !available(name) {
        return;
    }
    let prelude = "mkdir -p /run/netns\n\
         /opt/tools/bin/ip netns add peer\n\
         mkdir -p /srv\n\
         head -c 4194304 /dev/urandom > /srv/blob\n\
         echo \"BLOB-SHA $(sha256sum /srv/blob | cut -d' ' -f1)\"\n";
    // While vireo runs: the TAP it created moves into the namespace, which gets the host's
    // address and an HTTP server; then the host fetches the guest's file.
    // (busybox sh prefers its own applets: iproute2's `ip`, which knows netns, by path.)
    let script = "n=0; until /opt/tools/bin/ip link show vireo-tap0 >/dev/null 2>&1; do n=$((n+1)); [ $n -gt 1200 ] && break; sleep 0.1; done\n\
         /opt/tools/bin/ip link set vireo-tap0 netns peer\n\
         /opt/tools/bin/ip netns exec peer /opt/tools/bin/ip link set lo up\n\
         /opt/tools/bin/ip netns exec peer /opt/tools/bin/ip addr add 10.0.2.1/24 dev vireo-tap0\n\
         /opt/tools/bin/ip netns exec peer /opt/tools/bin/ip link set vireo-tap0 up\n\
         /opt/tools/bin/ip netns exec peer httpd -p 10.0.2.1:80 -h /srv\n\
         n=0; until /opt/tools/bin/ip netns exec peer wget -q -O /tmp/guest-blob http://10.0.2.15:8080/guest-blob 2>/dev/null; do n=$((n+1)); [ $n -gt 1200 ] && break; sleep 0.1; done\n\
         echo \"FETCHED-SHA $(sha256sum /tmp/guest-blob | cut -d' ' -f1)\"\n\
         touch /srv/done\n";
    let o = Scenario::new(name)
        .l1_modules(&["tun"])
        .l1_tools(&["ip"])
        .l1_prelude(prelude)
        .l1_script(script)
        .init_script(GUEST)
        .vireo_args(&["--memory", "256", "--net", "tap=auto,mac=52:54:00:12:34:56"])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    let d = o.describe();
    let l1 = o.l1_lines();
    let l2 = o.l2_lines();
    let value = |lines: &[&str], p: &str| -> Option<String> {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(p))
            .map(str::to_string)
    };
    assert_eq!(o.vireo_status, Some(0), "{d}");
    assert_eq!(
        value(&l2, "MAC ").as_deref(),
        Some("52:54:00:12:34:56"),
        "{d}"
    );
    assert_eq!(value(&l2, "DRIVER ").as_deref(), Some("virtio_net"), "{d}");
    // The driver's accepted features (bit 0 first): CSUM, GUEST_CSUM, MAC, MRG_RXBUF,
    // STATUS, VERSION_1.
    let f = value(&l2, "FEATURES ").unwrap_or_default();
    for bit in [0usize, 1, 5, 15, 16, 32] {
        assert_eq!(f.as_bytes().get(bit), Some(&b'1'), "bit {bit}: {f}\n{d}");
    }
    // 3000-byte pings: fragmented IP through the TAP both ways.
    let ping = value(&l2, "PING ").unwrap_or_default();
    assert!(
        ping.contains("3 packets transmitted, 3 packets received"),
        "{ping}\n{d}"
    );
    let host_sha = value(&l1, "BLOB-SHA ").expect("host blob");
    assert_eq!(host_sha.len(), 64, "{d}");
    assert_eq!(value(&l2, "GOT-SHA "), Some(host_sha), "host → guest\n{d}");
    let guest_sha = value(&l2, "GUEST-SHA ").expect("guest blob");
    assert_eq!(
        value(&l1, "FETCHED-SHA "),
        Some(guest_sha),
        "guest → host\n{d}"
    );
    assert!(l2.iter().any(|l| l.starts_with("HOST-DONE ")), "{d}");
}
