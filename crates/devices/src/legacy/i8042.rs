//! A minimal i8042 keyboard controller: enough for Linux's reboot path (command 0xfe pulses
//! the CPU reset line) and for probes not to hang or misbehave. There is no keyboard or
//! mouse behind it and no IRQ 1/12: every answer is polled by the guest through the status
//! register, which is how controller commands work anyway.
//!
//! Insert the device twice on the port bus, at 0x60 (data) and 0x64 (status/command), each
//! 1 byte long; the `base` of an access tells the two apart.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vireo_boot::layout::ports;

use crate::{BusDevice, PowerEvents, PowerRequest};

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
/// The last write went to the command port (1) or the data port (0).
const STATUS_COMMAND: u8 = 1 << 3;
/// The byte in the output buffer comes from the auxiliary (mouse) port.
const STATUS_AUX_DATA: u8 = 1 << 5;

// Command byte bits.
const CB_KBD_INT: u8 = 1 << 0;
const CB_SYSTEM_FLAG: u8 = 1 << 2;
const CB_KBD_DISABLE: u8 = 1 << 4;
const CB_AUX_DISABLE: u8 = 1 << 5;
const CB_TRANSLATE: u8 = 1 << 6;
/// What a PC BIOS leaves: keyboard interrupt on, POST passed, AUX off, scancode translation.
const DEFAULT_COMMAND_BYTE: u8 = CB_KBD_INT | CB_SYSTEM_FLAG | CB_AUX_DISABLE | CB_TRANSLATE;

/// Output port bit 0 drives the CPU reset line (active low); bit 1 is the A20 gate.
const OUTPUT_PORT_RESET_N: u8 = 1 << 0;
const OUTPUT_PORT_A20: u8 = 1 << 1;
const DEFAULT_OUTPUT_PORT: u8 = OUTPUT_PORT_RESET_N | OUTPUT_PORT_A20;

// Controller commands (written to port 0x64).
const CMD_READ_COMMAND_BYTE: u8 = 0x20;
const CMD_WRITE_COMMAND_BYTE: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_READ_TEST_INPUTS: u8 = 0xe0;
/// 0xf0..=0xff pulse output port lines for bits clear in the low nibble; bit 0 is reset.
const CMD_PULSE_FIRST: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;

// Keyboard (device) commands and answers, written to port 0x60.
const KBD_ECHO: u8 = 0xee;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
/// MF2 keyboard with translation.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Bytes the guest has not read yet; a guest can queue answers without reading them, so the
/// queue is bounded (the oldest answers win, later ones are dropped).
const OUTPUT_QUEUE_MAX: usize = 16;

/// Guest-visible state of [`I8042Device`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    pub command_byte: u8,
    pub output_port: u8,
    /// Status bits that persist (system flag, last-write-was-command).
    pub status: u8,
    /// A controller command waiting for its data byte on port 0x60.
    pub pending_command: Option<u8>,
    /// Output buffer contents, oldest first: (byte, from the aux port).
    pub output: Vec<(u8, bool)>,
    /// The byte a read of 0x60 returns when the buffer is empty (the last one read).
    pub last_output: u8,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            command_byte: DEFAULT_COMMAND_BYTE,
            output_port: DEFAULT_OUTPUT_PORT,
            status: STATUS_SYSTEM_FLAG,
            pending_command: None,
            output: Vec::new(),
            last_output: 0,
        }
    }
}

pub struct I8042Device {
    power: Arc<PowerEvents>,
    command_byte: u8,
    output_port: u8,
    status: u8,
    pending_command: Option<u8>,
    output: VecDeque<(u8, bool)>,
    last_output: u8,
}

impl I8042Device {
    pub fn new(power: Arc<PowerEvents>) -> Self {
        let mut d = Self {
            power,
            command_byte: 0,
            output_port: 0,
            status: 0,
            pending_command: None,
            output: VecDeque::new(),
            last_output: 0,
        };
        d.restore(I8042State::default());
        d
    }

    pub fn state(&self) -> I8042State {
        I8042State {
            command_byte: self.command_byte,
            output_port: self.output_port,
            status: self.status,
            pending_command: self.pending_command,
            output: self.output.iter().copied().collect(),
            last_output: self.last_output,
        }
    }

    pub fn restore(&mut self, state: I8042State) {
        self.command_byte = state.command_byte;
        self.output_port = state.output_port;
        self.status = state.status & (STATUS_SYSTEM_FLAG | STATUS_COMMAND);
        self.pending_command = state.pending_command;
        self.output = state.output.into_iter().take(OUTPUT_QUEUE_MAX).collect();
        self.last_output = state.last_output;
    }

    fn push(&mut self, byte: u8, aux: bool) {
        if self.output.len() < OUTPUT_QUEUE_MAX {
            self.output.push_back((byte, aux));
        }
    }

