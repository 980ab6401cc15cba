//! Storage pools and volumes end to end: a real vireod with its own root, driven by the
//! `vireo` CLI's pool-* and vol-* verbs, with qemu-img (when installed) and the bytes on
//! disk as judges.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_command, Daemon, TIMEOUT};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

fn have_qemu_img() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `qemu-img info --output json`, or None without qemu-img.
fn qemu_info(path: &Path) -> Option<Value> {
    if !have_qemu_img() {
        return None;
    }
    let r = run_command(
        Command::new("qemu-img")
            .args(["info", "--output", "json", "-U"])
            .arg(path),
        TIMEOUT,
    );
    assert!(r.ok(), "{}", r.describe());
    Some(json(&r.stdout))
}

/// `qemu-img check` must find no error (nothing to check without qemu-img).
fn qemu_check(path: &Path) {
    if !have_qemu_img() {
        eprintln!(
            "note: qemu-img not installed; {} not checked",
            path.display()
        );
        return;
    }
    let r = run_command(Command::new("qemu-img").arg("check").arg(path), TIMEOUT);
    assert!(
        r.ok(),
        "qemu-img check {}:\n{}",
        path.display(),
        r.describe()
    );
    assert!(r.stdout.contains("No errors were found"), "{}", r.stdout);
}

fn sha256(path: &Path) -> String {
    let r = run_command(Command::new("sha256sum").arg(path), TIMEOUT);
    assert!(r.ok(), "{}", r.describe());
    r.stdout.split_whitespace().next().unwrap().to_string()
}

/// Bytes that are not all alike (a simple LCG): a copy that shifts or drops any shows.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// Rows of a virsh table (after the header and rule), split on whitespace.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn pool<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array().unwrap().iter().find(|p| p["name"] == name)
}

