//! The control API's wire protocol (QMP-like, newline-delimited JSON; docs/vmm-api.md):
//! parsing requests, encoding replies and events. No I/O here — the server side lives in
//! `controller.rs` — so every parsing rule is unit-tested.
//!
//! ```text
//! → {"execute":"query-status","id":1}
//! ← {"return":{"status":"running","boots":1,"pid":4242},"id":1}
//! ← {"event":"STOP","data":{},"timestamp":{"seconds":1700000000,"microseconds":123}}
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// Longest request line accepted (without its newline). Longer lines get an error reply
/// and are skipped up to their newline; the connection stays usable.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The commands the VMM understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    QueryStatus,
    QueryConfig,
    QueryStats,
    /// One entry per vCPU: index, host thread id, state; while paused also its
    /// instruction pointer (read on the parked vCPU's own thread).
    QueryCpusFast,
    Pause,
    Resume,
    SystemPowerdown,
    SystemReset,
    Quit,
    /// QMP's capability negotiation: accepted and ignored (there are no capabilities), so
    /// QMP-speaking tools need no special case.
    QmpCapabilities,
    /// Asks the guest to shrink to `target_bytes` of memory through the balloon (QMP's
    /// `balloon`); arguments `{"target-bytes": N}`.
    BalloonSet {
        target_bytes: u64,
    },
    /// The balloon's target and actual size and the guest's memory statistics.
    QueryBalloon,
}

impl Command {
    /// Every command with its wire name.
    pub const ALL: [(&'static str, Command); 12] = [
        ("query-status", Command::QueryStatus),
        ("query-config", Command::QueryConfig),
        ("query-stats", Command::QueryStats),
        ("query-cpus-fast", Command::QueryCpusFast),
        ("pause", Command::Pause),
        ("resume", Command::Resume),
        ("system_powerdown", Command::SystemPowerdown),
        ("system_reset", Command::SystemReset),
        ("quit", Command::Quit),
        ("qmp_capabilities", Command::QmpCapabilities),
        ("balloon-set", Command::BalloonSet { target_bytes: 0 }),
        ("query-balloon", Command::QueryBalloon),
    ];

    pub fn from_name(name: &str) -> Option<Command> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, c)| c)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, c)| std::mem::discriminant(c) == std::mem::discriminant(&self))
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub command: Command,
    /// Echoed in the reply; any JSON value.
    pub id: Option<Value>,
}

/// Error classes, as QMP names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad request or a command that failed.
    GenericError,
    /// No command of that name.
    CommandNotFound,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
        }
    }
}

/// An error reply: its class and a one-line description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub class: ErrorClass,
    pub desc: String,
}

impl ApiError {
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }
}

/// A request that could not be parsed: the error, and the request's id if it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub id: Option<Value>,
    pub error: ApiError,
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, BadRequest> {
    let bad = |id: Option<Value>, error: ApiError| BadRequest { id, error };
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| bad(None, ApiError::generic(format!("malformed JSON: {e}"))))?;
    let Value::Object(mut obj) = value else {
        return Err(bad(
            None,
            ApiError::generic("a request must be a JSON object"),
        ));
    };
    let id = obj.remove("id");
    if let Some(key) = obj.keys().find(|k| *k != "execute" && *k != "arguments") {
        return Err(bad(
            id,
            ApiError::generic(format!(
                "unexpected member '{key}' (a request has execute, arguments and id)"
            )),
        ));
    }
    let name = match obj.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad(id, ApiError::generic("'execute' must be a string"))),
        None => {
            return Err(bad(
                id,
                ApiError::generic("missing 'execute' (the command name)"),
            ))
        }
    };
    let Some(command) = Command::from_name(&name) else {
        return Err(bad(
            id,
            ApiError {
                class: ErrorClass::CommandNotFound,
                desc: format!("the command {} has not been found", clip(&name)),
            },
        ));
    };
    let arguments = match obj.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad(id, ApiError::generic("'arguments' must be an object"))),
    };
    // Unknown arguments are refused: a client that expects an argument to work must not
    // silently get the wrong behaviour.
    let no_argument =
        |arg: &str| ApiError::generic(format!("{name} takes no argument {}", clip(arg)));
    let command = match command {
        Command::BalloonSet { .. } => {
            let mut target = None;
            for (key, value) in &arguments {
                if key != "target-bytes" {
                    return Err(bad(id, no_argument(key)));
                }
                target = Some(value.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                    bad(
                        id.clone(),
                        ApiError::generic(
                            "balloon-set: target-bytes must be a positive number of bytes",
                        ),
                    )
                })?);
            }
            let Some(target_bytes) = target else {
                return Err(bad(
                    id,
                    ApiError::generic("balloon-set needs the argument 'target-bytes'"),
                ));
            };
            Command::BalloonSet { target_bytes }
        }
        other => {
            if let Some(arg) = arguments.keys().next() {
                return Err(bad(id, no_argument(arg)));
            }
            other
        }
    };
    Ok(Request { command, id })
}

