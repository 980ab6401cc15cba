//! The virtio-net device model (virtio 1.x §5.1): a receive and a transmit queue per queue
//! pair (one pair, or N on a multi-queue TAP with a control queue to switch them), a MAC
//! address and link status in configuration space, checksum and segmentation offloads
//! passed through the TAP's virtio-net headers, and mergeable receive buffers.
//!
//! The backend ([`NetBackend`]: the open TAP and the MAC) is opened once when the VMM
//! starts and outlives guest resets; the device model is rebuilt on each boot around an
//! `Arc` of it.

use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mac::MacAddr;
use super::tap::{Tap, TapError, TapName};
use super::worker::{NetStats, Worker};
use crate::virtio::{ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};

/// Queue size offered for both queues (what QEMU and Linux use by default).
pub const QUEUE_SIZE: u16 = 256;
/// Size of the configuration space we serve: mac, status, max_virtqueue_pairs.
const CONFIG_LEN: usize = 10;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Features every virtio-net device here offers.
const BASE_FEATURES: u64 = VIRTIO_F_VERSION_1
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(vn::VIRTIO_NET_F_MAC)
    | bit(vn::VIRTIO_NET_F_STATUS)
    | bit(vn::VIRTIO_NET_F_MRG_RXBUF)
    // Checksum offload both ways: the TAP takes partial checksums from the guest
    // (NEEDS_CSUM) and, with TUN_F_CSUM, hands them to it.
    | bit(vn::VIRTIO_NET_F_CSUM)
    | bit(vn::VIRTIO_NET_F_GUEST_CSUM);

/// Most queue pairs (`queues=N`): TAP queues are file descriptors, worker threads and
/// rings each; 16 is what a large guest uses.
pub const MAX_QUEUE_PAIRS: u16 = 16;
/// Size of the control queue (when there are several pairs).
pub const CTRL_QUEUE_SIZE: u16 = 64;

/// The host end of a virtio-net device: the open TAP (one descriptor per queue pair), the
/// MAC the guest gets, and the offloads this TAP supports.
#[derive(Debug)]
pub struct NetBackend {
    taps: Vec<Tap>,
    mac: MacAddr,
    /// `TUN_F_*` flags the kernel accepted when probed.
    tun_offloads: u32,
    /// Which TAP queues are attached (all, when opened).
    attached: std::sync::Mutex<Vec<bool>>,
}

impl NetBackend {
    /// Opens (or creates, for [`TapName::Auto`]) the TAP, attaches it to `bridge` if given,
    /// and settles the MAC: the one given, else one derived from a named TAP's name (the
    /// same on every start), else a random one.
    pub fn open(
        which: &TapName,
        mac: Option<MacAddr>,
        bridge: Option<&str>,
    ) -> Result<NetBackend, TapError> {
        Self::open_queues(which, mac, bridge, 1)
    }

    /// As [`NetBackend::open`], with `pairs` queue pairs (1..=[`MAX_QUEUE_PAIRS`]) on a
    /// multi-queue TAP; the device then offers MQ and a control queue.
    pub fn open_queues(
        which: &TapName,
        mac: Option<MacAddr>,
        bridge: Option<&str>,
        pairs: u16,
    ) -> Result<NetBackend, TapError> {
        let taps = Tap::open_queues(which, pairs.clamp(1, MAX_QUEUE_PAIRS))?;
        let tap = &taps[0];
        if let Some(br) = bridge {
            tap.attach_to_bridge(br)?;
        }
        let mac = match (mac, which) {
            (Some(m), _) => m,
            (None, TapName::Named(name)) => MacAddr::from_seed(name),
            (None, TapName::Auto) => MacAddr::random().map_err(|err| TapError::Io {
                name: tap.name().to_string(),
                what: "generating a MAC address",
                err,
            })?,
        };
        let tun_offloads = probe_offloads(tap);
        let attached = std::sync::Mutex::new(vec![true; taps.len()]);
        Ok(NetBackend {
            taps,
            mac,
            tun_offloads,
            attached,
        })
    }

    /// The TAP (its first queue).
    pub fn tap(&self) -> &Tap {
        &self.taps[0]
    }

    /// The TAP queue of pair `k`.
    pub fn queue(&self, k: usize) -> &Tap {
        &self.taps[k]
    }

