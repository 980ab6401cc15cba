//! The transport driven the way a driver would (and the ways a hostile one would), with
//! virtio-rng behind it and a recording fake of KVM.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::pci::testing::FakeHooks;
use crate::virtio::rng::VirtioRng;

const BAR: u64 = 0xc000_0000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x10000;

struct Rig {
    dev: VirtioPciDevice,
    hooks: Arc<FakeHooks>,
    mem: GuestMemory,
}

fn rig(msix: bool) -> Rig {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let hooks = Arc::new(FakeHooks::default());
    let dev = VirtioPciDevice::new(
        Box::new(VirtioRng::new()),
        mem.clone(),
        hooks.clone(),
        VirtioPciParams {
            bar_addr: BAR,
            slot: 1,
            intx_gsi: 16,
            msix,
        },
    )
    .unwrap();
    Rig { dev, hooks, mem }
}

impl Rig {
    fn w8(&mut self, off: u64, v: u8) {
        self.dev.write(BAR, off, &[v]);
    }
    fn w16(&mut self, off: u64, v: u16) {
        self.dev.write(BAR, off, &v.to_le_bytes());
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.dev.write(BAR, off, &v.to_le_bytes());
    }
    fn r8(&mut self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.dev.read(BAR, off, &mut b);
        b[0]
    }
    fn r16(&mut self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.dev.read(BAR, off, &mut b);
        u16::from_le_bytes(b)
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(BAR, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn status(&mut self) -> u8 {
        self.r8(0x14)
    }
    /// ACKNOWLEDGE, DRIVER, features (low and high words), FEATURES_OK.
    fn negotiate(&mut self, lo: u32, hi: u32) -> u8 {
        self.w8(0x14, S_ACKNOWLEDGE);
        self.w8(0x14, S_ACKNOWLEDGE | S_DRIVER);
        self.w32(0x08, 0);
        self.w32(0x0c, lo);
        self.w32(0x08, 1);
        self.w32(0x0c, hi);
        self.w8(0x14, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        self.status()
    }
    fn setup_queue(&mut self, size: u16) {
        self.w16(0x16, 0);
        self.w16(0x18, size);
        for (off, addr) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
            self.w32(off, addr as u32);
            self.w32(off + 4, 0);
        }
    }
    fn driver_ok(&mut self) {
        self.w8(0x14, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    }
    /// Posts one device-writable buffer of `len` bytes at BUF as descriptor 0.
    fn post(&self, len: u32, avail_idx: u16) {
        let m = &self.mem;
        m.write_obj(BUF, GuestAddress(DESC)).unwrap();
        m.write_obj(len, GuestAddress(DESC + 8)).unwrap();
        m.write_obj(2u16, GuestAddress(DESC + 12)).unwrap(); // VIRTQ_DESC_F_WRITE
        let slot = u64::from(avail_idx - 1) % 16;
        m.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        m.write_obj(avail_idx, GuestAddress(AVAIL + 2)).unwrap();
    }
    fn wait_used(&self, idx: u16) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let used: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            if used == idx {
                let slot = u64::from(idx - 1) % 16;
                return self
                    .mem
                    .read_obj(GuestAddress(USED + 8 + 8 * slot))
                    .unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the device never used the buffer"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn config_space_has_ids_and_the_virtio_capabilities() {
    let mut r = rig(true);
    let d = &mut r.dev;
    assert_eq!(
        d.config_read(0),
        0x1044_1af4,
        "vendor 0x1af4, device 0x1040 + 4"
    );
    assert_eq!(d.config_read(2) & 0xff, 1, "revision 1");
    assert_eq!(d.config_read(11) >> 16, 0x40, "subsystem id");
    assert_eq!(d.config_read(4), BAR as u32 | 0b100, "64-bit memory BAR 0");
    assert_eq!(d.config_read(15) >> 8 & 0xff, 1, "INTA#");
    // Walk the capability list.
    let byte =
        |d: &mut VirtioPciDevice, off: usize| (d.config_read(off / 4) >> ((off % 4) * 8)) as u8;
    let mut at = usize::from(byte(d, 0x34));
    let mut seen = Vec::new();
    while at != 0 {
        let id = byte(d, at);
        if id == CAP_ID_VENDOR {
            let cfg_type = byte(d, at + 3);
            let bar = byte(d, at + 4);
            let offset = d.config_read(at / 4 + 2);
            let length = d.config_read(at / 4 + 3);
            seen.push((cfg_type, bar, offset, length));
            if cfg_type == CAP_NOTIFY {
                assert_eq!(byte(d, at + 2), 20);
                assert_eq!(d.config_read(at / 4 + 4), NOTIFY_MULTIPLIER);
            }
        } else {
            assert_eq!(id, CAP_ID_MSIX);
            let control = d.config_read(at / 4) >> 16;
            assert_eq!(control & 0x7ff, 1, "2 vectors: queue + config");
            assert_eq!(d.config_read(at / 4 + 1), MSIX_TABLE_OFFSET as u32);
            assert_eq!(d.config_read(at / 4 + 2), MSIX_PBA_OFFSET as u32);
            seen.push((0x11, 0, 0, 0));
        }
        at = usize::from(byte(d, at + 1));
    }
    assert_eq!(
        seen,
        vec![
            (CAP_COMMON, 0, 0, 0x38),
            (CAP_ISR, 0, 0x1000, 1),
            (CAP_DEVICE, 0, 0x2000, 0x1000),
            (CAP_NOTIFY, 0, 0x3000, 4),
            (CAP_PCI_CFG, 0, 0, 0),
            (0x11, 0, 0, 0)
        ]
    );
    // Without MSI-X the capability is absent.
    let mut r = rig(false);
    let mut at = usize::from(byte(&mut r.dev, 0x34));
    while at != 0 {
        assert_ne!(byte(&mut r.dev, at), CAP_ID_MSIX);
        at = usize::from(byte(&mut r.dev, at + 1));
    }
}

#[test]
fn feature_negotiation_is_checked() {
    let mut r = rig(true);
    assert_eq!(r.r32(0x04), 0, "no low feature bits");
    r.w32(0x00, 1);
    assert_eq!(r.r32(0x04), 1, "VERSION_1 is bit 32");
    r.w32(0x00, 7);
    assert_eq!(r.r32(0x04), 0, "feature windows past 1 are empty");
    assert_eq!(r.r16(0x12), 1, "one queue");
    // Without VERSION_1: FEATURES_OK does not stick.
    assert_eq!(r.negotiate(0, 0) & S_FEATURES_OK, 0);
    r.w8(0x14, 0);
    // A feature that was not offered: refused too.
    assert_eq!(r.negotiate(1 << 5, 1) & S_FEATURES_OK, 0);
    r.w8(0x14, 0);
    assert_eq!(r.negotiate(0, 1) & S_FEATURES_OK, S_FEATURES_OK);
    // Features cannot change after FEATURES_OK.
    r.w32(0x08, 0);
    r.w32(0x0c, 0xff);
    assert_eq!(r.r32(0x0c), 0);
    // Status bits cannot be cleared except by a reset.
    r.w8(0x14, S_ACKNOWLEDGE);
    assert_eq!(r.status(), S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    r.w8(0x14, 0);
    assert_eq!(r.status(), 0);
    assert_eq!(r.r32(0x0c), 0, "reset forgets the driver's features");
    assert!(r.dev.stats().refused_writes.load(Ordering::Relaxed) >= 4);
}

#[test]
fn hostile_driver_orders_are_refused_and_the_device_carries_on() {
    let mut r = rig(true);
    // Queue setup and enable before FEATURES_OK: ignored.
    r.setup_queue(8);
    r.w16(0x1c, 1);
    assert_eq!(r.r16(0x1c), 0);
    assert_eq!(r.r16(0x18), QUEUE_MAX, "size untouched");
    // DRIVER_OK without FEATURES_OK: refused.
    r.w8(0x14, S_ACKNOWLEDGE | S_DRIVER | S_DRIVER_OK);
    assert_eq!(r.status() & S_DRIVER_OK, 0);
    r.w8(0x14, 0);
    assert_eq!(r.negotiate(0, 1) & S_FEATURES_OK, S_FEATURES_OK);
    // Sizes that are not a power of two, zero, or above the maximum: refused.
    for bad in [0u16, 3, 100, QUEUE_MAX * 2, u16::MAX] {
        r.w16(0x18, bad);
        assert_eq!(r.r16(0x18), QUEUE_MAX, "size {bad}");
    }
    // A queue that does not exist reads size 0 and ignores writes.
    r.w16(0x16, 5);
    assert_eq!(r.r16(0x18), 0);
    r.w16(0x18, 4);
    r.w16(0x1c, 1);
    // Rings outside guest RAM: not enabled, and the device asks for a reset.
    r.w16(0x16, 0);
    r.w32(0x20, 0x4000_0000);
    r.w16(0x1c, 1);
    assert_eq!(r.r16(0x1c), 0);
    assert_ne!(r.status() & S_NEEDS_RESET, 0);
    r.w8(0x14, 0);
    assert_eq!(r.status(), 0, "a reset clears DEVICE_NEEDS_RESET");
    // Notifications before DRIVER_OK are counted and ignored.
    r.w16(NOTIFY_OFFSET, 0);
    assert_eq!(r.dev.stats().early_notifies.load(Ordering::Relaxed), 1);
    // Accesses out of every structure, straddling ends, or of odd sizes: no effect.
    for off in [
        0x37,
        0x38,
        0x0fff,
        0x1001,
        0x2fff,
        0x4ffc,
        0x5ff8,
        0x7fff,
        0x8000,
        u64::MAX - 8,
    ] {
        let mut b = [0u8; 8];
        r.dev.read(BAR, off, &mut b);
        r.dev.write(BAR, off, &[0xff; 8]);
    }
    assert_eq!(r.status(), 0);
    // A writer to the read-only fields changes nothing.
    r.w16(0x12, 77);
    assert_eq!(r.r16(0x12), 1);
}

const QUEUE_MAX: u16 = crate::virtio::rng::QUEUE_SIZE;

#[test]
fn rng_serves_a_buffer_through_msix_and_ioeventfd() {
    let mut r = rig(true);
    assert_eq!(r.negotiate(0, 1) & S_FEATURES_OK, S_FEATURES_OK);
    // MSI-X: program and unmask vector 0, enable; queue 0 uses it.
    r.w32(MSIX_TABLE_OFFSET, 0xfee0_0000);
    r.w32(MSIX_TABLE_OFFSET + 8, 0x41);
    r.w32(MSIX_TABLE_OFFSET + 12, 0);
    let cap = r.dev.msix_cap.unwrap();
    r.dev.config_write(cap / 4, 2, &0x8000u16.to_le_bytes());
    assert_eq!(
        r.dev.config_read(cap / 4) >> 16,
        0x8001,
        "enabled, table size kept"
    );
    r.w16(0x10, 1);
    r.w16(0x16, 0);
    r.w16(0x1a, 0);
    assert_eq!(r.r16(0x1a), 0);
    r.w16(0x1a, 9);
    assert_eq!(
        r.r16(0x1a),
        NO_VECTOR,
        "a vector that does not exist is refused"
    );
    r.w16(0x1a, 0);
    r.setup_queue(16);
    r.w16(0x1c, 1);
    assert_eq!(r.r16(0x1c), 1);
    r.post(64, 1);
    r.driver_ok();
    assert_eq!(r.status() & S_DRIVER_OK, S_DRIVER_OK);
    assert_eq!(*r.hooks.ioevents.lock().unwrap(), vec![BAR + NOTIFY_OFFSET]);
    // The buffer queued before DRIVER_OK is served at activation.
    assert_eq!(r.wait_used(1), 64);
    let mut got = [0u8; 64];
    r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_ne!(got, [0u8; 64], "random bytes");
    let irq = r.dev.interrupt();
    let fired = irq
        .lock()
        .msix
        .as_ref()
        .unwrap()
        .irqfd(0)
        .unwrap()
        .read()
        .unwrap();
    assert!(fired >= 1);
    // A second request, notified through the notify area (forwarded to the kick).
    r.mem.write_slice(&[0u8; 64], GuestAddress(BUF)).unwrap();
    r.post(32, 2);
    r.w16(NOTIFY_OFFSET, 0);
    assert_eq!(r.wait_used(2), 32);
    // Moving the BAR moves the ioeventfd.
    r.dev.bar_moved(0, BAR, 0xd000_0000);
    assert_eq!(
        *r.hooks.ioevents.lock().unwrap(),
        vec![0xd000_0000 + NOTIFY_OFFSET]
    );
    // The guest-visible state serialises.
    let st = r.dev.state();
    assert_eq!(
        st.status,
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK
    );
    assert_eq!(st.queues[0].size, 16);
    assert_eq!(st.queue_vectors, vec![0]);
    assert!(st.msix.as_ref().unwrap().enabled);
    let json = serde_json::to_string(&st).unwrap();
    assert_eq!(serde_json::from_str::<VirtioPciState>(&json).unwrap(), st);
    // Reset: the worker stops, the ioeventfd goes.
    r.w8(0x14, 0);
    assert!(r.hooks.ioevents.lock().unwrap().is_empty());
    assert!(!r.dev.active);
}

#[test]
fn intx_follows_the_isr_when_msix_is_off() {
    let mut r = rig(true);
    let irq = r.dev.interrupt();
    irq.notify_queue(0).unwrap();
    assert_eq!(r.hooks.lines.lock().unwrap().get(&16), Some(&true));
    irq.notify_config().unwrap();
    assert_eq!(r.r8(0x15), 1, "config generation moved");
    assert_eq!(r.r8(ISR_OFFSET), ISR_QUEUE | ISR_CONFIG);
    assert_eq!(r.hooks.lines.lock().unwrap().get(&16), Some(&false));
    assert_eq!(r.r8(ISR_OFFSET), 0, "reading cleared it");
    // needs_reset: status bit and a config interrupt.
    irq.needs_reset();
    assert_ne!(r.status() & S_NEEDS_RESET, 0);
    assert_eq!(r.r8(ISR_OFFSET), ISR_CONFIG);
}

#[test]
fn pci_cfg_capability_reaches_the_bar() {
    let mut r = rig(true);
    let cap = r.dev.pci_cfg_cap;
    // Window: BAR 0, offset 0x12 (num_queues), 2 bytes.
    r.dev.config_write(cap / 4 + 1, 0, &[0]);
    r.dev.config_write(cap / 4 + 2, 0, &0x12u32.to_le_bytes());
    r.dev.config_write(cap / 4 + 3, 0, &2u32.to_le_bytes());
    assert_eq!(r.dev.config_read(cap / 4 + 4), 1);
    // Writing status through it.
    r.dev.config_write(cap / 4 + 2, 0, &0x14u32.to_le_bytes());
    r.dev.config_write(cap / 4 + 3, 0, &1u32.to_le_bytes());
    r.dev
        .config_write(cap / 4 + 4, 0, &[S_ACKNOWLEDGE, 0, 0, 0]);
    assert_eq!(r.status(), S_ACKNOWLEDGE);
    // A bad length or BAR: nothing.
    r.dev.config_write(cap / 4 + 3, 0, &3u32.to_le_bytes());
    assert_eq!(r.dev.config_read(cap / 4 + 4), 0);
}

/// Fuzz-style: long random sequences of BAR and configuration-space accesses (any offset,
/// size and value, biased towards the interesting registers) never panic, and the state
/// machine's invariants hold after every step.
#[test]
fn random_driver_accesses_keep_the_invariants() {
    for seed in 1..=8u64 {
        let mut r = rig(seed % 2 == 0);
        let mut activations = 0u32;
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let v = next();
            let size = [1usize, 2, 4, 8][(v & 3) as usize];
            let value = next().to_le_bytes();
            let offset = match (v >> 2) % 8 {
                0 => (v >> 8) % 0x40,
                1 => 0x14,
                2 => NOTIFY_OFFSET + (v >> 8) % 8,
                3 => MSIX_TABLE_OFFSET + (v >> 8) % 0x40,
                4 => (v >> 8) % 0x9000,
                _ => 0x16 + ((v >> 8) % 0x22),
            };
            match (v >> 40) % 6 {
                0 => {
                    let mut b = [0u8; 8];
                    r.dev.read(BAR, offset, &mut b[..size]);
                }
                1 => {
                    let reg = ((v >> 16) % 80) as usize;
                    let at = ((v >> 24) % 4) as usize;
                    let n = size.min(4 - at);
                    r.dev.config_write(reg, at, &value[..n]);
                    let _ = r.dev.config_read(reg);
                }
                2 if v % 97 == 0 => r.w8(0x14, 0),
                // Now and then a proper bring-up, so that random accesses also hit a
                // device whose worker is serving (garbage) rings.
                3 if v % 89 == 0 => {
                    r.w8(0x14, 0);
                    r.negotiate(0, 1);
                    r.setup_queue(8);
                    r.w16(0x1c, 1);
                    r.driver_ok();
                    activations += u32::from(r.dev.active);
                }
                _ => r.dev.write(BAR, offset, &value[..size]),
            }
            let status = r.dev.status;
            assert!(
                status & S_DRIVER_OK == 0 || status & S_FEATURES_OK != 0,
                "DRIVER_OK without FEATURES_OK (seed {seed})"
            );
            if status & S_FEATURES_OK != 0 {
                assert_eq!(r.dev.driver_features & !r.dev.offered, 0, "seed {seed}");
                assert_ne!(r.dev.driver_features & VIRTIO_F_VERSION_1, 0, "seed {seed}");
            }
            for q in &r.dev.queues {
                assert!(q.size.is_power_of_two() && q.size <= q.max_size);
            }
        }
        assert!(activations > 0, "seed {seed} never activated the device");
        r.w8(0x14, 0);
    }
}
