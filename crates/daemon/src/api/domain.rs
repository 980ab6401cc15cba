//! `domain.*` handlers.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use vireo_api::protocol::domain::*;
use vireo_api::protocol::Empty;
use vireo_api::{ErrorKind, RpcError};

use crate::domain_model::{self, Domain};
use crate::fsutil;
use crate::process;
use crate::state::{check_name, no_domain, not_running, system_error, Daemon, Entry, StopRequest};
use crate::supervisor;

fn invalid(msg: impl Into<String>) -> RpcError {
    RpcError::new(ErrorKind::OperationInvalid, msg)
}

fn parse(xml: &str) -> Result<domain_model::Parsed, RpcError> {
    let parsed =
        Domain::from_xml(xml).map_err(|e| RpcError::new(ErrorKind::InvalidXml, e.to_string()))?;
    check_name(parsed.domain.name())?;
    Ok(parsed)
}

/// The error for a name or UUID clash with `existing`.
fn exists(existing: &Entry, name: &str, uuid: &str) -> RpcError {
    let msg = if existing.name == name {
        format!("domain '{name}' already exists with uuid {}", existing.uuid)
    } else {
        format!(
            "domain '{}' is already defined with uuid {uuid}",
            existing.name
        )
    };
    RpcError::new(ErrorKind::DomainExists, msg)
}

pub fn list(d: &Arc<Daemon>, p: ListParams) -> Result<ListResult, RpcError> {
    let entries: Vec<Arc<Entry>> = d.map().values().cloned().collect();
    let mut domains: Vec<DomainSummary> = entries
        .iter()
        .filter_map(|e| {
            let st = e.lock();
            (!st.is_gone()).then(|| e.summary(&st))
        })
        .filter(|s| {
            let active = s.state.is_active();
            if p.inactive {
                !active
            } else {
                p.all || active
            }
        })
        .collect();
    // Running domains by id, then the others by name (the map is sorted by name).
    domains.sort_by_key(|s| s.id.unwrap_or(u32::MAX));
    Ok(ListResult { domains })
}

pub fn define(d: &Arc<Daemon>, p: DefineParams) -> Result<DefineResult, RpcError> {
    let parsed = parse(&p.xml)?;
    let domain = parsed.domain;
    let name = domain.name().to_string();
    let uuid = domain.uuid().to_string().to_ascii_lowercase();
    let xml = domain.to_xml();
    let path = d.definition_path(&name);
    let dir = d.layout().domains_dir();
    fsutil::create_dir(&dir, 0o700).map_err(|e| system_error("create", &dir, e))?;
    let mut map = d.map();
    if let Some(other) = map
        .values()
        .find(|e| e.uuid == uuid && e.name != name && !e.lock().is_gone())
    {
        return Err(exists(other, &name, &uuid));
    }
    let updated = match map.get(&name).cloned() {
        Some(e) if !e.lock().is_gone() => {
            if e.uuid != uuid {
                return Err(exists(&e, &name, &uuid));
            }
            let mut st = e.lock();
            fsutil::atomic_write(&path, xml.as_bytes())
                .map_err(|e| system_error("write", &path, e))?;
            let updated = st.def.is_some();
            st.def = Some(domain);
            updated
        }
        _ => {
            fsutil::atomic_write(&path, xml.as_bytes())
                .map_err(|e| system_error("write", &path, e))?;
            map.insert(
                name.clone(),
                Arc::new(Entry::new(&name, &uuid, Some(domain), false)),
            );
            false
        }
    };
    let entry = map.get(&name).cloned();
    drop(map);
    if let Some(e) = entry {
        d.publish(&e, "defined", if updated { "updated" } else { "added" }, "");
    }
    Ok(DefineResult {
        name,
        uuid,
        warnings: parsed.warnings,
        updated,
    })
}

