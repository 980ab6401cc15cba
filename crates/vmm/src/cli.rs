//! The flags of `vireo run` and `vireo-vmm` (the same VM, started from the CLI or by vireod).

use std::path::PathBuf;

use clap::Args;
use vireo_hypervisor::CpuTemplate;

use crate::config::{parse_size, ConsoleConfig, VmConfig, DEFAULT_CMDLINE};

/// Flags describing a one-off VM.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Kernel to boot: a bzImage or an ELF vmlinux (PVH entry preferred).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Guest RAM, e.g. 512M or 2G (a bare number is MiB).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// Serial console: stdio, or file:PATH.
    #[arg(long, value_name = "stdio|file:PATH", default_value = "stdio")]
    pub console: ConsoleConfig,
    /// CPU model: host (everything KVM offers) or baseline (a conservative x86-64).
    #[arg(long, value_name = "host|baseline", default_value = "host")]
    pub cpu_template: CpuTemplate,
    /// Exit (status 0) when the guest resets instead of restarting it.
    #[arg(long)]
    pub no_reboot: bool,
}

impl RunArgs {
    pub fn into_config(self) -> VmConfig {
        VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            memory: self.memory,
            cpus: self.cpus,
            console: self.console,
            cpu_template: self.cpu_template,
            no_reboot: self.no_reboot,
        }
    }
}
