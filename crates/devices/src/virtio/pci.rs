//! The modern virtio-pci transport (virtio 1.x §4.1): a PCI function (vendor 0x1af4,
//! device 0x1040 + type, revision 1) with one 64-bit memory BAR holding the common
//! configuration, ISR, device configuration and notification structures plus the MSI-X
//! table and PBA, each described by a vendor capability.
//!
//! BAR 0 layout (32 KiB):
//!
//! ```text
//! 0x0000  common configuration (struct virtio_pci_common_cfg, 0x38 bytes)
//! 0x1000  ISR status (1 byte; reading clears it and lowers INTx)
//! 0x2000  device-specific configuration (up to 4 KiB)
//! 0x3000  queue notifications: queue n at 0x3000 + 4 n (ioeventfds after DRIVER_OK)
//! 0x4000  MSI-X table (16 bytes per vector, up to 256 vectors)
//! 0x5000  MSI-X pending-bit array
//! ```
//!
//! The driver's status writes go through a state machine that enforces the order virtio
//! 1.x §3.1.1 asks for: FEATURES_OK sticks only if the accepted features are a subset of
//! those offered and include VERSION_1; queues can be configured and enabled only between
//! FEATURES_OK and DRIVER_OK, with a power-of-two size no larger than the device's maximum
//! and rings inside guest RAM; DRIVER_OK without FEATURES_OK is refused. A notification
//! before DRIVER_OK is counted and ignored. A driver error the device cannot otherwise
//! report (an invalid queue enabled, an activation failure, a device calling
//! [`VirtioInterrupt::needs_reset`]) sets DEVICE_NEEDS_RESET and raises a configuration
//! interrupt; the VMM keeps running.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    ActivateError, Activation, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::pci::config::{BarKind, PciConfig, PciIds};
use crate::pci::msix::{Msix, NO_VECTOR};
use crate::pci::{PciDevice, VmHooks, CAP_ID_MSIX, CAP_ID_VENDOR};
use crate::BusDevice;

/// Vendor id of virtio devices.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern device ids are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;

/// BAR 0 size and the offsets of its structures.
pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON_OFFSET: u64 = 0x0000;
pub const COMMON_SIZE: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const DEVICE_CFG_SIZE: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between the notification addresses of consecutive queues.
pub const NOTIFY_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Queues the layout has room for (notification area / multiplier).
pub const MAX_QUEUES: usize = 0x1000 / NOTIFY_MULTIPLIER as usize;
/// MSI-X vectors the layout has room for.
pub const MAX_VECTORS: u16 = 256;

/// virtio_pci_cap cfg_type values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

const S_ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
const S_DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
const S_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const S_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const S_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const S_FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;

/// ISR bits (INTx mode).
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// PCI class code of each device type (as drivers and tools expect to see them).
fn class_code(device_type: u32) -> u32 {
    use virtio_bindings::virtio_ids::*;
    match device_type {
        VIRTIO_ID_NET => 0x02_0000,
        VIRTIO_ID_BLOCK => 0x01_8000,
        VIRTIO_ID_CONSOLE => 0x07_8000,
        _ => 0x00_ff00,
    }
}

/// Counters of driver behaviour worth seeing when a guest misbehaves.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Notifications written before DRIVER_OK (ignored).
    pub early_notifies: AtomicU64,
    /// Writes refused by the state machine (wrong state, bad queue size, …).
    pub refused_writes: AtomicU64,
}

struct IrqState {
    msix: Option<Msix>,
    queue_vectors: Vec<u16>,
    config_vector: u16,
    isr: u8,
    intx_high: bool,
}

/// The interrupt side of the transport, shared with the device's workers.
pub struct PciInterrupt {
    hooks: Arc<dyn VmHooks>,
    state: Mutex<IrqState>,
    intx_gsi: u32,
    slot: usize,
    needs_reset: AtomicBool,
    generation: AtomicU8,
}

