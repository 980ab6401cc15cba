//! MC146818 CMOS RTC with its 128 bytes of NVRAM (ports 0x70 index, 0x71 data).
//!
//! The clock is the host's UTC wall clock plus an offset the guest changes by writing the
//! time registers (directly, or between setting and clearing SET in status register B, as
//! Linux does). Registers: 0x00-0x09 time and alarms, 0x0a-0x0d status A-D, 0x32 century
//! (advertised in the FADT). Status B's 24-hour and binary/BCD modes are honoured on reads
//! and writes; the default is BCD and 24-hour like a PC. No interrupts are generated (no
//! IRQ 8): status C only reports the update-ended flag.
//!
//! All other bytes are plain NVRAM kept for the device's lifetime, so across guest reboots
//! when the VMM keeps the instance. At construction the PC firmware memory-size bytes are
//! filled in (0x15-0x18, 0x30-0x31, 0x34-0x35, 0x5b-0x5d).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vireo_boot::layout;

use crate::BusDevice;

/// Length of the port range the device decodes (index and data).
pub const CMOS_PORTS_LEN: u64 = 2;
/// Bytes of CMOS (clock registers included).
pub const CMOS_SIZE: usize = 128;

const INDEX_MASK: u8 = 0x7f; // bit 7 of the index is the NMI mask: ignored

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: update in progress (read-only); divider 32.768 kHz, 1024 Hz periodic rate.
const A_UIP: u8 = 1 << 7;
const A_DEFAULT: u8 = 0x26;
/// Status B: SET halts updates while the guest writes the time.
const B_SET: u8 = 1 << 7;
const B_UIE: u8 = 1 << 4;
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;
const B_DEFAULT: u8 = B_24H;
/// Status C: interrupt request and update-ended flags.
const C_IRQF: u8 = 1 << 7;
const C_UF: u8 = 1 << 4;
/// Status D: valid RAM and time (the battery is fine).
const D_VRT: u8 = 1 << 7;
/// 12-hour mode: PM flag in the hours register.
const HOUR_PM: u8 = 1 << 7;
/// UIP is set for the last 244 µs before the registers change, as on the real part.
const UIP_WINDOW: Duration = Duration::from_micros(244);

