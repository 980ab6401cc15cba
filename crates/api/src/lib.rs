//! The vireod management API, shared by the daemon (`vireod`) and its clients (`vireo`).
//!
//! * [`uri`]: connection URIs (`vireo:///system`, `vireo:///session`, `?root=DIR`) and the
//!   directory [`uri::Layout`] both sides derive from them;
//! * [`protocol`]: JSON-RPC 2.0 envelopes, error kinds, and one typed [`protocol::Method`]
//!   per API call (`domain.*`, `host.*`, `events.*`, `pool.*`, `vol.*`), documented in
//!   docs/api.md;
//! * [`client`]: a blocking client over the daemon's unix socket;
//! * [`framing`]: newline-delimited messages with a size bound, used by both sides;
//! * [`stream`]: raw bytes on the connection (volume upload and download).

pub mod client;
pub mod framing;
pub mod protocol;
pub mod stream;
pub mod uri;

pub use client::{Client, ClientError};
pub use protocol::{ErrorKind, Method, RpcError};
pub use uri::{ConnectUri, Layout};

/// Version of the API described in docs/api.md; raised on incompatible changes.
pub const API_VERSION: u32 = 1;
/// The vireo release this library belongs to.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
