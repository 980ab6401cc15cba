//! [`PoolManager`]: the persistent set of storage pools and the operations
//! virsh's `pool-*` and `vol-*` verbs map onto.
//!
//! On disk (the layout libvirt uses):
//!
//! ```text
//! CONFIG/NAME.xml                pool definition (written atomically)
//! CONFIG/autostart/NAME.xml      symlink to ../NAME.xml: start with the daemon
//! CONFIG/.default-pool-created   the `default` pool was set up once
//! STATE/NAME.xml                 live definition of an active pool
//! ```
//!
//! STATE normally lives under /run: a restarted daemon finds its pools
//! active as it left them, a rebooted host starts only autostart pools.
//!
//! Concurrency: one mutex guards the pool table; long operations (create,
//! clone, resize, upload, download) reserve their volumes in the table,
//! release the mutex for the I/O, and are refused on volumes another
//! operation is writing.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use vireo_block::{CreateOptions, Format, OpenOptions, Preallocation};

use crate::fsutil;
use crate::pool_xml::{PoolDef, PoolType, PoolUsage};
use crate::vol_xml::{check_creatable, parse_format, BackingDef, VolumeDef};
use crate::volume::{self, VolumeInfo};
use crate::{check_name, Error, Result};

/// Name of the pool created in the images directory on first use.
pub const DEFAULT_POOL: &str = "default";

/// Mode of a directory `pool-build` creates (libvirt's default).
const DEFAULT_POOL_MODE: u32 = 0o711;
/// Mode of a new volume file (libvirt's default).
const DEFAULT_VOL_MODE: u32 = 0o600;
const MARKER: &str = ".default-pool-created";

/// Where a [`PoolManager`] keeps its files.
#[derive(Debug, Clone)]
pub struct StorageDirs {
    /// Pool definitions (`/etc/vireo/storage`).
    pub config_dir: PathBuf,
    /// Active-pool state (`/run/vireo/storage`).
    pub state_dir: PathBuf,
    /// Target of the `default` pool (`/var/lib/vireo/images`).
    pub images_dir: PathBuf,
}

/// `running` or `inactive`, as `pool-info` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    Running,
    Inactive,
}

/// One pool as `pool-list --details` and `pool-info` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub uuid: String,
    #[serde(rename = "type")]
    pub pool_type: PoolType,
    pub state: PoolState,
    /// Always true: vireo has no transient pools.
    pub persistent: bool,
    pub autostart: bool,
    pub target: PathBuf,
    /// File-system figures (statvfs of the target), for active pools.
    pub capacity: Option<u64>,
    pub allocation: Option<u64>,
    pub available: Option<u64>,
    /// Volumes known to the pool (active pools; 0 otherwise).
    pub volumes: usize,
}

/// Which pools `list_pools` returns (virsh `pool-list` filters).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PoolFilter {
    /// `Some(true)`: active only (virsh's default); `Some(false)`:
    /// `--inactive`; `None`: `--all`.
    pub active: Option<bool>,
    /// `--autostart` / `--no-autostart`.
    pub autostart: Option<bool>,
}

/// Options of `vol-create-as` beyond name and capacity.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct VolCreateAs {
    /// `--format raw|qcow2` (default raw).
    pub format: Option<String>,
    /// `--allocation`: bytes to allocate up front (≥ capacity: fully).
    pub allocation: Option<u64>,
    /// `--backing-vol`: a volume name in the same pool, or the path/key of
    /// a volume of any active pool.
    pub backing_vol: Option<String>,
    /// `--backing-vol-format` (default: probed).
    pub backing_vol_format: Option<String>,
    /// `--prealloc-metadata` (qcow2 without backing volume).
    pub prealloc_metadata: bool,
}

/// Flags of `vol-resize`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ResizeFlags {
    /// `--delta`: the capacity is added (subtracted with `shrink`).
    pub delta: bool,
    /// `--shrink`: allow making the volume smaller (data beyond is lost).
    pub shrink: bool,
    /// `--allocate`: allocate the new space (raw volumes).
    pub allocate: bool,
}

#[derive(Debug)]
enum Busy {
    Reading(usize),
    Writing(&'static str),
}

struct Pool {
    def: PoolDef,
    /// The definition the pool was started with, while active.
    live: Option<PoolDef>,
    autostart: bool,
    vols: BTreeMap<String, VolumeInfo>,
    busy: HashMap<String, Busy>,
}

impl Pool {
    fn active_def(&self) -> &PoolDef {
        self.live.as_ref().unwrap_or(&self.def)
    }
    fn vol_path(&self, name: &str) -> PathBuf {
        self.active_def().target.join(name)
    }
}

struct Inner {
    pools: BTreeMap<String, Pool>,
}

/// The storage pools of one connection (daemon), with their volumes.
/// `Sync`: one manager serves every client thread.
pub struct PoolManager {
    dirs: StorageDirs,
    inner: Mutex<Inner>,
    warnings: Vec<String>,
}

/// A reservation of one volume for an operation running without the lock.
struct Job<'a> {
    mgr: &'a PoolManager,
    pool: String,
    vol: String,
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        let mut g = self.mgr.lock();
        if let Some(p) = g.pools.get_mut(&self.pool) {
            match p.busy.get_mut(&self.vol) {
                Some(Busy::Reading(n)) if *n > 1 => *n -= 1,
                Some(_) => {
                    p.busy.remove(&self.vol);
                }
                None => {}
            }
        }
    }
}

