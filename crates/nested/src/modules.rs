//! Kernel modules for a stock-kernel L2 initramfs, as a distribution's initramfs carries
//! them: the drivers a vireo guest needs, with everything they depend on, and a
//! `modules.dep` so that busybox `modprobe` loads them in order.
//!
//! The Debian package ships no `modules.dep` (depmod runs at install time), so the
//! dependencies are read from each module's `.modinfo` strings (`depends=a,b`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::{err, Error, Result};

/// The drivers a stock-kernel L2 loads at boot (module names): vireo's platform (ACPI
/// power button as an input device, pvpanic) and paravirtual devices, and ext4 for disk images. `crc32c_generic` stands
/// in for ext4's soft dependency on the `crypto-crc32c` alias.
pub const STOCK_L2_MODULES: &[&str] = &[
    "button",
    "evdev",
    "pvpanic_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "virtio_balloon",
    "vmw_vsock_virtio_transport",
    "crc32c_generic",
    "ext4",
];

/// The modules to put in an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSet {
    /// `uname -r` of the kernel.
    pub release: String,
    /// (path inside the initramfs, file on the host) for every module, deps included.
    pub files: Vec<(String, PathBuf)>,
    /// The `modules.dep` contents for those modules (depmod's format: a module, then
    /// everything it needs, the deepest dependency last).
    pub modules_dep: String,
}

/// A module's name as the kernel knows it: the file stem with `-` as `_`.
fn module_name(file: &Path) -> Option<String> {
    let stem = file.file_name()?.to_str()?.strip_suffix(".ko")?;
    Some(stem.replace('-', "_"))
}

/// The `depends=` list of a module file's `.modinfo` (NUL-separated `key=value` strings).
pub fn depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|&b| b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).replace('-', "_"))
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error(format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(|e| Error(e.to_string()))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "ko") {
            out.push(path);
        }
    }
    Ok(())
}

/// Collects `wanted` and their dependencies from `modules_root` (`lib/modules/<release>`).
pub fn resolve(modules_root: &Path, wanted: &[&str]) -> Result<ModuleSet> {
    let release = modules_root
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error(format!("{}: no release name", modules_root.display())))?
        .to_string();
    let mut all = Vec::new();
    walk(&modules_root.join("kernel"), &mut all)?;
    let by_name: BTreeMap<String, PathBuf> = all
        .into_iter()
        .filter_map(|p| Some((module_name(&p)?, p)))
        .collect();
    let rel = |p: &Path| -> String {
        p.strip_prefix(modules_root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };

    // Direct dependencies of every module reachable from `wanted`.
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut todo: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
    while let Some(name) = todo.pop() {
        if deps.contains_key(&name) {
            continue;
        }
        let Some(path) = by_name.get(&name) else {
            return err(format!(
                "kernel module {name} not found under {} (built in, or compressed?)",
                modules_root.display()
            ));
        };
        let bytes = fs::read(path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
        let d = depends(&bytes);
        todo.extend(d.iter().cloned());
        deps.insert(name, d);
    }

    // depmod's line for a module: its dependencies in an order where each one comes
    // before what it needs (modprobe loads the list from the end).
    fn post_order(
        m: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        for d in deps.get(m).into_iter().flatten() {
            if seen.insert(d.clone()) {
                post_order(d, deps, seen, out);
                out.push(d.clone());
            }
        }
    }
    let mut modules_dep = String::new();
    let mut files = Vec::new();
    for name in deps.keys() {
        let mut order = Vec::new();
        post_order(name, &deps, &mut BTreeSet::new(), &mut order);
        order.reverse();
        let path = &by_name[name];
        modules_dep.push_str(&rel(path));
        modules_dep.push(':');
        for d in &order {
            modules_dep.push(' ');
            modules_dep.push_str(&rel(&by_name[d]));
        }
        modules_dep.push('\n');
        files.push((format!("lib/modules/{release}/{}", rel(path)), path.clone()));
    }
    Ok(ModuleSet {
        release,
        files,
        modules_dep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_module(root: &Path, rel: &str, depends: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut body = b"\x7fELF junk\0license=GPL\0".to_vec();
        body.extend_from_slice(format!("depends={depends}\0name=x\0").as_bytes());
        fs::write(p, body).unwrap();
    }

    #[test]
    fn reads_depends_from_modinfo() {
        assert_eq!(
            depends(b"abc\0depends=jbd2,mbcache,crc16\0name=ext4\0"),
            ["jbd2", "mbcache", "crc16"]
        );
        assert!(depends(b"\0depends=\0").is_empty());
        assert_eq!(depends(b"depends=pvpanic-core"), ["pvpanic_core"]);
    }

    #[test]
    fn closure_and_modules_dep_order() {
        let tmp = std::env::temp_dir().join(format!("vireo-modules-{}", std::process::id()));
        let root = tmp.join("6.1.0-test");
        let _ = fs::remove_dir_all(&tmp);
        fake_module(&root, "kernel/a/top.ko", "mid,leaf");
        fake_module(&root, "kernel/b/mid.ko", "leaf");
        fake_module(&root, "kernel/c/leaf.ko", "");
        fake_module(&root, "kernel/c/unused-mod.ko", "");
        let set = resolve(&root, &["top"]).unwrap();
        assert_eq!(set.release, "6.1.0-test");
        let names: Vec<&str> = set.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "lib/modules/6.1.0-test/kernel/c/leaf.ko",
                "lib/modules/6.1.0-test/kernel/b/mid.ko",
                "lib/modules/6.1.0-test/kernel/a/top.ko"
            ]
        );
        // modprobe inserts from the end of a line: leaf, then mid, then top itself.
        assert!(set
            .modules_dep
            .contains("kernel/a/top.ko: kernel/b/mid.ko kernel/c/leaf.ko\n"));
        assert!(set.modules_dep.contains("kernel/c/leaf.ko:\n"));
        let missing = resolve(&root, &["nope"]).unwrap_err();
        assert!(
            missing.0.contains("kernel module nope not found"),
            "{missing}"
        );
        fs::remove_dir_all(&tmp).unwrap();
    }
}
