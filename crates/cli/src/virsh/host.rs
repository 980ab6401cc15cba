//! `version`, `nodeinfo`, `uri`.

use clap::Subcommand;
use vireo_api::protocol::host::{HostNodeInfo, HostVersion};
use vireo_api::protocol::Empty;

use super::{connect, print_fields, print_json, OutputArgs, Result};

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Versions of vireo, the daemon and the VMM.
    Version {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The host's CPUs and memory.
    Nodeinfo {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The URI of the daemon this command talks to.
    Uri,
}

pub fn run(uri: Option<&str>, cmd: HostCommand) -> Result {
    let mut c = connect(uri)?;
    match cmd {
        HostCommand::Version { out } => {
            let v = c.call::<HostVersion>(&Empty {})?;
            if out.json() {
                print_json(&v);
                return Ok(());
            }
            println!("Compiled against library: vireo {}", vireo_api::VERSION);
            println!("Using library: vireo {}", vireo_api::VERSION);
            println!("Using API: vireo {}", v.api);
            println!(
                "Running hypervisor: {} ({})",
                v.vmm.as_deref().unwrap_or("vireo-vmm (unknown version)"),
                v.hypervisor
            );
            println!("Running against daemon: {}\n", v.daemon);
            Ok(())
        }
        HostCommand::Nodeinfo { out } => {
            let n = c.call::<HostNodeInfo>(&Empty {})?;
            if out.json() {
                print_json(&n);
                return Ok(());
            }
            print_fields(&[
                ("CPU model", n.cpu_model.clone()),
                ("CPU(s)", n.cpus.to_string()),
                ("CPU frequency", format!("{} MHz", n.mhz)),
                ("CPU socket(s)", n.sockets_per_cell.to_string()),
                ("Core(s) per socket", n.cores_per_socket.to_string()),
                ("Thread(s) per core", n.threads_per_core.to_string()),
                ("NUMA cell(s)", n.numa_cells.to_string()),
                ("Memory size", format!("{} KiB", n.memory_kib)),
            ]);
            Ok(())
        }
        HostCommand::Uri => {
            // virsh prints the URI of the connection it made; so does this (the daemon
            // reports the URI it serves).
            c.call::<HostVersion>(&Empty {})?;
            println!("{}\n", c.uri());
            Ok(())
        }
    }
}
