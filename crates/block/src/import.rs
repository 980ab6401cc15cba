//! Read-only import formats: VMDK (monolithicSparse, streamOptimized,
//! monolithicFlat, twoGbMaxExtent*), VDI (dynamic, static) and VHD/vpc
//! (fixed, dynamic). Each is a map from guest ranges to host ranges; all
//! tables are validated against the file size before they are allocated.

use std::path::{Path, PathBuf};

use crate::{check_range, BlockBackend, Error, Extent, ExtentKind, Format, HostFile, Result};

/// Where a guest range comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Zero,
    /// Host file index and offset.
    Host(usize, u64),
    /// streamOptimized grain: file index, offset of the grain marker.
    Deflate(usize, u64),
}

/// A generic read-only image: extents of fixed-size "grains" per extent.
trait Mapper: Send + Sync {
    /// Source of guest offset `off` and how many bytes from there share it
    /// (never crossing a grain boundary).
    fn map(&self, off: u64) -> Result<(Src, u64)>;
}

pub struct Imported {
    path: PathBuf,
    format: Format,
    size: u64,
    files: Vec<HostFile>,
    mapper: Box<dyn Mapper>,
    grain: u64,
}

fn ro<T>(path: &Path, fmt: Format) -> Result<T> {
    Err(Error::unsupported(
        path,
        format!("writing {fmt} images is not supported yet (convert to qcow2 first)"),
    ))
}

impl Imported {
    fn read_deflate(&self, file: usize, marker: u64, buf: &mut [u8], inoff: u64) -> Result<()> {
        let f = &self.files[file];
        let flen = f.len()?;
        let mut hdr = [0u8; 12];
        f.read_exact_at(&mut hdr, marker, "compressed grain marker")?;
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as u64;
        if size > 2 * self.grain + 4096 || marker + 12 + size > flen {
            return Err(Error::corrupt(
                f.path(),
                format!("compressed grain at 0x{marker:x} has invalid size {size}"),
            ));
        }
        let mut c = vec![0u8; size as usize];
        f.read_exact_at(&mut c, marker + 12, "compressed grain")?;
        let out = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&c, self.grain as usize)
            .map_err(|e| {
                Error::corrupt(
                    f.path(),
                    format!("cannot inflate grain at 0x{marker:x}: {e:?}"),
                )
            })?;
        let start = inoff as usize;
        let end = start + buf.len();
        if end <= out.len() {
            buf.copy_from_slice(&out[start..end]);
        } else {
            buf.fill(0);
            if start < out.len() {
                buf[..out.len() - start].copy_from_slice(&out[start..]);
            }
        }
        Ok(())
    }
}

