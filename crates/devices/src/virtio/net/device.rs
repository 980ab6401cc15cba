//! The virtio-net device model (virtio 1.x §5.1): two queues (receive 0, transmit 1), a
//! MAC address and link status in configuration space, checksum and segmentation offloads
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
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
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

/// The host end of a virtio-net device: the open TAP, the MAC the guest gets, and the
/// offloads this TAP supports.
#[derive(Debug)]
pub struct NetBackend {
    tap: Tap,
    mac: MacAddr,
    /// `TUN_F_*` flags the kernel accepted when probed.
    tun_offloads: u32,
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
        let tap = Tap::open(which)?;
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
        let tun_offloads = probe_offloads(&tap);
        Ok(NetBackend {
            tap,
            mac,
            tun_offloads,
        })
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Features a device on this backend offers.
    pub fn features(&self) -> u64 {
        let mut f = BASE_FEATURES;
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
    running: Option<Running>,
}

impl VirtioNet {
    pub fn new(backend: Arc<NetBackend>) -> VirtioNet {
        VirtioNet {
            backend,
            stats: Arc::new(NetStats::default()),
            acked: 0,
            running: None,
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
        // max_virtqueue_pairs (meaningful only with F_MQ): one pair.
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
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
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                i => {
                    return Err(ActivateError::BadSetup(format!(
                        "virtio-net has no queue {i}"
                    )))
                }
            }
        }
        let (Some(mut rx), Some(mut tx)) = (rx, tx) else {
            return Err(ActivateError::BadSetup(
                "virtio-net needs both its receive and transmit queues enabled".into(),
            ));
        };
        let event_idx = acked_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in [&mut rx, &mut tx] {
            if !q.queue.is_valid(&mem) {
                return Err(ActivateError::BadSetup(format!(
                    "virtio-net queue {} is not inside guest memory",
                    q.index
                )));
            }
            q.queue.set_event_idx(event_idx);
        }
        let tap_flags = tun_offloads_for(acked_features) & self.backend.tun_offloads;
        self.backend.tap.set_offload(tap_flags)?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let worker = Worker::new(
            mem,
            self.backend.clone(),
            rx,
            tx,
            interrupt,
            acked_features & bit(vn::VIRTIO_NET_F_MRG_RXBUF) != 0,
            self.stats.clone(),
            stop.try_clone()?,
        )?;
        let thread = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || worker.run())?;
        self.acked = acked_features;
        self.running = Some(Running { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(r) = self.running.take() {
            if let Err(e) = r.stop.write(1) {
                log::error!("virtio-net: cannot stop the worker: {e}");
            }
            if r.thread.join().is_err() {
                log::error!("virtio-net: the worker thread panicked");
            }
        }
        if self.acked != 0 {
            let _ = self.backend.tap.set_offload(0);
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
