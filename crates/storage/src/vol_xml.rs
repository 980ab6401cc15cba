//! libvirt storage volume XML (`<volume type='file'>`): the definition
//! `vol-create` takes, parsed into [`VolumeDef`]. The XML of an existing
//! volume (`vol-dumpxml`) is written by [`crate::VolumeInfo::to_xml`].

use std::path::PathBuf;

use vireo_block::Format;

use crate::pool_xml::Permissions;
use crate::xml::{self, check_children, child, child_text, esc};
use crate::{check_name, Error, Result};

/// libvirt volume formats vireo does not read at all.
const LIBVIRT_VOL_FORMATS: &[&str] = &[
    "none", "auto", "dir", "bochs", "cloop", "dmg", "iso", "cow", "qcow", "qed", "ploop", "luks",
    "fat",
];

/// Parses a libvirt volume format name into a block format.
pub fn parse_format(what: &str, name: &str) -> Result<Format> {
    match Format::from_name(name) {
        Ok(f) => Ok(f),
        Err(_) if LIBVIRT_VOL_FORMATS.contains(&name) => Err(Error::invalid(format!(
            "{what}: volume format '{name}' is not supported (vireo supports raw and qcow2; vmdk, vdi, vpc, vhdx read-only)"
        ))),
        Err(_) => Err(Error::invalid(format!(
            "{what}: unknown volume format '{name}'"
        ))),
    }
}

/// Formats a new volume may have.
pub(crate) fn check_creatable(f: Format) -> Result<()> {
    match f {
        Format::Raw | Format::Qcow2 => Ok(()),
        f => Err(Error::invalid(format!(
            "creating '{f}' volumes is not supported (use raw or qcow2)"
        ))),
    }
}

/// `<backingStore>`: the image a copy-on-write volume reads through to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingDef {
    pub path: PathBuf,
    /// `None`: probe the backing file's format.
    pub format: Option<Format>,
}

/// A volume to create (`vol-create FILE`, or built by `vol-create-as`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDef {
    pub name: String,
    /// Virtual size in bytes; `None` (only with a backing store): the
    /// backing image's size.
    pub capacity: Option<u64>,
    /// Bytes to allocate up front; `allocation >= capacity` asks for a fully
    /// allocated volume (libvirt's rule).
    pub allocation: Option<u64>,
    /// `None`: raw, the dir pool's default.
    pub format: Option<Format>,
    pub permissions: Option<Permissions>,
    pub backing: Option<BackingDef>,
    /// qcow2 `<compat>`: "1.1" (version 3, the default) or "0.10".
    pub compat: Option<String>,
    /// qcow2 `<features><lazy_refcounts/></features>`.
    pub lazy_refcounts: bool,
    /// qcow2 `<clusterSize>` in bytes.
    pub cluster_size: Option<u64>,
}

impl VolumeDef {
    /// A raw volume of `capacity` bytes with nothing else set.
    pub fn new(name: &str, capacity: u64) -> VolumeDef {
        VolumeDef {
            name: name.to_string(),
            capacity: Some(capacity),
            allocation: None,
            format: None,
            permissions: None,
            backing: None,
            compat: None,
            lazy_refcounts: false,
            cluster_size: None,
        }
    }

