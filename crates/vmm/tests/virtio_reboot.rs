//! Guest reboots with virtio devices on real KVM: each boot's devices, KVM VM and guest
//! memory must go with it (a reference cycle through the buses once kept them all alive),
//! so the VMM's open files stay the same from one reboot to the next.

mod common;

use common::{kvm_or_skip, test_guest, TempDir, Vmm};

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn reboots_do_not_leak_devices_or_vms() {
    if !kvm_or_skip("reboots_do_not_leak_devices_or_vms") {
        return;
    }
    let dir = TempDir::new("reboot-leak");
    let vsock = format!("cid=3,socket={}", dir.path("v.sock").display());
    let vmm = Vmm::spawn(
        "reboot-leak",
        &[
            "--kernel",
            test_guest(),
            "--memory",
            "64M",
            "--cmdline",
            "console=ttyS0 vtg.quick=1 vtg.action=reboot",
            "--console",
            "file:/dev/null",
            "--rng",
            "--balloon",
            "--vsock",
            &vsock,
        ],
    );
    let mut a = vmm.api();
    for _ in 0..2 {
        a.event("RESET");
    }
    let early = open_fds(vmm.pid());
    for _ in 0..6 {
        a.event("RESET");
    }
    let later = open_fds(vmm.pid());
    assert!(
        later <= early,
        "open files grew from {early} to {later} over 6 reboots"
    );
    a.execute("quit");
    assert!(vmm.wait().status.success());
    assert!(!dir.path("v.sock").exists(), "the vsock socket is removed");
}
