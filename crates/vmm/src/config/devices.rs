//! Configuration of the VM's virtio devices (the `--disk`, `--net`, `--rng`, `--vsock`,
//! `--balloon` and `--console virtio` flags; the domain's `<disk>`, `<interface>`, `<rng>`,
//! `<vsock>`, `<memballoon>` and `<console type='virtio'>`).
//!
//! Every field has a serde default so configurations written before a field existed keep
//! loading; unknown fields are refused, as in [`VmConfig`](super::VmConfig).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Image format of a disk (`format=raw|qcow2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// One virtio-blk disk (`--disk path=…,format=raw|qcow2,readonly=on,serial=…,queues=N`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// `None`: probed when the VMM starts, with a warning (a guest can rewrite what a
    /// probe of a raw image sees; see docs/devices.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    #[serde(default)]
    pub readonly: bool,
    /// Serial id the guest sees (`/sys/block/vdX/serial`): at most 20 printable ASCII
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Request queues (1..=16, each served by a host thread); `None`: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
}

/// Most request queues of one disk.
pub const MAX_DISK_QUEUES: u16 = 16;
/// Longest serial a virtio-blk disk can report (GET_ID's 20 bytes).
pub const MAX_SERIAL_LEN: usize = 20;

impl DiskConfig {
    /// The flag as a user would write it, for error messages: `--disk path=…`.
    pub fn flag(&self) -> String {
        format!("--disk path={}", self.path.display())
    }

    /// Checks what can be checked without opening the image.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("--disk: path is empty".into());
        }
        if let Some(s) = &self.serial {
            if s.len() > MAX_SERIAL_LEN || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                return Err(format!(
                    "{}: serial '{}' is not valid (at most {MAX_SERIAL_LEN} printable ASCII \
                     characters)",
                    self.flag(),
                    s.escape_default()
                ));
            }
        }
        if let Some(q) = self.queues {
            if !(1..=MAX_DISK_QUEUES).contains(&q) {
                return Err(format!(
                    "{}: queues={q} is out of range (1..={MAX_DISK_QUEUES})",
                    self.flag()
                ));
            }
        }
        Ok(())
    }
}

/// Splits `a=1,b=2` into pairs; `,,` stands for a comma inside a value (as in QEMU), so
/// any path can be written.
fn key_values(s: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                items.last_mut().unwrap().push(',');
            } else {
                items.push(String::new());
            }
        } else {
            items.last_mut().unwrap().push(c);
        }
    }
    items
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("--disk: {key}={v}: use on or off")),
    }
}

/// `--disk path=…[,format=raw|qcow2][,readonly=on|off][,serial=…][,queues=N]`; a bare
/// first item is the path.
impl std::str::FromStr for DiskConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut d = DiskConfig::default();
        let mut path = None;
        for (i, item) in key_values(s).into_iter().enumerate() {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None if i == 0 => ("path".to_string(), item),
                None => return Err(format!("--disk: '{item}' is not key=value")),
            };
            match key.as_str() {
                "path" | "file" => path = Some(PathBuf::from(value)),
                "format" => {
                    d.format = Some(match value.as_str() {
                        "raw" => DiskFormat::Raw,
                        "qcow2" => DiskFormat::Qcow2,
                        _ => return Err(format!("--disk: format={value}: use raw or qcow2")),
                    })
                }
                "readonly" | "ro" => d.readonly = on_off(&key, &value)?,
                "serial" => d.serial = Some(value),
                "queues" | "num_queues" => {
                    d.queues =
                        Some(value.parse().map_err(|_| {
                            format!("--disk: queues={value}: not a number of queues")
                        })?)
                }
                _ => {
                    return Err(format!(
                        "--disk: unknown key '{key}' (use path, format, readonly, serial, queues)"
                    ))
                }
            }
        }
        d.path = path.ok_or("--disk: path=… is missing")?;
        d.validate()?;
        Ok(d)
    }
}

