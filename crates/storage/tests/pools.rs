//! Pool lifecycle through PoolManager: definitions on disk, state across
//! manager restarts, the default pool, errors.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use vireo_storage::{
    ErrorKind, PoolDef, PoolFilter, PoolManager, PoolState, VolCreateAs, DEFAULT_POOL,
};

fn all() -> PoolFilter {
    PoolFilter {
        active: None,
        autostart: None,
    }
}

fn active() -> PoolFilter {
    PoolFilter {
        active: Some(true),
        autostart: None,
    }
}

#[test]
fn default_pool_is_created_on_first_use_only() {
    let t = TempDir::new("default");
    let m = t.manager();
    let rows = m.list_pools(active());
    assert_eq!(rows.len(), 1);
    let d = &rows[0];
    assert_eq!(d.name, DEFAULT_POOL);
    assert_eq!(d.state, PoolState::Running);
    assert!(d.autostart);
    assert_eq!(d.target, t.join("lib/images"));
    let mode = std::fs::metadata(t.join("lib/images"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o711);
    // Stored as libvirt XML, autostart as libvirt's symlink.
    let xml = std::fs::read_to_string(t.join("etc/storage/default.xml")).unwrap();
    let def = PoolDef::from_xml(&xml).unwrap();
    assert_eq!(def.target, t.join("lib/images"));
    assert_eq!(
        std::fs::read_link(t.join("etc/storage/autostart/default.xml")).unwrap(),
        std::path::PathBuf::from("../default.xml")
    );
    let cap = d.capacity.expect("active pool has a capacity");
    assert!(cap > 0 && d.available.unwrap() <= cap);
    // Once removed by the user it stays removed.
    m.destroy(DEFAULT_POOL).unwrap();
    m.undefine(DEFAULT_POOL).unwrap();
    drop(m);
    let m = t.manager();
    assert!(m.list_pools(all()).is_empty());
    // ... unless asked for explicitly (virt-install's behaviour).
    m.ensure_default_pool().unwrap();
    assert_eq!(m.pool_info(DEFAULT_POOL).unwrap().state, PoolState::Running);
    // No temporary files left behind by the atomic writes.
    for e in std::fs::read_dir(t.join("etc/storage")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".tmp"), "leftover {n}");
    }
}

#[test]
fn define_build_start_destroy_undefine() {
    let t = TempDir::new("life");
    let m = t.manager();
    let target = t.join("pools/p1");
    let def = m.define_as("p1", "dir", target.to_str().unwrap()).unwrap();
    assert_eq!(def.target, target);
    let info = m.pool_info("p1").unwrap();
    assert_eq!(info.state, PoolState::Inactive);
    assert!(!info.autostart && info.persistent && info.capacity.is_none());
    // By uuid too.
    assert_eq!(m.lookup_pool(&def.uuid.to_string()).unwrap(), "p1");

    // Not built: start fails clearly, start --build works.
    let e = m.start("p1", false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OperationInvalid);
    assert!(e.to_string().contains("does not exist"), "{e}");
    m.build("p1").unwrap();
    assert!(target.is_dir());
    m.start("p1", false).unwrap();
    let e = m.start("p1", false).unwrap_err().to_string();
    assert!(e.contains("already active"), "{e}");
    let e = m.build("p1").unwrap_err().to_string();
    assert!(e.contains("already active"), "{e}");

    let info = m.pool_info("p1").unwrap();
    assert_eq!(info.state, PoolState::Running);
    assert!(info.capacity.unwrap() > 0);
    let xml = m.pool_dumpxml("p1", false).unwrap();
    assert!(
        !xml.contains("<capacity unit='bytes'>0</capacity>"),
        "{xml}"
    );
    let inactive_xml = m.pool_dumpxml("p1", true).unwrap();
    assert!(inactive_xml.contains("<capacity unit='bytes'>0</capacity>"));
    assert_eq!(PoolDef::from_xml(&xml).unwrap(), def);

    // A volume, then destroy: the data stays, volume ops are refused.
    m.vol_create_as("p1", "keep.raw", 1 << 20, &VolCreateAs::default())
        .unwrap();
    let e = m.undefine("p1").unwrap_err().to_string();
    assert!(e.contains("still active"), "{e}");
    m.destroy("p1").unwrap();
    assert!(target.join("keep.raw").exists());
    for e in [
        m.vol_list("p1", false).unwrap_err(),
        m.vol_info("p1", "keep.raw").unwrap_err(),
        m.vol_create_as("p1", "x", 1, &VolCreateAs::default())
            .unwrap_err(),
        m.refresh("p1").unwrap_err(),
        m.destroy("p1").unwrap_err(),
    ] {
        assert_eq!(e.to_string(), "storage pool 'p1' is not active");
        assert_eq!(e.kind(), ErrorKind::OperationInvalid);
    }
    // Started again, the volume is found by the scan.
    m.start("p1", false).unwrap();
    let v = m.vol_info("p1", "keep.raw").unwrap();
    assert_eq!((v.format.as_str(), v.capacity), ("raw", 1 << 20));
    m.destroy("p1").unwrap();
    m.undefine("p1").unwrap();
    assert!(!t.join("etc/storage/p1.xml").exists());
    assert!(target.join("keep.raw").exists(), "undefine keeps the files");
    let e = m.pool_info("p1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e
        .to_string()
        .contains("no storage pool with matching name 'p1'"));
}

