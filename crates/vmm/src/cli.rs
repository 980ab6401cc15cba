//! The flags of `vireo run` and `vireo-vmm` (the same VM, started from the CLI or by vireod).
//!
//! Two kinds of flags: those that define the VM (`--kernel`, `--memory`, …), which can
//! instead come from a JSON file with `--config`, and those that wire this process up
//! (`--console`, `--console-log`, `--api-socket`, `--exit-file`, `--start-paused`), which
//! combine with either and override what the file says.

use std::path::PathBuf;

use clap::Args;
use vireo_hypervisor::CpuTemplate;

use crate::config::{
    parse_size, BalloonConfig, ConfigError, ConsoleConfig, DiskConfig, NetConfig, RngConfig,
    VmConfig, VmmOptions, VsockConfig, DEFAULT_CMDLINE,
};

/// The flags that `--config` replaces.
const VM_FLAGS: [&str; 12] = [
    "balloon",
    "disks",
    "kernel",
    "initrd",
    "cmdline",
    "memory",
    "cpus",
    "cpu_template",
    "no_reboot",
    "nets",
    "rng",
    "vsock",
];

/// Flags describing a one-off VM.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Read the VM's configuration from a JSON file (a serialized VmConfig, see
    /// docs/vmm-api.md) instead of the flags --kernel … --no-reboot.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = VM_FLAGS)]
    pub config: Option<PathBuf>,
    /// Kernel to boot: a bzImage or an ELF vmlinux (PVH entry preferred).
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    pub kernel: Option<PathBuf>,
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
    /// Console: stdio (the default), file:PATH, or socket:PATH (a unix socket that
    /// console clients connect to); `virtio` puts the guest console on a virtio-console
    /// (hvc0) instead of the serial port, with the same backend (repeat the flag to give
    /// both, e.g. `--console virtio --console socket:PATH`).
    #[arg(long, value_name = "stdio|file:PATH|socket:PATH|virtio")]
    pub console: Vec<ConsoleFlag>,
    /// Also append every byte of serial output to this file.
    #[arg(long, value_name = "PATH")]
    pub console_log: Option<PathBuf>,
    /// CPU model: host (everything KVM offers) or baseline (a conservative x86-64).
    #[arg(long, value_name = "host|baseline", default_value = "host")]
    pub cpu_template: CpuTemplate,
    /// Exit (status 0) when the guest resets instead of restarting it.
    #[arg(long)]
    pub no_reboot: bool,
    /// A virtio-blk disk (repeatable; vda, vdb, … in order):
    /// path=FILE[,format=raw|qcow2][,readonly=on][,serial=S][,queues=N]. Without format
    /// the image is probed (unsafe for raw images: give format=). `,,` is a comma in a
    /// value.
    #[arg(long = "disk", value_name = "path=FILE,…")]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net interface on a TAP (repeatable): tap=auto creates vireo-tapN (needs
    /// CAP_NET_ADMIN), tap=NAME attaches to an existing TAP; mac= defaults to a
    /// generated 52:54:00:xx:xx:xx; bridge=BR adds the TAP to a host bridge; queues=N
    /// queue pairs (a multi-queue TAP).
    #[arg(long = "net", value_name = "tap=NAME|auto,mac=MAC,bridge=BR,queues=N")]
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device (PCI) fed from the host's getrandom(2): the guest's /dev/hwrng.
    #[arg(long)]
    pub rng: bool,
    /// A virtio-vsock device: the guest's context id and the host's unix socket (host
    /// programs connect to PATH and write `CONNECT <port>`; guest connections to host
    /// port P go to PATH_P).
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<VsockConfig>,
    /// A virtio-balloon device, driven through the control API (balloon-set,
    /// query-balloon); deflate-on-oom=on lets the guest take memory back under pressure;
    /// target=SIZE is the guest memory to aim for from the start.
    #[arg(long, value_name = "deflate-on-oom=on,target=SIZE", num_args = 0..=1, default_missing_value = "")]
    pub balloon: Option<BalloonConfig>,
    /// Listen for control commands (JSON, one per line) on this unix socket; SIGHUP is then
    /// ignored (see docs/vmm-api.md).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Write {"status","reason","detail"} to this file (atomically) just before exiting.
    #[arg(long, value_name = "PATH")]
    pub exit_file: Option<PathBuf>,
    /// Build the VM but do not run its vCPUs until a `resume` command.
    #[arg(long)]
    pub start_paused: bool,
}

impl RunArgs {
    /// The process options alone: known even when the VM configuration cannot be read,
    /// so that the exit file can still report why.
    pub fn options(&self) -> VmmOptions {
        VmmOptions {
            api_socket: self.api_socket.clone(),
            exit_file: self.exit_file.clone(),
            start_paused: self.start_paused,
        }
    }

