//! `pool.*` and `vol.*`: storage pools (libvirt's `dir` type) and their volumes
//! (virsh's `pool-*` and `vol-*` verbs). Served by crate vireo-storage in the daemon.
//!
//! A pool is named by `pool`: its name or UUID. A volume is named by `vol` with an
//! optional `pool`: with a pool, the volume's name (or path) in it; without, the volume's
//! path or key, searched in every active pool (as virsh's `VOL [--pool POOL]`).
//!
//! `vol.upload` and `vol.download` move bytes over the connection as a *stream*
//! (see [`crate::stream`] and docs/api.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::domain::XmlResult;
use super::Empty;
use crate::method;

/// Params naming one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRef {
    /// Name or UUID.
    pub pool: String,
}

impl PoolRef {
    pub fn new(pool: impl Into<String>) -> Self {
        Self { pool: pool.into() }
    }
}

/// `running` or `inactive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    Running,
    Inactive,
}

impl PoolState {
    pub fn is_active(self) -> bool {
        self == PoolState::Running
    }
}

/// One pool, as `pool-info` and `pool-list --details` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub uuid: String,
    /// `dir`.
    #[serde(rename = "type")]
    pub pool_type: String,
    pub state: PoolState,
    /// Always true: vireo has no transient pools.
    pub persistent: bool,
    pub autostart: bool,
    /// The directory holding the volumes.
    pub target: PathBuf,
    /// File-system figures of the target in bytes (active pools only).
    pub capacity: Option<u64>,
    pub allocation: Option<u64>,
    pub available: Option<u64>,
    /// Volumes in the pool (active pools; 0 otherwise).
    pub volumes: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolListParams {
    /// Inactive pools too (virsh `--all`).
    #[serde(default)]
    pub all: bool,
    /// Only inactive pools (virsh `--inactive`).
    #[serde(default)]
    pub inactive: bool,
    /// Only pools that do (true) or do not (false) autostart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolListResult {
    /// Sorted by name.
    pub pools: Vec<PoolInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDefineAsParams {
    pub name: String,
    /// `dir` (the only type vireo implements).
    #[serde(rename = "type")]
    pub pool_type: String,
    /// The directory (absolute).
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDefineParams {
    /// libvirt pool XML.
    pub xml: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDefineResult {
    pub name: String,
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStartParams {
    pub pool: String,
    /// Create the target directory first (virsh `pool-start --build`).
    #[serde(default)]
    pub build: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolAutostartParams {
    pub pool: String,
    pub enable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolGetXmlParams {
    pub pool: String,
    /// The stored definition rather than the running one with live figures.
    #[serde(default)]
    pub inactive: bool,
}

/// Params naming one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolRef {
    /// The pool (name or UUID); without it `vol` must be a path or key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Name (with `pool`), path or key.
    pub vol: String,
}

impl VolRef {
    pub fn new(pool: Option<&str>, vol: impl Into<String>) -> Self {
        Self {
            pool: pool.map(str::to_string),
            vol: vol.into(),
        }
    }
}

/// The image a copy-on-write volume reads through to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingInfo {
    pub path: PathBuf,
    /// The format recorded in the image header, if any.
    pub format: Option<String>,
}

/// One volume, as `vol-info`, `vol-list --details` and `vol-dumpxml` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolInfo {
    pub name: String,
    pub pool: String,
    /// libvirt's volume key: the path, for file volumes.
    pub key: String,
    pub path: PathBuf,
    /// `file`.
    #[serde(rename = "type")]
    pub vol_type: String,
    /// `raw`, `qcow2` (or, for existing files, `vmdk`, `vdi`, `vpc`, `vhdx`).
    pub format: String,
    /// Guest-visible size in bytes.
    pub capacity: u64,
    /// Bytes allocated on the host.
    pub allocation: u64,
    /// File length in bytes.
    pub physical: u64,
    pub backing: Option<BackingInfo>,
    /// Why the image could not be opened, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolListParams {
    pub pool: String,
    /// Re-read every file (capacity, allocation) as `vol-list --details` does.
    #[serde(default)]
    pub details: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolListResult {
    /// Sorted by name.
    pub volumes: Vec<VolInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolCreateAsParams {
    pub pool: String,
    pub name: String,
    /// Bytes.
    pub capacity: u64,
    /// `raw` (default) or `qcow2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Bytes to allocate up front (≥ capacity: the whole volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<u64>,
    /// A volume of the same pool (name), or of any active pool (path or key): the new
    /// volume is a qcow2 linked clone of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_vol: Option<String>,
    /// The backing volume's format (probed when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_vol_format: Option<String>,
    /// qcow2 `preallocation=metadata`.
    #[serde(default)]
    pub prealloc_metadata: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolCreateParams {
    pub pool: String,
    /// libvirt volume XML.
    pub xml: String,
    #[serde(default)]
    pub prealloc_metadata: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolPathResult {
    pub pool: String,
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolCloneParams {
    #[serde(flatten)]
    pub vol: VolRef,
    /// Name of the copy, in the same pool.
    pub new_name: String,
    #[serde(default)]
    pub prealloc_metadata: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolResizeParams {
    #[serde(flatten)]
    pub vol: VolRef,
    /// Bytes: the new capacity, or with `delta` the change.
    pub capacity: u64,
    /// `capacity` is added (subtracted with `shrink`).
    #[serde(default)]
    pub delta: bool,
    /// Allow making the volume smaller.
    #[serde(default)]
    pub shrink: bool,
    /// Allocate the new space (raw volumes).
    #[serde(default)]
    pub allocate: bool,
}

/// `vol.upload` / `vol.download`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolTransferParams {
    #[serde(flatten)]
    pub vol: VolRef,
    /// Where in the volume's file the transfer starts.
    #[serde(default)]
    pub offset: u64,
    /// At most this many bytes (default: until the stream ends / the file ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferResult {
    /// Bytes moved.
    pub bytes: u64,
}

method!(
    /// Storage pools (active ones unless `all`/`inactive`).
    PoolList, "pool.list", PoolListParams, PoolListResult);
method!(
    /// Define a `dir` pool from a name and a target directory.
    PoolDefineAs, "pool.define_as", PoolDefineAsParams, PoolDefineResult);
method!(
    /// Define (or, same name and UUID, update) a pool from XML.
    PoolDefine, "pool.define", PoolDefineParams, PoolDefineResult);
method!(
    /// Create an inactive pool's target directory.
    PoolBuild, "pool.build", PoolRef, Empty);
method!(
    /// Activate a pool (scan its volumes).
    PoolStart, "pool.start", PoolStartParams, Empty);
method!(
    /// Deactivate a pool; its files stay.
    PoolDestroy, "pool.destroy", PoolRef, Empty);
method!(
    /// Forget an inactive pool; its files stay.
    PoolUndefine, "pool.undefine", PoolRef, Empty);
method!(
    /// Start (or not) the pool with the daemon.
    PoolSetAutostart, "pool.set_autostart", PoolAutostartParams, Empty);
method!(
    /// virsh pool-info.
    PoolGetInfo, "pool.info", PoolRef, PoolInfo);
method!(
    /// Rescan an active pool's directory.
    PoolRefresh, "pool.refresh", PoolRef, Empty);
method!(
    /// virsh pool-dumpxml.
    PoolGetXml, "pool.get_xml", PoolGetXmlParams, XmlResult);
method!(
    /// Make sure the `default` pool (in the images directory) exists and runs, as
    /// virt-install does before it puts a new disk there.
    PoolEnsureDefault, "pool.ensure_default", Empty, PoolInfo);
method!(
    /// The volumes of an active pool.
    VolList, "vol.list", VolListParams, VolListResult);
method!(
    /// virsh vol-create-as.
    VolCreateAs, "vol.create_as", VolCreateAsParams, VolInfo);
method!(
    /// virsh vol-create: a volume from libvirt volume XML.
    VolCreate, "vol.create", VolCreateParams, VolInfo);
method!(
    /// virsh vol-info (re-reads the file).
    VolGetInfo, "vol.info", VolRef, VolInfo);
method!(
    /// virsh vol-path; also resolves a path or key to its pool and name.
    VolGetPath, "vol.path", VolRef, VolPathResult);
method!(
    /// virsh vol-dumpxml.
    VolGetXml, "vol.get_xml", VolRef, XmlResult);
method!(
    /// A standalone copy of a volume in the same pool.
    VolClone, "vol.clone", VolCloneParams, VolInfo);
method!(
    /// Change a volume's capacity; refused while a running domain uses it.
    VolResize, "vol.resize", VolResizeParams, VolInfo);
method!(
    /// Delete a volume; refused while a running domain uses it or another volume is
    /// backed by it.
    VolDelete, "vol.delete", VolRef, Empty);
method!(
    /// Write a stream of bytes into a volume's file; refused while a running domain uses it.
    VolUpload, "vol.upload", VolTransferParams, TransferResult);
method!(
    /// Read a volume's file as a stream of bytes.
    VolDownload, "vol.download", VolTransferParams, TransferResult);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_refs_flatten() {
        let p = VolResizeParams {
            vol: VolRef::new(Some("default"), "a.qcow2"),
            capacity: 1 << 30,
            delta: false,
            shrink: false,
            allocate: false,
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["pool"], "default");
        assert_eq!(v["vol"], "a.qcow2");
        let back: VolResizeParams =
            serde_json::from_str(r#"{"vol":"/p/a.qcow2","capacity":5}"#).unwrap();
        assert_eq!(back.vol.pool, None);
        assert!(!back.shrink);
        let t: VolTransferParams = serde_json::from_str(r#"{"vol":"x","pool":"p"}"#).unwrap();
        assert_eq!((t.offset, t.length), (0, None));
    }
}
