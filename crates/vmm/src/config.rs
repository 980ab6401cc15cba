//! The VMM's configuration: what `vireo run` flags (and later the daemon's domain model)
//! turn into. Plain data, serialisable, validated in one place.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vireo_hypervisor::CpuTemplate;

pub mod devices;
pub use devices::{BalloonConfig, DiskConfig, DiskFormat, NetConfig, RngConfig, VsockConfig};

/// Smallest guest RAM vireo accepts: the 1 MiB legacy area plus room for a small kernel.
pub const MIN_MEMORY: u64 = 8 << 20;
/// Most virtio-blk disks of one VM (each takes a PCI slot).
pub const MAX_DISKS: usize = 16;
/// Highest vCPU count: APIC IDs are 8-bit xAPIC IDs (0..=254; 255 is broadcast).
pub const MAX_XAPIC_CPUS: u32 = 255;
/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// Largest `--config` file accepted: a VmConfig is a few hundred bytes; this leaves room for
/// many devices while bounding what a bad path (say, a disk image) can make vireo read.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Where the guest's serial console goes. JSON: `"stdio"`, `{"file": PATH}`,
/// `{"socket": PATH}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleConfig {
    /// The VMM's stdin/stdout.
    #[default]
    Stdio,
    /// Appended to a file; no input.
    File(PathBuf),
    /// A unix stream socket the VMM listens on: output goes to every connected client,
    /// input comes from any of them; with no client the output is dropped (see
    /// `console_log` to keep it).
    Socket(PathBuf),
}

impl std::str::FromStr for ConsoleConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "stdio" {
            return Ok(ConsoleConfig::Stdio);
        }
        let (kind, path) = s.split_once(':').unwrap_or((s, ""));
        let make: fn(PathBuf) -> ConsoleConfig = match kind {
            "file" => ConsoleConfig::File,
            "socket" => ConsoleConfig::Socket,
            _ => {
                return Err(format!(
                    "unknown console '{s}' (use stdio, file:PATH or socket:PATH)"
                ))
            }
        };
        if path.is_empty() {
            return Err(format!("console {kind} path is empty (use {kind}:PATH)"));
        }
        Ok(make(path.into()))
    }
}

/// Everything needed to build and run one VM: what `vireo run` flags and the daemon's
/// domain model turn into, and what `vireo-vmm --config FILE.json` reads.
///
/// In JSON every field but `kernel` may be left out and takes the same default as the
/// flag; fields added later get defaults too, so older files keep working. Unknown fields
/// are refused (a misspelt field must not be silently ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Guest RAM in bytes.
    #[serde(default = "default_memory")]
    pub memory: u64,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Every byte of serial output is also appended to this file (whatever `console` is).
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    #[serde(default)]
    pub cpu_template: CpuTemplate,
    /// Whether a guest reset ends the VMM (status 0) instead of restarting the guest.
    #[serde(default)]
    pub no_reboot: bool,
    /// virtio-blk disks, in guest order (vda, vdb, …).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces, in guest order.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    #[serde(default)]
    pub rng: Option<RngConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub balloon: Option<BalloonConfig>,
    /// A virtio-console (hvc0) as the console instead of the serial port.
    #[serde(default)]
    pub virtio_console: bool,
}

/// The flags' defaults, with no kernel: lets code build a configuration as
/// `VmConfig { kernel, ..Default::default() }` and keep compiling as fields are added.
impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: default_cmdline(),
            memory: DEFAULT_MEMORY,
            cpus: default_cpus(),
            console: ConsoleConfig::default(),
            console_log: None,
            cpu_template: CpuTemplate::default(),
            no_reboot: false,
            disks: Vec::new(),
            nets: Vec::new(),
            rng: None,
            vsock: None,
            balloon: None,
            virtio_console: false,
        }
    }
}

/// Guest RAM when none is given (`--memory` default).
pub const DEFAULT_MEMORY: u64 = 512 << 20;

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_memory() -> u64 {
    DEFAULT_MEMORY
}
fn default_cpus() -> u32 {
    1
}

/// How this VMM process is driven, as opposed to what VM it runs ([`VmConfig`]): these
/// never change the guest, only who can control it and how its end is reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmmOptions {
    /// The control socket (`--api-socket`, see docs/vmm-api.md).
    pub api_socket: Option<PathBuf>,
    /// Written atomically just before the VMM exits (`--exit-file`).
    pub exit_file: Option<PathBuf>,
    /// Build the VM but keep its vCPUs parked until `resume` (`--start-paused`).
    pub start_paused: bool,
}

impl VmConfig {
    /// Reads a configuration written as JSON (the daemon's `--config FILE.json`). Every
    /// problem — unreadable file, bad JSON, unknown or mistyped field — is one message
    /// naming the file and, for JSON, the line and column.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let err = |why: String| ConfigError::File {
            path: path.to_path_buf(),
            why,
        };
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut text = Vec::new();
        file.take(MAX_CONFIG_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| err(e.to_string()))?;
        if text.len() as u64 > MAX_CONFIG_FILE {
            return Err(err(format!(
                "larger than {} (not a VM configuration?)",
                format_size(MAX_CONFIG_FILE)
            )));
        }
        Self::from_json(&text).map_err(err)
    }

    /// Parses a JSON configuration; the error says what and where.
    pub fn from_json(text: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => format!("invalid configuration: {e}"),
            serde_json::error::Category::Eof => format!("truncated JSON: {e}"),
            _ => format!("malformed JSON: {e}"),
        })
    }
}

