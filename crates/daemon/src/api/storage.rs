//! `pool.*` and `vol.*` handlers: crate vireo-storage's [`PoolManager`] behind the API,
//! with the daemon's one addition — a volume a running domain uses (as a disk, in a disk's
//! backing chain, or as its kernel/initrd) cannot be deleted, resized or uploaded to
//! ([`crate::claims`]).
//!
//! `vol.upload` and `vol.download` are streams ([`vireo_api::stream`]): their handlers get
//! the connection's reader and writer and are called by [`super::handle_line`] directly.

use std::io::{self, BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;
use vireo_api::protocol::domain::XmlResult;
use vireo_api::protocol::storage::*;
use vireo_api::protocol::{Empty, Response};
use vireo_api::stream::{self, FrameReader};
use vireo_api::{ErrorKind, Method, RpcError};
use vireo_storage::{self as storage, PoolFilter, PoolManager, ResizeFlags, VolCreateAs};

use crate::state::Daemon;

/// The API error for a storage error: not-found and exists kinds keep their own codes.
pub fn rpc(e: storage::Error) -> RpcError {
    let kind = match &e {
        storage::Error::NoPool(_) => ErrorKind::NoPool,
        storage::Error::NoVolume { .. } | storage::Error::NoVolumePath(_) => ErrorKind::NoVolume,
        _ => match e.kind() {
            storage::ErrorKind::InvalidArgument => ErrorKind::InvalidParams,
            storage::ErrorKind::NotFound => ErrorKind::NoVolume,
            storage::ErrorKind::AlreadyExists => ErrorKind::StorageExists,
            storage::ErrorKind::OperationInvalid => ErrorKind::OperationInvalid,
            storage::ErrorKind::System => ErrorKind::StorageError,
        },
    };
    RpcError::new(kind, e.to_string())
}

fn pools(d: &Daemon) -> Result<&PoolManager, RpcError> {
    d.pools()
}

/// The pool's name from a name or UUID.
fn pool_name(m: &PoolManager, pool: &str) -> Result<String, RpcError> {
    m.lookup_pool(pool).map_err(rpc)
}

fn pool_info(i: storage::PoolInfo) -> PoolInfo {
    PoolInfo {
        name: i.name,
        uuid: i.uuid,
        pool_type: i.pool_type.name().to_string(),
        state: match i.state {
            storage::PoolState::Running => PoolState::Running,
            storage::PoolState::Inactive => PoolState::Inactive,
        },
        persistent: i.persistent,
        autostart: i.autostart,
        target: i.target,
        capacity: i.capacity,
        allocation: i.allocation,
        available: i.available,
        volumes: i.volumes,
    }
}

pub fn vol_info(v: storage::VolumeInfo) -> VolInfo {
    VolInfo {
        name: v.name,
        pool: v.pool,
        key: v.key,
        path: v.path,
        vol_type: v.vol_type,
        format: v.format,
        capacity: v.capacity,
        allocation: v.allocation,
        physical: v.physical,
        backing: v.backing.map(|b| BackingInfo {
            path: b.path,
            format: b.format,
        }),
        error: v.error,
    }
}

// ----- pools ------------------------------------------------------------------------

pub fn pool_list(d: &Daemon, p: PoolListParams) -> Result<PoolListResult, RpcError> {
    let active = if p.inactive {
        Some(false)
    } else if p.all {
        None
    } else {
        Some(true)
    };
    let pools = pools(d)?
        .list_pools(PoolFilter {
            active,
            autostart: p.autostart,
        })
        .into_iter()
        .map(pool_info)
        .collect();
    Ok(PoolListResult { pools })
}

fn defined(def: storage::PoolDef) -> PoolDefineResult {
    PoolDefineResult {
        name: def.name,
        uuid: def.uuid.to_string(),
    }
}

pub fn pool_define_as(d: &Daemon, p: PoolDefineAsParams) -> Result<PoolDefineResult, RpcError> {
    let def = pools(d)?
        .define_as(&p.name, &p.pool_type, &p.target)
        .map_err(rpc)?;
    Ok(defined(def))
}

pub fn pool_define(d: &Daemon, p: PoolDefineParams) -> Result<PoolDefineResult, RpcError> {
    let def = pools(d)?.define_xml(&p.xml).map_err(|e| {
        let mut r = rpc(e);
        if r.kind() == ErrorKind::InvalidParams {
            r = RpcError::new(ErrorKind::InvalidXml, r.message);
        }
        r
    })?;
    Ok(defined(def))
}

pub fn pool_build(d: &Daemon, p: PoolRef) -> Result<Empty, RpcError> {
    let m = pools(d)?;
    m.build(&pool_name(m, &p.pool)?).map_err(rpc)?;
    Ok(Empty {})
}

pub fn pool_start(d: &Daemon, p: PoolStartParams) -> Result<Empty, RpcError> {
    let m = pools(d)?;
    m.start(&pool_name(m, &p.pool)?, p.build).map_err(rpc)?;
    Ok(Empty {})
}

pub fn pool_destroy(d: &Daemon, p: PoolRef) -> Result<Empty, RpcError> {
    let m = pools(d)?;
    m.destroy(&pool_name(m, &p.pool)?).map_err(rpc)?;
    Ok(Empty {})
}

pub fn pool_undefine(d: &Daemon, p: PoolRef) -> Result<Empty, RpcError> {
    let m = pools(d)?;
    m.undefine(&pool_name(m, &p.pool)?).map_err(rpc)?;
    Ok(Empty {})
}

pub fn pool_set_autostart(d: &Daemon, p: PoolAutostartParams) -> Result<Empty, RpcError> {
    let m = pools(d)?;
    m.set_autostart(&pool_name(m, &p.pool)?, p.enable)
        .map_err(rpc)?;
    Ok(Empty {})
}

pub fn pool_get_info(d: &Daemon, p: PoolRef) -> Result<PoolInfo, RpcError> {
    let m = pools(d)?;
    Ok(pool_info(
        m.pool_info(&pool_name(m, &p.pool)?).map_err(rpc)?,
    ))
}

pub fn pool_refresh(d: &Daemon, p: PoolRef) -> Result<Empty, RpcError> {
    let m = pools(d)?;
    m.refresh(&pool_name(m, &p.pool)?).map_err(rpc)?;
    Ok(Empty {})
}

pub fn pool_get_xml(d: &Daemon, p: PoolGetXmlParams) -> Result<XmlResult, RpcError> {
    let m = pools(d)?;
    let xml = m
        .pool_dumpxml(&pool_name(m, &p.pool)?, p.inactive)
        .map_err(rpc)?;
    Ok(XmlResult { xml })
}

pub fn pool_ensure_default(d: &Daemon) -> Result<PoolInfo, RpcError> {
    let m = pools(d)?;
    m.ensure_default_pool().map_err(rpc)?;
    Ok(pool_info(m.pool_info(storage::DEFAULT_POOL).map_err(rpc)?))
}

// ----- volumes ----------------------------------------------------------------------

/// (pool, volume name) of virsh's `VOL [--pool POOL]`.
fn resolve(m: &PoolManager, v: &VolRef) -> Result<(String, String), RpcError> {
    m.resolve_volume(v.pool.as_deref(), &v.vol).map_err(rpc)
}

/// Refuses `what` on a volume a running domain uses; held while the operation runs so
/// that no domain starts with it meanwhile.
fn claim<'a>(
    d: &'a Daemon,
    path: &Path,
    vol: &str,
    verb: &str,
    job: &'static str,
) -> Result<crate::claims::JobClaim<'a>, RpcError> {
    d.claims.claim_job(path, job).map_err(|e| {
        RpcError::new(
            ErrorKind::OperationInvalid,
            format!("cannot {verb} storage volume '{vol}': {e}"),
        )
    })
}