impl BlockBackend for Imported {
    fn format(&self) -> Format {
        self.format
    }
    fn filename(&self) -> &Path {
        &self.path
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.path, offset, buf.len() as u64, self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (src, avail) = self.mapper.map(pos)?;
            let n = (avail.max(1) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match src {
                Src::Zero => chunk.fill(0),
                Src::Host(f, h) => self.files[f].read_at(chunk, h)?,
                Src::Deflate(f, m) => self.read_deflate(f, m, chunk, pos % self.grain)?,
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
        ro(&self.path, self.format)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<()> {
        ro(&self.path, self.format)
    }
    fn write_zeroes(&self, _: u64, _: u64) -> Result<()> {
        ro(&self.path, self.format)
    }
    fn block_status(&self, offset: u64, length: u64) -> Result<Extent> {
        check_range(&self.path, offset, length, self.size)?;
        let (src, avail) = self.mapper.map(offset)?;
        let mut len = avail.max(1).min(length);
        // merge following grains of the same kind
        while len < length {
            let (s2, a2) = self.mapper.map(offset + len)?;
            let same = match (src, s2) {
                (Src::Zero, Src::Zero) => true,
                (Src::Host(f1, h1), Src::Host(f2, h2)) => f1 == f2 && h1 + len == h2,
                (Src::Deflate(..), Src::Deflate(..)) => true,
                _ => false,
            };
            if !same {
                break;
            }
            len = (len + a2.max(1)).min(length);
        }
        Ok(Extent {
            offset,
            length: len,
            kind: if src == Src::Zero {
                ExtentKind::Unallocated
            } else {
                ExtentKind::Data
            },
            depth: 0,
            host_offset: match src {
                Src::Host(_, h) => Some(h),
                _ => None,
            },
            compressed: matches!(src, Src::Deflate(..)),
        })
    }
    fn resize(&self, _: u64) -> Result<()> {
        ro(&self.path, self.format)
    }
    fn actual_size(&self) -> u64 {
        self.files.iter().map(|f| f.allocated()).sum()
    }
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

/// Reads a table of `n` 32-bit entries after checking it fits in the file.
fn read_u32_table(
    f: &HostFile,
    off: u64,
    n: u64,
    le: bool,
    field: &'static str,
) -> Result<Vec<u32>> {
    let flen = f.len()?;
    let bytes = n
        .checked_mul(4)
        .filter(|b| off.checked_add(*b).is_some_and(|e| e <= flen));
    let Some(bytes) = bytes else {
        return Err(Error::field(
            f.path(),
            field,
            format!("table of {n} entries at 0x{off:x} lies beyond the end of the file"),
        ));
    };
    let mut b = vec![0u8; bytes as usize];
    f.read_exact_at(&mut b, off, field)?;
    Ok(b.chunks_exact(4)
        .map(|c| if le { le32(c, 0) } else { be32(c, 0) })
        .collect())
}

// ----- VMDK -----------------------------------------------------------------

pub const VMDK_MAGIC: [u8; 4] = *b"KDMV";
const GD_AT_END: u64 = u64::MAX;

/// One VMDK extent as seen by the mapper.
enum VmdkExtent {
    Flat {
        file: usize,
        offset: u64,
        sectors: u64,
    },
    Zero {
        sectors: u64,
    },
    Sparse {
        file: usize,
        sectors: u64,
        grain: u64,
        gtes: u64,
        /// Grain directory: sector offset of each grain table (0 = none).
        gd: Vec<u32>,
        /// Grain tables by their sector offset: sector of each grain.
        tables: std::collections::HashMap<u32, Vec<u32>>,
        compressed: bool,
    },
}

impl VmdkExtent {
    fn sectors(&self) -> u64 {
        match self {
            VmdkExtent::Flat { sectors, .. }
            | VmdkExtent::Zero { sectors }
            | VmdkExtent::Sparse { sectors, .. } => *sectors,
        }
    }
}

struct VmdkMap {
    extents: Vec<VmdkExtent>,
}

impl Mapper for VmdkMap {
    fn map(&self, off: u64) -> Result<(Src, u64)> {
        let mut base = 0u64;
        for e in &self.extents {
            let len = e.sectors() * 512;
            if off < base + len {
                let rel = off - base;
                return Ok(match e {
                    VmdkExtent::Flat { file, offset, .. } => {
                        (Src::Host(*file, offset + rel), len - rel)
                    }
                    VmdkExtent::Zero { .. } => (Src::Zero, len - rel),
                    VmdkExtent::Sparse {
                        file,
                        grain,
                        gtes,
                        gd,
                        tables,
                        compressed,
                        ..
                    } => {
                        let gb = grain * 512;
                        let gi = rel / gb;
                        let inoff = rel % gb;
                        let n = (gb - inoff).min(len - rel);
                        let entry = gd
                            .get((gi / gtes) as usize)
                            .and_then(|t| tables.get(t))
                            .and_then(|t| t.get((gi % gtes) as usize))
                            .copied()
                            .unwrap_or(0);
                        match entry {
                            0 | 1 => (Src::Zero, n),
                            s if *compressed => (Src::Deflate(*file, s as u64 * 512), n),
                            s => (Src::Host(*file, s as u64 * 512 + inoff), n),
                        }
                    }
                });
            }
            base += len;
        }
        Ok((Src::Zero, 512))
    }
}

fn open_vmdk_sparse(f: &HostFile, file: usize, desc_sectors: Option<u64>) -> Result<VmdkExtent> {
    let path = f.path();
    let flen = f.len()?;
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, 0, "vmdk header")?;
    if h[0..4] != VMDK_MAGIC {
        return Err(Error::field(path, "vmdk magic", "not a VMDK sparse extent"));
    }
    let mut hdr = h;
    let mut gd = le64(&h, 56);
    if gd == GD_AT_END {
        // streamOptimized: the real header is in the footer.
        if flen < 1536 {
            return Err(Error::field(
                path,
                "vmdk footer",
                "file too short for a footer",
            ));
        }
        f.read_exact_at(&mut hdr, flen - 1024, "vmdk footer")?;
        if hdr[0..4] != VMDK_MAGIC {
            return Err(Error::field(path, "vmdk footer", "footer magic missing"));
        }
        gd = le64(&hdr, 56);
    }
    let version = le32(&hdr, 4);
    if !(1..=3).contains(&version) {
        return Err(Error::unsupported(path, format!("VMDK version {version}")));
    }
    let flags = le32(&hdr, 8);
    let capacity = le64(&hdr, 12);
    let grain = le64(&hdr, 20);
    let gtes = le32(&hdr, 44) as u64;
    let compress = u16::from_le_bytes([hdr[77], hdr[78]]);
    if grain == 0 || !grain.is_power_of_two() || grain > 128 {
        return Err(Error::field(
            path,
            "vmdk grainSize",
            format!("{grain} sectors is invalid"),
        ));
    }
    if gtes == 0 || gtes > 4096 {
        return Err(Error::field(
            path,
            "vmdk numGTEsPerGT",
            format!("{gtes} is invalid"),
        ));
    }
    if capacity > (1u64 << 40) {
        return Err(Error::field(
            path,
            "vmdk capacity",
            format!("{capacity} sectors is absurd"),
        ));
    }
    let compressed = flags & (1 << 16) != 0;
    if compressed && compress != 1 {
        return Err(Error::unsupported(
            path,
            format!("VMDK compression algorithm {compress}"),
        ));
    }
    if let Some(d) = desc_sectors {
        if d != capacity {
            log::warn!(
                "{}: descriptor says {d} sectors, header {capacity}",
                path.display()
            );
        }
    }
    let grains = capacity.div_ceil(grain);
    let ngd = grains.div_ceil(gtes);
    let gd = read_u32_table(f, gd.saturating_mul(512), ngd, true, "vmdk gdOffset")?;
    let mut tables = std::collections::HashMap::new();
    for &t in &gd {
        if t == 0 || tables.contains_key(&t) {
            continue;
        }
        // Distinct tables lie at distinct sectors of the file, so this is
        // bounded by a small multiple of the file size.
        if (tables.len() as u64 + 1) * gtes * 4 > flen.saturating_mul(4) + 4096 {
            return Err(Error::field(
                path,
                "vmdk grain directory",
                "more grain tables than the file can hold",
            ));
        }
        tables.insert(
            t,
            read_u32_table(f, t as u64 * 512, gtes, true, "vmdk grain table")?,
        );
    }
    Ok(VmdkExtent::Sparse {
        file,
        sectors: capacity,
        grain,
        gtes,
        gd,
        tables,
        compressed,
    })
}

pub fn open_vmdk(path: &Path) -> Result<Imported> {
    let main = HostFile::open(path, true)?;
    let mut magic = [0u8; 4];
    main.read_at(&mut magic, 0)?;
    let mut files = Vec::new();
    let mut extents = Vec::new();
    if magic == VMDK_MAGIC {
        // monolithicSparse / streamOptimized: one sparse extent.
        let e = open_vmdk_sparse(&main, 0, None)?;
        files.push(main);
        extents.push(e);
    } else {
        // text descriptor
        let flen = main.len()?;
        if flen > 64 << 10 {
            return Err(Error::field(
                path,
                "vmdk descriptor",
                "descriptor file larger than 64 KiB",
            ));
        }
        let mut b = vec![0u8; flen as usize];
        main.read_exact_at(&mut b, 0, "vmdk descriptor")?;
        let text = String::from_utf8_lossy(&b).into_owned();
        if !text.contains("# Disk DescriptorFile") {
            return Err(Error::field(
                path,
                "vmdk descriptor",
                "not a VMDK descriptor file",
            ));
        }
        for line in text.lines() {
            let l = line.trim();
            if let Some(v) = l.strip_prefix("parentCID=") {
                if v.trim() != "ffffffff" {
                    return Err(Error::unsupported(
                        path,
                        "VMDK images with a parent (delta links)",
                    ));
                }
            }
            let words: Vec<&str> = l.split_whitespace().collect();
            if words.len() < 3 || !matches!(words[0], "RW" | "RDONLY" | "NOACCESS") {
                continue;
            }
            let sectors: u64 = words[1].parse().map_err(|_| {
                Error::field(path, "vmdk extent", format!("bad sector count in '{l}'"))
            })?;
            let kind = words[2];
            let name = l.split('"').nth(1).unwrap_or("");
            match kind {
                "ZERO" => extents.push(VmdkExtent::Zero { sectors }),
                "FLAT" | "VMFS" => {
                    let off: u64 = words.last().and_then(|w| w.parse().ok()).unwrap_or(0);
                    let fp = crate::qcow2::resolve_backing(path, name);
                    files.push(HostFile::open(&fp, true)?);
                    extents.push(VmdkExtent::Flat {
                        file: files.len() - 1,
                        offset: off * 512,
                        sectors,
                    });
                }
                "SPARSE" | "VMFSSPARSE" => {
                    let fp = crate::qcow2::resolve_backing(path, name);
                    let f = HostFile::open(&fp, true)?;
                    let idx = files.len();
                    let mut e = open_vmdk_sparse(&f, idx, Some(sectors))?;
                    if let VmdkExtent::Sparse { sectors: s, .. } = &mut e {
                        *s = sectors;
                    }
                    files.push(f);
                    extents.push(e);
                }
                k => return Err(Error::unsupported(path, format!("VMDK extent type {k}"))),
            }
            if extents.len() > 100_000 {
                return Err(Error::field(path, "vmdk extent", "too many extents"));
            }
        }
        if extents.is_empty() {
            return Err(Error::field(path, "vmdk descriptor", "no extents"));
        }
    }
    let size = extents.iter().map(|e| e.sectors() * 512).sum();
    let grain = extents
        .iter()
        .map(|e| match e {
            VmdkExtent::Sparse { grain, .. } => grain * 512,
            _ => 512,
        })
        .max()
        .unwrap_or(512);
    Ok(Imported {
        path: path.to_path_buf(),
        format: Format::Vmdk,
        size,
        files,
        mapper: Box::new(VmdkMap { extents }),
        grain,
    })
}

// ----- VDI ------------------------------------------------------------------

pub const VDI_SIGNATURE: u32 = 0xbeda_107f;

struct BlockMap {
    block: u64,
    data_offset: u64,
    /// Per block: host block index, or None when unallocated/zero.
    map: Vec<Option<u64>>,
    file_len: u64,
}

impl Mapper for BlockMap {
    fn map(&self, off: u64) -> Result<(Src, u64)> {
        let bi = (off / self.block) as usize;
        let inoff = off % self.block;
        let n = self.block - inoff;
        Ok(match self.map.get(bi).copied().flatten() {
            None => (Src::Zero, n),
            Some(h) => {
                let host = self.data_offset + h * self.block + inoff;
                if host >= self.file_len {
                    (Src::Zero, n)
                } else {
                    (Src::Host(0, host), n)
                }
            }
        })
    }
}

pub fn open_vdi(path: &Path) -> Result<Imported> {
    let f = HostFile::open(path, true)?;
    let flen = f.len()?;
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h[..400], 0, "vdi header")?;
    if le32(&h, 64) != VDI_SIGNATURE {
        return Err(Error::field(path, "vdi signature", "not a VDI image"));
    }
    let version = le32(&h, 68);
    if version >> 16 != 1 {
        return Err(Error::unsupported(
            path,
            format!("VDI version {version:#x}"),
        ));
    }
    let image_type = le32(&h, 76);
    if image_type != 1 && image_type != 2 {
        return Err(Error::field(
            path,
            "vdi image_type",
            format!("{image_type}"),
        ));
    }
    let bmap_off = le32(&h, 340) as u64;
    let data_off = le32(&h, 344) as u64;
    let sector_size = le32(&h, 360);
    let disk_size = le64(&h, 368);
    let block = le32(&h, 376) as u64;
    let extra = le32(&h, 380);
    let blocks = le32(&h, 384) as u64;
    if sector_size != 512 {
        return Err(Error::field(
            path,
            "vdi sector_size",
            format!("{sector_size}"),
        ));
    }
    if block == 0 || !block.is_power_of_two() || block > (256 << 20) {
        return Err(Error::field(path, "vdi block_size", format!("{block}")));
    }
    if extra != 0 {
        return Err(Error::unsupported(path, "VDI images with block_extra"));
    }
    if blocks.saturating_mul(block) < disk_size {
        return Err(Error::field(
            path,
            "vdi blocks_in_image",
            "too few blocks for the disk size",
        ));
    }
    let raw = read_u32_table(&f, bmap_off, blocks, true, "vdi offset_bmap")?;
    let map = raw
        .into_iter()
        .map(|e| {
            if e >= 0xffff_fffe {
                None
            } else {
                Some(e as u64)
            }
        })
        .collect();
    Ok(Imported {
        path: path.to_path_buf(),
        format: Format::Vdi,
        size: disk_size,
        files: vec![f],
        mapper: Box::new(BlockMap {
            block,
            data_offset: data_off,
            map,
            file_len: flen,
        }),
        grain: block,
    })
}

// ----- VHD (vpc) ------------------------------------------------------------

pub const VHD_COOKIE: [u8; 8] = *b"conectix";

struct VhdMap {
    block: u64,
    bitmap: u64,
    bat: Vec<u32>,
}

impl Mapper for VhdMap {
    fn map(&self, off: u64) -> Result<(Src, u64)> {
        let bi = (off / self.block) as usize;
        let inoff = off % self.block;
        let n = self.block - inoff;
        Ok(match self.bat.get(bi).copied() {
            None | Some(0xffff_ffff) => (Src::Zero, n),
            Some(s) => (Src::Host(0, s as u64 * 512 + self.bitmap + inoff), n),
        })
    }
}

struct Fixed;
impl Mapper for Fixed {
    fn map(&self, off: u64) -> Result<(Src, u64)> {
        Ok((Src::Host(0, off), u64::MAX / 2))
    }
}

pub fn open_vpc(path: &Path) -> Result<Imported> {
    let f = HostFile::open(path, true)?;
    let flen = f.len()?;
    if flen < 512 {
        return Err(Error::field(path, "vhd footer", "file too short"));
    }
    let mut foot = [0u8; 512];
    f.read_exact_at(&mut foot, 0, "vhd footer")?;
    if foot[0..8] != VHD_COOKIE {
        f.read_exact_at(&mut foot, flen - 512, "vhd footer")?;
        if foot[0..8] != VHD_COOKIE {
            return Err(Error::field(path, "vhd cookie", "no 'conectix' footer"));
        }
    }
    let data_offset = be64(&foot, 16);
    let creator = &foot[28..32];
    let current_size = be64(&foot, 48);
    let cyls = u16::from_be_bytes([foot[56], foot[57]]) as u64;
    let heads = foot[58] as u64;
    let secs = foot[59] as u64;
    let disk_type = be32(&foot, 60);
    let use_chs = (creator == b"vpc " || creator == b"qemu")
        && !(cyls == 65535 && heads == 16 && secs == 255);
    let size = if use_chs {
        cyls * heads * secs * 512
    } else {
        current_size
    };
    if size > (1u64 << 50) {
        return Err(Error::field(
            path,
            "vhd current_size",
            format!("{size} is absurd"),
        ));
    }
    match disk_type {
        2 => {
            if size > flen {
                return Err(Error::field(
                    path,
                    "vhd current_size",
                    "fixed image larger than the file",
                ));
            }
            Ok(Imported {
                path: path.to_path_buf(),
                format: Format::Vpc,
                size,
                files: vec![f],
                mapper: Box::new(Fixed),
                grain: 1 << 21,
            })
        }
        3 => {
            let mut dh = [0u8; 1024];
            if data_offset.checked_add(1024).is_none_or(|e| e > flen) {
                return Err(Error::field(
                    path,
                    "vhd data_offset",
                    "dynamic header beyond end of file",
                ));
            }
            f.read_exact_at(&mut dh, data_offset, "vhd dynamic header")?;
            if &dh[0..8] != b"cxsparse" {
                return Err(Error::field(
                    path,
                    "vhd dynamic header",
                    "missing 'cxsparse' cookie",
                ));
            }
            let table = be64(&dh, 16);
            let entries = be32(&dh, 28) as u64;
            let block = be32(&dh, 32) as u64;
            if block < 512 || !block.is_power_of_two() || block > (256 << 20) {
                return Err(Error::field(path, "vhd block_size", format!("{block}")));
            }
            if entries.saturating_mul(block) < size {
                return Err(Error::field(
                    path,
                    "vhd max_table_entries",
                    "too few for the disk size",
                ));
            }
            let bat = read_u32_table(&f, table, entries, false, "vhd table_offset")?;
            let bitmap = (block / 512).div_ceil(8).div_ceil(512) * 512;
            Ok(Imported {
                path: path.to_path_buf(),
                format: Format::Vpc,
                size,
                files: vec![f],
                mapper: Box::new(VhdMap { block, bitmap, bat }),
                grain: block,
            })
        }
        4 => Err(Error::unsupported(path, "differencing VHD images")),
        t => Err(Error::field(path, "vhd disk_type", format!("{t}"))),
    }
}

// ----- VHDX -----------------------------------------------------------------

pub const VHDX_SIGNATURE: [u8; 8] = *b"vhdxfile";

/// GUID as stored on disk (first three fields little-endian).
fn guid(s: &str) -> [u8; 16] {
    let hex: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'-')
        .collect::<Vec<u8>>()
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap_or("00"), 16).unwrap_or(0))
        .collect();
    let mut g = [0u8; 16];
    g[..16.min(hex.len())].copy_from_slice(&hex[..16.min(hex.len())]);
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Verifies the CRC-32C of a structure whose checksum field is at 4..8.
fn checksum_ok(b: &[u8]) -> bool {
    let want = le32(b, 4);
    let mut c = b.to_vec();
    c[4..8].fill(0);
    crc32c(&c) == want
}