/// One virtio-net interface on a TAP device (`--net tap=NAME|auto,mac=…,bridge=…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// An existing TAP device's name; `None`: vireo creates one (`vireo-tapN`, deleted
    /// when the VMM exits).
    #[serde(default)]
    pub tap: Option<String>,
    /// MAC address as `xx:xx:xx:xx:xx:xx`; `None`: one is generated (derived from a named
    /// TAP's name, so the same on every start; random for `tap=auto`).
    #[serde(default)]
    pub mac: Option<String>,
    /// A host bridge the TAP is added to when the VMM starts (needs CAP_NET_ADMIN).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Queue pairs (1..=16; `None`: 1): more than one needs a multi-queue TAP and gives the
    /// guest MQ and a control queue.
    #[serde(default)]
    pub queues: Option<u16>,
}

impl NetConfig {
    /// Checks names and the MAC address without touching the host.
    pub fn check(&self) -> Result<(), String> {
        use vireo_devices::virtio::net::{tap::check_ifname, MacAddr};
        if let Some(t) = &self.tap {
            check_ifname(t).map_err(|e| format!("tap: {e}"))?;
        }
        if let Some(b) = &self.bridge {
            check_ifname(b).map_err(|e| format!("bridge: {e}"))?;
        }
        if let Some(m) = &self.mac {
            m.parse::<MacAddr>()?;
        }
        if let Some(q) = self.queues {
            if !(1..=MAX_NET_QUEUES).contains(&q) {
                return Err(format!("queues={q} is out of range (1..={MAX_NET_QUEUES})"));
            }
        }
        Ok(())
    }
}

/// Most queue pairs of one interface (`queues=`).
pub const MAX_NET_QUEUES: u16 = vireo_devices::virtio::net::device::MAX_QUEUE_PAIRS;

/// `tap=NAME|auto[,mac=MAC][,bridge=BR][,queues=N]`: the `--net` flag (`tap` defaults to
/// `auto`).
impl std::str::FromStr for NetConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut c = NetConfig::default();
        let mut seen = Vec::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                format!(
                    "'{}' is not key=value (keys: tap, mac, bridge, queues)",
                    part.escape_default()
                )
            })?;
            if seen.contains(&key) {
                return Err(format!("{key}= is given twice"));
            }
            if value.is_empty() {
                return Err(format!("{key}= is empty"));
            }
            match key {
                "tap" if value == "auto" => c.tap = None,
                "tap" => c.tap = Some(value.to_string()),
                "mac" => c.mac = Some(value.to_string()),
                "bridge" => c.bridge = Some(value.to_string()),
                "queues" => {
                    c.queues = Some(value.parse().map_err(|_| {
                        format!("queues={} is not a number", value.escape_default())
                    })?)
                }
                _ => {
                    return Err(format!(
                        "unknown key '{}' (keys: tap, mac, bridge, queues)",
                        key.escape_default()
                    ))
                }
            }
            seen.push(key);
        }
        c.check()?;
        Ok(c)
    }
}

/// The virtio-rng device (`--rng`): bytes come from the host's getrandom(2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {}

/// The virtio-vsock device (`--vsock cid=N,socket=PATH`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    #[serde(default)]
    pub cid: u64,
    /// Host side: a unix socket path that host clients connect to (`CONNECT <port>`);
    /// guest connections to host port P go to `PATH_P`.
    #[serde(default)]
    pub socket: PathBuf,
}

pub use vireo_devices::virtio::vsock::backend::{MAX_GUEST_CID, MIN_GUEST_CID};

/// Longest `--vsock socket=` path: a unix socket path holds 107 bytes, and `_PORT` (up to
/// 11 bytes) is appended for guest → host connections.
pub const MAX_VSOCK_PATH: usize = 96;

