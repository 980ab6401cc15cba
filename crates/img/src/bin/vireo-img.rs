//! Test-only front end: `vireo-img <verb> ...` (the real command is
//! `vireo img <verb>` in vireo-cli).

use clap::Parser;
use vireo_img::ImgCommand;

#[derive(Parser)]
#[command(name = "vireo-img")]
struct Args {
    #[command(subcommand)]
    cmd: ImgCommand,
}

fn main() -> std::process::ExitCode {
    vireo_img::run(Args::parse().cmd)
}
