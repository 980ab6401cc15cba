//! The JSON-RPC API: decoding requests, routing them by method name to the handler of
//! their area (`domain`, `host`, `events`, `storage`), encoding replies. To add a method: declare it
//! in vireo-api (`protocol/<area>.rs`), write `fn handler(d, params) -> Result<R, RpcError>`
//! in the area's module here and add one `route::<Method>` arm to [`dispatch`].

mod domain;
mod events;
mod host;
pub mod storage;

use std::io::BufRead;
use std::sync::Arc;

use serde_json::Value;
use vireo_api::protocol::domain as dom;
use vireo_api::protocol::events::EventsSubscribe;
use vireo_api::protocol::host::{HostNodeInfo, HostVersion};
use vireo_api::protocol::storage as sto;
use vireo_api::protocol::{Request, Response, JSONRPC_VERSION};
use vireo_api::{ErrorKind, Method, RpcError};

use crate::server::Connection;
use crate::state::Daemon;

/// Decodes `params` as `M::Params`, runs `f`, encodes its result.
fn route<M: Method>(
    params: Value,
    f: impl FnOnce(M::Params) -> Result<M::Result, RpcError>,
) -> Result<Value, RpcError> {
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params
    };
    let params: M::Params = serde_json::from_value(params).map_err(|e| {
        RpcError::new(
            ErrorKind::InvalidParams,
            format!("invalid params for {}: {e}", M::NAME),
        )
    })?;
    let result = f(params)?;
    serde_json::to_value(result).map_err(|e| {
        RpcError::new(
            ErrorKind::InternalError,
            format!("encoding the result: {e}"),
        )
    })
}

fn dispatch(
    d: &Arc<Daemon>,
    conn: &mut Connection,
    method: &str,
    p: Value,
) -> Result<Value, RpcError> {
    match method {
        dom::DomainList::NAME => route::<dom::DomainList>(p, |p| domain::list(d, p)),
        dom::DomainDefine::NAME => route::<dom::DomainDefine>(p, |p| domain::define(d, p)),
        dom::DomainUndefine::NAME => route::<dom::DomainUndefine>(p, |p| domain::undefine(d, p)),
        dom::DomainCreate::NAME => route::<dom::DomainCreate>(p, |p| domain::create(d, p)),
        dom::DomainStart::NAME => route::<dom::DomainStart>(p, |p| domain::start(d, p)),
        dom::DomainShutdown::NAME => route::<dom::DomainShutdown>(p, |p| domain::shutdown(d, p)),
        dom::DomainDestroy::NAME => route::<dom::DomainDestroy>(p, |p| domain::destroy(d, p)),
        dom::DomainReboot::NAME => route::<dom::DomainReboot>(p, |p| domain::reset(d, p)),
        dom::DomainReset::NAME => route::<dom::DomainReset>(p, |p| domain::reset(d, p)),
        dom::DomainSuspend::NAME => route::<dom::DomainSuspend>(p, |p| domain::suspend(d, p)),
        dom::DomainResume::NAME => route::<dom::DomainResume>(p, |p| domain::resume(d, p)),
        dom::DomainSetAutostart::NAME => {
            route::<dom::DomainSetAutostart>(p, |p| domain::set_autostart(d, p))
        }
        dom::DomainGetInfo::NAME => route::<dom::DomainGetInfo>(p, |p| domain::info(d, p)),
        dom::DomainGetState::NAME => route::<dom::DomainGetState>(p, |p| domain::state(d, p)),
        dom::DomainGetStats::NAME => route::<dom::DomainGetStats>(p, |p| domain::stats(d, p)),
        dom::DomainGetXml::NAME => route::<dom::DomainGetXml>(p, |p| domain::get_xml(d, p)),
        dom::DomainBlockList::NAME => {
            route::<dom::DomainBlockList>(p, |p| domain::block_list(d, p))
        }
        dom::DomainInterfaceList::NAME => {
            route::<dom::DomainInterfaceList>(p, |p| domain::interface_list(d, p))
        }
        dom::DomainSetMemory::NAME => {
            route::<dom::DomainSetMemory>(p, |p| domain::set_memory(d, p))
        }
        dom::DomainSetVcpus::NAME => route::<dom::DomainSetVcpus>(p, |p| domain::set_vcpus(d, p)),
        dom::DomainOpenConsole::NAME => {
            route::<dom::DomainOpenConsole>(p, |p| domain::console(d, p))
        }
        HostVersion::NAME => route::<HostVersion>(p, |_| host::version(d)),
        HostNodeInfo::NAME => route::<HostNodeInfo>(p, |_| host::nodeinfo()),
        EventsSubscribe::NAME => route::<EventsSubscribe>(p, |p| events::subscribe(d, conn, p)),
        sto::PoolList::NAME => route::<sto::PoolList>(p, |p| storage::pool_list(d, p)),
        sto::PoolDefineAs::NAME => route::<sto::PoolDefineAs>(p, |p| storage::pool_define_as(d, p)),
        sto::PoolDefine::NAME => route::<sto::PoolDefine>(p, |p| storage::pool_define(d, p)),
        sto::PoolBuild::NAME => route::<sto::PoolBuild>(p, |p| storage::pool_build(d, p)),
        sto::PoolStart::NAME => route::<sto::PoolStart>(p, |p| storage::pool_start(d, p)),
        sto::PoolDestroy::NAME => route::<sto::PoolDestroy>(p, |p| storage::pool_destroy(d, p)),
        sto::PoolUndefine::NAME => route::<sto::PoolUndefine>(p, |p| storage::pool_undefine(d, p)),
        sto::PoolSetAutostart::NAME => {
            route::<sto::PoolSetAutostart>(p, |p| storage::pool_set_autostart(d, p))
        }
        sto::PoolGetInfo::NAME => route::<sto::PoolGetInfo>(p, |p| storage::pool_get_info(d, p)),
        sto::PoolRefresh::NAME => route::<sto::PoolRefresh>(p, |p| storage::pool_refresh(d, p)),
        sto::PoolGetXml::NAME => route::<sto::PoolGetXml>(p, |p| storage::pool_get_xml(d, p)),
        sto::PoolEnsureDefault::NAME => {
            route::<sto::PoolEnsureDefault>(p, |_| storage::pool_ensure_default(d))
        }
        sto::VolList::NAME => route::<sto::VolList>(p, |p| storage::vol_list(d, p)),
        sto::VolCreateAs::NAME => route::<sto::VolCreateAs>(p, |p| storage::vol_create_as(d, p)),
        sto::VolCreate::NAME => route::<sto::VolCreate>(p, |p| storage::vol_create(d, p)),
        sto::VolGetInfo::NAME => route::<sto::VolGetInfo>(p, |p| storage::vol_get_info(d, p)),
        sto::VolGetPath::NAME => route::<sto::VolGetPath>(p, |p| storage::vol_get_path(d, p)),
        sto::VolGetXml::NAME => route::<sto::VolGetXml>(p, |p| storage::vol_get_xml(d, p)),
        sto::VolClone::NAME => route::<sto::VolClone>(p, |p| storage::vol_clone(d, p)),
        sto::VolResize::NAME => route::<sto::VolResize>(p, |p| storage::vol_resize(d, p)),
        sto::VolDelete::NAME => route::<sto::VolDelete>(p, |p| storage::vol_delete(d, p)),
        _ => Err(RpcError::new(
            ErrorKind::MethodNotFound,
            format!("unknown method '{method}'"),
        )),
    }
}