    /// The VM configuration: from `--config` or from the flags, with the console flags
    /// applied on top.
    pub fn vm_config(&self) -> Result<VmConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_json_file(path)?,
            None => VmConfig {
                // clap guarantees --kernel when there is no --config; an empty path is
                // reported by the kernel loader like any missing file.
                kernel: self.kernel.clone().unwrap_or_default(),
                initrd: self.initrd.clone(),
                cmdline: self.cmdline.clone(),
                memory: self.memory,
                cpus: self.cpus,
                console: ConsoleConfig::Stdio,
                console_log: None,
                cpu_template: self.cpu_template,
                no_reboot: self.no_reboot,
                disks: self.disks.clone(),
                nets: self.nets.clone(),
                rng: self.rng.then(RngConfig::default),
                vsock: self.vsock.clone(),
                balloon: self.balloon.clone(),
                ..Default::default()
            },
        };
        let mut backends = 0;
        for flag in &self.console {
            match flag {
                ConsoleFlag::Backend(console) => {
                    backends += 1;
                    if backends > 1 {
                        return Err(ConfigError::Device(
                            "--console: more than one of stdio, file:PATH, socket:PATH".into(),
                        ));
                    }
                    config.console = console.clone();
                }
                ConsoleFlag::Virtio => {
                    config.virtio_console = true;
                    // The default command line names the serial port; the console is on
                    // hvc0 now.
                    if config.cmdline == DEFAULT_CMDLINE {
                        config.cmdline = VIRTIO_CONSOLE_CMDLINE.to_string();
                    }
                }
            }
        }
        if let Some(log) = &self.console_log {
            config.console_log = Some(log.clone());
        }
        Ok(config)
    }
}

/// The default command line when the console is a virtio-console.
pub const VIRTIO_CONSOLE_CMDLINE: &str = "console=hvc0";

/// One `--console` value: where the console goes, or which device carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleFlag {
    Backend(ConsoleConfig),
    /// `virtio`: a virtio-console (hvc0) instead of the serial port.
    Virtio,
}

