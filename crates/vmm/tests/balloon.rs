//! The balloon through the control API on real KVM: the test guest's virtio-balloon driver
//! inflates a page and reports it (`actual`), which query-balloon must show; balloon-set
//! must reach the guest as a new `num_pages` in its configuration space.

mod common;

use common::{kvm_or_skip, test_guest, wait_for, ApiClient, TempDir, Vmm};
use serde_json::{json, Value};

const MEMORY: u64 = 64 << 20;

/// Sends `command` with `arguments`; the whole reply.
fn request(a: &mut ApiClient, command: &str, arguments: Value) -> Value {
    let mut line =
        serde_json::to_vec(&json!({"execute": command, "arguments": arguments, "id": 1})).unwrap();
    line.push(b'\n');
    a.send_raw(&line);
    a.reply()
}

#[test]
fn balloon_set_and_query_balloon_reach_the_guest() {
    if !kvm_or_skip("balloon_set_and_query_balloon_reach_the_guest") {
        return;
    }
    let out = TempDir::new("balloon-console");
    let console = out.path("console.txt");
    let console_arg = format!("file:{}", console.display());
    let vmm = Vmm::spawn(
        "balloon",
        &[
            "--kernel",
            test_guest(),
            "--memory",
            "64M",
            "--cmdline",
            "console=ttyS0 vtg.quick=1 vtg.action=virtio-balloon vtg.balloon-wait=1",
            "--balloon",
            "--console",
            &console_arg,
        ],
    );
    let text = || std::fs::read_to_string(&console).unwrap_or_default();
    let mut a = vmm.api();
    wait_for("the guest's balloon driver", || {
        text().contains("virtio-balloon PASS")
    });
    // The guest reports one page in the balloon while it waits for a new target.
    wait_for("actual = 1 page", || {
        a.execute("query-balloon")["balloon-bytes"] == 4096
    });
    let q = a.execute("query-balloon");
    assert_eq!(q["actual-bytes"], MEMORY - 4096, "{q}");
    assert_eq!(q["target-bytes"], MEMORY, "no target yet: {q}");

    // Bad targets are refused and change nothing.
    let r = request(&mut a, "balloon-set", json!({"target-bytes": MEMORY + 1}));
    let desc = r["error"]["desc"].as_str().unwrap_or_default();
    assert!(desc.contains("more than the VM's memory"), "{r}");
    let r = request(&mut a, "balloon-set", json!({"target-bytes": 0}));
    assert!(r.get("error").is_some(), "{r}");
    assert_eq!(a.execute("query-balloon")["target-bytes"], MEMORY);

    // 48 MiB for the guest: a balloon of 16 MiB = 4096 pages, which the guest reads.
    let r = request(&mut a, "balloon-set", json!({"target-bytes": 48u64 << 20}));
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(a.execute("query-balloon")["target-bytes"], 48u64 << 20);
    let ended = vmm.wait();
    assert!(ended.status.success(), "{}", ended.stderr);
    assert!(
        text().contains("vtg: virtio-balloon new-target=4096"),
        "{}",
        text()
    );
}

#[test]
fn balloon_commands_need_a_balloon() {
    if !kvm_or_skip("balloon_commands_need_a_balloon") {
        return;
    }
    let vmm = Vmm::spawn(
        "no-balloon",
        &[
            "--kernel",
            test_guest(),
            "--memory",
            "64M",
            "--cmdline",
            "console=ttyS0 vtg.quick=1 vtg.action=wait-powerbutton",
            "--console",
            "file:/dev/null",
        ],
    );
    let mut a = vmm.api();
    for r in [
        a.request("query-balloon"),
        request(&mut a, "balloon-set", json!({"target-bytes": 1 << 20})),
    ] {
        let desc = r["error"]["desc"].as_str().unwrap_or_default();
        assert!(desc.contains("no balloon device"), "{r}");
    }
    a.execute("quit");
    assert!(vmm.wait().status.success());
}