pub fn vol_list(d: &Daemon, p: VolListParams) -> Result<VolListResult, RpcError> {
    let m = pools(d)?;
    let volumes = m
        .vol_list(&pool_name(m, &p.pool)?, p.details)
        .map_err(rpc)?
        .into_iter()
        .map(vol_info)
        .collect();
    Ok(VolListResult { volumes })
}

pub fn vol_create_as(d: &Daemon, p: VolCreateAsParams) -> Result<VolInfo, RpcError> {
    let m = pools(d)?;
    let pool = pool_name(m, &p.pool)?;
    let opts = VolCreateAs {
        format: p.format,
        allocation: p.allocation,
        backing_vol: p.backing_vol,
        backing_vol_format: p.backing_vol_format,
        prealloc_metadata: p.prealloc_metadata,
    };
    Ok(vol_info(
        m.vol_create_as(&pool, &p.name, p.capacity, &opts)
            .map_err(rpc)?,
    ))
}

pub fn vol_create(d: &Daemon, p: VolCreateParams) -> Result<VolInfo, RpcError> {
    let m = pools(d)?;
    let pool = pool_name(m, &p.pool)?;
    let def = storage::VolumeDef::from_xml(&p.xml)
        .map_err(|e| RpcError::new(ErrorKind::InvalidXml, e.to_string()))?;
    Ok(vol_info(
        m.vol_create(&pool, &def, p.prealloc_metadata)
            .map_err(rpc)?,
    ))
}

pub fn vol_get_info(d: &Daemon, p: VolRef) -> Result<VolInfo, RpcError> {
    let m = pools(d)?;
    let (pool, vol) = resolve(m, &p)?;
    Ok(vol_info(m.vol_info(&pool, &vol).map_err(rpc)?))
}

