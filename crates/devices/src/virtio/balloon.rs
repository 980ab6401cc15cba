//! virtio-balloon (virtio 1.x §5.5): the host asks the guest to give memory back.
//!
//! The host sets a target (`num_pages` in the configuration space, 4 KiB pages) through
//! [`BalloonControl`]; the driver inflates the balloon by sending the frame numbers of
//! guest pages it gave up on the inflate queue, which the device releases with
//! `madvise(MADV_DONTNEED)` (guest RAM is private anonymous memory, so the host gets the
//! pages back and the guest reads zeroes if it ever touches them again); it deflates by
//! sending frame numbers on the deflate queue, which needs nothing from the device (a page
//! comes back on its next touch). Every frame number is checked against guest RAM; one
//! outside it is skipped.
//!
//! With VIRTIO_BALLOON_F_STATS_VQ the driver keeps one buffer of statistics in the stats
//! queue; the device holds on to it and hands it back when it wants fresh numbers (every
//! [`STATS_PERIOD_MS`] and on [`BalloonControl::request_stats`]), which makes the driver
//! send a new one. VIRTIO_BALLOON_F_DEFLATE_ON_OOM lets the driver deflate under memory
//! pressure; it needs nothing from the device.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::console::copy_config;
use super::descriptors::{add_used, needs_notification, pop_chain, Chain, ChainError};
use super::worker::{Poller, Worker};
use super::{
    ActivateError, Activation, GuestMemory, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};

/// VIRTIO_ID_BALLOON.
pub const DEVICE_TYPE: u32 = 5;
/// The driver keeps a statistics buffer in queue 2.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// The driver may deflate when the guest runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Balloon pages are 4 KiB whatever the guest's page size.
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Queue sizes offered.
pub const QUEUE_SIZE: u16 = 256;
const INFLATE: u16 = 0;
const DEFLATE: u16 = 1;
const STATS: u16 = 2;
/// Frame-number bytes taken from one chain at most (Linux sends 256 frame numbers, 1 KiB);
/// a longer chain is malformed.
pub const MAX_PFN_BYTES: usize = 64 << 10;
/// Statistics entries read from one buffer at most (Linux has 16 tags).
pub const MAX_STATS: usize = 64;
const STAT_SIZE: usize = 10;
const MAX_DESCRIPTORS: usize = 64;
/// How often the device asks the driver for fresh statistics.
pub const STATS_PERIOD_MS: i32 = 5000;
/// num_pages, actual.
const CONFIG_SIZE: usize = 8;
const ACTUAL_OFFSET: usize = 4;

/// The balloon's state that outlives guest reboots and that the VMM's control API reads
/// and drives: the target, what the driver reports, the latest statistics.
pub struct BalloonControl {
    target_pages: AtomicU32,
    actual_pages: AtomicU32,
    stats: Mutex<Option<BalloonStats>>,
    /// The active device's interrupt, for configuration-change notifications.
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Wakes the worker to hand the statistics buffer back.
    stats_request: EventFd,
}

/// Statistics the driver last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalloonStats {
    /// By name (`free-memory`, `available-memory`, …; unknown tags as `tag-N`); memory
    /// figures in bytes, the others as counts.
    pub values: BTreeMap<String, u64>,
    /// When they arrived (seconds since the epoch).
    pub updated: u64,
}

/// What `query-balloon` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalloonInfo {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub stats: Option<BalloonStats>,
}

impl std::fmt::Debug for BalloonControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonControl")
            .field("target_pages", &self.target_pages)
            .field("actual_pages", &self.actual_pages)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BalloonControl {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            target_pages: AtomicU32::new(0),
            actual_pages: AtomicU32::new(0),
            stats: Mutex::new(None),
            interrupt: Mutex::new(None),
            stats_request: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Sets the balloon's target size in 4 KiB pages and tells an active driver.
    pub fn set_target_pages(&self, pages: u32) {
        self.target_pages.store(pages, Ordering::SeqCst);
        if let Some(irq) = lock(&self.interrupt).as_ref() {
            if let Err(e) = irq.notify_config() {
                log::warn!("virtio-balloon: configuration interrupt: {e}");
            }
        }
    }

    /// Asks the driver for fresh statistics (they arrive asynchronously).
    pub fn request_stats(&self) {
        let _ = self.stats_request.write(1);
    }

    pub fn info(&self) -> BalloonInfo {
        BalloonInfo {
            target_pages: self.target_pages.load(Ordering::SeqCst),
            actual_pages: self.actual_pages.load(Ordering::SeqCst),
            stats: lock(&self.stats).clone(),
        }
    }

    /// A new boot: the guest has all its memory again and no driver yet.
    fn reboot(&self) {
        self.actual_pages.store(0, Ordering::SeqCst);
        *lock(&self.stats) = None;
    }
}