    pub fn queue_pairs(&self) -> usize {
        self.taps.len()
    }

    /// Keeps the first `n` TAP queues attached and detaches the others, so the kernel
    /// queues frames only for the pairs the driver uses.
    pub fn set_active_pairs(&self, n: usize) -> std::io::Result<()> {
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        for (k, tap) in self.taps.iter().enumerate() {
            let want = k < n.max(1);
            if attached[k] != want {
                tap.set_queue_attached(want)?;
                attached[k] = want;
            }
        }
        Ok(())
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Features a device on this backend offers.
    pub fn features(&self) -> u64 {
        let mut f = BASE_FEATURES;
        if self.taps.len() > 1 {
            f |= bit(vn::VIRTIO_NET_F_MQ) | bit(vn::VIRTIO_NET_F_CTRL_VQ);
        }
        let t = self.tun_offloads;
        if t & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) == libc::TUN_F_TSO4 | libc::TUN_F_TSO6 {
            f |= bit(vn::VIRTIO_NET_F_HOST_TSO4)
                | bit(vn::VIRTIO_NET_F_HOST_TSO6)
                | bit(vn::VIRTIO_NET_F_GUEST_TSO4)
                | bit(vn::VIRTIO_NET_F_GUEST_TSO6);
            if t & libc::TUN_F_TSO_ECN != 0 {
                f |= bit(vn::VIRTIO_NET_F_HOST_ECN) | bit(vn::VIRTIO_NET_F_GUEST_ECN);
            }
        }
        if t & libc::TUN_F_UFO != 0 {
            f |= bit(vn::VIRTIO_NET_F_HOST_UFO) | bit(vn::VIRTIO_NET_F_GUEST_UFO);
        }
        f
    }
}

/// Which `TUN_F_*` offloads the TAP accepts: kernels differ (UFO was removed in 4.14 and
/// came back later), so try the full set and then smaller ones. Leaves offloads off.
fn probe_offloads(tap: &Tap) -> u32 {
    let csum = libc::TUN_F_CSUM;
    let tso = libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    let candidates = [
        csum | tso | libc::TUN_F_TSO_ECN | libc::TUN_F_UFO,
        csum | tso | libc::TUN_F_TSO_ECN,
        csum | tso | libc::TUN_F_UFO,
        csum | tso,
        csum,
    ];
    let found = candidates
        .into_iter()
        .find(|&f| tap.set_offload(f).is_ok())
        .unwrap_or(0);
    let _ = tap.set_offload(0);
    found
}

