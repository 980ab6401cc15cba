//! COM1: a 16550A UART (vm-superio's emulation) whose interrupt is an eventfd.
//!
//! The VMM registers [`SerialDevice::irq_evt`] as an irqfd for GSI 4, feeds console input
//! with [`SerialDevice::enqueue_input`], and gives the console output writer (stdout, a log
//! file) at construction.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::BusDevice;

/// Registers decoded from the base port (0x3f8..0x3ff).
pub const SERIAL_PORTS_LEN: u64 = 8;

/// Where the guest's console output goes.
pub type ConsoleOutput = Box<dyn Write + Send>;

/// A vm-superio interrupt trigger that signals an eventfd (an irqfd in the VMM).
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new() -> io::Result<Self> {
        Ok(Self(EventFd::new(EFD_NONBLOCK)?))
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Guest-visible UART state: vm-superio's [`SerialState`] in a serde-serialisable form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet (at most the 64-byte FIFO).
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialDeviceState {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(s: &SerialDeviceState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, ConsoleOutput>,
    // The console writer failing (closed stdout, full disk) is reported once, not per byte.
    output_failed: bool,
}

impl SerialDevice {
    /// A UART in its power-on state writing the guest's output to `out`.
    pub fn new(out: ConsoleOutput) -> io::Result<Self> {
        Ok(Self {
            serial: Serial::new(EventFdTrigger::new()?, out),
            output_failed: false,
        })
    }

    /// A UART in `state` (from [`SerialDevice::state`]) writing to `out`. Fails on a state
    /// whose input buffer exceeds the FIFO or when the interrupt cannot be signalled.
    pub fn from_state(state: &SerialDeviceState, out: ConsoleOutput) -> io::Result<Self> {
        let serial = Serial::from_state(&state.into(), EventFdTrigger::new()?, NoEvents, out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
        Ok(Self {
            serial,
            output_failed: false,
        })
    }

    /// The interrupt; the VMM registers it as an irqfd for GSI 4.
    pub fn irq_evt(&self) -> &EventFd {
        self.serial.interrupt_evt().eventfd()
    }

    /// Queues console input for the guest; returns how many bytes fitted in the FIFO (the
    /// caller keeps the rest for later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let fits = bytes.len().min(self.serial.fifo_capacity());
        if fits == 0 {
            return 0;
        }
        match self.serial.enqueue_raw_bytes(&bytes[..fits]) {
            Ok(n) => n,
            // The bytes were queued; only the interrupt failed.
            Err(vm_superio::serial::Error::Trigger(e)) => {
                log::warn!("cannot signal the serial interrupt: {e}");
                fits
            }
            Err(_) => 0,
        }
    }

    /// Free space in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    pub fn state(&self) -> SerialDeviceState {
        self.serial.state().into()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match u8::try_from(offset.saturating_add(i as u64)) {
                Ok(off) if u64::from(off) < SERIAL_PORTS_LEN => self.serial.read(off),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Ok(off) = u8::try_from(offset.saturating_add(i as u64)) else {
                continue;
            };
            if u64::from(off) >= SERIAL_PORTS_LEN {
                continue;
            }
            match self.serial.write(off, b) {
                Ok(()) => self.output_failed = false,
                Err(vm_superio::serial::Error::IOError(e)) => {
                    if !self.output_failed {
                        log::warn!("serial console output lost: {e}");
                        self.output_failed = true;
                    }
                }
                Err(e) => log::warn!("serial: {e:?}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const BASE: u64 = vireo_boot::layout::ports::SERIAL_COM1 as u64;
    // Register offsets (16550).
    const DATA: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn read1(s: &mut SerialDevice, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(BASE, off, &mut b);
        b[0]
    }

    #[test]
    fn output_reaches_the_writer() {
        let cap = Capture::default();
        let mut s = SerialDevice::new(Box::new(cap.clone())).unwrap();
        for &c in b"hello\n" {
            s.write(BASE, DATA, &[c]);
        }
        assert_eq!(&*cap.0.lock().unwrap(), b"hello\n");
    }

    #[test]
    fn input_fills_the_fifo_and_raises_the_interrupt() {
        let mut s = SerialDevice::new(Box::new(io::sink())).unwrap();
        // Enable the received-data interrupt.
        s.write(BASE, IER, &[0x01]);
        let _ = s.irq_evt().read();
        let big = [b'x'; 100];
        let n = s.enqueue_input(&big);
        assert_eq!(n, 64, "16550A FIFO size");
        assert_eq!(s.enqueue_input(b"more"), 0, "full FIFO takes nothing");
        assert!(s.irq_evt().read().unwrap() >= 1);
        assert_eq!(read1(&mut s, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(read1(&mut s, DATA), b'x');
        assert_eq!(s.fifo_capacity(), 1);
        assert_eq!(s.enqueue_input(b"ab"), 1);
        assert_eq!(s.enqueue_input(b""), 0);
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut s = SerialDevice::new(Box::new(io::sink())).unwrap();
        s.write(BASE, 7, &[0x5a]); // scratch
        s.enqueue_input(b"abc");
        let json = serde_json::to_string(&s.state()).unwrap();
        let st: SerialDeviceState = serde_json::from_str(&json).unwrap();
        let mut r = SerialDevice::from_state(&st, Box::new(io::sink())).unwrap();
        assert_eq!(r.state(), s.state());
        assert_eq!(read1(&mut r, 7), 0x5a);
        assert_eq!(read1(&mut r, DATA), b'a');

        let bad = SerialDeviceState {
            in_buffer: vec![0; 65],
            ..st
        };
        assert!(SerialDevice::from_state(&bad, Box::new(io::sink())).is_err());
    }

    #[test]
    fn out_of_range_and_failing_output_do_not_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut s = SerialDevice::new(Box::new(Broken)).unwrap();
        s.write(BASE, DATA, b"lost bytes");
        s.write(BASE, u64::MAX, &[1, 2]);
        s.write(BASE, 300, &[1]);
        let mut b = [0u8; 3];
        s.read(BASE, 6, &mut b);
        assert_eq!(b[2], 0xff, "offset 8 is outside the UART");
        s.read(BASE, u64::MAX, &mut b);
        assert_eq!(b, [0xff; 3]);
    }
}
