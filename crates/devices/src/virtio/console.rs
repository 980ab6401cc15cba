//! virtio-console (virtio 1.x §5.3): one port, which Linux names hvc0.
//!
//! MULTIPORT is not offered, so port 0 uses queues 0 (receiveq: host → guest) and 1
//! (transmitq: guest → host) and there are no control queues. Guest output goes to the
//! same sink as the serial port (stdout, a file or the console socket, plus the console
//! log); input comes from the VMM's event loop through [`ConsoleInput`]. EMERG_WRITE is
//! offered: a driver may write single characters through the configuration space before
//! its queues work.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::descriptors::{add_used, needs_notification, pop_chain, ChainError};
use super::worker::{Poller, Worker};
use super::{
    ActivateError, Activation, GuestMemory, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};

/// Queue sizes offered.
pub const QUEUE_SIZE: u16 = 256;
const RX: u16 = 0;
const TX: u16 = 1;
/// The driver may write single characters to `emerg_wr` in the configuration space.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;
/// Offset of `emerg_wr` in the configuration space (after cols, rows, max_nr_ports).
const EMERG_WR_OFFSET: u64 = 8;
const CONFIG_SIZE: usize = 12;
/// Input held for the guest; the event loop keeps the rest (and stops reading) meanwhile.
pub const INPUT_CAPACITY: usize = 4096;
/// Descriptors per chain at most (Linux sends one buffer per chain).
const MAX_DESCRIPTORS: usize = 64;
/// Output is copied out of guest memory in pieces of this size.
const CHUNK: usize = 16 << 10;

/// Console input waiting for the guest's receive buffers: filled by the VMM's event loop,
/// drained by the device worker, which the eventfd wakes.
pub struct ConsoleInput {
    buf: Mutex<VecDeque<u8>>,
    evt: EventFd,
}

impl ConsoleInput {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            buf: Mutex::new(VecDeque::new()),
            evt: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Takes as much of `bytes` as there is room for and returns how much that was.
    pub fn enqueue(&self, bytes: &[u8]) -> usize {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let n = INPUT_CAPACITY.saturating_sub(buf.len()).min(bytes.len());
        if n > 0 {
            buf.extend(&bytes[..n]);
            let _ = self.evt.write(1);
        }
        n
    }

    /// Bytes waiting for the guest.
    pub fn pending(&self) -> usize {
        self.buf.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn peek(&self, max: usize) -> Vec<u8> {
        let buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        buf.iter().take(max).copied().collect()
    }

    fn consume(&self, n: usize) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let n = n.min(buf.len());
        buf.drain(..n);
    }
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleInput")
            .field("pending", &self.pending())
            .finish()
    }
}

/// Where guest output goes: the VMM's console sink (shared with the serial port).
pub type ConsoleSink = Arc<Mutex<Box<dyn Write + Send>>>;

/// The virtio-console device model.
pub struct VirtioConsole {
    output: ConsoleSink,
    input: Arc<ConsoleInput>,
    worker: Option<Worker>,
}

impl VirtioConsole {
    pub fn new(output: Box<dyn Write + Send>, input: Arc<ConsoleInput>) -> Self {
        Self {
            output: Arc::new(Mutex::new(output)),
            input,
            worker: None,
        }
    }
}

