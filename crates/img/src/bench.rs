//! `bench`: a simple synchronous I/O benchmark with qemu-img bench's flags
//! and output. Requests are issued by `depth` worker threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Args;
use vireo_block::{Format, OpenOptions};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(short = 'c', default_value_t = 75000)]
    pub count: u64,
    #[arg(short = 'd', default_value_t = 64)]
    pub depth: u64,
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(short = 'n')]
    pub native: bool,
    #[arg(short = 'o', default_value = "0")]
    pub offset: String,
    #[arg(short = 's', default_value = "4096")]
    pub size: String,
    #[arg(short = 'S')]
    pub step: Option<String>,
    #[arg(short = 't')]
    pub cache: Option<String>,
    #[arg(short = 'w')]
    pub write: bool,
    #[arg(short = 'q')]
    pub quiet: bool,
    #[arg(long = "pattern", default_value_t = 0)]
    pub pattern: u8,
    #[arg(long = "flush-interval", default_value_t = 0)]
    pub flush_interval: u64,
    #[arg(long = "no-drain")]
    pub no_drain: bool,
    pub filename: std::path::PathBuf,
}

pub fn bench(a: BenchArgs) -> Result<u8, String> {
    let size = crate::parse_size(&a.size)?;
    let offset = crate::parse_size(&a.offset)?;
    let step = match &a.step {
        Some(s) => crate::parse_size(s)?,
        None => size,
    };
    if size == 0 || size > (1 << 30) {
        return Err(format!("Invalid buffer size specified: {size}"));
    }
    let fmt = match &a.fmt {
        Some(f) => Some(Format::from_name(f).map_err(|e| e.to_string())?),
        None => None,
    };
    let img = vireo_block::open(
        &a.filename,
        &OpenOptions {
            format: fmt,
            read_only: !a.write,
            // -t none / directsync: bypass the host page cache (O_DIRECT)
            // for the (aligned) data requests, as qemu-img does.
            direct: matches!(a.cache.as_deref(), Some("none" | "directsync")),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let isize = img.size();
    if !a.quiet {
        println!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            a.count,
            if a.write { "write" } else { "read" },
            size,
            a.depth,
            offset,
            step
        );
    }
    let next = AtomicU64::new(0);
    let failed = std::sync::Mutex::new(None::<String>);
    let start = Instant::now();
    let threads = a.depth.clamp(1, 16);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                // 4 KiB aligned, so that O_DIRECT can be used.
                let mut store = vec![a.pattern; size as usize + vireo_block::DIRECT_ALIGN];
                let at = store.as_ptr().align_offset(vireo_block::DIRECT_ALIGN);
                let buf = &mut store[at..at + size as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= a.count {
                        break;
                    }
                    let span = isize.saturating_sub(size).max(1);
                    let off = (offset + i * step) % span;
                    let r = if a.write {
                        let r = img.write_at(buf, off);
                        if r.is_ok() && a.flush_interval > 0 && (i + 1) % a.flush_interval == 0 {
                            img.flush()
                        } else {
                            r
                        }
                    } else {
                        img.read_at(buf, off)
                    };
                    if let Err(e) = r {
                        if let Ok(mut f) = failed.lock() {
                            *f = Some(e.to_string());
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Ok(Some(e)) = failed.lock().map(|f| f.clone()) {
        return Err(e);
    }
    // Like qemu-img bench, the reported time ends with the last request; the
    // flush that makes the writes durable belongs to closing the image and is
    // not timed (qemu-img prints "Run completed" before its close-time flush).
    let elapsed = start.elapsed().as_secs_f64();
    if a.write && !a.no_drain {
        img.flush().map_err(|e| e.to_string())?;
    }
    if !a.quiet {
        println!("Run completed in {elapsed:.3} seconds.");
    }
    Ok(0)
}
