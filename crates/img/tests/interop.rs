//! Interoperability with real qemu-img / qemu-io (skipped when absent).

mod common;

use common::*;
use vireo_block::{BlockBackend, CreateOptions, Format, OpenOptions};

fn rw_open(p: &std::path::Path) -> std::sync::Arc<dyn BlockBackend> {
    vireo_block::open(p, &OpenOptions::default()).expect("open rw")
}

/// Random writes/zeroes/discards through vireo, mirrored in a shadow buffer.
fn random_workload(img: &dyn BlockBackend, shadow: &mut [u8], seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    let size = shadow.len() as u64;
    let mut buf = vec![0u8; 300 << 10];
    for i in 0..ops {
        let len = (rng.next() % (256 << 10) + 1) as usize;
        let off = rng.next() % (size - len as u64);
        match rng.next() % 8 {
            0 => {
                img.write_zeroes(off, len as u64).expect("write_zeroes");
                shadow[off as usize..off as usize + len].fill(0);
            }
            1 => {
                // discard: content afterwards is zero (no backing file here)
                img.discard(off, len as u64).expect("discard");
                let mut probe = vec![0u8; len];
                img.read_at(&mut probe, off).expect("read");
                // discarded whole clusters read as zero, the rest unchanged
                shadow[off as usize..off as usize + len].copy_from_slice(&probe);
            }
            _ => {
                fill(&mut rng, &mut buf[..len]);
                img.write_at(&buf[..len], off).expect("write");
                shadow[off as usize..off as usize + len].copy_from_slice(&buf[..len]);
            }
        }
        if i % 10 == 9 {
            img.flush().expect("flush");
        }
    }
    img.flush().expect("flush");
}

#[test]
fn vireo_images_pass_qemu_check_all_cluster_sizes_and_refcount_widths() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("vw");
    let combos: &[(u32, u32, u32)] = &[
        (512, 1, 3),
        (512, 64, 3),
        (4096, 2, 3),
        (4096, 4, 3),
        (65536, 8, 3),
        (65536, 16, 3),
        (65536, 16, 2),
        (16384, 32, 3),
        (2 << 20, 16, 3),
    ];
    for (k, &(cs, rb, ver)) in combos.iter().enumerate() {
        let p = d.join(&format!("img{k}.qcow2"));
        let size = 8u64 << 20;
        vireo_block::create(
            &p,
            &CreateOptions {
                size,
                cluster_size: cs,
                refcount_bits: rb,
                version: ver,
                ..Default::default()
            },
        )
        .expect("create");
        let mut shadow = vec![0u8; size as usize];
        {
            let img = rw_open(&p);
            random_workload(img.as_ref(), &mut shadow, 0x1234 + k as u64, 60);
        }
        let what = format!("cs={cs} refcount_bits={rb} v{ver}");
        let (code, out) = qemu_check(&p);
        assert_eq!(code, 0, "{what}: {out}");
        assert_same(&qemu_read_all(&p, &d), &shadow, &what);
        // and qemu-io agrees on a sample range
        let info = qemu_img(&["info", "--output", "json", s(&p)]);
        let v: serde_json::Value = serde_json::from_str(&info).expect("json");
        assert_eq!(v["cluster-size"], cs, "{what}");
        assert_eq!(v["virtual-size"], size, "{what}");
        if ver == 3 {
            assert_eq!(v["format-specific"]["data"]["refcount-bits"], rb, "{what}");
        } else {
            assert_eq!(v["format-specific"]["data"]["compat"], "0.10", "{what}");
        }
    }
}

#[test]
fn qemu_images_read_identically_through_vireo() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("qw");
    let combos: &[(&str, &str, &str)] = &[
        ("512", "1", "1.1"),
        ("1k", "2", "1.1"),
        ("4k", "4", "1.1"),
        ("64k", "8", "1.1"),
        ("64k", "16", "0.10"),
        ("32k", "32", "1.1"),
        ("8k", "64", "1.1"),
        ("2M", "16", "1.1"),
    ];
    for (k, &(cs, rb, compat)) in combos.iter().enumerate() {
        let p = d.join(&format!("q{k}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cs},refcount_bits={rb},compat={compat}"),
            s(&p),
            "6M",
        ]);
        let mut rng = Rng(99 + k as u64);
        let mut cmds = Vec::new();
        for i in 0..25 {
            let off = rng.next() % (6 << 20) / 512 * 512;
            let len = ((rng.next() % 512) + 1) * 512;
            let len = len.min((6 << 20) - off);
            if i % 5 == 4 && compat == "1.1" {
                cmds.push(format!("write -z {off} {len}"));
            } else if i % 7 == 6 {
                cmds.push(format!("discard {off} {len}"));
            } else {
                cmds.push(format!("write -P {} {off} {len}", rng.next() % 255 + 1));
            }
        }
        qemu_io(&p, "qcow2", &cmds);
        let q = qemu_read_all(&p, &d);
        let v = vireo_read_all(&p);
        assert_same(
            &v,
            &q,
            &format!("qemu image cs={cs} rb={rb} compat={compat}"),
        );
        // vireo's check agrees it is clean
        let out = vireo(&["check", s(&p)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // vireo writes into the qemu image; qemu still reads it right
        let img = rw_open(&p);
        let mut shadow = v;
        random_workload(img.as_ref(), &mut shadow, 7 + k as u64, 20);
        drop(img);
        assert_qemu_clean(&p);
        assert_same(&qemu_read_all(&p, &d), &shadow, "after vireo writes");
    }
}