pub fn vol_get_path(d: &Daemon, p: VolRef) -> Result<VolPathResult, RpcError> {
    let m = pools(d)?;
    let (pool, name) = resolve(m, &p)?;
    let path = m.vol_path(&pool, &name).map_err(rpc)?;
    Ok(VolPathResult { pool, name, path })
}

pub fn vol_get_xml(d: &Daemon, p: VolRef) -> Result<XmlResult, RpcError> {
    let m = pools(d)?;
    let (pool, vol) = resolve(m, &p)?;
    Ok(XmlResult {
        xml: m.vol_dumpxml(&pool, &vol).map_err(rpc)?,
    })
}

pub fn vol_clone(d: &Daemon, p: VolCloneParams) -> Result<VolInfo, RpcError> {
    let m = pools(d)?;
    let (pool, vol) = resolve(m, &p.vol)?;
    Ok(vol_info(
        m.vol_clone(&pool, &vol, &p.new_name, p.prealloc_metadata)
            .map_err(rpc)?,
    ))
}

pub fn vol_resize(d: &Daemon, p: VolResizeParams) -> Result<VolInfo, RpcError> {
    let m = pools(d)?;
    let (pool, vol) = resolve(m, &p.vol)?;
    let path = m.vol_path(&pool, &vol).map_err(rpc)?;
    let _claim = claim(d, &path, &vol, "resize", "being resized")?;
    let flags = ResizeFlags {
        delta: p.delta,
        shrink: p.shrink,
        allocate: p.allocate,
    };
    Ok(vol_info(
        m.vol_resize(&pool, &vol, p.capacity, flags).map_err(rpc)?,
    ))
}

pub fn vol_delete(d: &Daemon, p: VolRef) -> Result<Empty, RpcError> {
    let m = pools(d)?;
    let (pool, vol) = resolve(m, &p)?;
    delete_volume(d, m, &pool, &vol)?;
    Ok(Empty {})
}

/// Deletes a volume unless a running domain uses it (also `undefine --remove-all-storage`).
pub fn delete_volume(d: &Daemon, m: &PoolManager, pool: &str, vol: &str) -> Result<(), RpcError> {
    let path = m.vol_path(pool, vol).map_err(rpc)?;
    let _claim = claim(d, &path, vol, "delete", "being deleted")?;
    m.vol_delete(pool, vol).map_err(rpc)
}

// ----- streams ----------------------------------------------------------------------

fn lock(w: &Mutex<UnixStream>) -> std::sync::MutexGuard<'_, UnixStream> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept(w: &mut UnixStream, id: &Value) -> io::Result<()> {
    let mut line = serde_json::to_vec(&Response::ok(id.clone(), stream::acceptance()))
        .map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// The incoming bytes of an upload: accepts the stream on the first read, i.e. only once
/// the storage layer has checked the volume, offset and length.
struct UploadSource<'a, R: BufRead> {
    frames: FrameReader<&'a mut R>,
    writer: &'a Mutex<UnixStream>,
    id: &'a Value,
    accepted: bool,
    /// Bytes received so far.
    received: u64,
    /// Why the stream ended badly (malformed, cut, aborted by the client), if it did.
    stream_error: Option<String>,
}

impl<R: BufRead> Read for UploadSource<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.accepted {
            self.accepted = true;
            accept(&mut lock(self.writer), self.id)?;
        }
        let r = self.frames.read(buf);
        match &r {
            Ok(n) => self.received += *n as u64,
            Err(e) => self.stream_error = Some(e.to_string()),
        }
        r
    }
}

/// What a streaming handler tells the connection loop: the final response, and whether the
/// connection must be closed (the stream could not be followed to its end).
pub struct StreamOutcome {
    pub response: Response,
    pub close: bool,
}

fn outcome(id: &Value, r: Result<TransferResult, RpcError>, close: bool) -> StreamOutcome {
    let response = match r.and_then(|t| {
        serde_json::to_value(t).map_err(|e| RpcError::new(ErrorKind::InternalError, e.to_string()))
    }) {
        Ok(v) => Response::ok(id.clone(), v),
        Err(e) => Response::err(id.clone(), e),
    };
    StreamOutcome { response, close }
}

fn transfer_params(params: Value, method: &str) -> Result<VolTransferParams, RpcError> {
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params
    };
    serde_json::from_value(params).map_err(|e| {
        RpcError::new(
            ErrorKind::InvalidParams,
            format!("invalid params for {method}: {e}"),
        )
    })
}

