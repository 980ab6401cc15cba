//! Power requests from the guest (ACPI sleep, reset register, i8042 reset line) and its
//! panic reports (pvpanic) to the VMM.
//!
//! Devices run on vCPU threads; they record the request and wake the VMM's event loop
//! through an eventfd, which then stops every vCPU and powers off or rebuilds the VM.

use std::sync::atomic::{AtomicU8, Ordering};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What the guest asked the platform to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    /// ACPI S5 (soft off): the VM ends with success.
    Poweroff,
    /// Platform reset (ACPI reset register, i8042 pulse, port 0xcf9).
    Reset,
    /// The guest kernel reported a panic (pvpanic). It usually resets right after
    /// (`panic=-1`), so this outranks a reset: the VMM must learn that it was a crash.
    Panic,
}

/// Shared by the devices that can power the VM off or reset it.
pub struct PowerEvents {
    eventfd: EventFd,
    // 0 = none, 1 = panic, 2 = poweroff, 3 = reset: the lowest code wins if several arrive.
    pending: AtomicU8,
}

impl PowerEvents {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            eventfd: EventFd::new(EFD_NONBLOCK)?,
            pending: AtomicU8::new(0),
        })
    }

    /// Records `req` and wakes the VMM.
    pub fn request(&self, req: PowerRequest) {
        let code = match req {
            PowerRequest::Panic => 1,
            PowerRequest::Poweroff => 2,
            PowerRequest::Reset => 3,
        };
        // Keep the "strongest" request: a poweroff is never turned into a reset.
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || code < cur).then_some(code)
            })
            .ok();
        let _ = self.eventfd.write(1);
    }

    /// The request made so far, if any (does not clear it).
    pub fn pending(&self) -> Option<PowerRequest> {
        match self.pending.load(Ordering::Acquire) {
            1 => Some(PowerRequest::Panic),
            2 => Some(PowerRequest::Poweroff),
            3 => Some(PowerRequest::Reset),
            _ => None,
        }
    }

    /// Forgets any request (used when the VM is rebuilt after a reset).
    pub fn clear(&self) {
        self.pending.store(0, Ordering::Release);
        let _ = self.eventfd.read();
    }

    /// The eventfd the VMM polls.
    pub fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_is_not_downgraded_to_reset() {
        let p = PowerEvents::new().unwrap();
        assert_eq!(p.pending(), None);
        p.request(PowerRequest::Reset);
        assert_eq!(p.pending(), Some(PowerRequest::Reset));
        p.request(PowerRequest::Poweroff);
        p.request(PowerRequest::Reset);
        assert_eq!(p.pending(), Some(PowerRequest::Poweroff));
        p.request(PowerRequest::Panic);
        p.request(PowerRequest::Reset);
        assert_eq!(
            p.pending(),
            Some(PowerRequest::Panic),
            "a panic is never hidden"
        );
        assert!(p.eventfd().read().unwrap() >= 1);
        p.clear();
        assert_eq!(p.pending(), None);
    }
}
