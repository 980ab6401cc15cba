//! virtio-net: a network device on a host TAP interface.

#[cfg(test)]
pub(crate) mod netns;
pub mod tap;