fn inactive(name: &str) -> Error {
    Error::state(format!("storage pool '{name}' is not active"))
}

fn get<'a>(g: &'a mut Inner, name: &str) -> Result<&'a mut Pool> {
    g.pools
        .get_mut(name)
        .ok_or_else(|| Error::NoPool(name.to_string()))
}

fn get_active<'a>(g: &'a mut Inner, name: &str) -> Result<&'a mut Pool> {
    let p = get(g, name)?;
    if p.live.is_none() {
        return Err(inactive(name));
    }
    Ok(p)
}

fn no_vol(pool: &str, name: &str) -> Error {
    Error::NoVolume {
        pool: pool.to_string(),
        name: name.to_string(),
    }
}

/// Reads the names and properties of every volume in `dir`.
fn scan(pool: &str, dir: &Path) -> Result<BTreeMap<String, VolumeInfo>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "open directory", e))?;
    let mut out = BTreeMap::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(dir, "read directory", e))?;
        let Ok(name) = ent.file_name().into_string() else {
            log::warn!("pool {pool}: skipping a file whose name is not UTF-8");
            continue;
        };
        if check_name("volume", &name).is_err() {
            continue; // hidden files (our temporaries), odd names
        }
        match ent.file_type() {
            Ok(t) if t.is_file() => {}
            _ => continue,
        }
        match volume::inspect(pool, &name, &ent.path()) {
            Ok(v) => {
                out.insert(name, v);
            }
            // Removed between readdir and stat: not a volume any more.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn is_dir(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

/// Temporary name of a volume being created (hidden, so never listed).
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.vireo-new"))
}

fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

