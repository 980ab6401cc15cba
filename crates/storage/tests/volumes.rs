//! Volumes: real bytes on disk and qemu-img's verdicts on what vireo
//! creates (skipped with a printed reason when qemu-img is missing).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;

use common::*;
use vireo_storage::{ErrorKind, ResizeFlags, VolCreateAs, VolumeDef, DEFAULT_POOL as P};

fn qcow2() -> VolCreateAs {
    VolCreateAs {
        format: Some("qcow2".into()),
        ..Default::default()
    }
}

fn linked(backing: &str) -> VolCreateAs {
    VolCreateAs {
        format: Some("qcow2".into()),
        backing_vol: Some(backing.into()),
        ..Default::default()
    }
}

#[test]
fn raw_and_qcow2_volumes_pass_qemu_img() {
    if !have_qemu_img() {
        return;
    }
    let t = TempDir::new("create");
    let m = t.manager();
    let raw = m
        .vol_create_as(P, "disk.raw", 64 << 20, &VolCreateAs::default())
        .unwrap();
    assert_eq!(raw.path, t.join("lib/images/disk.raw"));
    assert_eq!(raw.key, raw.path.to_string_lossy());
    assert_eq!((raw.format.as_str(), raw.capacity), ("raw", 64 << 20));
    let md = std::fs::metadata(&raw.path).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert!(raw.allocation < 1 << 20, "sparse: {}", raw.allocation);
    let qi = qemu_info(&raw.path);
    assert_eq!(qi["format"], "raw");
    assert_eq!(qi["virtual-size"], 64u64 << 20);

    let q = m.vol_create_as(P, "disk.qcow2", 1 << 30, &qcow2()).unwrap();
    assert_eq!((q.format.as_str(), q.capacity), ("qcow2", 1 << 30));
    assert!(q.physical < 1 << 20, "a new qcow2 is small: {}", q.physical);
    assert_qemu_clean(&q.path);
    let qi = qemu_info(&q.path);
    assert_eq!(qi["format"], "qcow2");
    assert_eq!(qi["virtual-size"], 1u64 << 30);
    assert_eq!(qi["format-specific"]["data"]["compat"], "1.1");

    let pre = m
        .vol_create_as(
            P,
            "pre.qcow2",
            1 << 30,
            &VolCreateAs {
                prealloc_metadata: true,
                ..qcow2()
            },
        )
        .unwrap();
    assert_qemu_clean(&pre.path);
    // Metadata preallocation maps every cluster: qemu-img map sees the
    // whole disk as allocated zero data in this file.
    let map = qemu_img(&["map", "-U", "--output", "json", pre.path.to_str().unwrap()]);
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    let mapped: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0 && e["present"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(mapped, 1 << 30, "{map}");
    assert!(pre.physical > q.physical);

    // Fully allocated raw (allocation == capacity).
    let full = m
        .vol_create_as(
            P,
            "full.raw",
            8 << 20,
            &VolCreateAs {
                allocation: Some(8 << 20),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(full.allocation >= 8 << 20, "{}", full.allocation);

    // Volume XML: what vol-dumpxml prints defines a new volume unchanged.
    let xml = m.vol_dumpxml(P, "disk.qcow2").unwrap();
    assert!(xml.contains("<format type='qcow2'/>"), "{xml}");
    assert!(
        xml.contains("<capacity unit='bytes'>1073741824</capacity>"),
        "{xml}"
    );
    let mut def = VolumeDef::from_xml(&xml).unwrap();
    def.name = "again.qcow2".into();
    let again = m.vol_create(P, &def, false).unwrap();
    assert_eq!((again.format.as_str(), again.capacity), ("qcow2", 1 << 30));
    assert_qemu_clean(&again.path);

    let names: Vec<String> = m
        .vol_list(P, true)
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        names,
        [
            "again.qcow2",
            "disk.qcow2",
            "disk.raw",
            "full.raw",
            "pre.qcow2"
        ]
    );
}

#[test]
fn linked_clones_read_through_and_protect_their_base() {
    if !have_qemu_img() {
        return;
    }
    let t = TempDir::new("linked");
    let m = t.manager();
    let base = m
        .vol_create_as(P, "base.qcow2", 16 << 20, &qcow2())
        .unwrap();
    let data = pattern(3, 3 << 20);
    write_guest(&base.path, 1 << 20, &data);

    let c1 = m
        .vol_create_as(P, "vm1.qcow2", 32 << 20, &linked("base.qcow2"))
        .unwrap();
    let b = c1.backing.clone().expect("backing");
    assert_eq!(b.path, base.path);
    assert_eq!(b.format.as_deref(), Some("qcow2"));
    assert_eq!(c1.capacity, 32 << 20);
    assert_qemu_clean(&c1.path);
    let qi = qemu_info(&c1.path);
    assert_eq!(qi["backing-filename"], base.path.to_str().unwrap());
    assert_eq!(qi["backing-filename-format"], "qcow2");
    assert_eq!(qi["virtual-size"], 32u64 << 20);

    // By path, raw base, capacity from... given explicitly.
    let rawbase = m
        .vol_create_as(P, "base.raw", 4 << 20, &VolCreateAs::default())
        .unwrap();
    write_guest(&rawbase.path, 0, &pattern(9, 4096));
    let c2 = m
        .vol_create_as(
            P,
            "vm2.qcow2",
            4 << 20,
            &VolCreateAs {
                backing_vol_format: Some("raw".into()),
                ..linked(rawbase.path.to_str().unwrap())
            },
        )
        .unwrap();
    assert_eq!(qemu_info(&c2.path)["backing-filename-format"], "raw");
    let scratch = t.join("scratch.raw");
    assert_eq!(
        &qemu_read_all(&c2.path, &scratch)[..4096],
        &pattern(9, 4096)[..]
    );

    // The clone sees the base's data (as qemu reads it); writes to the
    // clone leave the base alone.
    let seen = qemu_read_all(&c1.path, &scratch);
    assert_eq!(seen.len(), 32 << 20);
    assert_eq!(&seen[1 << 20..(1 << 20) + data.len()], &data[..]);
    assert!(seen[16 << 20..].iter().all(|&x| x == 0));
    write_guest(&c1.path, 1 << 20, &pattern(77, 65536));
    let base_now = qemu_read_all(&base.path, &scratch);
    assert_eq!(&base_now[1 << 20..(1 << 20) + data.len()], &data[..]);
    assert_qemu_clean(&c1.path);

    // The base cannot be deleted while a clone uses it.
    let e = m.vol_delete(P, "base.qcow2").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OperationInvalid);
    assert!(
        e.to_string()
            .contains("volume 'vm1.qcow2' in pool 'default' uses it as its backing file"),
        "{e}"
    );
    assert!(base.path.exists());
    m.vol_delete(P, "vm1.qcow2").unwrap();
    assert!(!c1.path.exists());
    m.vol_delete(P, "base.qcow2").unwrap();
    assert!(!base.path.exists());

    // Bad combinations.
    let e = m
        .vol_create_as(
            P,
            "r",
            1 << 20,
            &VolCreateAs {
                backing_vol: Some("base.raw".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("raw volume cannot have a backing volume"), "{e}");
    let e = m
        .vol_create_as(
            P,
            "x",
            1 << 20,
            &VolCreateAs {
                prealloc_metadata: true,
                ..linked("base.raw")
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be combined with a backing volume"),
        "{e}"
    );
    let e = m
        .vol_create_as(P, "y", 1 << 20, &linked("nope"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn clone_copies_contents_and_flattens() {
    if !have_qemu_img() {
        return;
    }
    let t = TempDir::new("clone");
    let m = t.manager();
    let base = m.vol_create_as(P, "base.qcow2", 8 << 20, &qcow2()).unwrap();
    write_guest(&base.path, 0, &pattern(1, 1 << 20));
    m.vol_create_as(P, "top.qcow2", 8 << 20, &linked("base.qcow2"))
        .unwrap();
    let top = m.vol_path(P, "top.qcow2").unwrap();
    write_guest(&top, 4 << 20, &pattern(2, 1 << 20));

    let c = m.vol_clone(P, "top.qcow2", "copy.qcow2", false).unwrap();
    assert_eq!((c.format.as_str(), c.capacity), ("qcow2", 8 << 20));
    assert!(c.backing.is_none(), "a clone is standalone");
    assert_qemu_clean(&c.path);
    assert!(qemu_info(&c.path).get("backing-filename").is_none());
    let scratch = t.join("s.raw");
    let want = qemu_read_all(&top, &scratch);
    assert_eq!(qemu_read_all(&c.path, &scratch), want);
    // Sparse: only the two written MiB are allocated (plus metadata).
    assert!(c.physical < 3 << 20, "{}", c.physical);

    let raw = m
        .vol_create_as(P, "a.raw", 8 << 20, &VolCreateAs::default())
        .unwrap();
    write_guest(&raw.path, 2 << 20, &pattern(5, 100_000));
    let rc = m.vol_clone(P, "a.raw", "b.raw", false).unwrap();
    assert_eq!(rc.format, "raw");
    assert_eq!(
        std::fs::read(&rc.path).unwrap(),
        std::fs::read(&raw.path).unwrap()
    );
    assert!(rc.allocation < 1 << 20, "sparse copy: {}", rc.allocation);

    let e = m.vol_clone(P, "a.raw", "b.raw", false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let e = m.vol_clone(P, "missing", "z", false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn resize_grows_and_shrinks_only_when_asked() {
    if !have_qemu_img() {
        return;
    }
    let t = TempDir::new("resize");
    let m = t.manager();
    m.vol_create_as(P, "q.qcow2", 16 << 20, &qcow2()).unwrap();
    let path = m.vol_path(P, "q.qcow2").unwrap();
    write_guest(&path, 0, &pattern(4, 4096));
    let v = m
        .vol_resize(P, "q.qcow2", 1 << 30, ResizeFlags::default())
        .unwrap();
    assert_eq!(v.capacity, 1 << 30);
    assert_eq!(qemu_info(&path)["virtual-size"], 1u64 << 30);
    assert_qemu_clean(&path);
    let v = m
        .vol_resize(
            P,
            "q.qcow2",
            1 << 20,
            ResizeFlags {
                delta: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v.capacity, (1 << 30) + (1 << 20));
    let e = m
        .vol_resize(P, "q.qcow2", 8 << 20, ResizeFlags::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unless --shrink is given"), "{e}");
    assert_eq!(
        m.vol_info(P, "q.qcow2").unwrap().capacity,
        (1 << 30) + (1 << 20)
    );
    let v = m
        .vol_resize(
            P,
            "q.qcow2",
            8 << 20,
            ResizeFlags {
                shrink: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v.capacity, 8 << 20);
    assert_qemu_clean(&path);
    let scratch = t.join("s.raw");
    assert_eq!(
        &qemu_read_all(&path, &scratch)[..4096],
        &pattern(4, 4096)[..]
    );
    let v = m
        .vol_resize(
            P,
            "q.qcow2",
            4 << 20,
            ResizeFlags {
                delta: true,
                shrink: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v.capacity, 4 << 20);
    let e = m
        .vol_resize(
            P,
            "q.qcow2",
            8 << 20,
            ResizeFlags {
                delta: true,
                shrink: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("capacity is only"), "{e}");
    let e = m
        .vol_resize(
            P,
            "q.qcow2",
            32 << 20,
            ResizeFlags {
                allocate: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("--allocate is only supported for raw"), "{e}");

    m.vol_create_as(P, "r.raw", 1 << 20, &VolCreateAs::default())
        .unwrap();
    let v = m
        .vol_resize(
            P,
            "r.raw",
            8 << 20,
            ResizeFlags {
                allocate: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v.capacity, 8 << 20);
    assert!(v.allocation >= 7 << 20, "allocated: {}", v.allocation);
}

#[test]
fn upload_and_download_move_file_bytes() {
    let t = TempDir::new("updown");
    let m = t.manager();
    m.vol_create_as(P, "v.raw", 1 << 20, &VolCreateAs::default())
        .unwrap();
    let data = pattern(8, 300_000);
    let n = m
        .vol_upload(P, "v.raw", &mut &data[..], 4096, None)
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let file = std::fs::read(m.vol_path(P, "v.raw").unwrap()).unwrap();
    assert_eq!(&file[4096..4096 + data.len()], &data[..]);
    assert!(file[..4096].iter().all(|&x| x == 0));
    // --length stops early.
    let n = m
        .vol_upload(P, "v.raw", &mut &pattern(9, 1000)[..], 0, Some(10))
        .unwrap();
    assert_eq!(n, 10);
    let mut out = Vec::new();
    let n = m.vol_download(P, "v.raw", &mut out, 0, Some(20)).unwrap();
    assert_eq!(n, 20);
    assert_eq!(&out[..10], &pattern(9, 10)[..]);
    assert!(out[10..].iter().all(|&x| x == 0));
    let mut out = Vec::new();
    m.vol_download(P, "v.raw", &mut out, 4096, None).unwrap();
    assert_eq!(out.len(), (1 << 20) - 4096);
    assert_eq!(&out[..data.len()], &data[..]);
    let e = m
        .vol_download(P, "v.raw", &mut Vec::new(), 2 << 20, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("beyond the end"), "{e}");
    let e = m
        .vol_upload(P, "v.raw", &mut &data[..10], 0, Some(100))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ended after 10 of 100 bytes"), "{e}");

    // Uploading an image file makes the volume that image (as libvirt).
    let img = t.join("src.qcow2");
    vireo_block::create(
        &img,
        &vireo_block::CreateOptions {
            size: 5 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    write_guest(&img, 0, &pattern(6, 8192));
    m.vol_create_as(P, "up.qcow2", 0, &VolCreateAs::default())
        .unwrap();
    let bytes = std::fs::read(&img).unwrap();
    m.vol_upload(P, "up.qcow2", &mut &bytes[..], 0, None)
        .unwrap();
    let v = m.vol_info(P, "up.qcow2").unwrap();
    assert_eq!((v.format.as_str(), v.capacity), ("qcow2", 5 << 20));
    let mut back = Vec::new();
    m.vol_download(P, "up.qcow2", &mut back, 0, None).unwrap();
    assert_eq!(back, bytes);
}

/// A reader that blocks in its first read until told to go on.
struct Gate {
    entered: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
    data: Vec<u8>,
    first: bool,
}

impl std::io::Read for Gate {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.first {
            self.first = false;
            let _ = self.entered.send(());
            let _ = self.go.recv();
        }
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data.drain(..n);
        Ok(n)
    }
}

#[test]
fn volumes_in_use_are_protected() {
    let t = TempDir::new("busy");
    let m = t.manager();
    m.vol_create_as(P, "v.raw", 1 << 20, &VolCreateAs::default())
        .unwrap();
    let (etx, erx) = mpsc::channel();
    let (gtx, grx) = mpsc::channel();
    std::thread::scope(|s| {
        let up = s.spawn(|| {
            let mut g = Gate {
                entered: etx,
                go: grx,
                data: pattern(1, 5000),
                first: true,
            };
            m.vol_upload(P, "v.raw", &mut g, 0, None)
        });
        erx.recv().unwrap(); // the upload is running
        for e in [
            m.vol_delete(P, "v.raw").unwrap_err(),
            m.vol_resize(P, "v.raw", 2 << 20, ResizeFlags::default())
                .unwrap_err(),
            m.vol_download(P, "v.raw", &mut Vec::new(), 0, None)
                .unwrap_err(),
            m.vol_upload(P, "v.raw", &mut &[0u8; 4][..], 0, None)
                .unwrap_err(),
            m.destroy(P).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::OperationInvalid);
            let s = e.to_string();
            assert!(
                s.contains("in use (being uploaded to)") || s.contains("asynchronous jobs"),
                "{s}"
            );
        }
        // Other volumes are not blocked.
        m.vol_create_as(P, "other.raw", 4096, &VolCreateAs::default())
            .unwrap();
        gtx.send(()).unwrap();
        assert_eq!(up.join().unwrap().unwrap(), 5000);
    });
    m.vol_delete(P, "v.raw").unwrap();
}

#[test]
fn names_cannot_escape_the_pool() {
    let t = TempDir::new("names");
    let m = t.manager();
    for bad in ["../evil", "a/b", "..", ".", "", "x\0y", ".hidden"] {
        let e = m
            .vol_create_as(P, bad, 4096, &VolCreateAs::default())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        let e = m.vol_clone(P, "nothing", bad, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
    assert!(!t.join("lib/evil").exists());
    assert_eq!(std::fs::read_dir(t.join("lib/images")).unwrap().count(), 0);
    m.vol_create_as(P, "ok.raw", 4096, &VolCreateAs::default())
        .unwrap();
    let e = m
        .vol_create_as(P, "ok.raw", 4096, &VolCreateAs::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let e = m
        .vol_create_as(
            P,
            "f.vmdk",
            4096,
            &VolCreateAs {
                format: Some("vmdk".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("creating 'vmdk' volumes is not supported"),
        "{e}"
    );
    // Lookup by path and key, and through --pool.
    let p = m.vol_path(P, "ok.raw").unwrap();
    let ps = p.to_str().unwrap();
    assert_eq!(
        m.lookup_volume(ps).unwrap(),
        (P.to_string(), "ok.raw".to_string())
    );
    assert_eq!(m.resolve_volume(Some(P), ps).unwrap().1, "ok.raw");
    assert_eq!(m.resolve_volume(None, ps).unwrap().1, "ok.raw");
    assert_eq!(
        m.resolve_volume(None, "/nonexistent").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}
