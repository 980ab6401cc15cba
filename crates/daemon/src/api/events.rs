//! `events.subscribe`: lifecycle notifications on this connection.

use std::sync::Arc;

use vireo_api::protocol::events::{SubscribeParams, EVENTS};
use vireo_api::protocol::Empty;
use vireo_api::{ErrorKind, RpcError};

use crate::server::Connection;
use crate::state::Daemon;

pub fn subscribe(
    d: &Arc<Daemon>,
    conn: &mut Connection,
    p: SubscribeParams,
) -> Result<Empty, RpcError> {
    for e in &p.events {
        if !EVENTS.iter().any(|(name, _)| name == e) {
            let names: Vec<&str> = EVENTS.iter().map(|(n, _)| *n).collect();
            return Err(RpcError::new(
                ErrorKind::InvalidParams,
                format!("unknown event '{e}' (events: {})", names.join(", ")),
            ));
        }
    }
    let domain = match &p.domain {
        Some(key) => Some(d.lookup(key)?.uuid.clone()),
        None => None,
    };
    conn.subscribe(d, domain, p.events);
    Ok(Empty {})
}
