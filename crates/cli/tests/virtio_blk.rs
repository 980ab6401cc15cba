//! virtio-blk on real KVM with the test guest's driver (guests/test-guest/guest/virtio_blk.c):
//! the guest reads the serial and sector 0 the host wrote, writes sector 1, flushes and
//! discards; the host then checks the image bytes (and `qemu-img check` for qcow2).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{kvm_or_skip, run_vireo, test_guest, Run, TempDir};

const TIMEOUT: Duration = Duration::from_secs(120);
const CMDLINE: &str = "vtg.action=virtio-blk vtg.quick=1";
const SIZE: usize = 1 << 20;

fn boot(disk: &str) -> Run {
    run_vireo(
        &[
            "run",
            "--kernel",
            test_guest(),
            "--cmdline",
            CMDLINE,
            "--memory",
            "64M",
            "--disk",
            disk,
        ],
        TIMEOUT,
    )
}

/// What the guest writes to sector 1.
fn guest_pattern() -> Vec<u8> {
    (0..512u32).map(|i| (i * 7 + 3) as u8).collect()
}

fn sector0() -> Vec<u8> {
    (0..512u32).map(|i| (i * 13 + 1) as u8).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn assert_pass(r: &Run) {
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(
        r.guest_lines().contains(&"virtio-blk PASS"),
        "{}",
        r.describe()
    );
    assert_eq!(
        r.guest_field("virtio-blk sector0=", "sector0").as_deref(),
        Some(hex(&sector0()[..32]).as_str()),
        "{}",
        r.describe()
    );
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn raw_disk_read_write_flush_discard_and_serial() {
    if !kvm_or_skip("raw_disk_read_write_flush_discard_and_serial") {
        return;
    }
    let dir = TempDir::new("vblk-raw");
    let img = dir.path("disk.raw");
    let mut data = vec![0xa5u8; SIZE];
    data[..512].copy_from_slice(&sector0());
    std::fs::write(&img, &data).unwrap();
    let before = allocated(&img);
    let r = boot(&format!(
        "path={},format=raw,serial=vireo-serial-7",
        img.display()
    ));
    assert_pass(&r);
    let line = |p: &str| {
        r.guest_lines()
            .into_iter()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no line {p}:\n{}", r.describe()))
            .to_string()
    };
    assert_eq!(
        line("virtio-blk capacity"),
        format!("virtio-blk capacity={} ro=0 flush=1 discard=1", SIZE / 512)
    );
    assert_eq!(
        line("virtio-blk serial"),
        "virtio-blk serial=vireo-serial-7"
    );
    assert_eq!(
        line("virtio-blk write"),
        "virtio-blk write status=0 readback=1"
    );
    let after = std::fs::read(&img).unwrap();
    assert_eq!(
        after[512..1024],
        guest_pattern()[..],
        "sector 1 on the host"
    );
    assert_eq!(after[..512], sector0()[..], "sector 0 untouched");
    // The discard of sectors 128..256 reached the file: zeroes and a hole.
    assert!(after[128 * 512..256 * 512].iter().all(|&b| b == 0));
    assert!(after[256 * 512..257 * 512].iter().all(|&b| b == 0xa5));
    assert!(allocated(&img) < before, "discard punched a hole");
}

#[test]
fn read_only_qcow2_overlay_and_writable_overlay() {
    if !kvm_or_skip("read_only_qcow2_overlay_and_writable_overlay") {
        return;
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("SKIP read_only_qcow2_overlay_and_writable_overlay: qemu-img not installed");
        return;
    }
    let dir = TempDir::new("vblk-qcow2");
    let base = dir.path("base.raw");
    let mut data = vec![0x11u8; SIZE];
    data[..512].copy_from_slice(&sector0());
    std::fs::write(&base, &data).unwrap();
    let top = dir.path("top.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&top)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Read-only: the guest reads the backing file's sector 0, its write fails with IOERR.
    let r = boot(&format!("path={},format=qcow2,readonly=on", top.display()));
    assert_pass(&r);
    assert_eq!(
        r.guest_field("virtio-blk capacity", "ro").as_deref(),
        Some("1")
    );
    assert_eq!(
        r.guest_field("virtio-blk write", "status").as_deref(),
        Some("1"),
        "VIRTIO_BLK_S_IOERR"
    );
    let map = |p: &Path| {
        let out = Command::new("qemu-img")
            .args(["map", "--output=json", "-f", "qcow2"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !map(&top).contains("\"depth\": 0"),
        "nothing allocated in the overlay"
    );

    // Writable: the write lands in the overlay; the base is unchanged; the image checks clean.
    let r = boot(&format!("path={},format=qcow2", top.display()));
    assert_pass(&r);
    assert_eq!(
        std::fs::read(&base).unwrap(),
        data,
        "the backing file never changes"
    );
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -v 512 512"])
        .arg(&top)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("00000200:  03 0a 11 18 1f 26 2d 34"),
        "sector 1 in the overlay:\n{dump}"
    );
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&top)
        .output()
        .unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && verdict.contains("No errors"),
        "{verdict}"
    );
}

/// A guest that sends a read into memory it does not have gets IOERR; a descriptor loop
/// makes the device ask for a reset (DEVICE_NEEDS_RESET); the VMM keeps running, and after
/// the driver's reset the disk works again.
#[test]
fn hostile_requests_then_a_reset() {
    if !kvm_or_skip("hostile_requests_then_a_reset") {
        return;
    }
    let dir = TempDir::new("vblk-hostile");
    let img = dir.path("disk.raw");
    let mut data = vec![0u8; SIZE];
    data[..512].copy_from_slice(&sector0());
    std::fs::write(&img, &data).unwrap();
    let r = run_vireo(
        &[
            "run",
            "--kernel",
            test_guest(),
            "--cmdline",
            "vtg.action=virtio-blk vtg.quick=1 vtg.virtio-hostile=1",
            "--memory",
            "64M",
            "--disk",
            &format!("path={},format=raw", img.display()),
        ],
        TIMEOUT,
    );
    assert_pass(&r);
    assert!(
        r.guest_lines()
            .contains(&"virtio-blk hostile oob-status=1 loop-needs-reset=1"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains("virtio-blk queue 0") && r.stderr.contains("needs a reset"),
        "{}",
        r.describe()
    );
    assert_eq!(std::fs::read(&img).unwrap()[512..1024], guest_pattern()[..]);
}

/// A guest that negotiates FLUSH (a write-back cache) but powers off without flushing: the
/// VMM closes the image on exit, so a fresh qcow2's newly allocated cluster and its
/// metadata reach the file and the image checks clean.
#[test]
fn unflushed_qcow2_writes_are_kept_at_poweroff() {
    if !kvm_or_skip("unflushed_qcow2_writes_are_kept_at_poweroff") {
        return;
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("SKIP unflushed_qcow2_writes_are_kept_at_poweroff: qemu-img not installed");
        return;
    }
    let dir = TempDir::new("vblk-noflush");
    let img = dir.path("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg(SIZE.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = run_vireo(
        &[
            "run",
            "--kernel",
            test_guest(),
            "--cmdline",
            "vtg.action=virtio-blk vtg.quick=1 vtg.blk-noflush=1",
            "--memory",
            "64M",
            "--disk",
            &format!("path={},format=qcow2", img.display()),
        ],
        TIMEOUT,
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(
        r.guest_lines().contains(&"virtio-blk PASS"),
        "{}",
        r.describe()
    );
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -v 512 16"])
        .arg(&img)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("00000200:  03 0a 11 18 1f 26 2d 34"),
        "sector 1 kept:\n{dump}"
    );
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&img)
        .output()
        .unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && verdict.contains("No errors"),
        "{verdict}"
    );
}

/// The disk outlives a guest reset: the second boot's device model works on the same open,
/// locked image (a new open would conflict with the first one's lock).
#[test]
fn the_disk_survives_a_guest_reset() {
    if !kvm_or_skip("the_disk_survives_a_guest_reset") {
        return;
    }
    let dir = TempDir::new("vblk-reset");
    let img = dir.path("disk.raw");
    let mut data = vec![0u8; SIZE];
    data[..512].copy_from_slice(&sector0());
    std::fs::write(&img, &data).unwrap();
    let r = run_vireo(
        &[
            "run",
            "--kernel",
            test_guest(),
            "--cmdline",
            "vtg.action=virtio-blk vtg.quick=1 vtg.blk-reboot-once=1",
            "--memory",
            "64M",
            "--disk",
            &format!("path={},format=raw,serial=twice", img.display()),
        ],
        TIMEOUT,
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    let lines = r.guest_lines();
    assert_eq!(
        lines.iter().filter(|l| **l == "virtio-blk PASS").count(),
        2,
        "{}",
        r.describe()
    );
    assert!(lines.contains(&"boot 1"), "{}", r.describe());
    assert_eq!(
        lines
            .iter()
            .filter(|l| **l == "virtio-blk serial=twice")
            .count(),
        2
    );
}