#[test]
fn compressed_clusters_both_ways() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("cmp");
    let raw = d.join("src.raw");
    let mut data = vec![0u8; 3 << 20];
    let mut rng = Rng(5);
    fill_compressible(&mut rng, &mut data[..1 << 20]);
    fill(&mut rng, &mut data[(1 << 20)..(3 << 19)]); // incompressible part
    fill_compressible(&mut rng, &mut data[(2 << 20) + 12345..]);
    std::fs::write(&raw, &data).expect("write raw");
    for cs in ["4k", "64k"] {
        // qemu compresses, vireo reads
        let q = d.join(&format!("qemu-c-{cs}.qcow2"));
        qemu_img(&[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            s(&raw),
            s(&q),
        ]);
        assert_same(&vireo_read_all(&q), &data, "qemu-compressed read by vireo");
        // vireo compresses, qemu reads
        let v = d.join(&format!("vireo-c-{cs}.qcow2"));
        vireo_ok(&[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            s(&raw),
            s(&v),
        ]);
        assert_qemu_clean(&v);
        assert_same(
            &qemu_read_all(&v, &d),
            &data,
            "vireo-compressed read by qemu",
        );
        let chk = qemu_img(&["check", "--output", "json", s(&v)]);
        let j: serde_json::Value = serde_json::from_str(&chk).expect("json");
        assert!(j["compressed-clusters"].as_u64().unwrap_or(0) > 0, "{chk}");
        // overwrite inside compressed clusters (vireo), qemu verifies
        let img = rw_open(&v);
        img.write_at(&[0xab; 1000], 5000).expect("write");
        img.write_zeroes(0, 4096).expect("zero");
        drop(img);
        assert_qemu_clean(&v);
        let mut expect = data.clone();
        expect[5000..6000].fill(0xab);
        expect[..4096].fill(0);
        assert_same(
            &qemu_read_all(&v, &d),
            &expect,
            "after overwriting compressed",
        );
    }
}

#[test]
fn backing_chains_relative_paths_and_cow() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("bk");
    let base = d.join("base.raw");
    let mut data = vec![0u8; 4 << 20];
    fill(&mut Rng(11), &mut data);
    std::fs::write(&base, &data).expect("write base");
    // chain: base.raw <- mid.qcow2 <- top.qcow2, relative names
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&d.join("mid.qcow2")),
    ]);
    qemu_io(
        &d.join("mid.qcow2"),
        "qcow2",
        &["write -P 0x5a 100k 300k".into(), "write -z 1M 128k".into()],
    );
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&d.join("top.qcow2")),
    ]);
    qemu_io(
        &d.join("top.qcow2"),
        "qcow2",
        &["write -P 0x77 1000k 8k".into()],
    );
    let top = d.join("top.qcow2");
    let q = qemu_read_all(&top, &d);
    assert_same(&vireo_read_all(&top), &q, "chain read");
    // vireo writes partial clusters on top (copy-on-write from the chain)
    let mut shadow = q;
    {
        let img = rw_open(&top);
        let mut rng = Rng(3);
        for _ in 0..30 {
            let len = (rng.next() % 20000 + 1) as usize;
            let off = rng.next() % ((4 << 20) - len as u64);
            let b = (rng.next() % 255) as u8;
            img.write_at(&vec![b; len], off).expect("write");
            shadow[off as usize..off as usize + len].fill(b);
        }
        img.write_zeroes(2 << 20, 64 << 10)
            .expect("zeroes over backing");
        shadow[(2 << 20)..(2 << 20) + (64 << 10)].fill(0);
    }
    assert_qemu_clean(&top);
    assert_same(&qemu_read_all(&top, &d), &shadow, "after vireo COW writes");
    // map through the chain agrees with qemu (depth / data / zero)
    let vm: serde_json::Value =
        serde_json::from_str(&vireo_ok(&["map", "--output", "json", s(&top)])).expect("json");
    let qm: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output", "json", s(&top)])).expect("json");
    let strip = |v: &serde_json::Value| -> Vec<(u64, u64, u64, bool, bool)> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["start"].as_u64().unwrap_or(0),
                            e["length"].as_u64().unwrap_or(0),
                            e["depth"].as_u64().unwrap_or(0),
                            e["zero"].as_bool().unwrap_or(false),
                            e["data"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        strip(&vm),
        strip(&qm),
        "map differs\nvireo: {vm}\nqemu: {qm}"
    );
    // info --backing-chain lists three images
    let chain: serde_json::Value = serde_json::from_str(&vireo_ok(&[
        "info",
        "--backing-chain",
        "--output",
        "json",
        s(&top),
    ]))
    .expect("json");
    assert_eq!(chain.as_array().map(|a| a.len()), Some(3));
    assert_eq!(chain[1]["format"], "qcow2");
    assert_eq!(chain[2]["format"], "raw");
}

