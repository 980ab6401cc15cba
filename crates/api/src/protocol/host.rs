//! `host.*`: the daemon and the machine it runs on.

use serde::{Deserialize, Serialize};

use super::Empty;
use crate::method;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResult {
    /// vireod's release.
    pub daemon: String,
    /// docs/api.md version (`vireo_api::API_VERSION`).
    pub api: u32,
    /// The VMM vireod launches (`vireo-vmm --version`), if it could be asked.
    pub vmm: Option<String>,
    /// `KVM`.
    pub hypervisor: String,
    /// The URI this daemon serves.
    pub uri: String,
}

/// virsh nodeinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `x86_64`.
    pub cpu_model: String,
    pub cpus: u32,
    pub mhz: u32,
    pub numa_cells: u32,
    pub sockets_per_cell: u32,
    pub cores_per_socket: u32,
    pub threads_per_core: u32,
    pub memory_kib: u64,
}

method!(
    /// Versions (also a cheap liveness check).
    HostVersion, "host.version", Empty, VersionResult);
method!(
    /// The host's CPUs and memory.
    HostNodeInfo, "host.nodeinfo", Empty, NodeInfo);
