//! One queue's worker thread: waits on the queue's kick eventfd and the device's stop
//! eventfd, and serves every available request when kicked.

use std::num::Wrapping;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::{parse_chain, Executor};
use super::{Disk, SEG_MAX};
use crate::virtio::{ActiveQueue, GuestMemory, QueueT, VirtioInterrupt};

const KICK: u64 = 0;
const STOP: u64 = 1;

pub struct Worker {
    mem: GuestMemory,
    q: ActiveQueue,
    exec: Executor,
    interrupt: Arc<dyn VirtioInterrupt>,
    stop: EventFd,
    /// The driver broke the queue's protocol: requests are no longer served until a reset.
    broken: bool,
}

impl Worker {
    pub fn new(
        disk: &Arc<Disk>,
        features: u64,
        mem: GuestMemory,
        mut q: ActiveQueue,
        interrupt: Arc<dyn VirtioInterrupt>,
        stop: EventFd,
    ) -> Worker {
        q.queue
            .set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        Worker {
            mem,
            q,
            exec: Executor::new(disk.clone(), features),
            interrupt,
            stop,
            broken: false,
        }
    }

    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("virtio-blk-q{}", self.q.index))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let epoll = match self.epoll() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-blk queue {}: epoll: {e}", self.q.index);
                self.interrupt.needs_reset();
                return;
            }
        };
        // Requests queued before activation (their kick may have been consumed already).
        self.serve();
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-blk queue {}: epoll: {e}", self.q.index);
                    self.interrupt.needs_reset();
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP => return,
                    _ => {
                        // Level-triggered: the counter must be drained even when broken.
                        let _ = self.q.kick.read();
                        self.serve();
                    }
                }
            }
        }
    }

    fn epoll(&self) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (self.q.kick.as_raw_fd(), KICK),
            (self.stop.as_raw_fd(), STOP),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(epoll)
    }

    /// Serves every available request, then interrupts the driver if it wants to be.
    pub fn serve(&mut self) {
        if self.broken {
            return;
        }
        match self.drain() {
            Ok(true) => match self.q.queue.needs_notification(&self.mem) {
                Ok(true) => {
                    if let Err(e) = self.interrupt.notify_queue(self.q.index) {
                        log::warn!("virtio-blk queue {}: interrupt: {e}", self.q.index);
                    }
                }
                Ok(false) => {}
                Err(e) => self.break_queue(&e.to_string()),
            },
            Ok(false) => {}
            Err(why) => self.break_queue(&why),
        }
    }

    fn break_queue(&mut self, why: &str) {
        log::warn!(
            "virtio-blk queue {}: {why}; the device needs a reset",
            self.q.index
        );
        self.broken = true;
        self.interrupt.needs_reset();
    }

    /// Returns whether any request completed.
    fn drain(&mut self) -> Result<bool, String> {
        let mem = &self.mem;
        let queue = &mut self.q.queue;
        let mut used = false;
        loop {
            if queue.event_idx_enabled() {
                queue.disable_notification(mem).map_err(|e| e.to_string())?;
            }
            loop {
                // virtio-queue refuses such an index only by returning no chain at all;
                // a driver that publishes more heads than the ring holds broke the queue.
                let avail = queue
                    .avail_idx(mem, Ordering::Acquire)
                    .map_err(|e| e.to_string())?;
                if (avail - Wrapping(queue.next_avail())).0 > queue.size() {
                    return Err(format!(
                        "available index {} is more than the queue size ahead of {}",
                        avail.0,
                        queue.next_avail()
                    ));
                }
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let parsed = parse_chain(mem, head, chain, SEG_MAX as usize + 2)
                    .map_err(|e| e.to_string())?;
                let done = self.exec.execute(mem, &parsed);
                queue
                    .add_used(mem, head, done.written)
                    .map_err(|e| e.to_string())?;
                used = true;
            }
            if !queue.event_idx_enabled()
                || !queue.enable_notification(mem).map_err(|e| e.to_string())?
            {
                return Ok(used);
            }
        }
    }
}