/// `vol.upload`: the client's frames go into the volume's file.
pub fn upload<R: BufRead>(
    d: &Daemon,
    writer: &Mutex<UnixStream>,
    reader: &mut R,
    id: Value,
    params: Value,
) -> StreamOutcome {
    let prepared = transfer_params(params, VolUpload::NAME).and_then(|p| {
        let m = pools(d)?;
        let (pool, vol) = resolve(m, &p.vol)?;
        let path = m.vol_path(&pool, &vol).map_err(rpc)?;
        Ok((m, p, pool, vol, path))
    });
    let (m, p, pool, vol, path) = match prepared {
        Ok(x) => x,
        Err(e) => return outcome(&id, Err(e), false),
    };
    let claimed = match claim(d, &path, &vol, "upload to", "being uploaded to") {
        Ok(c) => c,
        Err(e) => return outcome(&id, Err(e), false),
    };
    let mut src = UploadSource {
        frames: FrameReader::new(reader),
        writer,
        id: &id,
        accepted: false,
        received: 0,
        stream_error: None,
    };
    let r = m
        .vol_upload(&pool, &vol, &mut src, p.offset, p.length)
        .map_err(rpc);
    drop(claimed);
    if !src.accepted {
        // Refused before any byte was asked for: the client sends nothing.
        return outcome(&id, r.map(|bytes| TransferResult { bytes }), false);
    }
    // Follow the stream to its end frame (bytes past `length`, or after a failed write).
    let drained = src.frames.drain();
    if let Err(e) = &drained {
        src.stream_error.get_or_insert_with(|| e.to_string());
    }
    let close = src.frames.broken() || drained.is_err();
    // A stream problem explains a failure better than the storage layer's read error.
    let r = match (&src.stream_error, r) {
        (Some(e), _) if close => Err(RpcError::new(
            ErrorKind::InvalidRequest,
            format!("upload stream to volume '{vol}': {e}"),
        )),
        (Some(_), Err(_)) => Err(RpcError::new(
            ErrorKind::OperationInvalid,
            format!(
                "upload to volume '{vol}' aborted by the client after {} bytes (they were written)",
                src.received
            ),
        )),
        (_, Err(e)) => Err(e),
        (_, Ok(bytes)) => Ok(TransferResult { bytes }),
    };
    outcome(&id, r, close)
}

/// The outgoing bytes of a download: the acceptance goes first, with the first frame, and
/// the writer stays locked (no event notification between frames) until the end frame.
struct DownloadSink<'a> {
    writer: &'a Mutex<UnixStream>,
    guard: Option<std::sync::MutexGuard<'a, UnixStream>>,
    id: &'a Value,
    failed: bool,
}

impl Write for DownloadSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.guard.is_none() {
            let mut g = lock(self.writer);
            accept(&mut g, self.id).inspect_err(|_| self.failed = true)?;
            self.guard = Some(g);
        }
        let w = self.guard.as_mut().expect("locked above");
        stream::write_data(&mut **w, buf).inspect_err(|_| self.failed = true)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.guard.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// `vol.download`: the volume's file goes to the client as frames.
pub fn download(d: &Daemon, writer: &Mutex<UnixStream>, id: Value, params: Value) -> StreamOutcome {
    let prepared = transfer_params(params, VolDownload::NAME).and_then(|p| {
        let m = pools(d)?;
        let (pool, vol) = resolve(m, &p.vol)?;
        Ok((m, p, pool, vol))
    });
    let (m, p, pool, vol) = match prepared {
        Ok(x) => x,
        Err(e) => return outcome(&id, Err(e), false),
    };
    let mut sink = DownloadSink {
        writer,
        guard: None,
        id: &id,
        failed: false,
    };
    let r = m
        .vol_download(&pool, &vol, &mut sink, p.offset, p.length)
        .map_err(rpc);
    let Some(mut w) = sink.guard.take() else {
        return outcome(&id, r.map(|bytes| TransferResult { bytes }), false);
    };
    if sink.failed {
        // The client is gone or stuck: the connection cannot be used any more.
        return outcome(&id, r.map(|bytes| TransferResult { bytes }), true);
    }
    let ended = match &r {
        Ok(_) => stream::write_end(&mut *w),
        Err(_) => stream::write_abort(&mut *w),
    };
    drop(w);
    outcome(&id, r.map(|bytes| TransferResult { bytes }), ended.is_err())
}

/// The (pool, volume) a host file is, if it lies in an active pool: by the pools' volume
/// lists, else after refreshing the pool whose directory holds it (a file created since
/// the last refresh).
pub fn pool_volume_of(m: &PoolManager, path: &Path) -> Option<(String, String)> {
    let text = path.to_str()?;
    if let Ok(found) = m.lookup_volume(text) {
        return Some(found);
    }
    let parent = std::fs::canonicalize(path.parent()?).ok()?;
    let pool = m
        .list_pools(PoolFilter {
            active: Some(true),
            autostart: None,
        })
        .into_iter()
        .find(|p| std::fs::canonicalize(&p.target).is_ok_and(|t| t == parent))?;
    m.refresh(&pool.name).ok()?;
    m.lookup_volume(text).ok()
}
