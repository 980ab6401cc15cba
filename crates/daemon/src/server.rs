//! The API socket: a thread per connection reading newline-delimited JSON-RPC requests
//! and answering each in order; subscribed connections also get event notifications,
//! written by a forwarder thread so a slow client never blocks the daemon. Streaming calls
//! (`vol.upload`, `vol.download`) use the connection's bytes between their responses.

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use vireo_api::framing::{self, MAX_MESSAGE};
use vireo_api::protocol::Response;
use vireo_api::{ErrorKind, RpcError};

use crate::events::SUBSCRIBER_QUEUE;
use crate::state::Daemon;

/// One client connection.
pub struct Connection {
    pub writer: Arc<Mutex<UnixStream>>,
    subscription: Option<u64>,
    /// Set by a handler when the connection is out of step (a broken stream): it is
    /// closed after the response is written.
    pub close: bool,
}

impl Connection {
    /// Starts forwarding events matching the filter to this connection.
    pub fn subscribe(&mut self, d: &Daemon, domain: Option<String>, events: Vec<String>) {
        if let Some(old) = self.subscription.take() {
            d.events.unsubscribe(old);
        }
        let (tx, rx) = sync_channel::<Arc<str>>(SUBSCRIBER_QUEUE);
        self.subscription = Some(d.events.subscribe(domain, events, tx));
        let writer = self.writer.clone();
        let _ = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                // Ends when the bus drops the sender (unsubscribe) or the client is gone.
                while let Ok(line) = rx.recv() {
                    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                    if w.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
            });
    }
}

fn write_response(writer: &Mutex<UnixStream>, resp: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).unwrap_or_default();
    line.push(b'\n');
    writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .write_all(&line)
}

fn handle(d: Arc<Daemon>, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    // A client that stops reading must not hold a thread forever.
    let _ = write_half.set_write_timeout(Some(Duration::from_secs(30)));
    let mut conn = Connection {
        writer: Arc::new(Mutex::new(write_half)),
        subscription: None,
        close: false,
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        match framing::read_line(&mut reader, &mut line, MAX_MESSAGE) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let err = RpcError::new(ErrorKind::InvalidRequest, e.to_string());
                    let _ = write_response(&conn.writer, &Response::err(Value::Null, err));
                }
                break;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(resp) = crate::api::handle_line(&d, &mut conn, &mut reader, &line) {
            if write_response(&conn.writer, &resp).is_err() {
                break;
            }
        }
        if conn.close {
            break;
        }
    }
    if let Some(id) = conn.subscription {
        d.events.unsubscribe(id);
    }
}

/// Accepts connections forever.
pub fn serve(d: Arc<Daemon>, listener: UnixListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let d = d.clone();
                if let Err(e) = std::thread::Builder::new()
                    .name("client".into())
                    .spawn(move || handle(d, stream))
                {
                    log::error!("cannot start a client thread: {e}");
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                log::error!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