/// The `TUN_F_*` offloads matching what the driver accepted on its receive side: the
/// kernel then hands over only frames the guest can take.
pub fn tun_offloads_for(acked: u64) -> u32 {
    let has = |b: u32| acked & bit(b) != 0;
    if !has(vn::VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut t = libc::TUN_F_CSUM;
    if has(vn::VIRTIO_NET_F_GUEST_TSO4) {
        t |= libc::TUN_F_TSO4;
    }
    if has(vn::VIRTIO_NET_F_GUEST_TSO6) {
        t |= libc::TUN_F_TSO6;
    }
    if has(vn::VIRTIO_NET_F_GUEST_ECN) {
        t |= libc::TUN_F_TSO_ECN;
    }
    if has(vn::VIRTIO_NET_F_GUEST_UFO) {
        t |= libc::TUN_F_UFO;
    }
    t
}

struct Running {
    stop: EventFd,
    thread: JoinHandle<()>,
}

/// A virtio-net device on a [`NetBackend`].
pub struct VirtioNet {
    backend: Arc<NetBackend>,
    stats: Arc<NetStats>,
    acked: u64,
    /// One worker per served queue pair.
    running: Vec<Running>,
}

impl VirtioNet {
    pub fn new(backend: Arc<NetBackend>) -> VirtioNet {
        VirtioNet {
            backend,
            stats: Arc::new(NetStats::default()),
            acked: 0,
            running: Vec::new(),
        }
    }

    /// Frame counters (shared with the worker; read them at any time).
    pub fn stats(&self) -> &Arc<NetStats> {
        &self.stats
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.backend.mac.0);
        // The link is up for as long as the device exists (no link control yet).
        c[6..8].copy_from_slice(&(vn::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // max_virtqueue_pairs (meaningful only with F_MQ).
        let pairs = self.backend.queue_pairs() as u16;
        c[8..10].copy_from_slice(&pairs.to_le_bytes());
        c
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let pairs = self.backend.queue_pairs();
        let mut sizes = vec![QUEUE_SIZE; 2 * pairs];
        if pairs > 1 {
            sizes.push(CTRL_QUEUE_SIZE);
        }
        sizes
    }

    fn features(&self) -> u64 {
        self.backend.features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Everything is read-only for a virtio 1.x driver (only legacy drivers wrote mac).
        log::debug!(
            "virtio-net: ignoring a {}-byte config write at {offset}",
            data.len()
        );
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let Activation {
            mem,
            acked_features,
            queues,
            interrupt,
        } = activation;
        let has = |b: u32| acked_features & bit(b) != 0;
        let dev_pairs = self.backend.queue_pairs();
        // Without MQ the driver uses one pair, and the control queue (if any) is queue 2.
        let pairs = if has(vn::VIRTIO_NET_F_MQ) {
            dev_pairs
        } else {
            1
        };
        let ctrl_index = (2 * pairs) as u16;
        let mut by_index = std::collections::BTreeMap::new();
        for q in queues {
            by_index.insert(q.index, q);
        }
        let event_idx = has(VIRTIO_RING_F_EVENT_IDX);
        for q in by_index.values_mut() {
            if !q.queue.is_valid(&mem) {
                return Err(ActivateError::BadSetup(format!(
                    "virtio-net queue {} is not inside guest memory",
                    q.index
                )));
            }
            q.queue.set_event_idx(event_idx);
        }
        let ctrl = if has(vn::VIRTIO_NET_F_CTRL_VQ) {
            by_index.remove(&ctrl_index)
        } else {
            None
        };
        let mut workers = Vec::new();
        for k in 0..pairs {
            let rx = by_index.remove(&((2 * k) as u16));
            let tx = by_index.remove(&((2 * k + 1) as u16));
            match (rx, tx) {
                (Some(rx), Some(tx)) => workers.push((k, rx, tx)),
                _ if k == 0 => {
                    return Err(ActivateError::BadSetup(
                        "virtio-net needs both its receive and transmit queues enabled".into(),
                    ))
                }
                // A pair the driver left off is not served.
                _ => {}
            }
        }
        if let Some(i) = by_index.keys().next() {
            return Err(ActivateError::BadSetup(format!(
                "virtio-net has no queue {i} with the features accepted"
            )));
        }
        // One pair until the driver asks for more (virtio 1.x §5.1.6.5.5).
        self.backend.set_active_pairs(1)?;
        let tap_flags = tun_offloads_for(acked_features) & self.backend.tun_offloads;
        self.backend.tap().set_offload(tap_flags)?;
        let mut ctrl = ctrl;
        self.acked = acked_features;
        for (k, rx, tx) in workers {
            let stop = EventFd::new(EFD_NONBLOCK)?;
            let mut worker = Worker::new(
                mem.clone(),
                self.backend.clone(),
                k,
                rx,
                tx,
                interrupt.clone(),
                has(vn::VIRTIO_NET_F_MRG_RXBUF),
                self.stats.clone(),
                stop.try_clone()?,
            )?;
            if k == 0 {
                if let Some(c) = ctrl.take() {
                    worker = worker.with_ctrl(c, pairs)?;
                }
            }
            let thread = std::thread::Builder::new()
                .name(format!("virtio-net-{k}"))
                .spawn(move || worker.run())?;
            self.running.push(Running { stop, thread });
        }
        Ok(())
    }

    fn reset(&mut self) {
        for r in &self.running {
            if let Err(e) = r.stop.write(1) {
                log::error!("virtio-net: cannot stop a worker: {e}");
            }
        }
        for r in self.running.drain(..) {
            if r.thread.join().is_err() {
                log::error!("virtio-net: a worker thread panicked");
            }
        }
        if self.acked != 0 {
            let _ = self.backend.tap().set_offload(0);
            self.acked = 0;
        }
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "mac": self.backend.mac.to_string(),
            "acked_features": self.acked,
        })
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.reset();
    }
}