#[test]
fn info_json_and_human_match_qemu() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("info");
    let base = d.join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "64M"]);
    let top = d.join("t.qcow2");
    vireo_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    qemu_io(&top, "qcow2", &["write -P 1 0 64k".into()]);
    qemu_img(&["snapshot", "-c", "snap1", s(&top)]);
    for p in [&base, &top] {
        let vt = vireo_ok(&["info", "--output", "json", s(p)]);
        let qt = qemu_img(&["info", "--output", "json", s(p)]);
        if !qt.contains("\"children\"") {
            // same text, key order included (qemu < 8 has no child info)
            assert_eq!(vt, qt);
        }
        let v: serde_json::Value = serde_json::from_str(&vt).expect("json");
        let q: serde_json::Value = serde_json::from_str(&qt).expect("json");
        let mut q = q;
        if let Some(o) = q.as_object_mut() {
            o.remove("children"); // qemu 10 adds child node info
        }
        assert_eq!(v, q, "info json of {}", p.display());
        let vh = vireo_ok(&["info", s(p)]);
        let qh = qemu_img(&["info", s(p)]);
        let qh: String = qh.split("Child node").next().unwrap_or("").to_string();
        assert_eq!(vh.trim_end(), qh.trim_end(), "human info");
    }
    // create output sizes
    let vc = vireo_ok(&["create", "-f", "qcow2", s(&d.join("x.qcow2")), "1.5G"]);
    assert!(vc.contains("size=1610612736"), "{vc}");
    assert_qemu_clean(&d.join("x.qcow2"));
    let q: serde_json::Value = serde_json::from_str(&qemu_img(&[
        "info",
        "--output",
        "json",
        s(&d.join("x.qcow2")),
    ]))
    .expect("json");
    assert_eq!(q["virtual-size"], 1610612736u64);
}

#[test]
fn snapshots_interoperate() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("snap");
    let p = d.join("s.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=16k",
        s(&p),
        "8M",
    ]);
    qemu_io(&p, "qcow2", &["write -P 0x11 0 1M".into()]);
    qemu_img(&["snapshot", "-c", "by-qemu", s(&p)]);
    qemu_io(&p, "qcow2", &["write -P 0x22 512k 1M".into()]);
    let after_qemu_writes = qemu_read_all(&p, &d);
    // vireo lists qemu's snapshot exactly like qemu
    assert_eq!(
        vireo_ok(&["snapshot", "-l", s(&p)]),
        qemu_img(&["snapshot", "-l", s(&p)])
    );
    vireo_ok(&["snapshot", "-c", "by-vireo", s(&p)]);
    assert_qemu_clean(&p);
    let ql = qemu_img(&["snapshot", "-l", s(&p)]);
    assert!(ql.contains("by-vireo") && ql.contains("by-qemu"), "{ql}");
    // more writes by vireo, then vireo applies qemu's snapshot
    {
        let img = rw_open(&p);
        img.write_at(&[0x33; 70000], 100).expect("write");
    }
    vireo_ok(&["snapshot", "-a", "by-qemu", s(&p)]);
    assert_qemu_clean(&p);
    let mut expect = vec![0u8; 8 << 20];
    expect[..1 << 20].fill(0x11);
    assert_same(
        &qemu_read_all(&p, &d),
        &expect,
        "after applying qemu snapshot",
    );
    // qemu applies vireo's snapshot
    qemu_img(&["snapshot", "-a", "by-vireo", s(&p)]);
    assert_same(
        &vireo_read_all(&p),
        &after_qemu_writes,
        "qemu applied vireo snapshot",
    );
    // vireo deletes both (by name and by ID)
    vireo_ok(&["snapshot", "-d", "by-qemu", s(&p)]);
    assert_qemu_clean(&p);
    vireo_ok(&["snapshot", "-d", "2", s(&p)]);
    assert_qemu_clean(&p);
    assert_eq!(qemu_img(&["snapshot", "-l", s(&p)]), "");
    assert_same(
        &qemu_read_all(&p, &d),
        &after_qemu_writes,
        "data survives deletes",
    );
    // all refcounts back to a single owner: the file has no leaks either
    let chk: serde_json::Value =
        serde_json::from_str(&qemu_img(&["check", "--output", "json", s(&p)])).expect("json");
    assert!(chk.get("leaks").is_none(), "{chk}");
}

