//! The VMM's configuration: what `vireo run` flags (and later the daemon's domain model)
//! turn into. Plain data, serialisable, validated in one place.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vireo_hypervisor::CpuTemplate;

/// Smallest guest RAM vireo accepts: the 1 MiB legacy area plus room for a small kernel.
pub const MIN_MEMORY: u64 = 8 << 20;
/// Highest vCPU count: APIC IDs are 8-bit xAPIC IDs (0..=254; 255 is broadcast).
pub const MAX_XAPIC_CPUS: u32 = 255;
/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleConfig {
    /// The VMM's stdin/stdout.
    Stdio,
    /// Appended to a file; no input.
    File(PathBuf),
}

impl std::str::FromStr for ConsoleConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdio" => Ok(ConsoleConfig::Stdio),
            _ => match s.strip_prefix("file:") {
                Some("") => Err("console file path is empty (use file:PATH)".into()),
                Some(path) => Ok(ConsoleConfig::File(path.into())),
                None => Err(format!("unknown console '{s}' (use stdio or file:PATH)")),
            },
        }
    }
}

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub cpus: u32,
    pub console: ConsoleConfig,
    pub cpu_template: CpuTemplate,
    /// Whether a guest reset ends the VMM (status 0) instead of restarting the guest.
    pub no_reboot: bool,
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
            cpu_template: CpuTemplate::Host,
            no_reboot: false,
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
        assert!("file:".parse::<ConsoleConfig>().is_err());
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
    }
}
