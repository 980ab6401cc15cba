//! qcow2 header and header extensions: parsing with validation of every
//! field against the file size, and serialisation.

use std::path::Path;

use crate::{Error, HostFile, Result};

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table qemu accepts (bytes).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table qemu accepts (bytes).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_SNAPSHOTS: u32 = 65536;
pub const MAX_BACKING_NAME: u32 = 1023;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Feature name table entries: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
    /// Unknown extensions, preserved when the header is rewritten.
    pub other_exts: Vec<(u32, Vec<u8>)>,
}

pub(crate) fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
pub(crate) fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// L1 entries needed to map `size` bytes with the given cluster bits.
    pub fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
        let per_l2 = 1u64 << (2 * cluster_bits - 3);
        size.div_ceil(per_l2)
    }

    /// Parses and validates the header of `file` (whose length is
    /// `file_len`). Never allocates more than the file size justifies.
    pub fn read(file: &HostFile, file_len: u64) -> Result<Header> {
        let path = file.path();
        if file_len < 72 {
            return Err(Error::field(
                path,
                "header",
                format!("file is only {file_len} bytes, a qcow2 header needs at least 72"),
            ));
        }
        let mut fixed = [0u8; 112];
        let n = file_len.min(112) as usize;
        file.read_exact_at(&mut fixed[..n], 0, "header")?;
        if fixed[0..4] != MAGIC {
            return Err(Error::field(path, "magic", "not a qcow2 image"));
        }
        let version = be32(&fixed, 4);
        if version != 2 && version != 3 {
            return Err(Error::unsupported(path, format!("qcow2 version {version}")));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(&fixed, 8),
            backing_file_size: be32(&fixed, 16),
            cluster_bits: be32(&fixed, 20),
            size: be64(&fixed, 24),
            crypt_method: be32(&fixed, 32),
            l1_size: be32(&fixed, 36),
            l1_table_offset: be64(&fixed, 40),
            refcount_table_offset: be64(&fixed, 48),
            refcount_table_clusters: be32(&fixed, 56),
            nb_snapshots: be32(&fixed, 60),
            snapshots_offset: be64(&fixed, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            other_exts: Vec::new(),
        };
        if version == 3 {
            if file_len < 104 {
                return Err(Error::field(
                    path,
                    "header_length",
                    "file too short for a version 3 header",
                ));
            }
            h.incompatible = be64(&fixed, 72);
            h.compatible = be64(&fixed, 80);
            h.autoclear = be64(&fixed, 88);
            h.refcount_order = be32(&fixed, 96);
            h.header_length = be32(&fixed, 100);
            if h.header_length < 104 {
                return Err(Error::field(
                    path,
                    "header_length",
                    format!("{} is smaller than 104", h.header_length),
                ));
            }
            if h.header_length > 104 {
                h.compression_type = fixed[104];
            }
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(Error::field(
                path,
                "cluster_bits",
                format!(
                    "{} is out of range ({MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS})",
                    h.cluster_bits
                ),
            ));
        }
        let cs = h.cluster_size();
        if h.header_length as u64 > cs {
            return Err(Error::field(
                path,
                "header_length",
                format!("{} exceeds the cluster size {cs}", h.header_length),
            ));
        }
        if h.refcount_order > 6 {
            return Err(Error::field(
                path,
                "refcount_order",
                format!("{} is out of range (0..=6)", h.refcount_order),
            ));
        }
        if version == 2 && h.refcount_order != 4 {
            return Err(Error::field(
                path,
                "refcount_order",
                "version 2 images must use 16-bit refcounts",
            ));
        }
        if h.crypt_method != 0 {
            return Err(Error::unsupported(
                path,
                format!("encrypted images (crypt_method {})", h.crypt_method),
            ));
        }
        if h.size > (1u64 << 62) {
            return Err(Error::field(
                path,
                "size",
                format!("{} is absurdly large", h.size),
            ));
        }
        // L1 table.
        let need_l1 = Header::l1_entries_for(h.size, h.cluster_bits);
        if (h.l1_size as u64) < need_l1 {
            return Err(Error::field(
                path,
                "l1_size",
                format!(
                    "{} entries cannot map the virtual size {} (need {need_l1})",
                    h.l1_size, h.size
                ),
            ));
        }
        if h.l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(Error::field(
                path,
                "l1_size",
                format!("{} entries exceed the maximum L1 table size", h.l1_size),
            ));
        }
        if h.l1_size > 0 {
            check_table(
                path,
                "l1_table_offset",
                h.l1_table_offset,
                h.l1_size as u64 * 8,
                cs,
                file_len,
            )?;
        }
        // Refcount table.
        if h.refcount_table_clusters == 0 {
            return Err(Error::field(path, "refcount_table_clusters", "is zero"));
        }
        let rt_bytes = h.refcount_table_clusters as u64 * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(Error::field(
                path,
                "refcount_table_clusters",
                format!(
                    "{} clusters exceed the maximum refcount table size",
                    h.refcount_table_clusters
                ),
            ));
        }
        check_table(
            path,
            "refcount_table_offset",
            h.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
        )?;
        if h.refcount_table_offset == 0 {
            return Err(Error::field(
                path,
                "refcount_table_offset",
                "overlaps the header",
            ));
        }
        // Snapshot table.
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::field(
                path,
                "nb_snapshots",
                format!("{} exceeds the maximum of {MAX_SNAPSHOTS}", h.nb_snapshots),
            ));
        }
        if h.nb_snapshots > 0 {
            // Each entry is at least 40 bytes.
            check_table(
                path,
                "snapshots_offset",
                h.snapshots_offset,
                h.nb_snapshots as u64 * 40,
                cs,
                file_len,
            )?;
            if h.snapshots_offset == 0 {
                return Err(Error::field(
                    path,
                    "snapshots_offset",
                    "overlaps the header",
                ));
            }
        }
        // Overlapping metadata.
        if h.l1_size > 0 {
            if h.l1_table_offset < cs {
                return Err(Error::field(path, "l1_table_offset", "overlaps the header"));
            }
            let l1 = (h.l1_table_offset, h.l1_size as u64 * 8);
            let rt = (h.refcount_table_offset, rt_bytes);
            if overlap(l1, rt) {
                return Err(Error::field(
                    path,
                    "l1_table_offset",
                    "L1 table overlaps the refcount table",
                ));
            }
        }
        if h.nb_snapshots > 0 {
            let snap = (h.snapshots_offset, h.nb_snapshots as u64 * 40);
            if overlap(snap, (h.refcount_table_offset, rt_bytes))
                || (h.l1_size > 0 && overlap(snap, (h.l1_table_offset, h.l1_size as u64 * 8)))
            {
                return Err(Error::field(
                    path,
                    "snapshots_offset",
                    "snapshot table overlaps the L1 or refcount table",
                ));
            }
        }
        // Features.
        if h.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(Error::unsupported(path, "external data files"));
        }
        if h.incompatible & INCOMPAT_EXTL2 != 0 {
            return Err(Error::unsupported(
                path,
                "extended L2 entries (subclusters)",
            ));
        }
        if h.compression_type != 0 {
            return Err(Error::unsupported(
                path,
                format!(
                    "compression type {} (only zlib is supported)",
                    h.compression_type
                ),
            ));
        }
        // Header cluster: extensions and backing file name.
        let mut hc = vec![0u8; cs.min(file_len) as usize];
        file.read_exact_at(&mut hc, 0, "header")?;
        h.parse_extensions(path, &hc)?;
        if h.backing_file_offset != 0 {
            if h.backing_file_size > MAX_BACKING_NAME {
                return Err(Error::field(
                    path,
                    "backing_file_size",
                    format!("{} exceeds {MAX_BACKING_NAME}", h.backing_file_size),
                ));
            }
            let end = h
                .backing_file_offset
                .checked_add(h.backing_file_size as u64);
            match end {
                Some(e) if e <= hc.len() as u64 => {
                    let b = &hc[h.backing_file_offset as usize..e as usize];
                    let s = String::from_utf8(b.to_vec()).map_err(|_| {
                        Error::field(
                            path,
                            "backing_file_offset",
                            "backing file name is not UTF-8",
                        )
                    })?;
                    h.backing_file = Some(s);
                }
                _ => {
                    return Err(Error::field(
                        path,
                        "backing_file_offset",
                        "backing file name lies outside the header cluster",
                    ))
                }
            }
        }
        let unknown = h.incompatible & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION);
        if unknown != 0 {
            let names: Vec<String> = (0..64)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| {
                    h.feature_names
                        .iter()
                        .find(|(t, bit, _)| *t == 0 && *bit as u64 == b)
                        .map(|(_, _, n)| n.clone())
                        .unwrap_or_else(|| format!("unknown incompatible feature bit {b}"))
                })
                .collect();
            return Err(Error::unsupported(path, names.join(", ")));
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, path: &Path, hc: &[u8]) -> Result<()> {
        let mut off = self.header_length as usize;
        let limit = if self.backing_file_offset != 0 {
            (self.backing_file_offset as usize).min(hc.len())
        } else {
            hc.len()
        };
        loop {
            if off + 8 > limit {
                // No end marker before the backing file name / end of cluster:
                // tolerate, as qemu does for v2 images without extensions.
                return Ok(());
            }
            let typ = be32(hc, off);
            let len = be32(hc, off + 4) as usize;
            off += 8;
            if typ == EXT_END {
                return Ok(());
            }
            if len > limit - off {
                return Err(Error::field(
                    path,
                    "header extension length",
                    format!("extension 0x{typ:08x} of {len} bytes overruns the header cluster"),
                ));
            }
            let data = &hc[off..off + len];
            match typ {
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name_end = e[2..].iter().position(|&c| c == 0).unwrap_or(46);
                        let name = String::from_utf8_lossy(&e[2..2 + name_end]).into_owned();
                        self.feature_names.push((e[0], e[1], name));
                    }
                }
                _ => self.other_exts.push((typ, data.to_vec())),
            }
            off += len.div_ceil(8) * 8;
        }
    }

    /// Serialises the whole header cluster.
    pub fn to_cluster(&mut self, path: &Path) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; cs];
        let hl = if self.version == 3 { 112 } else { 72 };
        self.header_length = if self.version == 3 { 112 } else { 72 };
        let mut exts: Vec<u8> = Vec::new();
        let mut push = |typ: u32, data: &[u8]| {
            exts.extend_from_slice(&typ.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u32).to_be_bytes());
            exts.extend_from_slice(data);
            while exts.len() % 8 != 0 {
                exts.push(0);
            }
        };
        if let Some(f) = &self.backing_format {
            push(EXT_BACKING_FORMAT, f.as_bytes());
        }
        if self.version == 3 {
            let mut t = Vec::new();
            for (typ, bit, name) in FEATURES {
                let mut e = [0u8; 48];
                e[0] = *typ;
                e[1] = *bit;
                e[2..2 + name.len()].copy_from_slice(name.as_bytes());
                t.extend_from_slice(&e);
            }
            push(EXT_FEATURE_TABLE, &t);
        }
        for (typ, data) in &self.other_exts {
            push(*typ, data);
        }
        push(EXT_END, &[]);
        let off = hl + exts.len();
        let bf = self.backing_file.clone().unwrap_or_default();
        if off + bf.len() > cs || bf.len() > MAX_BACKING_NAME as usize {
            return Err(Error::Invalid(format!(
                "{}: header extensions and backing file name do not fit in one cluster",
                path.display()
            )));
        }
        b[hl..off].copy_from_slice(&exts);
        if !bf.is_empty() {
            b[off..off + bf.len()].copy_from_slice(bf.as_bytes());
            self.backing_file_offset = off as u64;
            self.backing_file_size = bf.len() as u32;
        } else {
            self.backing_file_offset = 0;
            self.backing_file_size = 0;
        }
        self.write_fixed(&mut b[..hl]);
        Ok(b)
    }

    /// Serialises the fixed part (72 bytes for v2, 112 for v3).
    pub fn write_fixed(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version == 3 && b.len() >= 104 {
            b[72..80].copy_from_slice(&self.incompatible.to_be_bytes());
            b[80..88].copy_from_slice(&self.compatible.to_be_bytes());
            b[88..96].copy_from_slice(&self.autoclear.to_be_bytes());
            b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            b[100..104].copy_from_slice(&self.header_length.to_be_bytes());
            if b.len() >= 112 {
                b[104] = self.compression_type;
                b[105..112].fill(0);
            }
        }
    }

    /// Length of the fixed part as written.
    pub fn fixed_len(&self) -> usize {
        if self.version == 3 {
            (self.header_length as usize).clamp(104, 112)
        } else {
            72
        }
    }
}

/// Feature name table written into v3 images.
const FEATURES: &[(u8, u8, &str)] = &[
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Checks that a table at `offset` of `bytes` bytes is cluster aligned and
/// lies within the file.
pub(crate) fn check_table(
    path: &Path,
    field: &'static str,
    offset: u64,
    bytes: u64,
    cs: u64,
    file_len: u64,
) -> Result<()> {
    if offset % cs != 0 {
        return Err(Error::field(
            path,
            field,
            format!("offset 0x{offset:x} is not aligned to the cluster size {cs}"),
        ));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::field(
            path,
            field,
            format!(
                "table at 0x{offset:x} of {bytes} bytes lies beyond the end of the file ({file_len} bytes)"
            ),
        )),
    }
}
