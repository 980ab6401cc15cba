//! The JSON-RPC API: decoding requests, routing them by method name to the handler of
//! their area (`domain`, `host`, `events`), encoding replies. To add a method: declare it
//! in vireo-api (`protocol/<area>.rs`), write `fn handler(d, params) -> Result<R, RpcError>`
//! in the area's module here and add one `route::<Method>` arm to [`dispatch`].

mod domain;
mod events;
mod host;

use std::sync::Arc;

use serde_json::Value;
use vireo_api::protocol::domain as dom;
use vireo_api::protocol::events::EventsSubscribe;
use vireo_api::protocol::host::{HostNodeInfo, HostVersion};
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
        _ => Err(RpcError::new(
            ErrorKind::MethodNotFound,
            format!("unknown method '{method}'"),
        )),
    }
}

/// Handles one request line; `None` for notifications (requests without an id).
pub fn handle_line(d: &Arc<Daemon>, conn: &mut Connection, line: &[u8]) -> Option<Response> {
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
