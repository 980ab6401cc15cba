//! A blocking client for vireod's API socket.

use std::collections::VecDeque;
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::framing::{self, MAX_MESSAGE};
use crate::protocol::{Method, Notification, Request, Response, RpcError, JSONRPC_VERSION};
use crate::uri::{ConnectUri, UriError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Uri(#[from] UriError),
    #[error("cannot connect to vireod at {}: {source}{hint}", socket.display())]
    Connect {
        socket: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    /// The daemon answered with an error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("connection to vireod lost: {0}")]
    Io(#[from] io::Error),
    #[error("unexpected message from vireod: {0}")]
    Protocol(String),
}

/// One connection to vireod.
pub struct Client {
    uri: ConnectUri,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    /// Notifications that arrived while waiting for a reply.
    notifications: VecDeque<Notification>,
    line: Vec<u8>,
}

impl Client {
    /// Connects to the daemon serving `uri`.
    pub fn connect(uri: &ConnectUri) -> Result<Self, ClientError> {
        let socket = uri.layout()?.socket;
        let stream = UnixStream::connect(&socket).map_err(|source| {
            let hint = match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    " (is vireod running?)"
                }
                io::ErrorKind::PermissionDenied => {
                    " (the socket's permissions allow only its owner: use vireo:///session as a user)"
                }
                _ => "",
            };
            ClientError::Connect {
                socket: socket.clone(),
                source,
                hint,
            }
        })?;
        let writer = stream.try_clone()?;
        Ok(Self {
            uri: uri.clone(),
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            notifications: VecDeque::new(),
            line: Vec::new(),
        })
    }

    pub fn uri(&self) -> &ConnectUri {
        &self.uri
    }

    /// Calls `M` and waits for its result.
    pub fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, ClientError> {
        let value = self.call_raw(M::NAME, serde_json::to_value(params).map_err(protocol)?)?;
        serde_json::from_value(value)
            .map_err(|e| ClientError::Protocol(format!("bad result of {}: {e}", M::NAME)))
    }

    /// Calls a method by name with JSON params.
    pub fn call_raw(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            jsonrpc: JSONRPC_VERSION.into(),
            id: Some(Value::from(id)),
            method: method.into(),
            params,
        };
        let mut line = serde_json::to_vec(&req).map_err(protocol)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        loop {
            let msg = self.read_message()?;
            if msg.get("id").is_some() && msg.get("method").is_none() {
                let resp: Response = serde_json::from_value(msg).map_err(protocol)?;
                if resp.id != id {
                    return Err(ClientError::Protocol(format!(
                        "reply for request {} while waiting for {id}",
                        resp.id
                    )));
                }
                return match (resp.result, resp.error) {
                    (_, Some(e)) => Err(ClientError::Rpc(e)),
                    (Some(r), None) => Ok(r),
                    (None, None) => Err(ClientError::Protocol("reply without result".into())),
                };
            }
            self.notifications
                .push_back(serde_json::from_value(msg).map_err(protocol)?);
        }
    }

    /// The next notification (event), waiting at most `timeout` (forever with `None`);
    /// `Ok(None)` on timeout.
    pub fn next_notification(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Notification>, ClientError> {
        if let Some(n) = self.notifications.pop_front() {
            return Ok(Some(n));
        }
        self.reader.get_ref().set_read_timeout(timeout)?;
        let msg = self.read_message();
        self.reader.get_ref().set_read_timeout(None)?;
        match msg {
            Ok(m) => Ok(Some(serde_json::from_value(m).map_err(protocol)?)),
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn read_message(&mut self) -> Result<Value, ClientError> {
        // A partial line left by a timed-out read is continued, not dropped.
        if !framing::read_line_into(&mut self.reader, &mut self.line, MAX_MESSAGE)? {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "vireod closed the connection",
            )));
        }
        let msg = serde_json::from_slice(&self.line).map_err(protocol);
        self.line.clear();
        msg
    }
}

fn protocol(e: serde_json::Error) -> ClientError {
    ClientError::Protocol(e.to_string())
}