pub fn undefine(d: &Arc<Daemon>, p: UndefineParams) -> Result<UndefineResult, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let mut map = d.map();
    let mut st = entry.lock();
    if st.run.is_some() {
        return Err(invalid(format!(
            "domain '{}' is running: destroy or shut it down before undefining it",
            entry.name
        )));
    }
    let Some(def) = st.def.as_ref() else {
        return Err(no_domain(&p.domain));
    };
    let mut removed_storage = Vec::new();
    if p.remove_all_storage {
        for path in domain_model::disk_paths(def) {
            // A pool's volume is deleted through its pool (which keeps its volume list
            // right and refuses while another volume is backed by it).
            let pool_vol = d
                .pools()
                .ok()
                .and_then(|m| Some((m, super::storage::pool_volume_of(m, &path)?)));
            if let Some((m, (pool, vol))) = pool_vol {
                super::storage::delete_volume(d, m, &pool, &vol).map_err(|e| {
                    RpcError::new(
                        e.kind(),
                        format!(
                            "cannot remove storage {} of domain '{}': {} (definition kept)",
                            path.display(),
                            entry.name,
                            e.message
                        ),
                    )
                })?;
                removed_storage.push(path.display().to_string());
                continue;
            }
            let _job = d.claims.claim_job(&path, "being deleted").map_err(|e| {
                invalid(format!(
                    "cannot remove storage of domain '{}': {e} (definition kept)",
                    entry.name
                ))
            })?;
            match std::fs::remove_file(&path) {
                Ok(()) => removed_storage.push(path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RpcError::new(
                        ErrorKind::StorageError,
                        format!(
                            "cannot remove storage {} of domain '{}': {e} (definition kept)",
                            path.display(),
                            entry.name
                        ),
                    ))
                }
            }
        }
    }
    let autostart = d.autostart_path(&entry.name);
    fsutil::remove_durably(&autostart).map_err(|e| system_error("remove", &autostart, e))?;
    let path = d.definition_path(&entry.name);
    fsutil::remove_durably(&path).map_err(|e| system_error("remove", &path, e))?;
    st.def = None;
    st.autostart = false;
    st.removed = true;
    map.remove(&entry.name);
    drop(st);
    drop(map);
    d.publish(&entry, "undefined", "removed", "");
    Ok(UndefineResult {
        name: entry.name.clone(),
        removed_storage,
    })
}

pub fn create(d: &Arc<Daemon>, p: CreateParams) -> Result<StartResult, RpcError> {
    let parsed = parse(&p.xml)?;
    let name = parsed.domain.name().to_string();
    let uuid = parsed.domain.uuid().to_string().to_ascii_lowercase();
    let entry = Arc::new(Entry::new(&name, &uuid, None, false));
    let mut st = entry.lock();
    {
        let mut map = d.map();
        if let Some(other) = map
            .values()
            .find(|e| (e.name == name || e.uuid == uuid) && !e.lock().is_gone())
        {
            return Err(exists(other, &name, &uuid));
        }
        map.insert(name.clone(), entry.clone());
    }
    match supervisor::start(d, &entry, &mut st, parsed.domain, true, p.paused, "booted") {
        Ok(id) => {
            if st.run.is_none() {
                // Already ended (a guest that powers off at once).
                st.removed = true;
                drop(st);
                let mut map = d.map();
                if map.get(&name).is_some_and(|x| Arc::ptr_eq(x, &entry)) {
                    map.remove(&name);
                }
            }
            Ok(StartResult {
                name,
                uuid,
                id,
                warnings: parsed.warnings,
            })
        }
        Err(e) => {
            st.removed = true;
            drop(st);
            let mut map = d.map();
            if map.get(&name).is_some_and(|x| Arc::ptr_eq(x, &entry)) {
                map.remove(&name);
            }
            Err(e)
        }
    }
}

pub fn start(d: &Arc<Daemon>, p: StartParams) -> Result<StartResult, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let mut st = entry.lock();
    if st.run.is_some() {
        return Err(invalid(format!(
            "domain '{}' is already running",
            entry.name
        )));
    }
    let def = st.def.clone().ok_or_else(|| no_domain(&p.domain))?;
    let id = supervisor::start(d, &entry, &mut st, def, false, p.paused, "booted")?;
    drop(st);
    Ok(StartResult {
        name: entry.name.clone(),
        uuid: entry.uuid.clone(),
        id,
        warnings: Vec::new(),
    })
}

