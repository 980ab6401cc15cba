//! Runs a VMM inside the nested L1 host and measures how long its guest takes to reach the
//! boot-complete marker: the guest's init writes 123 to I/O port 0x80 (Firecracker's
//! boot-timer convention), and the time from spawning the VMM until the VMM has seen that
//! write is the boot time.
//!
//! ```text
//! vireo-boot-timer stderr -- vireo run ...        # vireo logs "guest boot-complete marker"
//! vireo-boot-timer fifo:PATH -- qemu-system-x86_64 ... \
//!     -chardev pipe,id=m,path=PATH -device isa-debugcon,iobase=0x80,chardev=m
//! ```
//! The result goes to stderr as `VIREO-BOOT-MARKER-US <µs>` (or `VIREO-BOOT-MARKER-US
//! none`); the exit status is the VMM's. Both ways, the clock stops when the VMM's
//! process has seen the guest's write, so the two VMMs are measured alike.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// The byte an init writes to port 0x80 when it has booted.
const MARKER: u8 = 123;
/// What vireo logs (at info level) when it sees the marker.
const VIREO_MARKER_LINE: &str = "guest boot-complete marker";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args[1] != "--" {
        return usage();
    }
    let (mode, cmd) = (args[0].clone(), &args[2..]);
    let fifo = mode.strip_prefix("fifo:").map(str::to_string);
    if fifo.is_none() && mode != "stderr" {
        return usage();
    }

    let start = Instant::now();
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    if fifo.is_none() {
        command.stderr(Stdio::piped());
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vireo-boot-timer: cannot run {}: {e}", cmd[0]);
            return ExitCode::from(127);
        }
    };
    let (tx, rx) = mpsc::channel::<Instant>();
    let mut forwarder = None;
    match fifo {
        Some(path) => {
            // Opening blocks until the VMM opens its end; a VMM that dies first leaves
            // this thread blocked, which is harmless: the process exits after `wait`.
            std::thread::spawn(move || {
                let Ok(f) = std::fs::File::open(&path) else {
                    return;
                };
                for b in BufReader::new(f).bytes() {
                    match b {
                        Ok(MARKER) => {
                            let _ = tx.send(Instant::now());
                            return;
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        None => {
            let stderr = child.stderr.take().expect("stderr is piped");
            forwarder = Some(std::thread::spawn(move || {
                let mut out = std::io::stderr();
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    if line.contains(VIREO_MARKER_LINE) {
                        let _ = tx.send(Instant::now());
                    }
                    let _ = writeln!(out, "{line}");
                }
            }));
        }
    }
    let status = child.wait();
    // The VMM's stderr is closed once it has exited: forward the rest before reporting.
    if let Some(f) = forwarder {
        let _ = f.join();
    }
    let result = match rx.try_recv() {
        Ok(t) => t.duration_since(start).as_micros().to_string(),
        Err(_) => "none".to_string(),
    };
    eprintln!("VIREO-BOOT-MARKER-US {result}");
    match status {
        Ok(s) => match s.code() {
            Some(c) => ExitCode::from(c.clamp(0, 255) as u8),
            None => ExitCode::from(128),
        },
        Err(e) => {
            eprintln!("vireo-boot-timer: wait: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: vireo-boot-timer stderr|fifo:PATH -- COMMAND [ARGS...]");
    ExitCode::from(2)
}
