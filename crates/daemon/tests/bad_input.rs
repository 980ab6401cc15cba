//! Bad input through the CLI and on the raw socket: one clear error line, non-zero exit,
//! nothing lost. Needs no KVM.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use common::Daemon;

#[test]
fn clear_errors_for_bad_requests() {
    let d = Daemon::start("bad-input");
    let e = d.fails(&["dominfo", "nosuch"]);
    assert!(
        e.contains("domain not found") && e.contains("'nosuch'"),
        "{e}"
    );
    for verb in [
        "start", "destroy", "shutdown", "undefine", "dumpxml", "domstate", "suspend",
    ] {
        let e = d.fails(&[verb, "nosuch"]);
        assert!(e.contains("domain not found"), "{verb}: {e}");
    }

    let bad = d.path("bad.xml");
    std::fs::write(&bad, "<domain><name>x</name>").unwrap();
    let e = d.fails(&["define", bad.to_str().unwrap()]);
    assert!(e.contains("malformed") || e.contains("XML"), "{e}");
    let e = d.fails(&["define", "/nonexistent.xml"]);
    assert!(e.contains("cannot read /nonexistent.xml"), "{e}");

    // Duplicates: same name with another UUID, same UUID with another name.
    let a = d.guest_xml(
        "dup",
        "",
        "  <uuid>6a3c9b4e-8d1f-4f7a-9e2b-1c5d7e9f0a12</uuid>\n",
    );
    d.ok(&["define", &a]);
    let b = d.guest_xml(
        "dup",
        "",
        "  <uuid>00000000-1111-4222-8333-444444444444</uuid>\n",
    );
    let e = d.fails(&["define", &b]);
    assert!(e.contains("domain 'dup' already exists"), "{e}");
    let c = d.guest_xml(
        "other",
        "",
        "  <uuid>6a3c9b4e-8d1f-4f7a-9e2b-1c5d7e9f0a12</uuid>\n",
    );
    let e = d.fails(&["define", &c]);
    assert!(e.contains("'dup' is already defined with uuid"), "{e}");
    // Redefining with the same name and UUID updates it.
    let a = d.guest_xml(
        "dup",
        "",
        "  <uuid>6a3c9b4e-8d1f-4f7a-9e2b-1c5d7e9f0a12</uuid>\n",
    );
    d.ok(&["define", &a]);
    let list = d.ok(&["list", "--all", "--name"]);
    assert_eq!(list.trim(), "dup");

    let r = common::run_command(
        std::process::Command::new(common::vireo_bin()).args(["-c", "qemu:///system", "list"]),
        common::TIMEOUT,
    );
    assert_eq!(r.status.code(), Some(1));
    assert!(
        r.stderr.contains("unsupported connection URI"),
        "{}",
        r.describe()
    );
    let r = d.vireo(&["setmem", "dup", "12Q", "--config"]);
    assert!(
        !r.ok() && r.stderr.contains("unknown unit"),
        "{}",
        r.describe()
    );

    // Garbage on the socket gets JSON-RPC errors; the daemon keeps serving.
    let s = UnixStream::connect(d.socket()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |line: &str| {
        (&s).write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        serde_json::from_str::<serde_json::Value>(&reply).unwrap()
    };
    assert_eq!(ask("not json\n")["error"]["code"], -32700);
    assert_eq!(
        ask("{\"jsonrpc\":\"2.0\",\"id\":1}\n")["error"]["code"],
        -32600
    );
    assert_eq!(
        ask("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"nope\"}\n")["error"]["code"],
        -32601
    );
    let v = ask(
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"domain.start\",\"params\":{\"domain\":7}}\n",
    );
    assert_eq!(v["error"]["code"], -32602);
    assert_eq!(v["id"], 3);
    let v = ask("{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"domain.state\",\"params\":{\"domain\":\"dup\"}}\n");
    assert_eq!(v["result"]["state"], "shutoff");
    assert_eq!(v["id"], "x");

    // A second daemon on the same root refuses to start.
    let second = common::run_command(
        std::process::Command::new(env!("CARGO_BIN_EXE_vireod"))
            .arg("--root")
            .arg(&d.root),
        common::TIMEOUT,
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(
        second.stderr.contains("another vireod (pid"),
        "{}",
        second.describe()
    );
    d.ok(&["list", "--all"]);
}

#[test]
fn no_daemon_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("vireod-nodaemon-{}", std::process::id()));
    let r = common::run_command(
        std::process::Command::new(common::vireo_bin())
            .arg("-c")
            .arg(format!("vireo:///system?root={}", dir.display()))
            .arg("list"),
        common::TIMEOUT,
    );
    assert_eq!(r.status.code(), Some(1));
    assert!(
        r.stderr.contains("cannot connect to vireod") && r.stderr.contains("is vireod running?"),
        "{}",
        r.describe()
    );
}