/// A name from a request, shortened for an error message.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("'{}…'", &s[..i]),
        None => format!("'{s}'"),
    }
}

fn line(mut v: Map<String, Value>, id: Option<Value>) -> Vec<u8> {
    if let Some(id) = id {
        v.insert("id".into(), id);
    }
    let mut out = serde_json::to_vec(&Value::Object(v)).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `{"return": value, "id": id}` and a newline.
pub fn reply_ok(id: Option<Value>, value: Value) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("return".into(), value);
    line(m, id)
}

/// `{"error": {"class", "desc"}, "id": id}` and a newline.
pub fn reply_error(id: Option<Value>, error: &ApiError) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(
        "error".into(),
        json!({"class": error.class.as_str(), "desc": error.desc}),
    );
    line(m, id)
}

/// The asynchronous events sent to every client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The vCPUs run again after a pause.
    Resume,
    /// The vCPUs are paused.
    Stop,
    /// The VM was reset and is booting again; `guest`: the guest asked for it (else a
    /// `system_reset`).
    Reset { guest: bool },
    /// The ACPI power button was pressed (`system_powerdown`).
    Powerdown,
    /// The VM ended; the VMM exits with `status` right after.
    Shutdown {
        reason: ShutdownReason,
        detail: String,
        status: i32,
    },
    /// The guest wrote the boot-complete marker (123) to port 0x80 during boot `boot`.
    BootComplete { boot: u32 },
    /// Reserved for the pvpanic device.
    GuestPanicked,
}

/// Why the VM ended (the SHUTDOWN event and the exit file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest reset with `no_reboot` set (or `system_reset` then).
    Reset,
    /// The guest failed: triple fault, KVM internal error, failed entry, crash.
    GuestFailure,
    /// The `quit` command.
    Quit,
    /// A stop signal (SIGTERM, SIGINT; SIGHUP without an API socket).
    Signal,
    /// The guest kernel reported a panic (pvpanic).
    GuestPanicked,
    /// The VMM could not start or run the VM (bad configuration, KVM error, …).
    Error,
}

impl ShutdownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownReason::Poweroff => "poweroff",
            ShutdownReason::Reset => "reset",
            ShutdownReason::GuestFailure => "guest-failure",
            ShutdownReason::Quit => "quit",
            ShutdownReason::Signal => "signal",
            ShutdownReason::GuestPanicked => "guest-panicked",
            ShutdownReason::Error => "error",
        }
    }
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Resume => "RESUME",
            Event::Stop => "STOP",
            Event::Reset { .. } => "RESET",
            Event::Powerdown => "POWERDOWN",
            Event::Shutdown { .. } => "SHUTDOWN",
            Event::BootComplete { .. } => "BOOT_COMPLETE",
            Event::GuestPanicked => "GUEST_PANICKED",
        }
    }

    pub fn data(&self) -> Value {
        match self {
            Event::Resume | Event::Stop | Event::Powerdown | Event::GuestPanicked => json!({}),
            Event::Reset { guest } => json!({"guest": guest}),
            Event::Shutdown {
                reason,
                detail,
                status,
            } => json!({"reason": reason.as_str(), "detail": detail, "status": status}),
            Event::BootComplete { boot } => json!({"boot": boot}),
        }
    }

    /// The event line, stamped with the wall-clock time `now`.
    pub fn encode(&self, now: SystemTime) -> Vec<u8> {
        let t = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut m = Map::new();
        m.insert("event".into(), self.name().into());
        m.insert("data".into(), self.data());
        m.insert(
            "timestamp".into(),
            json!({"seconds": t.as_secs(), "microseconds": t.subsec_micros()}),
        );
        line(m, None)
    }
}