impl PoolManager {
    /// Opens (creating the directories if needed) the pools stored under
    /// `dirs`; active pools are rescanned. Definitions that cannot be read
    /// are skipped and reported by [`PoolManager::warnings`]. The first
    /// time a config directory is used, the `default` pool is created in
    /// `dirs.images_dir` (defined, built, started, autostarted); if that
    /// fails, the reason is in the warnings and it is retried next time.
    pub fn open(dirs: StorageDirs) -> Result<PoolManager> {
        for d in [
            &dirs.config_dir,
            &dirs.config_dir.join("autostart"),
            &dirs.state_dir,
        ] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, "create directory", e))?;
        }
        let mut warnings = Vec::new();
        let mut pools = BTreeMap::new();
        let rd = std::fs::read_dir(&dirs.config_dir)
            .map_err(|e| Error::io(&dirs.config_dir, "open directory", e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(&dirs.config_dir, "read directory", e))?;
            let path = ent.path();
            let fname = ent.file_name().to_string_lossy().into_owned();
            let Some(stem) = fname.strip_suffix(".xml") else {
                continue;
            };
            if stem.starts_with('.') || !ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            let def = match std::fs::read_to_string(&path)
                .map_err(|e| Error::io(&path, "read", e))
                .and_then(|t| PoolDef::from_xml(&t))
            {
                Ok(d) => d,
                Err(e) => {
                    warnings.push(format!("skipping pool definition {}: {e}", path.display()));
                    continue;
                }
            };
            if def.name != stem {
                warnings.push(format!(
                    "skipping pool definition {}: it defines pool '{}'",
                    path.display(),
                    def.name
                ));
                continue;
            }
            let autostart =
                std::fs::symlink_metadata(dirs.config_dir.join("autostart").join(&fname)).is_ok();
            pools.insert(
                def.name.clone(),
                Pool {
                    def,
                    live: None,
                    autostart,
                    vols: BTreeMap::new(),
                    busy: HashMap::new(),
                },
            );
        }
        // Pools left active by a previous daemon.
        for (name, p) in pools.iter_mut() {
            let sp = dirs.state_dir.join(format!("{name}.xml"));
            if !sp.exists() {
                continue;
            }
            let live = std::fs::read_to_string(&sp)
                .ok()
                .and_then(|t| PoolDef::from_xml(&t).ok())
                .unwrap_or_else(|| p.def.clone());
            match scan(name, &live.target) {
                Ok(v) => {
                    p.vols = v;
                    p.live = Some(live);
                }
                Err(e) => {
                    warnings.push(format!("pool '{name}' was active but is stopped now: {e}"));
                    let _ = fsutil::remove_durable(&sp);
                }
            }
        }
        // State of pools no longer defined.
        if let Ok(rd) = std::fs::read_dir(&dirs.state_dir) {
            for ent in rd.flatten() {
                let f = ent.file_name().to_string_lossy().into_owned();
                if let Some(stem) = f.strip_suffix(".xml") {
                    if !stem.starts_with('.') && !pools.contains_key(stem) {
                        let _ = fsutil::remove_durable(&ent.path());
                    }
                }
            }
        }
        let mut mgr = PoolManager {
            dirs,
            inner: Mutex::new(Inner { pools }),
            warnings,
        };
        let marker = mgr.dirs.config_dir.join(MARKER);
        if !marker.exists() {
            // A failure here must not keep the daemon from managing
            // domains: report it and try again next time.
            match mgr.ensure_default_pool() {
                Ok(()) => fsutil::write_atomic(&marker, b"", 0o600)?,
                Err(e) => mgr
                    .warnings
                    .push(format!("could not set up the '{DEFAULT_POOL}' pool: {e}")),
            }
        }
        Ok(mgr)
    }

    /// Problems met while loading the stored definitions.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn dirs(&self) -> &StorageDirs {
        &self.dirs
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // update is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.dirs.config_dir.join(format!("{name}.xml"))
    }
    fn autostart_path(&self, name: &str) -> PathBuf {
        self.dirs
            .config_dir
            .join("autostart")
            .join(format!("{name}.xml"))
    }
    fn state_path(&self, name: &str) -> PathBuf {
        self.dirs.state_dir.join(format!("{name}.xml"))
    }

    /// Makes sure the `default` pool exists and runs: defines it (target:
    /// the images directory) if missing, builds and starts it if inactive,
    /// and marks new ones autostart. `open` calls it the first time a
    /// config directory is used; installers call it before putting a disk
    /// in the default pool.
    pub fn ensure_default_pool(&self) -> Result<()> {
        let exists = self.lock().pools.contains_key(DEFAULT_POOL);
        if !exists {
            let target = self.dirs.images_dir.to_string_lossy().into_owned();
            self.define_as(DEFAULT_POOL, "dir", &target)?;
            self.set_autostart(DEFAULT_POOL, true)?;
        }
        if !self.is_active(DEFAULT_POOL)? {
            self.start(DEFAULT_POOL, true)?;
        }
        Ok(())
    }

    fn is_active(&self, name: &str) -> Result<bool> {
        let mut g = self.lock();
        Ok(get(&mut g, name)?.live.is_some())
    }

    // ----- pools -------------------------------------------------------

    /// `pool-define-as NAME TYPE --target PATH`.
    pub fn define_as(&self, name: &str, pool_type: &str, target: &str) -> Result<PoolDef> {
        PoolType::from_name(pool_type)?;
        let def = PoolDef::new_dir(name, target)?;
        self.define(def)
    }

    /// `pool-define FILE`: defines (or, same name and uuid, redefines) a
    /// pool from libvirt XML. A redefined active pool keeps running with
    /// its old definition until restarted.
    pub fn define_xml(&self, xml: &str) -> Result<PoolDef> {
        self.define(PoolDef::from_xml(xml)?)
    }

    fn define(&self, def: PoolDef) -> Result<PoolDef> {
        let mut g = self.lock();
        for (n, p) in &g.pools {
            if *n == def.name && p.def.uuid != def.uuid {
                return Err(Error::Exists(format!(
                    "pool '{n}' is already defined with uuid {}",
                    p.def.uuid
                )));
            }
            if *n != def.name && p.def.uuid == def.uuid {
                return Err(Error::Exists(format!(
                    "pool '{n}' already exists with uuid {}",
                    def.uuid
                )));
            }
            if *n != def.name && p.def.target == def.target {
                return Err(Error::Exists(format!(
                    "storage source conflict: pool '{n}' already uses target path {}",
                    def.target.display()
                )));
            }
        }
        fsutil::write_atomic(
            &self.config_path(&def.name),
            def.to_xml(None).as_bytes(),
            0o600,
        )?;
        match g.pools.get_mut(&def.name) {
            Some(p) => p.def = def.clone(),
            None => {
                g.pools.insert(
                    def.name.clone(),
                    Pool {
                        def: def.clone(),
                        live: None,
                        autostart: false,
                        vols: BTreeMap::new(),
                        busy: HashMap::new(),
                    },
                );
            }
        }
        Ok(def)
    }

    /// `pool-build`: creates the target directory (and its parents) with
    /// the pool's permissions (mode 0711 by default). The pool must be
    /// inactive.
    pub fn build(&self, name: &str) -> Result<()> {
        let mut g = self.lock();
        let p = get(&mut g, name)?;
        if p.live.is_some() {
            return Err(Error::state(format!(
                "storage pool '{name}' is already active"
            )));
        }
        Self::build_dir(&p.def)
    }

    fn build_dir(def: &PoolDef) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let t = &def.target;
        let perms = def.permissions.clone().unwrap_or_default();
        let existed = t.exists();
        if existed && !is_dir(t) {
            return Err(Error::state(format!(
                "cannot build pool '{}': {} exists and is not a directory",
                def.name,
                t.display()
            )));
        }
        if !existed {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(perms.mode.unwrap_or(DEFAULT_POOL_MODE))
                .create(t)
                .map_err(|e| Error::io(t, "create directory", e))?;
        }
        if perms.mode.is_some() || !existed {
            // mkdir's mode is filtered by the umask; set it exactly.
            volume::apply_permissions(
                t,
                perms.mode.unwrap_or(DEFAULT_POOL_MODE),
                perms.owner,
                perms.group,
            )?;
        } else if perms.owner.is_some() || perms.group.is_some() {
            std::os::unix::fs::chown(t, perms.owner, perms.group)
                .map_err(|e| Error::io(t, "chown", e))?;
        }
        if let Some(parent) = t.parent() {
            fsutil::sync_dir(parent)?;
        }
        Ok(())
    }

    /// `pool-start [--build]`: activates the pool and scans its volumes.
    /// Without `build` the target directory must exist.
    pub fn start(&self, name: &str, build: bool) -> Result<()> {
        let mut g = self.lock();
        let p = get(&mut g, name)?;
        if p.live.is_some() {
            return Err(Error::state(format!(
                "storage pool '{name}' is already active"
            )));
        }
        if build {
            Self::build_dir(&p.def)?;
        }
        if !is_dir(&p.def.target) {
            return Err(Error::state(format!(
                "cannot start storage pool '{name}': target directory {} does not exist (run pool-build, or pool-start --build)",
                p.def.target.display()
            )));
        }
        let vols = scan(name, &p.def.target)?;
        let def = p.def.clone();
        fsutil::write_atomic(&self.state_path(name), def.to_xml(None).as_bytes(), 0o600)?;
        let p = get(&mut g, name)?;
        p.vols = vols;
        p.live = Some(def);
        Ok(())
    }

    /// `pool-destroy`: deactivates the pool; its files stay.
    pub fn destroy(&self, name: &str) -> Result<()> {
        let mut g = self.lock();
        let p = get_active(&mut g, name)?;
        if !p.busy.is_empty() {
            return Err(Error::state(format!(
                "storage pool '{name}' has asynchronous jobs running"
            )));
        }
        fsutil::remove_durable(&self.state_path(name))?;
        p.live = None;
        p.vols.clear();
        Ok(())
    }

    /// `pool-undefine`: forgets an inactive pool (its files stay).
    pub fn undefine(&self, name: &str) -> Result<()> {
        let mut g = self.lock();
        let p = get(&mut g, name)?;
        if p.live.is_some() {
            return Err(Error::state(format!(
                "storage pool '{name}' is still active (pool-destroy it first)"
            )));
        }
        fsutil::remove_durable(&self.autostart_path(name))?;
        fsutil::remove_durable(&self.config_path(name))?;
        g.pools.remove(name);
        Ok(())
    }

    /// `pool-autostart [--disable]`.
    pub fn set_autostart(&self, name: &str, on: bool) -> Result<()> {
        let mut g = self.lock();
        let p = get(&mut g, name)?;
        let link = self.autostart_path(name);
        if on {
            let tmp = link.with_file_name(format!(".{name}.xml.tmp{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(format!("../{name}.xml"), &tmp)
                .map_err(|e| Error::io(&tmp, "symlink", e))?;
            std::fs::rename(&tmp, &link).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(&link, "rename", e)
            })?;
            fsutil::sync_dir(&self.dirs.config_dir.join("autostart"))?;
        } else {
            fsutil::remove_durable(&link)?;
        }
        p.autostart = on;
        Ok(())
    }

    /// Starts every inactive autostart pool (daemon start-up); returns the
    /// pools that failed, with why.
    pub fn autostart_all(&self) -> Vec<(String, Error)> {
        let names: Vec<String> = {
            let g = self.lock();
            g.pools
                .iter()
                .filter(|(_, p)| p.autostart && p.live.is_none())
                .map(|(n, _)| n.clone())
                .collect()
        };
        names
            .into_iter()
            .filter_map(|n| self.start(&n, false).err().map(|e| (n, e)))
            .collect()
    }

    fn info_of(p: &Pool) -> PoolInfo {
        let d = p.active_def();
        let usage = p
            .live
            .as_ref()
            .and_then(|l| fsutil::fs_usage(&l.target).ok());
        PoolInfo {
            name: d.name.clone(),
            uuid: p.def.uuid.to_string(),
            pool_type: d.pool_type,
            state: if p.live.is_some() {
                PoolState::Running
            } else {
                PoolState::Inactive
            },
            persistent: true,
            autostart: p.autostart,
            target: d.target.clone(),
            capacity: usage.map(|u| u.0),
            allocation: usage.map(|u| u.1),
            available: usage.map(|u| u.2),
            volumes: p.vols.len(),
        }
    }

    /// `pool-list` rows, sorted by name.
    pub fn list_pools(&self, filter: PoolFilter) -> Vec<PoolInfo> {
        let g = self.lock();
        g.pools
            .values()
            .filter(|p| filter.active.is_none_or(|a| a == p.live.is_some()))
            .filter(|p| filter.autostart.is_none_or(|a| a == p.autostart))
            .map(Self::info_of)
            .collect()
    }

    /// `pool-info`.
    pub fn pool_info(&self, name: &str) -> Result<PoolInfo> {
        let mut g = self.lock();
        Ok(Self::info_of(get(&mut g, name)?))
    }

    /// Finds a pool by name or uuid (virsh accepts either).
    pub fn lookup_pool(&self, name_or_uuid: &str) -> Result<String> {
        let g = self.lock();
        if g.pools.contains_key(name_or_uuid) {
            return Ok(name_or_uuid.to_string());
        }
        if let Ok(u) = crate::Uuid::parse(name_or_uuid) {
            if let Some(p) = g.pools.values().find(|p| p.def.uuid == u) {
                return Ok(p.def.name.clone());
            }
        }
        Err(Error::NoPool(name_or_uuid.to_string()))
    }

    /// `pool-dumpxml [--inactive]`: the running definition with live
    /// capacity figures, or the stored one.
    pub fn pool_dumpxml(&self, name: &str, inactive: bool) -> Result<String> {
        let mut g = self.lock();
        let p = get(&mut g, name)?;
        Ok(match (&p.live, inactive) {
            (Some(l), false) => {
                let u = fsutil::fs_usage(&l.target)?;
                l.to_xml(Some(PoolUsage {
                    capacity: u.0,
                    allocation: u.1,
                    available: u.2,
                }))
            }
            _ => p.def.to_xml(None),
        })
    }

    /// `pool-refresh`: rescans the target directory (new and removed
    /// files, formats, sizes, backing files). A pool whose directory has
    /// gone is stopped, as libvirt does.
    pub fn refresh(&self, name: &str) -> Result<()> {
        let mut g = self.lock();
        let p = get_active(&mut g, name)?;
        let target = p.active_def().target.clone();
        match scan(name, &target) {
            Ok(v) => {
                p.vols = v;
                Ok(())
            }
            Err(e) => {
                if p.busy.is_empty() && !is_dir(&target) {
                    p.live = None;
                    p.vols.clear();
                    let _ = fsutil::remove_durable(&self.state_path(name));
                    return Err(Error::state(format!(
                        "storage pool '{name}' was stopped: {e}"
                    )));
                }
                Err(e)
            }
        }
    }

    // ----- volumes -----------------------------------------------------

    /// Reserves `vol` in `pool` for an operation run without the lock.
    fn reserve<'a>(
        &'a self,
        g: &mut Inner,
        pool: &str,
        vol: &str,
        write: Option<&'static str>,
    ) -> Result<Job<'a>> {
        let p = get_active(g, pool)?;
        match (p.busy.get_mut(vol), write) {
            (None, None) => {
                p.busy.insert(vol.to_string(), Busy::Reading(1));
            }
            (None, Some(w)) => {
                p.busy.insert(vol.to_string(), Busy::Writing(w));
            }
            (Some(Busy::Reading(n)), None) => *n += 1,
            (Some(b), _) => {
                let what = match b {
                    Busy::Reading(_) => "being read",
                    Busy::Writing(w) => w,
                };
                return Err(Error::state(format!(
                    "storage volume '{vol}' in pool '{pool}' is in use ({what})"
                )));
            }
        }
        Ok(Job {
            mgr: self,
            pool: pool.to_string(),
            vol: vol.to_string(),
        })
    }

    fn cached<'a>(g: &'a mut Inner, pool: &str, vol: &str) -> Result<&'a VolumeInfo> {
        let p = get_active(g, pool)?;
        p.vols.get(vol).ok_or_else(|| no_vol(pool, vol))
    }

    /// Re-reads one volume from disk and updates the cache.
    fn reinspect(&self, pool: &str, vol: &str) -> Result<VolumeInfo> {
        let mut g = self.lock();
        let p = get_active(&mut g, pool)?;
        if !p.vols.contains_key(vol) {
            return Err(no_vol(pool, vol));
        }
        match volume::inspect(pool, vol, &p.vol_path(vol)) {
            Ok(v) => {
                p.vols.insert(vol.to_string(), v.clone());
                Ok(v)
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                p.vols.remove(vol);
                Err(no_vol(pool, vol))
            }
            Err(e) => Err(e),
        }
    }

    /// `vol-list`: the pool's volumes sorted by name; `details` re-reads
    /// each file (capacity, allocation) as `vol-list --details` does,
    /// otherwise the figures are those of the last refresh or operation.
    pub fn vol_list(&self, pool: &str, details: bool) -> Result<Vec<VolumeInfo>> {
        let names: Vec<String> = {
            let mut g = self.lock();
            let p = get_active(&mut g, pool)?;
            if !details {
                return Ok(p.vols.values().cloned().collect());
            }
            p.vols.keys().cloned().collect()
        };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match self.reinspect(pool, &n) {
                Ok(v) => out.push(v),
                Err(Error::NoVolume { .. }) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `vol-info`: re-reads the volume's file.
    pub fn vol_info(&self, pool: &str, vol: &str) -> Result<VolumeInfo> {
        self.reinspect(pool, vol)
    }

    /// `vol-path`.
    pub fn vol_path(&self, pool: &str, vol: &str) -> Result<PathBuf> {
        let mut g = self.lock();
        Ok(Self::cached(&mut g, pool, vol)?.path.clone())
    }

    /// `vol-dumpxml`.
    pub fn vol_dumpxml(&self, pool: &str, vol: &str) -> Result<String> {
        Ok(self.reinspect(pool, vol)?.to_xml())
    }

    /// Finds a volume of an active pool by key or path (virsh's `vol-*`
    /// verbs accept either instead of `--pool P NAME`); returns (pool,
    /// volume name).
    pub fn lookup_volume(&self, key_or_path: &str) -> Result<(String, String)> {
        let g = self.lock();
        let want = Path::new(key_or_path);
        let canon = std::fs::canonicalize(want).ok();
        for p in g.pools.values().filter(|p| p.live.is_some()) {
            for v in p.vols.values() {
                if v.key == key_or_path
                    || v.path == want
                    || canon
                        .as_ref()
                        .is_some_and(|c| std::fs::canonicalize(&v.path).is_ok_and(|x| x == *c))
                {
                    return Ok((p.def.name.clone(), v.name.clone()));
                }
            }
        }
        Err(Error::NoVolumePath(key_or_path.to_string()))
    }

    /// Resolves virsh's `VOL [--pool POOL]`: with a pool, a volume name (or
    /// path) in it; without, a volume key or path.
    pub fn resolve_volume(&self, pool: Option<&str>, vol: &str) -> Result<(String, String)> {
        match pool {
            Some(p) => {
                let p = self.lookup_pool(p)?;
                {
                    let mut g = self.lock();
                    let pl = get_active(&mut g, &p)?;
                    if pl.vols.contains_key(vol) {
                        return Ok((p, vol.to_string()));
                    }
                }
                match self.lookup_volume(vol) {
                    Ok((q, v)) if q == p => Ok((q, v)),
                    _ => Err(no_vol(&p, vol)),
                }
            }
            None => self.lookup_volume(vol),
        }
    }

    /// Builds the definition `vol-create-as` would create (`--print-xml`).
    pub fn vol_def_as(
        &self,
        pool: &str,
        name: &str,
        capacity: u64,
        opts: &VolCreateAs,
    ) -> Result<VolumeDef> {
        check_name("volume", name)?;
        let mut def = VolumeDef::new(name, capacity);
        def.allocation = opts.allocation;
        def.format = opts
            .format
            .as_deref()
            .map(|f| parse_format("--format", f))
            .transpose()?;
        if let Some(b) = &opts.backing_vol {
            let path = match self.resolve_volume(Some(pool), b) {
                Ok((p, v)) => self.vol_path(&p, &v)?,
                Err(_) => {
                    let (p, v) = self.lookup_volume(b).map_err(|_| {
                        Error::NoVolumePath(format!(
                            "{b}' (--backing-vol: no volume of that name in pool '{pool}' nor of that path or key"
                        ))
                    })?;
                    self.vol_path(&p, &v)?
                }
            };
            def.backing = Some(BackingDef {
                path,
                format: opts
                    .backing_vol_format
                    .as_deref()
                    .map(|f| parse_format("--backing-vol-format", f))
                    .transpose()?,
            });
        } else if opts.backing_vol_format.is_some() {
            return Err(Error::invalid("--backing-vol-format needs --backing-vol"));
        }
        Ok(def)
    }

    /// `vol-create-as POOL NAME CAPACITY [--format] [--backing-vol
    /// [--backing-vol-format]] [--allocation] [--prealloc-metadata]`.
    pub fn vol_create_as(
        &self,
        pool: &str,
        name: &str,
        capacity: u64,
        opts: &VolCreateAs,
    ) -> Result<VolumeInfo> {
        let def = self.vol_def_as(pool, name, capacity, opts)?;
        self.vol_create(pool, &def, opts.prealloc_metadata)
    }

    /// `vol-create POOL FILE [--prealloc-metadata]`: creates a volume from
    /// a definition. A backing store makes a qcow2 linked clone; the
    /// backing image is opened (format probed unless given) and must
    /// exist. The file appears in the pool complete or not at all.
    pub fn vol_create(
        &self,
        pool: &str,
        def: &VolumeDef,
        prealloc_metadata: bool,
    ) -> Result<VolumeInfo> {
        Ok(self.create_reserved(pool, def, prealloc_metadata)?.0)
    }

    /// Creates a volume and returns it still reserved for writing.
    fn create_reserved(
        &self,
        pool: &str,
        def: &VolumeDef,
        prealloc_metadata: bool,
    ) -> Result<(VolumeInfo, Job<'_>)> {
        check_name("volume", &def.name)?;
        let fmt = def.format.unwrap_or(Format::Raw);
        check_creatable(fmt)?;
        let mut c = CreateOptions {
            format: fmt,
            ..Default::default()
        };
        if fmt == Format::Raw {
            if def.backing.is_some() {
                return Err(Error::invalid(
                    "a raw volume cannot have a backing volume (use format qcow2 for a linked clone)",
                ));
            }
            if prealloc_metadata {
                return Err(Error::invalid(
                    "metadata preallocation is only available with qcow2",
                ));
            }
            if def.compat.is_some() || def.lazy_refcounts || def.cluster_size.is_some() {
                return Err(Error::invalid(
                    "compat, lazy_refcounts and clusterSize apply to qcow2 volumes only",
                ));
            }
        } else {
            if let Some(cv) = &def.compat {
                c.version = if cv == "0.10" { 2 } else { 3 };
            }
            c.lazy_refcounts = def.lazy_refcounts;
            if let Some(cs) = def.cluster_size {
                c.cluster_size = u32::try_from(cs)
                    .ok()
                    .filter(|v| v.is_power_of_two() && (512..=2 << 20).contains(v))
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "clusterSize {cs} must be a power of two between 512 and 2 MiB"
                        ))
                    })?;
            }
            if prealloc_metadata {
                if def.backing.is_some() {
                    return Err(Error::invalid(
                        "metadata preallocation cannot be combined with a backing volume",
                    ));
                }
                c.preallocation = Preallocation::Metadata;
            }
        }
        let (target, job) = {
            let mut g = self.lock();
            let p = get_active(&mut g, pool)?;
            let path = p.vol_path(&def.name);
            if p.vols.contains_key(&def.name) || std::fs::symlink_metadata(&path).is_ok() {
                return Err(Error::Exists(format!(
                    "storage volume '{}' already exists in pool '{pool}'",
                    def.name
                )));
            }
            let target = p.active_def().target.clone();
            (
                target,
                self.reserve(&mut g, pool, &def.name, Some("being created"))?,
            )
        };
        let path = target.join(&def.name);
        if let Some(b) = &def.backing {
            if !b.path.is_absolute() {
                return Err(Error::invalid(format!(
                    "backing store path '{}' must be absolute",
                    b.path.display()
                )));
            }
            let img = vireo_block::open(
                &b.path,
                &OpenOptions {
                    format: b.format,
                    read_only: true,
                    ..Default::default()
                },
            )
            .map_err(|e| Error::invalid(format!("cannot open backing volume: {e}")))?;
            c.backing_file = Some(b.path.to_string_lossy().into_owned());
            c.backing_format = Some(img.format());
            c.size = def.capacity.unwrap_or(img.size());
        } else {
            c.size = def
                .capacity
                .ok_or_else(|| Error::invalid("volume capacity is missing"))?;
        }
        let full = def.allocation.is_some_and(|a| a >= c.size && c.size > 0);
        let tmp = temp_path(&target, &def.name);
        let r = (|| {
            if full && fmt == Format::Qcow2 {
                c.preallocation = Preallocation::Full;
            }
            vireo_block::create(&tmp, &c)?;
            if full && fmt == Format::Raw {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&tmp)
                    .map_err(|e| Error::io(&tmp, "open", e))?;
                let size = f.metadata().map_err(|e| Error::io(&tmp, "stat", e))?.len();
                fsutil::allocate(&f, &tmp, 0, size)?;
                f.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
            }
            let perms = def.permissions.clone().unwrap_or_default();
            volume::apply_permissions(
                &tmp,
                perms.mode.unwrap_or(DEFAULT_VOL_MODE),
                perms.owner,
                perms.group,
            )?;
            fsutil::rename_noreplace(&tmp, &path).map_err(|e| match e {
                Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                    Error::Exists(format!(
                        "storage volume '{}' already exists in pool '{pool}'",
                        def.name
                    ))
                }
                e => e,
            })
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let info = volume::inspect(pool, &def.name, &path)?;
        {
            let mut g = self.lock();
            get_active(&mut g, pool)?
                .vols
                .insert(def.name.clone(), info.clone());
        }
        Ok((info, job))
    }

    /// `vol-clone VOL NEWNAME --pool POOL [--prealloc-metadata]`: a new
    /// volume in the same pool with the same format and guest-visible
    /// contents. The copy is standalone: a linked clone's backing chain is
    /// flattened into it.
    pub fn vol_clone(
        &self,
        pool: &str,
        vol: &str,
        new_name: &str,
        prealloc_metadata: bool,
    ) -> Result<VolumeInfo> {
        check_name("volume", new_name)?;
        let (src_path, src_job) = {
            let mut g = self.lock();
            let path = Self::cached(&mut g, pool, vol)?.path.clone();
            (path, self.reserve(&mut g, pool, vol, None)?)
        };
        let src = vireo_block::open(&src_path, &OpenOptions::read_only())?;
        let fmt = src.format();
        check_creatable(fmt).map_err(|_| {
            Error::invalid(format!(
                "cannot clone '{vol}': cloning {fmt} volumes is not supported (convert it with vireo img convert)"
            ))
        })?;
        let mut def = VolumeDef::new(new_name, src.size());
        def.format = Some(fmt);
        if let Some(q) = src.as_qcow2() {
            let h = q.header();
            def.cluster_size = Some(q.cluster_size());
            def.compat = Some(if h.version == 2 { "0.10" } else { "1.1" }.into());
        }
        // The new volume stays reserved until it holds the data.
        let (info, job) = self.create_reserved(pool, &def, prealloc_metadata)?;
        let r = (|| {
            let dst = vireo_block::open(
                &info.path,
                &OpenOptions {
                    format: Some(fmt),
                    read_only: false,
                    open_backing: false,
                    ..Default::default()
                },
            )?;
            volume::copy_contents(src.as_ref(), dst.as_ref())
        })();
        drop(src_job);
        if let Err(e) = r {
            let mut g = self.lock();
            let _ = fsutil::remove_durable(&info.path);
            if let Ok(p) = get_active(&mut g, pool) {
                p.vols.remove(new_name);
            }
            drop(g);
            drop(job);
            return Err(e);
        }
        drop(job);
        self.reinspect(pool, new_name)
    }

    /// `vol-resize VOL CAPACITY [--delta] [--shrink] [--allocate]`.
    pub fn vol_resize(
        &self,
        pool: &str,
        vol: &str,
        capacity: u64,
        flags: ResizeFlags,
    ) -> Result<VolumeInfo> {
        let (path, job) = {
            let mut g = self.lock();
            let path = Self::cached(&mut g, pool, vol)?.path.clone();
            (
                path,
                self.reserve(&mut g, pool, vol, Some("being resized"))?,
            )
        };
        let img = vireo_block::open(&path, &OpenOptions::default())?;
        let cur = img.size();
        let new = match (flags.delta, flags.shrink) {
            (true, true) => cur.checked_sub(capacity).ok_or_else(|| {
                Error::invalid(format!(
                    "cannot shrink volume '{vol}' by {capacity} bytes: its capacity is only {cur}"
                ))
            })?,
            (true, false) => cur
                .checked_add(capacity)
                .ok_or_else(|| Error::invalid("new capacity does not fit in 64 bits"))?,
            (false, _) => capacity,
        };
        if new < cur && !flags.shrink {
            return Err(Error::invalid(format!(
                "can't shrink volume '{vol}' from {cur} to {new} bytes unless --shrink is given"
            )));
        }
        if new == 0 && flags.shrink {
            return Err(Error::invalid("can't shrink a volume to zero bytes"));
        }
        if flags.allocate && img.format() != Format::Raw {
            return Err(Error::invalid(format!(
                "--allocate is only supported for raw volumes ('{vol}' is {})",
                img.format()
            )));
        }
        img.resize(new)?;
        img.flush()?;
        let got = img.size();
        drop(img);
        if flags.allocate && got > cur {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, "open", e))?;
            fsutil::allocate(&f, &path, cur, got - cur)?;
            f.sync_all().map_err(|e| Error::io(&path, "fsync", e))?;
        }
        drop(job);
        self.reinspect(pool, vol)
    }

    /// `vol-delete`: removes the volume's file. Refused while another
    /// volume of an active pool uses it as its backing file, or while an
    /// operation uses it.
    pub fn vol_delete(&self, pool: &str, vol: &str) -> Result<()> {
        let mut g = self.lock();
        let path = Self::cached(&mut g, pool, vol)?.path.clone();
        let p = get_active(&mut g, pool)?;
        if let Some(b) = p.busy.get(vol) {
            let what = match b {
                Busy::Reading(_) => "being read",
                Busy::Writing(w) => w,
            };
            return Err(Error::state(format!(
                "storage volume '{vol}' in pool '{pool}' is in use ({what})"
            )));
        }
        // Fresh header reads: a backing link may have changed since the
        // last refresh.
        for q in g.pools.values().filter(|q| q.live.is_some()) {
            for (n, v) in &q.vols {
                if q.def.name == pool && n == vol {
                    continue;
                }
                if v.format != "qcow2" {
                    continue;
                }
                let Ok(cur) = volume::inspect(&q.def.name, n, &v.path) else {
                    continue;
                };
                if let Some(b) = &cur.backing {
                    if same_file(&b.path, &path) {
                        return Err(Error::state(format!(
                            "cannot delete volume '{vol}': volume '{n}' in pool '{}' uses it as its backing file",
                            q.def.name
                        )));
                    }
                }
            }
        }
        fsutil::remove_durable(&path)?;
        get_active(&mut g, pool)?.vols.remove(vol);
        Ok(())
    }

    /// `vol-upload VOL FILE [--offset] [--length]`: writes the bytes read
    /// from `src` into the volume's file at `offset` (the file itself, as
    /// libvirt does: uploading a qcow2 image into a volume makes it that
    /// image), at most `length` bytes (default: until `src` ends). Returns
    /// the number of bytes written; the volume is re-probed afterwards.
    pub fn vol_upload(
        &self,
        pool: &str,
        vol: &str,
        src: &mut dyn Read,
        offset: u64,
        length: Option<u64>,
    ) -> Result<u64> {
        let (path, job) = {
            let mut g = self.lock();
            let path = Self::cached(&mut g, pool, vol)?.path.clone();
            (
                path,
                self.reserve(&mut g, pool, vol, Some("being uploaded to"))?,
            )
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "open", e))?;
        let flen = f.metadata().map_err(|e| Error::io(&path, "stat", e))?.len();
        if offset > flen {
            return Err(Error::invalid(format!(
                "upload offset {offset} is beyond the end of volume '{vol}' ({flen} bytes)"
            )));
        }
        if let Some(l) = length {
            offset
                .checked_add(l)
                .ok_or_else(|| Error::invalid("upload offset + length overflows"))?;
        }
        let written = copy_stream(src, length, |buf, at| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(buf, offset + at)
                .map_err(|e| Error::io(&path, "write", e))
        })
        .map_err(|e| match e {
            CopyError::Read(e) => Error::io(Path::new("(upload source)"), "read", e),
            CopyError::Write(e) => e,
        })?;
        f.sync_all().map_err(|e| Error::io(&path, "fsync", e))?;
        drop(f);
        if let Some(l) = length {
            if written < l {
                drop(job);
                let _ = self.reinspect(pool, vol);
                return Err(Error::invalid(format!(
                    "upload source ended after {written} of {l} bytes"
                )));
            }
        }
        drop(job);
        self.reinspect(pool, vol)?;
        Ok(written)
    }

    /// `vol-download VOL FILE [--offset] [--length]`: copies the volume's
    /// file from `offset` (at most `length` bytes, default to its end) to
    /// `dst`. Returns the number of bytes copied.
    pub fn vol_download(
        &self,
        pool: &str,
        vol: &str,
        dst: &mut dyn Write,
        offset: u64,
        length: Option<u64>,
    ) -> Result<u64> {
        let (path, _job) = {
            let mut g = self.lock();
            let path = Self::cached(&mut g, pool, vol)?.path.clone();
            (path, self.reserve(&mut g, pool, vol, None)?)
        };
        let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
        let flen = f.metadata().map_err(|e| Error::io(&path, "stat", e))?.len();
        if offset > flen {
            return Err(Error::invalid(format!(
                "download offset {offset} is beyond the end of volume '{vol}' ({flen} bytes)"
            )));
        }
        let len = length.unwrap_or(u64::MAX).min(flen - offset);
        let mut rd = ReadAt { f: &f, pos: offset };
        let n = copy_stream(&mut rd, Some(len), |buf, _| {
            dst.write_all(buf)
                .map_err(|e| Error::io(Path::new("(download destination)"), "write", e))
        })
        .map_err(|e| match e {
            CopyError::Read(e) => Error::io(&path, "read", e),
            CopyError::Write(e) => e,
        })?;
        dst.flush()
            .map_err(|e| Error::io(Path::new("(download destination)"), "flush", e))?;
        Ok(n)
    }
}

struct ReadAt<'a> {
    f: &'a std::fs::File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

enum CopyError {
    Read(std::io::Error),
    Write(Error),
}

/// Copies from `src` until it ends or `limit` bytes have gone, handing
/// each chunk and its offset (from the start of the copy) to `sink`.
fn copy_stream(
    src: &mut dyn Read,
    limit: Option<u64>,
    mut sink: impl FnMut(&[u8], u64) -> Result<()>,
) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let want = match limit {
            Some(l) if l - done < buf.len() as u64 => (l - done) as usize,
            _ => buf.len(),
        };
        if want == 0 {
            break;
        }
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        sink(&buf[..n], done).map_err(CopyError::Write)?;
        done += n as u64;
    }
    Ok(done)
}
