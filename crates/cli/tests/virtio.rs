//! virtio-pci on real KVM with the purpose-built test guest: its minimal virtio-pci driver
//! (guests/test-guest/guest/virtio.c) finds the device through configuration space,
//! negotiates, sets up a queue in guest memory, notifies and polls the used ring; the
//! bytes it prints and its verdict are what these tests check.

mod common;

use std::time::Duration;

use common::{kvm_or_skip, run_vireo, test_guest, Run};

const TIMEOUT: Duration = Duration::from_secs(120);

fn boot(args: &[&str], cmdline: &str) -> Run {
    let mut full = vec!["run", "--kernel", test_guest(), "--cmdline", cmdline];
    full.extend_from_slice(args);
    run_vireo(&full, TIMEOUT)
}

fn rng_data(r: &Run) -> String {
    r.guest_field("virtio-rng bytes=", "data")
        .unwrap_or_else(|| panic!("no data line:\n{}", r.describe()))
}

fn assert_rng_pass(r: &Run) {
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(
        r.guest_lines().contains(&"virtio-rng PASS"),
        "{}",
        r.describe()
    );
}

#[test]
fn rng_bytes_reach_the_guest_through_virtio_pci() {
    if !kvm_or_skip("rng_bytes_reach_the_guest_through_virtio_pci") {
        return;
    }
    let cmdline = "vtg.action=rng vtg.quick=1 vtg.rng-bytes=64";
    let a = boot(&["--rng", "--memory", "64M"], cmdline);
    assert_rng_pass(&a);
    assert_eq!(
        a.guest_field("virtio-rng slot", "slot").as_deref(),
        Some("1"),
        "first device in slot 1 (00.0 is the host bridge)"
    );
    assert_eq!(
        a.guest_field("virtio-rng slot", "bar").as_deref(),
        Some("0xc0000000"),
        "BAR 0 at the start of the 32-bit window"
    );
    assert_eq!(
        a.guest_field("virtio-rng slot", "msix").as_deref(),
        Some("2")
    );
    assert_eq!(
        a.guest_field("virtio-rng bytes=", "bytes").as_deref(),
        Some("64")
    );
    let first = rng_data(&a);
    assert_eq!(first.len(), 128, "64 bytes in hex");
    // Another VM gets other bytes.
    let b = boot(&["--rng", "--memory", "64M"], cmdline);
    assert_rng_pass(&b);
    assert_ne!(rng_data(&b), first);
}

#[test]
fn hostile_driver_is_refused_and_the_device_still_serves() {
    if !kvm_or_skip("hostile_driver_is_refused_and_the_device_still_serves") {
        return;
    }
    let r = boot(
        &["--rng", "--memory", "64M"],
        "vtg.action=rng vtg.quick=1 vtg.virtio-hostile=1 vtg.rng-bytes=4096",
    );
    assert_rng_pass(&r);
    assert_eq!(
        r.guest_field("virtio-hostile", "refused").as_deref(),
        Some("6"),
        "{}",
        r.describe()
    );
    assert_eq!(
        r.guest_field("virtio-rng bytes=", "bytes").as_deref(),
        Some("4096")
    );
}

#[test]
fn guest_moves_the_bar_and_the_device_follows() {
    if !kvm_or_skip("guest_moves_the_bar_and_the_device_follows") {
        return;
    }
    let r = boot(
        &["--rng", "--memory", "64M"],
        "vtg.action=rng vtg.quick=1 vtg.virtio-bar=d0000000",
    );
    assert_rng_pass(&r);
    assert_eq!(
        r.guest_field("virtio-rng slot", "bar").as_deref(),
        Some("0xd0000000"),
        "{}",
        r.describe()
    );
}

#[test]
fn without_the_flag_there_is_no_device() {
    if !kvm_or_skip("without_the_flag_there_is_no_device") {
        return;
    }
    let r = boot(&["--memory", "64M"], "vtg.action=rng vtg.quick=1");
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(
        r.guest_lines()
            .iter()
            .any(|l| l.starts_with("virtio-rng FAIL no virtio-rng device")),
        "{}",
        r.describe()
    );
}
