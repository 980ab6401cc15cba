//! Bad input to `vireo run`: one clear line on stderr, a non-zero status, never a panic.
//! These need no KVM: every check happens before /dev/kvm is opened.

mod common;

use std::time::Duration;

use common::{run_vireo, test_guest, write_file, TempDir};

/// Runs `vireo run` with `args` and asserts a one-line error containing `expect`.
fn assert_rejected(args: &[&str], expect: &str) {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    let r = run_vireo(&full, Duration::from_secs(30));
    assert_ne!(r.code(), Some(0), "{}", r.describe());
    assert!(r.code().is_some(), "killed by a signal: {}", r.describe());
    assert!(!r.stderr.contains("panicked"), "{}", r.describe());
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains(expect)),
        "expected an error containing {expect:?}\n{}",
        r.describe()
    );
    // clap prints a usage hint after its error line; vireo's own errors are one line.
    if lines[0].starts_with("vireo: error:") {
        assert_eq!(lines.len(), 1, "{}", r.describe());
    }
    assert!(r.stdout.is_empty(), "{}", r.describe());
}

#[test]
fn missing_kernel_file() {
    assert_rejected(
        &["--kernel", "/nonexistent/vmlinux"],
        "cannot open kernel /nonexistent/vmlinux: No such file or directory",
    );
}

#[test]
fn kernel_that_is_a_directory() {
    assert_rejected(&["--kernel", "/tmp"], "not a regular file");
}

#[test]
fn non_kernel_file() {
    let dir = TempDir::new("nonkernel");
    let p = dir.path("notes.txt");
    write_file(&p, b"hello, this is not a kernel\n".repeat(100).as_slice());
    assert_rejected(&["--kernel", p.to_str().unwrap()], "is not a Linux kernel");
}

#[test]
fn empty_kernel_file() {
    let dir = TempDir::new("emptykernel");
    let p = dir.path("empty");
    write_file(&p, b"");
    assert_rejected(&["--kernel", p.to_str().unwrap()], "is not a Linux kernel");
}

/// A bzImage setup header announcing `syssize` paragraphs of payload.
fn fake_bzimage(protocol: u16, syssize: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(0x400)];
    b[0x1f1] = 1; // setup_sects
    b[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
    b[0x211] = 1; // LOADED_HIGH
    b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    b.truncate(len.max(0x400));
    b
}

#[test]
fn truncated_bzimage() {
    let dir = TempDir::new("truncbz");
    let p = dir.path("bzImage");
    write_file(&p, &fake_bzimage(0x020f, 0x10000, 0x2000));
    assert_rejected(&["--kernel", p.to_str().unwrap()], "is truncated");
}

#[test]
fn bzimage_with_too_old_boot_protocol() {
    let dir = TempDir::new("oldbz");
    let p = dir.path("bzImage");
    write_file(&p, &fake_bzimage(0x0204, 0, 0x2000));
    assert_rejected(
        &["--kernel", p.to_str().unwrap()],
        "boot protocol 2.04 is older",
    );
}

#[test]
fn truncated_elf() {
    let dir = TempDir::new("truncelf");
    let guest = std::fs::read(test_guest()).unwrap();
    for cut in [10, 64 + 20, guest.len() / 2] {
        let p = dir.path(&format!("vmlinux-{cut}"));
        write_file(&p, &guest[..cut]);
        assert_rejected(&["--kernel", p.to_str().unwrap()], "is truncated");
    }
}

#[test]
fn zero_memory() {
    assert_rejected(
        &["--kernel", test_guest(), "--memory", "0"],
        "--memory must be at least",
    );
}

#[test]
fn memory_larger_than_host() {
    assert_rejected(
        &["--kernel", test_guest(), "--memory", "64T"],
        "is more than this host's",
    );
}

#[test]
fn malformed_memory_size() {
    assert_rejected(
        &["--kernel", test_guest(), "--memory", "lots"],
        "invalid size 'lots'",
    );
}

#[test]
fn zero_cpus() {
    assert_rejected(
        &["--kernel", test_guest(), "--cpus", "0"],
        "--cpus must be at least 1",
    );
}

