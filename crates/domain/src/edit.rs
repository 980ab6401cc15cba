//! Changes made by virsh verbs with `--config` (`setmem`, `setmaxmem`, `setvcpus`) and the
//! rows of `domblklist` / `domiflist`.

use serde::{Deserialize, Serialize};
use vireo_vmm::config::MAX_XAPIC_CPUS;

use crate::error::DomainError;
use crate::model::*;
use crate::units::format_kib;

/// One row of `domblklist` (`--details` adds `kind` and `device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkRow {
    /// `file` or `block`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `disk`.
    pub device: String,
    /// `vda`, …
    pub target: String,
    /// The image path.
    pub source: String,
}

/// One row of `domiflist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfRow {
    /// The host tap device (`<target dev>`), `-` when not set.
    pub interface: String,
    /// `network`, `bridge` or `ethernet`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Network or bridge name, `-` for ethernet.
    pub source: String,
    /// Always `virtio`.
    pub model: String,
    pub mac: String,
}

impl Domain {
    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The domain's UUID (generated at parse time when the XML had none).
    pub fn uuid(&self) -> crate::Uuid {
        self.uuid
    }

    /// The disks, in document order.
    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.devices.iter().filter_map(|d| match d {
            Device::Disk(disk) => Some(disk),
            _ => None,
        })
    }

    /// The network interfaces, in document order.
    pub fn interfaces(&self) -> impl Iterator<Item = &Interface> {
        self.devices.iter().filter_map(|d| match d {
            Device::Interface(i) => Some(i),
            _ => None,
        })
    }

    /// The host paths of the disks (`undefine --remove-all-storage`).
    pub fn disk_paths(&self) -> Vec<std::path::PathBuf> {
        self.disks().map(|d| d.source.clone()).collect()
    }

    /// `domblklist` rows: one per disk.
    pub fn blk_rows(&self) -> Vec<BlkRow> {
        self.disks()
            .map(|d| BlkRow {
                kind: d.kind.as_str().to_string(),
                device: "disk".to_string(),
                target: d.target.dev.clone(),
                source: d.source.to_string_lossy().into_owned(),
            })
            .collect()
    }

    /// `domiflist` rows: one per interface.
    pub fn if_rows(&self) -> Vec<IfRow> {
        self.interfaces()
            .map(|i| IfRow {
                interface: i.target_dev.clone().unwrap_or_else(|| "-".to_string()),
                kind: i.kind.as_str().to_string(),
                source: i.source.clone().unwrap_or_else(|| "-".to_string()),
                model: "virtio".to_string(),
                mac: i.mac.to_string(),
            })
            .collect()
    }

    /// `setmem --config`: the memory the guest should have (`<currentMemory>`), KiB.
    /// It may not exceed `<memory>` (raise that with [`Domain::set_max_memory`]).
    pub fn set_memory(&mut self, kib: u64) -> Result<(), DomainError> {
        if kib == 0 {
            return Err(DomainError::invalid(
                "/domain/currentMemory",
                "the memory size must be greater than 0",
            ));
        }
        if kib > self.memory_kib {
            return Err(DomainError::invalid(
                "/domain/currentMemory",
                format!(
                    "cannot set memory to {}, more than the maximum of {} (raise it with setmaxmem)",
                    format_kib(kib),
                    format_kib(self.memory_kib)
                ),
            ));
        }
        self.current_memory_kib = kib;
        Ok(())
    }

    /// `setmaxmem --config`: the guest's RAM (`<memory>`), KiB. `<currentMemory>` is lowered
    /// to it when above.
    pub fn set_max_memory(&mut self, kib: u64) -> Result<(), DomainError> {
        if kib == 0 {
            return Err(DomainError::invalid(
                "/domain/memory",
                "the memory size must be greater than 0",
            ));
        }
        if kib > u64::MAX / 1024 {
            return Err(DomainError::invalid(
                "/domain/memory",
                format!("{} does not fit in 64 bits of bytes", format_kib(kib)),
            ));
        }
        self.memory_kib = kib;
        self.current_memory_kib = self.current_memory_kib.min(kib);
        Ok(())
    }

    /// `setvcpus COUNT --config [--maximum]`. Without `maximum` it sets the vCPUs the guest
    /// boots with (`<vcpu current>`, at most the maximum); with it, the maximum (the
    /// element's value, at most 255), lowering the current count when above it. A
    /// `<cpu><topology>` follows the maximum (one socket of `COUNT` cores).
    pub fn set_vcpus(&mut self, count: u32, maximum: bool) -> Result<(), DomainError> {
        if count == 0 {
            return Err(DomainError::invalid(
                "/domain/vcpu",
                "the vCPU count must be at least 1",
            ));
        }
        if maximum {
            if count > MAX_XAPIC_CPUS {
                return Err(DomainError::invalid(
                    "/domain/vcpu",
                    format!("{count} vCPUs is above vireo's limit of {MAX_XAPIC_CPUS} (8-bit xAPIC IDs)"),
                ));
            }
            self.vcpu.max = count;
            self.vcpu.current = self.vcpu.current.min(count);
            if let Some(t) = self.cpu.as_mut().and_then(|c| c.topology.as_mut()) {
                t.cores = count;
            }
        } else {
            if count > self.vcpu.max {
                return Err(DomainError::invalid(
                    "/domain/vcpu/@current",
                    format!(
                        "{count} vCPUs is more than the maximum of {} (raise it with --maximum)",
                        self.vcpu.max
                    ),
                ));
            }
            self.vcpu.current = count;
        }
        Ok(())
    }
}