impl PciInterrupt {
    fn lock(&self) -> MutexGuard<'_, IrqState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn raise(&self, vector_of: impl FnOnce(&IrqState) -> u16, isr_bit: u8) {
        let mut s = self.lock();
        let vector = vector_of(&s);
        match s.msix.as_mut() {
            Some(m) if m.enabled() => m.trigger(vector),
            _ => {
                s.isr |= isr_bit;
                if !s.intx_high {
                    s.intx_high = true;
                    if let Err(e) = self.hooks.set_irq_line(self.intx_gsi, self.slot, true) {
                        log::warn!("virtio-pci INTx on GSI {}: {e}", self.intx_gsi);
                    }
                }
            }
        }
    }

    /// Reads and clears the ISR, lowering INTx.
    fn take_isr(&self) -> u8 {
        let mut s = self.lock();
        let v = std::mem::take(&mut s.isr);
        if s.intx_high {
            s.intx_high = false;
            let _ = self.hooks.set_irq_line(self.intx_gsi, self.slot, false);
        }
        v
    }

    fn reset(&self) {
        let mut s = self.lock();
        s.queue_vectors.fill(NO_VECTOR);
        s.config_vector = NO_VECTOR;
        s.isr = 0;
        if s.intx_high {
            s.intx_high = false;
            let _ = self.hooks.set_irq_line(self.intx_gsi, self.slot, false);
        }
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn notify_queue(&self, queue_index: u16) -> std::io::Result<()> {
        self.raise(
            |s| {
                s.queue_vectors
                    .get(usize::from(queue_index))
                    .copied()
                    .unwrap_or(NO_VECTOR)
            },
            ISR_QUEUE,
        );
        Ok(())
    }

    fn notify_config(&self) -> std::io::Result<()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.raise(|s| s.config_vector, ISR_CONFIG);
        Ok(())
    }

    fn needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            log::warn!("virtio device in PCI slot {} needs a reset", self.slot);
            let _ = self.notify_config();
        }
    }
}

/// A queue as the driver configures it through the common configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSetup {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueSetup {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    /// A virtio-queue [`Queue`] with this setup, if the setup is valid for `mem`.
    fn to_queue(self, mem: &GuestMemory, event_idx: bool) -> Option<Queue> {
        let mut q = Queue::new(self.max_size).ok()?;
        q.try_set_size(self.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.used)).ok()?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q.is_valid(mem).then_some(q)
    }
}

/// Guest-visible transport state (for snapshots and migration; restoring it comes with
/// them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioPciState {
    pub bar_addr: u64,
    pub command: u32,
    pub status: u8,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub queue_select: u16,
    pub queues: Vec<QueueSetup>,
    pub queue_vectors: Vec<u16>,
    pub config_vector: u16,
    pub isr: u8,
    pub msix: Option<crate::pci::msix::MsixState>,
    pub needs_reset: bool,
    pub config_generation: u8,
    /// The device model's own state ([`VirtioDevice::state`]).
    pub device: serde_json::Value,
}

/// A kick eventfd of an active queue, with where (if anywhere) it is an ioeventfd.
struct Kick {
    queue: u16,
    fd: EventFd,
    ioevent_at: Option<u64>,
}

/// How to build a [`VirtioPciDevice`].
pub struct VirtioPciParams {
    /// Address of BAR 0 ([`BAR_SIZE`] bytes, aligned to it), from `PciRoot::allocate_bar`.
    pub bar_addr: u64,
    /// The slot the device goes in and the GSI its INTA# is routed to (the DSDT's _PRT).
    pub slot: usize,
    pub intx_gsi: u32,
    /// Offer MSI-X (needs KVM GSI routing).
    pub msix: bool,
}

/// A virtio device model behind the virtio-pci transport.
pub struct VirtioPciDevice {
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    hooks: Arc<dyn VmHooks>,
    mem: GuestMemory,
    interrupt: Arc<PciInterrupt>,
    /// Where BAR 0 is decoded now (ioeventfd addresses follow it).
    bar_addr: u64,
    msix_cap: Option<usize>,
    pci_cfg_cap: usize,
    offered: u64,
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    queues: Vec<QueueSetup>,
    active: bool,
    kicks: Vec<Kick>,
    stats: Arc<TransportStats>,
}