#[test]
fn check_detects_and_repairs_leaks_and_corruption() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("chk");
    let p = d.join("c.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&p), "16M"]);
    qemu_io(&p, "qcow2", &["write -P 7 0 256k".into()]);
    // Layout: refblock at 0x20000; clusters 0..=8 in use. Leak cluster 20.
    let mut f = std::fs::read(&p).expect("read");
    let rb = 0x20000usize;
    f[rb + 20 * 2..rb + 20 * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    if f.len() < 21 * 65536 {
        f.resize(21 * 65536, 0);
    }
    std::fs::write(&p, &f).expect("write");
    let out = vireo(&["check", s(&p)]);
    assert_eq!(out.status.code(), Some(3), "leak => exit 3");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Leaked cluster 20 refcount=1 reference=0")
    );
    assert_eq!(qemu_check(&p).0, 3);
    let out = vireo(&["check", "-r", "leaks", s(&p)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_qemu_clean(&p);
    // Corruption: data cluster 5 (first data cluster) gets refcount 0.
    let mut f = std::fs::read(&p).expect("read");
    let j: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output", "json", s(&p)])).expect("json");
    let data_off = j[0]["offset"].as_u64().unwrap_or(0) as usize;
    let rt_off = u64::from_be_bytes(f[48..56].try_into().unwrap_or([0; 8])) as usize;
    let rb = u64::from_be_bytes(f[rt_off..rt_off + 8].try_into().unwrap_or([0; 8])) as usize;
    let c = data_off / 65536;
    f[rb + c * 2..rb + c * 2 + 2].copy_from_slice(&0u16.to_be_bytes());
    std::fs::write(&p, &f).expect("write");
    let out = vireo(&["check", "--output", "json", s(&p)]);
    assert_eq!(out.status.code(), Some(2));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(j["corruptions"].as_u64().unwrap_or(0) >= 1, "{j}");
    assert_eq!(qemu_check(&p).0, 2, "qemu agrees it is corrupt");
    // writing refused? no: opening read-write is allowed, but repair fixes it
    let out = vireo(&["check", "-r", "all", s(&p)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_qemu_clean(&p);
    qemu_io(&p, "qcow2", &["read -P 7 0 256k".into()]);
}

#[test]
fn dirty_lazy_refcount_image_is_repaired_on_open() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("lazy");
    let p = d.join("l.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        s(&p),
        "16M",
    ]);
    // qemu-io's abort leaves the dirty bit set and refcounts stale.
    let _ = std::process::Command::new("qemu-io")
        .args(["-c", "write -P 9 0 1M", "-c", "abort"])
        .arg(&p)
        .output();
    let info: serde_json::Value =
        serde_json::from_str(&vireo_ok(&["info", "--output", "json", s(&p)])).expect("json");
    assert_eq!(
        info["dirty-flag"], true,
        "test setup: image should be dirty"
    );
    assert_eq!(info["format-specific"]["data"]["lazy-refcounts"], true);
    {
        let img = rw_open(&p); // rebuilds refcounts, clears the dirty bit
        img.write_at(&[1; 4096], 2 << 20).expect("write");
    }
    assert_qemu_clean(&p);
    qemu_io(
        &p,
        "qcow2",
        &["read -P 9 0 1M".into(), "read -P 1 2M 4k".into()],
    );
}

#[test]
fn resize_rebase_commit_compare_measure() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("misc");
    let p = d.join("r.qcow2");
    vireo_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        s(&p),
        "1M",
    ]);
    qemu_io(&p, "qcow2", &["write -P 3 0 1M".into()]);
    // 4k clusters: 1M -> 3G needs a bigger L1 table
    assert_eq!(vireo_ok(&["resize", s(&p), "+3G"]).trim(), "Image resized.");
    assert_qemu_clean(&p);
    let j: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output", "json", s(&p)])).expect("json");
    assert_eq!(j["virtual-size"], (3u64 << 30) + (1 << 20));
    qemu_io(
        &p,
        "qcow2",
        &[
            "read -P 3 0 1M".into(),
            "read -P 0 1M 1M".into(),
            "write -P 4 3G 4k".into(),
        ],
    );
    assert!(
        vireo(&["resize", s(&p), "-1M"]).status.code() != Some(0),
        "shrink needs --shrink"
    );
    // shrink to 700k (not cluster aligned), grow back: the cut part reads 0
    vireo_ok(&["resize", "--shrink", s(&p), "700k"]);
    assert_qemu_clean(&p);
    vireo_ok(&["resize", s(&p), "2M"]);
    assert_qemu_clean(&p);
    qemu_io(
        &p,
        "qcow2",
        &["read -P 3 0 700k".into(), "read -P 0 700k 1348k".into()],
    );

    // rebase: base1 <- top; rebase top onto base2 (safe) keeps content
    let b1 = d.join("b1.qcow2");
    let b2 = d.join("b2.qcow2");
    let t = d.join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&b1), "2M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", s(&b2), "2M"]);
    qemu_io(&b1, "qcow2", &["write -P 1 0 1M".into()]);
    qemu_io(&b2, "qcow2", &["write -P 2 512k 1M".into()]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "b1.qcow2",
        "-F",
        "qcow2",
        s(&t),
    ]);
    qemu_io(&t, "qcow2", &["write -P 9 64k 64k".into()]);
    let before = qemu_read_all(&t, &d);
    vireo_ok(&["rebase", "-b", "b2.qcow2", "-F", "qcow2", s(&t)]);
    assert_qemu_clean(&t);
    let j: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output", "json", s(&t)])).expect("json");
    assert_eq!(j["backing-filename"], "b2.qcow2");
    assert_same(
        &qemu_read_all(&t, &d),
        &before,
        "safe rebase preserves content",
    );
    // compare: identical, then different
    let raw = d.join("t.raw");
    std::fs::write(&raw, &before).expect("write");
    let out = vireo(&["compare", s(&t), s(&raw)]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Images are identical."
    );
    let mut diff = before.clone();
    diff[777777] ^= 1;
    std::fs::write(&raw, &diff).expect("write");
    let out = vireo(&["compare", s(&t), s(&raw)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Content mismatch at offset 777777!"
    );
    // commit top into b2
    vireo_ok(&["commit", s(&t)]);
    assert_qemu_clean(&b2);
    assert_same(
        &qemu_read_all(&b2, &d),
        &before,
        "commit wrote into the base",
    );
    assert_same(&qemu_read_all(&t, &d), &before, "top still reads the same");
    // measure agrees with qemu
    for args in [
        vec!["measure", "--size", "1G", "-O", "qcow2"],
        vec!["measure", "-O", "qcow2", s(&t)],
    ] {
        // compare the two sizes (newer qemu may print extra lines)
        let sizes = |t: String| -> Vec<String> {
            t.lines()
                .filter(|l| l.starts_with("required size") || l.starts_with("fully allocated"))
                .map(str::to_string)
                .collect()
        };
        let v = sizes(vireo_ok(&args));
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v, sizes(qemu_img(&args)), "{args:?}");
    }
}