#[test]
fn definition_conflicts_and_bad_input() {
    let t = TempDir::new("conflict");
    let m = t.manager();
    let a = t.join("a");
    m.define_as("a", "dir", a.to_str().unwrap()).unwrap();
    let e = m.define_as("a", "dir", "/elsewhere").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(
        e.to_string()
            .contains("pool 'a' is already defined with uuid"),
        "{e}"
    );
    let e = m
        .define_as("b", "dir", a.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("pool 'a' already uses target path"), "{e}");
    let uuid = m.pool_info("a").unwrap().uuid;
    let e = m
        .define_xml(&format!(
            "<pool type='dir'><name>c</name><uuid>{uuid}</uuid><target><path>/c</path></target></pool>"
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("pool 'a' already exists with uuid {uuid}")),
        "{e}"
    );
    // Same name and uuid: a redefinition.
    m.define_xml(&format!(
        "<pool type='dir'><name>a</name><uuid>{uuid}</uuid><target><path>{}</path></target></pool>",
        t.join("a2").display()
    ))
    .unwrap();
    assert_eq!(m.pool_info("a").unwrap().target, t.join("a2"));
    let e = m
        .define_as("d", "logical", "/dev/vg")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("storage pool type 'logical' is not supported"),
        "{e}"
    );
    let e = m.define_as("../x", "dir", "/x").unwrap_err().to_string();
    assert!(e.contains("invalid pool name"), "{e}");
    let e = m.define_as("e", "dir", "relative").unwrap_err().to_string();
    assert!(e.contains("must be absolute"), "{e}");
    assert!(m.define_xml("<pool type='dir'>").is_err());
}

