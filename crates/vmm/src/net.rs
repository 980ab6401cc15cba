//! Host ends of the VM's network interfaces (`--net`, `nets` in a configuration).
//!
//! TAPs are opened once, before KVM is touched, so a bad `--net` is reported like any
//! other bad flag; they live as long as the VMM (a created `vireo-tapN` disappears with
//! it) and survive guest resets, while the virtio-net device models are rebuilt on each
//! boot around them.

use std::sync::Arc;

use vireo_devices::virtio::net::{MacAddr, NetBackend, TapName};

use crate::config::NetConfig;
use crate::VmmError;

/// Opens every interface's TAP (creating, attaching to bridges) in flag order. The
/// error names the flag: `--net #2 (tap=tap0): TAP 'tap0' does not exist …`.
pub fn open_backends(nets: &[NetConfig]) -> Result<Vec<Arc<NetBackend>>, VmmError> {
    nets.iter()
        .enumerate()
        .map(|(i, net)| {
            let which = match &net.tap {
                None => TapName::Auto,
                Some(name) => TapName::Named(name.clone()),
            };
            let err =
                |why: String| VmmError::Backend(format!("--net #{} (tap={which}): {why}", i + 1));
            let mac = net
                .mac
                .as_deref()
                .map(str::parse::<MacAddr>)
                .transpose()
                .map_err(err)?;
            let backend = NetBackend::open_queues(
                &which,
                mac,
                net.bridge.as_deref(),
                net.queues.unwrap_or(1),
            )
            .map_err(|e| err(e.to_string()))?;
            log::info!(
                "--net #{}: TAP {} ({}), guest MAC {}",
                i + 1,
                backend.tap().name(),
                if backend.tap().created() {
                    "created"
                } else {
                    "existing"
                },
                backend.mac()
            );
            Ok(Arc::new(backend))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag() {
        let nets = [NetConfig {
            tap: Some("vireo-nosuch9".into()),
            ..Default::default()
        }];
        let e = open_backends(&nets).unwrap_err().to_string();
        assert!(
            e.starts_with("--net #1 (tap=vireo-nosuch9): TAP 'vireo-nosuch9' does not exist"),
            "{e}"
        );
        assert!(open_backends(&[]).unwrap().is_empty());
    }
}
