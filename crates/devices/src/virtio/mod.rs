//! Virtio devices: the interface between a device model (blk, net, rng, …) and the
//! transport that exposes it to the guest (virtio-pci; virtio-mmio could reuse it).
//!
//! The transport owns the guest-visible registers (status, feature windows, queue
//! addresses) and the interrupt plumbing (MSI-X or INTx); a device model only says what it
//! offers ([`VirtioDevice::features`], [`VirtioDevice::queue_max_sizes`]), serves its
//! configuration space, and — once the driver sets DRIVER_OK — gets an [`Activation`]
//! with the queues the driver enabled, to serve from worker threads of its own.
//!
//! Rules every device follows:
//! * each worker epolls its queues' [`ActiveQueue::kick`] eventfds plus a stop eventfd of
//!   its own, which [`VirtioDevice::reset`] signals before joining the workers;
//! * every address, length and index the guest supplies is bounds-checked (virtio-queue
//!   walks the rings; the device checks lengths, directions, request sizes and caps chain
//!   lengths);
//! * a malformed request gets an error status where the protocol has one; otherwise the
//!   device calls [`VirtioInterrupt::needs_reset`] and stops using the queue — never a
//!   panic, never stopping the VMM.

pub mod balloon;
pub mod block;
pub mod console;
pub mod descriptors;
pub mod net;
pub mod pci;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod vsock;
pub mod worker;

pub use virtio_queue::{Queue, QueueT};

/// Guest memory as devices see it (clone is cheap: the regions are reference-counted).
pub type GuestMemory = vireo_hypervisor::GuestMemoryMmap;

/// Feature bit every modern (virtio 1.x) device offers and every driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Interrupt lines a device can raise; the transport maps them to MSI-X vectors or INTx.
///
/// Implementations are cheap to call from any worker thread.
pub trait VirtioInterrupt: Send + Sync {
    /// The device put buffers in queue `queue_index`'s used ring.
    fn notify_queue(&self, queue_index: u16) -> std::io::Result<()>;
    /// The device changed its configuration space.
    fn notify_config(&self) -> std::io::Result<()>;
    /// The device hit an error it cannot report through its protocol (a malformed
    /// descriptor chain with no status byte, a broken backend): the transport sets
    /// DEVICE_NEEDS_RESET in the device status and raises a configuration interrupt, as
    /// virtio 1.x §2.1.2 asks. The device stops processing the affected queue(s) until the
    /// driver resets it. Idempotent.
    fn needs_reset(&self);
}

/// One queue the driver enabled, handed to the device at activation.
pub struct ActiveQueue {
    /// The queue's index in the device's queue list.
    pub index: u16,
    /// Ring addresses, size and indices as the driver set them (validated by the transport:
    /// size a power of two and at most the device's maximum, rings inside guest RAM).
    pub queue: Queue,
    /// Signalled (by KVM, through an ioeventfd) when the driver notifies this queue.
    pub kick: vmm_sys_util::eventfd::EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemory,
    /// Features the driver accepted (a subset of [`VirtioDevice::features`], always with
    /// [`VIRTIO_F_VERSION_1`]).
    pub acked_features: u64,
    /// Only the queues the driver enabled, in index order.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: std::sync::Arc<dyn VirtioInterrupt>,
}

/// Why a device could not start serving its queues. The transport then sets
/// DEVICE_NEEDS_RESET; the VMM keeps running.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver's setup does not fit the device (say, a required queue not enabled).
    #[error("invalid driver setup: {0}")]
    BadSetup(String),
    /// A worker thread or an eventfd could not be created.
    #[error("cannot start the device: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device model (the device-specific part; the transport is separate so that
/// virtio-mmio or another transport could reuse it).
pub trait VirtioDevice: Send {
    /// VIRTIO_ID_* (virtio-bindings `virtio_ids`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue, one entry per queue.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features offered, including [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// Reads the device configuration space; bytes out of range read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; bytes out of range are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK: start serving the queues (worker thread(s) of the device's own).
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Driver reset (status 0) or VM teardown: stop workers, drop queues; the device can be
    /// activated again.
    fn reset(&mut self);
    /// Guest-visible state for snapshots/migration later (serde_json::Value for now).
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_is_bit_32() {
        assert_eq!(VIRTIO_F_VERSION_1, 1 << 32);
    }
}