impl VirtioPciDevice {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        hooks: Arc<dyn VmHooks>,
        params: VirtioPciParams,
    ) -> std::io::Result<Self> {
        let device_type = device.device_type();
        let mut max_sizes = device.queue_max_sizes();
        if max_sizes.len() > MAX_QUEUES {
            log::warn!(
                "virtio device type {device_type}: {} queues, the transport serves {MAX_QUEUES}",
                max_sizes.len()
            );
            max_sizes.truncate(MAX_QUEUES);
        }
        let queues: Vec<QueueSetup> = max_sizes.iter().map(|&m| QueueSetup::new(m)).collect();
        let mut config = PciConfig::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE + device_type as u16,
            revision: 1,
            class: class_code(device_type),
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: 0x40,
            interrupt_pin: 1,
        });
        config.add_bar(0, params.bar_addr, BAR_SIZE, BarKind::Mem64);
        // Firmware would leave the routed line here; ACPI guests use _PRT anyway.
        config.write(15, 0, &[params.intx_gsi as u8]);

        let vcap = |cfg_type: u8, offset: u64, length: u64, extra: &[u8]| {
            let mut body = vec![(16 + extra.len()) as u8, cfg_type, 0, 0, 0, 0];
            body.extend_from_slice(&(offset as u32).to_le_bytes());
            body.extend_from_slice(&(length as u32).to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        let full = |e| std::io::Error::other(format!("virtio-pci capabilities: {e}"));
        config
            .add_capability(
                CAP_ID_VENDOR,
                &vcap(CAP_COMMON, COMMON_OFFSET, COMMON_SIZE, &[]),
            )
            .map_err(full)?;
        config
            .add_capability(CAP_ID_VENDOR, &vcap(CAP_ISR, ISR_OFFSET, 1, &[]))
            .map_err(full)?;
        config
            .add_capability(
                CAP_ID_VENDOR,
                &vcap(CAP_DEVICE, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE, &[]),
            )
            .map_err(full)?;
        let notify_len = (queues.len().max(1) as u64) * u64::from(NOTIFY_MULTIPLIER);
        config
            .add_capability(
                CAP_ID_VENDOR,
                &vcap(
                    CAP_NOTIFY,
                    NOTIFY_OFFSET,
                    notify_len,
                    &NOTIFY_MULTIPLIER.to_le_bytes(),
                ),
            )
            .map_err(full)?;
        // VIRTIO_PCI_CAP_PCI_CFG: a window onto the BAR through configuration space. The
        // driver sets bar (byte 4), offset (+8) and length (+12), then accesses data (+16).
        let pci_cfg_cap = config
            .add_capability(CAP_ID_VENDOR, &vcap(CAP_PCI_CFG, 0, 0, &[0; 4]))
            .map_err(full)?;
        config.set_writable(pci_cfg_cap + 4, 0xff);
        config.set_writable(pci_cfg_cap + 8, u32::MAX);
        config.set_writable(pci_cfg_cap + 12, u32::MAX);

        let (msix, msix_cap) = if params.msix {
            let vectors = (queues.len() + 1).min(usize::from(MAX_VECTORS)) as u16;
            let msix = Msix::new(vectors, hooks.clone())?;
            let mut body = msix.control().to_le_bytes().to_vec();
            // BIR 0 in the low 3 bits of both offsets.
            body.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
            body.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
            let cap = config.add_capability(CAP_ID_MSIX, &body).map_err(full)?;
            // Enable and function mask are the writable bits of message control.
            config.set_writable(cap, 0xc000_0000);
            (Some(msix), Some(cap))
        } else {
            (None, None)
        };

        let interrupt = Arc::new(PciInterrupt {
            hooks: hooks.clone(),
            state: Mutex::new(IrqState {
                msix,
                queue_vectors: vec![NO_VECTOR; queues.len()],
                config_vector: NO_VECTOR,
                isr: 0,
                intx_high: false,
            }),
            intx_gsi: params.intx_gsi,
            slot: params.slot,
            needs_reset: AtomicBool::new(false),
            generation: AtomicU8::new(0),
        });
        let offered = device.features() | VIRTIO_F_VERSION_1;
        Ok(Self {
            config,
            device,
            hooks,
            mem,
            interrupt,
            bar_addr: params.bar_addr,
            msix_cap,
            pci_cfg_cap,
            offered,
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues,
            active: false,
            kicks: Vec::new(),
            stats: Arc::new(TransportStats::default()),
        })
    }

    pub fn state(&self) -> VirtioPciState {
        let irq = self.interrupt.lock();
        VirtioPciState {
            bar_addr: self.bar_addr,
            command: self.config.command(),
            status: self.status,
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            queues: self.queues.clone(),
            queue_vectors: irq.queue_vectors.clone(),
            config_vector: irq.config_vector,
            isr: irq.isr,
            msix: irq.msix.as_ref().map(Msix::state),
            needs_reset: self.interrupt.needs_reset.load(Ordering::SeqCst),
            config_generation: self.interrupt.generation.load(Ordering::SeqCst),
            device: self.device.state(),
        }
    }

    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    /// The interrupt object handed to the device (tests raise interrupts through it).
    pub fn interrupt(&self) -> Arc<PciInterrupt> {
        self.interrupt.clone()
    }

    /// The device status the driver reads: its own bits plus DEVICE_NEEDS_RESET.
    pub fn status(&self) -> u8 {
        let nr = self.interrupt.needs_reset.load(Ordering::SeqCst);
        self.status | if nr { S_NEEDS_RESET } else { 0 }
    }

    fn refuse(&self, what: std::fmt::Arguments<'_>) {
        self.stats.refused_writes.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "virtio-pci (type {}): refused: {what}",
            self.device.device_type()
        );
    }

    // ---- common configuration ----

    fn selected(&self) -> Option<&QueueSetup> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The common configuration structure as the driver sees it now.
    fn common_image(&self) -> [u8; COMMON_SIZE as usize] {
        let mut b = [0u8; COMMON_SIZE as usize];
        let put = |b: &mut [u8], off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        let df = match self.device_feature_select {
            0 => self.offered as u32,
            1 => (self.offered >> 32) as u32,
            _ => 0,
        };
        let drf = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        let irq = self.interrupt.lock();
        let q = self.selected();
        put(&mut b, 0x00, &self.device_feature_select.to_le_bytes());
        put(&mut b, 0x04, &df.to_le_bytes());
        put(&mut b, 0x08, &self.driver_feature_select.to_le_bytes());
        put(&mut b, 0x0c, &drf.to_le_bytes());
        put(&mut b, 0x10, &irq.config_vector.to_le_bytes());
        put(&mut b, 0x12, &(self.queues.len() as u16).to_le_bytes());
        b[0x14] = self.status();
        b[0x15] = self.interrupt.generation.load(Ordering::SeqCst);
        put(&mut b, 0x16, &self.queue_select.to_le_bytes());
        if let Some(q) = q {
            put(&mut b, 0x18, &q.size.to_le_bytes());
            let v = irq.queue_vectors[usize::from(self.queue_select)];
            put(&mut b, 0x1a, &v.to_le_bytes());
            put(&mut b, 0x1c, &u16::from(q.enabled).to_le_bytes());
            put(&mut b, 0x1e, &self.queue_select.to_le_bytes());
            put(&mut b, 0x20, &q.desc.to_le_bytes());
            put(&mut b, 0x28, &q.avail.to_le_bytes());
            put(&mut b, 0x30, &q.used.to_le_bytes());
        }
        b
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let img = self.common_image();
        for (i, d) in data.iter_mut().enumerate() {
            *d = img.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut img = self.common_image();
        let start = offset as usize;
        let end = start + data.len();
        if end > img.len() {
            return;
        }
        img[start..end].copy_from_slice(data);
        // Fields as (offset, size); each one the write touched is applied.
        const FIELDS: [(usize, usize); 15] = [
            (0x00, 4),
            (0x08, 4),
            (0x0c, 4),
            (0x10, 2),
            (0x14, 1),
            (0x16, 2),
            (0x18, 2),
            (0x1a, 2),
            (0x1c, 2),
            (0x20, 4),
            (0x24, 4),
            (0x28, 4),
            (0x2c, 4),
            (0x30, 4),
            (0x34, 4),
        ];
        for (off, size) in FIELDS {
            if off < end && start < off + size {
                let mut v = [0u8; 4];
                v[..size].copy_from_slice(&img[off..off + size]);
                self.write_field(off, u32::from_le_bytes(v));
            }
        }
    }

    fn write_field(&mut self, off: usize, v: u32) {
        match off {
            0x00 => self.device_feature_select = v,
            0x08 => self.driver_feature_select = v,
            0x0c => {
                if self.status & S_FEATURES_OK != 0 {
                    return self.refuse(format_args!("driver features after FEATURES_OK"));
                }
                match self.driver_feature_select {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | u64::from(v) << 32
                    }
                    _ => self.refuse(format_args!(
                        "driver features window {}",
                        self.driver_feature_select
                    )),
                }
            }
            0x10 => {
                let v = self.valid_vector(v as u16);
                self.interrupt.lock().config_vector = v;
            }
            0x14 => self.write_status(v as u8),
            0x16 => self.queue_select = v as u16,
            0x1a => {
                let q = usize::from(self.queue_select);
                if q < self.queues.len() {
                    let v = self.valid_vector(v as u16);
                    self.interrupt.lock().queue_vectors[q] = v;
                }
            }
            0x18 | 0x1c | 0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 => self.write_queue(off, v),
            _ => {}
        }
    }

    /// A vector the driver asks for: kept if it exists, else NO_VECTOR (which the driver
    /// reads back as the sign that the mapping failed).
    fn valid_vector(&self, v: u16) -> u16 {
        let n = self
            .interrupt
            .lock()
            .msix
            .as_ref()
            .map_or(0, |m| m.vectors());
        if v < n {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_queue(&mut self, off: usize, v: u32) {
        let qi = usize::from(self.queue_select);
        let status = self.status;
        let Some(q) = self.queues.get(qi).copied() else {
            return self.refuse(format_args!("queue {qi} does not exist"));
        };
        if status & S_FEATURES_OK == 0 || status & S_DRIVER_OK != 0 {
            return self.refuse(format_args!(
                "queue {qi} set up outside FEATURES_OK..DRIVER_OK (status {status:#x})"
            ));
        }
        if q.enabled {
            return self.refuse(format_args!("queue {qi} changed after it was enabled"));
        }
        let mut q = q;
        let lo = |a: u64| (a & !0xffff_ffff) | u64::from(v);
        let hi = |a: u64| (a & 0xffff_ffff) | u64::from(v) << 32;
        match off {
            0x18 => {
                let size = v as u16;
                if size == 0 || !size.is_power_of_two() || size > q.max_size {
                    return self.refuse(format_args!(
                        "queue {qi} size {size} (a power of two up to {} is needed)",
                        q.max_size
                    ));
                }
                q.size = size;
            }
            0x1c => {
                if v != 1 {
                    return self.refuse(format_args!("queue {qi} enable {v}"));
                }
                let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
                if q.to_queue(&self.mem, event_idx).is_none() {
                    self.refuse(format_args!(
                        "queue {qi} enabled with invalid rings (size {}, desc {:#x}, avail {:#x}, used {:#x})",
                        q.size, q.desc, q.avail, q.used
                    ));
                    self.interrupt.needs_reset();
                    return;
                }
                q.enabled = true;
            }
            0x20 => q.desc = lo(q.desc),
            0x24 => q.desc = hi(q.desc),
            0x28 => q.avail = lo(q.avail),
            0x2c => q.avail = hi(q.avail),
            0x30 => q.used = lo(q.used),
            0x34 => q.used = hi(q.used),
            _ => {}
        }
        self.queues[qi] = q;
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // DEVICE_NEEDS_RESET is the device's to set.
        let mut new = v & !S_NEEDS_RESET;
        if old & !new != 0 {
            return self.refuse(format_args!(
                "status {new:#x} clears bits of {old:#x} (only a reset may)"
            ));
        }
        if new & S_FEATURES_OK != 0 && old & S_FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.offered;
            if unknown != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                self.refuse(format_args!(
                    "FEATURES_OK with features {:#x} (offered {:#x}; VERSION_1 is required)",
                    self.driver_features, self.offered
                ));
                new &= !S_FEATURES_OK;
            }
        }
        if new & S_DRIVER_OK != 0 && old & S_DRIVER_OK == 0 {
            if new & S_FEATURES_OK == 0 {
                self.refuse(format_args!("DRIVER_OK without FEATURES_OK"));
                new &= !S_DRIVER_OK;
            } else {
                self.status = new;
                self.activate();
                return;
            }
        }
        let _ = (S_ACKNOWLEDGE, S_DRIVER, S_FAILED);
        self.status = new;
    }

    /// DRIVER_OK: hands the enabled queues to the device, with ioeventfds on their
    /// notification addresses.
    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for (i, setup) in self.queues.iter().enumerate() {
            if !setup.enabled {
                continue;
            }
            // Validated when enabled; guest memory does not shrink.
            let Some(queue) = setup.to_queue(&self.mem, event_idx) else {
                continue;
            };
            let made = EventFd::new(EFD_NONBLOCK).and_then(|k| Ok((k.try_clone()?, k)));
            let (kick, ours) = match made {
                Ok(pair) => pair,
                Err(e) => return self.activation_failed(ActivateError::Io(e)),
            };
            let addr = self.notify_addr(i as u16);
            let ioevent_at = match self.hooks.register_ioevent(&ours, addr) {
                Ok(()) => Some(addr),
                Err(e) => {
                    // Notifications still arrive as MMIO exits and are forwarded.
                    log::warn!("ioeventfd at {addr:#x}: {e}; notifications take the slow path");
                    None
                }
            };
            kicks.push(Kick {
                queue: i as u16,
                fd: ours,
                ioevent_at,
            });
            queues.push(ActiveQueue {
                index: i as u16,
                queue,
                kick,
            });
        }
        self.kicks = kicks;
        let activation = Activation {
            mem: self.mem.clone(),
            acked_features: self.driver_features,
            queues,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => self.activation_failed(e),
        }
    }

    fn activation_failed(&mut self, e: ActivateError) {
        log::warn!(
            "virtio device type {} failed to start: {e}",
            self.device.device_type()
        );
        self.drop_kicks();
        self.interrupt.needs_reset();
    }

    fn notify_addr(&self, queue: u16) -> u64 {
        self.bar_addr + NOTIFY_OFFSET + u64::from(queue) * u64::from(NOTIFY_MULTIPLIER)
    }

    fn drop_kicks(&mut self) {
        for k in self.kicks.drain(..) {
            if let Some(addr) = k.ioevent_at {
                let _ = self.hooks.unregister_ioevent(&k.fd, addr);
            }
        }
    }

    /// Device reset (status 0): the device stops, everything the driver set is forgotten.
    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.drop_kicks();
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueSetup::new(q.max_size);
        }
        self.interrupt.reset();
    }

    fn write_notify(&mut self, offset: u64) {
        let queue = offset / u64::from(NOTIFY_MULTIPLIER);
        if self.status & S_DRIVER_OK == 0 {
            self.stats.early_notifies.fetch_add(1, Ordering::Relaxed);
            log::debug!("virtio-pci: queue {queue} notified before DRIVER_OK; ignored");
            return;
        }
        // Only reached when the ioeventfd is missing (or the access was not at its exact
        // address): forward it.
        if let Some(k) = self.kicks.iter().find(|k| u64::from(k.queue) == queue) {
            let _ = k.fd.write(1);
        }
    }

    // ---- configuration space ----

    fn pci_cfg_window(&self) -> (u8, u64, usize) {
        let c = self.pci_cfg_cap;
        (
            self.config.byte(c + 4),
            u64::from(self.config.dword(c + 8)),
            self.config.dword(c + 12) as usize,
        )
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        let within = |start: u64, size: u64| offset >= start && offset + len <= start + size;
        if within(COMMON_OFFSET, COMMON_SIZE) {
            self.read_common(offset - COMMON_OFFSET, data);
        } else if within(ISR_OFFSET, 0x1000) {
            if offset == ISR_OFFSET {
                data[0] = self.interrupt.take_isr();
            }
        } else if within(DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.read_config(offset - DEVICE_CFG_OFFSET, data);
        } else if within(MSIX_TABLE_OFFSET, 0x1000) {
            if let Some(m) = self.interrupt.lock().msix.as_ref() {
                m.read_table(offset - MSIX_TABLE_OFFSET, data);
            }
        } else if within(MSIX_PBA_OFFSET, 0x1000) {
            if let Some(m) = self.interrupt.lock().msix.as_ref() {
                m.read_pba(offset - MSIX_PBA_OFFSET, data);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let within = |start: u64, size: u64| offset >= start && offset + len <= start + size;
        if within(COMMON_OFFSET, COMMON_SIZE) {
            self.write_common(offset - COMMON_OFFSET, data);
        } else if within(DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.write_config(offset - DEVICE_CFG_OFFSET, data);
        } else if within(NOTIFY_OFFSET, 0x1000) {
            self.write_notify(offset - NOTIFY_OFFSET);
        } else if within(MSIX_TABLE_OFFSET, 0x1000) {
            if let Some(m) = self.interrupt.lock().msix.as_mut() {
                m.write_table(offset - MSIX_TABLE_OFFSET, data);
            }
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        if reg * 4 == self.pci_cfg_cap + 16 {
            let (bar, offset, length) = self.pci_cfg_window();
            let mut b = [0u8; 4];
            if bar == 0 && matches!(length, 1 | 2 | 4) {
                self.read(self.bar_addr, offset, &mut b[..length]);
            }
            return u32::from_le_bytes(b);
        }
        self.config.read(reg)
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if reg * 4 == self.pci_cfg_cap + 16 {
            let (bar, off, length) = self.pci_cfg_window();
            if bar == 0 && offset == 0 && data.len() >= length && matches!(length, 1 | 2 | 4) {
                let base = self.bar_addr;
                self.write(base, off, &data[..length]);
            }
            return;
        }
        self.config.write(reg, offset, data);
        if let Some(cap) = self.msix_cap.filter(|c| c / 4 == reg) {
            let control = (self.config.dword(cap) >> 16) as u16;
            if let Some(m) = self.interrupt.lock().msix.as_mut() {
                m.set_control(control);
                // Keep the read-only table size in the register.
                let shown = m.control();
                let low = self.config.dword(cap) & 0xffff;
                self.config.set_dword(cap, low | u32::from(shown) << 16);
            }
        }
    }

    fn bars(&self) -> Vec<(usize, u64, u64)> {
        self.config.decoded_bars()
    }

    fn bar_moved(&mut self, index: usize, _old: u64, new: u64) {
        if index != 0 {
            return;
        }
        self.bar_addr = new;
        for i in 0..self.kicks.len() {
            let addr = self.notify_addr(self.kicks[i].queue);
            let k = &mut self.kicks[i];
            if let Some(old) = k.ioevent_at.take() {
                let _ = self.hooks.unregister_ioevent(&k.fd, old);
            }
            match self.hooks.register_ioevent(&k.fd, addr) {
                Ok(()) => k.ioevent_at = Some(addr),
                Err(e) => log::warn!("ioeventfd at {addr:#x}: {e}"),
            }
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.drop_kicks();
    }
}

#[cfg(test)]
mod tests;
