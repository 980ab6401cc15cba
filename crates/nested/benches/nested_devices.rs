//! virtio-blk and virtio-net throughput measured from inside a real Linux guest, vireo vs
//! QEMU (`-M q35`, virtio-blk-pci and virtio-net-pci, userspace virtio like vireo's),
//! inside the same nested L1 (QEMU TCG with emulated AMD-V; see crates/nested).
//!
//! Both VMMs boot Debian's stock kernel with the same initramfs, the same raw disk image
//! (on tmpfs in L1, page-cached for both) and the same TAP (`vtap0`, L1's address
//! 10.0.2.1 with an iperf3 server). The guest runs `vireo-disk-bench` (src/bin; fio-like:
//! 4 KiB random read/write at queue depth 1, 1 MiB sequential read/write, O_DIRECT) on
//! /dev/vda and iperf3 to L1 both ways.
//!
//! ```sh
//! cargo bench -p vireo-nested --bench nested_devices        # 2 rounds, 5 s per test
//! VIREO_BENCH_ROUNDS=3 VIREO_BENCH_SECONDS=10 cargo bench -p vireo-nested --bench nested_devices
//! ```
//! Absolute numbers are those of an emulated machine (L1 runs under TCG); the ratios are
//! the result. The consoles are kept in target/nested/runs/bench-nested-devices/.

use std::collections::BTreeMap;
use std::time::Duration;

use vireo_nested::{harness_binary, shell_quote, skip_reason, Scenario};

const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

fn guest_script(seconds: u32) -> String {
    format!(
        r#"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
n=0; until ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1; do n=$((n+1)); [ $n -gt 60 ] && break; done
for t in "randread 4096" "randwrite 4096" "read 1048576" "write 1048576"; do
  set -- $t
  echo "BENCH-JSON-BEGIN blk-$1-$([ $2 = 4096 ] && echo 4k || echo 1m)"
  vireo-disk-bench /dev/vda $1 $2 {seconds} 192
  echo "BENCH-JSON-END"
done
echo "BENCH-JSON-BEGIN net-tx"
iperf3 -c 10.0.2.1 -t {seconds} -J
echo "BENCH-JSON-END"
echo "BENCH-JSON-BEGIN net-rx"
iperf3 -c 10.0.2.1 -t {seconds} -J -R
echo "BENCH-JSON-END"
poweroff -f
"#
    )
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Vmm {
    Vireo,
    QemuQ35,
}

impl Vmm {
    fn label(self) -> &'static str {
        match self {
            Vmm::Vireo => "vireo",
            Vmm::QemuQ35 => "qemu-q35",
        }
    }

    fn command(self) -> String {
        let io = "</dev/null >/dev/ttyS1 2>/dev/ttyS2";
        match self {
            Vmm::Vireo => format!(
                "VIREO_LOG=info /bin/vireo run --kernel /l2/kernel --initrd /l2/initrd \
                 --cmdline {c} --cpus 1 --memory 512M \
                 --disk path=/img/disk.raw,format=raw --net tap=vtap0,mac=52:54:00:12:34:56 {io}",
                c = shell_quote(CMDLINE)
            ),
            Vmm::QemuQ35 => format!(
                "/usr/bin/qemu-system-x86_64 -accel kvm -cpu host -M q35 -m 512M -smp 1 \
                 -nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot \
                 -kernel /l2/kernel -initrd /l2/initrd -append {c} \
                 -drive file=/img/disk.raw,format=raw,if=none,id=d0 -device virtio-blk-pci,drive=d0 \
                 -netdev tap,id=n0,ifname=vtap0,script=no,downscript=no \
                 -device virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:12:34:56 {io}",
                c = shell_quote(CMDLINE)
            ),
        }
    }
}

/// The metric of one test's JSON: IOPS for 4 KiB tests, MiB/s for 1 MiB tests, Mbit/s for
/// the network.
fn metric(test: &str, json: &serde_json::Value) -> Option<f64> {
    if let Some(rest) = test.strip_prefix("blk-") {
        if rest.ends_with("4k") {
            json["iops"].as_f64()
        } else {
            json["mib_s"].as_f64()
        }
    } else {
        let end = &json["end"];
        let key = if test == "net-tx" {
            "sum_sent"
        } else {
            "sum_received"
        };
        end[key]["bits_per_second"].as_f64().map(|b| b / 1e6)
    }
}

fn unit(test: &str) -> &'static str {
    if test.starts_with("net") {
        "Mbit/s"
    } else if test.ends_with("4k") {
        "IOPS"
    } else {
        "MiB/s"
    }
}