#[test]
fn pools_lifecycle_and_autostart_across_restarts() {
    let mut d = Daemon::start("pools");
    // The default pool exists and runs from the start, in the images directory.
    let list = json(&d.ok(&["pool-list", "--all", "--output", "json"]));
    let def = pool(&list, "default").expect("default pool");
    assert_eq!(def["state"], "running");
    assert_eq!(def["autostart"], true);
    let images = d.path("var/lib/vireo/images");
    assert_eq!(def["target"], images.to_str().unwrap());
    assert!(images.is_dir());

    let p1 = d.path("pools/p1");
    let out = d.ok(&[
        "pool-define-as",
        "p1",
        "dir",
        "--target",
        p1.to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "Pool p1 defined");
    let e = d.fails(&["pool-start", "p1"]);
    assert!(e.contains("does not exist"), "{e}");
    assert_eq!(d.ok(&["pool-build", "p1"]).trim(), "Pool p1 built");
    assert!(p1.is_dir());
    assert_eq!(d.ok(&["pool-start", "p1"]).trim(), "Pool p1 started");
    let e = d.fails(&["pool-start", "p1"]);
    assert!(e.contains("already active"), "{e}");
    assert_eq!(
        d.ok(&["pool-autostart", "p1"]).trim(),
        "Pool p1 marked as autostarted"
    );
    // p2: defined from XML, started with --build, not autostarted.
    let p2 = d.path("pools/p2");
    let xml = d.path("p2.xml");
    std::fs::write(
        &xml,
        format!(
            "<pool type='dir'>\n  <name>p2</name>\n  <target>\n    <path>{}</path>\n  </target>\n</pool>\n",
            p2.display()
        ),
    )
    .unwrap();
    let out = d.ok(&["pool-define", xml.to_str().unwrap()]);
    assert!(out.starts_with("Pool p2 defined from "), "{out}");
    d.ok(&["pool-start", "--build", "--pool", "p2"]);

    let table = d.ok(&["pool-list"]);
    assert_eq!(
        rows(&table),
        [
            ["default", "active", "yes"],
            ["p1", "active", "yes"],
            ["p2", "active", "no"]
        ],
        "{table}"
    );
    let details = d.ok(&["pool-list", "--details"]);
    assert!(
        details.lines().next().unwrap().contains("Persistent"),
        "{details}"
    );
    let info = d.ok(&["pool-info", "p1"]);
    assert!(
        info.contains("State:          running") || info.contains("State:      running"),
        "{info}"
    );
    let info = json(&d.ok(&["pool-info", "p1", "--output", "json"]));
    assert_eq!(info["volumes"], 0);
    assert!(info["capacity"].as_u64().unwrap() > 0);
    // By UUID too, as virsh.
    let uuid = info["uuid"].as_str().unwrap().to_string();
    assert!(d
        .ok(&["pool-dumpxml", &uuid])
        .contains(&format!("<path>{}</path>", p1.display())));

    // A file dropped into the directory appears after pool-refresh.
    std::fs::write(p1.join("dropped.img"), vec![7u8; 8192]).unwrap();
    assert!(!d.ok(&["vol-list", "p1"]).contains("dropped.img"));
    assert_eq!(d.ok(&["pool-refresh", "p1"]).trim(), "Pool p1 refreshed");
    let vols = d.ok(&["vol-list", "--pool", "p1"]);
    assert_eq!(
        rows(&vols),
        [["dropped.img", p1.join("dropped.img").to_str().unwrap()]],
        "{vols}"
    );

    // A daemon restart keeps pools as they were.
    d.kill9();
    d.spawn();
    assert_eq!(rows(&d.ok(&["pool-list"])).len(), 3);
    // A host reboot (run directory emptied): only autostart pools start.
    d.kill9();
    std::fs::remove_dir_all(d.path("run/vireo/storage")).unwrap();
    d.spawn();
    let list = json(&d.ok(&["pool-list", "--all", "--output", "json"]));
    assert_eq!(pool(&list, "default").unwrap()["state"], "running");
    assert_eq!(pool(&list, "p1").unwrap()["state"], "running");
    assert_eq!(pool(&list, "p2").unwrap()["state"], "inactive");
    assert_eq!(pool(&list, "p1").unwrap()["volumes"], 1);
    let inactive = d.ok(&["pool-list", "--inactive", "--name"]);
    assert_eq!(inactive.trim(), "p2");

    // Stop and forget p1; its directory and files stay.
    let e = d.fails(&["pool-undefine", "p1"]);
    assert!(e.contains("still active"), "{e}");
    d.ok(&["pool-autostart", "p1", "--disable"]);
    assert_eq!(d.ok(&["pool-destroy", "p1"]).trim(), "Pool p1 destroyed");
    let e = d.fails(&["vol-list", "p1"]);
    assert!(e.contains("not active"), "{e}");
    assert_eq!(
        d.ok(&["pool-undefine", "p1"]).trim(),
        "Pool p1 has been undefined"
    );
    assert!(p1.join("dropped.img").is_file());
    let list = json(&d.ok(&["pool-list", "--all", "--output", "json"]));
    assert!(pool(&list, "p1").is_none());
    d.kill9();
    d.spawn();
    let list = json(&d.ok(&["pool-list", "--all", "--output", "json"]));
    assert!(pool(&list, "p1").is_none(), "undefine is durable");
    assert_eq!(pool(&list, "p2").unwrap()["state"], "inactive");

    // Errors: one line each.
    let e = d.fails(&["pool-info", "nope"]);
    assert!(
        e.contains("no storage pool with matching name 'nope'"),
        "{e}"
    );
    let e = d.fails(&["pool-define-as", "p3", "logical", "--target", "/x"]);
    assert!(e.contains("logical"), "{e}");
    let e = d.fails(&["pool-define-as", "p3", "dir", "--target", "relative/dir"]);
    assert!(e.contains("relative/dir"), "{e}");
    let e = d.fails(&["pool-define-as", "p2", "dir", "--target", "/elsewhere"]);
    assert!(e.contains("p2"), "{e}");
    let bad = d.path("bad.xml");
    std::fs::write(&bad, "<pool type='dir'><name>x</name>").unwrap();
    d.fails(&["pool-define", bad.to_str().unwrap()]);
}

#[test]
fn volumes_create_clone_resize_transfer_delete() {
    let d = Daemon::start("volumes");
    let dir = d.path("pool");
    d.ok(&[
        "pool-define-as",
        "vp",
        "dir",
        "--target",
        dir.to_str().unwrap(),
    ]);
    d.ok(&["pool-start", "vp", "--build"]);
    let path = |n: &str| dir.join(n);

    // raw, with virsh's units.
    assert_eq!(
        d.ok(&["vol-create-as", "vp", "data.raw", "16M"]).trim(),
        "Vol data.raw created"
    );
    assert_eq!(std::fs::metadata(path("data.raw")).unwrap().len(), 16 << 20);
    if let Some(i) = qemu_info(&path("data.raw")) {
        assert_eq!(i["format"], "raw");
    }
    // qcow2, and qcow2 with preallocated metadata.
    d.ok(&[
        "vol-create-as",
        "vp",
        "base.qcow2",
        "1GiB",
        "--format",
        "qcow2",
    ]);
    d.ok(&[
        "vol-create-as",
        "vp",
        "meta.qcow2",
        "64M",
        "--format",
        "qcow2",
        "--prealloc-metadata",
    ]);
    for v in ["base.qcow2", "meta.qcow2"] {
        qemu_check(&path(v));
    }
    if let Some(i) = qemu_info(&path("base.qcow2")) {
        assert_eq!(i["format"], "qcow2");
        assert_eq!(i["virtual-size"], 1u64 << 30);
    }
    let meta = json(&d.ok(&["vol-info", "--pool", "vp", "meta.qcow2", "--output", "json"]));
    let base = json(&d.ok(&[
        "vol-info",
        path("base.qcow2").to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert!(
        meta["physical"].as_u64() > base["physical"].as_u64(),
        "metadata preallocation maps every cluster: {meta} vs {base}"
    );

    // Content in the base, then a linked clone reads through to it.
    let content = pattern((3 << 20) + 123, 1); // several stream frames, not a whole one
    let src = d.path("content.bin");
    std::fs::write(&src, &content).unwrap();
    d.ok(&[
        "vol-upload",
        "--pool",
        "vp",
        "data.raw",
        src.to_str().unwrap(),
    ]);
    let back = d.path("back.bin");
    d.ok(&[
        "vol-download",
        "--pool",
        "vp",
        "data.raw",
        back.to_str().unwrap(),
        "--length",
        &content.len().to_string(),
    ]);
    assert_eq!(
        sha256(&back),
        sha256(&src),
        "upload then download gives the same bytes"
    );
    // The whole volume: the uploaded bytes, then the zeros of the rest.
    d.ok(&[
        "vol-download",
        path("data.raw").to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    let whole = std::fs::read(&back).unwrap();
    assert_eq!(whole.len(), 16 << 20);
    assert!(whole[..content.len()] == content[..]);
    assert!(whole[content.len()..].iter().all(|b| *b == 0));
    // At an offset.
    let small = pattern(1000, 2);
    std::fs::write(&src, &small).unwrap();
    d.ok(&[
        "vol-upload",
        "--pool",
        "vp",
        "data.raw",
        src.to_str().unwrap(),
        "--offset",
        "4096",
    ]);
    let on_disk = std::fs::read(path("data.raw")).unwrap();
    assert!(on_disk[4096..5096] == small[..]);
    assert!(on_disk[..4096] == content[..4096]);

    d.ok(&[
        "vol-create-as",
        "vp",
        "linked.qcow2",
        "1G",
        "--format",
        "qcow2",
        "--backing-vol",
        "base.qcow2",
        "--backing-vol-format",
        "qcow2",
    ]);
    qemu_check(&path("linked.qcow2"));
    if let Some(i) = qemu_info(&path("linked.qcow2")) {
        assert_eq!(i["backing-filename"], path("base.qcow2").to_str().unwrap());
        assert_eq!(i["backing-filename-format"], "qcow2");
    }
    let info = d.ok(&["vol-info", "linked.qcow2", "--pool", "vp"]);
    assert!(
        info.contains(&format!("Backing store: {}", path("base.qcow2").display())),
        "{info}"
    );
    let xml = d.ok(&["vol-dumpxml", "--pool", "vp", "linked.qcow2"]);
    assert!(xml.contains("<backingStore>"), "{xml}");
    assert!(xml.contains("<format type='qcow2'/>"), "{xml}");
    // The base cannot go while the clone needs it.
    let e = d.fails(&["vol-delete", "--pool", "vp", "base.qcow2"]);
    assert!(e.contains("backing file"), "{e}");

    // vol-clone: a standalone copy with the same guest-visible bytes.
    assert_eq!(
        d.ok(&["vol-clone", "--pool", "vp", "data.raw", "copy.raw"])
            .trim(),
        "Vol copy.raw cloned from data.raw"
    );
    assert_eq!(sha256(&path("copy.raw")), sha256(&path("data.raw")));
    d.ok(&[
        "vol-clone",
        path("linked.qcow2").to_str().unwrap(),
        "flat.qcow2",
    ]);
    qemu_check(&path("flat.qcow2"));
    if let Some(i) = qemu_info(&path("flat.qcow2")) {
        assert!(
            i.get("backing-filename").is_none(),
            "a clone is standalone: {i}"
        );
    }

    // vol-resize: absolute, --delta, and shrinking only with --shrink.
    let out = d.ok(&["vol-resize", "--pool", "vp", "copy.raw", "32M"]);
    assert!(out.contains("successfully changed to 32M"), "{out}");
    assert_eq!(std::fs::metadata(path("copy.raw")).unwrap().len(), 32 << 20);
    d.ok(&["vol-resize", "--pool", "vp", "base.qcow2", "1G", "--delta"]);
    let base = json(&d.ok(&["vol-info", "--pool", "vp", "base.qcow2", "--output", "json"]));
    assert_eq!(base["capacity"], 2u64 << 30);
    if let Some(i) = qemu_info(&path("base.qcow2")) {
        assert_eq!(i["virtual-size"], 2u64 << 30);
    }
    qemu_check(&path("base.qcow2"));
    let e = d.fails(&["vol-resize", "--pool", "vp", "copy.raw", "1M"]);
    assert!(e.contains("--shrink"), "{e}");
    d.ok(&["vol-resize", "--pool", "vp", "copy.raw", "1M", "--shrink"]);
    assert_eq!(std::fs::metadata(path("copy.raw")).unwrap().len(), 1 << 20);

    // Listings.
    let list = d.ok(&["vol-list", "vp"]);
    let names: Vec<String> = rows(&list).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(
        names,
        [
            "base.qcow2",
            "copy.raw",
            "data.raw",
            "flat.qcow2",
            "linked.qcow2",
            "meta.qcow2"
        ],
        "{list}"
    );
    let details = d.ok(&["vol-list", "vp", "--details"]);
    assert!(
        details
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "copy.raw",
                    path("copy.raw").to_str().unwrap(),
                    "file",
                    "1.00",
                    "MiB",
                    "1.00",
                    "MiB"
                ]),
        "{details}"
    );
    let vols = json(&d.ok(&["vol-list", "vp", "--output", "json"]));
    assert_eq!(vols.as_array().unwrap().len(), 6);
    assert_eq!(
        d.ok(&["vol-path", "--pool", "vp", "data.raw"]).trim(),
        path("data.raw").to_str().unwrap()
    );

    // vol-delete, by name and by path.
    assert_eq!(
        d.ok(&["vol-delete", "--pool", "vp", "linked.qcow2"]).trim(),
        "Vol linked.qcow2 deleted"
    );
    assert!(!path("linked.qcow2").exists());
    d.ok(&["vol-delete", path("base.qcow2").to_str().unwrap()]);
    assert!(!path("base.qcow2").exists());
    assert!(!d.ok(&["vol-list", "vp"]).contains("base.qcow2"));

    // Errors: one clear line and status 1 each; nothing changed on disk.
    let e = d.fails(&["vol-create-as", "nope", "x.raw", "1M"]);
    assert!(
        e.contains("no storage pool with matching name 'nope'"),
        "{e}"
    );
    let e = d.fails(&["vol-create-as", "vp", "data.raw", "1M"]);
    assert!(e.contains("'data.raw' already exists"), "{e}");
    assert_eq!(std::fs::metadata(path("data.raw")).unwrap().len(), 16 << 20);
    let e = d.fails(&["vol-create-as", "vp", "x.raw", "10Q"]);
    assert!(e.contains("unknown unit 'Q'"), "{e}");
    let e = d.fails(&["vol-create-as", "vp", "x.raw", "lots"]);
    assert!(e.contains("lots"), "{e}");
    let e = d.fails(&["vol-create-as", "vp", "x.img", "1M", "--format", "vmdk2"]);
    assert!(e.contains("vmdk2"), "{e}");
    let e = d.fails(&["vol-create-as", "vp", "../escape", "1M"]);
    assert!(e.contains("'/'"), "{e}");
    let e = d.fails(&["vol-info", "--pool", "vp", "missing.raw"]);
    assert!(
        e.contains("no storage vol with matching name 'missing.raw'"),
        "{e}"
    );
    let e = d.fails(&["vol-info", "/no/such/volume"]);
    assert!(e.contains("/no/such/volume"), "{e}");
    let e = d.fails(&["vol-upload", "--pool", "vp", "data.raw", "/no/such/file"]);
    assert!(e.contains("/no/such/file"), "{e}");
    let e = d.fails(&[
        "vol-upload",
        "--pool",
        "vp",
        "data.raw",
        src.to_str().unwrap(),
        "--offset",
        "999999999999",
    ]);
    assert!(e.contains("beyond the end"), "{e}");
    assert!(!dir.join("x.raw").exists() && !dir.join("x.img").exists());
    // The connection-level protocol survived all of that: the daemon still answers.
    d.ok(&["pool-info", "vp"]);
}

/// A domain's disks in the pool go with `undefine --remove-all-storage`, through the pool.
#[test]
fn undefine_removes_pool_volumes_through_the_pool() {
    let d = Daemon::start("undefine-vols");
    d.ok(&[
        "vol-create-as",
        "default",
        "vm.qcow2",
        "64M",
        "--format",
        "qcow2",
    ]);
    d.ok(&[
        "vol-create-as",
        "default",
        "base.qcow2",
        "64M",
        "--format",
        "qcow2",
    ]);
    d.ok(&[
        "vol-create-as",
        "default",
        "top.qcow2",
        "64M",
        "--format",
        "qcow2",
        "--backing-vol",
        "base.qcow2",
    ]);
    let images = d.path("var/lib/vireo/images");
    let disk = |name: &str, file: &str| {
        d.guest_xml(
            name,
            "vtg.action=halt",
            &format!(
                "  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n",
                images.join(file).display()
            ),
        )
    };
    let xml = disk("withvol", "vm.qcow2");
    d.ok(&["define", &xml]);
    let out = d.ok(&["undefine", "withvol", "--remove-all-storage"]);
    assert!(out.contains("vm.qcow2"), "{out}");
    assert!(!images.join("vm.qcow2").exists());
    // The pool knows at once (no pool-refresh needed).
    let vols = d.ok(&["vol-list", "default"]);
    assert!(!vols.contains("vm.qcow2"), "{vols}");

    // A volume another volume is backed by is refused, and the definition is kept.
    let xml = disk("onbase", "base.qcow2");
    d.ok(&["define", &xml]);
    let e = d.fails(&["undefine", "onbase", "--remove-all-storage"]);
    assert!(
        e.contains("backing file") && e.contains("definition kept"),
        "{e}"
    );
    assert!(images.join("base.qcow2").exists());
    assert!(d.ok(&["list", "--all", "--name"]).contains("onbase"));
}

/// `vireo install --disk size=N` creates NAME.qcow2 in the default pool.
#[test]
fn install_creates_a_volume_in_the_default_pool() {
    let d = Daemon::start("install-vol");
    let kernel = common::test_guest();
    let r = d.vireo(&[
        "install",
        "--name",
        "inst",
        "--memory",
        "32",
        "--disk",
        "size=0.0625",
        "--boot",
        &format!("kernel={kernel},kernel_args=console=ttyS0 vtg.action=halt"),
        "--noautoconsole",
    ]);
    // The domain is defined with the new volume as its disk (and started where KVM is).
    assert!(
        r.stdout.contains("Domain 'inst' defined"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr
            .contains("created volume 'inst.qcow2' in pool 'default'"),
        "{}",
        r.describe()
    );
    let vol = json(&d.ok(&[
        "vol-info",
        "--pool",
        "default",
        "inst.qcow2",
        "--output",
        "json",
    ]));
    assert_eq!(vol["format"], "qcow2");
    assert_eq!(vol["capacity"], 64u64 << 20);
    let path = PathBuf::from(vol["path"].as_str().unwrap());
    assert_eq!(path, d.path("var/lib/vireo/images/inst.qcow2"));
    if r.ok() {
        // Running on its new disk: the volume is protected until the domain stops.
        assert!(d.state("inst").starts_with("running"));
        let e = d.fails(&["vol-delete", "--pool", "default", "inst.qcow2"]);
        assert!(e.contains("in use by running domain 'inst'"), "{e}");
        d.ok(&["destroy", "inst"]);
        d.wait_state("inst", "shut off");
    } else {
        let kvm = common::kvm_or_skip("install_creates_a_volume_in_the_default_pool (start)");
        assert!(!kvm, "install failed with KVM available:\n{}", r.describe());
    }
    qemu_check(&path);
    let xml = d.ok(&["dumpxml", "inst"]);
    assert!(
        xml.contains(&format!("<source file='{}'/>", path.display())),
        "{xml}"
    );
    assert!(xml.contains("type='qcow2'"), "{xml}");
    // A second install with the same name prefix gets the next free volume name.
    let r = d.vireo(&[
        "install",
        "--name",
        "inst",
        "--disk",
        "size=0.0625",
        "--boot",
        &format!("kernel={kernel}"),
        "--print-xml",
    ]);
    assert!(r.ok(), "{}", r.describe());
    assert!(r.stdout.contains("inst-1.qcow2"), "{}", r.describe());
    assert!(
        !d.path("var/lib/vireo/images/inst-1.qcow2").exists(),
        "--print-xml creates nothing"
    );
    let e = d.fails(&[
        "install",
        "--name",
        "other",
        "--disk",
        "size=lots",
        "--boot",
        &format!("kernel={kernel}"),
    ]);
    assert!(e.contains("size='lots'"), "{e}");
}

/// Files a running domain uses — its kernel (a pool volume here), its disk and the disk's
/// backing volume — cannot be deleted, resized or overwritten, also after a daemon restart;
/// reading them is fine.
#[test]
fn volumes_in_use_by_a_running_domain_are_protected() {
    if !common::kvm_or_skip("volumes_in_use_by_a_running_domain_are_protected") {
        return;
    }
    let mut d = Daemon::start("in-use");
    let guest = std::fs::read(common::test_guest()).unwrap();
    d.ok(&[
        "vol-create-as",
        "default",
        "guest.elf",
        &format!("{}b", guest.len()),
    ]);
    d.ok(&[
        "vol-upload",
        "--pool",
        "default",
        "guest.elf",
        common::test_guest(),
    ]);
    let kernel = d
        .ok(&["vol-path", "--pool", "default", "guest.elf"])
        .trim()
        .to_string();
    // The volume holds the guest (raw volumes are whole 512-byte sectors: zeros follow).
    let holds_guest = |bytes: &[u8]| {
        bytes.len() >= guest.len()
            && bytes.len() - guest.len() < 512
            && bytes[..guest.len()] == guest[..]
            && bytes[guest.len()..].iter().all(|b| *b == 0)
    };
    assert!(holds_guest(&std::fs::read(&kernel).unwrap()));
    // A linked clone as the domain's disk: the clone and its backing volume are in use.
    d.ok(&[
        "vol-create-as",
        "default",
        "base.qcow2",
        "16M",
        "--format",
        "qcow2",
    ]);
    d.ok(&[
        "vol-create-as",
        "default",
        "top.qcow2",
        "16M",
        "--format",
        "qcow2",
        "--backing-vol",
        "base.qcow2",
    ]);
    let top = d.ok(&["vol-path", "--pool", "default", "top.qcow2"]);
    let xml = d.path("vm.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='kvm'>\n  <name>vm</name>\n  <memory unit='MiB'>32</memory>\n  <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64'>hvm</type>\n    <kernel>{kernel}</kernel>\n    <cmdline>console=ttyS0 vtg.quick=1 vtg.action=halt</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n",
            top.trim()
        ),
    )
    .unwrap();
    d.ok(&["define", xml.to_str().unwrap()]);
    d.ok(&["start", "vm"]);
    d.wait_console("vm", "vtg: action halt");

    let check_refused = |d: &Daemon| {
        let e = d.fails(&["vol-delete", "--pool", "default", "guest.elf"]);
        assert!(e.contains("in use by running domain 'vm'"), "{e}");
        let e = d.fails(&["vol-resize", "--pool", "default", "guest.elf", "1M"]);
        assert!(e.contains("in use by running domain 'vm'"), "{e}");
        let e = d.fails(&["vol-upload", &kernel, "/dev/null"]);
        assert!(e.contains("in use by running domain 'vm'"), "{e}");
        for v in ["top.qcow2", "base.qcow2"] {
            let e = d.fails(&["vol-resize", "--pool", "default", v, "32M"]);
            assert!(e.contains("in use by running domain 'vm'"), "{v}: {e}");
            let e = d.fails(&["vol-delete", "--pool", "default", v]);
            assert!(e.contains("in use by running domain 'vm'"), "{v}: {e}");
        }
        assert!(
            holds_guest(&std::fs::read(&kernel).unwrap()),
            "the file is untouched"
        );
    };
    check_refused(&d);
    let copy = d.path("copy.elf");
    d.ok(&["vol-download", &kernel, copy.to_str().unwrap()]);
    assert!(holds_guest(&std::fs::read(&copy).unwrap()));

    // A restarted daemon re-attaches to the VM and protects its files again.
    d.kill9();
    d.spawn();
    assert!(d.state("vm").starts_with("running"));
    check_refused(&d);

    d.ok(&["destroy", "vm"]);
    d.wait_state("vm", "shut off");
    assert_eq!(
        d.ok(&["vol-delete", "--pool", "default", "guest.elf"])
            .trim(),
        "Vol guest.elf deleted"
    );
    assert!(!Path::new(&kernel).exists());
    d.ok(&["vol-resize", "--pool", "default", "top.qcow2", "32M"]);
    qemu_check(Path::new(top.trim()));
    d.ok(&["vol-delete", "--pool", "default", "top.qcow2"]);
    d.ok(&["vol-delete", "--pool", "default", "base.qcow2"]);
}

/// Raw socket: streams that break the framing are answered with `invalid_request` and the
/// connection is closed; an aborted upload is reported; the daemon keeps serving.
#[test]
fn malformed_upload_streams_are_refused() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;

    let d = Daemon::start("streams");
    d.ok(&["vol-create-as", "default", "v.raw", "1M"]);
    let request = |id: u32| {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"vol.upload\",\"params\":{{\"pool\":\"default\",\"vol\":\"v.raw\"}}}}\n"
        )
    };
    let read_json = |r: &mut BufReader<UnixStream>| {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        json(&line)
    };
    for (frames, what) in [
        (&b"abc\n"[..], "bad stream frame header"),
        (&b"2000000\n"[..], "larger than"),
        (&b"10\nshort"[..], "middle of a stream frame"),
    ] {
        let s = UnixStream::connect(d.socket()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        (&s).write_all(request(1).as_bytes()).unwrap();
        assert_eq!(read_json(&mut r)["result"]["stream"], true);
        (&s).write_all(frames).unwrap();
        if what == "middle of a stream frame" {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let v = read_json(&mut r);
        assert_eq!(v["id"], 1);
        assert_eq!(v["error"]["data"]["kind"], "invalid_request", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(what),
            "{v}"
        );
        // Closed: nothing more comes.
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    // An aborted upload: the bytes before the abort are written, the error says why, and
    // the connection stays usable.
    let s = UnixStream::connect(d.socket()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    (&s).write_all(request(2).as_bytes()).unwrap();
    assert_eq!(read_json(&mut r)["result"]["stream"], true);
    (&s).write_all(b"4\nabcdabort\n").unwrap();
    let v = read_json(&mut r);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("aborted"),
        "{v}"
    );
    (&s).write_all(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"vol.info\",\"params\":{\"pool\":\"default\",\"vol\":\"v.raw\"}}\n")
        .unwrap();
    let v = read_json(&mut r);
    assert_eq!(v["result"]["capacity"], 1 << 20, "{v}");
    let on_disk = std::fs::read(d.path("var/lib/vireo/images/v.raw")).unwrap();
    assert!(on_disk.starts_with(b"abcd"));
    assert_eq!(on_disk.len(), 1 << 20);
    d.ok(&["vol-list", "default"]);
}
