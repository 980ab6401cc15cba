//! The daemon's state: every known domain (persistent definitions and running transient
//! ones), each behind its own lock, and the files that make it survive a restart.
//!
//! Locking: `Daemon::domains` (the name → entry map) may be taken first and an entry's
//! lock second, never the other way round. Long operations (starting a VMM, waiting for
//! one to stop) hold only the entry's lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use vireo_api::protocol::domain::{DomainState, DomainSummary};
use vireo_api::{ErrorKind, Layout, RpcError};

use vireo_storage::PoolManager;

use crate::claims::DiskClaims;
use crate::domain_model::Domain;
use crate::events::EventBus;
use crate::fsutil;
use crate::vmm_client::VmmClient;

/// Largest domain XML file read from disk.
pub const MAX_XML: u64 = 4 << 20;

/// Daemon-wide settings fixed at start.
pub struct Settings {
    pub layout: Layout,
    /// The URI clients use to reach this daemon.
    pub uri: String,
    /// The `vireo-vmm` binary.
    pub vmm_binary: PathBuf,
    /// `vireo-vmm --version`.
    pub vmm_version: Option<String>,
}

pub struct Daemon {
    pub settings: Settings,
    pub domains: Mutex<BTreeMap<String, Arc<Entry>>>,
    pub events: EventBus,
    /// Storage pools and volumes; why not, if they could not be opened.
    pub storage: Result<PoolManager, String>,
    /// The files running domains use and storage operations change.
    pub claims: DiskClaims,
    next_id: AtomicU32,
}

/// One domain. `name` and `uuid` never change for an entry.
pub struct Entry {
    pub name: String,
    pub uuid: String,
    /// The running instance's id (0 when inactive), readable without the lock for lookups.
    pub id: AtomicU32,
    pub state: Mutex<DomState>,
    /// Signalled whenever the domain stops or starts.
    pub changed: Condvar,
}

pub struct DomState {
    /// The persistent definition; `None` for a transient (`create`d) domain.
    pub def: Option<Domain>,
    pub autostart: bool,
    pub status: DomainState,
    pub reason: String,
    pub run: Option<Running>,
    /// Taken out of the map (undefined, or a transient domain that stopped).
    pub removed: bool,
}

/// A running VMM and what the daemon knows about it.
pub struct Running {
    pub state: RunState,
    /// The definition it was started from.
    pub domain: Domain,
    pub vmm: Option<VmmClient>,
    /// What the daemon asked for, to tell a requested stop from a crash.
    pub stop_request: Option<StopRequest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    Shutdown,
    Destroy,
}

/// `vm/NAME/state.json`: everything needed to manage a VMM again after a daemon restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub name: String,
    pub uuid: String,
    pub id: u32,
    pub pid: i32,
    /// /proc start time of `pid`, so that a reused pid is never mistaken for the VMM.
    pub pid_start: u64,
    pub started_at_us: u64,
    pub transient: bool,
    /// The definition the VM runs with.
    pub xml: String,
    pub api_socket: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub exit_file: Option<PathBuf>,
    pub console_log: PathBuf,
    pub vmm_log: PathBuf,
}

impl Daemon {
    pub fn new(settings: Settings, storage: Result<PoolManager, String>) -> Self {
        Self {
            settings,
            domains: Mutex::new(BTreeMap::new()),
            events: EventBus::default(),
            storage,
            claims: DiskClaims::default(),
            next_id: AtomicU32::new(1),
        }
    }