/// One item out of a [`LineReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its newline (and without a trailing `\r`).
    Text(Vec<u8>),
    /// A line longer than the limit; its bytes were dropped.
    TooLong,
}

/// Splits a byte stream into lines of bounded length.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    max: usize,
    /// Inside an over-long line: drop bytes until its newline.
    skipping: bool,
}

impl LineReader {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feeds `bytes`, appending every line they complete to `out`. An over-long line is
    /// reported once, as soon as it passes the limit.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Line>) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let (chunk, rest) = match nl {
                Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
                None => (bytes, None),
            };
            if !self.skipping {
                if self.buf.len() + chunk.len() > self.max {
                    self.buf.clear();
                    self.skipping = true;
                    out.push(Line::TooLong);
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            match rest {
                Some(r) => {
                    if !std::mem::take(&mut self.skipping) {
                        let mut l = std::mem::take(&mut self.buf);
                        if l.last() == Some(&b'\r') {
                            l.pop();
                        }
                        out.push(Line::Text(l));
                    }
                    bytes = r;
                }
                None => break,
            }
        }
    }

    /// Bytes of an unfinished line held so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, BadRequest> {
        parse_request(s.as_bytes())
    }

    fn err(s: &str) -> (Option<Value>, ErrorClass, String) {
        let e = parse(s).unwrap_err();
        (e.id, e.error.class, e.error.desc)
    }

    #[test]
    fn parses_every_command_with_any_id() {
        for (name, cmd) in Command::ALL {
            if matches!(cmd, Command::BalloonSet { .. }) {
                continue; // needs an argument, see balloon_set_takes_a_target
            }
            let r = parse(&format!(r#"{{"execute":"{name}"}}"#)).unwrap();
            assert_eq!(
                r,
                Request {
                    command: cmd,
                    id: None
                }
            );
            assert_eq!(cmd.name(), name);
        }
        let r = parse(r#"{"id": {"seq": [1, "x"]}, "execute": "pause", "arguments": {}}"#).unwrap();
        assert_eq!(r.command, Command::Pause);
        assert_eq!(r.id, Some(json!({"seq": [1, "x"]})));
        let r = parse(r#"{"execute":"quit","id":7,"arguments":null}"#).unwrap();
        assert_eq!(r.id, Some(json!(7)));
    }

    #[test]
    fn balloon_set_takes_a_target() {
        let r =
            parse(r#"{"execute":"balloon-set","arguments":{"target-bytes":268435456}}"#).unwrap();
        assert_eq!(
            r.command,
            Command::BalloonSet {
                target_bytes: 256 << 20
            }
        );
        assert_eq!(r.command.name(), "balloon-set");
        for (args, want) in [
            ("{}", "needs the argument 'target-bytes'"),
            (r#"{"target-bytes":0}"#, "positive number of bytes"),
            (r#"{"target-bytes":-5}"#, "positive number of bytes"),
            (r#"{"target-bytes":"1G"}"#, "positive number of bytes"),
            (
                r#"{"target-bytes":1,"force":1}"#,
                "takes no argument 'force'",
            ),
        ] {
            let (id, _, desc) = err(&format!(
                r#"{{"execute":"balloon-set","id":9,"arguments":{args}}}"#
            ));
            assert_eq!(id, Some(json!(9)));
            assert!(desc.contains(want), "{args}: {desc}");
        }
    }

    #[test]
    fn malformed_requests_get_a_clear_error_and_keep_their_id() {
        let (id, class, desc) = err("{\"execute\": ");
        assert_eq!((id, class), (None, ErrorClass::GenericError));
        assert!(desc.starts_with("malformed JSON: "), "{desc}");
        let (_, _, desc) = err("not json");
        assert!(desc.starts_with("malformed JSON"), "{desc}");
        let (_, _, desc) = err("[1,2]");
        assert_eq!(desc, "a request must be a JSON object");
        let (id, _, desc) = err(r#"{"id":3}"#);
        assert_eq!(id, Some(json!(3)));
        assert_eq!(desc, "missing 'execute' (the command name)");
        let (id, _, desc) = err(r#"{"id":"a","execute":5}"#);
        assert_eq!(id, Some(json!("a")));
        assert_eq!(desc, "'execute' must be a string");
        let (id, class, desc) = err(r#"{"execute":"reboot-now","id":4}"#);
        assert_eq!(id, Some(json!(4)));
        assert_eq!(class, ErrorClass::CommandNotFound);
        assert_eq!(desc, "the command 'reboot-now' has not been found");
        let (_, _, desc) = err(r#"{"execute":"pause","arguments":[1]}"#);
        assert_eq!(desc, "'arguments' must be an object");
        let (_, _, desc) = err(r#"{"execute":"pause","arguments":{"force":true}}"#);
        assert_eq!(desc, "pause takes no argument 'force'");
        let (_, _, desc) = err(r#"{"execute":"pause","exec":1}"#);
        assert!(desc.starts_with("unexpected member 'exec'"), "{desc}");
        let long = "x".repeat(500);
        let (_, _, desc) = err(&format!(r#"{{"execute":"{long}"}}"#));
        assert!(desc.len() < 150, "{desc}");
    }

    #[test]
    fn replies_and_events_are_single_json_lines() {
        let r = reply_ok(Some(json!(1)), json!({"status": "running"}));
        assert_eq!(r.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(v, json!({"return": {"status": "running"}, "id": 1}));
        let r = reply_ok(None, json!({}));
        assert_eq!(r, b"{\"return\":{}}\n");
        let e = reply_error(None, &ApiError::generic("bad\nthing"));
        assert_eq!(e.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["error"]["class"], "GenericError");
        assert_eq!(v["error"]["desc"], "bad\nthing");

        let t = UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        let ev = Event::Shutdown {
            reason: ShutdownReason::Poweroff,
            detail: "the guest powered off".into(),
            status: 0,
        }
        .encode(t);
        let v: Value = serde_json::from_slice(&ev).unwrap();
        assert_eq!(
            v,
            json!({"event": "SHUTDOWN",
                   "data": {"reason": "poweroff", "detail": "the guest powered off", "status": 0},
                   "timestamp": {"seconds": 1_700_000_000u64, "microseconds": 123_456}})
        );
        let v: Value = serde_json::from_slice(&Event::Reset { guest: true }.encode(t)).unwrap();
        assert_eq!(v["event"], "RESET");
        assert_eq!(v["data"], json!({"guest": true}));
        assert_eq!(Event::BootComplete { boot: 2 }.data(), json!({"boot": 2}));
        assert_eq!(Event::Stop.name(), "STOP");
    }

    #[test]
    fn line_reader_splits_and_bounds_lines() {
        let mut r = LineReader::new(8);
        let mut out = Vec::new();
        r.feed(b"ab", &mut out);
        assert!(out.is_empty());
        assert_eq!(r.buffered(), 2);
        r.feed(b"c\r\nde\n\n", &mut out);
        assert_eq!(
            out,
            vec![
                Line::Text(b"abc".to_vec()),
                Line::Text(b"de".to_vec()),
                Line::Text(vec![])
            ]
        );
        out.clear();
        // An over-long line is reported once, even when it arrives in pieces, and the
        // line after it is read normally.
        r.feed(b"12345678", &mut out);
        assert!(out.is_empty(), "exactly the limit is fine so far");
        r.feed(b"9", &mut out);
        assert_eq!(out, vec![Line::TooLong]);
        r.feed(&[b'z'; 100], &mut out);
        r.feed(b"zz\nok\n", &mut out);
        assert_eq!(out, vec![Line::TooLong, Line::Text(b"ok".to_vec())]);
        assert_eq!(r.buffered(), 0);
        out.clear();
        r.feed(b"12345678\n", &mut out);
        assert_eq!(out, vec![Line::Text(b"12345678".to_vec())]);
    }
}
