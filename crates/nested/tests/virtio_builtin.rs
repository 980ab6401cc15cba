//! The minimal kernel (crates/nested/kernel: virtio drivers built in, not modules) with
//! virtio-console, virtio-rng, virtio-vsock and virtio-balloon in one boot. Built in, hvc0
//! exists before init runs, so it is the guest's only console here (`console=hvc0`): every
//! line asserted on came through virtio-console. (virtio_misc.rs covers the same devices
//! with the stock kernel's modules.)

use vireo_nested::{available, Kernel, Scenario};

const GUEST: &str = r#"
echo "CONSOLE $(cat /sys/class/tty/console/active)"
echo "RNG-CURRENT $(cat /sys/class/misc/hw_random/rng_current)"
echo "RNG-A $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
echo "RNG-B $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
# An echo server on vsock port 1234 for the host.
socat VSOCK-LISTEN:1234 EXEC:cat &
echoer=$!
avail0=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
echo "AVAIL-BEFORE $avail0"
# Guest → host: tells the host it is ready (host port 5000).
echo "guest-ready" | socat -t 5 - VSOCK-CONNECT:2:5000
# The host now inflates the balloon by 192 MiB.
n=0
while [ $n -lt 900 ]; do
  a=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
  [ "$a" -lt $((avail0 - 131072)) ] && break
  n=$((n+1)); sleep 0.1
done
echo "AVAIL-AFTER $a"
wait $echoer
echo "ECHOER-DONE"
poweroff -f
"#;

#[test]
fn console_rng_vsock_and_balloon_through_guest_drivers() {
    let name = "console_rng_vsock_and_balloon_through_guest_drivers";
    if !available(name) {
        return;
    }
    let api = |cmd: &str| {
        format!("printf '%s\\n' '{cmd}' | socat -t 3 - UNIX-CONNECT:/tmp/api.sock | tr '\\n' ' '")
    };
    let prelude = "socat -u UNIX-LISTEN:/tmp/vsock.sock_5000 CREATE:/tmp/from-guest &\n";
    let script = format!(
        "n=0; until [ -s /tmp/from-guest ]; do n=$((n+1)); [ $n -gt 1800 ] && break; sleep 0.1; done\n\
         echo \"FROM-GUEST $(cat /tmp/from-guest)\"\n\
         echo \"BALLOON-SET $({set})\"\n\
         printf 'CONNECT 1234\\nhello-over-vsock\\n' | socat -t 10 - UNIX-CONNECT:/tmp/vsock.sock > /tmp/echo\n\
         echo \"ECHO $(tr '\\n' '|' < /tmp/echo)\"\n\
         sleep 1\n\
         echo \"BALLOON-QUERY $({query})\"\n",
        set = api(r#"{"execute":"balloon-set","arguments":{"target-bytes":335544320}}"#),
        query = api(r#"{"execute":"query-balloon"}"#),
    );
    let o = Scenario::new(name)
        .l2_kernel(Kernel::MinimalBzImage)
        .l2_cmdline("console=hvc0 panic=-1")
        .l1_tools(&["socat"])
        .l2_tools(&["socat"])
        .l1_prelude(prelude)
        .l1_script(&script)
        .init_script(GUEST)
        .vireo_args(&[
            "--memory",
            "512",
            "--console",
            "virtio",
            "--rng",
            "--vsock",
            "cid=3,socket=/tmp/vsock.sock",
            "--balloon",
            "--api-socket",
            "/tmp/api.sock",
        ])
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
    // Everything the guest printed came through hvc0, its only console.
    assert_eq!(value(&l2, "CONSOLE ").as_deref(), Some("hvc0"), "{d}");
    // virtio-rng: 32 bytes each, not constant.
    assert_eq!(
        value(&l2, "RNG-CURRENT ").as_deref(),
        Some("virtio_rng.0"),
        "{d}"
    );
    let (a, b) = (value(&l2, "RNG-A ").unwrap(), value(&l2, "RNG-B ").unwrap());
    assert_eq!(a.len(), 64, "{d}");
    assert_ne!(a, b, "{d}");
    assert_ne!(a, "0".repeat(64), "{d}");
    // vsock both ways.
    assert_eq!(
        value(&l1, "FROM-GUEST ").as_deref(),
        Some("guest-ready"),
        "{d}"
    );
    let echo = value(&l1, "ECHO ").unwrap_or_default();
    assert!(
        echo.starts_with("OK ") && echo.ends_with("|hello-over-vsock|"),
        "{echo}\n{d}"
    );
    assert!(l2.contains(&"ECHOER-DONE"), "{d}");
    // The balloon took 192 MiB of the guest's 512: MemAvailable fell by more than 128 MiB.
    let kib = |p: &str| -> u64 { value(&l2, p).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let (before, after) = (kib("AVAIL-BEFORE "), kib("AVAIL-AFTER "));
    assert!(before > 0 && after > 0, "{d}");
    assert!(
        before - after.min(before) > 131_072,
        "{before} → {after} KiB\n{d}"
    );
}