#[test]
fn refcount_table_growth_and_v2_images() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("grow");
    // 512-byte clusters with 64-bit refcounts: one refcount block covers
    // only 64 clusters, so writing 3 MiB needs ~100 refcount blocks and
    // several relocations of the refcount table.
    let p = d.join("g.qcow2");
    vireo_block::create(
        &p,
        &CreateOptions {
            format: Format::Qcow2,
            size: 4 << 20,
            cluster_size: 512,
            refcount_bits: 64,
            ..Default::default()
        },
    )
    .expect("create");
    let mut data = vec![0u8; 3 << 20];
    fill(&mut Rng(77), &mut data);
    {
        let img = rw_open(&p);
        for (i, c) in data.chunks(100_000).enumerate() {
            img.write_at(c, (i * 100_000) as u64).expect("write");
        }
    }
    assert_qemu_clean(&p);
    let all = qemu_read_all(&p, &d);
    assert_same(&all[..data.len()], &data, "512b clusters");
    // qemu-created v2 image, written by vireo with zeroes over a backing file
    let b = d.join("b2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        s(&b),
        "2M",
    ]);
    qemu_io(&b, "qcow2", &["write -P 5 0 2M".into()]);
    let t = d.join("t2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        "b2.qcow2",
        "-F",
        "qcow2",
        s(&t),
    ]);
    {
        let img = rw_open(&t);
        img.write_zeroes(0, 128 << 10).expect("zero");
        img.write_at(&[6; 512], 1 << 20).expect("write");
    }
    assert_qemu_clean(&t);
    qemu_io(
        &t,
        "qcow2",
        &[
            "read -P 0 0 128k".into(),
            "read -P 5 128k 64k".into(),
            "read -P 6 1M 512".into(),
        ],
    );
}

