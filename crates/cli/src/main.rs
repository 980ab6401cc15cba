//! `vireo`: the command-line interface.
//!
//! * `vireo run`: a one-off VM from flags, without the daemon.
//! * `vireo img …`: disk images, with qemu-img's verbs, flags and output.
//! * virsh's verbs (`list`, `define`, `start`, `console`, …) through vireod, chosen with
//!   `-c URI` or `$VIREO_DEFAULT_URI` (module [`virsh`]).

mod virsh;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vireo_vmm::cli::RunArgs;

#[derive(Parser)]
#[command(
    name = "vireo",
    version,
    about = "vireo: run and manage KVM virtual machines"
)]
struct Cli {
    /// The daemon to talk to: vireo:///system, vireo:///session, or with ?root=DIR
    /// (default: $VIREO_DEFAULT_URI, else system for root and session for others).
    #[arg(short = 'c', long = "connect", value_name = "URI", global = true)]
    connect: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a one-off VM from flags (no daemon); ends when the guest powers off.
    Run(RunArgs),
    /// Disk images (raw, qcow2; vmdk/vdi/vhd/vhdx import) with qemu-img's verbs.
    #[command(subcommand)]
    Img(vireo_img::ImgCommand),
    #[command(flatten)]
    Domain(virsh::domain::DomainCommand),
    #[command(flatten)]
    Host(virsh::host::HostCommand),
    #[command(flatten)]
    Storage(virsh::storage::StorageCommand),
    /// Create a domain from virt-install's flags: define it, start it, attach the console.
    Install(virsh::install::InstallArgs),
}

fn main() -> ExitCode {
    vireo_vmm::logging::init();
    let cli = Cli::parse();
    let connect = cli.connect.as_deref();
    match cli.command {
        Command::Run(args) => vireo_vmm::run_from_args(&args),
        Command::Img(cmd) => vireo_img::run(cmd),
        Command::Domain(cmd) => virsh::report(virsh::domain::run(connect, cmd)),
        Command::Host(cmd) => virsh::report(virsh::host::run(connect, cmd)),
        Command::Storage(cmd) => virsh::report(virsh::storage::run(connect, cmd)),
        Command::Install(args) => virsh::report(virsh::install::run(connect, args)),
    }
}