/// Parses a memory size: a number with an optional binary suffix K, M, G or T (optionally
/// followed by "iB" or "B"); a bare number is MiB, as with QEMU's `-m`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size '{s}': expected a number such as 512M or 2G"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}': number too large"))?;
    let unit: u64 = match suffix
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" if suffix.is_empty() => 1 << 20,
        "" => 1, // "B": bytes
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size '{s}': unknown unit '{suffix}' (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("invalid size '{s}': too large"))
}

/// Formats a byte count for messages ("512 MiB", "1.5 GiB").
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A configuration problem, reported as one line naming the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A device flag (`--disk`, …) that cannot work whatever the host.
    #[error("{0}")]
    Device(String),
    #[error("--config {}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("--memory must be at least {} (got {})", format_size(MIN_MEMORY), format_size(*.0))]
    MemoryTooSmall(u64),
    #[error("--memory {} is more than this host's {} of RAM", format_size(*.requested), format_size(*.host))]
    MemoryTooLarge { requested: u64, host: u64 },
    #[error("--cpus must be at least 1")]
    NoCpus,
    #[error("--cpus {requested} is above the limit of {limit} ({why})")]
    TooManyCpus {
        requested: u32,
        limit: u32,
        why: String,
    },
    /// A `--net` (or `nets[]` entry of a JSON configuration) that cannot work; `index`
    /// counts from 1 in flag order.
    #[error("--net #{index}: {why}")]
    Net { index: usize, why: String },
}

