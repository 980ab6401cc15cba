//! The daemon's side of the VMM control API (docs/vmm-api.md): newline-delimited JSON on
//! the VMM's `--api-socket`, QMP-like. Commands use a short connection each; the
//! supervisor keeps one more connection open to receive the VMM's events.

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use vireo_api::framing;

/// Bound on one message from a VMM.
const MAX_VMM_MESSAGE: usize = 4 << 20;
/// How long a command may take before the VMM counts as unresponsive.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot reach the VMM's control socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("VMM control connection: {0}")]
    Io(#[from] io::Error),
    #[error("the VMM refused {command}: {desc}")]
    Refused { command: String, desc: String },
    #[error("unexpected reply from the VMM: {0}")]
    Protocol(String),
}

/// A command channel to one VMM.
#[derive(Debug, Clone)]
pub struct VmmClient {
    socket: PathBuf,
}

/// An asynchronous event from the VMM.
#[derive(Debug, Clone, Deserialize)]
pub struct VmmEvent {
    pub event: String,
    #[serde(default)]
    pub data: Value,
}

/// `--exit-file`: written by the VMM just before it exits.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExitInfo {
    #[serde(default)]
    pub status: i32,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub detail: String,
}

impl ExitInfo {
    pub fn read(path: &Path) -> Option<Self> {
        let text = crate::fsutil::read_bounded(path, 64 << 10).ok()?;
        serde_json::from_str(&text).ok()
    }
}

impl VmmClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    pub fn connect(&self) -> Result<UnixStream, VmmError> {
        UnixStream::connect(&self.socket).map_err(|source| VmmError::Connect {
            path: self.socket.clone(),
            source,
        })
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&self, command: &str, arguments: Value) -> Result<Value, VmmError> {
        let stream = self.connect()?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        let mut request = serde_json::to_vec(&json!({
            "execute": command,
            "arguments": arguments,
            "id": 1,
        }))
        .map_err(|e| VmmError::Protocol(e.to_string()))?;
        request.push(b'\n');
        (&stream).write_all(&request)?;
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            if !framing::read_line(&mut reader, &mut line, MAX_VMM_MESSAGE)? {
                return Err(VmmError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the VMM closed the connection before answering {command}"),
                )));
            }
            let msg: Value =
                serde_json::from_slice(&line).map_err(|e| VmmError::Protocol(e.to_string()))?;
            // Events and greetings may come first.
            if msg.get("id") != Some(&json!(1)) {
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let desc = err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(VmmError::Refused {
                    command: command.into(),
                    desc: desc.into(),
                });
            }
            return Err(VmmError::Protocol(format!(
                "reply to {command} has neither return nor error"
            )));
        }
    }
}

/// Parses a line of the event connection; `None` for replies and unknown messages.
pub fn parse_event(line: &[u8]) -> Option<VmmEvent> {
    let v: Value = serde_json::from_slice(line).ok()?;
    v.get("event")?;
    serde_json::from_value(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// A scripted peer speaking the protocol, to test the client side.
    fn fake_vmm(dir: &Path, replies: Vec<&'static str>) -> PathBuf {
        let path = dir.join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for reply in replies {
                let (s, _) = listener.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let req: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(req["id"], 1);
                (&s).write_all(reply.as_bytes()).unwrap();
            }
        });
        path
    }

    #[test]
    fn replies_events_and_errors() {
        let dir = std::env::temp_dir().join(format!("vireod-vmmc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = fake_vmm(
            &dir,
            vec![
                "{\"event\":\"RESUME\",\"data\":{}}\n{\"return\":{\"status\":\"running\"},\"id\":1}\n",
                "{\"error\":{\"class\":\"GenericError\",\"desc\":\"not paused\"},\"id\":1}\n",
                "",
            ],
        );
        let c = VmmClient::new(&path);
        let r = c.execute("query-status", json!({})).unwrap();
        assert_eq!(r["status"], "running");
        let e = c.execute("resume", json!({})).unwrap_err();
        assert_eq!(e.to_string(), "the VMM refused resume: not paused");
        let e = c.execute("quit", json!({})).unwrap_err();
        assert!(e.to_string().contains("closed the connection"), "{e}");
        let ev = parse_event(br#"{"event":"SHUTDOWN","data":{"reason":"poweroff"},"timestamp":{"seconds":1,"microseconds":2}}"#).unwrap();
        assert_eq!(ev.event, "SHUTDOWN");
        assert_eq!(ev.data["reason"], "poweroff");
        assert!(parse_event(br#"{"return":{},"id":1}"#).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
