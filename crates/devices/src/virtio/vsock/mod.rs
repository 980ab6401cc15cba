//! virtio-vsock (virtio 1.x §5.10), host side in the style of Firecracker's: stream
//! sockets between the guest and host programs, carried over unix sockets (see
//! [`backend`] for the host-facing protocol and [`muxer`] for connections and credit).
//!
//! Queues: 0 receive (device → guest), 1 transmit (guest → device), 2 events (only
//! transport resets, which a live migration would send; the device never uses it).

pub mod backend;
pub mod muxer;
pub mod packet;

use std::sync::Arc;

pub use backend::{BackendError, VsockBackend};
use muxer::{VsockMuxer, TOKEN_EVENT, TOKEN_RX, TOKEN_STOP, TOKEN_TX};

use super::console::copy_config;
use super::worker::Worker;
use super::{ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};

/// VIRTIO_ID_VSOCK.
pub const DEVICE_TYPE: u32 = 19;
pub const QUEUE_SIZE: u16 = 256;

/// The virtio-vsock device model, rebuilt on each boot around the lasting
/// [`VsockBackend`]. Connections live as long as the driver does: a reset closes them.
pub struct VirtioVsock {
    backend: Arc<VsockBackend>,
    worker: Option<Worker>,
}

impl VirtioVsock {
    pub fn new(backend: Arc<VsockBackend>) -> Self {
        Self {
            backend,
            worker: None,
        }
    }
}

impl VirtioDevice for VirtioVsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        // Stream sockets only, which needs no feature bit.
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.backend.cid().to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let mut rx = None;
        let mut tx = None;
        let mut event_kick = None;
        for q in a.queues {
            match q.index {
                0 => rx = Some(q),
                1 => tx = Some(q),
                // The event queue's buffers are left with the device, unused.
                2 => event_kick = Some(q.kick),
                _ => {}
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::BadSetup(
                "virtio-vsock needs its receive and transmit queues".into(),
            ));
        };
        let mut muxer = VsockMuxer::new(
            a.mem,
            rx.queue,
            tx.queue,
            a.interrupt.clone(),
            self.backend.clone(),
        )?;
        muxer.watch(rx.kick, TOKEN_RX)?;
        muxer.watch(tx.kick, TOKEN_TX)?;
        if let Some(k) = event_kick {
            muxer.watch(k, TOKEN_EVENT)?;
        }
        let interrupt = a.interrupt;
        let worker = Worker::spawn("virtio-vsock", move |stop| {
            let run = || -> std::io::Result<()> {
                muxer.watch(stop, TOKEN_STOP)?;
                // The driver may have queued buffers before DRIVER_OK.
                muxer.process();
                loop {
                    let timeout = muxer.next_timeout_ms();
                    if muxer.poll_once(timeout)? {
                        break;
                    }
                }
                Ok(())
            };
            if let Err(e) = run() {
                log::error!("virtio-vsock: worker failed: {e}");
                interrupt.needs_reset();
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

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "guest_cid": self.backend.cid() })
    }
}

impl Drop for VirtioVsock {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::packet::*;
    use super::*;
    use crate::virtio::testing::{Driver, TestInterrupt, TestMemory};
    use crate::virtio::ActiveQueue;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn device_worker_carries_a_host_connection() {
        let dir = TempDir::new().unwrap();
        let backend = Arc::new(VsockBackend::open(42, &dir.as_path().join("v")).unwrap());
        let mut dev = VirtioVsock::new(backend.clone());
        assert_eq!(dev.device_type(), 19);
        let mut cfg = [0xffu8; 12];
        dev.read_config(0, &mut cfg);
        assert_eq!(cfg, [42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

        let mem = TestMemory::new();
        let (mut rx, mut tx) = (Driver::new(&mem, 0, 16), Driver::new(&mem, 1, 16));
        let rx_buf = GuestAddress(2 << 20);
        let rx_head = rx.add(&[(rx_buf, 4096, true)]);
        let kicks: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let irq = Arc::new(TestInterrupt::default());
        dev.activate(Activation {
            mem: mem.memory(),
            acked_features: dev.features(),
            queues: vec![
                ActiveQueue {
                    index: 0,
                    queue: rx.queue(),
                    kick: kicks[0].try_clone().unwrap(),
                },
                ActiveQueue {
                    index: 1,
                    queue: tx.queue(),
                    kick: kicks[1].try_clone().unwrap(),
                },
            ],
            interrupt: irq.clone(),
        })
        .unwrap();
        // A host client asks for guest port 9; the worker sends the guest a REQUEST.
        let mut client = UnixStream::connect(backend.path()).unwrap();
        client.write_all(b"CONNECT 9\n").unwrap();
        let mut used = Vec::new();
        for _ in 0..500 {
            used.extend(rx.used());
            if !used.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(used, vec![(rx_head, HEADER_SIZE as u32)]);
        let mut b = [0u8; HEADER_SIZE];
        mem.read_slice(&mut b, rx_buf).unwrap();
        let req = Header::parse(&b).unwrap();
        assert_eq!((req.op, req.dst_cid, req.dst_port), (OP_REQUEST, 42, 9));
        // The guest accepts.
        let resp = Header {
            src_cid: 42,
            dst_cid: HOST_CID,
            src_port: 9,
            dst_port: req.src_port,
            type_: TYPE_STREAM,
            op: OP_RESPONSE,
            buf_alloc: 4096,
            ..Default::default()
        };
        let tx_buf = GuestAddress(3 << 20);
        mem.write_slice(&resp.to_bytes(), tx_buf).unwrap();
        tx.add(&[(tx_buf, HEADER_SIZE as u32, false)]);
        kicks[1].write(1).unwrap();
        let ok = format!("OK {}\n", req.src_port);
        let mut line = vec![0u8; ok.len()];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        client.read_exact(&mut line).unwrap();
        assert_eq!(line, ok.as_bytes());
        // A reset closes every connection.
        dev.reset();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
        assert!(!irq.broken());
    }
}