impl VmConfig {
    /// Checks the sizes against the host: RAM and the vCPU limit of KVM (`kvm_max_vcpus`).
    pub fn validate(&self, host_memory: u64, kvm_max_vcpus: u32) -> Result<(), ConfigError> {
        if self.memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(self.memory));
        }
        if self.memory > host_memory {
            return Err(ConfigError::MemoryTooLarge {
                requested: self.memory,
                host: host_memory,
            });
        }
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::Device(format!(
                "{} disks: at most {MAX_DISKS} are supported",
                self.disks.len()
            )));
        }
        for d in &self.disks {
            d.validate().map_err(ConfigError::Device)?;
        }
        let (limit, why) = if kvm_max_vcpus < MAX_XAPIC_CPUS {
            (
                kvm_max_vcpus,
                format!("KVM allows {kvm_max_vcpus} vCPUs per VM"),
            )
        } else {
            (
                MAX_XAPIC_CPUS,
                "vireo's xAPIC topology has 8-bit APIC IDs".to_string(),
            )
        };
        if self.cpus > limit {
            return Err(ConfigError::TooManyCpus {
                requested: self.cpus,
                limit,
                why,
            });
        }
        for (i, net) in self.nets.iter().enumerate() {
            net.check()
                .map_err(|why| ConfigError::Net { index: i + 1, why })?;
        }
        if let Some(v) = &self.vsock {
            v.check().map_err(ConfigError::Device)?;
        }
        if let Some(b) = &self.balloon {
            b.check(self.memory).map_err(ConfigError::Device)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            memory: 512 << 20,
            cpus: 2,
            console: ConsoleConfig::Stdio,
            console_log: None,
            cpu_template: CpuTemplate::Host,
            no_reboot: false,
            ..Default::default()
        }
    }

    #[test]
    fn sizes_parse_like_qemu() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("256"), Ok(256 << 20));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert!(parse_size("").unwrap_err().contains("expected a number"));
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn console_parses() {
        assert_eq!("stdio".parse(), Ok(ConsoleConfig::Stdio));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(ConsoleConfig::File("/tmp/x".into()))
        );
        assert_eq!(
            "socket:/run/c.sock".parse(),
            Ok(ConsoleConfig::Socket("/run/c.sock".into()))
        );
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert_eq!(
            "socket:".parse::<ConsoleConfig>().unwrap_err(),
            "console socket path is empty (use socket:PATH)"
        );
        assert!("pty"
            .parse::<ConsoleConfig>()
            .unwrap_err()
            .contains("unknown console"));
    }

    #[test]
    fn validation_names_the_flag() {
        let host = 8 << 30;
        assert_eq!(config().validate(host, 1024), Ok(()));
        let e = VmConfig {
            memory: 0,
            ..config()
        }
        .validate(host, 1024)
        .unwrap_err();
        assert_eq!(e.to_string(), "--memory must be at least 8 MiB (got 0 B)");
        let e = VmConfig {
            memory: 16 << 30,
            ..config()
        }
        .validate(host, 1024)
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--memory 16 GiB is more than this host's 8 GiB of RAM"
        );
        let e = VmConfig {
            cpus: 0,
            ..config()
        }
        .validate(host, 1024)
        .unwrap_err();
        assert_eq!(e, ConfigError::NoCpus);
        // A JSON configuration's nets get the flag's checks.
        let e = VmConfig {
            nets: vec![
                NetConfig::default(),
                NetConfig {
                    mac: Some("52:54:00:zz:00:00".into()),
                    ..Default::default()
                },
            ],
            ..config()
        }
        .validate(host, 1024)
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--net #2: invalid MAC address '52:54:00:zz:00:00'"),
            "{e}"
        );
        let e = VmConfig {
            cpus: 300,
            ..config()
        }
        .validate(host, 1024)
        .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("--cpus 300 is above the limit of 255"));
        let e = VmConfig {
            cpus: 3,
            ..config()
        }
        .validate(host, 2)
        .unwrap_err();
        assert!(e.to_string().contains("KVM allows 2"));
    }

    #[test]
    fn config_is_serialisable() {
        let json = serde_json::to_string(&config()).unwrap();
        let back: VmConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config());
        let c = VmConfig {
            console: ConsoleConfig::Socket("/run/x.sock".into()),
            console_log: Some("/var/log/x.log".into()),
            ..config()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains(r#""console":{"socket":"/run/x.sock"}"#),
            "{json}"
        );
        assert_eq!(VmConfig::from_json(json.as_bytes()), Ok(c));
    }

    #[test]
    fn json_defaults_match_the_flags_and_old_files_still_load() {
        let c = VmConfig::from_json(br#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(
            c,
            VmConfig {
                cpus: 1,
                ..config()
            }
        );
        assert_eq!(
            c,
            VmConfig {
                kernel: "/k".into(),
                ..Default::default()
            }
        );
        // A configuration written before console_log existed.
        let old = br#"{"kernel":"/k","initrd":null,"cmdline":"console=ttyS0","memory":536870912,
            "cpus":2,"console":"stdio","cpu_template":"host","no_reboot":false}"#;
        assert_eq!(VmConfig::from_json(old), Ok(config()));
    }

    #[test]
    fn device_fields_round_trip_and_default_to_none() {
        let c = VmConfig {
            disks: vec![DiskConfig {
                path: "/img/a.qcow2".into(),
                format: Some(DiskFormat::Qcow2),
                readonly: true,
                serial: Some("s1".into()),
                queues: Some(2),
            }],
            nets: vec![NetConfig::default()],
            rng: Some(RngConfig::default()),
            vsock: Some(VsockConfig {
                cid: 3,
                socket: "/run/v.sock".into(),
            }),
            balloon: Some(BalloonConfig::default()),
            virtio_console: true,
            ..config()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""format":"qcow2""#), "{json}");
        assert_eq!(VmConfig::from_json(json.as_bytes()), Ok(c));
        let c =
            VmConfig::from_json(br#"{"kernel":"/k","rng":{},"disks":[{"path":"/d"}]}"#).unwrap();
        assert_eq!(c.rng, Some(RngConfig {}));
        assert_eq!(c.disks[0].format, None, "probed");
        assert!(c.nets.is_empty() && c.vsock.is_none() && !c.virtio_console);
        let e = VmConfig::from_json(br#"{"kernel":"/k","rng":{"rate":1}}"#).unwrap_err();
        assert!(e.contains("unknown field `rate`"), "{e}");
    }

    #[test]
    fn bad_json_is_one_clear_error() {
        let e = VmConfig::from_json(br#"{"kernel": "/k", "memroy": 5}"#).unwrap_err();
        assert!(
            e.starts_with("invalid configuration: unknown field `memroy`"),
            "{e}"
        );
        assert!(e.contains("line 1 column"), "{e}");
        let e = VmConfig::from_json(br#"{"cpus": 2}"#).unwrap_err();
        assert!(e.contains("missing field `kernel`"), "{e}");
        let e = VmConfig::from_json(br#"{"kernel": "/k", "cpus": "two"}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = VmConfig::from_json(b"{\"kernel\": ").unwrap_err();
        assert!(e.starts_with("truncated JSON"), "{e}");
        let e = VmConfig::from_json(b"kernel=/k").unwrap_err();
        assert!(e.starts_with("malformed JSON"), "{e}");
        let e = VmConfig::from_json(br#"{"kernel":"/k","console":{"pty":"x"}}"#).unwrap_err();
        assert!(e.contains("unknown variant `pty`"), "{e}");
    }

    #[test]
    fn config_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("vireo-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.json");
        let e = VmConfig::from_json_file(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--config {}: ", missing.display())),
            "{e}"
        );
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"kernel\": \"/k\",\n \"bogus\": 1}").unwrap();
        let e = VmConfig::from_json_file(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.json: invalid configuration: unknown field `bogus`"),
            "{e}"
        );
        assert!(e.contains("line 2"), "{e}");
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_CONFIG_FILE + 1) as usize]).unwrap();
        let e = VmConfig::from_json_file(&big).unwrap_err().to_string();
        assert!(e.contains("larger than 1 MiB"), "{e}");
        let good = dir.join("good.json");
        std::fs::write(&good, serde_json::to_vec(&config()).unwrap()).unwrap();
        assert_eq!(VmConfig::from_json_file(&good), Ok(config()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