impl std::str::FromStr for ConsoleFlag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "virtio" => Ok(ConsoleFlag::Virtio),
            _ => s
                .parse()
                .map(ConsoleFlag::Backend)
                .map_err(|e: String| e.replace("(use stdio,", "(use virtio, stdio,")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, String> {
        Cli::try_parse_from(std::iter::once("vireo-vmm").chain(args.iter().copied()))
            .map(|c| c.run)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_make_a_config() {
        let a = parse(&[
            "--kernel",
            "/k",
            "--memory",
            "64M",
            "--console",
            "socket:/run/c",
            "--api-socket",
            "/run/a",
            "--exit-file",
            "/run/e",
            "--start-paused",
        ])
        .unwrap();
        let c = a.vm_config().unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.memory, 64 << 20);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert_eq!(c.console, ConsoleConfig::Socket("/run/c".into()));
        let o = a.options();
        assert_eq!(o.api_socket, Some("/run/a".into()));
        assert_eq!(o.exit_file, Some("/run/e".into()));
        assert!(o.start_paused);
        let c = parse(&["--kernel", "/k"]).unwrap().vm_config().unwrap();
        assert_eq!(c.console, ConsoleConfig::Stdio);
        assert!(c.nets.is_empty());
        let c = parse(&[
            "--kernel",
            "/k",
            "--net",
            "tap=auto",
            "--net",
            "tap=tap7,mac=52:54:00:00:00:07",
        ])
        .unwrap()
        .vm_config()
        .unwrap();
        assert_eq!(c.nets.len(), 2);
        assert_eq!(c.nets[0].tap, None);
        assert_eq!(c.nets[1].tap.as_deref(), Some("tap7"));
        assert_eq!(c.nets[1].mac.as_deref(), Some("52:54:00:00:00:07"));
        let e = parse(&["--kernel", "/k", "--net", "mac=ff:ff:ff:ff:ff:ff"]).unwrap_err();
        assert!(e.contains("--net") && e.contains("multicast"), "{e}");
        assert_eq!(c.rng, None);
        let c = parse(&["--kernel", "/k", "--rng"])
            .unwrap()
            .vm_config()
            .unwrap();
        assert_eq!(c.rng, Some(RngConfig::default()));
        assert_eq!(c.memory, crate::config::DEFAULT_MEMORY);
    }

    #[test]
    fn disk_flags() {
        use crate::config::DiskFormat;
        let a = parse(&[
            "--kernel",
            "/k",
            "--disk",
            "path=/img/a.qcow2,format=qcow2,serial=root disk,queues=4",
            "--disk",
            "/img/b,,c.raw,readonly=on,format=raw",
            "--disk",
            "file=/img/c",
        ])
        .unwrap();
        let c = a.vm_config().unwrap();
        assert_eq!(
            c.disks,
            vec![
                DiskConfig {
                    path: "/img/a.qcow2".into(),
                    format: Some(DiskFormat::Qcow2),
                    readonly: false,
                    serial: Some("root disk".into()),
                    queues: Some(4),
                },
                DiskConfig {
                    path: "/img/b,c.raw".into(),
                    format: Some(DiskFormat::Raw),
                    readonly: true,
                    ..Default::default()
                },
                DiskConfig {
                    path: "/img/c".into(),
                    ..Default::default()
                },
            ]
        );
        for (bad, why) in [
            ("format=raw", "path=… is missing"),
            ("path=/d,format=vmdk", "format=vmdk: use raw or qcow2"),
            ("path=/d,readonly=maybe", "readonly=maybe: use on or off"),
            ("path=/d,cache=none", "unknown key 'cache'"),
            (
                "path=/d,serial=123456789012345678901",
                "serial '123456789012345678901'",
            ),
            ("path=/d,queues=0", "queues=0 is out of range"),
            ("path=/d,queues=17", "queues=17 is out of range"),
            ("path=/d,queues=x", "queues=x: not a number"),
            ("path=", "path is empty"),
            ("path=/d,junk", "'junk' is not key=value"),
        ] {
            let e = parse(&["--kernel", "/k", "--disk", bad]).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn config_conflicts_with_vm_flags_but_not_with_wiring_flags() {
        for flag in [
            &["--kernel", "/k"][..],
            &["--memory", "1G"],
            &["--cpus", "2"],
            &["--cmdline", "x"],
            &["--initrd", "/i"],
            &["--cpu-template", "baseline"],
            &["--no-reboot"],
            &["--disk", "path=/d"],
            &["--net", "tap=auto"],
            &["--rng"],
        ] {
            let mut args = vec!["--config", "/c.json"];
            args.extend_from_slice(flag);
            let e = parse(&args).unwrap_err();
            assert!(e.contains("cannot be used with"), "{flag:?}: {e}");
        }
        let e = parse(&[]).unwrap_err();
        assert!(e.contains("--kernel"), "{e}");

        let dir = std::env::temp_dir().join(format!("vireo-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.json");
        std::fs::write(
            &file,
            r#"{"kernel":"/k","cpus":3,"console":{"file":"/tmp/out"},"console_log":"/l1"}"#,
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = parse(&["--config", f]).unwrap().vm_config().unwrap();
        assert_eq!(c.cpus, 3);
        assert_eq!(c.console, ConsoleConfig::File("/tmp/out".into()));
        let c = parse(&[
            "--config",
            f,
            "--console",
            "socket:/s",
            "--console-log",
            "/l2",
        ])
        .unwrap()
        .vm_config()
        .unwrap();
        assert_eq!(c.console, ConsoleConfig::Socket("/s".into()));
        assert_eq!(c.console_log, Some("/l2".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vsock_balloon_and_virtio_console_flags() {
        let c = parse(&[
            "--kernel",
            "/k",
            "--vsock",
            "cid=7,socket=/run/v",
            "--balloon",
            "--console",
            "virtio",
            "--console",
            "socket:/run/c",
        ])
        .unwrap()
        .vm_config()
        .unwrap();
        assert_eq!(
            c.vsock,
            Some(VsockConfig {
                cid: 7,
                socket: "/run/v".into()
            })
        );
        assert_eq!(c.balloon, Some(BalloonConfig::default()));
        assert!(c.virtio_console);
        assert_eq!(c.console, ConsoleConfig::Socket("/run/c".into()));
        assert_eq!(c.cmdline, VIRTIO_CONSOLE_CMDLINE);
        // An explicit command line is kept; balloon options; nothing given, nothing added.
        let c = parse(&[
            "--kernel",
            "/k",
            "--cmdline",
            "console=hvc0 quiet",
            "--console",
            "virtio",
            "--balloon=deflate-on-oom=on",
        ])
        .unwrap()
        .vm_config()
        .unwrap();
        assert_eq!(c.cmdline, "console=hvc0 quiet");
        assert!(c.balloon.unwrap().deflate_on_oom);
        let c = parse(&["--kernel", "/k"]).unwrap().vm_config().unwrap();
        assert_eq!((c.vsock, c.balloon, c.virtio_console), (None, None, false));
        // Bad values name the flag.
        for (args, want) in [
            (&["--vsock", "cid=1,socket=/s"][..], "cid=1 is out of range"),
            (&["--balloon=big"], "--balloon: unknown option"),
            (&["--console", "virtio-serial"], "use virtio, stdio"),
        ] {
            let mut all = vec!["--kernel", "/k"];
            all.extend_from_slice(args);
            let e = parse(&all).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let e = parse(&[
            "--kernel",
            "/k",
            "--console",
            "stdio",
            "--console",
            "file:/f",
        ])
        .unwrap()
        .vm_config()
        .unwrap_err();
        assert!(e.to_string().contains("more than one"), "{e}");
        // With --config, the device flags are refused like the other VM flags.
        assert!(parse(&["--config", "/c.json", "--balloon"]).is_err());
    }
}
