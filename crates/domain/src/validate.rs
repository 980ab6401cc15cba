//! Rules that span fields: run after parsing, and on any model built in code or read from
//! JSON ([`Domain::validate`]).

use std::collections::HashSet;

use vireo_vmm::config::MAX_XAPIC_CPUS;

use crate::error::DomainError;
use crate::model::*;
use crate::units::format_kib;

/// Longest domain name (names become file names: `NAME.xml`, `NAME.log`, …).
pub const MAX_NAME_LEN: usize = 200;

/// Checks a domain name: non-empty, at most [`MAX_NAME_LEN`] bytes, no `/`, no control
/// characters, not `.` or `..`, no surrounding whitespace.
pub fn check_name(name: &str) -> Result<(), DomainError> {
    let bad = |m: String| Err(DomainError::invalid("/domain/name", m));
    if name.is_empty() {
        return bad("the name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return bad(format!(
            "the name is {} bytes long, more than {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name.contains('/') {
        return bad(format!("'{name}' contains '/'"));
    }
    if name.chars().any(char::is_control) {
        return bad("the name contains control characters".into());
    }
    if name == "." || name == ".." {
        return bad(format!("'{name}' is not a usable name"));
    }
    if name.trim() != name {
        return bad(format!("'{name}' starts or ends with whitespace"));
    }
    Ok(())
}

impl Domain {
    /// Checks the whole definition: names, sizes, counts, device uniqueness and the rules
    /// that tie elements together. [`Domain::from_xml`] runs it; call it on a model built in
    /// code or deserialised from JSON.
    pub fn validate(&self) -> Result<(), DomainError> {
        check_name(&self.name)?;
        if let Some(t) = &self.title {
            if t.contains(['\n', '\r']) {
                return Err(DomainError::invalid(
                    "/domain/title",
                    "the title must be a single line",
                ));
            }
        }
        self.validate_memory()?;
        self.validate_vcpus()?;
        if self.os.arch != "x86_64" {
            return Err(DomainError::unsupported(
                format!("/domain/os/type[@arch='{}']", self.os.arch),
                "vireo runs x86_64 guests only",
            ));
        }
        for (action, path) in [
            (self.on_poweroff, "/domain/on_poweroff"),
            (self.on_reboot, "/domain/on_reboot"),
        ] {
            if !action.allowed_for_non_crash() {
                return Err(DomainError::invalid(
                    path,
                    format!("'{}' is only allowed for on_crash", action.as_str()),
                ));
            }
        }
        self.validate_devices()
    }

    fn validate_memory(&self) -> Result<(), DomainError> {
        if self.memory_kib == 0 {
            return Err(DomainError::invalid(
                "/domain/memory",
                "the memory size must be greater than 0",
            ));
        }
        if self.memory_kib > u64::MAX / 1024 {
            return Err(DomainError::invalid(
                "/domain/memory",
                format!(
                    "{} does not fit in 64 bits of bytes",
                    format_kib(self.memory_kib)
                ),
            ));
        }
        if self.current_memory_kib == 0 {
            return Err(DomainError::invalid(
                "/domain/currentMemory",
                "the memory size must be greater than 0",
            ));
        }
        if self.current_memory_kib > self.memory_kib {
            return Err(DomainError::invalid(
                "/domain/currentMemory",
                format!(
                    "{} is more than <memory> ({})",
                    format_kib(self.current_memory_kib),
                    format_kib(self.memory_kib)
                ),
            ));
        }
        Ok(())
    }

    fn validate_vcpus(&self) -> Result<(), DomainError> {
        let v = &self.vcpu;
        if v.max == 0 {
            return Err(DomainError::invalid(
                "/domain/vcpu",
                "the vCPU count must be at least 1",
            ));
        }
        if v.max > MAX_XAPIC_CPUS {
            return Err(DomainError::invalid(
                "/domain/vcpu",
                format!(
                    "{} vCPUs is above vireo's limit of {MAX_XAPIC_CPUS} (8-bit xAPIC IDs)",
                    v.max
                ),
            ));
        }
        if v.current == 0 {
            return Err(DomainError::invalid(
                "/domain/vcpu/@current",
                "the vCPU count must be at least 1",
            ));
        }
        if v.current > v.max {
            return Err(DomainError::invalid(
                "/domain/vcpu/@current",
                format!("{} is more than the maximum of {}", v.current, v.max),
            ));
        }
        if let Some(t) = self.cpu.as_ref().and_then(|c| c.topology.as_ref()) {
            const P: &str = "/domain/cpu/topology";
            let product = [
                Some(t.sockets),
                t.dies,
                t.clusters,
                Some(t.cores),
                Some(t.threads),
            ]
            .into_iter()
            .flatten()
            .try_fold(1u32, |acc, n| acc.checked_mul(n));
            if product != Some(v.max) {
                return Err(DomainError::invalid(
                    P,
                    format!(
                        "sockets × dies × clusters × cores × threads must equal the {} vCPUs of <vcpu>",
                        v.max
                    ),
                ));
            }
            if t.sockets != 1
                || t.threads != 1
                || t.dies.unwrap_or(1) != 1
                || t.clusters.unwrap_or(1) != 1
            {
                return Err(DomainError::unsupported(
                    P,
                    format!(
                        "vireo gives the guest one socket of single-threaded cores (sockets='1' cores='{}' threads='1')",
                        v.max
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_devices(&self) -> Result<(), DomainError> {
        let mut targets = HashSet::new();
        let mut boot_orders = HashSet::new();
        let mut counts = [0usize; 4]; // serial, console, memballoon, vsock
        for d in &self.devices {
            let boot = match d {
                Device::Disk(disk) => {
                    const P: &str = "/domain/devices/disk/target";
                    if !targets.insert(disk.target.dev.as_str()) {
                        return Err(DomainError::invalid(
                            P,
                            format!("dev='{}' is used by two disks", disk.target.dev),
                        ));
                    }
                    if !disk.source.is_absolute() {
                        return Err(DomainError::invalid(
                            "/domain/devices/disk/source",
                            format!("'{}' is not an absolute path", disk.source.display()),
                        ));
                    }
                    disk.boot_order
                }
                Device::Interface(i) => {
                    if i.kind != InterfaceType::Ethernet && i.source.is_none() {
                        return Err(DomainError::missing(
                            "/domain/devices/interface/source",
                            format!(
                                "a type='{}' interface needs <source {}=…/>",
                                i.kind.as_str(),
                                i.kind.as_str()
                            ),
                        ));
                    }
                    if i.mac.0[0] & 1 != 0 {
                        return Err(DomainError::invalid(
                            "/domain/devices/interface/mac",
                            format!("{} is a multicast address", i.mac),
                        ));
                    }
                    i.boot_order
                }
                Device::Serial(_) => {
                    counts[0] += 1;
                    None
                }
                Device::Console(_) => {
                    counts[1] += 1;
                    None
                }
                Device::Memballoon(_) => {
                    counts[2] += 1;
                    None
                }
                Device::Vsock(v) => {
                    counts[3] += 1;
                    if let Some(cid) = v.cid {
                        if !(3..u32::MAX).contains(&cid) {
                            return Err(DomainError::invalid(
                                "/domain/devices/vsock/cid",
                                format!("context ID {cid} is reserved (use 3 or more, below 4294967295)"),
                            ));
                        }
                    } else if !v.cid_auto {
                        return Err(DomainError::missing(
                            "/domain/devices/vsock/cid/@address",
                            "auto='no' needs an address",
                        ));
                    }
                    None
                }
                Device::Rng(_) | Device::Other(_) => None,
            };
            if let Some(order) = boot {
                if !self.os.boot.is_empty() {
                    return Err(DomainError::invalid(
                        "/domain/devices",
                        "per-device <boot order=…/> and <os><boot dev=…/> cannot be used together",
                    ));
                }
                if !boot_orders.insert(order) {
                    return Err(DomainError::invalid(
                        "/domain/devices",
                        format!("boot order {order} is used by two devices"),
                    ));
                }
            }
        }
        let limits = [
            ("/domain/devices/serial", "vireo has one serial port (COM1)"),
            (
                "/domain/devices/console",
                "vireo has one console: the serial port",
            ),
            (
                "/domain/devices/memballoon",
                "a guest has at most one memory balloon",
            ),
            (
                "/domain/devices/vsock",
                "a guest has at most one vsock device",
            ),
        ];
        for (count, (path, why)) in counts.iter().zip(limits) {
            if *count > 1 {
                return Err(DomainError::unsupported(format!("{path}[2]"), why));
            }
        }
        Ok(())
    }
}
