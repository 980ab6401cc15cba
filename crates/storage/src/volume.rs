//! Volumes as files: what a volume looks like from the outside
//! ([`VolumeInfo`], read by probing the file with vireo-block) and the
//! file-level steps of creating and copying one.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use vireo_block::{BlockBackend, ExtentKind, Format, OpenOptions};

use crate::xml::esc;
use crate::{Error, Result};

/// The image a copy-on-write volume reads through to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackingInfo {
    /// Absolute path (a relative name in the image header is resolved
    /// against the volume's directory).
    pub path: PathBuf,
    /// The format recorded in the image header, if any.
    pub format: Option<String>,
}

/// A volume of a pool, as `vol-info` / `vol-list --details` /
/// `vol-dumpxml` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub pool: String,
    /// libvirt's volume key: for file volumes, the path.
    pub key: String,
    pub path: PathBuf,
    /// libvirt's volume type: always `file` in a dir pool.
    #[serde(rename = "type")]
    pub vol_type: String,
    /// Image format found by probing (`raw`, `qcow2`, `vmdk`, …).
    pub format: String,
    /// Guest-visible (virtual) size in bytes.
    pub capacity: u64,
    /// Bytes allocated on the host (st_blocks × 512).
    pub allocation: u64,
    /// File length in bytes.
    pub physical: u64,
    pub backing: Option<BackingInfo>,
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
    /// Why the image could not be opened, when it could not (then
    /// `capacity` is the file length).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// Reads a volume's properties from its file. Only regular files are
/// volumes (symlinks are not followed: they could point outside the pool).
pub fn inspect(pool: &str, name: &str, path: &Path) -> Result<VolumeInfo> {
    let md = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, "stat", e))?;
    if !md.file_type().is_file() {
        return Err(Error::invalid(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let mut info = VolumeInfo {
        name: name.to_string(),
        pool: pool.to_string(),
        key: path.to_string_lossy().into_owned(),
        path: path.to_path_buf(),
        vol_type: "file".into(),
        format: "raw".into(),
        capacity: md.len(),
        allocation: md.blocks() * 512,
        physical: md.len(),
        backing: None,
        mode: md.mode() & 0o7777,
        owner: md.uid(),
        group: md.gid(),
        error: None,
    };
    let fmt = match vireo_block::probe(path) {
        Ok(f) => f,
        Err(e) => {
            info.error = Some(e.to_string());
            return Ok(info);
        }
    };
    info.format = fmt.name().to_string();
    if fmt == Format::Raw {
        return Ok(info);
    }
    let opts = OpenOptions {
        format: Some(fmt),
        read_only: true,
        open_backing: false,
        cache_bytes: 64 << 10,
        direct: false,
    };
    match vireo_block::open(path, &opts) {
        Ok(img) => {
            info.capacity = img.size();
            if let Some(q) = img.as_qcow2() {
                let h = q.header();
                info.backing = h.backing_file.map(|b| BackingInfo {
                    path: vireo_block::qcow2::resolve_backing(path, &b),
                    format: h.backing_format,
                });
            }
        }
        Err(e) => {
            log::warn!("volume {name} in pool {pool}: {e}");
            info.error = Some(e.to_string());
        }
    }
    Ok(info)
}

impl VolumeInfo {
    /// libvirt volume XML (`vol-dumpxml`).
    pub fn to_xml(&self) -> String {
        let p = esc(&self.path.to_string_lossy());
        let mut s = String::from("<volume type='file'>\n");
        s += &format!("  <name>{}</name>\n", esc(&self.name));
        s += &format!("  <key>{}</key>\n", esc(&self.key));
        s += &format!("  <capacity unit='bytes'>{}</capacity>\n", self.capacity);
        s += &format!(
            "  <allocation unit='bytes'>{}</allocation>\n",
            self.allocation
        );
        s += &format!("  <physical unit='bytes'>{}</physical>\n", self.physical);
        s += "  <target>\n";
        s += &format!("    <path>{p}</path>\n");
        s += &format!("    <format type='{}'/>\n", esc(&self.format));
        s += &format!(
            "    <permissions>\n      <mode>{:04o}</mode>\n      <owner>{}</owner>\n      <group>{}</group>\n    </permissions>\n",
            self.mode, self.owner, self.group
        );
        s += "  </target>\n";
        if let Some(b) = &self.backing {
            s += "  <backingStore>\n";
            s += &format!("    <path>{}</path>\n", esc(&b.path.to_string_lossy()));
            if let Some(f) = &b.format {
                s += &format!("    <format type='{}'/>\n", esc(f));
            }
            s += "  </backingStore>\n";
        }
        s += "</volume>\n";
        s
    }
}

/// Copies the guest-visible contents of `src` into `dst` (freshly created,
/// reading as zeroes, at least as large), skipping unallocated and zero
/// ranges so that the copy stays sparse.
pub fn copy_contents(src: &dyn BlockBackend, dst: &dyn BlockBackend) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    const GRAIN: usize = 64 << 10;
    let size = src.size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0;
    while off < size {
        let ext = src.block_status(off, (size - off).min(CHUNK))?;
        let n = ext.length.max(1).min(size - off);
        if ext.kind == ExtentKind::Data {
            let b = &mut buf[..n as usize];
            src.read_at(b, off)?;
            for (i, piece) in b.chunks(GRAIN).enumerate() {
                if piece.iter().any(|&x| x != 0) {
                    dst.write_at(piece, off + (i * GRAIN) as u64)?;
                }
            }
        }
        off += n;
    }
    dst.flush()?;
    Ok(())
}

/// Sets a new file's mode and, when asked, its owner and group.
pub fn apply_permissions(
    path: &Path,
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, "chmod", e))?;
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::chown(path, owner, group).map_err(|e| Error::io(path, "chown", e))?;
    }
    Ok(())
}
