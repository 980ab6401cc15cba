//! STAND-IN for crate vireo-domain (piece A of issue 6), deleted when it lands on main.
//! Just enough of its interface (from_xml / to_xml / name / uuid / to_vm_config) for the
//! daemon to be built and tested: it pulls a few elements out of the text and is not an
//! XML parser.

use std::path::PathBuf;

use vireo_vmm::{ConsoleConfig, VmConfig};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(pub String);

pub struct Parsed {
    pub domain: Domain,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    xml: String,
    name: String,
    uuid: String,
    pub memory_kib: u64,
    pub current_memory_kib: u64,
    pub vcpus: u32,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub on_poweroff: String,
    pub on_reboot: String,
    pub on_crash: String,
    pub disks: Vec<String>,
}

fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let mut from = 0;
    while let Some(i) = xml[from..].find(&open) {
        let start = from + i;
        let after = &xml[start + open.len()..];
        if after.starts_with('>') || after.starts_with(' ') {
            let gt = after.find('>')?;
            if after[..gt].ends_with('/') {
                return Some("");
            }
            let body = &after[gt + 1..];
            let end = body.find(&format!("</{tag}>"))?;
            return Some(&body[..end]);
        }
        from = start + open.len();
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn kib(xml: &str, tag: &str) -> Result<Option<u64>, DomainError> {
    let Some(i) = xml.find(&format!("<{tag}")) else {
        return Ok(None);
    };
    let head = &xml[i..];
    let gt = head
        .find('>')
        .ok_or_else(|| DomainError(format!("malformed <{tag}>")))?;
    let unit = head[..gt]
        .split("unit=")
        .nth(1)
        .map(|u| u.trim_matches(|c| c == '\'' || c == '"' || c == '/'))
        .unwrap_or("KiB");
    let v: u64 = element(xml, tag)
        .unwrap_or("")
        .trim()
        .parse()
        .map_err(|_| DomainError(format!("<{tag}>: not a number")))?;
    let mul = match unit {
        "b" | "bytes" => return Ok(Some(v / 1024)),
        "k" | "KiB" => 1,
        "M" | "MiB" => 1024,
        "G" | "GiB" => 1 << 20,
        u => return Err(DomainError(format!("<{tag}>: unknown unit '{u}'"))),
    };
    Ok(Some(v * mul))
}

impl Domain {
    pub fn from_xml(xml: &str) -> Result<Parsed, DomainError> {
        let t = xml.trim();
        if !t.starts_with("<domain") || !t.ends_with("</domain>") {
            return Err(DomainError(
                "malformed domain XML: expected a <domain> element".into(),
            ));
        }
        let name = element(t, "name")
            .map(unescape)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| DomainError("domain XML has no <name>".into()))?;
        let (uuid, xml) = match element(t, "uuid") {
            Some(u) => (u.trim().to_string(), t.to_string()),
            None => {
                let u = random_uuid();
                let i = t.find("</name>").unwrap() + "</name>".len();
                (
                    u.clone(),
                    format!("{}\n  <uuid>{u}</uuid>{}", &t[..i], &t[i..]),
                )
            }
        };
        let memory_kib =
            kib(t, "memory")?.ok_or_else(|| DomainError("domain XML has no <memory>".into()))?;
        let vcpus = match element(t, "vcpu") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| DomainError("<vcpu>: not a number".into()))?,
            None => 1,
        };
        let mut disks = Vec::new();
        let mut rest = t;
        while let Some(i) = rest.find("<source file=") {
            let s = &rest[i + "<source file=".len()..];
            let q = s.chars().next().unwrap_or('\'');
            if let Some(end) = s[1..].find(q) {
                disks.push(unescape(&s[1..1 + end]));
            }
            rest = &s[1..];
        }
        let action = |tag: &str, default: &str| {
            element(t, tag)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| default.to_string())
        };
        Ok(Parsed {
            domain: Domain {
                xml,
                name,
                uuid,
                current_memory_kib: kib(t, "currentMemory")?.unwrap_or(memory_kib),
                memory_kib,
                vcpus,
                kernel: element(t, "kernel").map(unescape),
                initrd: element(t, "initrd").map(unescape),
                cmdline: element(t, "cmdline").map(unescape),
                on_poweroff: action("on_poweroff", "destroy"),
                on_reboot: action("on_reboot", "restart"),
                on_crash: action("on_crash", "destroy"),
                disks,
            },
            warnings: Vec::new(),
        })
    }

    pub fn to_xml(&self) -> String {
        self.xml.clone()
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn uuid(&self) -> String {
        self.uuid.clone()
    }
    pub fn disk_paths(&self) -> Vec<PathBuf> {
        self.disks.iter().map(PathBuf::from).collect()
    }

    pub fn to_vm_config(&self) -> Result<VmConfig, DomainError> {
        let kernel = self.kernel.clone().ok_or_else(|| {
            DomainError("/domain/os/kernel: vireo boots a kernel directly; none given".into())
        })?;
        if !self.disks.is_empty() {
            return Err(DomainError(
                "/domain/devices/disk: disks need virtio, which vireo-vmm does not have yet".into(),
            ));
        }
        Ok(VmConfig {
            kernel: kernel.into(),
            initrd: self.initrd.clone().map(Into::into),
            cmdline: self
                .cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0".into()),
            memory: self.memory_kib << 10,
            cpus: self.vcpus,
            console: ConsoleConfig::Stdio,
            console_log: None,
            cpu_template: Default::default(),
            no_reboot: self.on_reboot == "destroy",
        })
    }
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