pub fn shutdown(d: &Arc<Daemon>, p: DomainRef) -> Result<Empty, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let mut st = entry.lock();
    supervisor::command(&entry, &st, "system_powerdown")?;
    if let Some(run) = st.run.as_mut() {
        run.stop_request.get_or_insert(StopRequest::Shutdown);
    }
    Ok(Empty {})
}

pub fn destroy(d: &Arc<Daemon>, p: DomainRef) -> Result<Empty, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    drop(supervisor::destroy(&entry, st)?);
    Ok(Empty {})
}

/// `reboot` and `reset`: vireo has no guest agent, so a reboot is a hard reset
/// (docs/daemon.md).
pub fn reset(d: &Arc<Daemon>, p: DomainRef) -> Result<Empty, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    supervisor::command(&entry, &st, "system_reset")?;
    Ok(Empty {})
}

pub fn suspend(d: &Arc<Daemon>, p: DomainRef) -> Result<Empty, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let mut st = entry.lock();
    supervisor::command(&entry, &st, "pause")?;
    if st.status != DomainState::Paused {
        st.status = DomainState::Paused;
        st.reason = "user".into();
        d.publish(&entry, "suspended", "paused", "");
    }
    Ok(Empty {})
}

pub fn resume(d: &Arc<Daemon>, p: DomainRef) -> Result<Empty, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let mut st = entry.lock();
    st.running(&entry.name)?;
    if st.status != DomainState::Paused {
        return Err(invalid(format!("domain '{}' is not paused", entry.name)));
    }
    supervisor::command(&entry, &st, "resume")?;
    st.status = DomainState::Running;
    st.reason = "unpaused".into();
    d.publish(&entry, "resumed", "unpaused", "");
    Ok(Empty {})
}

pub fn set_autostart(d: &Arc<Daemon>, p: AutostartParams) -> Result<Empty, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let mut st = entry.lock();
    if st.def.is_none() {
        return Err(invalid(format!(
            "domain '{}' is transient: only defined domains can autostart",
            entry.name
        )));
    }
    let link = d.autostart_path(&entry.name);
    if p.enable {
        let dir = d.layout().autostart_dir();
        fsutil::create_dir(&dir, 0o700).map_err(|e| system_error("create", &dir, e))?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../{}.xml", entry.name), &link)
            .and_then(|()| fsutil::fsync_dir(&dir))
            .map_err(|e| system_error("create", &link, e))?;
    } else {
        fsutil::remove_durably(&link).map_err(|e| system_error("remove", &link, e))?;
    }
    st.autostart = p.enable;
    Ok(Empty {})
}

pub fn info(d: &Arc<Daemon>, p: DomainRef) -> Result<DomainInfo, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    let dom = st.current().ok_or_else(|| no_domain(&p.domain))?;
    let pid = st.run.as_ref().map(|r| r.state.pid);
    Ok(DomainInfo {
        id: st.run.as_ref().map(|r| r.state.id),
        name: entry.name.clone(),
        uuid: entry.uuid.clone(),
        os_type: "hvm".into(),
        state: st.status,
        reason: st.reason.clone(),
        vcpus: domain_model::vcpus(dom),
        cpu_time_ns: pid.and_then(process::cpu_time_ns),
        max_memory_kib: domain_model::max_memory_kib(dom),
        used_memory_kib: domain_model::current_memory_kib(dom),
        persistent: st.def.is_some(),
        autostart: st.autostart,
        pid,
    })
}

pub fn state(d: &Arc<Daemon>, p: DomainRef) -> Result<StateResult, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    Ok(StateResult {
        state: st.status,
        reason: st.reason.clone(),
    })
}