/// The virtio-balloon device model, rebuilt on each boot around the lasting
/// [`BalloonControl`].
pub struct VirtioBalloon {
    control: Arc<BalloonControl>,
    features: u64,
    worker: Option<Worker>,
}

impl VirtioBalloon {
    pub fn new(control: Arc<BalloonControl>, deflate_on_oom: bool) -> Self {
        control.reboot();
        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ;
        if deflate_on_oom {
            features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        Self {
            control,
            features,
            worker: None,
        }
    }
}

impl VirtioDevice for VirtioBalloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_SIZE];
        let target = self.control.target_pages.load(Ordering::SeqCst);
        let actual = self.control.actual_pages.load(Ordering::SeqCst);
        config[..4].copy_from_slice(&target.to_le_bytes());
        config[ACTUAL_OFFSET..].copy_from_slice(&actual.to_le_bytes());
        copy_config(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write; partial writes update the bytes given.
        let mut actual = self
            .control
            .actual_pages
            .load(Ordering::SeqCst)
            .to_le_bytes();
        let mut touched = false;
        for (i, &b) in data.iter().enumerate() {
            let Some(at) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) else {
                break;
            };
            if let Some(slot) = at
                .checked_sub(ACTUAL_OFFSET)
                .and_then(|j| actual.get_mut(j))
            {
                *slot = b;
                touched = true;
            }
        }
        if touched {
            self.control
                .actual_pages
                .store(u32::from_le_bytes(actual), Ordering::SeqCst);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let stats_acked = a.acked_features & VIRTIO_BALLOON_F_STATS_VQ != 0;
        let mut queues: [Option<crate::virtio::ActiveQueue>; 3] = [None, None, None];
        for q in a.queues {
            if let Some(slot) = queues.get_mut(usize::from(q.index)) {
                *slot = Some(q);
            }
        }
        let [Some(inflate), Some(deflate), stats] = queues else {
            return Err(ActivateError::BadSetup(
                "virtio-balloon needs its inflate and deflate queues".into(),
            ));
        };
        let stats = if stats_acked { stats } else { None };
        let mut kicks = vec![(inflate.kick, TOKEN_INFLATE), (deflate.kick, TOKEN_DEFLATE)];
        let stats_queue = stats.map(|s| {
            kicks.push((s.kick, TOKEN_STATS));
            s.queue
        });
        let mut state = BalloonQueues {
            mem: a.mem,
            inflate: inflate.queue,
            deflate: deflate.queue,
            stats: stats_queue,
            held_stats: None,
            interrupt: a.interrupt.clone(),
            control: self.control.clone(),
            broken: false,
            released_pages: 0,
            skipped_pages: 0,
        };
        *lock(&self.control.interrupt) = Some(a.interrupt);
        let worker = Worker::spawn("virtio-balloon", move |stop| {
            if let Err(e) = state.run(&stop, &kicks) {
                log::error!("virtio-balloon: worker failed: {e}");
                state.interrupt.needs_reset();
            }
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        *lock(&self.control.interrupt) = None;
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "num_pages": self.control.target_pages.load(Ordering::SeqCst),
            "actual": self.control.actual_pages.load(Ordering::SeqCst),
        })
    }
}

impl Drop for VirtioBalloon {
    fn drop(&mut self) {
        self.reset();
    }
}

const TOKEN_STOP: u64 = 0;
const TOKEN_INFLATE: u64 = 1;
const TOKEN_DEFLATE: u64 = 2;
const TOKEN_STATS: u64 = 3;
const TOKEN_STATS_REQUEST: u64 = 4;

/// The queues of an active balloon: the worker thread's state.
pub struct BalloonQueues {
    pub mem: GuestMemory,
    pub inflate: Queue,
    pub deflate: Queue,
    /// Present when the driver accepted VIRTIO_BALLOON_F_STATS_VQ.
    pub stats: Option<Queue>,
    /// The statistics buffer the device holds until it wants fresh numbers.
    held_stats: Option<u16>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub control: Arc<BalloonControl>,
    pub broken: bool,
    /// Pages given back to the host so far (inflations, not net of deflations).
    pub released_pages: u64,
    /// Frame numbers outside guest RAM that were skipped.
    pub skipped_pages: u64,
}

