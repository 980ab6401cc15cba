//! `vireo-vmm`: runs one VM, configured by the same flags as `vireo run`.

use std::process::ExitCode;

use clap::Parser;
use vireo_vmm::cli::RunArgs;

#[derive(Parser)]
#[command(
    name = "vireo-vmm",
    version,
    about = "The vireo virtual machine monitor: one VM per process"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> ExitCode {
    vireo_vmm::logging::init();
    let args = Args::parse();
    vireo_vmm::run_from_args(&args.run)
}
