//! Connection URIs and the directory layout derived from them.
//!
//! As with libvirt, a client names the daemon it talks to with a URI:
//!
//! | URI | daemon | directories |
//! | --- | --- | --- |
//! | `vireo:///system` | the host's, run by root | `/etc/vireo`, `/var/lib/vireo`, `/run/vireo`, `/var/log/vireo` |
//! | `vireo:///session` | the user's own | XDG: `$XDG_CONFIG_HOME/vireo`, `$XDG_DATA_HOME/vireo`, `$XDG_RUNTIME_DIR/vireo`, `$XDG_STATE_HOME/vireo/log` |
//!
//! Query parameters: `root=DIR` puts every directory of the system layout under `DIR`
//! (`DIR/etc/vireo`, …; tests run isolated daemons this way), `socket=PATH` names the
//! daemon's socket directly. `vireod --root DIR` serves `vireo:///system?root=DIR`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Environment variable naming the URI used when `-c` is not given (as `LIBVIRT_DEFAULT_URI`).
pub const DEFAULT_URI_ENV: &str = "VIREO_DEFAULT_URI";

/// The longest path a unix socket address holds (`sun_path` minus the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Which daemon: the host's (`system`) or the user's (`session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    System,
    Session,
}

/// A parsed connection URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectUri {
    pub mode: Mode,
    /// Every directory under this one (`?root=DIR`).
    pub root: Option<PathBuf>,
    /// The daemon's socket, overriding the layout's (`?socket=PATH`).
    pub socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error("unsupported connection URI '{0}': use vireo:///system or vireo:///session")]
    Unsupported(String),
    #[error("connection URI '{uri}': {why}")]
    BadQuery { uri: String, why: String },
    #[error("cannot find the session directories: {0} is not set")]
    NoHome(&'static str),
}

impl ConnectUri {
    pub fn system() -> Self {
        Self {
            mode: Mode::System,
            root: None,
            socket: None,
        }
    }

    pub fn session() -> Self {
        Self {
            mode: Mode::Session,
            ..Self::system()
        }
    }

    /// Everything under `root`, as `vireod --root DIR` serves it.
    pub fn with_root(root: &Path) -> Self {
        Self {
            root: Some(root.to_path_buf()),
            ..Self::system()
        }
    }

    /// The URI used when none is given: `$VIREO_DEFAULT_URI`, else `vireo:///system` for
    /// root and `vireo:///session` for everyone else (as virsh chooses).
    pub fn default_for_user() -> Result<Self, UriError> {
        match std::env::var(DEFAULT_URI_ENV) {
            Ok(s) if !s.is_empty() => s.parse(),
            _ => Ok(if is_root() {
                Self::system()
            } else {
                Self::session()
            }),
        }
    }

    /// Resolves `-c URI` (if given) or the default.
    pub fn resolve(explicit: Option<&str>) -> Result<Self, UriError> {
        match explicit {
            Some(s) => s.parse(),
            None => Self::default_for_user(),
        }
    }

    /// The directories of this connection.
    pub fn layout(&self) -> Result<Layout, UriError> {
        let mut layout = match (&self.root, self.mode) {
            (Some(root), _) => Layout::under_root(root),
            (None, Mode::System) => Layout::system(),
            (None, Mode::Session) => Layout::session()?,
        };
        if let Some(socket) = &self.socket {
            layout.socket = socket.clone();
        }
        Ok(layout)
    }
}

impl FromStr for ConnectUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        let unsupported = || UriError::Unsupported(s.to_string());
        let rest = s.strip_prefix("vireo://").ok_or_else(unsupported)?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mode = match path.trim_end_matches('/') {
            "/system" => Mode::System,
            "/session" => Mode::Session,
            _ => return Err(unsupported()),
        };
        let mut uri = ConnectUri {
            mode,
            root: None,
            socket: None,
        };
        let bad = |why: String| UriError::BadQuery {
            uri: s.to_string(),
            why,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("'{pair}' is not key=value")))?;
            let value =
                percent_decode(value).ok_or_else(|| bad(format!("bad escape in '{pair}'")))?;
            if value.is_empty() {
                return Err(bad(format!("'{key}' is empty")));
            }
            match key {
                "root" => uri.root = Some(PathBuf::from(value)),
                "socket" => uri.socket = Some(PathBuf::from(value)),
                _ => {
                    return Err(bad(format!(
                        "unknown parameter '{key}' (use root or socket)"
                    )))
                }
            }
        }
        Ok(uri)
    }
}

impl fmt::Display for ConnectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::System => "system",
            Mode::Session => "session",
        };
        write!(f, "vireo:///{mode}")?;
        let mut sep = '?';
        for (key, value) in [("root", &self.root), ("socket", &self.socket)] {
            if let Some(v) = value {
                write!(f, "{sep}{key}={}", percent_encode(&v.to_string_lossy()))?;
                sep = '&';
            }
        }
        Ok(())
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"/-_.~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where a daemon keeps everything. Both vireod and its clients derive it from the URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Definitions: `domains/NAME.xml`, `domains/autostart/NAME.xml` (symlinks), `storage/`.
    pub config_dir: PathBuf,
    /// Persistent data: `images/` (the default storage pool).
    pub state_dir: PathBuf,
    /// Runtime (tmpfs on a real host): the socket, the pid file, `vm/NAME/` per running domain.
    pub run_dir: PathBuf,
    /// `NAME.log` (the VMM's own output) and `NAME.console.log` (the guest's serial output).
    pub log_dir: PathBuf,
    /// The daemon's API socket.
    pub socket: PathBuf,
}

