//! A blocking client for vireod's API socket.

use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::framing::{self, MAX_MESSAGE};
use crate::protocol::{Method, Notification, Request, Response, RpcError, JSONRPC_VERSION};
use crate::stream;
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
    /// A local file of a transfer (`vol-upload`, `vol-download`) failed.
    #[error("{0}")]
    Transfer(io::Error),
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
        decode::<M>(value)
    }

    /// Calls a method by name with JSON params.
    pub fn call_raw(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.send_request(method, params)?;
        self.wait_response(id)
    }

    /// Calls a streaming method that uploads: the bytes of `src` go to the daemon as
    /// frames once it accepts the stream (see [`crate::stream`]). A failure to read `src`
    /// aborts the stream and is returned as [`ClientError::Transfer`].
    pub fn call_upload<M: Method>(
        &mut self,
        params: &M::Params,
        src: &mut dyn Read,
    ) -> Result<M::Result, ClientError> {
        let id = self.send_request(M::NAME, serde_json::to_value(params).map_err(protocol)?)?;
        let first = self.wait_response(id)?;
        if !stream::is_acceptance(&first) {
            return decode::<M>(first);
        }
        let mut buf = vec![0u8; stream::MAX_FRAME];
        let mut local_error = None;
        let sent: io::Result<()> = (|| loop {
            let n = match src.read(&mut buf) {
                Ok(0) => return stream::write_end(&mut self.writer),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    local_error = Some(e);
                    return stream::write_abort(&mut self.writer);
                }
            };
            stream::write_data(&mut self.writer, &buf[..n])?;
        })();
        // The daemon answers even when it stopped writing part-way; a write error on the
        // socket usually means it closed the connection after answering.
        let last = self.wait_response(id);
        if let Some(e) = local_error {
            return Err(ClientError::Transfer(e));
        }
        match (last, sent) {
            (Ok(v), _) => decode::<M>(v),
            (Err(ClientError::Rpc(e)), _) => Err(ClientError::Rpc(e)),
            (Err(_), Err(e)) => Err(ClientError::Io(e)),
            (Err(e), Ok(())) => Err(e),
        }
    }

    /// Calls a streaming method that downloads: the frames the daemon sends are written
    /// to `dst`. A failure to write `dst` is returned as [`ClientError::Transfer`] (the
    /// rest of the stream is read and dropped, so the connection stays usable).
    pub fn call_download<M: Method>(
        &mut self,
        params: &M::Params,
        dst: &mut dyn Write,
    ) -> Result<M::Result, ClientError> {
        let id = self.send_request(M::NAME, serde_json::to_value(params).map_err(protocol)?)?;
        let first = self.wait_response(id)?;
        if !stream::is_acceptance(&first) {
            return decode::<M>(first);
        }
        let mut frames = stream::FrameReader::new(&mut self.reader);
        let mut buf = vec![0u8; 256 << 10];
        let mut local_error = None;
        loop {
            let n = match frames.read(&mut buf) {
                Ok(n) => n,
                // The daemon gave up part-way (e.g. a read error): its final response says why.
                Err(e) if frames.finished() => {
                    return match self.wait_response(id) {
                        Ok(_) => Err(ClientError::Io(e)),
                        Err(rpc) => Err(rpc),
                    };
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                break;
            }
            if let Err(e) = dst.write_all(&buf[..n]) {
                local_error = Some(e);
                frames.drain()?;
                break;
            }
        }
        if let Some(e) = local_error.or_else(|| dst.flush().err()) {
            // Still read the final response so that the connection stays in step.
            let _ = self.wait_response(id);
            return Err(ClientError::Transfer(e));
        }
        decode::<M>(self.wait_response(id)?)
    }

    fn send_request(&mut self, method: &str, params: Value) -> Result<u64, ClientError> {
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
        Ok(id)
    }

    /// Reads until the response to request `id` (queueing notifications).
    fn wait_response(&mut self, id: u64) -> Result<Value, ClientError> {
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

fn decode<M: Method>(value: Value) -> Result<M::Result, ClientError> {
    serde_json::from_value(value)
        .map_err(|e| ClientError::Protocol(format!("bad result of {}: {e}", M::NAME)))
}

fn protocol(e: serde_json::Error) -> ClientError {
    ClientError::Protocol(e.to_string())
}
