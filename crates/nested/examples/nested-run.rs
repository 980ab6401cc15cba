//! Runs one nested scenario by hand and prints everything it produced:
//!
//! ```sh
//! cargo run --release -p vireo-nested --example nested-run -- NAME 'L2 CMDLINE' 'SCRIPT' [VIREO ARGS...]
//! ```
//! `VIREO_NESTED_PVH=1` boots the ELF vmlinux instead of the bzImage;
//! `VIREO_NESTED_TIMEOUT=<seconds>` changes the 300 s limit; `VIREO_NESTED_LOG=<level>`
//! sets vireo's `VIREO_LOG` (default debug).

use std::time::Duration;
use vireo_nested::{Kernel, Scenario};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: nested-run NAME 'L2 CMDLINE' 'SCRIPT' [VIREO ARGS...]");
        std::process::exit(2);
    }
    let kernel = if std::env::var("VIREO_NESTED_PVH").as_deref() == Ok("1") {
        Kernel::DebianStockPvh
    } else {
        Kernel::DebianStock
    };
    let timeout = std::env::var("VIREO_NESTED_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let rest: Vec<&str> = args[3..].iter().map(String::as_str).collect();
    let o = Scenario::new(&args[0])
        .l2_kernel(kernel)
        .l2_cmdline(&args[1])
        .init_script(&args[2])
        .vireo_args(&rest)
        .timeout(Duration::from_secs(timeout))
        .vireo_log(&std::env::var("VIREO_NESTED_LOG").unwrap_or_else(|_| "debug".into()))
        .run()
        .unwrap_or_else(|e| {
            eprintln!("nested-run: {e}");
            std::process::exit(1)
        });
    println!("{}", o.describe());
}