/// Flattens nested JSON into `prefix.key` entries.
/// `query-balloon` in libvirt's `balloon.*` names: the size the guest has now (`current`,
/// KiB) and its statistics (memory in KiB).
fn balloon_stats(b: &Value, out: &mut BTreeMap<String, Value>) {
    if let Some(actual) = b["actual-bytes"].as_u64() {
        out.insert("balloon.current".into(), Value::from(actual / 1024));
    }
    const NAMES: [(&str, &str, bool); 8] = [
        ("swap-in", "balloon.swap_in", true),
        ("swap-out", "balloon.swap_out", true),
        ("major-faults", "balloon.major_fault", false),
        ("minor-faults", "balloon.minor_fault", false),
        ("free-memory", "balloon.unused", true),
        ("total-memory", "balloon.available", true),
        ("available-memory", "balloon.usable", true),
        ("disk-caches", "balloon.disk_caches", true),
    ];
    for (ours, theirs, bytes) in NAMES {
        if let Some(v) = b["stats"][ours].as_u64() {
            out.insert(theirs.into(), Value::from(if bytes { v / 1024 } else { v }));
        }
    }
    if let Some(t) = b["stats-updated"].as_u64() {
        out.insert("balloon.last-update".into(), Value::from(t));
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&join(prefix, k), v, out);
            }
        }
        Value::Array(a) => {
            out.insert(join(prefix, "count"), Value::from(a.len()));
            for (i, v) in a.iter().enumerate() {
                flatten(&join(prefix, &i.to_string()), v, out);
            }
        }
        v => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

pub fn stats(d: &Arc<Daemon>, p: DomainRef) -> Result<StatsResult, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    let dom = st.current().ok_or_else(|| no_domain(&p.domain))?;
    let mut stats = BTreeMap::new();
    stats.insert("state.state".into(), Value::from(st.status.number()));
    stats.insert("state.reason".into(), Value::from(st.reason.clone()));
    stats.insert(
        "vcpu.maximum".into(),
        Value::from(domain_model::max_vcpus(dom)),
    );
    stats.insert(
        "balloon.maximum".into(),
        Value::from(domain_model::max_memory_kib(dom)),
    );
    stats.insert(
        "balloon.current".into(),
        Value::from(domain_model::current_memory_kib(dom)),
    );
    if let Some(run) = &st.run {
        stats.insert("vcpu.current".into(), Value::from(domain_model::vcpus(dom)));
        if let Some(ns) = process::cpu_time_ns(run.state.pid) {
            stats.insert("cpu.time".into(), Value::from(ns));
        }
        if run.vmm.is_some() {
            let vmm = supervisor::command(&entry, &st, "query-stats")?;
            flatten("", &vmm, &mut stats);
            if domain_model::has_balloon(&run.domain) {
                // Best effort: a balloon that cannot be queried leaves the definition's
                // figures.
                if let Ok(b) = supervisor::command(&entry, &st, "query-balloon") {
                    balloon_stats(&b, &mut stats);
                }
            }
        }
    }
    Ok(StatsResult {
        name: entry.name.clone(),
        stats,
    })
}

pub fn get_xml(d: &Arc<Daemon>, p: GetXmlParams) -> Result<XmlResult, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    let dom = if p.inactive {
        st.def.as_ref().or(st.current())
    } else {
        st.current()
    };
    let dom = dom.ok_or_else(|| no_domain(&p.domain))?;
    Ok(XmlResult { xml: dom.to_xml() })
}

pub fn block_list(d: &Arc<Daemon>, p: DomainRef) -> Result<BlockListResult, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    let dom = st.current().ok_or_else(|| no_domain(&p.domain))?;
    Ok(BlockListResult {
        disks: domain_model::block_devices(dom),
    })
}

pub fn interface_list(d: &Arc<Daemon>, p: DomainRef) -> Result<InterfaceListResult, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    let dom = st.current().ok_or_else(|| no_domain(&p.domain))?;
    Ok(InterfaceListResult {
        interfaces: domain_model::interfaces(dom),
    })
}

