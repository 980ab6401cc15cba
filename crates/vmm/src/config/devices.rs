//! Configuration of the VM's virtio devices (the `--disk`, `--net`, `--rng`, `--vsock`,
//! `--balloon` and `--console virtio` flags; the domain's `<disk>`, `<interface>`, `<rng>`,
//! `<vsock>`, `<memballoon>` and `<console type='virtio'>`).
//!
//! Every field has a serde default so configurations written before a field existed keep
//! loading; unknown fields are refused, as in [`VmConfig`](super::VmConfig).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Image format of a disk (`format=raw|qcow2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

/// One virtio-blk disk (`--disk path=…,format=raw|qcow2,readonly=on,serial=…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub format: DiskFormat,
    #[serde(default)]
    pub readonly: bool,
    /// Serial id the guest sees (`/sys/block/vdX/serial`).
    #[serde(default)]
    pub serial: Option<String>,
}

/// One virtio-net interface on a TAP device (`--net tap=NAME|auto,mac=…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// An existing TAP device's name; `None`: vireo creates one.
    #[serde(default)]
    pub tap: Option<String>,
    /// MAC address as `xx:xx:xx:xx:xx:xx`; `None`: one is generated.
    #[serde(default)]
    pub mac: Option<String>,
}

/// The virtio-rng device (`--rng`): bytes come from the host's getrandom(2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {}

/// The virtio-vsock device (`--vsock cid=N,socket=PATH`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    #[serde(default)]
    pub cid: u64,
    /// Host side: a unix socket path (per-port sockets derive from it).
    #[serde(default)]
    pub socket: PathBuf,
}

/// The virtio-balloon device (`--balloon`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {}
