//! The vsock device's worker: moves packets between the guest's queues and host unix
//! sockets, one stream per connection.
//!
//! A connection is keyed by (host port, guest port). Each has two bounded buffers: bytes
//! from the host socket waiting for guest receive buffers and credit
//! ([`STAGING_SIZE`]), and bytes from the guest waiting for the host socket to take them
//! ([`BUF_ALLOC`], which is also the receive buffer advertised to the guest, so a guest
//! that respects its credit never overflows it; one that does not gets a reset).
//!
//! Credit (virtio 1.x §5.10.6.3): the guest may have at most `buf_alloc` bytes in flight
//! towards us beyond what we forwarded (`fwd_cnt`), and vice versa; every packet carries
//! the sender's `buf_alloc` and `fwd_cnt`, and a CREDIT_UPDATE is sent when enough was
//! forwarded since the guest last heard.
//!
//! Packets the device sends (control packets and data) wait for receive buffers; when
//! too many control packets are waiting, the transmit queue is left alone until the guest
//! gives receive buffers, so a guest cannot make the device queue without bound.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::VsockBackend;
use super::packet::*;
use crate::virtio::descriptors::{add_used, needs_notification, pop_chain, Chain, ChainError};
use crate::virtio::worker::Poller;
use crate::virtio::{GuestMemory, VirtioInterrupt};

/// Receive buffer advertised to the guest per connection (and the bound on bytes from the
/// guest held for a slow host socket).
pub const BUF_ALLOC: u32 = 256 << 10;
/// Bytes read from a host socket ahead of the guest taking them, per connection.
pub const STAGING_SIZE: usize = 64 << 10;
/// Payload of one packet at most, either way.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Connections (including host clients that have not said CONNECT yet) at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// Control packets waiting for receive buffers beyond which the transmit queue waits.
pub const MAX_CONTROL: usize = 1024;
/// How long a host client may take to say `CONNECT <port>`, and the guest to answer the
/// REQUEST that follows, before the connection is given up (the client's socket closed,
/// the guest reset).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const MAX_DESCRIPTORS: usize = 64;

const RX: u16 = 0;
const TX: u16 = 1;

pub const TOKEN_STOP: u64 = 0;
pub const TOKEN_RX: u64 = 1;
pub const TOKEN_TX: u64 = 2;
pub const TOKEN_EVENT: u64 = 3;
const TOKEN_LISTENER: u64 = 4;
const FIRST_TOKEN: u64 = 16;

/// (host port, guest port).
type Key = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    token: u64,
    stream: UnixStream,
    state: State,
    /// Host → guest bytes not yet in a guest buffer.
    to_guest: VecDeque<u8>,
    /// Guest → host bytes the socket has not taken yet.
    to_host: VecDeque<u8>,
    /// Bytes sent to the guest; with the guest's buf_alloc and fwd_cnt, its credit.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes from the guest written to the host socket, and what the guest last heard.
    fwd_cnt: u32,
    fwd_reported: u32,
    credit_update_queued: bool,
    credit_request_sent: bool,
    /// The host side will send nothing more (EOF or hang-up) / we told the guest so.
    host_eof: bool,
    shutdown_sent: bool,
    /// The guest said it will send / receive nothing more.
    peer_no_send: bool,
    peer_no_recv: bool,
    host_write_shut: bool,
    /// In the round-robin list of connections with data for the guest.
    queued: bool,
    /// Still registered with the poller (a hung-up socket is not, see `on_conn_event`).
    registered: bool,
    interest: EventSet,
    /// When the REQUEST of a host-initiated connection was queued.
    since: Instant,
}

impl Conn {
    fn new(token: u64, stream: UnixStream, state: State) -> Self {
        Self {
            token,
            stream,
            state,
            to_guest: VecDeque::new(),
            to_host: VecDeque::new(),
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            fwd_cnt: 0,
            fwd_reported: 0,
            credit_update_queued: false,
            credit_request_sent: false,
            host_eof: false,
            shutdown_sent: false,
            peer_no_send: false,
            peer_no_recv: false,
            host_write_shut: false,
            queued: false,
            registered: true,
            interest: EventSet::empty(),
            since: Instant::now(),
        }
    }

    /// Bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && !self.to_guest.is_empty()
            && self.peer_credit() > 0
            && !self.peer_no_recv
    }

    fn wanted_interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.state == State::Established && !self.host_eof && self.to_guest.len() < STAGING_SIZE
        {
            e |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }
}

/// A host client that has connected to the vsock socket but not yet said
/// `CONNECT <port>`.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// A packet for the guest that waits for a receive buffer. Credit fields are filled in
/// when it is written, from the connection if it still exists.
struct Control {
    hdr: Header,
    key: Option<Key>,
}

/// Why a connection ends with a reset.
#[derive(Debug)]
enum Reset {
    /// Tell the guest.
    Rst,
    /// The guest already knows (it sent the RST).
    Quiet,
}

/// The vsock worker's state.
pub struct VsockMuxer {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    backend: Arc<VsockBackend>,
    poller: Poller,
    fixed: Vec<(EventFd, u64)>,
    conns: HashMap<Key, Conn>,
    by_token: HashMap<u64, Key>,
    pending: HashMap<u64, Pending>,
    next_token: u64,
    next_local_port: u32,
    control: VecDeque<Control>,
    ready: VecDeque<Key>,
    /// Set when the driver broke the queue protocol: the device waits for a reset.
    pub broken: bool,
    /// Packets from the guest dropped as malformed (header, cid, length).
    pub dropped_packets: u64,
    connect_timeout: Duration,
}