impl VsockConfig {
    /// Checks the context id and the path without touching the host.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.cid) {
            return Err(format!(
                "--vsock: cid={} is out of range ({MIN_GUEST_CID}..={MAX_GUEST_CID}; 0-2 are \
                 reserved)",
                self.cid
            ));
        }
        let len = self.socket.as_os_str().len();
        if len == 0 {
            return Err("--vsock: socket=PATH is missing".into());
        }
        if len > MAX_VSOCK_PATH {
            return Err(format!(
                "--vsock: socket path is {len} bytes; at most {MAX_VSOCK_PATH} fit a unix socket \
                 address with its _PORT suffix"
            ));
        }
        Ok(())
    }
}

/// `cid=N,socket=PATH` (`,,` is a comma in the path).
impl std::str::FromStr for VsockConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut c = VsockConfig::default();
        let (mut cid, mut socket) = (None, None);
        for item in key_values(s).into_iter().filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!(
                    "--vsock: '{}' is not key=value (keys: cid, socket)",
                    item.escape_default()
                ));
            };
            let slot = match key {
                "cid" => &mut cid,
                "socket" | "path" | "uds_path" => &mut socket,
                _ => {
                    return Err(format!(
                        "--vsock: unknown key '{}' (keys: cid, socket)",
                        key.escape_default()
                    ))
                }
            };
            if slot.replace(value.to_string()).is_some() {
                return Err(format!("--vsock: {key}= is given twice"));
            }
        }
        let cid = cid.ok_or("--vsock: cid=N is missing")?;
        c.cid = cid
            .parse()
            .map_err(|_| format!("--vsock: cid={cid}: not a number"))?;
        c.socket = PathBuf::from(socket.ok_or("--vsock: socket=PATH is missing")?);
        c.check()?;
        Ok(c)
    }
}

/// The virtio-balloon device (`--balloon[=deflate-on-oom=on]`). Its target is set at run
/// time through the control API (`balloon-set`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest may take pages back from the
    /// balloon rather than run out of memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Guest memory the balloon aims for from the start (libvirt's `<currentMemory>`);
    /// `None`: all of it (an empty balloon) until `balloon-set`.
    #[serde(default)]
    pub target_bytes: Option<u64>,
}

impl BalloonConfig {
    /// Checks the initial target against the VM's memory.
    pub fn check(&self, memory: u64) -> Result<(), String> {
        match self.target_bytes {
            Some(t) if t == 0 || t > memory => Err(format!(
                "--balloon: target={t} bytes must be more than 0 and at most the VM's memory \
                 ({memory} bytes)"
            )),
            _ => Ok(()),
        }
    }
}

