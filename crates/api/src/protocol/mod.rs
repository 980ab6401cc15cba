//! JSON-RPC 2.0 over vireod's unix socket: one JSON object per line, both directions.
//!
//! Every API call is a type implementing [`Method`]: its wire name and the types of its
//! `params` and `result`. The daemon routes on [`Method::NAME`]; the client calls
//! `client.call::<M>(&params)`. Adding a call = one `method!` line plus its param/result
//! types in the module of its area (`domain`, `host`, `events`, `storage`) and a
//! handler in the daemon. docs/api.md documents every method.

pub mod domain;
pub mod events;
pub mod host;
pub mod storage;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `jsonrpc` member of every message.
pub const JSONRPC_VERSION: &str = "2.0";

/// A typed API call.
pub trait Method {
    /// The JSON-RPC `method` name, `area.verb`.
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned;
    type Result: Serialize + DeserializeOwned;
}

/// Declares a [`Method`]: `method!(Type, "area.verb", Params, Result);`.
#[macro_export]
macro_rules! method {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $params:ty, $result:ty) => {
        $(#[$doc])*
        pub enum $ty {}
        impl $crate::protocol::Method for $ty {
            const NAME: &'static str = $name;
            type Params = $params;
            type Result = $result;
        }
    };
}

/// Params or result of calls that carry nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// A request (with `id`) or a notification (without).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub jsonrpc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub method: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

/// A reply: exactly one of `result` and `error`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub jsonrpc: String,
    pub id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    pub fn ok(id: Value, result: Value) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.into(),
            id,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(id: Value, error: RpcError) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.into(),
            id,
            result: None,
            error: Some(error),
        }
    }
}

/// A message from the daemon that is not a reply (an event).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub jsonrpc: String,
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

/// Why a call failed. `code` is the JSON-RPC error code, `data.kind` the stable name
/// scripts should match on, `message` one line for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ErrorData>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    pub kind: ErrorKind,
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            code: kind.code(),
            message: message.into(),
            data: Some(ErrorData { kind }),
        }
    }
    /// The error's kind (from `data.kind`, else from the code).
    pub fn kind(&self) -> ErrorKind {
        self.data
            .as_ref()
            .map(|d| d.kind)
            .unwrap_or_else(|| ErrorKind::from_code(self.code))
    }
}

/// Error kinds: the JSON-RPC protocol ones, then vireo's (codes -32001 and below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON (-32700).
    ParseError,
    /// JSON but not a JSON-RPC 2.0 request (-32600).
    InvalidRequest,
    /// No such method (-32601).
    MethodNotFound,
    /// Params missing, of the wrong type or out of range (-32602).
    InvalidParams,
    /// A daemon bug or a host failure (-32603).
    InternalError,
    /// No domain with that name, id or UUID.
    NoDomain,
    /// The operation is not valid in the domain's current state (e.g. starting a running domain).
    OperationInvalid,
    /// The XML is malformed or describes something vireo refuses.
    InvalidXml,
    /// A domain with that name or UUID already exists.
    DomainExists,
    /// The VMM failed to start or refused a command.
    VmmError,
    /// vireo does not implement this (yet).
    NotSupported,
    /// A storage pool or volume operation failed.
    StorageError,
    /// No storage pool with that name or UUID.
    NoPool,
    /// No storage volume with that name, key or path.
    NoVolume,
    /// A host operation failed (files, processes).
    SystemError,
    /// A storage pool or volume with that name, UUID or target exists already.
    StorageExists,
}

impl ErrorKind {
    pub fn code(self) -> i64 {
        match self {
            ErrorKind::ParseError => -32700,
            ErrorKind::InvalidRequest => -32600,
            ErrorKind::MethodNotFound => -32601,
            ErrorKind::InvalidParams => -32602,
            ErrorKind::InternalError => -32603,
            ErrorKind::NoDomain => -32001,
            ErrorKind::OperationInvalid => -32002,
            ErrorKind::InvalidXml => -32003,
            ErrorKind::DomainExists => -32004,
            ErrorKind::VmmError => -32005,
            ErrorKind::NotSupported => -32006,
            ErrorKind::StorageError => -32007,
            ErrorKind::NoPool => -32008,
            ErrorKind::NoVolume => -32009,
            ErrorKind::SystemError => -32010,
            ErrorKind::StorageExists => -32011,
        }
    }

    pub fn from_code(code: i64) -> Self {
        const ALL: [ErrorKind; 16] = [
            ErrorKind::ParseError,
            ErrorKind::InvalidRequest,
            ErrorKind::MethodNotFound,
            ErrorKind::InvalidParams,
            ErrorKind::InternalError,
            ErrorKind::NoDomain,
            ErrorKind::OperationInvalid,
            ErrorKind::InvalidXml,
            ErrorKind::DomainExists,
            ErrorKind::VmmError,
            ErrorKind::NotSupported,
            ErrorKind::StorageError,
            ErrorKind::NoPool,
            ErrorKind::NoVolume,
            ErrorKind::SystemError,
            ErrorKind::StorageExists,
        ];
        ALL.into_iter()
            .find(|k| k.code() == code)
            .unwrap_or(ErrorKind::InternalError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialise_with_kind() {
        let e = RpcError::new(ErrorKind::NoDomain, "no domain with matching name 'x'");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"code":-32001,"message":"no domain with matching name 'x'","data":{"kind":"no_domain"}}"#
        );
        let back: RpcError = serde_json::from_str(&json).unwrap();
        assert_eq!(back.kind(), ErrorKind::NoDomain);
        let bare: RpcError = serde_json::from_str(r#"{"code":-32601,"message":"m"}"#).unwrap();
        assert_eq!(bare.kind(), ErrorKind::MethodNotFound);
        for code in [-32700, -32600, -32001, -32010, -32011] {
            assert_eq!(ErrorKind::from_code(code).code(), code);
        }
    }
}