    /// Parses libvirt volume XML. Elements describing an existing volume
    /// (`key`, `physical`, `target/path`, timestamps) are accepted and
    /// ignored, so `vol-dumpxml` output can be fed back.
    pub fn from_xml(text: &str) -> Result<VolumeDef> {
        let doc = xml::parse("volume", text)?;
        let root = doc.root_element();
        if root.tag_name().name() != "volume" {
            return Err(Error::invalid(format!(
                "expected a <volume> document, found <{}>",
                root.tag_name().name()
            )));
        }
        match root.attribute("type") {
            None | Some("file") => {}
            Some(t) => {
                return Err(Error::invalid(format!(
                    "volume type '{t}' is not supported in a dir pool (use type='file')"
                )))
            }
        }
        check_children(
            root,
            "volume",
            &[
                "name",
                "key",
                "source",
                "capacity",
                "allocation",
                "physical",
                "target",
                "backingStore",
            ],
        )?;
        let name = child_text(root, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::invalid("<volume/name> is missing"))?;
        check_name("volume", name)?;
        if let Some(src) = child(root, "source") {
            if let Some(c) = xml::elements(src).next() {
                return Err(Error::invalid(format!(
                    "unsupported element <volume/source/{}>",
                    c.tag_name().name()
                )));
            }
        }
        let capacity = child(root, "capacity")
            .map(|n| xml::scaled(n, "volume/capacity"))
            .transpose()?;
        let allocation = child(root, "allocation")
            .map(|n| xml::scaled(n, "volume/allocation"))
            .transpose()?;
        if let Some(n) = child(root, "physical") {
            xml::scaled(n, "volume/physical")?;
        }
        let mut def = VolumeDef::new(name, 0);
        def.capacity = capacity;
        def.allocation = allocation;
        if let Some(t) = child(root, "target") {
            check_children(
                t,
                "volume/target",
                &[
                    "path",
                    "format",
                    "permissions",
                    "timestamps",
                    "compat",
                    "clusterSize",
                    "features",
                    "nocow",
                    "encryption",
                ],
            )?;
            if child(t, "encryption").is_some() {
                return Err(Error::invalid(
                    "<volume/target/encryption>: encrypted volumes are not supported",
                ));
            }
            if let Some(f) = child(t, "format") {
                let ty = f.attribute("type").ok_or_else(|| {
                    Error::invalid("<volume/target/format> has no type attribute")
                })?;
                def.format = Some(parse_format("<volume/target/format>", ty)?);
            }
            def.permissions = child(t, "permissions")
                .map(|p| Permissions::parse(p, "volume/target/permissions"))
                .transpose()?;
            if let Some(c) = child_text(t, "compat") {
                if c != "1.1" && c != "0.10" {
                    return Err(Error::invalid(format!(
                        "<volume/target/compat>: '{c}' is not a qcow2 compatibility level (1.1 or 0.10)"
                    )));
                }
                def.compat = Some(c.to_string());
            }
            if let Some(n) = child(t, "clusterSize") {
                def.cluster_size = Some(xml::scaled(n, "volume/target/clusterSize")?);
            }
            if let Some(feat) = child(t, "features") {
                check_children(feat, "volume/target/features", &["lazy_refcounts"])?;
                def.lazy_refcounts = child(feat, "lazy_refcounts").is_some();
            }
        }
        if let Some(b) = child(root, "backingStore") {
            check_children(
                b,
                "volume/backingStore",
                &["path", "format", "permissions", "timestamps"],
            )?;
            let path = child_text(b, "path")
                .filter(|p| !p.is_empty())
                .ok_or_else(|| Error::invalid("<volume/backingStore/path> is missing"))?;
            if path.contains('\0') {
                return Err(Error::invalid("backing store path contains a NUL byte"));
            }
            let format = match child(b, "format") {
                Some(f) => Some(parse_format(
                    "<volume/backingStore/format>",
                    f.attribute("type").ok_or_else(|| {
                        Error::invalid("<volume/backingStore/format> has no type attribute")
                    })?,
                )?),
                None => None,
            };
            def.backing = Some(BackingDef {
                path: PathBuf::from(path),
                format,
            });
        }
        if def.capacity.is_none() && def.backing.is_none() {
            return Err(Error::invalid("<volume/capacity> is missing"));
        }
        Ok(def)
    }

