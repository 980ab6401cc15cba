//! `vireo-vmm` startup errors that need no KVM: bad `--config` files, conflicting flags,
//! bad socket paths. Each is one clear line on stderr, a non-zero status and, with
//! `--exit-file`, the same reason in the exit file.

mod common;

use std::process::Command;

use common::{test_guest, vmm, TempDir};
use serde_json::Value;

struct Out {
    code: Option<i32>,
    stderr: String,
}

fn run(args: &[&str]) -> Out {
    let out = Command::new(vmm()).args(args).output().unwrap();
    Out {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn exit_file(dir: &TempDir) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.path("exit.json")).unwrap()).unwrap()
}

#[test]
fn bad_config_files_are_reported_with_their_name() {
    let dir = TempDir::new("cfgerr");
    let exit = dir.path("exit.json");
    let exit = exit.to_str().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("missing.json", b"", "No such file or directory"),
        (
            "typo.json",
            b"{\"kernel\": \"/k\",\n \"memroy\": 1}",
            "unknown field `memroy`",
        ),
        ("broken.json", b"{\"kernel\": ", "truncated JSON"),
        (
            "list.json",
            b"[1, 2]",
            "invalid configuration: invalid type",
        ),
    ];
    for (name, content, why) in cases {
        let path = dir.path(name);
        if !content.is_empty() {
            std::fs::write(&path, content).unwrap();
        }
        let p = path.to_str().unwrap();
        let r = run(&["--config", p, "--exit-file", exit]);
        assert_eq!(r.code, Some(1), "{name}: {}", r.stderr);
        let line = format!("vireo: error: --config {p}: ");
        assert!(r.stderr.starts_with(&line), "{name}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{name}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{name}: {}", r.stderr);
        let e = exit_file(&dir);
        assert_eq!(e["status"], 1);
        assert_eq!(e["reason"], "error");
        assert!(e["detail"].as_str().unwrap().contains(why), "{e}");
        std::fs::remove_file(dir.path("exit.json")).unwrap();
    }
}

#[test]
fn config_conflicts_with_the_vm_flags() {
    let r = run(&["--config", "/x.json", "--memory", "1G"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("cannot be used with"), "{}", r.stderr);
    let r = run(&["--memory", "1G"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--kernel"), "{}", r.stderr);
    let r = run(&["--kernel", "/k", "--console", "socket:"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("console socket path is empty"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_socket_paths_are_refused() {
    let dir = TempDir::new("sockerr");
    let exit = dir.path("exit.json");
    let long = format!("/tmp/{}", "s".repeat(120));
    let r = run(&[
        "--kernel",
        test_guest(),
        "--api-socket",
        &long,
        "--exit-file",
        exit.to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with(&format!("vireo: error: --api-socket {long}: path too long")),
        "{}",
        r.stderr
    );
    assert_eq!(exit_file(&dir)["reason"], "error");

    let file = dir.path("not-a-socket");
    std::fs::write(&file, b"data").unwrap();
    let console = format!("socket:{}", file.display());
    let r = run(&["--kernel", test_guest(), "--console", &console]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("exists and is not a socket"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"data", "nothing lost");
}
