//! Management benchmark (`cargo build --release -p vireo-cli -p vireo-vmm && cargo bench -p
//! vireo-daemon --bench daemon`): a real `vireod --root TMPDIR` driven by the real `vireo`.
//!
//! * `vireo list --all` with 1000 defined domains (whole command: process start, connect,
//!   call, table), and the `domain.list` call alone over one connection;
//! * define → start → destroy cycles per second with the test guest (three `vireo`
//!   commands per cycle; the guest idles in its halt loop);
//! * define of 1000 domains (each an atomic, fsynced write).
//!
//! Results go in docs/benchmarks.md. `VIREO_BENCH_RUNS` sets the repetitions (default 20).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_api::protocol::domain::{DefineParams, DomainDefine, DomainList, ListParams};
use vireo_api::{Client, ConnectUri};

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_vireod")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} missing: cargo build --release -p vireo-cli -p vireo-vmm",
        p.display()
    );
    p
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn xml(name: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type>hvm</type><kernel>{}</kernel>\
         <cmdline>console=ttyS0 vtg.quick=1 vtg.action=halt</cmdline></os></domain>",
        vireo_test_guest::PATH
    )
}

struct Daemon {
    root: PathBuf,
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn main() {
    let runs: usize = std::env::var("VIREO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let root = std::env::temp_dir().join(format!("vireod-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vireod"))
        .arg("--root")
        .arg(&root)
        .env("VIREO_VMM", sibling("vireo-vmm"))
        .env("VIREO_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon { root, child };
    let uri = ConnectUri::with_root(&d.root);
    let mut client = loop {
        if let Ok(c) = Client::connect(&uri) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let vireo = |args: &[&str]| {
        let out = Command::new(sibling("vireo"))
            .arg("-c")
            .arg(uri.to_string())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vireo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };

    let t = Instant::now();
    for i in 0..1000 {
        client
            .call::<DomainDefine>(&DefineParams {
                xml: xml(&format!("bench-{i:04}")),
            })
            .unwrap();
    }
    let define_each = t.elapsed() / 1000;

    let mut cli = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = vireo(&["list", "--all"]);
        cli.push(t.elapsed());
        assert_eq!(
            out.split(|&b| b == b'\n')
                .filter(|l| l.windows(8).any(|w| w == b"shut off"))
                .count(),
            1000
        );
    }
    let mut call = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = client
            .call::<DomainList>(&ListParams {
                all: true,
                inactive: false,
            })
            .unwrap();
        call.push(t.elapsed());
        assert_eq!(r.domains.len(), 1000);
    }

    let cycle_xml = d.root.join("cycle.xml");
    // A fixed UUID: defining it again updates the definition.
    let with_uuid = xml("cycle").replace(
        "</name>",
        "</name><uuid>0b6cb2a4-5a0e-4c1e-9c1b-3d2f6a7e8b90</uuid>",
    );
    std::fs::write(&cycle_xml, with_uuid).unwrap();
    let cycle_xml = cycle_xml.to_str().unwrap().to_string();
    let mut cycles = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        vireo(&["define", &cycle_xml]);
        vireo(&["start", "cycle"]);
        vireo(&["destroy", "cycle"]);
        cycles.push(t.elapsed());
    }
    let cycle = median(cycles);
    println!("vireod benchmark ({runs} runs, medians)");
    println!(
        "  define (API call, atomic write)        {:>10.2?}",
        define_each
    );
    println!(
        "  vireo list --all, 1000 domains         {:>10.2?}",
        median(cli)
    );
    println!(
        "  domain.list call, 1000 domains         {:>10.2?}",
        median(call)
    );
    println!(
        "  define+start+destroy (vireo CLI)       {:>10.2?}  = {:.1} cycles/s",
        cycle,
        1.0 / cycle.as_secs_f64()
    );
}
