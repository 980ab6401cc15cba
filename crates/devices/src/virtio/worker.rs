//! A device's worker thread and the eventfd that stops it.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A running worker thread; dropping it (or [`Worker::stop`]) signals its stop eventfd
/// and joins it.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `body` on a thread named `name`; `body` gets the stop eventfd to watch and
    /// must return soon after it becomes readable.
    pub fn spawn<F>(name: &str, body: F) -> io::Result<Self>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let theirs = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || body(theirs))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            if t.join().is_err() {
                log::error!("a virtio device worker panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.join();
    }
}

/// An epoll set over eventfds and sockets, keyed by caller-chosen tokens.
pub struct Poller {
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            events: vec![EpollEvent::default(); 64],
        })
    }

    /// Watches `fd` for `events` (level-triggered unless the set says otherwise).
    pub fn add(&self, fd: &impl AsRawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(events, token),
        )
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: &impl AsRawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd.as_raw_fd(),
            EpollEvent::new(events, token),
        )
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: &impl AsRawFd) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        );
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns the (token, events) that fired.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<Vec<(u64, EventSet)>> {
        loop {
            match self.epoll.wait(timeout_ms, &mut self.events) {
                Ok(n) => {
                    return Ok(self.events[..n]
                        .iter()
                        .map(|e| (e.data(), e.event_set()))
                        .collect())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
