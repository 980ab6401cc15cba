//! `vireo`: the command-line interface.
//!
//! * `vireo run`: a one-off VM from flags, without the daemon.
//! * (later) `vireo img …`: disk images, with qemu-img's verbs; virsh-style domain verbs.

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
}

fn main() -> ExitCode {
    vireo_vmm::logging::init();
    match Cli::parse().command {
        Command::Run(args) => vireo_vmm::run_and_report(&args.into_config()),
    }
}
