//! Errors: one line each, naming the element path (`/domain/devices/hostdev`) and what is
//! wrong with it.

/// Why a domain definition was refused, or cannot be turned into a VMM configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Not well-formed XML (the parser's message, with line:column).
    #[error("malformed XML: {0}")]
    Xml(String),
    /// The document is bigger than vireo accepts.
    #[error("domain XML is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The root element is not `<domain>`.
    #[error("the root element is <{0}>, expected <domain>")]
    NotDomain(String),
    /// An element vireo does not know at all (not in the libvirt subset it reads).
    #[error("unknown element {path}")]
    UnknownElement { path: String },
    /// An attribute vireo does not know on an element it reads.
    #[error("unknown attribute '{attr}' on {path}")]
    UnknownAttribute { path: String, attr: String },
    /// A libvirt element or value that would give the guest hardware vireo cannot provide.
    #[error("{path} is not supported: {reason}")]
    Unsupported { path: String, reason: String },
    /// A required element or attribute is absent.
    #[error("{path} is missing{}", with_hint(.hint))]
    Missing { path: String, hint: String },
    /// An element that may appear once appears again.
    #[error("duplicate element {path} (it may appear only once)")]
    Duplicate { path: String },
    /// A value that does not parse or is out of range.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// A valid definition the VMM cannot run yet (e.g. a device type it does not have).
    #[error("{path} cannot be run yet: {reason}")]
    NotRunnable { path: String, reason: String },
    /// A UUID or MAC address could not be generated.
    #[error("cannot generate {what}: {message}")]
    Random { what: &'static str, message: String },
}

fn with_hint(h: &str) -> String {
    if h.is_empty() {
        String::new()
    } else {
        format!(": {h}")
    }
}

impl DomainError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::Unsupported {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(path: impl Into<String>, hint: impl Into<String>) -> Self {
        DomainError::Missing {
            path: path.into(),
            hint: hint.into(),
        }
    }

    pub(crate) fn not_runnable(path: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::NotRunnable {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