    fn reset_system(&mut self, why: &str) {
        log::info!("guest reset the machine through the i8042 ({why})");
        self.power.request(PowerRequest::Reset);
    }

    fn read_status(&self) -> u8 {
        let mut s = self.status;
        if let Some(&(_, aux)) = self.output.front() {
            s |= STATUS_OUTPUT_FULL;
            if aux {
                s |= STATUS_AUX_DATA;
            }
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        if let Some((b, _)) = self.output.pop_front() {
            self.last_output = b;
        }
        self.last_output
    }

    fn write_command(&mut self, cmd: u8) {
        self.status |= STATUS_COMMAND;
        self.pending_command = None;
        match cmd {
            CMD_READ_COMMAND_BYTE => self.push(self.command_byte, false),
            CMD_WRITE_COMMAND_BYTE
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending_command = Some(cmd),
            CMD_DISABLE_AUX => self.command_byte |= CB_AUX_DISABLE,
            CMD_ENABLE_AUX => self.command_byte &= !CB_AUX_DISABLE,
            CMD_TEST_AUX | CMD_TEST_KBD => self.push(PORT_TEST_OK, false),
            CMD_SELF_TEST => {
                self.status |= STATUS_SYSTEM_FLAG;
                self.push(SELF_TEST_OK, false);
            }
            CMD_DISABLE_KBD => self.command_byte |= CB_KBD_DISABLE,
            CMD_ENABLE_KBD => self.command_byte &= !CB_KBD_DISABLE,
            CMD_READ_INPUT_PORT | CMD_READ_TEST_INPUTS => self.push(0, false),
            CMD_READ_OUTPUT_PORT => self.push(self.output_port, false),
            c if c >= CMD_PULSE_FIRST && c & OUTPUT_PORT_RESET_N == 0 => {
                self.reset_system("pulse command");
            }
            // Pulses of other lines and unknown commands: nothing to do.
            _ => log::debug!("i8042: ignored command {cmd:#04x}"),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.status &= !STATUS_COMMAND;
        match self.pending_command.take() {
            Some(CMD_WRITE_COMMAND_BYTE) => {
                self.command_byte = value;
                self.status = (self.status & !STATUS_SYSTEM_FLAG) | (value & CB_SYSTEM_FLAG);
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & OUTPUT_PORT_RESET_N == 0 {
                    self.reset_system("output port reset line");
                }
            }
            Some(CMD_WRITE_KBD_BUFFER) => self.push(value, false),
            Some(CMD_WRITE_AUX_BUFFER) => self.push(value, true),
            // No mouse: bytes sent to it vanish, as with an empty PS/2 port.
            Some(CMD_WRITE_AUX) => {}
            _ => self.keyboard_command(value),
        }
    }

    /// A byte for the keyboard itself: answer like a plain MF2 keyboard would.
    fn keyboard_command(&mut self, value: u8) {
        match value {
            KBD_ECHO => self.push(KBD_ECHO, false),
            KBD_IDENTIFY => {
                self.push(KBD_ACK, false);
                KBD_ID.iter().for_each(|&b| self.push(b, false));
            }
            KBD_RESET => {
                self.push(KBD_ACK, false);
                self.push(KBD_BAT_OK, false);
            }
            // LEDs, typematic rate, scancode set, enable/disable and their arguments.
            _ => self.push(KBD_ACK, false),
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let value = match base.checked_add(offset) {
            Some(a) if a == u64::from(ports::I8042_DATA) => self.read_data(),
            Some(a) if a == u64::from(ports::I8042_COMMAND) => self.read_status(),
            _ => 0xff,
        };
        data.fill(0xff);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match base.checked_add(offset) {
            Some(a) if a == u64::from(ports::I8042_DATA) => self.write_data(value),
            Some(a) if a == u64::from(ports::I8042_COMMAND) => self.write_command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: u64 = ports::I8042_DATA as u64;
    const CMD: u64 = ports::I8042_COMMAND as u64;

    fn dev() -> (I8042Device, Arc<PowerEvents>) {
        let p = Arc::new(PowerEvents::new().unwrap());
        (I8042Device::new(p.clone()), p)
    }

    fn status(d: &mut I8042Device) -> u8 {
        let mut b = [0u8];
        d.read(CMD, 0, &mut b);
        b[0]
    }

    fn data(d: &mut I8042Device) -> u8 {
        let mut b = [0u8];
        d.read(DATA, 0, &mut b);
        b[0]
    }

    fn command(d: &mut I8042Device, c: u8) {
        d.write(CMD, 0, &[c]);
    }

    #[test]
    fn fe_resets() {
        let (mut d, p) = dev();
        assert_eq!(status(&mut d) & STATUS_OUTPUT_FULL, 0);
        command(&mut d, 0xfe);
        assert_eq!(p.pending(), Some(PowerRequest::Reset));
    }

    #[test]
    fn linux_reboot_sequence() {
        // Linux's kb_wait polls status bit 1 (input full) to clear, then writes 0xfe.
        let (mut d, p) = dev();
        for _ in 0..10 {
            assert_eq!(status(&mut d) & 0b10, 0);
        }
        command(&mut d, 0xfe);
        assert_eq!(p.pending(), Some(PowerRequest::Reset));
    }

    #[test]
    fn probe_commands_answer() {
        let (mut d, p) = dev();
        command(&mut d, CMD_SELF_TEST);
        assert_ne!(status(&mut d) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(data(&mut d), SELF_TEST_OK);
        assert_eq!(status(&mut d) & STATUS_OUTPUT_FULL, 0);

        command(&mut d, CMD_READ_COMMAND_BYTE);
        assert_eq!(data(&mut d), DEFAULT_COMMAND_BYTE);
        command(&mut d, CMD_WRITE_COMMAND_BYTE);
        d.write(DATA, 0, &[0x47]);
        command(&mut d, CMD_READ_COMMAND_BYTE);
        assert_eq!(data(&mut d), 0x47);

        command(&mut d, CMD_DISABLE_KBD);
        command(&mut d, CMD_READ_COMMAND_BYTE);
        assert_ne!(data(&mut d) & CB_KBD_DISABLE, 0);
        command(&mut d, CMD_ENABLE_KBD);
        command(&mut d, CMD_READ_COMMAND_BYTE);
        assert_eq!(data(&mut d) & CB_KBD_DISABLE, 0);

        // Write to the keyboard output buffer: read back as keyboard data.
        command(&mut d, CMD_WRITE_KBD_BUFFER);
        d.write(DATA, 0, &[0x5a]);
        assert_eq!(status(&mut d) & (STATUS_OUTPUT_FULL | STATUS_AUX_DATA), 1);
        assert_eq!(data(&mut d), 0x5a);
        command(&mut d, CMD_WRITE_AUX_BUFFER);
        d.write(DATA, 0, &[0x33]);
        assert_eq!(status(&mut d) & STATUS_AUX_DATA, STATUS_AUX_DATA);
        assert_eq!(data(&mut d), 0x33);

        // D1 with the reset line kept high (A20 enable) does not reset.
        command(&mut d, CMD_WRITE_OUTPUT_PORT);
        d.write(DATA, 0, &[0xdf]);
        command(&mut d, CMD_READ_OUTPUT_PORT);
        assert_eq!(data(&mut d), 0xdf);
        assert_eq!(p.pending(), None);

        // Keyboard reset answers ACK then BAT OK; an empty buffer repeats the last byte.
        d.write(DATA, 0, &[KBD_RESET]);
        assert_eq!(data(&mut d), KBD_ACK);
        assert_eq!(data(&mut d), KBD_BAT_OK);
        assert_eq!(data(&mut d), KBD_BAT_OK);
        assert_eq!(status(&mut d) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(p.pending(), None);
    }

    #[test]
    fn output_port_reset_line_resets() {
        let (mut d, p) = dev();
        command(&mut d, CMD_WRITE_OUTPUT_PORT);
        d.write(DATA, 0, &[0xfe]);
        assert_eq!(p.pending(), Some(PowerRequest::Reset));
    }

    #[test]
    fn every_byte_on_every_port_is_survivable() {
        let (mut d, p) = dev();
        for c in 0..=255u8 {
            // Keep the reset pulses (even 0xf0..) and a reset through D1 out of this run.
            if c >= CMD_PULSE_FIRST && c & 1 == 0 {
                continue;
            }
            command(&mut d, c);
            for v in [0u8, 0x01, 0x55, 0xff] {
                d.write(DATA, 0, &[v | 1]);
                status(&mut d);
                data(&mut d);
            }
        }
        assert_eq!(p.pending(), None);
        // A flood of keyboard bytes without reads stays bounded.
        for _ in 0..10_000 {
            d.write(DATA, 0, &[KBD_IDENTIFY]);
        }
        assert_eq!(d.state().output.len(), OUTPUT_QUEUE_MAX);
        // Odd accesses.
        d.write(DATA, 0, &[]);
        d.write(u64::MAX, 1, &[0xfe]);
        let mut wide = [0u8; 4];
        d.read(CMD, 0, &mut wide);
        d.read(0x61, 0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert_eq!(p.pending(), None);
    }

    #[test]
    fn state_round_trips() {
        let (mut d, _) = dev();
        command(&mut d, CMD_WRITE_COMMAND_BYTE);
        let mid = d.state();
        let json = serde_json::to_string(&mid).unwrap();
        let (mut e, _) = dev();
        e.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(e.state(), mid);
        e.write(DATA, 0, &[0x00]);
        command(&mut e, CMD_READ_COMMAND_BYTE);
        assert_eq!(data(&mut e), 0x00, "pending D-command survived the restore");
    }
}