/// Handles one request line; `None` for notifications (requests without an id). Streaming
/// calls read from (uploads) or write to (downloads) the connection before their final
/// response is returned.
pub fn handle_line<R: BufRead>(
    d: &Arc<Daemon>,
    conn: &mut Connection,
    reader: &mut R,
    line: &[u8],
) -> Option<Response> {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Some(Response::err(
                Value::Null,
                RpcError::new(ErrorKind::ParseError, format!("request is not JSON: {e}")),
            ))
        }
    };
    let id = value.get("id").cloned();
    let request: Request = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => {
            return Some(Response::err(
                id.unwrap_or(Value::Null),
                RpcError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                    "not a JSON-RPC 2.0 request (one object with jsonrpc, method, params, id): {e}"
                ),
                ),
            ))
        }
    };
    if request.jsonrpc != JSONRPC_VERSION {
        return Some(Response::err(
            id.unwrap_or(Value::Null),
            RpcError::new(ErrorKind::InvalidRequest, "jsonrpc must be \"2.0\""),
        ));
    }
    if request.method == sto::VolUpload::NAME || request.method == sto::VolDownload::NAME {
        // A stream needs an id to be answered twice.
        let id = request.id?;
        let out = if request.method == sto::VolUpload::NAME {
            storage::upload(d, &conn.writer, reader, id, request.params)
        } else {
            storage::download(d, &conn.writer, id, request.params)
        };
        conn.close |= out.close;
        return Some(out.response);
    }
    let result = dispatch(d, conn, &request.method, request.params);
    if let Err(e) = &result {
        log::debug!("{}: {}", request.method, e.message);
    }
    let id = request.id?;
    Some(match result {
        Ok(v) => Response::ok(id, v),
        Err(e) => Response::err(id, e),
    })
}