/// A broken-down UTC time as the clock registers hold it (fields may be out of range
/// while the guest is in the middle of setting the clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl RtcTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        Self {
            // The RTC holds years 0..=9999; clamp anything a wild offset produces.
            year: y.clamp(0, 9999) as u16,
            month: m as u8,
            day: d as u8,
            hour: (tod / 3600) as u8,
            minute: (tod / 60 % 60) as u8,
            second: (tod % 60) as u8,
        }
    }

    /// Seconds since the Unix epoch, or None if a field is out of range. A day past the
    /// month's end rolls over into the next month, as `mktime` does.
    fn to_unix(self) -> Option<i64> {
        let valid = self.year <= 9999
            && (1..=12).contains(&self.month)
            && (1..=31).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        valid.then(|| {
            days_from_civil(self.year.into(), self.month.into(), self.day.into()) * 86_400
                + i64::from(self.hour) * 3600
                + i64::from(self.minute) * 60
                + i64::from(self.second)
        })
    }

    /// 1 = Sunday .. 7 = Saturday.
    fn day_of_week(self) -> u8 {
        let days = days_from_civil(self.year.into(), self.month.into(), self.day.into());
        // 1970-01-01 was a Thursday.
        ((days + 4).rem_euclid(7) + 1) as u8
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (March-based years make February,
/// with its leap day, the last month of the year).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9).rem_euclid(12);
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Guest-visible state of [`Cmos`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// Selected register (0..=127).
    pub index: u8,
    /// All 128 bytes; the clock registers' entries are unused (the time is computed).
    pub nvram: Vec<u8>,
    /// Guest clock minus host UTC clock, in seconds.
    pub time_offset_secs: i64,
    /// The time being written while status B's SET bit is on.
    pub staged: Option<RtcTime>,
    /// Guest second of the last status C read (for the update-ended flag).
    pub last_c_read_second: i64,
}

/// Source of the host's wall clock: time since the Unix epoch.
pub type Clock = Box<dyn Fn() -> Duration + Send>;

pub struct Cmos {
    index: u8,
    nvram: [u8; CMOS_SIZE],
    time_offset_secs: i64,
    staged: Option<RtcTime>,
    last_c_read_second: i64,
    clock: Clock,
}

fn system_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Cmos {
    /// A CMOS on the host's clock, with the memory-size bytes describing `ram_size` bytes
    /// of guest RAM split around the MMIO hole as `layout::ram_regions` does.
    pub fn new(ram_size: u64) -> Self {
        Self::with_clock(ram_size, Box::new(system_clock))
    }

    /// Like [`Cmos::new`] with another wall-clock source (tests, a deterministic clock).
    pub fn with_clock(ram_size: u64, clock: Clock) -> Self {
        let mut c = Self {
            index: 0,
            nvram: [0; CMOS_SIZE],
            time_offset_secs: 0,
            staged: None,
            last_c_read_second: 0,
            clock,
        };
        c.nvram[usize::from(REG_A)] = A_DEFAULT;
        c.nvram[usize::from(REG_B)] = B_DEFAULT;
        c.set_memory_size(ram_size);
        c.last_c_read_second = c.guest_now().as_secs() as i64;
        c
    }

    fn set_memory_size(&mut self, ram_size: u64) {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        let below_4g = ram_size.min(layout::MMIO_HOLE_START);
        let above_4g = ram_size - below_4g;
        let mut put16 = |reg: usize, v: u64| {
            let v = v.min(0xffff) as u16;
            self.nvram[reg..reg + 2].copy_from_slice(&v.to_le_bytes());
        };
        // Conventional memory in KiB.
        put16(0x15, 640);
        // Memory from 1 MiB in KiB (capped at 64 MiB), twice.
        let ext_kib = below_4g.saturating_sub(MIB) / KIB;
        put16(0x17, ext_kib);
        put16(0x30, ext_kib);
        // Memory from 16 MiB up to the hole in 64 KiB blocks.
        put16(0x34, below_4g.saturating_sub(16 * MIB) / (64 * KIB));
        // Memory above 4 GiB in 64 KiB blocks, 24 bits.
        let high = (above_4g / (64 * KIB)).min(0xff_ffff) as u32;
        self.nvram[0x5b..0x5e].copy_from_slice(&high.to_le_bytes()[..3]);
    }

    /// The guest's wall clock: host time plus the guest's offset.
    fn guest_now(&self) -> Duration {
        let host = (self.clock)();
        let secs = (host.as_secs() as i64).saturating_add(self.time_offset_secs);
        Duration::new(secs.max(0) as u64, host.subsec_nanos())
    }

    fn current_time(&self) -> RtcTime {
        self.staged
            .unwrap_or_else(|| RtcTime::from_unix(self.guest_now().as_secs() as i64))
    }

    fn status_b(&self) -> u8 {
        self.nvram[usize::from(REG_B)]
    }

    fn encode(&self, v: u8) -> u8 {
        if self.status_b() & B_BINARY != 0 {
            v
        } else {
            let v = v % 100;
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.status_b() & B_BINARY != 0 {
            v
        } else {
            // Invalid BCD digits decode out of range and are rejected when committed.
            (v >> 4) * 10 + (v & 0x0f)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.status_b() & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.status_b() & B_24H != 0 {
            return self.decode(v);
        }
        match self.decode(v & !HOUR_PM) {
            h @ 1..=12 => h % 12 + if v & HOUR_PM != 0 { 12 } else { 0 },
            _ => u8::MAX, // rejected on commit
        }
    }

    /// Makes `t` the guest's time, unless it is not a valid date.
    fn commit(&mut self, t: RtcTime) {
        match t.to_unix() {
            Some(secs) => {
                let host = (self.clock)().as_secs() as i64;
                self.time_offset_secs = secs - host;
            }
            None => log::debug!("cmos: guest set an invalid time {t:?}; ignored"),
        }
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH
            | REG_MONTH | REG_YEAR | REG_CENTURY => {
                let t = self.current_time();
                match reg {
                    REG_SECONDS => self.encode(t.second),
                    REG_MINUTES => self.encode(t.minute),
                    REG_HOURS => self.encode_hour(t.hour),
                    REG_DAY_OF_WEEK => self.encode(t.day_of_week()),
                    REG_DAY_OF_MONTH => self.encode(t.day),
                    REG_MONTH => self.encode(t.month),
                    REG_YEAR => self.encode((t.year % 100) as u8),
                    _ => self.encode((t.year / 100 % 100) as u8),
                }
            }
            REG_A => {
                let now = self.guest_now();
                let updating = self.staged.is_none()
                    && u64::from(now.subsec_nanos())
                        >= (Duration::from_secs(1) - UIP_WINDOW).as_nanos() as u64;
                self.nvram[usize::from(REG_A)] | if updating { A_UIP } else { 0 }
            }
            REG_C => {
                // Reading C clears it: report whether a second ended since the last read.
                let second = self.guest_now().as_secs() as i64;
                let mut c = 0;
                if self.staged.is_none() && second != self.last_c_read_second {
                    c |= C_UF;
                    if self.status_b() & B_UIE != 0 {
                        c |= C_IRQF;
                    }
                }
                self.last_c_read_second = second;
                c
            }
            REG_D => D_VRT,
            _ => self.nvram[usize::from(reg & INDEX_MASK)],
        }
    }

    fn write_register(&mut self, reg: u8, v: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_MONTH | REG_MONTH | REG_YEAR
            | REG_CENTURY => {
                let mut t = self.current_time();
                match reg {
                    REG_SECONDS => t.second = self.decode(v),
                    REG_MINUTES => t.minute = self.decode(v),
                    REG_HOURS => t.hour = self.decode_hour(v),
                    REG_DAY_OF_MONTH => t.day = self.decode(v),
                    REG_MONTH => t.month = self.decode(v),
                    REG_YEAR => t.year = (t.year / 100 * 100).saturating_add(self.decode(v).into()),
                    _ => t.year = u16::from(self.decode(v)) * 100 + t.year % 100,
                }
                if self.staged.is_some() {
                    self.staged = Some(t);
                } else {
                    self.commit(t);
                }
            }
            // The day of the week follows from the date.
            REG_DAY_OF_WEEK => {}
            REG_A => self.nvram[usize::from(REG_A)] = v & !A_UIP,
            REG_B => {
                let was_set = self.status_b() & B_SET != 0;
                let set = v & B_SET != 0;
                if set && !was_set {
                    self.staged = Some(self.current_time());
                }
                // Setting SET also clears UIE, as on the real part.
                self.nvram[usize::from(REG_B)] = if set { v & !B_UIE } else { v };
                if !set {
                    if let Some(t) = self.staged.take() {
                        self.commit(t);
                    }
                }
            }
            REG_C | REG_D => {} // read-only
            _ => self.nvram[usize::from(reg & INDEX_MASK)] = v,
        }
    }

    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nvram: self.nvram.to_vec(),
            time_offset_secs: self.time_offset_secs,
            staged: self.staged,
            last_c_read_second: self.last_c_read_second,
        }
    }

    /// Restores `state` (missing NVRAM bytes read as 0, extra ones are dropped).
    pub fn restore(&mut self, state: CmosState) {
        self.index = state.index & INDEX_MASK;
        self.nvram = [0; CMOS_SIZE];
        let n = state.nvram.len().min(CMOS_SIZE);
        self.nvram[..n].copy_from_slice(&state.nvram[..n]);
        self.time_offset_secs = state.time_offset_secs;
        self.staged = state.staged;
        self.last_c_read_second = state.last_c_read_second;
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.saturating_add(i as u64) {
                1 => self.read_register(self.index),
                // The index port is write-only; nothing else is decoded.
                _ => 0xff,
            };
        }
    }

    // A 16-bit write at 0x70 sets the index and writes the data port in one go.
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match offset.saturating_add(i as u64) {
                0 => self.index = v & INDEX_MASK,
                1 => self.write_register(self.index, v),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