impl VsockMuxer {
    pub fn new(
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<dyn VirtioInterrupt>,
        backend: Arc<VsockBackend>,
    ) -> io::Result<Self> {
        let poller = Poller::new()?;
        poller.add(backend.listener(), EventSet::IN, TOKEN_LISTENER)?;
        Ok(Self {
            mem,
            rx,
            tx,
            interrupt,
            backend,
            poller,
            fixed: Vec::new(),
            conns: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            next_token: FIRST_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            broken: false,
            dropped_packets: 0,
            connect_timeout: CONNECT_TIMEOUT,
        })
    }

    /// Adds an eventfd (stop, queue kicks) under one of the fixed tokens; kicks are
    /// read (cleared) before the queues are served, so none is lost.
    pub fn watch(&mut self, fd: EventFd, token: u64) -> io::Result<()> {
        self.poller.add(&fd, EventSet::IN, token)?;
        self.fixed.push((fd, token));
        Ok(())
    }

    /// Changes [`CONNECT_TIMEOUT`] (tests).
    pub fn set_connect_timeout(&mut self, t: Duration) {
        self.connect_timeout = t;
    }

    /// How long the worker may sleep: until the oldest unfinished connection attempt
    /// expires, or for ever when there is none.
    pub fn next_timeout_ms(&self) -> i32 {
        let oldest = self
            .pending
            .values()
            .map(|p| p.since)
            .chain(
                self.conns
                    .values()
                    .filter(|c| c.state == State::Connecting)
                    .map(|c| c.since),
            )
            .min();
        match oldest {
            None => -1,
            Some(t) => {
                let left = self.connect_timeout.saturating_sub(t.elapsed());
                // Rounded up, so that a wake-up finds it expired.
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        }
    }

    /// Gives up host clients that did not say CONNECT in time and host-initiated
    /// connections the guest did not answer.
    fn expire(&mut self) {
        let limit = self.connect_timeout;
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= limit)
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            self.drop_pending(t);
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Connecting && c.since.elapsed() >= limit)
            .map(|(&k, _)| k)
            .collect();
        for k in late {
            log::debug!(
                "virtio-vsock: guest port {} did not answer; connection given up",
                k.1
            );
            self.reset(k, Reset::Rst);
        }
    }

    /// Connections open now (for tests and statistics).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Waits up to `timeout_ms` for events and handles them; returns whether the stop
    /// eventfd fired.
    pub fn poll_once(&mut self, timeout_ms: i32) -> io::Result<bool> {
        let events = self.poller.wait(timeout_ms)?;
        self.expire();
        for (token, set) in events {
            match token {
                TOKEN_STOP => return Ok(true),
                TOKEN_LISTENER => self.accept_clients(),
                t if t < FIRST_TOKEN => {
                    if let Some((fd, _)) = self.fixed.iter().find(|(_, f)| *f == t) {
                        let _ = fd.read();
                    }
                }
                t if self.pending.contains_key(&t) => self.on_pending(t),
                t => {
                    if let Some(&key) = self.by_token.get(&t) {
                        self.on_conn_event(key, set);
                    }
                }
            }
        }
        self.process();
        Ok(false)
    }

    /// Serves both queues as far as they go now.
    pub fn process(&mut self) {
        if self.broken {
            return;
        }
        let result = (|| -> Result<(), ChainError> {
            loop {
                self.process_tx()?;
                let delivered = self.deliver_rx()?;
                // Transmit waited for room among the control packets: go again if the
                // guest's receive buffers made some.
                if !(delivered && self.control.len() < MAX_CONTROL && self.tx_has_work()) {
                    return Ok(());
                }
            }
        })();
        if let Err(e) = result {
            log::warn!("virtio-vsock: {e}; the device needs a reset");
            self.broken = true;
            self.interrupt.needs_reset();
        }
    }

    fn tx_has_work(&self) -> bool {
        use virtio_queue::QueueT;
        self.tx
            .avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
            .map(|i| i.0 != self.tx.next_avail())
            .unwrap_or(false)
    }

    // ---- guest → host ----

    fn process_tx(&mut self) -> Result<(), ChainError> {
        let mut used = false;
        while self.control.len() < MAX_CONTROL {
            let chain = match pop_chain(&mut self.tx, &self.mem, MAX_DESCRIPTORS) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err((_, e)) => return Err(e),
            };
            self.on_guest_packet(&chain)?;
            add_used(&mut self.tx, &self.mem, chain.head, 0)?;
            used = true;
        }
        if used && needs_notification(&mut self.tx, &self.mem) {
            let _ = self.interrupt.notify_queue(TX);
        }
        Ok(())
    }

    fn drop_packet(&mut self, why: &str) {
        self.dropped_packets += 1;
        log::debug!("virtio-vsock: packet dropped: {why}");
    }

    /// Handles one packet from the guest; only a failure to read guest memory is an error
    /// (a malformed packet is dropped or answered with a reset).
    fn on_guest_packet(&mut self, chain: &Chain) -> Result<(), ChainError> {
        if !chain.writable.is_empty() {
            self.drop_packet("device-writable buffer in a transmit chain");
            return Ok(());
        }
        let bytes = chain.read(&self.mem, HEADER_SIZE + MAX_PAYLOAD)?;
        let Some(hdr) = Header::parse(&bytes) else {
            self.drop_packet("shorter than a header");
            return Ok(());
        };
        if hdr.src_cid != self.backend.cid() {
            // Spoofed: nothing to answer to.
            self.drop_packet("source cid is not the guest's");
            return Ok(());
        }
        let payload_len = hdr.len as usize;
        let bad_len = payload_len > MAX_PAYLOAD
            || payload_len > chain.readable_len().saturating_sub(HEADER_SIZE)
            || (hdr.op != OP_RW && payload_len != 0);
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM || bad_len {
            self.drop_packet("wrong destination, type or length");
            let key = (hdr.dst_port, hdr.src_port);
            if self.conns.contains_key(&key) && hdr.dst_cid == HOST_CID {
                self.reset(key, Reset::Rst);
            } else if hdr.op != OP_RST {
                self.push_control(hdr.rst_reply(), None);
            }
            return Ok(());
        }
        let payload = &bytes[HEADER_SIZE..HEADER_SIZE + payload_len];
        let key = (hdr.dst_port, hdr.src_port);

        if hdr.op == OP_REQUEST {
            self.on_request(&hdr);
            return Ok(());
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                self.push_control(hdr.rst_reply(), None);
            }
            return Ok(());
        };
        // Every packet carries the guest's view of its receive buffer.
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        conn.credit_request_sent = false;
        if conn.can_send_data() {
            self.mark_ready(key);
        }
        let conn = self.conns.get_mut(&key).expect("connection checked above");
        match (hdr.op, conn.state) {
            (OP_RESPONSE, State::Connecting) => {
                conn.state = State::Established;
                let line = format!("OK {}\n", key.0);
                // A fresh connection's socket buffer is empty: the line fits at once.
                match conn.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => {
                        self.refresh_interest(key);
                        self.fill_from_host(key);
                    }
                    _ => self.reset(key, Reset::Rst),
                }
            }
            (OP_RST, _) => self.reset(key, Reset::Quiet),
            (OP_RW, State::Established) => {
                if conn.peer_no_send || conn.to_host.len() + payload.len() > BUF_ALLOC as usize {
                    // Data after SHUTDOWN, or beyond the credit it was given.
                    self.reset(key, Reset::Rst);
                    return Ok(());
                }
                conn.to_host.extend(payload);
                self.flush_to_host(key);
            }
            (OP_CREDIT_UPDATE, State::Established) => {}
            (OP_CREDIT_REQUEST, State::Established) => self.queue_credit_update(key),
            (OP_SHUTDOWN, State::Established) => {
                conn.peer_no_send |= hdr.flags & SHUTDOWN_SEND != 0;
                conn.peer_no_recv |= hdr.flags & SHUTDOWN_RCV != 0;
                if conn.peer_no_recv {
                    conn.to_guest.clear();
                }
                self.flush_to_host(key);
            }
            _ => self.reset(key, Reset::Rst),
        }
        Ok(())
    }

    /// A guest connects to host port `dst_port`: connect to its unix socket.
    fn on_request(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            // A second REQUEST on a live connection: the guest lost track; start over.
            self.reset(key, Reset::Rst);
            return;
        }
        if self.conns.len() + self.pending.len() >= MAX_CONNECTIONS {
            log::warn!("virtio-vsock: connection limit reached; guest request refused");
            self.push_control(hdr.rst_reply(), None);
            return;
        }
        let stream = match self.backend.connect_port(hdr.dst_port) {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "virtio-vsock: guest connection to host port {}: {e}",
                    hdr.dst_port
                );
                self.push_control(hdr.rst_reply(), None);
                return;
            }
        };
        let token = self.take_token();
        let mut conn = Conn::new(token, stream, State::Established);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        if let Err(e) = self.poller.add(&conn.stream, EventSet::empty(), token) {
            log::warn!("virtio-vsock: {e}");
            self.push_control(hdr.rst_reply(), None);
            return;
        }
        self.conns.insert(key, conn);
        self.by_token.insert(token, key);
        self.refresh_interest(key);
        let response = Header::to_guest(self.backend.cid(), key.0, key.1, OP_RESPONSE);
        self.push_control(response, Some(key));
    }

    /// Writes what the guest sent to the host socket, as far as it takes it.
    fn flush_to_host(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        while !conn.to_host.is_empty() {
            let (front, _) = conn.to_host.as_slices();
            match conn.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    conn.to_host.drain(..n);
                    conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.reset(key, Reset::Rst);
                    return;
                }
            }
        }
        if conn.fwd_cnt.wrapping_sub(conn.fwd_reported) >= BUF_ALLOC / 4 {
            self.queue_credit_update(key);
        }
        let conn = self.conns.get_mut(&key).expect("connection exists");
        if conn.to_host.is_empty() {
            if conn.peer_no_send && !conn.host_write_shut {
                conn.host_write_shut = true;
                let _ = conn.stream.shutdown(Shutdown::Write);
            }
            let done_both_ways = conn.peer_no_send && (conn.peer_no_recv || conn.shutdown_sent);
            if done_both_ways {
                self.reset(key, Reset::Rst);
                return;
            }
        }
        self.refresh_interest(key);
    }

    // ---- host → guest ----

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.backend.listener().accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.conns.len() + self.pending.len() >= MAX_CONNECTIONS {
                log::warn!("virtio-vsock: connection limit reached; host client refused");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.take_token();
            if self.poller.add(&stream, EventSet::IN, token).is_err() {
                continue;
            }
            self.pending.insert(
                token,
                Pending {
                    stream,
                    line: Vec::new(),
                    since: Instant::now(),
                },
            );
        }
    }

    /// Reads a host client's `CONNECT <port>\n`.
    fn on_pending(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_LINE];
        let n = match p
            .stream
            .read(&mut buf[..MAX_LINE - p.line.len().min(MAX_LINE - 1)])
        {
            Ok(0) => return self.drop_pending(token),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return self.drop_pending(token),
        };
        p.line.extend_from_slice(&buf[..n]);
        let Some(nl) = p.line.iter().position(|&b| b == b'\n') else {
            if p.line.len() >= MAX_LINE {
                self.drop_pending(token);
            }
            return;
        };
        let port = std::str::from_utf8(&p.line[..nl])
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|port| port.trim().parse::<u32>().ok());
        let Some(port) = port else {
            return self.drop_pending(token);
        };
        let p = self.pending.remove(&token).expect("pending client");
        let local = self.take_local_port(port);
        let key = (local, port);
        let mut conn = Conn::new(token, p.stream, State::Connecting);
        conn.interest = EventSet::IN; // as registered while pending
                                      // Bytes the client sent after the line go to the guest once it accepts.
        conn.to_guest.extend(&p.line[nl + 1..]);
        self.conns.insert(key, conn);
        self.by_token.insert(token, key);
        self.refresh_interest(key);
        let request = Header::to_guest(self.backend.cid(), local, port, OP_REQUEST);
        self.push_control(request, Some(key));
    }

    fn drop_pending(&mut self, token: u64) {
        if let Some(p) = self.pending.remove(&token) {
            self.poller.remove(&p.stream);
        }
    }

    fn on_conn_event(&mut self, key: Key, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::ERROR) {
            return self.reset(key, Reset::Rst);
        }
        if conn.state == State::Connecting {
            // The client went away before the guest answered.
            if set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP) {
                self.reset(key, Reset::Rst);
            }
            return;
        }
        if set.contains(EventSet::HANG_UP) {
            // The client closed both ways: it cannot be waited for (epoll would report the
            // hang-up forever); what it sent is read without the poller from here on.
            self.poller.remove(&conn.stream);
            conn.registered = false;
        }
        if set.contains(EventSet::OUT) {
            self.flush_to_host(key);
        }
        self.fill_from_host(key);
        if set.contains(EventSet::HANG_UP) {
            if let Some(conn) = self.conns.get_mut(&key) {
                // Nothing can reach the client any more.
                if !conn.to_host.is_empty() || !conn.peer_no_send {
                    conn.to_host.clear();
                    conn.peer_no_send = true;
                }
            }
            self.maybe_finish(key);
        }
    }

    /// Reads from the host socket into the connection's staging buffer, as far as it has
    /// room.
    fn fill_from_host(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != State::Established {
            return;
        }
        let mut buf = [0u8; 16 << 10];
        while !conn.host_eof && conn.to_guest.len() < STAGING_SIZE {
            let room = (STAGING_SIZE - conn.to_guest.len()).min(buf.len());
            match conn.stream.read(&mut buf[..room]) {
                Ok(0) => conn.host_eof = true,
                Ok(n) => {
                    if !conn.peer_no_recv {
                        conn.to_guest.extend(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.reset(key, Reset::Rst),
            }
        }
        if conn.can_send_data() {
            self.mark_ready(key);
        } else if conn.state == State::Established
            && !conn.to_guest.is_empty()
            && conn.peer_credit() == 0
            && !conn.credit_request_sent
        {
            conn.credit_request_sent = true;
            let h = Header::to_guest(self.backend.cid(), key.0, key.1, OP_CREDIT_REQUEST);
            self.push_control(h, Some(key));
        }
        self.maybe_finish(key);
        self.refresh_interest(key);
    }

    /// Once the host has sent everything: tell the guest (SHUTDOWN), and end the
    /// connection when the guest is done too.
    fn maybe_finish(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.host_eof && conn.to_guest.is_empty() && !conn.shutdown_sent {
            conn.shutdown_sent = true;
            let mut h = Header::to_guest(self.backend.cid(), key.0, key.1, OP_SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            if !conn.registered {
                // Hung up: it will not read either.
                h.flags |= SHUTDOWN_RCV;
            }
            self.push_control(h, Some(key));
        }
        let conn = self.conns.get_mut(&key).expect("connection exists");
        if conn.shutdown_sent && conn.peer_no_send && conn.to_host.is_empty() {
            self.reset(key, Reset::Rst);
        }
    }

    /// Fills the guest's receive buffers: control packets first, then data from
    /// connections in turn. Returns whether anything was delivered.
    fn deliver_rx(&mut self) -> Result<bool, ChainError> {
        let mut delivered = false;
        loop {
            // Decide what to send before taking a buffer, so none is taken for nothing.
            let next_data = if self.control.is_empty() {
                match self.next_ready() {
                    Some(k) => Some(k),
                    None => break,
                }
            } else {
                None
            };
            let chain = match pop_chain(&mut self.rx, &self.mem, MAX_DESCRIPTORS) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if let Some(k) = next_data {
                        self.ready.push_front(k);
                        if let Some(c) = self.conns.get_mut(&k) {
                            c.queued = true;
                        }
                    }
                    break;
                }
                Err((_, e)) => return Err(e),
            };
            if !chain.readable.is_empty() || chain.writable_len() < HEADER_SIZE {
                return Err(ChainError::Order);
            }
            let written = match next_data {
                None => {
                    let c = self.control.pop_front().expect("control packet");
                    let mut hdr = c.hdr;
                    if let Some(conn) = c.key.and_then(|k| self.conns.get_mut(&k)) {
                        hdr.buf_alloc = BUF_ALLOC;
                        hdr.fwd_cnt = conn.fwd_cnt;
                        conn.fwd_reported = conn.fwd_cnt;
                        if hdr.op == OP_CREDIT_UPDATE {
                            conn.credit_update_queued = false;
                        }
                    }
                    chain.write_at(&self.mem, 0, &hdr.to_bytes())?
                }
                Some(key) => self.write_data(key, &chain)?,
            };
            add_used(&mut self.rx, &self.mem, chain.head, written as u32)?;
            delivered = true;
        }
        if delivered && needs_notification(&mut self.rx, &self.mem) {
            let _ = self.interrupt.notify_queue(RX);
        }
        Ok(delivered)
    }

    /// The next connection with data the guest can take now.
    fn next_ready(&mut self) -> Option<Key> {
        while let Some(k) = self.ready.pop_front() {
            if let Some(c) = self.conns.get_mut(&k) {
                c.queued = false;
                if c.can_send_data() {
                    return Some(k);
                }
            }
        }
        None
    }

    fn mark_ready(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.queued {
                c.queued = true;
                self.ready.push_back(key);
            }
        }
    }

    /// Writes one data packet of `key`'s staged bytes into `chain`.
    fn write_data(&mut self, key: Key, chain: &Chain) -> Result<usize, ChainError> {
        let conn = self.conns.get_mut(&key).expect("ready connection");
        let n = conn
            .to_guest
            .len()
            .min(conn.peer_credit() as usize)
            .min(chain.writable_len() - HEADER_SIZE)
            .min(MAX_PAYLOAD);
        let mut hdr = Header::to_guest(self.backend.cid(), key.0, key.1, OP_RW);
        hdr.len = n as u32;
        hdr.buf_alloc = BUF_ALLOC;
        hdr.fwd_cnt = conn.fwd_cnt;
        conn.fwd_reported = conn.fwd_cnt;
        let data: Vec<u8> = conn.to_guest.drain(..n).collect();
        conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
        chain.write_at(&self.mem, 0, &hdr.to_bytes())?;
        chain.write_at(&self.mem, HEADER_SIZE, &data)?;
        if conn.can_send_data() {
            self.mark_ready(key);
        }
        // Room in the staging buffer: read on.
        self.fill_from_host(key);
        Ok(HEADER_SIZE + n)
    }

    // ---- bookkeeping ----

    fn push_control(&mut self, hdr: Header, key: Option<Key>) {
        self.control.push_back(Control { hdr, key });
    }

    fn queue_credit_update(&mut self, key: Key) {
        let cid = self.backend.cid();
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.credit_update_queued {
            conn.credit_update_queued = true;
            let h = Header::to_guest(cid, key.0, key.1, OP_CREDIT_UPDATE);
            self.push_control(h, Some(key));
        }
    }

    /// Ends a connection (closing its host socket) and, for [`Reset::Rst`], tells the
    /// guest.
    fn reset(&mut self, key: Key, how: Reset) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.by_token.remove(&conn.token);
        if conn.registered {
            self.poller.remove(&conn.stream);
        }
        if matches!(how, Reset::Rst) {
            let h = Header::to_guest(self.backend.cid(), key.0, key.1, OP_RST);
            self.push_control(h, None);
        }
    }

    fn refresh_interest(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let want = conn.wanted_interest();
        if conn.registered && want != conn.interest {
            // An empty set still reports errors and hang-ups.
            if self.poller.modify(&conn.stream, want, conn.token).is_ok() {
                conn.interest = want;
            }
        }
    }

    fn take_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// A host port for a host-initiated connection to guest port `peer` not in use.
    fn take_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::testing::{Driver, TestInterrupt, TestMemory};
    use std::os::unix::net::UnixListener;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempdir::TempDir;

    pub const CID: u64 = 3;

    /// The guest's side of the device: its queues, plus the muxer driven by hand.
    pub struct Guest<'a> {
        pub mem: &'a TestMemory,
        pub rx: Driver<'a>,
        pub tx: Driver<'a>,
        pub mux: VsockMuxer,
        pub irq: Arc<TestInterrupt>,
        pub backend: Arc<VsockBackend>,
        rx_bufs: HashMap<u16, GuestAddress>,
        next_buf: u64,
        next_big: u64,
        _dir: TempDir,
    }

    impl<'a> Guest<'a> {
        pub fn new(mem: &'a TestMemory) -> Self {
            let dir = TempDir::new().unwrap();
            let backend = Arc::new(VsockBackend::open(CID, &dir.as_path().join("v")).unwrap());
            let (rx, tx) = (Driver::new(mem, 0, 256), Driver::new(mem, 1, 256));
            let irq = Arc::new(TestInterrupt::default());
            let mux = VsockMuxer::new(
                mem.memory(),
                rx.queue(),
                tx.queue(),
                irq.clone(),
                backend.clone(),
            )
            .unwrap();
            Self {
                mem,
                rx,
                tx,
                mux,
                irq,
                backend,
                rx_bufs: HashMap::new(),
                next_buf: 0,
                next_big: 0,
                _dir: dir,
            }
        }

        /// A 4 KiB buffer from 2 MiB up, reused round-robin (3000 of them).
        fn buf(&mut self) -> GuestAddress {
            let b = GuestAddress((2 << 20) + (self.next_buf % 3000) * 4096);
            self.next_buf += 1;
            b
        }

        /// Sends one packet to the device.
        pub fn send(&mut self, hdr: Header, payload: &[u8]) {
            let at = if payload.len() + HEADER_SIZE > 4096 {
                // Large packets: the 64 KiB buffers below 2 MiB.
                self.next_big += 1;
                self.mem.buf(self.next_big % 15)
            } else {
                self.buf()
            };
            let mut bytes = hdr.to_bytes().to_vec();
            bytes.extend_from_slice(payload);
            self.mem.write_slice(&bytes, at).unwrap();
            self.tx.add(&[(at, bytes.len() as u32, false)]);
            self.mux.process();
        }

        /// A packet from this guest's port `src` to host port `dst`.
        pub fn hdr(src: u32, dst: u32, op: u16) -> Header {
            Header {
                src_cid: CID,
                dst_cid: HOST_CID,
                src_port: src,
                dst_port: dst,
                type_: TYPE_STREAM,
                op,
                buf_alloc: 1 << 20,
                ..Default::default()
            }
        }

        /// Gives the device `n` receive buffers of 4 KiB.
        pub fn give_rx(&mut self, n: usize) {
            for _ in 0..n {
                let at = self.buf();
                let head = self.rx.add(&[(at, 4096, true)]);
                self.rx_bufs.insert(head, at);
            }
            self.mux.process();
        }

        /// Packets the device put in receive buffers since the last call.
        pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
            self.rx
                .used()
                .into_iter()
                .map(|(head, len)| {
                    let at = self.rx_bufs[&head];
                    let mut b = vec![0u8; len as usize];
                    self.mem.read_slice(&mut b, at).unwrap();
                    let h = Header::parse(&b).expect("a header");
                    assert_eq!(h.len as usize, b.len() - HEADER_SIZE, "{h:?}");
                    (h, b[HEADER_SIZE..].to_vec())
                })
                .collect()
        }

        /// Runs the device until `done` holds for what it delivered (bounded).
        pub fn pump_until(
            &mut self,
            mut done: impl FnMut(&[(Header, Vec<u8>)]) -> bool,
        ) -> Vec<(Header, Vec<u8>)> {
            let mut got = Vec::new();
            for _ in 0..500 {
                got.extend(self.recv());
                if done(&got) {
                    return got;
                }
                self.mux.poll_once(10).unwrap();
            }
            panic!("the device did not deliver what was expected; got {got:?}");
        }
    }

    fn ops(p: &[(Header, Vec<u8>)]) -> Vec<u16> {
        p.iter().map(|(h, _)| h.op).collect()
    }

    fn read_exact_from(s: &mut UnixStream, n: usize) -> Vec<u8> {
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    #[test]
    fn guest_connects_to_a_host_port() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        let listener = UnixListener::bind(g.backend.port_path(1234)).unwrap();
        g.give_rx(8);
        g.send(Guest::hdr(5000, 1234, OP_REQUEST), b"");
        let (mut host, _) = listener.accept().unwrap();
        let got = g.pump_until(|p| !p.is_empty());
        let (h, _) = &got[0];
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
            (OP_RESPONSE, HOST_CID, CID, 1234, 5000)
        );
        assert_eq!(h.buf_alloc, BUF_ALLOC);

        g.send(Guest::hdr(5000, 1234, OP_RW).with_len(4), b"ping");
        assert_eq!(read_exact_from(&mut host, 4), b"ping");
        host.write_all(b"pong!").unwrap();
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(ops(&got), vec![OP_RW]);
        assert_eq!(got[0].1, b"pong!");
        assert_eq!(got[0].0.fwd_cnt, 4, "the guest learns what was forwarded");

        // The guest closes: the host sees EOF, the guest gets the final RST.
        let mut shut = Guest::hdr(5000, 1234, OP_SHUTDOWN);
        shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        g.send(shut, b"");
        let mut rest = Vec::new();
        assert_eq!(host.read_to_end(&mut rest).unwrap(), 0);
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(ops(&got), vec![OP_RST]);
        assert_eq!(g.mux.connections(), 0);
        assert!(!g.irq.broken());
    }

    #[test]
    fn guest_connection_to_a_closed_port_is_reset() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        g.give_rx(2);
        g.send(Guest::hdr(5000, 99, OP_REQUEST), b"");
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(
            (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
            (OP_RST, 99, 5000)
        );
        assert_eq!(g.mux.connections(), 0);
    }

    #[test]
    fn host_connects_to_a_guest_port() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        g.give_rx(8);
        let mut client = UnixStream::connect(g.backend.path()).unwrap();
        client.write_all(b"CONNECT 52\nhello").unwrap();
        let got = g.pump_until(|p| !p.is_empty());
        let req = got[0].0;
        assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 52, CID));
        assert!(req.src_port >= FIRST_LOCAL_PORT);
        let hostport = req.src_port;
        g.send(Guest::hdr(52, hostport, OP_RESPONSE), b"");
        let ok = format!("OK {hostport}\n");
        assert_eq!(read_exact_from(&mut client, ok.len()), ok.as_bytes());
        // What the client sent after its CONNECT line reaches the guest.
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(got[0].1, b"hello");
        g.send(Guest::hdr(52, hostport, OP_RW).with_len(3), b"hi!");
        assert_eq!(read_exact_from(&mut client, 3), b"hi!");

        // The client hangs up: SHUTDOWN to the guest, whose RST ends the connection.
        drop(client);
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(ops(&got)[0], OP_SHUTDOWN);
        g.send(Guest::hdr(52, hostport, OP_RST), b"");
        let _ = g.pump_until(|_| true);
        assert_eq!(g.mux.connections(), 0);
    }

    #[test]
    fn refused_and_malformed_host_clients() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        g.give_rx(4);
        // The guest refuses: the client sees the connection close without "OK".
        let mut client = UnixStream::connect(g.backend.path()).unwrap();
        client.write_all(b"CONNECT 7\n").unwrap();
        let got = g.pump_until(|p| !p.is_empty());
        g.send(Guest::hdr(7, got[0].0.src_port, OP_RST), b"");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        // A bad line, and a line that never ends.
        for line in [&b"HELLO 7\n"[..], b"CONNECT x\n", &[b'9'; 64]] {
            let mut c = UnixStream::connect(g.backend.path()).unwrap();
            c.write_all(line).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_millis(100)))
                .unwrap();
            let mut rest = Vec::new();
            let mut closed = false;
            for _ in 0..100 {
                g.mux.poll_once(10).unwrap();
                if matches!(c.read_to_end(&mut rest), Ok(0)) {
                    closed = true;
                    break;
                }
            }
            assert!(closed && rest.is_empty(), "{line:?}");
        }
        assert!(g.recv().is_empty());
        assert_eq!(g.mux.connections(), 0);
    }

    #[test]
    fn silent_clients_and_unanswered_requests_are_given_up() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        g.mux
            .set_connect_timeout(std::time::Duration::from_millis(50));
        assert_eq!(g.mux.next_timeout_ms(), -1, "nothing to wait for");
        g.give_rx(4);
        // A client that never says CONNECT, and one whose REQUEST the guest ignores.
        let silent = UnixStream::connect(g.backend.path()).unwrap();
        let mut client = UnixStream::connect(g.backend.path()).unwrap();
        client.write_all(b"CONNECT 7\n").unwrap();
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(ops(&got), vec![OP_REQUEST]);
        assert!(g.mux.next_timeout_ms() >= 0);
        let mut closed = [false, false];
        for _ in 0..500 {
            let t = g.mux.next_timeout_ms().clamp(0, 10);
            g.mux.poll_once(t).unwrap();
            for (i, mut s) in [&silent, &client].into_iter().enumerate() {
                s.set_nonblocking(true).unwrap();
                closed[i] |= matches!(s.read(&mut [0u8; 8]), Ok(0));
            }
            if closed == [true, true] {
                break;
            }
        }
        assert_eq!(closed, [true, true], "both given up");
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(
            ops(&got),
            vec![OP_RST],
            "the guest hears the request is gone"
        );
        assert_eq!(g.mux.connections(), 0);
        assert_eq!(g.mux.next_timeout_ms(), -1);
    }

    #[test]
    fn data_to_the_guest_respects_its_credit() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        let _listener = UnixListener::bind(g.backend.port_path(80)).unwrap();
        g.give_rx(16);
        let mut req = Guest::hdr(6000, 80, OP_REQUEST);
        req.buf_alloc = 10;
        g.send(req, b"");
        let (mut host, _) = _listener.accept().unwrap();
        g.pump_until(|p| !p.is_empty());
        host.write_all(&[7u8; 25]).unwrap();
        // Ten bytes, then a credit request; nothing more until the guest frees room.
        let got = g.pump_until(|p| p.len() >= 2);
        assert_eq!(ops(&got), vec![OP_RW, OP_CREDIT_REQUEST]);
        assert_eq!(got[0].1.len(), 10);
        for _ in 0..5 {
            g.mux.poll_once(10).unwrap();
        }
        assert!(g.recv().is_empty());
        let mut upd = Guest::hdr(6000, 80, OP_CREDIT_UPDATE);
        upd.buf_alloc = 10;
        upd.fwd_cnt = 10;
        g.send(upd, b"");
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(got[0].1.len(), 10);
        upd.fwd_cnt = 20;
        g.send(upd, b"");
        let got = g.pump_until(|p| !p.is_empty());
        assert_eq!(got[0].1.len(), 5);
    }

    #[test]
    fn a_guest_beyond_its_credit_is_reset_and_buffers_stay_bounded() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        let listener = UnixListener::bind(g.backend.port_path(81)).unwrap();
        g.give_rx(64);
        g.send(Guest::hdr(6001, 81, OP_REQUEST), b"");
        let (_host, _) = listener.accept().unwrap(); // never reads
        g.pump_until(|p| !p.is_empty());
        let chunk = vec![1u8; MAX_PAYLOAD];
        let mut sent = 0;
        let mut reset = false;
        for _ in 0..64 {
            g.send(Guest::hdr(6001, 81, OP_RW).with_len(chunk.len()), &chunk);
            sent += chunk.len();
            if ops(&g.recv()).contains(&OP_RST) {
                reset = true;
                break;
            }
            let held: usize = g.mux.conns.values().map(|c| c.to_host.len()).sum();
            assert!(held <= BUF_ALLOC as usize);
        }
        assert!(reset, "no reset after {sent} bytes");
        assert_eq!(g.mux.connections(), 0);
    }

    #[test]
    fn headers_are_validated() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        g.give_rx(5);
        // Shorter than a header, a spoofed source: dropped without a word.
        let at = g.buf();
        g.tx.add(&[(at, 20, false)]);
        g.mux.process();
        let mut spoof = Guest::hdr(1, 2, OP_REQUEST);
        spoof.src_cid = 4;
        g.send(spoof, b"");
        assert_eq!(g.mux.dropped_packets, 2);
        assert!(g.recv().is_empty());
        // Another destination, another socket type, a length beyond the chain, a payload
        // on a control packet: reset.
        let mut other = Guest::hdr(1, 2, OP_REQUEST);
        other.dst_cid = 5;
        g.send(other, b"");
        let mut seq = Guest::hdr(1, 2, OP_REQUEST);
        seq.type_ = 2;
        g.send(seq, b"");
        g.send(Guest::hdr(1, 2, OP_RW).with_len(100), b"short");
        g.send(Guest::hdr(1, 2, OP_REQUEST).with_len(3), b"abc");
        // Packets for no connection, and an RST for none (not answered).
        g.send(Guest::hdr(1, 2, OP_RW).with_len(1), b"x");
        g.send(Guest::hdr(1, 2, OP_RST), b"");
        let got = g.recv();
        assert_eq!(ops(&got), vec![OP_RST; 5]);
        assert_eq!(
            got[0].0.src_cid, 5,
            "the reset comes from where it was sent"
        );
        assert_eq!(g.mux.dropped_packets, 6);
        assert!(!g.irq.broken());
        // A receive buffer the device could only read breaks the device.
        let at = g.buf();
        g.rx.add(&[(at, 4096, false)]);
        g.send(Guest::hdr(1, 2, OP_RW).with_len(1), b"x");
        assert!(g.irq.broken() && g.mux.broken);
    }

    #[test]
    fn control_packets_are_bounded_when_the_guest_gives_no_buffers() {
        let mem = TestMemory::new();
        let mut g = Guest::new(&mem);
        // Packets that each want an answer (an RST: no such connection), no receive
        // buffers: the device stops taking packets once MAX_CONTROL answers wait.
        let total = MAX_CONTROL + 100;
        for i in 0..total {
            g.send(Guest::hdr(i as u32, 7, OP_RW).with_len(0), b"");
        }
        assert_eq!(g.mux.control.len(), MAX_CONTROL);
        assert_eq!(g.tx.used().len(), MAX_CONTROL);
        // As the guest gives receive buffers, the rest is taken and answered.
        let mut got = Vec::new();
        while got.len() < total {
            g.give_rx(200);
            got.extend(g.pump_until(|p| !p.is_empty()));
        }
        assert_eq!(got.len(), total);
        assert!(got.iter().all(|(h, _)| h.op == OP_RST));
        assert!(!g.irq.broken());
    }

    /// Random transmit and receive chains (lengths, directions, addresses, header fields)
    /// never panic the device; the worst outcome is a device that needs a reset.
    #[test]
    fn fuzz_random_chains() {
        let mem = TestMemory::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _round in 0..20 {
            let mut g = Guest::new(&mem);
            let _l = UnixListener::bind(g.backend.port_path(1)).unwrap();
            for _ in 0..200 {
                let r = rnd();
                let mut h = Guest::hdr((r % 4) as u32, (r >> 8) as u32 % 3, (r >> 16) as u16 % 9);
                if r & (1 << 30) != 0 {
                    h.src_cid = rnd() % 6;
                }
                if r & (1 << 31) != 0 {
                    h.dst_cid = rnd() % 6;
                }
                h.len = if r & (1 << 32) != 0 {
                    rnd() as u32
                } else {
                    (r >> 40) as u32 % 64
                };
                h.type_ = if r & (1 << 33) != 0 { rnd() as u16 } else { 1 };
                h.flags = (r >> 50) as u32 % 4;
                h.buf_alloc = rnd() as u32;
                h.fwd_cnt = rnd() as u32;
                let at = g.buf();
                let mut bytes = h.to_bytes().to_vec();
                bytes.extend((0..(r >> 56) as usize).map(|i| i as u8));
                mem.write_slice(&bytes, at).unwrap();
                let len = if r & (1 << 34) != 0 {
                    rnd() as u32 % 200
                } else {
                    bytes.len() as u32
                };
                let addr = if r & (1 << 35) != 0 {
                    GuestAddress(rnd() % (32 << 20))
                } else {
                    at
                };
                g.tx.add(&[(addr, len, r & (1 << 36) != 0)]);
                if r & (1 << 37) != 0 {
                    let at = g.buf();
                    let len = if r & (1 << 38) != 0 {
                        rnd() as u32 % 100
                    } else {
                        4096
                    };
                    let head = g.rx.add(&[(at, len, r & (1 << 39) == 0)]);
                    g.rx_bufs.insert(head, at);
                }
                g.mux.poll_once(0).unwrap();
                if g.mux.broken {
                    break;
                }
            }
        }
    }
}
