//! `host.*` handlers.

use std::sync::Arc;

use vireo_api::protocol::host::{NodeInfo, VersionResult};
use vireo_api::RpcError;

use crate::state::Daemon;

pub fn version(d: &Arc<Daemon>) -> Result<VersionResult, RpcError> {
    Ok(VersionResult {
        daemon: vireo_api::VERSION.into(),
        api: vireo_api::API_VERSION,
        vmm: d.settings.vmm_version.clone(),
        hypervisor: "KVM".into(),
        uri: d.settings.uri.clone(),
    })
}

pub fn nodeinfo() -> Result<NodeInfo, RpcError> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |block: &str, key: &str| -> Option<String> {
        block.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let blocks: Vec<&str> = cpuinfo
        .split("\n\n")
        .filter(|b| b.contains("processor"))
        .collect();
    let cpus = blocks.len().max(1) as u32;
    let mhz = blocks
        .first()
        .and_then(|b| field(b, "cpu MHz"))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u32;
    let mut packages: Vec<String> = blocks
        .iter()
        .filter_map(|b| field(b, "physical id"))
        .collect();
    packages.sort();
    packages.dedup();
    let sockets = packages.len().max(1) as u32;
    let cores = blocks
        .first()
        .and_then(|b| field(b, "cpu cores"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(cpus / sockets)
        .max(1);
    let threads = (cpus / sockets / cores).max(1);
    let numa_cells = std::fs::read_dir("/sys/devices/system/node")
        .map(|r| {
            r.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("node") && n[4..].parse::<u32>().is_ok()
                })
                .count() as u32
        })
        .unwrap_or(1)
        .max(1);
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    Ok(NodeInfo {
        cpu_model: std::env::consts::ARCH.into(),
        cpus,
        mhz,
        numa_cells,
        sockets_per_cell: (sockets / numa_cells).max(1),
        cores_per_socket: cores,
        threads_per_core: threads,
        memory_kib,
    })
}