#[test]
fn import_formats_vmdk_vdi_vhd_vhdx_read_identically() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("imp");
    let raw = d.join("src.raw");
    // sparse source: data islands, compressible and random parts, holes
    let mut data = vec![0u8; 5 << 20];
    let mut rng = Rng(42);
    fill(&mut rng, &mut data[100_000..900_000]);
    fill_compressible(&mut rng, &mut data[(2 << 20)..(3 << 20)]);
    data[(4 << 20) + 7] = 1;
    std::fs::write(&raw, &data).expect("write");
    let cases: &[(&str, &str, &str)] = &[
        ("vmdk", "subformat=monolithicSparse", "a.vmdk"),
        ("vmdk", "subformat=streamOptimized", "b.vmdk"),
        ("vmdk", "subformat=monolithicFlat", "c.vmdk"),
        ("vmdk", "subformat=twoGbMaxExtentSparse", "d.vmdk"),
        ("vdi", "static=off", "e.vdi"),
        ("vdi", "static=on", "f.vdi"),
        ("vpc", "subformat=dynamic", "g.vhd"),
        ("vpc", "subformat=fixed", "h.vhd"),
        ("vhdx", "subformat=dynamic", "i.vhdx"),
        ("vhdx", "subformat=fixed,block_size=1M", "j.vhdx"),
    ];
    for &(fmt, opt, name) in cases {
        let p = d.join(name);
        qemu_img(&["convert", "-f", "raw", "-O", fmt, "-o", opt, s(&raw), s(&p)]);
        let qr = d.join("q.raw");
        qemu_img(&["convert", "-f", fmt, "-O", "raw", s(&p), s(&qr)]);
        let q = std::fs::read(&qr).expect("read");
        let img = vireo_block::open(
            &p,
            &OpenOptions {
                format: Some(Format::from_name(fmt).expect("fmt")),
                read_only: true,
                ..Default::default()
            },
        )
        .expect("open import");
        let mut v = vec![0u8; img.size() as usize];
        img.read_at(&mut v, 0).expect("read");
        assert_same(&v, &q, &format!("{fmt} {opt}"));
        // probing finds the format (fixed VHD has no header: raw, as in qemu)
        if opt != "subformat=fixed" {
            assert_eq!(vireo_block::probe(&p).expect("probe").name(), fmt, "{name}");
        }
        // convert to qcow2 through vireo, qemu agrees on the content
        let out = d.join(&format!("{name}.qcow2"));
        vireo_ok(&["convert", "-f", fmt, "-O", "qcow2", s(&p), s(&out)]);
        assert_qemu_clean(&out);
        assert_same(&qemu_read_all(&out, &d), &q, &format!("{fmt} -> qcow2"));
        assert!(
            img.write_at(&[0], 0).is_err(),
            "import formats are read-only"
        );
    }
}

#[test]
fn import_formats_survive_hostile_input() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("imph");
    let raw = d.join("src.raw");
    let mut data = vec![0u8; 1 << 20];
    fill(&mut Rng(8), &mut data[..300_000]);
    std::fs::write(&raw, &data).expect("write");
    let mut rng = Rng(0xBAD);
    for (fmt, opt, name) in [
        ("vmdk", "subformat=monolithicSparse", "a.vmdk"),
        ("vmdk", "subformat=streamOptimized", "b.vmdk"),
        ("vdi", "static=off", "c.vdi"),
        ("vpc", "subformat=dynamic", "d.vhd"),
        ("vhdx", "subformat=dynamic", "e.vhdx"),
    ] {
        let p = d.join(name);
        qemu_img(&["convert", "-f", "raw", "-O", fmt, "-o", opt, s(&raw), s(&p)]);
        let orig = std::fs::read(&p).expect("read");
        let f = Format::from_name(fmt).expect("fmt");
        let opts = OpenOptions {
            format: Some(f),
            read_only: true,
            ..Default::default()
        };
        // truncations
        for len in [
            0usize,
            10,
            100,
            511,
            1024,
            2048,
            orig.len() / 2,
            orig.len() - 1,
        ] {
            std::fs::write(&p, &orig[..len.min(orig.len())]).expect("write");
            let r = std::panic::catch_unwind(|| {
                if let Ok(img) = vireo_block::open(&p, &opts) {
                    let mut b = vec![0u8; img.size().min(1 << 20) as usize];
                    let _ = img.read_at(&mut b, 0);
                }
            });
            assert!(r.is_ok(), "{name} truncated to {len}: panic");
        }
        // random corruption of the first 2 KiB and the last 1.5 KiB
        for _ in 0..150 {
            let mut b = orig.clone();
            for _ in 0..(rng.next() % 4 + 1) {
                let i = match rng.next() % 4 {
                    0 | 1 => (rng.next() % 2048) as usize,
                    2 => b.len() - 1 - (rng.next() % 1536) as usize,
                    // anywhere (VHDX keeps its metadata at 64 KiB..1 MiB)
                    _ => (rng.next() % b.len() as u64) as usize,
                };
                b[i] = rng.next() as u8;
            }
            std::fs::write(&p, &b).expect("write");
            let r = std::panic::catch_unwind(|| {
                if let Ok(img) = vireo_block::open(&p, &opts) {
                    let mut buf = vec![0u8; 65536];
                    let size = img.size();
                    let mut off = 0;
                    while off + 65536 <= size.min(4 << 20) {
                        let _ = img.read_at(&mut buf, off);
                        off += 65536 * 3;
                    }
                    let _ = img.block_status(0, size.min(1 << 20));
                }
            });
            assert!(r.is_ok(), "{name}: panic on corrupted input");
        }
    }
    // specific fields
    let p = d.join("x.vdi");
    qemu_img(&["convert", "-f", "raw", "-O", "vdi", s(&raw), s(&p)]);
    let mut b = std::fs::read(&p).expect("read");
    b[376..380].copy_from_slice(&3u32.to_le_bytes()); // block_size not a power of two
    std::fs::write(&p, &b).expect("write");
    let e = vireo_block::open(&p, &OpenOptions::read_only())
        .err()
        .expect("error")
        .to_string();
    assert!(e.contains("vdi block_size"), "{e}");
    let p = d.join("x.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", s(&raw), s(&p)]);
    let mut b = std::fs::read(&p).expect("read");
    b[56..64].copy_from_slice(&(1u64 << 40).to_le_bytes()); // gdOffset beyond EOF
    std::fs::write(&p, &b).expect("write");
    let e = vireo_block::open(&p, &OpenOptions::read_only())
        .err()
        .expect("error")
        .to_string();
    assert!(e.contains("vmdk gdOffset"), "{e}");
}

