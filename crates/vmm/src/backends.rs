//! Device backends: what a VM's devices use on the host (disk images, TAPs, …). They are opened
//! ONCE, when the VMM starts and before KVM is touched — a bad path, a locked image or an
//! unsupported format is reported as bad input naming its flag — and live until the VMM
//! exits: a guest reset rebuilds the device models, which take the same backends.

use std::sync::Arc;

use vireo_devices::virtio::balloon::{self, BalloonControl};
use vireo_devices::virtio::block::{Disk, DiskOptions};
use vireo_devices::virtio::console::ConsoleInput;
use vireo_devices::virtio::net::NetBackend;
use vireo_devices::virtio::vsock::VsockBackend;

use crate::config::{DiskFormat, VmConfig};
use crate::console::ConsoleOutput;
use crate::VmmError;

/// Every backend of the VM.
#[derive(Debug, Default)]
pub struct Backends {
    /// One per `VmConfig::disks` entry, in the same order, with its queue count.
    pub disks: Vec<(Arc<Disk>, u16)>,
    /// One per `VmConfig::nets` entry, in the same order (see [`crate::net`]).
    pub nets: Vec<Arc<NetBackend>>,
    /// The vsock unix socket (`--vsock`), listening from VMM start.
    pub vsock: Option<Arc<VsockBackend>>,
    /// The balloon's target, reported size and statistics (`--balloon`), driven by the
    /// control API and kept across guest resets.
    pub balloon: Option<Arc<BalloonControl>>,
    /// Console input for the virtio-console (`--console virtio`); the event loop fills
    /// it instead of the serial port's FIFO.
    pub console_input: Option<Arc<ConsoleInput>>,
    /// Where the virtio-console's output goes: the console's sinks, shared with the serial
    /// port (set by [`Platform::new`](crate::vm_builder::Platform::new) once they are open).
    pub console_output: Option<ConsoleOutput>,
}

impl Backends {
    pub fn open(config: &VmConfig) -> Result<Backends, VmmError> {
        let mut b = Backends::default();
        for d in &config.disks {
            let disk = Disk::open(&DiskOptions {
                path: d.path.clone(),
                format: d.format.map(|f| match f {
                    DiskFormat::Raw => vireo_block::Format::Raw,
                    DiskFormat::Qcow2 => vireo_block::Format::Qcow2,
                }),
                read_only: d.readonly,
                serial: d.serial.clone(),
            })
            .map_err(|e| VmmError::Backend(format!("{}: {e}", d.flag())))?;
            b.disks.push((Arc::new(disk), d.queues.unwrap_or(1)));
        }
        b.nets = crate::net::open_backends(&config.nets)?;
        if let Some(v) = &config.vsock {
            let backend = VsockBackend::open(v.cid, &v.socket)
                .map_err(|e| VmmError::Backend(format!("--vsock: {e}")))?;
            b.vsock = Some(Arc::new(backend));
        }
        if let Some(cfg) = &config.balloon {
            let control = BalloonControl::new().map_err(VmmError::Io)?;
            if let Some(target) = cfg.target_bytes {
                let pages = config.memory.saturating_sub(target) / balloon::PAGE_SIZE;
                control.set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX));
            }
            b.balloon = Some(control);
        }
        if config.virtio_console {
            b.console_input = Some(ConsoleInput::new().map_err(VmmError::Io)?);
        }
        Ok(b)
    }
}
