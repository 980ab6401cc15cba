//! virtio-net: a network device on a host TAP interface.
//!
//! * [`tap`]: the host end (`/dev/net/tun`, vnet headers, offloads, bridges);
//! * [`device`]: the device model ([`VirtioNet`]) and its backend ([`NetBackend`]);
//! * [`chain`]: descriptor-chain checks for both queues;
//! * `worker`: the thread serving the queues.

pub mod chain;
pub mod device;
pub mod mac;
#[cfg(test)]
pub(crate) mod netns;
pub mod tap;
#[cfg(test)]
pub(crate) mod testqueue;
#[cfg(test)]
mod tests;
mod worker;

pub use device::{NetBackend, VirtioNet};
pub use mac::MacAddr;
pub use tap::{Tap, TapError, TapName};
pub use worker::NetStats;