/// Drops keys that differ between qemu versions ("compressed" in map output
/// appeared in qemu 8).
fn without_compressed(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Array(a) => serde_json::Value::Array(
            a.into_iter()
                .map(|mut e| {
                    if let Some(o) = e.as_object_mut() {
                        o.remove("compressed");
                    }
                    e
                })
                .collect(),
        ),
        o => o,
    }
}

#[test]
fn check_and_map_output_match_qemu() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("out");
    let raw = d.join("src.raw");
    let mut data = vec![0u8; 3 << 20];
    fill_compressible(&mut Rng(1), &mut data[..1 << 20]);
    fill(&mut Rng(2), &mut data[(2 << 20)..(2 << 20) + 100_000]);
    std::fs::write(&raw, &data).expect("write");
    let imgs = [
        ("plain.qcow2", vec!["convert", "-O", "qcow2"]),
        ("comp.qcow2", vec!["convert", "-c", "-O", "qcow2"]),
        (
            "small.qcow2",
            vec!["convert", "-O", "qcow2", "-o", "cluster_size=4k"],
        ),
    ];
    for (name, args) in imgs {
        let p = d.join(name);
        let mut a = args.clone();
        a.push(s(&raw));
        a.push(s(&p));
        qemu_img(&a);
        qemu_io(
            &p,
            "qcow2",
            &["write -z 1M 128k".into(), "write -P 3 1500k 4k".into()],
        );
        let v = vireo(&["check", "--output", "json", s(&p)]);
        assert_eq!(v.status.code(), Some(0));
        let vj: serde_json::Value = serde_json::from_slice(&v.stdout).expect("json");
        let qt = qemu_img(&["check", "--output", "json", s(&p)]);
        let qj: serde_json::Value = serde_json::from_str(&qt).expect("json");
        assert_eq!(vj, qj, "check json {name}");
        assert_eq!(
            vireo_ok(&["check", s(&p)]),
            qemu_img(&["check", s(&p)]),
            "check {name}"
        );
        let vm: serde_json::Value =
            serde_json::from_str(&vireo_ok(&["map", "--output", "json", s(&p)])).expect("json");
        let qm: serde_json::Value =
            serde_json::from_str(&qemu_img(&["map", "--output", "json", s(&p)])).expect("json");
        assert_eq!(
            without_compressed(vm),
            without_compressed(qm),
            "map json {name}"
        );
        if name == "comp.qcow2" {
            // qemu-img refuses the human map of compressed images; so do we
            assert_eq!(vireo(&["map", s(&p)]).status.code(), Some(1));
        } else {
            assert_eq!(
                vireo_ok(&["map", s(&p)]),
                qemu_img(&["map", s(&p)]),
                "map {name}"
            );
        }
    }
    // metadata preallocation by qemu and by vireo
    let q = d.join("pq.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        s(&q),
        "8M",
    ]);
    let v = d.join("pv.qcow2");
    vireo_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        s(&v),
        "8M",
    ]);
    assert_qemu_clean(&v);
    for p in [&q, &v] {
        let vm: serde_json::Value =
            serde_json::from_str(&vireo_ok(&["map", "--output", "json", s(p)])).expect("json");
        let qm: serde_json::Value =
            serde_json::from_str(&qemu_img(&["map", "--output", "json", s(p)])).expect("json");
        assert_eq!(
            without_compressed(vm),
            without_compressed(qm),
            "map json {}",
            p.display()
        );
    }
    let full = d.join("pf.qcow2");
    vireo_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=full",
        s(&full),
        "8M",
    ]);
    assert_qemu_clean(&full);
    qemu_io(&full, "qcow2", &["read -P 0 0 8M".into()]);
    let meta = std::fs::metadata(&full).expect("stat");
    assert!(meta.len() >= 8 << 20);
}

