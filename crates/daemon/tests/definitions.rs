//! Persistent definitions through the CLI: survive daemon restarts, `edit`, `undefine
//! --remove-all-storage`, `domblklist`. Needs no KVM.

mod common;

use std::process::Command;

use common::{run_command, Daemon, TIMEOUT};

fn disk_xml(d: &Daemon, name: &str, image: &std::path::Path) -> String {
    d.guest_xml(
        name,
        "vtg.action=halt",
        &format!(
            "  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n",
            image.display()
        ),
    )
}

#[test]
fn definitions_survive_restarts_and_storage_goes_with_undefine() {
    let mut d = Daemon::start("definitions");
    let image = d.path("disk.img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let xml = disk_xml(&d, "withdisk", &image);
    d.ok(&["define", &xml]);
    let plain = d.guest_xml("plain", "vtg.action=halt", "");
    d.ok(&["define", &plain]);
    let before = d.ok(&["dumpxml", "withdisk"]);

    let blk = d.ok(&["domblklist", "withdisk"]);
    let rows: Vec<Vec<&str>> = blk
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["Target", "Source"], "{blk}");
    assert_eq!(rows[2], ["vda", image.to_str().unwrap()], "{blk}");
    let json: serde_json::Value =
        serde_json::from_str(&d.ok(&["domblklist", "withdisk", "--output", "json"])).unwrap();
    assert_eq!(json[0]["target"], "vda");

    // Restart: same definitions, same XML, same UUIDs.
    let uuids = d.ok(&["list", "--all", "--uuid"]);
    d.kill9();
    d.spawn();
    assert_eq!(d.ok(&["list", "--all", "--uuid"]), uuids);
    assert_eq!(d.ok(&["dumpxml", "withdisk"]), before);
    assert!(
        d.log().contains("2 domain definitions loaded"),
        "{}",
        d.log()
    );

    // undefine --remove-all-storage deletes the image and the definition.
    let out = d.ok(&["undefine", "withdisk", "--remove-all-storage"]);
    assert!(
        out.contains(&format!("Volume '{}' removed.", image.display())),
        "{out}"
    );
    assert!(
        out.contains("Domain 'withdisk' has been undefined"),
        "{out}"
    );
    assert!(!image.exists());
    assert!(!d.path("etc/vireo/domains/withdisk.xml").exists());
    assert_eq!(d.ok(&["list", "--all", "--name"]).trim(), "plain");
}

fn edit(d: &Daemon, domain: &str, editor: &str) -> common::Run {
    run_command(
        Command::new(common::vireo_bin())
            .args(["-c", &d.uri, "edit", domain])
            .env("EDITOR", editor)
            .env_remove("VISUAL"),
        TIMEOUT,
    )
}

#[test]
fn edit_saves_valid_changes_only() {
    let d = Daemon::start("edit");
    let xml = d.guest_xml("ed", "vtg.action=halt", "");
    d.ok(&["define", &xml]);
    let original = d.ok(&["dumpxml", "ed"]);

    let r = edit(&d, "ed", "true");
    assert!(r.ok(), "{}", r.describe());
    assert!(
        r.stdout.contains("XML configuration not changed"),
        "{}",
        r.describe()
    );

    let r = edit(
        &d,
        "ed",
        "sed -i -e 's/vtg.action=halt/vtg.action=poweroff/'",
    );
    assert!(r.ok(), "{}", r.describe());
    assert!(
        r.stdout.contains("Domain 'ed' XML configuration edited."),
        "{}",
        r.describe()
    );
    let edited = d.ok(&["dumpxml", "ed"]);
    assert!(edited.contains("vtg.action=poweroff"), "{edited}");
    let on_disk = std::fs::read_to_string(d.path("etc/vireo/domains/ed.xml")).unwrap();
    assert!(on_disk.contains("vtg.action=poweroff"));

    // Broken XML: an error, and the definition stays as it was.
    let r = edit(&d, "ed", "sed -i -e 's/<\\/domain>//'");
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr.contains("definition unchanged"),
        "{}",
        r.describe()
    );
    assert_eq!(d.ok(&["dumpxml", "ed"]), edited);
    assert_ne!(edited, original);
}