/// Applies `change` to the persistent definition and saves it (`--config`); live changes
/// other than the balloon's (`set_memory_live`) need devices vireo does not have yet
/// (vCPU hotplug).
fn change_config(
    d: &Arc<Daemon>,
    domain: &str,
    scope: Scope,
    what: &str,
    change: impl FnOnce(&mut Domain) -> Result<(), String>,
) -> Result<(), RpcError> {
    let entry = d.lookup(domain)?;
    let mut st = entry.lock();
    let live = scope.live || (!scope.config && st.run.is_some());
    if live {
        return Err(RpcError::new(
            ErrorKind::NotSupported,
            format!("changing the {what} of a running domain is not supported yet: use --config (applies at the next start)"),
        ));
    }
    let mut def = st.def.clone().ok_or_else(|| {
        invalid(format!(
            "domain '{}' is transient: it has no persistent definition",
            entry.name
        ))
    })?;
    change(&mut def).map_err(|e| RpcError::new(ErrorKind::InvalidParams, e))?;
    let xml = def.to_xml();
    // What is saved must load again.
    parse(&xml)?;
    let path = d.definition_path(&entry.name);
    fsutil::atomic_write(&path, xml.as_bytes()).map_err(|e| system_error("write", &path, e))?;
    st.def = Some(def);
    drop(st);
    d.publish(&entry, "defined", "updated", "");
    Ok(())
}

pub fn set_memory(d: &Arc<Daemon>, p: SetMemoryParams) -> Result<Empty, RpcError> {
    if !p.maximum {
        let running = d.lookup(&p.domain)?.lock().run.is_some();
        if p.scope.live || (!p.scope.config && running) {
            set_memory_live(d, &p)?;
            if !p.scope.config {
                return Ok(Empty {});
            }
        }
    }
    let scope = if p.maximum {
        p.scope
    } else {
        // The live part, if any, is done.
        Scope {
            live: false,
            config: true,
        }
    };
    change_config(d, &p.domain, scope, "memory", |dom| {
        domain_model::set_memory_kib(dom, p.kib, p.maximum)
    })?;
    Ok(Empty {})
}

/// `setmem` on a running domain: the balloon takes what the guest should give back
/// (`balloon-set` to the VMM), and the running definition's `<currentMemory>` follows.
fn set_memory_live(d: &Arc<Daemon>, p: &SetMemoryParams) -> Result<(), RpcError> {
    let entry = d.lookup(&p.domain)?;
    let mut st = entry.lock();
    let run = st.running(&entry.name)?;
    if !domain_model::has_balloon(&run.domain) {
        return Err(RpcError::new(
            ErrorKind::NotSupported,
            "changing the memory of a running domain needs a virtio memory balloon \
             (<memballoon model='virtio'>); use --config (applies at the next start)",
        ));
    }
    let mut changed = run.domain.clone();
    domain_model::set_memory_kib(&mut changed, p.kib, false)
        .map_err(|e| RpcError::new(ErrorKind::InvalidParams, e))?;
    let bytes = p.kib.saturating_mul(1024);
    supervisor::command_with(
        &entry,
        &st,
        "balloon-set",
        serde_json::json!({ "target-bytes": bytes }),
    )?;
    if let Some(run) = st.run.as_mut() {
        run.domain = changed;
    }
    Ok(())
}

pub fn set_vcpus(d: &Arc<Daemon>, p: SetVcpusParams) -> Result<Empty, RpcError> {
    change_config(d, &p.domain, p.scope, "vCPU count", |dom| {
        domain_model::set_vcpus(dom, p.count, p.maximum)
    })?;
    Ok(Empty {})
}

pub fn console(d: &Arc<Daemon>, p: DomainRef) -> Result<ConsoleResult, RpcError> {
    let entry = d.lookup(&p.domain)?;
    let st = entry.lock();
    let run = st.run.as_ref().ok_or_else(|| not_running(&entry.name))?;
    let socket = run.state.console_socket.clone().ok_or_else(|| {
        RpcError::new(
            ErrorKind::NotSupported,
            format!(
                "this vireo-vmm has no console socket; the console is logged to {}",
                run.state.console_log.display()
            ),
        )
    })?;
    Ok(ConsoleResult {
        socket,
        log: run.state.console_log.clone(),
    })
}