#[test]
fn too_many_cpus() {
    assert_rejected(
        &["--kernel", test_guest(), "--cpus", "100000"],
        "--cpus 100000 is above the limit",
    );
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(5000);
    assert_rejected(
        &["--kernel", test_guest(), "--cmdline", &long],
        "kernel command line is 5000 bytes; this kernel accepts at most 2047",
    );
}

#[test]
fn unknown_cpu_template() {
    assert_rejected(
        &["--kernel", test_guest(), "--cpu-template", "fancy"],
        "unknown CPU template 'fancy'",
    );
}

#[test]
fn missing_initrd() {
    assert_rejected(
        &["--kernel", test_guest(), "--initrd", "/nonexistent/initrd"],
        "cannot open initrd /nonexistent/initrd",
    );
}

#[test]
fn unknown_console() {
    assert_rejected(
        &["--kernel", test_guest(), "--console", "pty"],
        "unknown console 'pty'",
    );
}

#[test]
fn no_access_to_dev_kvm() {
    // Run as an unprivileged user where possible: /dev/kvm is then inaccessible.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP no_access_to_dev_kvm: needs root to drop privileges");
        return;
    }
    let meta = match std::fs::metadata("/dev/kvm") {
        Ok(m) => m,
        Err(_) => {
            // No /dev/kvm at all: vireo must say so.
            assert_rejected(&["--kernel", test_guest()], "cannot open /dev/kvm");
            return;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o006 != 0 {
        eprintln!("SKIP no_access_to_dev_kvm: /dev/kvm is world-accessible here");
        return;
    }
    // Copy the guest somewhere `nobody` can read it.
    let dir = TempDir::new("nokvm");
    let guest = dir.path("guest.elf");
    std::fs::copy(test_guest(), &guest).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&guest, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = std::process::Command::new(common::vireo());
    cmd.args([
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--memory",
        "16M",
    ]);
    use std::os::unix::process::CommandExt;
    cmd.uid(65534).gid(65534);
    let r = common::run_command(&mut cmd, Duration::from_secs(30));
    assert_ne!(r.code(), Some(0), "{}", r.describe());
    assert!(
        r.stderr.contains("cannot open /dev/kvm"),
        "{}",
        r.describe()
    );
    assert!(r.stderr.contains("Permission denied"), "{}", r.describe());
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.describe());
}

/// Disk backends are opened before KVM: a missing, locked or unsupported image is bad
/// input naming its --disk flag.
#[test]
fn disks_that_cannot_be_opened() {
    let dir = TempDir::new("baddisk");
    let missing = dir.path("missing.qcow2");
    let flag = format!("path={},format=qcow2", missing.display());
    assert_rejected(
        &["--kernel", test_guest(), "--disk", &flag],
        &format!("--disk path={}: ", missing.display()),
    );

    let vmdk = dir.path("d.vmdk");
    write_file(&vmdk, b"KDMV");
    let flag = format!("path={}", vmdk.display());
    assert_rejected(
        &["--kernel", test_guest(), "--disk", &flag],
        "format vmdk cannot back a VM disk",
    );

    // qcow2 named but the file is not one.
    let raw = dir.path("d.raw");
    write_file(&raw, &[0u8; 4096]);
    let flag = format!("path={},format=qcow2", raw.display());
    assert_rejected(&["--kernel", test_guest(), "--disk", &flag], "d.raw");

    // Another process (here: this test, as a VM would) writes the image.
    let lock = vireo_block::lock::ImageLock::acquire(&raw, true).unwrap();
    let flag = format!("path={},format=raw,readonly=on", raw.display());
    assert_rejected(&["--kernel", test_guest(), "--disk", &flag], "is locked");
    drop(lock);

    assert_rejected(
        &["--kernel", test_guest(), "--disk", "path=/x,serial=a\tb"],
        "serial 'a\\tb' is not valid",
    );
    assert_rejected(
        &["--kernel", test_guest(), "--disk", "path=/x,format=vhd"],
        "format=vhd: use raw or qcow2",
    );
}
