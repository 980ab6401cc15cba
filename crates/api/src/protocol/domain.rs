//! `domain.*`: defining, starting and controlling domains (virsh's domain verbs).
//!
//! A domain is named in params by `domain`: its name, its id while it runs, or its UUID
//! (tried in that order, as virsh does).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Empty;
use crate::method;

/// A domain's state, as virsh names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Running,
    Paused,
    /// Asked to power down (ACPI power button), still running.
    InShutdown,
    Shutoff,
    /// The VMM or the guest failed; the reason says how.
    Crashed,
}

impl DomainState {
    /// virsh's wording.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::InShutdown => "in shutdown",
            DomainState::Shutoff => "shut off",
            DomainState::Crashed => "crashed",
        }
    }
    /// Whether a VMM runs for the domain.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DomainState::Running | DomainState::Paused | DomainState::InShutdown
        )
    }
    /// libvirt's `virDomainState` number (`domstats` `state.state`).
    pub fn number(self) -> u32 {
        match self {
            DomainState::Running => 1,
            DomainState::Paused => 3,
            DomainState::InShutdown => 4,
            DomainState::Shutoff => 5,
            DomainState::Crashed => 6,
        }
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Params naming one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRef {
    /// Name, id or UUID.
    pub domain: String,
}

impl DomainRef {
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
        }
    }
}

/// One row of `domain.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSummary {
    /// Set while the domain runs (as libvirt's domain ids).
    pub id: Option<u32>,
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    /// Why it is in that state (`booted`, `destroyed`, `shutdown`, `crashed: …`).
    pub reason: String,
    /// Has a definition that outlives a stop (`define`), unlike `create`d domains.
    pub persistent: bool,
    pub autostart: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListParams {
    /// Inactive domains too (virsh `--all`).
    #[serde(default)]
    pub all: bool,
    /// Only inactive domains (virsh `--inactive`).
    #[serde(default)]
    pub inactive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResult {
    pub domains: Vec<DomainSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefineParams {
    /// The domain XML.
    pub xml: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefineResult {
    pub name: String,
    pub uuid: String,
    /// Elements kept but not acted upon, one line each.
    pub warnings: Vec<String>,
    /// An existing definition (same name and UUID) was replaced.
    pub updated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndefineParams {
    pub domain: String,
    /// Also delete the disk images the definition references.
    #[serde(default)]
    pub remove_all_storage: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndefineResult {
    pub name: String,
    /// Disk images deleted (with `remove_all_storage`).
    pub removed_storage: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateParams {
    /// The domain XML of a transient domain: it is gone when it stops.
    pub xml: String,
    #[serde(default)]
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartParams {
    pub domain: String,
    /// Leave the vCPUs paused (resume with `domain.resume`).
    #[serde(default)]
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartResult {
    pub name: String,
    pub uuid: String,
    pub id: u32,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutostartParams {
    pub domain: String,
    pub enable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub id: Option<u32>,
    pub name: String,
    pub uuid: String,
    pub os_type: String,
    pub state: DomainState,
    pub reason: String,
    pub vcpus: u32,
    /// CPU time the VMM process used, in nanoseconds (running domains).
    pub cpu_time_ns: Option<u64>,
    pub max_memory_kib: u64,
    pub used_memory_kib: u64,
    pub persistent: bool,
    pub autostart: bool,
    /// The VMM's pid (running domains).
    pub pid: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateResult {
    pub state: DomainState,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResult {
    pub name: String,
    /// Flat `group.key` → value, as `virsh domstats` prints them.
    pub stats: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetXmlParams {
    pub domain: String,
    /// The persistent definition even while a (possibly different) one runs.
    #[serde(default)]
    pub inactive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XmlResult {
    pub xml: String,
}

/// One row of `domblklist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// `file` or `block`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `disk` or `cdrom`.
    pub device: String,
    /// Guest name (`vda`).
    pub target: String,
    /// Host path, if any.
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockListResult {
    pub disks: Vec<BlockDevice>,
}

/// One row of `domiflist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Host-side device (`vnet0`), if known.
    pub interface: Option<String>,
    /// `network`, `bridge` or `ethernet`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Network or bridge name.
    pub source: Option<String>,
    pub model: Option<String>,
    pub mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceListResult {
    pub interfaces: Vec<Interface>,
}

/// Which definition a `set*` call changes (virsh `--config`, `--live`, `--current`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default)]
    pub config: bool,
    #[serde(default)]
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMemoryParams {
    pub domain: String,
    pub kib: u64,
    /// Change the maximum (`<memory>`, virsh setmaxmem) rather than `<currentMemory>`.
    #[serde(default)]
    pub maximum: bool,
    #[serde(flatten)]
    pub scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetVcpusParams {
    pub domain: String,
    pub count: u32,
    /// Change the maximum rather than the current count.
    #[serde(default)]
    pub maximum: bool,
    #[serde(flatten)]
    pub scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleResult {
    /// The VMM's console socket: raw bytes, guest serial output out, keyboard input in.
    pub socket: PathBuf,
    /// Where every byte of serial output is also appended.
    pub log: PathBuf,
}

method!(
    /// Domains, running ones first.
    DomainList, "domain.list", ListParams, ListResult);
method!(
    /// Add or replace a persistent definition.
    DomainDefine, "domain.define", DefineParams, DefineResult);
method!(
    /// Remove a stopped domain's definition.
    DomainUndefine, "domain.undefine", UndefineParams, UndefineResult);
method!(
    /// Start a transient domain from XML.
    DomainCreate, "domain.create", CreateParams, StartResult);
method!(
    /// Start a defined domain.
    DomainStart, "domain.start", StartParams, StartResult);
method!(
    /// Press the ACPI power button; returns at once.
    DomainShutdown, "domain.shutdown", DomainRef, Empty);
method!(
    /// Stop the VM now; returns once it is stopped.
    DomainDestroy, "domain.destroy", DomainRef, Empty);
method!(
    /// Restart the guest (a hard reset: vireo has no guest agent).
    DomainReboot, "domain.reboot", DomainRef, Empty);
method!(
    /// Hard reset.
    DomainReset, "domain.reset", DomainRef, Empty);
method!(
    /// Pause the vCPUs.
    DomainSuspend, "domain.suspend", DomainRef, Empty);
method!(
    /// Resume paused vCPUs.
    DomainResume, "domain.resume", DomainRef, Empty);
method!(
    /// Start (or not) with the daemon.
    DomainSetAutostart, "domain.set_autostart", AutostartParams, Empty);
method!(
    /// virsh dominfo.
    DomainGetInfo, "domain.info", DomainRef, DomainInfo);
method!(
    /// virsh domstate.
    DomainGetState, "domain.state", DomainRef, StateResult);
method!(
    /// virsh domstats.
    DomainGetStats, "domain.stats", DomainRef, StatsResult);
method!(
    /// virsh dumpxml.
    DomainGetXml, "domain.get_xml", GetXmlParams, XmlResult);
method!(
    /// virsh domblklist.
    DomainBlockList, "domain.block_list", DomainRef, BlockListResult);
method!(
    /// virsh domiflist.
    DomainInterfaceList, "domain.interface_list", DomainRef, InterfaceListResult);
method!(
    /// virsh setmem / setmaxmem.
    DomainSetMemory, "domain.set_memory", SetMemoryParams, Empty);
method!(
    /// virsh setvcpus.
    DomainSetVcpus, "domain.set_vcpus", SetVcpusParams, Empty);
method!(
    /// Where a running domain's serial console is.
    DomainOpenConsole, "domain.console", DomainRef, ConsoleResult);