#[test]
fn state_survives_a_manager_restart_and_autostart_after_reboot() {
    let t = TempDir::new("restart");
    let m = t.manager();
    for n in ["on", "off", "auto"] {
        m.define_as(n, "dir", t.join(n).to_str().unwrap()).unwrap();
        m.build(n).unwrap();
    }
    m.start("on", false).unwrap();
    m.set_autostart("auto", true).unwrap();
    m.set_autostart("default", false).unwrap();
    m.vol_create_as(
        "on",
        "v.qcow2",
        1 << 20,
        &VolCreateAs {
            format: Some("qcow2".into()),
            ..Default::default()
        },
    )
    .unwrap();
    drop(m);

    // Daemon restart: same state directory.
    let m = t.manager();
    assert!(m.warnings().is_empty(), "{:?}", m.warnings());
    let running: Vec<String> = m.list_pools(active()).into_iter().map(|p| p.name).collect();
    assert_eq!(running, ["default", "on"]);
    assert_eq!(m.vol_info("on", "v.qcow2").unwrap().format, "qcow2");
    let auto: Vec<String> = m
        .list_pools(PoolFilter {
            active: None,
            autostart: Some(true),
        })
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(auto, ["auto"]);
    drop(m);

    // Host reboot: the state directory (under /run) is gone.
    std::fs::remove_dir_all(t.join("run")).unwrap();
    let m = t.manager();
    assert!(m.list_pools(active()).is_empty());
    assert!(m.autostart_all().is_empty());
    let running: Vec<String> = m.list_pools(active()).into_iter().map(|p| p.name).collect();
    assert_eq!(running, ["auto"]);
}

#[test]
fn broken_definitions_are_skipped_with_a_warning() {
    let t = TempDir::new("broken");
    drop(t.manager());
    std::fs::write(t.join("etc/storage/bad.xml"), "<pool type='dir'><name>bad").unwrap();
    std::fs::write(
        t.join("etc/storage/other.xml"),
        "<pool type='dir'><name>mismatch</name><target><path>/m</path></target></pool>",
    )
    .unwrap();
    let m = t.manager();
    let w = m.warnings().join("\n");
    assert!(
        w.contains("bad.xml") && w.contains("malformed pool XML"),
        "{w}"
    );
    assert!(
        w.contains("other.xml") && w.contains("defines pool 'mismatch'"),
        "{w}"
    );
    assert_eq!(m.list_pools(all()).len(), 1);
}

#[test]
fn refresh_finds_new_files_and_stops_a_vanished_pool() {
    let t = TempDir::new("refresh");
    let m = t.manager();
    let dir = t.join("lib/images");
    std::fs::write(dir.join("outside.img"), vec![7u8; 4096]).unwrap();
    std::fs::write(dir.join(".hidden"), b"x").unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
    assert!(m.vol_list(DEFAULT_POOL, false).unwrap().is_empty());
    m.refresh(DEFAULT_POOL).unwrap();
    let names: Vec<String> = m
        .vol_list(DEFAULT_POOL, false)
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        names,
        ["outside.img"],
        "only regular, visible files are volumes"
    );
    assert_eq!(m.pool_info(DEFAULT_POOL).unwrap().volumes, 1);
    // A file removed behind our back disappears from vol-info.
    std::fs::remove_file(dir.join("outside.img")).unwrap();
    let e = m.vol_info(DEFAULT_POOL, "outside.img").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    std::fs::remove_dir_all(&dir).unwrap();
    let e = m.refresh(DEFAULT_POOL).unwrap_err().to_string();
    assert!(e.contains("was stopped"), "{e}");
    assert_eq!(
        m.pool_info(DEFAULT_POOL).unwrap().state,
        PoolState::Inactive
    );
    drop(m);
    // The stopped state is persistent.
    let m: PoolManager = t.manager();
    assert_eq!(
        m.pool_info(DEFAULT_POOL).unwrap().state,
        PoolState::Inactive
    );
}

#[test]
fn an_unusable_images_dir_is_a_warning_not_a_failure() {
    let t = TempDir::new("noimages");
    std::fs::create_dir_all(t.join("lib")).unwrap();
    std::fs::write(t.join("lib/images"), b"a file, not a directory").unwrap();
    let m = t.manager();
    let w = m.warnings().join("\n");
    assert!(
        w.contains("could not set up the 'default' pool") && w.contains("not a directory"),
        "{w}"
    );
    assert!(m.list_pools(active()).is_empty());
    drop(m);
    std::fs::remove_file(t.join("lib/images")).unwrap();
    let m = t.manager();
    assert!(m.warnings().is_empty());
    assert_eq!(m.pool_info(DEFAULT_POOL).unwrap().state, PoolState::Running);
}