/// (vmm, test) → values, from the L2 console.
fn parse(console: &str) -> BTreeMap<(Vmm, String), Vec<f64>> {
    let mut out: BTreeMap<(Vmm, String), Vec<f64>> = BTreeMap::new();
    let mut vmm = None;
    let mut test: Option<String> = None;
    let mut json = String::new();
    for line in console.lines() {
        let t = line.trim();
        if let Some(label) = t.strip_prefix("BENCH-RUN ") {
            vmm = [Vmm::Vireo, Vmm::QemuQ35]
                .into_iter()
                .find(|v| label.starts_with(v.label()));
        } else if let Some(name) = t.strip_prefix("BENCH-JSON-BEGIN ") {
            test = Some(name.to_string());
            json.clear();
        } else if t == "BENCH-JSON-END" {
            if let (Some(v), Some(name)) = (vmm, test.take()) {
                let body = match (json.find('{'), json.rfind('}')) {
                    (Some(a), Some(b)) if a < b => &json[a..=b],
                    _ => "",
                };
                match serde_json::from_str(body)
                    .ok()
                    .and_then(|j| metric(&name, &j))
                {
                    Some(m) => out.entry((v, name)).or_default().push(m),
                    None => eprintln!("{}: no result for {name}", v.label()),
                }
            }
        } else if test.is_some() {
            json.push_str(line);
            json.push('\n');
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Some(reason) = skip_reason() {
        eprintln!("SKIP nested_devices: {reason}");
        return;
    }
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (rounds, seconds) = (env("VIREO_BENCH_ROUNDS", 2), env("VIREO_BENCH_SECONDS", 5));
    let vmms = [Vmm::Vireo, Vmm::QemuQ35];
    let disk_bench = harness_binary("vireo-disk-bench")
        .unwrap_or_else(|e| {
            eprintln!("nested_devices: {e}");
            std::process::exit(1)
        })
        .to_string_lossy()
        .into_owned();
    let prelude = "mkdir -p /img && mount -t tmpfs tmpfs /img\n\
         dd if=/dev/urandom of=/img/disk.raw bs=1M count=256 2>/dev/null\n\
         /opt/tools/bin/ip tuntap add dev vtap0 mode tap\n\
         /opt/tools/bin/ip addr add 10.0.2.1/24 dev vtap0\n\
         /opt/tools/bin/ip link set vtap0 up\n\
         iperf3 -s -D\n";
    let mut script = String::new();
    for round in 0..rounds {
        for i in 0..vmms.len() {
            // Alternate the order so that drift in L1 spreads evenly.
            let v = vmms[(i + round as usize) % vmms.len()];
            script.push_str(&format!(
                "echo 'BENCH-RUN {l} {round}' >/dev/ttyS1\n{}\necho \"BENCH-EXIT {l} {round} $?\"\n",
                v.command(),
                l = v.label()
            ));
        }
    }
    script.push_str("echo 'VIREO-EXIT 0'\n");
    let per_run = 60 + 6 * u64::from(seconds);
    let outcome = Scenario::new("bench-nested-devices")
        .l1_scripted()
        .l1_qemu()
        .l1_memory(2048)
        .l1_modules(&["tun"])
        .l1_tools(&["ip", "iperf3"])
        .l2_tools(&["iperf3", &disk_bench])
        .l1_prelude(prelude)
        .l1_script(&script)
        .init_script(&guest_script(seconds))
        .timeout(Duration::from_secs(
            300 + per_run * u64::from(rounds) * vmms.len() as u64,
        ))
        .run()
        .unwrap_or_else(|e| {
            eprintln!("nested_devices: {e}");
            std::process::exit(1)
        });
    let results = parse(&outcome.l2_console);
    for l in outcome.l1_lines() {
        if l.starts_with("BENCH-EXIT") {
            println!("{l}");
        }
    }
    println!(
        "\nDebian stock kernel, 1 vCPU, 512 MiB, {rounds} rounds, {seconds} s per test (median)\n"
    );
    println!("| test | vireo | QEMU q35 | vireo / QEMU |\n|---|---|---|---|");
    let tests = [
        "blk-randread-4k",
        "blk-randwrite-4k",
        "blk-read-1m",
        "blk-write-1m",
        "net-tx",
        "net-rx",
    ];
    let mut missing = false;
    for t in tests {
        let get = |v: Vmm| results.get(&(v, t.to_string())).cloned().map(median);
        match (get(Vmm::Vireo), get(Vmm::QemuQ35)) {
            (Some(a), Some(b)) => println!(
                "| {t} ({u}) | {a:.0} | {b:.0} | {:.2} |",
                a / b,
                u = unit(t)
            ),
            (a, b) => {
                missing = true;
                println!("| {t} ({}) | {a:?} | {b:?} | — |", unit(t))
            }
        }
    }
    if missing {
        eprintln!("some results are missing:\n{}", outcome.describe());
        std::process::exit(1);
    }
}
