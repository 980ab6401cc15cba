//! libvirt storage pool XML (`<pool type='dir'>`): the typed definition
//! and its parser / writer.

use std::path::{Path, PathBuf};

use crate::xml::{self, check_children, child, child_text, esc};
use crate::{check_name, Error, Result, Uuid};

/// Pool types libvirt knows; vireo implements `dir`.
const LIBVIRT_POOL_TYPES: &[&str] = &[
    "fs",
    "netfs",
    "logical",
    "disk",
    "iscsi",
    "iscsi-direct",
    "scsi",
    "mpath",
    "rbd",
    "sheepdog",
    "gluster",
    "zfs",
    "vstorage",
];

/// Storage pool types implemented by vireo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolType {
    /// A directory of image files.
    Dir,
}

impl PoolType {
    pub fn name(self) -> &'static str {
        match self {
            PoolType::Dir => "dir",
        }
    }

    /// Parses a libvirt pool type; types vireo does not implement give an
    /// error naming them.
    pub fn from_name(t: &str) -> Result<PoolType> {
        match t {
            "dir" => Ok(PoolType::Dir),
            _ if LIBVIRT_POOL_TYPES.contains(&t) => Err(Error::invalid(format!(
                "storage pool type '{t}' is not supported (vireo implements type 'dir')"
            ))),
            _ => Err(Error::invalid(format!(
                "unknown storage pool type '{t}' (vireo implements type 'dir')"
            ))),
        }
    }
}

/// `<permissions>` of a pool target or volume: what to apply on creation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Permissions {
    /// Octal mode bits (at most 0o7777).
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// Security label: kept and written back, not applied.
    pub label: Option<String>,
}

impl Permissions {
    pub(crate) fn parse(n: roxmltree::Node, path: &str) -> Result<Permissions> {
        check_children(n, path, &["mode", "owner", "group", "label"])?;
        let mode = match child_text(n, "mode") {
            None | Some("") => None,
            Some(m) => {
                let v = u32::from_str_radix(m, 8).ok().filter(|v| *v <= 0o7777);
                Some(v.ok_or_else(|| {
                    Error::invalid(format!(
                        "<{path}/mode>: '{m}' is not an octal file mode (0000-7777)"
                    ))
                })?)
            }
        };
        let id = |what: &str| -> Result<Option<u32>> {
            match child_text(n, what) {
                None | Some("") | Some("-1") => Ok(None),
                Some(v) => v.parse::<u32>().map(Some).map_err(|_| {
                    Error::invalid(format!(
                        "<{path}/{what}>: '{v}' is not a numeric id (or -1 for the default)"
                    ))
                }),
            }
        };
        Ok(Permissions {
            mode,
            owner: id("owner")?,
            group: id("group")?,
            label: child_text(n, "label")
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        })
    }

    pub(crate) fn write(&self, out: &mut String, indent: &str) {
        out.push_str(&format!("{indent}<permissions>\n"));
        if let Some(m) = self.mode {
            out.push_str(&format!("{indent}  <mode>{m:04o}</mode>\n"));
        }
        if let Some(o) = self.owner {
            out.push_str(&format!("{indent}  <owner>{o}</owner>\n"));
        }
        if let Some(g) = self.group {
            out.push_str(&format!("{indent}  <group>{g}</group>\n"));
        }
        if let Some(l) = &self.label {
            out.push_str(&format!("{indent}  <label>{}</label>\n", esc(l)));
        }
        out.push_str(&format!("{indent}</permissions>\n"));
    }
}

/// A storage pool definition (what `pool-define` stores and `pool-dumpxml
/// --inactive` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    pub name: String,
    pub uuid: Uuid,
    pub pool_type: PoolType,
    /// The directory holding the volumes (absolute, normalised).
    pub target: PathBuf,
    pub permissions: Option<Permissions>,
}

/// Live usage figures of an active pool (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolUsage {
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

/// Checks and normalises a pool target path: absolute, no NUL, no `.`/`..`
/// components, no trailing or doubled slashes.
pub fn normalize_target(p: &str) -> Result<PathBuf> {
    if p.contains('\0') {
        return Err(Error::invalid("pool target path contains a NUL byte"));
    }
    if !p.starts_with('/') {
        return Err(Error::invalid(format!(
            "pool target path '{p}' must be absolute"
        )));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            std::path::Component::Normal(s) => out.push(s),
            std::path::Component::RootDir => {}
            _ => {
                return Err(Error::invalid(format!(
                    "pool target path '{p}' must not contain '.' or '..' components"
                )))
            }
        }
    }
    Ok(out)
}

