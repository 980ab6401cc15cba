//! Crash safety: a writer process doing random writes and periodic flushes
//! is SIGKILLed at random points. Afterwards `qemu-img check` must find no
//! corruption (leaks are allowed) and every write acknowledged before the
//! last reported flush must read back.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

/// Replays the writer's deterministic write sequence (see
/// `vireo_img::crash_writer`): returns (offset, len, data seed) of write `i`.
fn writes(seed: u64, size: u64, count: usize) -> Vec<(u64, usize, u64)> {
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|_| {
            let len = ((rng.next() % (192 << 10)) + 1) as usize;
            let off = rng.next() % (size - len as u64);
            let dseed = rng.next() | 1;
            (off, len, dseed)
        })
        .collect()
}

#[test]
fn sigkill_at_random_points_leaves_only_leaks_and_keeps_flushed_data() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("crash");
    let size: u64 = 32 << 20;
    let mut ctl = Rng(0xC0FFEE);
    let rounds = 12;
    for round in 0..rounds {
        let p = d.join(&format!("crash{round}.qcow2"));
        let cs = ["4k", "64k", "512"][round % 3];
        vireo_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            s(&p),
            "32M",
        ]);
        if round % 4 == 3 {
            // also exercise copy-on-write of snapshotted clusters
            vireo_ok(&["snapshot", "-c", "base", s(&p)]);
        }
        let seed = ctl.next();
        let flushes_before_kill = 1 + ctl.next() % 25;
        let mut child = Command::new(env!("CARGO_BIN_EXE_vireo-img"))
            .args(["crash-writer", s(&p), &seed.to_string(), "100000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen_flushes = 0;
        let mut log: Vec<String> = Vec::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let is_flush = line.starts_with('F');
            log.push(line);
            if is_flush {
                seen_flushes += 1;
                if seen_flushes >= flushes_before_kill {
                    break;
                }
            }
        }
        // A few more writes may be in flight: kill now (SIGKILL).
        child.kill().expect("kill");
        for line in lines.map_while(Result::ok) {
            log.push(line);
        }
        let _ = child.wait();
        // Last acknowledged flush and number of writes reported.
        let last_flush = log
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("F ").and_then(|n| n.parse::<usize>().ok()));
        let nwrites = log.iter().filter(|l| l.starts_with('W')).count();
        let (code, out) = qemu_check(&p);
        assert!(
            code == 0 || code == 3,
            "round {round}: qemu-img check found corruption:\n{out}"
        );
        let Some(last_flush) = last_flush else {
            continue;
        };
        // Writes 0..=last_flush are durable; writes after it (reported or
        // in flight: one more than reported) have unknown effect.
        let ws = writes(seed, size, nwrites + 2);
        let mut expect = vec![0u8; size as usize];
        let mut known = vec![true; size as usize];
        for &(off, len, dseed) in &ws[..=last_flush] {
            let mut r = Rng(dseed);
            let mut buf = vec![0u8; len];
            fill(&mut r, &mut buf);
            expect[off as usize..off as usize + len].copy_from_slice(&buf);
        }
        for &(off, len, _) in &ws[last_flush + 1..] {
            known[off as usize..off as usize + len].fill(false);
        }
        let got = qemu_read_all(&p, &d);
        assert_eq!(got.len(), size as usize);
        for i in 0..size as usize {
            if known[i] && got[i] != expect[i] {
                panic!(
                    "round {round} (cs {cs}): flushed byte {i} lost: got {:#x} want {:#x} (last flush after write {last_flush})",
                    got[i], expect[i]
                );
            }
        }
        // vireo can reopen and write to the crashed image, and a repair
        // leaves it fully clean.
        let out = vireo(&["check", "-r", "all", s(&p)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_qemu_clean(&p);
        let _ = std::fs::remove_file(&p);
    }
}
