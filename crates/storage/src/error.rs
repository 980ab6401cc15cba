//! Errors of the storage layer: one variant per kind of failure, each
//! message naming the pool, volume, file or XML element concerned.

use std::path::{Path, PathBuf};

/// What went wrong, coarsely, for callers that map errors onto API codes
/// (the daemon's JSON-RPC errors) or exit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Malformed XML, bad names, sizes or flags.
    InvalidArgument,
    /// No pool or volume of that name / path.
    NotFound,
    /// A pool or volume of that name (uuid, target path) exists already.
    AlreadyExists,
    /// Not allowed in the current state: pool inactive (or active), volume
    /// in use as a backing file or by another operation.
    OperationInvalid,
    /// The host refused an operation (I/O, permissions, space).
    System,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("storage pool not found: no storage pool with matching name '{0}'")]
    NoPool(String),
    #[error(
        "storage volume not found: no storage vol with matching name '{name}' in pool '{pool}'"
    )]
    NoVolume { pool: String, name: String },
    #[error("storage volume not found: no storage vol with matching path or key '{0}'")]
    NoVolumePath(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    State(String),
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Block(#[from] vireo_block::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
    pub(crate) fn state(msg: impl Into<String>) -> Error {
        Error::State(msg.into())
    }
    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) => ErrorKind::InvalidArgument,
            Error::NoPool(_) | Error::NoVolume { .. } | Error::NoVolumePath(_) => {
                ErrorKind::NotFound
            }
            Error::Exists(_) => ErrorKind::AlreadyExists,
            Error::State(_) => ErrorKind::OperationInvalid,
            Error::Io { .. } => ErrorKind::System,
            Error::Block(e) => match e {
                vireo_block::Error::Io { .. } => ErrorKind::System,
                _ => ErrorKind::InvalidArgument,
            },
        }
    }
}