impl Layout {
    fn from_dirs(
        config_dir: PathBuf,
        state_dir: PathBuf,
        run_dir: PathBuf,
        log_dir: PathBuf,
    ) -> Self {
        let socket = run_dir.join("vireod.sock");
        Self {
            config_dir,
            state_dir,
            run_dir,
            log_dir,
            socket,
        }
    }

    pub fn system() -> Self {
        Self::under_root(Path::new("/"))
    }

    /// The system layout with every directory under `root`.
    pub fn under_root(root: &Path) -> Self {
        Self::from_dirs(
            root.join("etc/vireo"),
            root.join("var/lib/vireo"),
            root.join("run/vireo"),
            root.join("var/log/vireo"),
        )
    }

    /// The per-user layout (XDG base directories).
    pub fn session() -> Result<Self, UriError> {
        let home = || {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .ok_or(UriError::NoHome("HOME"))
        };
        let xdg = |var: &str, fallback: &str| -> Result<PathBuf, UriError> {
            match std::env::var_os(var).filter(|v| !v.is_empty()) {
                Some(v) => Ok(PathBuf::from(v)),
                None => Ok(home()?.join(fallback)),
            }
        };
        let run = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(v).join("vireo"),
            // SAFETY: getuid has no preconditions and cannot fail.
            None => std::env::temp_dir().join(format!("vireo-{}", unsafe { libc::getuid() })),
        };
        Ok(Self::from_dirs(
            xdg("XDG_CONFIG_HOME", ".config")?.join("vireo"),
            xdg("XDG_DATA_HOME", ".local/share")?.join("vireo"),
            run,
            xdg("XDG_STATE_HOME", ".local/state")?.join("vireo/log"),
        ))
    }

    /// Persistent domain definitions.
    pub fn domains_dir(&self) -> PathBuf {
        self.config_dir.join("domains")
    }
    /// Symlinks to the definitions of domains started with the daemon.
    pub fn autostart_dir(&self) -> PathBuf {
        self.domains_dir().join("autostart")
    }
    /// Storage pool definitions (crate vireo-storage).
    pub fn storage_dir(&self) -> PathBuf {
        self.config_dir.join("storage")
    }
    /// The default storage pool's directory.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    /// Runtime directories of running domains (`vm/NAME/`).
    pub fn vm_run_dir(&self) -> PathBuf {
        self.run_dir.join("vm")
    }
    /// The daemon's pid file, locked while it runs.
    pub fn pidfile(&self) -> PathBuf {
        self.run_dir.join("vireod.pid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_print() {
        assert_eq!("vireo:///system".parse(), Ok(ConnectUri::system()));
        assert_eq!("vireo:///session/".parse(), Ok(ConnectUri::session()));
        let u: ConnectUri = "vireo:///system?root=/tmp/a%20b".parse().unwrap();
        assert_eq!(u.root.as_deref(), Some(Path::new("/tmp/a b")));
        assert_eq!(u.to_string(), "vireo:///system?root=/tmp/a%20b");
        assert_eq!(u.to_string().parse(), Ok(u.clone()));
        let l = u.layout().unwrap();
        assert_eq!(l.socket, Path::new("/tmp/a b/run/vireo/vireod.sock"));
        assert_eq!(l.domains_dir(), Path::new("/tmp/a b/etc/vireo/domains"));
        let s: ConnectUri = "vireo:///session?socket=/x.sock".parse().unwrap();
        assert_eq!(s.layout().unwrap().socket, Path::new("/x.sock"));
    }

    #[test]
    fn bad_uris_are_named() {
        for bad in [
            "qemu:///system",
            "vireo:///other",
            "vireo://host/system",
            "",
        ] {
            let e = bad.parse::<ConnectUri>().unwrap_err();
            assert!(matches!(e, UriError::Unsupported(_)), "{bad}: {e}");
        }
        let e = "vireo:///system?foo=1".parse::<ConnectUri>().unwrap_err();
        assert!(e.to_string().contains("unknown parameter 'foo'"), "{e}");
        assert!("vireo:///system?root=".parse::<ConnectUri>().is_err());
        assert!("vireo:///system?root=%zz".parse::<ConnectUri>().is_err());
    }

    #[test]
    fn system_layout_is_the_fhs_one() {
        let l = ConnectUri::system().layout().unwrap();
        assert_eq!(l.config_dir, Path::new("/etc/vireo"));
        assert_eq!(l.state_dir, Path::new("/var/lib/vireo"));
        assert_eq!(l.run_dir, Path::new("/run/vireo"));
        assert_eq!(l.log_dir, Path::new("/var/log/vireo"));
        assert_eq!(l.socket, Path::new("/run/vireo/vireod.sock"));
    }
}