struct VhdxMap {
    block: u64,
    chunk_ratio: u64,
    bat: Vec<u64>,
}

impl Mapper for VhdxMap {
    fn map(&self, off: u64) -> Result<(Src, u64)> {
        let bi = off / self.block;
        let inoff = off % self.block;
        let n = self.block - inoff;
        let idx = bi + bi / self.chunk_ratio;
        let e = self.bat.get(idx as usize).copied().unwrap_or(0);
        Ok(match e & 7 {
            6 => (Src::Host(0, ((e >> 20) << 20).saturating_add(inoff)), n),
            _ => (Src::Zero, n),
        })
    }
}

pub fn open_vhdx(path: &Path) -> Result<Imported> {
    let f = HostFile::open(path, true)?;
    let flen = f.len()?;
    let mut sig = [0u8; 8];
    f.read_exact_at(&mut sig, 0, "vhdx file identifier")?;
    if sig != VHDX_SIGNATURE {
        return Err(Error::field(
            path,
            "vhdx file identifier",
            "not a VHDX image",
        ));
    }
    // Current header: valid checksum, highest sequence number.
    let mut best: Option<(u64, Vec<u8>)> = None;
    for off in [64u64 << 10, 128 << 10] {
        let mut h = vec![0u8; 4096];
        if f.read_exact_at(&mut h, off, "vhdx header").is_err() {
            continue;
        }
        if &h[0..4] != b"head" || !checksum_ok(&h) {
            continue;
        }
        let seq = le64(&h, 8);
        if best.as_ref().is_none_or(|(s, _)| seq > *s) {
            best = Some((seq, h));
        }
    }
    let Some((_, h)) = best else {
        return Err(Error::field(
            path,
            "vhdx header",
            "no valid header (signature/checksum)",
        ));
    };
    if h[48..64].iter().any(|&b| b != 0) {
        return Err(Error::unsupported(
            path,
            "VHDX images with a pending log (replay it with a tool that writes VHDX first)",
        ));
    }
    let version = u16::from_le_bytes([h[66], h[67]]);
    if version != 1 {
        return Err(Error::unsupported(path, format!("VHDX version {version}")));
    }
    // Region table.
    let mut rt = vec![0u8; 64 << 10];
    f.read_exact_at(&mut rt, 192 << 10, "vhdx region table")?;
    if &rt[0..4] != b"regi" || !checksum_ok(&rt) {
        f.read_exact_at(&mut rt, 256 << 10, "vhdx region table")?;
        if &rt[0..4] != b"regi" || !checksum_ok(&rt) {
            return Err(Error::field(
                path,
                "vhdx region table",
                "no valid region table",
            ));
        }
    }
    let count = le32(&rt, 8) as usize;
    if count > 2047 {
        return Err(Error::field(
            path,
            "vhdx region table",
            format!("{count} entries"),
        ));
    }
    let bat_guid = guid("2DC27766-F623-4200-9D64-115E9BFD4A08");
    let meta_guid = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E");
    let (mut bat_region, mut meta_region) = (None, None);
    for i in 0..count {
        let e = &rt[16 + i * 32..16 + (i + 1) * 32];
        let off = le64(e, 16);
        let len = le32(e, 24) as u64;
        if off.checked_add(len).is_none_or(|end| end > flen) {
            return Err(Error::field(
                path,
                "vhdx region table",
                "region lies beyond the end of the file",
            ));
        }
        if e[0..16] == bat_guid {
            bat_region = Some((off, len));
        } else if e[0..16] == meta_guid {
            meta_region = Some((off, len));
        } else if le32(e, 28) & 1 != 0 {
            return Err(Error::unsupported(path, "unknown required VHDX region"));
        }
    }
    let (Some((bat_off, bat_len)), Some((meta_off, meta_len))) = (bat_region, meta_region) else {
        return Err(Error::field(
            path,
            "vhdx region table",
            "BAT or metadata region missing",
        ));
    };
    if !(64 << 10..=1 << 20).contains(&meta_len) {
        return Err(Error::field(
            path,
            "vhdx metadata region",
            format!("length {meta_len}"),
        ));
    }
    let mut md = vec![0u8; meta_len as usize];
    f.read_exact_at(&mut md, meta_off, "vhdx metadata region")?;
    if &md[0..8] != b"metadata" {
        return Err(Error::field(path, "vhdx metadata region", "bad signature"));
    }
    let n = u16::from_le_bytes([md[10], md[11]]) as usize;
    if n > 2047 {
        return Err(Error::field(
            path,
            "vhdx metadata region",
            format!("{n} entries"),
        ));
    }
    let item = |g: &str| -> Option<&[u8]> {
        let id = guid(g);
        (0..n).find_map(|i| {
            let e = &md[32 + i * 32..32 + (i + 1) * 32];
            if e[0..16] != id {
                return None;
            }
            let o = le32(e, 16) as usize;
            let l = le32(e, 20) as usize;
            md.get(o..o.checked_add(l)?)
        })
    };
    let fp = item("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
        .filter(|b| b.len() >= 8)
        .ok_or_else(|| Error::field(path, "vhdx file parameters", "missing"))?;
    let block = le32(fp, 0) as u64;
    if le32(fp, 4) & 2 != 0 {
        return Err(Error::unsupported(path, "differencing VHDX images"));
    }
    let size = item("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
        .filter(|b| b.len() >= 8)
        .map(|b| le64(b, 0))
        .ok_or_else(|| Error::field(path, "vhdx virtual disk size", "missing"))?;
    let lss = item("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
        .filter(|b| b.len() >= 4)
        .map(|b| le32(b, 0) as u64)
        .ok_or_else(|| Error::field(path, "vhdx logical sector size", "missing"))?;
    if !(1 << 20..=256 << 20).contains(&block) || !block.is_power_of_two() {
        return Err(Error::field(path, "vhdx block size", format!("{block}")));
    }
    if lss != 512 && lss != 4096 {
        return Err(Error::field(
            path,
            "vhdx logical sector size",
            format!("{lss}"),
        ));
    }
    if size > (64u64 << 40) {
        return Err(Error::field(
            path,
            "vhdx virtual disk size",
            format!("{size}"),
        ));
    }
    let chunk_ratio = ((1u64 << 23) * lss) / block;
    let blocks = size.div_ceil(block);
    let entries = blocks + blocks.saturating_sub(1) / chunk_ratio.max(1) + 1;
    if entries * 8 > bat_len {
        return Err(Error::field(
            path,
            "vhdx BAT",
            "region too small for the disk size",
        ));
    }
    let mut b = vec![0u8; (entries * 8) as usize];
    f.read_exact_at(&mut b, bat_off, "vhdx BAT")?;
    let bat = b.chunks_exact(8).map(|c| le64(c, 0)).collect();
    Ok(Imported {
        path: path.to_path_buf(),
        format: Format::Vhdx,
        size,
        files: vec![f],
        mapper: Box::new(VhdxMap {
            block,
            chunk_ratio: chunk_ratio.max(1),
            bat,
        }),
        grain: block,
    })
}
