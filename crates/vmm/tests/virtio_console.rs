//! The console on a virtio-console (`--console virtio`) on real KVM: the test guest's
//! driver writes through the transmit queue and reads what a console socket client typed
//! from its receive queue — the event loop must route input there, not to the UART.

mod common;

use common::{kvm_or_skip, test_guest, ConsoleClient, TempDir, Vmm};

#[test]
fn console_socket_input_and_output_go_through_hvc0() {
    if !kvm_or_skip("console_socket_input_and_output_go_through_hvc0") {
        return;
    }
    let dir = TempDir::new("hvc0");
    let sock = dir.path("con.sock");
    let socket_arg = format!("socket:{}", sock.display());
    let vmm = Vmm::spawn(
        "hvc0",
        &[
            "--kernel",
            test_guest(),
            "--memory",
            "64M",
            "--cmdline",
            "console=ttyS0 vtg.quick=1 vtg.action=virtio-console vtg.console-echo=1",
            "--console",
            "virtio",
            "--console",
            &socket_arg,
        ],
    );
    let mut c = ConsoleClient::connect(&sock);
    // Written to hvc0's transmit queue by the guest.
    c.read_until("vtg: hvc0 waiting for input");
    c.type_text("typed into hvc0\r");
    c.read_until("vtg: hvc0 got=typed into hvc0");
    let ended = vmm.wait();
    assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
}
