//! A virtio-net worker thread, one per queue pair: one epoll loop over the pair's rx and tx
//! kick eventfds, its TAP queue and a stop eventfd (worker 0 also serves the control
//! queue).
//!
//! * tx: each chain (header + frame) is written to the TAP as one frame with one `writev`
//!   straight from guest memory (no copy in vireo); the chain goes back to the guest
//!   whatever happens to the frame.
//! * rx: a frame read from the TAP is held until the guest has buffers for it. With
//!   mergeable buffers it may span several (`num_buffers` in the header says how many);
//!   without, it must fit one chain. When buffers run out the worker stops reading the TAP
//!   (the kernel queues, then drops, frames — backpressure instead of loss inside vireo),
//!   asks the guest for a kick, and resumes on that kick.
//!
//! The TAP is registered edge-triggered: the loop reads until `WouldBlock`, or until it has
//! nowhere to put a frame; an edge or an rx kick restarts reading.

use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{parse_ctrl, tx_slices, RxBuffer, MAX_FRAME};
use super::device::NetBackend;
use super::tap::VNET_HDR_LEN;
use crate::virtio::{ActiveQueue, GuestMemory, Queue, VirtioInterrupt};

/// Frame counters of one virtio-net device (all since the device was created).
#[derive(Debug, Default)]
pub struct NetStats {
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Transmit requests dropped: malformed but harmless chains, or TAP write errors.
    pub tx_dropped: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the TAP that no guest buffer could take.
    pub rx_dropped: AtomicU64,
}

impl NetStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

const TOKEN_RX_KICK: u64 = 0;
const TOKEN_TX_KICK: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_STOP: u64 = 3;
const TOKEN_CTRL_KICK: u64 = 4;

/// Control commands (virtio 1.x §5.1.6.5).
const CTRL_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const CTRL_OK: u8 = 0;
const CTRL_ERR: u8 = 1;

/// Most frames moved per direction before the loop looks at its other events, so a flood
/// one way cannot starve the other direction or a reset.
const BUDGET: usize = 256;

/// What became of the frame waiting to go to the guest.
enum Delivery {
    Delivered,
    /// Dropped; `returned` says whether buffers went back to the guest (empty).
    Dropped {
        returned: bool,
    },
    /// The guest has not (yet) offered enough buffers; the frame is kept. `seen`: the
    /// available index up to which buffers were looked at.
    NoBuffers {
        seen: u16,
    },
}

pub(super) struct Worker {
    mem: GuestMemory,
    backend: Arc<NetBackend>,
    /// Which queue pair (and TAP queue) this worker serves.
    pair: usize,
    rx: ActiveQueue,
    tx: ActiveQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    mergeable: bool,
    stats: Arc<NetStats>,
    epoll: Epoll,
    stop: EventFd,
    /// The frame (virtio-net header first) read from the TAP and not yet delivered:
    /// `frame[..pending]`; `pending == 0` means none.
    frame: Vec<u8>,
    pending: usize,
    /// The TAP may have frames queued (an edge was seen and no `WouldBlock` since).
    tap_readable: bool,
    rx_broken: bool,
    tx_broken: bool,
    /// A direction stopped on its budget with work left: the loop comes back to it
    /// without waiting for an event.
    rx_more: bool,
    tx_more: bool,
    /// The control queue (worker 0 only, when the driver accepted CTRL_VQ), and the
    /// number of queue pairs the driver may switch on through it.
    ctrl: Option<ActiveQueue>,
    ctrl_pairs: usize,
    ctrl_broken: bool,
}

/// The next available chain, or an error when the driver's available index is not
/// credible (more entries than the queue holds) or the ring is unreadable.
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
) -> Result<Option<DescriptorChain<&'m GuestMemory>>, String> {
    match queue.iter(mem) {
        Ok(mut it) => Ok(it.next()),
        Err(e) => Err(format!("available ring: {e}")),
    }
}