impl BalloonQueues {
    /// Builds the worker state directly (tests and fuzz targets).
    pub fn new(
        mem: GuestMemory,
        inflate: Queue,
        deflate: Queue,
        stats: Option<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        control: Arc<BalloonControl>,
    ) -> Self {
        Self {
            mem,
            inflate,
            deflate,
            stats,
            held_stats: None,
            interrupt,
            control,
            broken: false,
            released_pages: 0,
            skipped_pages: 0,
        }
    }

    fn run(&mut self, stop: &EventFd, kicks: &[(EventFd, u64)]) -> std::io::Result<()> {
        let mut poller = Poller::new()?;
        poller.add(stop, EventSet::IN, TOKEN_STOP)?;
        poller.add(
            &self.control.stats_request,
            EventSet::IN,
            TOKEN_STATS_REQUEST,
        )?;
        for (fd, token) in kicks {
            poller.add(fd, EventSet::IN, *token)?;
        }
        self.process();
        loop {
            let timeout = if self.stats.is_some() {
                STATS_PERIOD_MS
            } else {
                -1
            };
            let events = poller.wait(timeout)?;
            if events.is_empty() {
                self.release_stats();
                continue;
            }
            for (token, _) in events {
                match token {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_STATS_REQUEST => {
                        let _ = self.control.stats_request.read();
                        self.release_stats();
                    }
                    _ => {
                        if let Some((fd, _)) = kicks.iter().find(|(_, t)| *t == token) {
                            let _ = fd.read();
                        }
                    }
                }
            }
            self.process();
        }
    }

    /// Serves every queue as far as it goes now.
    pub fn process(&mut self) {
        if self.broken {
            return;
        }
        let result = self
            .process_pfns(INFLATE)
            .and_then(|()| self.process_pfns(DEFLATE))
            .and_then(|()| self.process_stats());
        if let Err(e) = result {
            log::warn!("virtio-balloon: {e}; the device needs a reset");
            self.broken = true;
            self.interrupt.needs_reset();
        }
    }

    /// Takes every chain of frame numbers off the inflate or deflate queue.
    fn process_pfns(&mut self, index: u16) -> Result<(), ChainError> {
        let mut used = false;
        loop {
            let queue = if index == INFLATE {
                &mut self.inflate
            } else {
                &mut self.deflate
            };
            let chain = match pop_chain(queue, &self.mem, MAX_DESCRIPTORS) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err((_, e)) => return Err(e),
            };
            let pfns = read_pfns(&chain, &self.mem)?;
            if index == INFLATE {
                self.release(&pfns);
            } else {
                // Deflated pages come back on their next touch; only the bounds matter.
                let bad = pfns.iter().filter(|&&p| page_range(&self.mem, p).is_none());
                self.skipped_pages += bad.count() as u64;
            }
            let queue = if index == INFLATE {
                &mut self.inflate
            } else {
                &mut self.deflate
            };
            add_used(queue, &self.mem, chain.head, 0)?;
            used = true;
        }
        let queue = if index == INFLATE {
            &mut self.inflate
        } else {
            &mut self.deflate
        };
        if used && needs_notification(queue, &self.mem) {
            let _ = self.interrupt.notify_queue(index);
        }
        Ok(())
    }

    /// Gives the named pages back to the host, in runs of adjacent pages.
    fn release(&mut self, pfns: &[u32]) {
        let mut run: Option<(*mut u8, usize)> = None;
        for &pfn in pfns {
            let Some(host) = page_range(&self.mem, pfn) else {
                self.skipped_pages += 1;
                continue;
            };
            self.released_pages += 1;
            match run {
                Some((start, len)) if start.wrapping_add(len) == host => {
                    run = Some((start, len + PAGE_SIZE as usize));
                }
                _ => {
                    if let Some((start, len)) = run {
                        dontneed(start, len);
                    }
                    run = Some((host, PAGE_SIZE as usize));
                }
            }
        }
        if let Some((start, len)) = run {
            dontneed(start, len);
        }
        if self.skipped_pages > 0 {
            log::debug!(
                "virtio-balloon: {} frame numbers outside guest RAM skipped so far",
                self.skipped_pages
            );
        }
    }

    /// Keeps the newest statistics buffer (handing an older one back) and records what it
    /// says.
    fn process_stats(&mut self) -> Result<(), ChainError> {
        let Some(queue) = self.stats.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        loop {
            let chain = match pop_chain(queue, &self.mem, MAX_DESCRIPTORS) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err((_, e)) => return Err(e),
            };
            if !chain.writable.is_empty() {
                return Err(ChainError::Order);
            }
            let bytes = chain.read(&self.mem, MAX_STATS * STAT_SIZE)?;
            *lock(&self.control.stats) = Some(parse_stats(&bytes));
            if let Some(old) = self.held_stats.replace(chain.head) {
                add_used(queue, &self.mem, old, 0)?;
                used = true;
            }
        }
        if used && needs_notification(queue, &self.mem) {
            let _ = self.interrupt.notify_queue(STATS);
        }
        Ok(())
    }

    /// Hands the held statistics buffer back so that the driver sends fresh numbers.
    pub fn release_stats(&mut self) {
        if self.broken {
            return;
        }
        let (Some(queue), Some(head)) = (self.stats.as_mut(), self.held_stats.take()) else {
            return;
        };
        if add_used(queue, &self.mem, head, 0).is_err() {
            self.broken = true;
            self.interrupt.needs_reset();
            return;
        }
        if needs_notification(queue, &self.mem) {
            let _ = self.interrupt.notify_queue(STATS);
        }
    }
}