impl PoolDef {
    /// A new `dir` pool definition with a fresh uuid (`pool-define-as`).
    pub fn new_dir(name: &str, target: &str) -> Result<PoolDef> {
        check_name("pool", name)?;
        Ok(PoolDef {
            name: name.to_string(),
            uuid: Uuid::new_v4(),
            pool_type: PoolType::Dir,
            target: normalize_target(target)?,
            permissions: None,
        })
    }

    /// Parses libvirt pool XML. Live figures (`capacity`, `allocation`,
    /// `available`) are validated and ignored, as libvirt does; a missing
    /// uuid is generated.
    pub fn from_xml(text: &str) -> Result<PoolDef> {
        let doc = xml::parse("pool", text)?;
        let root = doc.root_element();
        if root.tag_name().name() != "pool" {
            return Err(Error::invalid(format!(
                "expected a <pool> document, found <{}>",
                root.tag_name().name()
            )));
        }
        let t = root
            .attribute("type")
            .ok_or_else(|| Error::invalid("<pool> has no type attribute (use type='dir')"))?;
        let pool_type = PoolType::from_name(t)?;
        check_children(
            root,
            "pool",
            &[
                "name",
                "uuid",
                "capacity",
                "allocation",
                "available",
                "source",
                "target",
            ],
        )?;
        let name = child_text(root, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::invalid("<pool/name> is missing"))?;
        check_name("pool", name)?;
        let uuid = match child_text(root, "uuid") {
            Some(u) if !u.is_empty() => Uuid::parse(u)?,
            _ => Uuid::new_v4(),
        };
        for f in ["capacity", "allocation", "available"] {
            if let Some(n) = child(root, f) {
                xml::scaled(n, &format!("pool/{f}"))?;
            }
        }
        if let Some(src) = child(root, "source") {
            if let Some(c) = xml::elements(src).next() {
                return Err(Error::invalid(format!(
                    "unsupported element <pool/source/{}>: a '{}' pool has no source",
                    c.tag_name().name(),
                    pool_type.name()
                )));
            }
        }
        let target =
            child(root, "target").ok_or_else(|| Error::invalid("<pool/target> is missing"))?;
        check_children(target, "pool/target", &["path", "permissions"])?;
        let path = child_text(target, "path")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::invalid("<pool/target/path> is missing"))?;
        let permissions = child(target, "permissions")
            .map(|p| Permissions::parse(p, "pool/target/permissions"))
            .transpose()?;
        Ok(PoolDef {
            name: name.to_string(),
            uuid,
            pool_type,
            target: normalize_target(path)?,
            permissions,
        })
    }

    /// The pool's XML; `usage` fills capacity/allocation/available (zero
    /// for an inactive pool, as libvirt prints them).
    pub fn to_xml(&self, usage: Option<PoolUsage>) -> String {
        let u = usage.unwrap_or_default();
        let mut s = format!("<pool type='{}'>\n", self.pool_type.name());
        s += &format!("  <name>{}</name>\n", esc(&self.name));
        s += &format!("  <uuid>{}</uuid>\n", self.uuid);
        s += &format!("  <capacity unit='bytes'>{}</capacity>\n", u.capacity);
        s += &format!("  <allocation unit='bytes'>{}</allocation>\n", u.allocation);
        s += &format!("  <available unit='bytes'>{}</available>\n", u.available);
        s += "  <source>\n  </source>\n";
        s += "  <target>\n";
        s += &format!("    <path>{}</path>\n", esc(&self.target.to_string_lossy()));
        if let Some(p) = &self.permissions {
            p.write(&mut s, "    ");
        }
        s += "  </target>\n</pool>\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIRSH_DUMP: &str = "<pool type='dir'>
  <name>default</name>
  <uuid>3bfb3b36-7f0e-4c2c-9d61-5b4a2d1c0e11</uuid>
  <capacity unit='bytes'>20960000000</capacity>
  <allocation unit='bytes'>5000000000</allocation>
  <available unit='bytes'>15960000000</available>
  <source>
  </source>
  <target>
    <path>/var/lib/libvirt/images/</path>
    <permissions>
      <mode>0711</mode>
      <owner>0</owner>
      <group>-1</group>
      <label>system_u:object_r:virt_image_t:s0</label>
    </permissions>
  </target>
</pool>";

    #[test]
    fn parses_virsh_output_and_round_trips() {
        let d = PoolDef::from_xml(VIRSH_DUMP).unwrap();
        assert_eq!(d.name, "default");
        assert_eq!(d.uuid.to_string(), "3bfb3b36-7f0e-4c2c-9d61-5b4a2d1c0e11");
        assert_eq!(d.target, PathBuf::from("/var/lib/libvirt/images"));
        let p = d.permissions.clone().unwrap();
        assert_eq!((p.mode, p.owner, p.group), (Some(0o711), Some(0), None));
        assert_eq!(
            p.label.as_deref(),
            Some("system_u:object_r:virt_image_t:s0")
        );
        let usage = PoolUsage {
            capacity: 1 << 30,
            allocation: 1 << 20,
            available: (1 << 30) - (1 << 20),
        };
        let out = d.to_xml(Some(usage));
        assert!(
            out.contains("<capacity unit='bytes'>1073741824</capacity>"),
            "{out}"
        );
        assert!(out.contains("<mode>0711</mode>"), "{out}");
        assert_eq!(PoolDef::from_xml(&out).unwrap(), d);
    }

    #[test]
    fn minimal_pool_gets_a_uuid() {
        let d = PoolDef::from_xml(
            "<pool type='dir'><name>p</name><target><path>/srv/p</path></target></pool>",
        )
        .unwrap();
        assert_eq!(d.target, PathBuf::from("/srv/p"));
        let d2 = PoolDef::from_xml(&d.to_xml(None)).unwrap();
        assert_eq!(d2.uuid, d.uuid);
    }

    fn err(x: &str) -> String {
        PoolDef::from_xml(x).unwrap_err().to_string()
    }

    #[test]
    fn clear_errors_for_bad_pools() {
        let e =
            err("<pool type='logical'><name>p</name><target><path>/dev/vg</path></target></pool>");
        assert!(
            e.contains("storage pool type 'logical' is not supported"),
            "{e}"
        );
        let e = err("<pool type='floppy'><name>p</name></pool>");
        assert!(e.contains("unknown storage pool type 'floppy'"), "{e}");
        assert!(err("<pool><name>p</name></pool>").contains("no type attribute"));
        assert!(err("<pool type='dir'><name>p</name>").contains("malformed pool XML"));
        assert!(err("<domain type='kvm'/>").contains("expected a <pool> document"));
        assert!(
            err("<pool type='dir'><target><path>/x</path></target></pool>")
                .contains("<pool/name> is missing")
        );
        assert!(err("<pool type='dir'><name>p</name></pool>").contains("<pool/target> is missing"));
        assert!(err("<pool type='dir'><name>p</name><target/></pool>")
            .contains("<pool/target/path> is missing"));
        let e = err("<pool type='dir'><name>p</name><target><path>rel/dir</path></target></pool>");
        assert!(e.contains("must be absolute"), "{e}");
        let e =
            err("<pool type='dir'><name>p</name><target><path>/a/../etc</path></target></pool>");
        assert!(e.contains("'..'"), "{e}");
        let e = err("<pool type='dir'><name>a/b</name><target><path>/x</path></target></pool>");
        assert!(e.contains("'/'"), "{e}");
        let e = err("<pool type='dir'><name>p</name><uuid>nope</uuid><target><path>/x</path></target></pool>");
        assert!(e.contains("malformed uuid 'nope'"), "{e}");
        let e = err("<pool type='dir'><name>p</name><capacity unit='parsec'>1</capacity><target><path>/x</path></target></pool>");
        assert!(e.contains("<pool/capacity>: unknown unit 'parsec'"), "{e}");
        let e = err("<pool type='dir'><name>p</name><source><host name='h'/></source><target><path>/x</path></target></pool>");
        assert!(e.contains("<pool/source/host>"), "{e}");
        let e = err(
            "<pool type='dir'><name>p</name><features/><target><path>/x</path></target></pool>",
        );
        assert!(e.contains("unsupported element <pool/features>"), "{e}");
        let e = err(
            "<pool type='dir'><name>p</name><name>q</name><target><path>/x</path></target></pool>",
        );
        assert!(e.contains("<pool/name> appears more than once"), "{e}");
        let e = err("<pool type='dir'><name>p</name><target><path>/x</path><permissions><mode>999</mode></permissions></target></pool>");
        assert!(e.contains("not an octal file mode"), "{e}");
        let e = err("<pool type='dir'><name>p</name><target><path>/x</path><permissions><owner>root</owner></permissions></target></pool>");
        assert!(e.contains("<pool/target/permissions/owner>"), "{e}");
    }

    #[test]
    fn special_characters_are_escaped() {
        let d = PoolDef::new_dir("a&b<c>'d\"", "/srv/x&y").unwrap();
        let back = PoolDef::from_xml(&d.to_xml(None)).unwrap();
        assert_eq!(back, d);
    }
}