impl Worker {
    /// Sets up the epoll set; the thread is started with [`Worker::run`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        mem: GuestMemory,
        backend: Arc<NetBackend>,
        pair: usize,
        rx: ActiveQueue,
        tx: ActiveQueue,
        interrupt: Arc<dyn VirtioInterrupt>,
        mergeable: bool,
        stats: Arc<NetStats>,
        stop: EventFd,
    ) -> io::Result<Worker> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, events: EventSet, token: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(rx.kick.as_raw_fd(), EventSet::IN, TOKEN_RX_KICK)?;
        add(tx.kick.as_raw_fd(), EventSet::IN, TOKEN_TX_KICK)?;
        add(
            backend.queue(pair).as_raw_fd(),
            EventSet::IN | EventSet::EDGE_TRIGGERED,
            TOKEN_TAP,
        )?;
        add(stop.as_raw_fd(), EventSet::IN, TOKEN_STOP)?;
        Ok(Worker {
            mem,
            backend,
            pair,
            rx,
            tx,
            interrupt,
            mergeable,
            stats,
            epoll,
            stop,
            frame: vec![0; VNET_HDR_LEN + MAX_FRAME],
            pending: 0,
            tap_readable: true,
            rx_broken: false,
            tx_broken: false,
            rx_more: false,
            tx_more: false,
            ctrl: None,
            ctrl_pairs: 1,
            ctrl_broken: false,
        })
    }

    /// Serves the queues until the stop eventfd fires.
    pub(super) fn run(mut self) {
        // The driver may have queued frames before DRIVER_OK, and the TAP may hold some.
        self.process_ctrl();
        self.process_tx();
        self.process_rx();
        let mut events = [EpollEvent::default(); 8];
        loop {
            let timeout = if self.rx_more || self.tx_more { 0 } else { -1 };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-net: epoll failed, the device stops: {e}");
                    self.interrupt.needs_reset();
                    return;
                }
            };
            if events[..n].iter().any(|e| e.data() == TOKEN_STOP) {
                let _ = self.stop.read();
                return;
            }
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_RX_KICK => {
                        let _ = self.rx.kick.read();
                        self.process_rx();
                    }
                    TOKEN_TX_KICK => {
                        let _ = self.tx.kick.read();
                        self.process_tx();
                    }
                    TOKEN_TAP => {
                        self.tap_readable = true;
                        self.process_rx();
                    }
                    TOKEN_CTRL_KICK => {
                        if let Some(c) = &self.ctrl {
                            let _ = c.kick.read();
                        }
                        self.process_ctrl();
                    }
                    _ => {}
                }
            }
            if self.tx_more {
                self.process_tx();
            }
            if self.rx_more {
                self.process_rx();
            }
        }
    }

    /// Gives this worker the control queue; `pairs`: how many queue pairs the driver may
    /// ask for.
    pub(super) fn with_ctrl(mut self, ctrl: ActiveQueue, pairs: usize) -> io::Result<Worker> {
        self.epoll.ctl(
            ControlOperation::Add,
            ctrl.kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_CTRL_KICK),
        )?;
        self.ctrl = Some(ctrl);
        self.ctrl_pairs = pairs;
        Ok(self)
    }

    /// Answers control commands: only `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (1..=pairs) is
    /// supported, which attaches that many TAP queues and detaches the rest so the kernel
    /// queues frames only for active pairs; anything else gets VIRTIO_NET_ERR.
    fn process_ctrl(&mut self) {
        if self.ctrl_broken {
            return;
        }
        let mem = self.mem.clone();
        let Some(ctrl) = self.ctrl.as_mut() else {
            return;
        };
        let mut answered = false;
        let mut fault = None;
        loop {
            let chain = match next_chain(&mut ctrl.queue, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    fault = Some(e);
                    break;
                }
            };
            let head = chain.head_index();
            let (cmd, ack) = match parse_ctrl(&mem, chain) {
                Ok(v) => v,
                Err(e) => {
                    fault = Some(e.to_string());
                    break;
                }
            };
            let ok = match (cmd.first(), cmd.get(1), cmd.get(2..4)) {
                (Some(&CTRL_MQ), Some(&CTRL_MQ_VQ_PAIRS_SET), Some(n)) => {
                    let n = usize::from(u16::from_le_bytes([n[0], n[1]]));
                    (1..=self.ctrl_pairs).contains(&n)
                        && match self.backend.set_active_pairs(n) {
                            Ok(()) => true,
                            Err(e) => {
                                log::warn!("virtio-net: switching to {n} queue pairs: {e}");
                                false
                            }
                        }
                }
                _ => false,
            };
            let status = if ok { CTRL_OK } else { CTRL_ERR };
            if let Err(e) = mem.write_obj(status, ack) {
                fault = Some(format!("ack byte: {e}"));
                break;
            }
            if let Err(e) = ctrl.queue.add_used(&mem, head, 1) {
                fault = Some(format!("used ring: {e}"));
                break;
            }
            answered = true;
        }
        if answered {
            match ctrl.queue.needs_notification(&mem) {
                Ok(true) => {
                    if let Err(e) = self.interrupt.notify_queue(ctrl.index) {
                        log::warn!("virtio-net: cannot interrupt the guest: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => fault = Some(format!("used ring: {e}")),
            }
        }
        if let Some(why) = fault {
            log::warn!("virtio-net: control queue: {why}; the device needs a reset");
            self.ctrl_broken = true;
            self.interrupt.needs_reset();
        }
    }

    /// The driver broke the protocol on one queue: ask for a reset and stop serving it (the
    /// other queue, and the VMM, carry on).
    fn break_queue(&mut self, rx: bool, why: &str) {
        let name = if rx { "receive" } else { "transmit" };
        log::warn!("virtio-net: {name} queue: {why}; the device needs a reset");
        if rx {
            self.rx_broken = true;
        } else {
            self.tx_broken = true;
        }
        self.interrupt.needs_reset();
    }

    fn signal(&mut self, rx: bool) {
        let mem = &self.mem;
        let q = if rx { &mut self.rx } else { &mut self.tx };
        match q.queue.needs_notification(mem) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = self.interrupt.notify_queue(q.index) {
                    log::warn!("virtio-net: cannot interrupt the guest: {e}");
                }
            }
            Err(e) => {
                let why = format!("used ring: {e}");
                self.break_queue(rx, &why);
            }
        }
    }

    pub(super) fn process_tx(&mut self) {
        if self.tx_broken {
            return;
        }
        let mem = self.mem.clone();
        let mut returned = false;
        let mut budget = BUDGET;
        // The guest memory slices of the frame being sent (reused from frame to frame).
        let mut slices = Vec::new();
        self.tx_more = false;
        'outer: loop {
            if let Err(e) = self.tx.queue.disable_notification(&mem) {
                return self.break_queue(false, &format!("used ring: {e}"));
            }
            loop {
                if budget == 0 {
                    // Notifications stay off: the loop comes straight back.
                    self.tx_more = true;
                    break 'outer;
                }
                budget -= 1;
                let chain = match next_chain(&mut self.tx.queue, &mem) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => return self.break_queue(false, &e),
                };
                let head = chain.head_index();
                match tx_slices(&mem, chain, &mut slices) {
                    Ok(len) => match self.backend.queue(self.pair).write_guest(&slices) {
                        Ok(_) => {
                            NetStats::add(&self.stats.tx_frames, 1);
                            NetStats::add(&self.stats.tx_bytes, (len - VNET_HDR_LEN) as u64);
                        }
                        Err(e) => {
                            // The host refused the frame (a bad GSO header, the TAP down):
                            // lost like on a wire.
                            log::debug!("virtio-net: TAP write: {e}");
                            NetStats::add(&self.stats.tx_dropped, 1);
                        }
                    },
                    Err(e) if e.is_fatal() => return self.break_queue(false, &e.to_string()),
                    Err(e) => {
                        log::debug!("virtio-net: dropping a transmit request: {e}");
                        NetStats::add(&self.stats.tx_dropped, 1);
                    }
                }
                if let Err(e) = self.tx.queue.add_used(&mem, head, 0) {
                    return self.break_queue(false, &format!("used ring: {e}"));
                }
                returned = true;
            }
            match self.tx.queue.enable_notification(&mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return self.break_queue(false, &format!("used ring: {e}")),
            }
        }
        if returned {
            self.signal(false);
        }
    }

    pub(super) fn process_rx(&mut self) {
        if self.rx_broken {
            return;
        }
        let mem = self.mem.clone();
        let mut returned = false;
        let mut budget = BUDGET;
        self.rx_more = false;
        loop {
            if budget == 0 {
                self.rx_more = true;
                break;
            }
            if self.pending == 0 {
                if !self.tap_readable {
                    break;
                }
                match self.backend.queue(self.pair).read(&mut self.frame) {
                    // Never shorter than the header from a TAP with IFF_VNET_HDR.
                    Ok(n) if n <= VNET_HDR_LEN => continue,
                    Ok(n) => self.pending = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.tap_readable = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // EIO/EBADFD when the interface is torn down: wait for an edge.
                        log::debug!("virtio-net: TAP read: {e}");
                        self.tap_readable = false;
                        break;
                    }
                }
            }
            match self.deliver(&mem) {
                Ok(Delivery::Delivered) => {
                    returned = true;
                    self.pending = 0;
                    budget -= 1;
                }
                Ok(Delivery::Dropped { returned: r }) => {
                    returned |= r;
                    self.pending = 0;
                    budget -= 1;
                    NetStats::add(&self.stats.rx_dropped, 1);
                }
                Ok(Delivery::NoBuffers { seen }) => {
                    // Backpressure: keep the frame, stop reading, and have the driver kick
                    // when it adds a buffer beyond those already looked at — with
                    // EVENT_IDX the kick threshold is the queue's next_avail, which was
                    // rewound to the frame's first buffer, so point it at `seen` for the
                    // call. Re-checking closes the race with a refill.
                    let first = self.rx.queue.next_avail();
                    self.rx.queue.set_next_avail(seen);
                    let more = self.rx.queue.enable_notification(&mem);
                    self.rx.queue.set_next_avail(first);
                    match more {
                        // Buffers came meanwhile: try again, within the budget (a driver
                        // moving its index back and forth must not hold the thread).
                        Ok(true) if budget > 1 => budget -= 1,
                        Ok(true) => {
                            self.rx_more = true;
                            break;
                        }
                        Ok(false) => break,
                        Err(e) => return self.break_queue(true, &format!("used ring: {e}")),
                    }
                }
                Err(e) => return self.break_queue(true, &e),
            }
        }
        if returned {
            self.signal(true);
        }
    }

    /// Puts the pending frame into guest buffers.
    fn deliver(&mut self, mem: &GuestMemory) -> Result<Delivery, String> {
        let n = self.pending;
        let start = Wrapping(self.rx.queue.next_avail());
        let size = usize::from(self.rx.queue.size());
        let mut bufs: Vec<RxBuffer> = Vec::new();
        let mut capacity = 0usize;
        while capacity < n {
            if bufs.len() == size {
                // Even a full ring of buffers cannot hold it.
                self.rx.queue.set_next_avail(start.0);
                return Ok(Delivery::Dropped { returned: false });
            }
            let Some(chain) = next_chain(&mut self.rx.queue, mem)? else {
                let seen = self.rx.queue.next_avail();
                self.rx.queue.set_next_avail(start.0);
                return Ok(Delivery::NoBuffers { seen });
            };
            let head = chain.head_index();
            let buf = match RxBuffer::parse(mem, head, chain) {
                Ok(b) => b,
                Err(e) if e.is_fatal() => return Err(e.to_string()),
                // Too many pieces: unusable, like a buffer that is too small.
                Err(_) => RxBuffer::unusable(head),
            };
            if buf.capacity < VNET_HDR_LEN {
                // Every buffer must hold at least a header (virtio 1.x §5.1.6.3.1): drop
                // the frame and hand back, empty, every buffer taken for it so the guest
                // can recycle them.
                let heads: Vec<u16> = bufs.iter().map(|b| b.head).chain([head]).collect();
                for h in heads {
                    self.rx
                        .queue
                        .add_used(mem, h, 0)
                        .map_err(|e| format!("used ring: {e}"))?;
                }
                return Ok(Delivery::Dropped { returned: true });
            }
            capacity += buf.capacity;
            bufs.push(buf);
            if capacity < n && !self.mergeable {
                // Larger than the guest's buffer (a TAP MTU above the guest's): drop the
                // frame, keep the buffer for the next one.
                self.rx.queue.set_next_avail(start.0);
                return Ok(Delivery::Dropped { returned: false });
            }
        }
        // num_buffers (the header's last field): 1 without mergeable buffers, as required.
        let count = bufs.len() as u16;
        self.frame[VNET_HDR_LEN - 2..VNET_HDR_LEN].copy_from_slice(&count.to_le_bytes());
        let mut off = 0;
        for b in &bufs {
            let written = b
                .write(mem, &self.frame[off..n])
                .map_err(|e| e.to_string())?;
            off += written;
            self.rx
                .queue
                .add_used(mem, b.head, written as u32)
                .map_err(|e| format!("used ring: {e}"))?;
        }
        NetStats::add(&self.stats.rx_frames, 1);
        NetStats::add(&self.stats.rx_bytes, (n - VNET_HDR_LEN) as u64);
        Ok(Delivery::Delivered)
    }
}
