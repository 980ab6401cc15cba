//! virtio-console, virtio-vsock and virtio-balloon with a real Linux guest's drivers
//! (Debian's stock kernel: virtio_console, vmw_vsock_virtio_transport, virtio_balloon),
//! nested in QEMU TCG with emulated AMD-V. One boot exercises all three: hvc0 output, vsock
//! connections both ways with socat on each side (the host side through vireo's unix
//! sockets), and the balloon inflated through the control API until the guest's MemTotal
//! drops.

use vireo_nested::{available, Kernel, Scenario};

/// L2: write to hvc0, listen on vsock port 5000 (one connection, answered "echo: LINE"),
/// connect to host port 1234, then wait for the balloon to take memory.
const GUEST: &str = r#"
echo via-hvc0-hello > /dev/hvc0
mem() { awk '/MemTotal/ {print $2}' /proc/meminfo; }
before=$(mem)
echo "MEMTOTAL-BEFORE $before"
socat VSOCK-LISTEN:5000 SYSTEM:'read l; echo "echo: $l"' &
listener=$!
r=""
for i in $(seq 1 100); do
  r=$(echo "ping from linux" | socat -t 5 - VSOCK-CONNECT:2:1234 2>/dev/null) && [ -n "$r" ] && break
  sleep 0.2
done
echo "VSOCK-G2H $r"
n=0; while kill -0 $listener 2>/dev/null && [ $n -lt 600 ]; do n=$((n+1)); sleep 0.2; done
echo "VSOCK-LISTENER-DONE $n"
# The whole 256 MiB (262144 kB) in the balloon; then time for the host to see it too.
n=0; while [ "$(mem)" -gt $((before - 262144)) ] && [ $n -lt 900 ]; do n=$((n+1)); sleep 0.2; done
echo "MEMTOTAL-AFTER $(mem)"
sleep 5
poweroff -f
"#;

/// L1 (the host), while vireo runs: the guest → host listener, the host → guest client
/// (retried until the guest listens), then balloon-set and query-balloon.
const HOST: &str = r#"
socat UNIX-LISTEN:/tmp/v.sock_1234 SYSTEM:'read l; echo "pong: $l"' &
out=""
n=0
until echo "$out" | grep -q 'echo: hello from L1'; do
  n=$((n+1)); [ $n -gt 300 ] && break
  out=$(printf 'CONNECT 5000\nhello from L1\n' | socat -t 5 - UNIX-CONNECT:/tmp/v.sock 2>/dev/null)
  sleep 0.5
done
echo "L1-H2G $(echo "$out" | tr '\n' ' ')"
api() { echo "$1" | socat -t 5 - UNIX-CONNECT:/tmp/api.sock; }
api '{"execute":"balloon-set","arguments":{"target-bytes":268435456}}'
n=0
until api '{"execute":"query-balloon"}' | grep -q '"balloon-bytes":268435456'; do
  n=$((n+1)); [ $n -gt 600 ] || ! kill -0 $VIREO_PID 2>/dev/null && break; sleep 0.5
done
echo "L1-BALLOON $(api '{"execute":"query-balloon"}')"
"#;

fn value_after<'a>(lines: &[&'a str], prefix: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(prefix))
}

#[test]
fn console_vsock_and_balloon_with_linux_drivers() {
    let name = "console_vsock_and_balloon_with_linux_drivers";
    if !available(name) {
        return;
    }
    let o = Scenario::new(name)
        .l2_kernel(Kernel::DebianStock)
        .l2_cmdline("console=ttyS0 panic=-1 quiet")
        .init_script(GUEST)
        .l2_tools(&["socat"])
        .l1_tools(&["socat"])
        .vireo_args(&[
            "--memory",
            "512M",
            "--console",
            "virtio",
            "--vsock",
            "cid=5,socket=/tmp/v.sock",
            "--balloon",
            "--api-socket",
            "/tmp/api.sock",
        ])
        .l1_script(HOST)
        .timeout(std::time::Duration::from_secs(1200))
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    let l2 = o.l2_lines();
    let l1 = o.l1_lines();
    // Written only to /dev/hvc0: it reached vireo's console output through virtio-console.
    assert!(l2.contains(&"via-hvc0-hello"), "{}", o.describe());
    // Guest → host: Linux connected to CID 2 port 1234, i.e. the unix socket /tmp/v.sock_1234.
    assert_eq!(
        value_after(&l2, "VSOCK-G2H "),
        Some("pong: ping from linux"),
        "{}",
        o.describe()
    );
    // Host → guest: CONNECT 5000 got OK <port>, then the guest's listener answered.
    let h2g = value_after(&l1, "L1-H2G ").unwrap_or_default();
    assert!(
        h2g.starts_with("OK ") && h2g.contains("echo: hello from L1"),
        "{}",
        o.describe()
    );
    // The balloon took 256 MiB: the driver reports it (and its statistics), and the guest's
    // MemTotal dropped by as much.
    let balloon = value_after(&l1, "L1-BALLOON ").unwrap_or_default();
    assert!(
        balloon.contains("\"balloon-bytes\":268435456")
            && balloon.contains("\"actual-bytes\":268435456")
            && balloon.contains("\"available-memory\""),
        "{}",
        o.describe()
    );
    let kib = |p: &str| -> u64 {
        value_after(&l2, p)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {p}line\n{}", o.describe()))
    };
    let (before, after) = (kib("MEMTOTAL-BEFORE "), kib("MEMTOTAL-AFTER "));
    assert!(
        after + 256 * 1024 <= before,
        "MemTotal {before} kB → {after} kB\n{}",
        o.describe()
    );
}
