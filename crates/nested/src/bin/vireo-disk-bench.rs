//! A small fio-like disk benchmark for guests (the nested device benchmark puts it in L2's
//! initramfs): O_DIRECT reads or writes of one block size, random or sequential, at queue
//! depth 1, for a fixed time. Prints one JSON line: `{"ops":N,"seconds":S,"iops":I,"mib_s":M}`.
//!
//! `vireo-disk-bench DEVICE randread|randwrite|read|write BLOCK-BYTES SECONDS SPAN-MIB`

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

/// `O_DIRECT` on x86-64 Linux (the page cache would otherwise measure the guest's RAM).
const O_DIRECT: i32 = 0o40000;
const ALIGN: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: vireo-disk-bench DEVICE randread|randwrite|read|write BLOCK-BYTES SECONDS SPAN-MIB");
        std::process::exit(2);
    }
    let num = |i: usize| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("vireo-disk-bench: '{}' is not a number", args[i]);
            std::process::exit(2)
        })
    };
    let (mode, bs, secs, span) = (args[2].as_str(), num(3), num(4), num(5) << 20);
    if bs == 0 || bs % ALIGN as u64 != 0 || span < bs {
        eprintln!(
            "vireo-disk-bench: block size must be a multiple of {ALIGN} and at most the span"
        );
        std::process::exit(2);
    }
    let (write, random) = match mode {
        "randread" => (false, true),
        "randwrite" => (true, true),
        "read" => (false, false),
        "write" => (true, false),
        _ => {
            eprintln!("vireo-disk-bench: unknown mode '{mode}'");
            std::process::exit(2)
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(O_DIRECT)
        .open(&args[1])
        .unwrap_or_else(|e| {
            eprintln!("vireo-disk-bench: {}: {e}", args[1]);
            std::process::exit(1)
        });
    // O_DIRECT wants an aligned buffer: take the aligned window of a larger one.
    let mut backing = vec![0x5au8; bs as usize + ALIGN];
    let skew = (ALIGN - backing.as_ptr() as usize % ALIGN) % ALIGN;
    let buf = &mut backing[skew..skew + bs as usize];
    let blocks = span / bs;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = 0u64;
    let (start, limit) = (Instant::now(), Duration::from_secs(secs));
    let mut ops = 0u64;
    while start.elapsed() < limit {
        let block = if random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % blocks
        } else {
            let b = next;
            next = (next + 1) % blocks;
            b
        };
        let r = if write {
            file.write_all_at(buf, block * bs)
        } else {
            file.read_exact_at(buf, block * bs)
        };
        if let Err(e) = r {
            eprintln!("vireo-disk-bench: {mode} at {}: {e}", block * bs);
            std::process::exit(1);
        }
        ops += 1;
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "{{\"ops\":{ops},\"seconds\":{s:.3},\"iops\":{:.1},\"mib_s\":{:.2}}}",
        ops as f64 / s,
        (ops * bs) as f64 / s / f64::from(1 << 20)
    );
}
