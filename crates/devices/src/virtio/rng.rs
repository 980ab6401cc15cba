//! virtio-rng (virtio 1.x §5.4): one request queue; the driver posts device-writable
//! buffers and the device fills them with bytes from the host's getrandom(2).
//!
//! A worker thread serves the queue: it waits on the queue's kick eventfd and its own stop
//! eventfd. A request fills at most [`MAX_REQUEST`] bytes however long the chain says it is,
//! and chains longer than the queue are cut short by virtio-queue; a chain whose buffers are
//! not in guest RAM makes the device ask for a reset (virtio-rng has no status byte).

use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    ActivateError, Activation, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};

/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes served per request (the Linux driver asks for at most a page or so).
pub const MAX_REQUEST: usize = 64 << 10;

/// Fills `buf` from the host's random source.
pub fn host_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

struct Worker {
    stop: EventFd,
    thread: JoinHandle<()>,
}

/// The virtio-rng device model.
#[derive(Default)]
pub struct VirtioRng {
    worker: Option<Worker>,
}

impl VirtioRng {
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let Activation {
            mem,
            queues,
            interrupt,
            ..
        } = activation;
        let Some(queue) = queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::BadSetup(
                "the request queue (0) is not enabled".into(),
            ));
        };
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_worker = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("virtio-rng".into())
            .spawn(move || serve(queue, mem, interrupt, stop_worker))?;
        self.worker = Some(Worker { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.stop.write(1);
            let _ = w.thread.join();
        }
    }
}

impl Drop for VirtioRng {
    fn drop(&mut self) {
        self.reset();
    }
}

const KICK: u64 = 0;
const STOP: u64 = 1;

fn serve(mut q: ActiveQueue, mem: GuestMemory, interrupt: Arc<dyn VirtioInterrupt>, stop: EventFd) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            log::error!("virtio-rng: epoll: {e}");
            interrupt.needs_reset();
            return;
        }
    };
    for (fd, data) in [(&q.kick, KICK), (&stop, STOP)] {
        use std::os::fd::AsRawFd;
        let ev = EpollEvent::new(EventSet::IN, data);
        if let Err(e) = epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), ev) {
            log::error!("virtio-rng: epoll: {e}");
            interrupt.needs_reset();
            return;
        }
    }
    let mut events = [EpollEvent::default(); 2];
    // Buffers the driver queued before DRIVER_OK are served at once.
    let mut broken = !process(&mut q, &mem, interrupt.as_ref());
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("virtio-rng: epoll wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                STOP => return,
                _ => {
                    let _ = q.kick.read();
                    if !broken {
                        broken = !process(&mut q, &mem, interrupt.as_ref());
                    }
                }
            }
        }
    }
}

/// Serves every available request; false when the queue is unusable (the device then asks
/// for a reset and stops serving it).
pub fn process(q: &mut ActiveQueue, mem: &GuestMemory, interrupt: &dyn VirtioInterrupt) -> bool {
    let mut buf = vec![0u8; 4096];
    while let Some(chain) = q.queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut written: usize = 0;
        let mut ok = true;
        for desc in chain {
            if !desc.is_write_only() {
                // Device-readable buffers carry nothing for virtio-rng; skip them.
                continue;
            }
            let mut left = (desc.len() as usize).min(MAX_REQUEST - written);
            let mut addr = desc.addr();
            while left > 0 {
                let n = left.min(buf.len());
                if host_random(&mut buf[..n]).is_err() {
                    ok = false;
                    break;
                }
                let Some(next) = addr.checked_add(n as u64) else {
                    ok = false;
                    break;
                };
                if mem.write_slice(&buf[..n], addr).is_err() {
                    ok = false;
                    break;
                }
                addr = next;
                written += n;
                left -= n;
            }
            if !ok || written >= MAX_REQUEST {
                break;
            }
        }
        if !ok {
            log::warn!("virtio-rng: request {head} has buffers outside guest RAM");
            interrupt.needs_reset();
            return false;
        }
        if q.queue.add_used(mem, head, written as u32).is_err() {
            interrupt.needs_reset();
            return false;
        }
    }
    match q.queue.needs_notification(mem) {
        Ok(true) => {
            let _ = interrupt.notify_queue(q.index);
        }
        Ok(false) => {}
        Err(_) => {
            interrupt.needs_reset();
            return false;
        }
    }
    true
}