/// `` (nothing), `deflate-on-oom=on|off`, `target=SIZE` (the guest's memory to aim for).
impl std::str::FromStr for BalloonConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut c = BalloonConfig::default();
        for item in s.split(',').filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some(("target", v)) => {
                    c.target_bytes = Some(
                        super::parse_size(v).map_err(|e| format!("--balloon: target={v}: {e}"))?,
                    )
                }
                Some(("deflate-on-oom" | "deflate_on_oom", v)) => {
                    c.deflate_on_oom = match v {
                        "on" | "yes" | "true" => true,
                        "off" | "no" | "false" => false,
                        _ => return Err(format!("--balloon: deflate-on-oom={v}: use on or off")),
                    }
                }
                _ => {
                    return Err(format!(
                        "--balloon: unknown option '{}' (use deflate-on-oom=on|off, target=SIZE)",
                        item.escape_default()
                    ))
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_flag_parses_and_checks() {
        let n: NetConfig = "tap=auto".parse().unwrap();
        assert_eq!(n, NetConfig::default());
        let n: NetConfig = "".parse().unwrap();
        assert_eq!(n.tap, None, "tap defaults to auto");
        let n: NetConfig = "tap=tap0,mac=52:54:00:12:34:56,bridge=br0,queues=4"
            .parse()
            .unwrap();
        assert_eq!(
            n,
            NetConfig {
                tap: Some("tap0".into()),
                mac: Some("52:54:00:12:34:56".into()),
                bridge: Some("br0".into()),
                queues: Some(4),
            }
        );
        for (bad, want) in [
            ("tap=a/b", "tap: interface name 'a/b' contains '/'"),
            ("tap=averyveryverylongname", "longer than 15"),
            ("mac=01:00:5e:00:00:01", "multicast"),
            ("mac=zz", "expected six hex octets"),
            ("bridge=", "bridge= is empty"),
            ("tap=a,tap=b", "tap= is given twice"),
            ("model=e1000", "unknown key 'model'"),
            ("tap", "'tap' is not key=value"),
            ("queues=0", "queues=0 is out of range (1..=16)"),
            ("queues=17", "out of range"),
            ("queues=two", "queues=two is not a number"),
        ] {
            let e = bad.parse::<NetConfig>().unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        // JSON: older files without bridge still load; unknown fields are refused.
        let n: NetConfig = serde_json::from_str(r#"{"tap":"tap1"}"#).unwrap();
        assert_eq!(n.bridge, None);
        assert!(serde_json::from_str::<NetConfig>(r#"{"tapp":"x"}"#).is_err());
    }

    #[test]
    fn vsock_flag_parses_and_checks() {
        let v: VsockConfig = "cid=3,socket=/run/v.sock".parse().unwrap();
        assert_eq!(
            v,
            VsockConfig {
                cid: 3,
                socket: "/run/v.sock".into()
            }
        );
        let v: VsockConfig = "socket=/a,,b,cid=4294967294".parse().unwrap();
        assert_eq!((v.cid, v.socket), (u32::MAX as u64 - 1, "/a,b".into()));
        let long = format!("cid=3,socket=/{}", "x".repeat(96));
        for (bad, want) in [
            ("cid=2,socket=/s", "cid=2 is out of range"),
            ("cid=4294967295,socket=/s", "out of range"),
            ("cid=x,socket=/s", "cid=x: not a number"),
            ("socket=/s", "cid=N is missing"),
            ("cid=3", "socket=PATH is missing"),
            ("cid=3,cid=4,socket=/s", "cid= is given twice"),
            ("cid=3,socket=/s,port=5", "unknown key 'port'"),
            ("3", "'3' is not key=value"),
            (long.as_str(), "at most 96"),
        ] {
            let e = bad.parse::<VsockConfig>().unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        // A JSON configuration is checked the same way (VmConfig::validate calls check).
        let v: VsockConfig = serde_json::from_str(r#"{"cid":1,"socket":"/s"}"#).unwrap();
        assert!(v.check().unwrap_err().contains("out of range"));
    }

    #[test]
    fn balloon_flag_parses() {
        assert_eq!(
            "".parse::<BalloonConfig>().unwrap(),
            BalloonConfig::default()
        );
        assert!(
            "deflate-on-oom=on"
                .parse::<BalloonConfig>()
                .unwrap()
                .deflate_on_oom
        );
        assert!(
            !"deflate-on-oom=off"
                .parse::<BalloonConfig>()
                .unwrap()
                .deflate_on_oom
        );
        for bad in ["deflate-on-oom=maybe", "stats=on", "x"] {
            let e = bad.parse::<BalloonConfig>().unwrap_err();
            assert!(e.starts_with("--balloon:"), "{bad}: {e}");
        }
        let b: BalloonConfig = serde_json::from_str("{}").unwrap();
        assert!(!b.deflate_on_oom);
        let b: BalloonConfig = "target=256M,deflate-on-oom=on".parse().unwrap();
        assert_eq!(b.target_bytes, Some(256 << 20));
        assert!(b.check(512 << 20).is_ok());
        assert!(b
            .check(128 << 20)
            .unwrap_err()
            .contains("at most the VM's memory"));
        assert!("target=0"
            .parse::<BalloonConfig>()
            .unwrap()
            .check(1 << 30)
            .is_err());
        assert!("target=lots"
            .parse::<BalloonConfig>()
            .unwrap_err()
            .contains("--balloon: target=lots"));
    }
}
