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

/// Longest message part kept: values from the input are echoed, and a huge one must not
/// make a huge error.
const MAX_PART: usize = 400;

/// Makes text that may contain input values fit on one line: control characters are
/// escaped (`\n`), and a very long text keeps its start and end.
pub(crate) fn one_line(s: impl Into<String>) -> String {
    let s: String = s.into();
    let escaped: String = if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s
    };
    let n = escaped.chars().count();
    if n <= MAX_PART {
        return escaped;
    }
    let head: String = escaped.chars().take(MAX_PART / 2).collect();
    let tail: String = escaped.chars().skip(n - MAX_PART / 3).collect();
    format!("{head}…{tail}")
}

impl DomainError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            path: one_line(path),
            message: one_line(message),
        }
    }

    pub(crate) fn unsupported(path: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::Unsupported {
            path: one_line(path),
            reason: one_line(reason),
        }
    }

    pub(crate) fn missing(path: impl Into<String>, hint: impl Into<String>) -> Self {
        DomainError::Missing {
            path: one_line(path),
            hint: one_line(hint),
        }
    }

    pub(crate) fn not_runnable(path: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::NotRunnable {
            path: one_line(path),
            reason: one_line(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stay_on_one_line_and_bounded() {
        assert_eq!(one_line("a\nb\tc"), "a\\nb\\tc");
        let long = one_line("x".repeat(10_000));
        assert!(long.chars().count() < MAX_PART + 5, "{}", long.len());
        assert!(long.contains('…'));
        assert_eq!(one_line("plain"), "plain");
    }
}
