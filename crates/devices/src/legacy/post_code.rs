//! Port 0x80: the POST / boot-progress code port.
//!
//! Firmware and kernels write progress codes here (Linux also uses it as an I/O delay).
//! A guest writes [`BOOT_COMPLETE_MARKER`] when it has booted, e.g. from its init, and the
//! VMM reads how long that took with [`PostCode::boot_marker`] (the same convention as
//! Firecracker's boot timer).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// Value whose first write marks the end of the guest's boot.
pub const BOOT_COMPLETE_MARKER: u8 = 123;
/// Writes remembered by [`PostCode::history`]; older ones are dropped (Linux's I/O delay
/// writes to this port can be endless).
pub const POST_CODE_HISTORY: usize = 64;

/// Guest-visible (and diagnostic) state of [`PostCode`]. Times are microseconds since the
/// device's start instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostCodeState {
    pub last_value: u8,
    pub writes: u64,
    /// The most recent writes, oldest first: (value, µs since start).
    pub history: Vec<(u8, u64)>,
    pub boot_marker_us: Option<u64>,
}

pub struct PostCode {
    start: Instant,
    last_value: u8,
    writes: u64,
    history: VecDeque<(u8, Duration)>,
    boot_marker: Option<Duration>,
    /// Writes of the marker so far (every boot's, not only the first).
    markers: u64,
    /// Signalled on every write of the marker (the VMM's BOOT_COMPLETE event).
    marker_evt: Option<EventFd>,
}

impl PostCode {
    /// `start` is the instant times are measured from (normally when the VM was started).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            last_value: 0,
            writes: 0,
            history: VecDeque::with_capacity(POST_CODE_HISTORY),
            boot_marker: None,
            markers: 0,
            marker_evt: None,
        }
    }

    /// Signals `evt` on every write of [`BOOT_COMPLETE_MARKER`] from now on, so that the
    /// VMM learns of each boot's completion without polling.
    pub fn set_marker_notifier(&mut self, evt: EventFd) {
        self.marker_evt = Some(evt);
    }

    /// Number of [`BOOT_COMPLETE_MARKER`] writes so far (a rebooted guest writes it again).
    pub fn markers(&self) -> u64 {
        self.markers
    }

    /// The last value written (0 before any write).
    pub fn last_value(&self) -> u8 {
        self.last_value
    }

    /// Time of the last write since the start instant.
    pub fn last_write(&self) -> Option<Duration> {
        self.history.back().map(|&(_, t)| t)
    }

    /// The most recent writes (value, time since start), oldest first.
    pub fn history(&self) -> impl Iterator<Item = (u8, Duration)> + '_ {
        self.history.iter().copied()
    }

    /// Number of writes so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// When the guest first wrote [`BOOT_COMPLETE_MARKER`], since the start instant.
    pub fn boot_marker(&self) -> Option<Duration> {
        self.boot_marker
    }

    fn record(&mut self, value: u8) {
        let t = self.start.elapsed();
        self.last_value = value;
        self.writes = self.writes.saturating_add(1);
        if self.history.len() == POST_CODE_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((value, t));
        if value == BOOT_COMPLETE_MARKER {
            self.markers = self.markers.saturating_add(1);
            if let Some(evt) = &self.marker_evt {
                if let Err(e) = evt.write(1) {
                    log::warn!("cannot signal the boot-complete marker: {e}");
                }
            }
            if self.boot_marker.is_none() {
                self.boot_marker = Some(t);
                log::info!("guest boot-complete marker after {} µs", t.as_micros());
            }
        }
    }

    pub fn state(&self) -> PostCodeState {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        PostCodeState {
            last_value: self.last_value,
            writes: self.writes,
            history: self.history.iter().map(|&(v, t)| (v, us(t))).collect(),
            boot_marker_us: self.boot_marker.map(us),
        }
    }

    /// Restores `state`; times keep being measured from this device's start instant.
    pub fn restore(&mut self, state: PostCodeState) {
        self.last_value = state.last_value;
        self.writes = state.writes;
        let skip = state.history.len().saturating_sub(POST_CODE_HISTORY);
        self.history = state
            .history
            .into_iter()
            .skip(skip)
            .map(|(v, t)| (v, Duration::from_micros(t)))
            .collect();
        self.boot_marker = state.boot_marker_us.map(Duration::from_micros);
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(self.last_value);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // Only the byte at the port itself is the code (a wider write carries it first).
        if offset == 0 {
            if let Some(&v) = data.first() {
                self.record(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = vireo_boot::layout::ports::POST_CODE as u64;

    #[test]
    fn records_values_and_first_boot_marker() {
        let mut p = PostCode::new(Instant::now());
        let mut b = [0u8];
        p.read(BASE, 0, &mut b);
        assert_eq!(b[0], 0);
        assert_eq!(p.boot_marker(), None);
        p.write(BASE, 0, &[0x42]);
        p.read(BASE, 0, &mut b);
        assert_eq!(b[0], 0x42);
        assert!(p.last_write().is_some());

        std::thread::sleep(Duration::from_millis(2));
        p.write(BASE, 0, &[BOOT_COMPLETE_MARKER]);
        let first = p.boot_marker().unwrap();
        assert!(first >= Duration::from_millis(2));
        std::thread::sleep(Duration::from_millis(1));
        p.write(BASE, 0, &[BOOT_COMPLETE_MARKER]);
        assert_eq!(p.boot_marker(), Some(first), "only the first marker counts");
        assert_eq!(p.last_value(), BOOT_COMPLETE_MARKER);
        assert_eq!(p.writes(), 3);
        assert_eq!(p.markers(), 2);
        let vals: Vec<u8> = p.history().map(|(v, _)| v).collect();
        assert_eq!(vals, [0x42, 123, 123]);
    }

    #[test]
    fn every_marker_write_signals_the_notifier() {
        let mut p = PostCode::new(Instant::now());
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        p.set_marker_notifier(evt.try_clone().unwrap());
        p.write(BASE, 0, &[1]);
        assert!(evt.read().is_err(), "no signal for other codes");
        p.write(BASE, 0, &[BOOT_COMPLETE_MARKER]);
        p.write(BASE, 0, &[BOOT_COMPLETE_MARKER]);
        assert_eq!(evt.read().unwrap(), 2);
        assert_eq!(p.markers(), 2);
    }

    #[test]
    fn history_is_bounded_and_state_round_trips() {
        let mut p = PostCode::new(Instant::now());
        for i in 0..1000u32 {
            p.write(BASE, 0, &[i as u8]);
        }
        assert_eq!(p.history().count(), POST_CODE_HISTORY);
        assert_eq!(p.writes(), 1000);
        let json = serde_json::to_string(&p.state()).unwrap();
        let mut q = PostCode::new(Instant::now());
        q.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(q.state(), p.state());
        assert_eq!(
            q.boot_marker().map(|d| d.as_micros()),
            p.boot_marker().map(|d| d.as_micros())
        );
        assert!(p.boot_marker().is_some());
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut p = PostCode::new(Instant::now());
        p.write(BASE, 0, &[]);
        p.write(BASE, 1, &[7]);
        assert_eq!(p.writes(), 0);
        let mut wide = [0u8; 4];
        p.read(BASE, 0, &mut wide);
        p.restore(PostCodeState {
            history: vec![(1, u64::MAX); 500],
            ..Default::default()
        });
        assert_eq!(p.history().count(), POST_CODE_HISTORY);
    }
}