/// The frame numbers in a chain (little-endian u32s; a trailing partial one is ignored).
fn read_pfns(chain: &Chain, mem: &GuestMemory) -> Result<Vec<u32>, ChainError> {
    if !chain.writable.is_empty() {
        return Err(ChainError::Order);
    }
    if chain.readable_len() > MAX_PFN_BYTES {
        return Err(ChainError::TooLong(MAX_PFN_BYTES / 4));
    }
    let bytes = chain.read(mem, MAX_PFN_BYTES)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The host address of guest page `pfn` if the whole page is guest RAM.
fn page_range(mem: &GuestMemory, pfn: u32) -> Option<*mut u8> {
    let gpa = GuestAddress(u64::from(pfn) << PAGE_SHIFT);
    let region = mem.find_region(gpa)?;
    let offset = gpa.0 - region.start_addr().0;
    if offset.checked_add(PAGE_SIZE)? > region.len() {
        return None;
    }
    mem.get_host_address(gpa).ok()
}

fn dontneed(start: *mut u8, len: usize) {
    // SAFETY: `start..start + len` lies inside one of guest memory's anonymous mappings
    // (each page was looked up in the memory map, runs only join adjacent host pages of
    // the mapping that is alive for as long as `mem` is). MADV_DONTNEED drops the pages'
    // contents — the guest gave them up — and never makes the range invalid to access.
    let rc = unsafe { libc::madvise(start.cast(), len, libc::MADV_DONTNEED) };
    if rc != 0 {
        log::warn!(
            "virtio-balloon: madvise: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Names of the statistics tags (virtio 1.x §5.5.6.3 and Linux's later additions) and
/// whether their value is a byte count.
const STAT_NAMES: [&str; 16] = [
    "swap-in",
    "swap-out",
    "major-faults",
    "minor-faults",
    "free-memory",
    "total-memory",
    "available-memory",
    "disk-caches",
    "hugetlb-allocations",
    "hugetlb-failures",
    "oom-kills",
    "alloc-stalls",
    "async-scans",
    "direct-scans",
    "async-reclaims",
    "direct-reclaims",
];

/// Parses `struct virtio_balloon_stat { le16 tag; le64 val; }` entries; a trailing partial
/// entry is ignored.
pub fn parse_stats(bytes: &[u8]) -> BalloonStats {
    let mut values = BTreeMap::new();
    for e in bytes.chunks_exact(STAT_SIZE).take(MAX_STATS) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[2..]);
        let name = STAT_NAMES
            .get(usize::from(tag))
            .map(|s| s.to_string())
            .unwrap_or_else(|| format!("tag-{tag}"));
        values.insert(name, u64::from_le_bytes(v));
    }
    let updated = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BalloonStats { values, updated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{Driver, TestInterrupt, TestMemory};
    use crate::virtio::ActiveQueue;
    use vm_memory::Bytes;

    fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
        pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    fn queues<'a>(
        mem: &'a TestMemory,
        stats: bool,
    ) -> (
        Driver<'a>,
        Driver<'a>,
        Driver<'a>,
        BalloonQueues,
        Arc<TestInterrupt>,
    ) {
        let (i, d, s) = (
            Driver::new(mem, 0, 16),
            Driver::new(mem, 1, 16),
            Driver::new(mem, 2, 16),
        );
        let irq = Arc::new(TestInterrupt::default());
        let q = BalloonQueues::new(
            mem.memory(),
            i.queue(),
            d.queue(),
            stats.then(|| s.queue()),
            irq.clone(),
            BalloonControl::new().unwrap(),
        );
        (i, d, s, q, irq)
    }

    #[test]
    fn inflate_releases_the_named_pages_and_skips_others() {
        let mem = TestMemory::new();
        let (mut inflate, mut deflate, _, mut q, irq) = queues(&mem, false);
        // Guest pages 0x800..0x804 (8 MiB up) hold data.
        let base = 0x800u32;
        for p in base..base + 4 {
            mem.write_slice(&[0xaa; 4096], GuestAddress(u64::from(p) << 12))
                .unwrap();
        }
        // Inflate three of them (two adjacent) plus frames outside RAM (past 16 MiB, and
        // the last u32 frame number).
        let list = pfn_bytes(&[base, base + 1, base + 3, 0x10_0000, u32::MAX]);
        mem.write_slice(&list, mem.buf(0)).unwrap();
        let h = inflate.add(&[(mem.buf(0), list.len() as u32, false)]);
        q.process();
        assert_eq!(inflate.used(), vec![(h, 0)]);
        assert_eq!(irq.take_queues(), vec![INFLATE]);
        assert_eq!((q.released_pages, q.skipped_pages), (3, 2));
        let byte = |p: u32| {
            let mut b = [0u8; 1];
            mem.read_slice(&mut b, GuestAddress((u64::from(p) << 12) + 100))
                .unwrap();
            b[0]
        };
        assert_eq!(
            [byte(base), byte(base + 1), byte(base + 2), byte(base + 3)],
            [0, 0, 0xaa, 0],
            "released pages read as zero, the others keep their data"
        );
        // Deflate: the pages are simply used again.
        mem.write_slice(&pfn_bytes(&[base]), mem.buf(1)).unwrap();
        let h = deflate.add(&[(mem.buf(1), 4, false)]);
        q.process();
        assert_eq!(deflate.used(), vec![(h, 0)]);
        assert!(!irq.broken());
    }

    #[test]
    fn statistics_are_kept_and_the_buffer_handed_back_on_request() {
        let mem = TestMemory::new();
        let (_, _, mut stats, mut q, irq) = queues(&mem, true);
        let mut buf = Vec::new();
        for (tag, val) in [(4u16, 100u64 << 20), (6, 200 << 20), (99, 7)] {
            buf.extend(tag.to_le_bytes());
            buf.extend(val.to_le_bytes());
        }
        mem.write_slice(&buf, mem.buf(0)).unwrap();
        let h = stats.add(&[(mem.buf(0), buf.len() as u32 + 3, false)]);
        q.process();
        // Held, not returned, until the device wants fresh numbers.
        assert!(stats.used().is_empty());
        let got = q.control.info().stats.unwrap();
        assert_eq!(got.values["free-memory"], 100 << 20);
        assert_eq!(got.values["available-memory"], 200 << 20);
        assert_eq!(got.values["tag-99"], 7);
        q.release_stats();
        assert_eq!(stats.used(), vec![(h, 0)]);
        assert_eq!(irq.take_queues(), vec![STATS]);
        q.release_stats();
        assert!(stats.used().is_empty(), "nothing held, nothing returned");
        // A second buffer while one is held: the older one goes back.
        let h1 = stats.add(&[(mem.buf(0), 10, false)]);
        let h2 = stats.add(&[(mem.buf(0), 10, false)]);
        q.process();
        assert_eq!(stats.used(), vec![(h1, 0)]);
        q.release_stats();
        assert_eq!(stats.used(), vec![(h2, 0)]);
        assert!(!irq.broken());
    }

    #[test]
    fn hostile_chains_break_the_device_not_the_vmm() {
        let mem = TestMemory::new();
        // A write-only inflate buffer.
        let (mut inflate, _, _, mut q, irq) = queues(&mem, false);
        inflate.add(&[(mem.buf(0), 8, true)]);
        q.process();
        assert!(irq.broken() && q.broken);
        // An oversized list of frame numbers.
        let (mut inflate, _, _, mut q, irq) = queues(&mem, false);
        inflate.add(&[(mem.buf(0), 60 << 10, false), (mem.buf(1), 60 << 10, false)]);
        q.process();
        assert!(irq.broken());
        assert_eq!(q.released_pages, 0);
        // A stats buffer outside RAM.
        let (_, _, mut stats, mut q, irq) = queues(&mem, true);
        stats.add(&[(GuestAddress(1 << 40), 10, false)]);
        q.process();
        assert!(irq.broken());
    }

    /// Random chains on every queue never panic the device (frame numbers outside guest
    /// RAM are skipped, see `page_range`).
    #[test]
    fn fuzz_random_chains() {
        let mem = TestMemory::new();
        let mut rng = crate::virtio::testing::Rng::new(0xba11);
        for _ in 0..50 {
            let (mut i, mut d, mut s, mut q, _irq) = queues(&mem, true);
            for _ in 0..8 {
                match rng.below(4) {
                    0 => i.add_random(&mut rng),
                    1 => d.add_random(&mut rng),
                    2 => s.add_random(&mut rng),
                    _ => {
                        q.release_stats();
                        0
                    }
                };
                q.process();
            }
        }
    }

    #[test]
    fn config_target_and_actual() {
        let control = BalloonControl::new().unwrap();
        let mut dev = VirtioBalloon::new(control.clone(), true);
        assert_eq!(dev.device_type(), 5);
        assert_eq!(
            dev.features(),
            VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
        );
        assert_eq!(
            VirtioBalloon::new(control.clone(), false).features() & VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
            0
        );
        control.set_target_pages(0x1234);
        let mut cfg = [0xff; 12];
        dev.read_config(0, &mut cfg);
        assert_eq!(cfg, [0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // The driver writes `actual`, byte-wise or whole; `num_pages` is not its to write.
        dev.write_config(4, &0x1200u32.to_le_bytes());
        dev.write_config(0, &[9, 9, 9, 9, 0x34]);
        dev.write_config(u64::MAX, &[1, 2]);
        let info = control.info();
        assert_eq!((info.target_pages, info.actual_pages), (0x1234, 0x1234));
        assert_eq!(dev.state()["actual"], 0x1234);
    }

    #[test]
    fn device_worker_serves_kicks_and_config_changes() {
        let mem = TestMemory::new();
        let (mut inflate, deflate, mut stats) = (
            Driver::new(&mem, 0, 16),
            Driver::new(&mem, 1, 16),
            Driver::new(&mem, 2, 16),
        );
        let control = BalloonControl::new().unwrap();
        let mut dev = VirtioBalloon::new(control.clone(), false);
        let irq = Arc::new(TestInterrupt::default());
        let kicks: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let mut buf = Vec::new();
        buf.extend(4u16.to_le_bytes());
        buf.extend(42u64.to_le_bytes());
        mem.write_slice(&buf, mem.buf(1)).unwrap();
        let sh = stats.add(&[(mem.buf(1), 10, false)]);
        dev.activate(Activation {
            mem: mem.memory(),
            acked_features: dev.features(),
            queues: [
                (inflate.queue(), 0),
                (deflate.queue(), 1),
                (stats.queue(), 2),
            ]
            .into_iter()
            .zip(&kicks)
            .map(|((queue, index), k)| ActiveQueue {
                index,
                queue,
                kick: k.try_clone().unwrap(),
            })
            .collect(),
            interrupt: irq.clone(),
        })
        .unwrap();
        control.set_target_pages(10);
        assert_eq!(irq.configs.load(Ordering::SeqCst), 1);

        mem.write_slice(&pfn_bytes(&[0x900]), mem.buf(0)).unwrap();
        let h = inflate.add(&[(mem.buf(0), 4, false)]);
        kicks[0].write(1).unwrap();
        // Bounded waits for the worker thread (not timing assertions).
        let mut used = Vec::new();
        for _ in 0..500 {
            used.extend(inflate.used());
            if !used.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(used, vec![(h, 0)]);
        control.request_stats();
        let mut used = Vec::new();
        for _ in 0..500 {
            used.extend(stats.used());
            if !used.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(used, vec![(sh, 0)]);
        assert_eq!(control.info().stats.unwrap().values["free-memory"], 42);
        dev.reset();
        control.set_target_pages(11);
        assert_eq!(
            irq.configs.load(Ordering::SeqCst),
            1,
            "no driver, no interrupt"
        );
        let e = dev
            .activate(Activation {
                mem: mem.memory(),
                acked_features: VIRTIO_F_VERSION_1,
                queues: vec![],
                interrupt: irq,
            })
            .unwrap_err();
        assert!(e.to_string().contains("inflate and deflate"), "{e}");
    }
}