#[test]
fn bench_writes_pattern_and_unsafe_rebase() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("bench");
    let p = d.join("b.qcow2");
    vireo_ok(&["create", "-q", "-f", "qcow2", s(&p), "4M"]);
    let out = vireo_ok(&[
        "bench",
        "-w",
        "-c",
        "64",
        "-d",
        "4",
        "-s",
        "4k",
        "-S",
        "8k",
        "-o",
        "1M",
        "--pattern",
        "7",
        "-f",
        "qcow2",
        s(&p),
    ]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("Sending 64 write requests, 4096 bytes each, 4 in parallel (starting at offset 1048576, step size 8192)")
    );
    let last = lines.next().unwrap_or("");
    assert!(
        last.starts_with("Run completed in ") && last.ends_with(" seconds."),
        "{last}"
    );
    assert_qemu_clean(&p);
    // 64 requests of 4k every 8k from 1M: pattern 7 there, zero in between
    qemu_io(
        &p,
        "qcow2",
        &[
            "read -P 7 1M 4k".into(),
            "read -P 0 1028k 4k".into(),
            "read -P 7 1528k 4k".into(),
        ],
    );
    let out = vireo_ok(&["bench", "-c", "10", "-s", "64k", s(&p)]);
    assert!(
        out.starts_with("Sending 10 read requests, 65536 bytes each, 64 in parallel"),
        "{out}"
    );

    // rebase -u only rewrites the header
    let b = d.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&b), "4M"]);
    qemu_io(&b, "qcow2", &["write -P 9 0 4M".into()]);
    let before = qemu_read_all(&p, &d);
    vireo_ok(&["rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", s(&p)]);
    assert_qemu_clean(&p);
    let j: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output", "json", s(&p)])).expect("json");
    assert_eq!(j["backing-filename"], "base.qcow2");
    assert_eq!(j["backing-filename-format"], "qcow2");
    let after = qemu_read_all(&p, &d);
    // unallocated ranges now show the new backing file's data
    assert_eq!(&after[..4096], &[9u8; 4096][..]);
    assert_eq!(
        &after[1 << 20..(1 << 20) + 4096],
        &before[1 << 20..(1 << 20) + 4096]
    );
    // and safe rebase back to no backing file keeps that content
    vireo_ok(&["rebase", "-b", "", s(&p)]);
    assert_qemu_clean(&p);
    assert_same(&qemu_read_all(&p, &d), &after, "rebase onto nothing");
    let j: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output", "json", s(&p)])).expect("json");
    assert!(j.get("backing-filename").is_none());
}

#[test]
fn convert_with_backing_writes_only_differences() {
    if !have_qemu() {
        return;
    }
    let d = TempDir::new("cvb");
    let base = d.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "4M"]);
    qemu_io(&base, "qcow2", &["write -P 1 0 4M".into()]);
    // source = base content with two modified ranges (one of them zeroed)
    let src = d.join("src.raw");
    let mut data = vec![1u8; 4 << 20];
    data[100_000..110_000].fill(7);
    data[(2 << 20)..(2 << 20) + (64 << 10)].fill(0);
    std::fs::write(&src, &data).expect("write");
    let out = d.join("out.qcow2");
    vireo_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-B",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&src),
        s(&out),
    ]);
    assert_qemu_clean(&out);
    assert_same(&qemu_read_all(&out, &d), &data, "convert -B content");
    let j: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output", "json", s(&out)])).expect("json");
    assert_eq!(j["backing-filename"], "base.qcow2");
    // only the differing 64k pieces are allocated in the top layer
    let m: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output", "json", s(&out)])).expect("json");
    let top: u64 = m
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["depth"] == 0 && e["present"] == true)
                .map(|e| e["length"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert!(top <= 4 * 65536, "top layer holds {top} bytes");
}