fn write_out(sink: &ConsoleSink, bytes: &[u8]) {
    let mut out = sink.lock().unwrap_or_else(|e| e.into_inner());
    // The sink reports and survives its own failures (see the VMM's ConsoleOutput).
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_EMERG_WRITE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (no F_SIZE: 0), max_nr_ports (1; only meaningful with MULTIPORT),
        // emerg_wr (reads as 0).
        let mut config = [0u8; CONFIG_SIZE];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        copy_config(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // A write that covers emerg_wr's low byte emits that character.
        if let Some(i) = EMERG_WR_OFFSET
            .checked_sub(offset)
            .and_then(|i| usize::try_from(i).ok())
        {
            if let Some(&c) = data.get(i) {
                write_out(&self.output, &[c]);
            }
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let mut rx = None;
        let mut tx = None;
        for q in a.queues {
            match q.index {
                RX => rx = Some(q),
                TX => tx = Some(q),
                _ => {}
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::BadSetup(
                "virtio-console needs its receive and transmit queues".into(),
            ));
        };
        let mut queues = ConsoleQueues {
            mem: a.mem,
            rx: rx.queue,
            tx: tx.queue,
            interrupt: a.interrupt,
            input: self.input.clone(),
            output: self.output.clone(),
            broken: false,
        };
        let (rx_kick, tx_kick) = (rx.kick, tx.kick);
        let worker = Worker::spawn("virtio-console", move |stop| {
            if let Err(e) = queues.run(&stop, &rx_kick, &tx_kick) {
                log::error!("virtio-console: worker failed: {e}");
                queues.interrupt.needs_reset();
            }
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}

/// Copies the configuration bytes at `offset` into `data`; bytes beyond it read as 0.
pub(crate) fn copy_config(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// The queues of an active console and what they connect to; the worker thread's state.
pub struct ConsoleQueues {
    pub mem: GuestMemory,
    pub rx: Queue,
    pub tx: Queue,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub input: Arc<ConsoleInput>,
    pub output: ConsoleSink,
    /// Set when the driver broke the protocol: the device waits for a reset.
    pub broken: bool,
}

const TOKEN_STOP: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_INPUT: u64 = 3;

impl ConsoleQueues {
    fn run(&mut self, stop: &EventFd, rx_kick: &EventFd, tx_kick: &EventFd) -> std::io::Result<()> {
        let mut poller = Poller::new()?;
        poller.add(stop, EventSet::IN, TOKEN_STOP)?;
        poller.add(rx_kick, EventSet::IN, TOKEN_RX)?;
        poller.add(tx_kick, EventSet::IN, TOKEN_TX)?;
        poller.add(&self.input.evt, EventSet::IN, TOKEN_INPUT)?;
        // The driver may have queued buffers before DRIVER_OK.
        self.process();
        loop {
            for (token, _) in poller.wait(-1)? {
                match token {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_RX => drop(rx_kick.read()),
                    TOKEN_TX => drop(tx_kick.read()),
                    TOKEN_INPUT => drop(self.input.evt.read()),
                    _ => {}
                }
            }
            self.process();
        }
    }

    /// Serves both queues as far as they can go now.
    pub fn process(&mut self) {
        if self.broken {
            return;
        }
        let result = self.process_tx().and_then(|()| self.process_rx());
        if let Err(e) = result {
            log::warn!("virtio-console: {e}; the device needs a reset");
            self.broken = true;
            self.interrupt.needs_reset();
        }
    }

    /// Writes every chain the guest transmitted to the console sink.
    pub fn process_tx(&mut self) -> Result<(), ChainError> {
        let mut used = false;
        loop {
            let chain = match pop_chain(&mut self.tx, &self.mem, MAX_DESCRIPTORS) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err((_, e)) => return Err(e),
            };
            if !chain.writable.is_empty() {
                return Err(ChainError::Order);
            }
            for &(addr, len) in &chain.readable {
                let mut off = 0usize;
                while off < len as usize {
                    let n = CHUNK.min(len as usize - off);
                    let mut buf = vec![0u8; n];
                    vm_memory::Bytes::read_slice(
                        &self.mem,
                        &mut buf,
                        vm_memory::GuestAddress(addr.0 + off as u64),
                    )
                    .map_err(|_| ChainError::OutOfRange { addr: addr.0, len })?;
                    write_out(&self.output, &buf);
                    off += n;
                }
            }
            add_used(&mut self.tx, &self.mem, chain.head, 0)?;
            used = true;
        }
        if used && needs_notification(&mut self.tx, &self.mem) {
            let _ = self.interrupt.notify_queue(TX);
        }
        Ok(())
    }

    /// Moves pending input into the guest's receive buffers.
    pub fn process_rx(&mut self) -> Result<(), ChainError> {
        let mut used = false;
        while self.input.pending() > 0 {
            let chain = match pop_chain(&mut self.rx, &self.mem, MAX_DESCRIPTORS) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err((_, e)) => return Err(e),
            };
            if !chain.readable.is_empty() || chain.writable_len() == 0 {
                return Err(ChainError::Order);
            }
            let bytes = self.input.peek(chain.writable_len());
            let n = chain.write_at(&self.mem, 0, &bytes)?;
            self.input.consume(n);
            add_used(&mut self.rx, &self.mem, chain.head, n as u32)?;
            used = true;
        }
        if used && needs_notification(&mut self.rx, &self.mem) {
            let _ = self.interrupt.notify_queue(RX);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{Driver, TestInterrupt, TestMemory};
    use crate::virtio::ActiveQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Captured {
        fn take(&self) -> Vec<u8> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    fn queues(
        mem: &TestMemory,
        rx: &Driver,
        tx: &Driver,
        out: &Captured,
    ) -> (ConsoleQueues, Arc<TestInterrupt>) {
        let irq = Arc::new(TestInterrupt::default());
        let q = ConsoleQueues {
            mem: mem.memory(),
            rx: rx.queue(),
            tx: tx.queue(),
            interrupt: irq.clone(),
            input: ConsoleInput::new().unwrap(),
            output: Arc::new(Mutex::new(Box::new(out.clone()))),
            broken: false,
        };
        (q, irq)
    }

    #[test]
    fn output_reaches_the_sink_and_input_the_guest() {
        let mem = TestMemory::new();
        let (mut rx, mut tx) = (Driver::new(&mem, 0, 8), Driver::new(&mem, 1, 8));
        let out = Captured::default();
        let (mut q, irq) = queues(&mem, &rx, &tx, &out);

        mem.write_slice(b"hello ", mem.buf(0)).unwrap();
        mem.write_slice(b"hvc0\n", mem.buf(1)).unwrap();
        let h = tx.add(&[(mem.buf(0), 6, false), (mem.buf(1), 5, false)]);
        q.process();
        assert_eq!(out.take(), b"hello hvc0\n");
        assert_eq!(tx.used(), vec![(h, 0)]);
        assert_eq!(irq.take_queues(), vec![TX]);

        // Input waits for a receive buffer, then fills buffers in order.
        assert_eq!(q.input.enqueue(b"typed"), 5);
        q.process();
        assert_eq!(q.input.pending(), 5);
        let r1 = rx.add(&[(mem.buf(2), 3, true)]);
        let r2 = rx.add(&[(mem.buf(3), 64, true)]);
        let r3 = rx.add(&[(mem.buf(4), 64, true)]);
        q.process();
        assert_eq!(rx.used(), vec![(r1, 3), (r2, 2)]);
        assert_eq!(irq.take_queues(), vec![RX]);
        let mut got = [0u8; 5];
        mem.read_slice(&mut got[..3], mem.buf(2)).unwrap();
        mem.read_slice(&mut got[3..], mem.buf(3)).unwrap();
        assert_eq!(&got, b"typed");
        assert_eq!(q.input.pending(), 0);
        // The third buffer stays with the device for the next input.
        q.input.enqueue(b"!");
        q.process();
        assert_eq!(rx.used(), vec![(r3, 1)]);
        assert!(!irq.broken());
    }

    #[test]
    fn input_is_bounded() {
        let input = ConsoleInput::new().unwrap();
        let big = vec![b'x'; INPUT_CAPACITY + 10];
        assert_eq!(input.enqueue(&big), INPUT_CAPACITY);
        assert_eq!(input.enqueue(b"more"), 0);
        input.consume(4);
        assert_eq!(input.enqueue(b"more!"), 4);
    }

    #[test]
    fn hostile_chains_break_the_device_not_the_vmm() {
        let mem = TestMemory::new();
        let out = Captured::default();
        // A transmit buffer outside guest RAM.
        let (rx, mut tx) = (Driver::new(&mem, 0, 8), Driver::new(&mem, 1, 8));
        let (mut q, irq) = queues(&mem, &rx, &tx, &out);
        tx.add(&[(GuestAddress(TestMemory::SIZE as u64 - 4), 8, false)]);
        q.process();
        assert!(irq.broken() && q.broken);
        // Once broken, further kicks do nothing.
        tx.add(&[(mem.buf(0), 4, false)]);
        q.process();
        assert!(out.take().is_empty());

        // A receive buffer the device could only read.
        let (mut rx, tx) = (Driver::new(&mem, 2, 8), Driver::new(&mem, 3, 8));
        let (mut q, irq) = queues(&mem, &rx, &tx, &out);
        q.input.enqueue(b"x");
        rx.add(&[(mem.buf(0), 4, false)]);
        q.process();
        assert!(irq.broken());

        // A looping transmit chain.
        let (rx, mut tx) = (Driver::new(&mem, 4, 128), Driver::new(&mem, 5, 128));
        let (mut q, irq) = queues(&mem, &rx, &tx, &out);
        let h = tx.add(&[(mem.buf(0), 1, false), (mem.buf(0), 1, false)]);
        tx.set_next(h + 1, h);
        q.process();
        assert!(irq.broken());
        assert!(out.take().len() <= MAX_DESCRIPTORS);
    }

    /// Random chains on both queues never panic the device.
    #[test]
    fn fuzz_random_chains() {
        let mem = TestMemory::new();
        let out = Captured::default();
        let mut rng = crate::virtio::testing::Rng::new(0xc0de);
        for _ in 0..50 {
            let (mut rx, mut tx) = (Driver::new(&mem, 0, 16), Driver::new(&mem, 1, 16));
            let (mut q, _irq) = queues(&mem, &rx, &tx, &out);
            for _ in 0..8 {
                q.input.enqueue(b"input for the guest");
                if rng.chance(2) {
                    rx.add_random(&mut rng);
                } else {
                    tx.add_random(&mut rng);
                }
                q.process();
            }
        }
    }

    #[test]
    fn device_serves_queues_from_its_worker_and_emergency_writes() {
        let mem = TestMemory::new();
        let (rx, mut tx) = (Driver::new(&mem, 0, 8), Driver::new(&mem, 1, 8));
        let out = Captured::default();
        let input = ConsoleInput::new().unwrap();
        let mut dev = VirtioConsole::new(Box::new(out.clone()), input);
        assert_eq!(dev.device_type(), 3);
        assert_eq!(dev.queue_max_sizes(), vec![QUEUE_SIZE, QUEUE_SIZE]);
        let mut cfg = [0xffu8; 16];
        dev.read_config(0, &mut cfg);
        assert_eq!(cfg, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        dev.write_config(8, &[b'!', 0, 0, 0]);
        dev.write_config(9, b"ignored");
        assert_eq!(out.take(), b"!");

        let irq = Arc::new(TestInterrupt::default());
        let tx_kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let kick = tx_kick.try_clone().unwrap();
        dev.activate(Activation {
            mem: mem.memory(),
            acked_features: dev.features(),
            queues: vec![
                ActiveQueue {
                    index: RX,
                    queue: rx.queue(),
                    kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                },
                ActiveQueue {
                    index: TX,
                    queue: tx.queue(),
                    kick: tx_kick,
                },
            ],
            interrupt: irq.clone(),
        })
        .unwrap();
        mem.write_slice(b"from the worker", mem.buf(0)).unwrap();
        tx.add(&[(mem.buf(0), 15, false)]);
        kick.write(1).unwrap();
        // Bounded wait for the worker thread (not a timing assertion).
        for _ in 0..500 {
            if !tx.used().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(out.take(), b"from the worker");
        dev.reset();
        dev.reset();
        let e = dev
            .activate(Activation {
                mem: mem.memory(),
                acked_features: VIRTIO_F_VERSION_1,
                queues: vec![],
                interrupt: irq,
            })
            .unwrap_err();
        assert!(e.to_string().contains("receive and transmit"), "{e}");
    }
}