    /// The definition as libvirt volume XML (`vol-create-as --print-xml`).
    pub fn to_xml(&self) -> String {
        let mut s = String::from("<volume>\n");
        s += &format!("  <name>{}</name>\n", esc(&self.name));
        if let Some(c) = self.capacity {
            s += &format!("  <capacity unit='bytes'>{c}</capacity>\n");
        }
        if let Some(a) = self.allocation {
            s += &format!("  <allocation unit='bytes'>{a}</allocation>\n");
        }
        s += "  <target>\n";
        s += &format!(
            "    <format type='{}'/>\n",
            self.format.unwrap_or(Format::Raw).name()
        );
        if let Some(p) = &self.permissions {
            p.write(&mut s, "    ");
        }
        if let Some(c) = &self.compat {
            s += &format!("    <compat>{c}</compat>\n");
        }
        if let Some(cs) = self.cluster_size {
            s += &format!("    <clusterSize unit='B'>{cs}</clusterSize>\n");
        }
        if self.lazy_refcounts {
            s += "    <features>\n      <lazy_refcounts/>\n    </features>\n";
        }
        s += "  </target>\n";
        if let Some(b) = &self.backing {
            s += "  <backingStore>\n";
            s += &format!("    <path>{}</path>\n", esc(&b.path.to_string_lossy()));
            if let Some(f) = b.format {
                s += &format!("    <format type='{f}'/>\n");
            }
            s += "  </backingStore>\n";
        }
        s += "</volume>\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIRSH_DUMP: &str = "<volume type='file'>
  <name>vm1.qcow2</name>
  <key>/var/lib/libvirt/images/vm1.qcow2</key>
  <capacity unit='bytes'>10737418240</capacity>
  <allocation unit='bytes'>200704</allocation>
  <physical unit='bytes'>196616</physical>
  <target>
    <path>/var/lib/libvirt/images/vm1.qcow2</path>
    <format type='qcow2'/>
    <permissions>
      <mode>0600</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
    <timestamps>
      <atime>1700000000.1</atime>
      <mtime>1700000000.1</mtime>
      <ctime>1700000000.1</ctime>
    </timestamps>
    <compat>1.1</compat>
    <clusterSize unit='B'>65536</clusterSize>
    <features>
      <lazy_refcounts/>
    </features>
  </target>
  <backingStore>
    <path>/var/lib/libvirt/images/base.qcow2</path>
    <format type='qcow2'/>
  </backingStore>
</volume>";

    #[test]
    fn parses_virsh_vol_dumpxml() {
        let d = VolumeDef::from_xml(VIRSH_DUMP).unwrap();
        assert_eq!(d.name, "vm1.qcow2");
        assert_eq!(d.capacity, Some(10 << 30));
        assert_eq!(d.allocation, Some(200704));
        assert_eq!(d.format, Some(Format::Qcow2));
        assert_eq!(d.compat.as_deref(), Some("1.1"));
        assert_eq!(d.cluster_size, Some(65536));
        assert!(d.lazy_refcounts);
        assert_eq!(d.permissions.as_ref().and_then(|p| p.mode), Some(0o600));
        let b = d.backing.clone().unwrap();
        assert_eq!(b.path, PathBuf::from("/var/lib/libvirt/images/base.qcow2"));
        assert_eq!(b.format, Some(Format::Qcow2));
        assert_eq!(VolumeDef::from_xml(&d.to_xml()).unwrap(), d);
    }

    #[test]
    fn units_and_defaults() {
        let d = VolumeDef::from_xml(
            "<volume><name>a.img</name><capacity unit='G'>2</capacity></volume>",
        )
        .unwrap();
        assert_eq!(d.capacity, Some(2 << 30));
        assert_eq!(d.format, None);
        let d = VolumeDef::from_xml(
            "<volume><name>c</name><backingStore><path>/b.qcow2</path></backingStore><target><format type='qcow2'/></target></volume>",
        )
        .unwrap();
        assert_eq!(d.capacity, None, "capacity may come from the backing store");
    }

    fn err(x: &str) -> String {
        VolumeDef::from_xml(x).unwrap_err().to_string()
    }

    #[test]
    fn clear_errors_for_bad_volumes() {
        assert!(err("<volume type='block'><name>a</name></volume>")
            .contains("volume type 'block' is not supported"));
        assert!(err("<volume><capacity>1</capacity></volume>").contains("<volume/name> is missing"));
        assert!(err("<volume><name>a</name></volume>").contains("<volume/capacity> is missing"));
        assert!(
            err("<volume><name>../etc</name><capacity>1</capacity></volume>")
                .contains("volume name")
        );
        let e = err("<volume><name>a</name><capacity unit='KX'>1</capacity></volume>");
        assert!(e.contains("<volume/capacity>: unknown unit 'KX'"), "{e}");
        let e = err("<volume><name>a</name><capacity>1</capacity><target><format type='iso'/></target></volume>");
        assert!(e.contains("volume format 'iso' is not supported"), "{e}");
        let e = err("<volume><name>a</name><capacity>1</capacity><target><format type='zip'/></target></volume>");
        assert!(e.contains("unknown volume format 'zip'"), "{e}");
        let e = err("<volume><name>a</name><capacity>1</capacity><target><encryption format='luks'/></target></volume>");
        assert!(e.contains("encrypted volumes are not supported"), "{e}");
        let e = err("<volume><name>a</name><capacity>1</capacity><target><compat>2.0</compat></target></volume>");
        assert!(e.contains("<volume/target/compat>"), "{e}");
        let e = err("<volume><name>a</name><capacity>1</capacity><backingStore/></volume>");
        assert!(e.contains("<volume/backingStore/path> is missing"), "{e}");
        let e = err("<volume><name>a</name><capacity>1</capacity><snapshot/></volume>");
        assert!(e.contains("unsupported element <volume/snapshot>"), "{e}");
        assert!(err("<volume><name>a</name>").contains("malformed volume XML"));
    }
}
