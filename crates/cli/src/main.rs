//! `vireo`: the command-line interface.
//!
//! * `vireo run`: a one-off VM from flags, without the daemon.
//! * `vireo img …`: disk images, with qemu-img's verbs, flags and output.
//! * (later) virsh-style domain verbs through the daemon.

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
}

fn main() -> ExitCode {
    vireo_vmm::logging::init();
    match Cli::parse().command {
        Command::Run(args) => vireo_vmm::run_and_report(&args.into_config()),
        Command::Img(cmd) => vireo_img::run(cmd),
    }
}