    /// The storage pool manager, or why there is none.
    pub fn pools(&self) -> Result<&PoolManager, RpcError> {
        self.storage.as_ref().map_err(|e| {
            RpcError::new(
                ErrorKind::StorageError,
                format!("storage pools are unavailable: {e}"),
            )
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.settings.layout
    }

    pub fn map(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.domains.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh id for a domain that starts.
    pub fn allocate_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Ids of re-attached domains are kept; new ones continue after them.
    pub fn reserve_id(&self, id: u32) {
        self.next_id
            .fetch_max(id.saturating_add(1), Ordering::Relaxed);
    }

    /// Finds a domain by name, id (while running) or UUID, as virsh resolves arguments.
    pub fn lookup(&self, key: &str) -> Result<Arc<Entry>, RpcError> {
        let map = self.map();
        if let Some(e) = map.get(key) {
            return Ok(e.clone());
        }
        if let Ok(id) = key.parse::<u32>() {
            if id != 0 {
                if let Some(e) = map.values().find(|e| e.id.load(Ordering::Relaxed) == id) {
                    return Ok(e.clone());
                }
            }
        }
        let lower = key.to_ascii_lowercase();
        if let Some(e) = map.values().find(|e| e.uuid == lower) {
            return Ok(e.clone());
        }
        Err(no_domain(key))
    }

    pub fn publish(&self, entry: &Entry, event: &str, detail: &str, message: &str) {
        self.events
            .publish(&entry.name, &entry.uuid, event, detail, message);
    }

    /// `domains/NAME.xml`.
    pub fn definition_path(&self, name: &str) -> PathBuf {
        self.layout().domains_dir().join(format!("{name}.xml"))
    }

    /// `domains/autostart/NAME.xml`.
    pub fn autostart_path(&self, name: &str) -> PathBuf {
        self.layout().autostart_dir().join(format!("{name}.xml"))
    }

    /// `vm/NAME/`: the running domain's sockets, VMM config, exit file and state file.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.layout().vm_run_dir().join(name)
    }

    /// Loads every persistent definition; files that do not parse are reported and left
    /// alone (never deleted).
    pub fn load_definitions(&self) {
        let dir = self.layout().domains_dir();
        let Ok(read) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut map = self.map();
        for item in read.flatten() {
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("xml") || !path.is_file() {
                continue;
            }
            let parsed = fsutil::read_bounded(&path, MAX_XML)
                .map_err(|e| e.to_string())
                .and_then(|xml| Domain::from_xml(&xml).map_err(|e| e.to_string()));
            let domain = match parsed {
                Ok(p) => p.domain,
                Err(e) => {
                    log::error!("skipping {}: {e}", path.display());
                    continue;
                }
            };
            let name = domain.name().to_string();
            if path.file_stem().and_then(|s| s.to_str()) != Some(name.as_str()) {
                log::error!(
                    "skipping {}: it defines domain '{name}' (file name and domain name differ)",
                    path.display()
                );
                continue;
            }
            let autostart = self.autostart_path(&name).symlink_metadata().is_ok();
            let uuid = domain.uuid().to_string();
            let entry = Entry::new(&name, &uuid, Some(domain), autostart);
            map.insert(name, Arc::new(entry));
        }
        log::info!("{} domain definitions loaded", map.len());
    }
}

impl Entry {
    pub fn new(name: &str, uuid: &str, def: Option<Domain>, autostart: bool) -> Self {
        Self {
            name: name.to_string(),
            uuid: uuid.to_ascii_lowercase(),
            id: AtomicU32::new(0),
            state: Mutex::new(DomState {
                def,
                autostart,
                status: DomainState::Shutoff,
                reason: "unknown".into(),
                run: None,
                removed: false,
            }),
            changed: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, DomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn summary(&self, st: &DomState) -> DomainSummary {
        DomainSummary {
            id: st.run.as_ref().map(|r| r.state.id),
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            state: st.status,
            reason: st.reason.clone(),
            persistent: st.def.is_some(),
            autostart: st.autostart,
        }
    }
}

impl DomState {
    /// The definition in force: the running one, else the persistent one.
    pub fn current(&self) -> Option<&Domain> {
        self.run.as_ref().map(|r| &r.domain).or(self.def.as_ref())
    }

    /// A domain that no longer exists: undefined, or transient and stopped.
    pub fn is_gone(&self) -> bool {
        self.removed || (self.def.is_none() && self.run.is_none())
    }

    pub fn running(&self, name: &str) -> Result<&Running, RpcError> {
        self.run.as_ref().ok_or_else(|| not_running(name))
    }
}

pub fn no_domain(key: &str) -> RpcError {
    RpcError::new(
        ErrorKind::NoDomain,
        format!("domain not found: no domain with matching name, id or uuid '{key}'"),
    )
}

pub fn not_running(name: &str) -> RpcError {
    RpcError::new(
        ErrorKind::OperationInvalid,
        format!("domain '{name}' is not running"),
    )
}

pub fn system_error(what: &str, path: &Path, e: std::io::Error) -> RpcError {
    RpcError::new(
        ErrorKind::SystemError,
        format!("cannot {what} {}: {e}", path.display()),
    )
}

/// Names end up in file and socket paths: refuse the ones that cannot.
pub fn check_name(name: &str) -> Result<(), RpcError> {
    let bad = |why: &str| {
        Err(RpcError::new(
            ErrorKind::InvalidXml,
            format!("domain name '{name}' {why}"),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 64 {
        return bad("is longer than 64 bytes");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("contains '/' or NUL");
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    if name.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    Ok(())
}
