//! Loading a Linux kernel (bzImage or ELF vmlinux), its initrd and command line, and writing
//! the boot information the kernel reads first: the zero page (Linux boot protocol) or the
//! PVH `hvm_start_info`, each with the e820 memory map.
//!
//! Every file is validated against its own headers before anything is loaded, so a missing,
//! truncated or non-kernel file is reported in one clear line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout;

/// Oldest Linux boot protocol vireo boots (2.10: relocatable kernels, pref_address,
/// init_size).
pub const MIN_BOOT_PROTOCOL: u16 = 0x020a;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const XLF_KERNEL_64: u16 = 1 << 0;
const LOADFLAG_LOADED_HIGH: u8 = 1 << 0;
const PVH_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Linux kernel: {reason}")]
    NotAKernel { path: PathBuf, reason: String },
    #[error("kernel {path} is truncated: {reason}")]
    Truncated { path: PathBuf, reason: String },
    #[error("kernel {path} is not supported: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error(
        "the kernel needs at least {needed_mib} MiB of guest memory; the VM has {have_mib} MiB"
    )]
    KernelTooBig { needed_mib: u64, have_mib: u64 },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} next to the kernel; give the VM more memory")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot load kernel {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot write boot information to guest memory: {0}")]
    Write(String),
}

pub type Result<T> = std::result::Result<T, BootError>;

/// The kinds of kernel image vireo boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage, entered through its 64-bit entry point with a zero page.
    BzImage { protocol: u16 },
    /// An ELF vmlinux with a PVH entry note (preferred for ELF).
    ElfPvh,
    /// An ELF vmlinux without a PVH note, entered at e_entry in long mode with a zero page.
    Elf64,
}

/// What vireo learned from a kernel file's headers, before loading it.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    pub path: PathBuf,
    pub format: KernelFormat,
    /// Longest command line (without the NUL) the kernel accepts.
    pub cmdline_max: usize,
    /// Highest address the initrd may end at (exclusive).
    pub initrd_limit: u64,
    /// Guest memory the kernel needs to decompress and run (0 if unknown).
    pub min_memory: u64,
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh { entry: u64, start_info: u64 },
    /// Linux 64-bit boot protocol: long mode, identity-mapped first GiB, RSI = zero page.
    Linux64 { entry: u64, zero_page: u64 },
}

/// Maps an I/O error on `path` to [`BootError::Open`] with `what` as the message prefix.
fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BootError + 'a {
    move |source| BootError::Open {
        what,
        path: path.to_owned(),
        source,
    }
}

fn open(what: &'static str, path: &Path) -> Result<File> {
    let file = File::open(path).map_err(io_error(what, path))?;
    let meta = file.metadata().map_err(io_error(what, path))?;
    if !meta.is_file() {
        return Err(io_error(what, path)(std::io::Error::other(
            "not a regular file",
        )));
    }
    Ok(file)
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Reads a kernel's headers and checks that the whole image is present.
pub fn probe_kernel(path: &Path) -> Result<KernelInfo> {
    let mut file = open("cannot open kernel", path)?;
    let len = file
        .metadata()
        .map_err(io_error("cannot read kernel", path))?
        .len();
    let mut head = [0u8; 0x280];
    let got = read_at(&mut file, 0, &mut head).map_err(io_error("cannot read kernel", path))?;
    let head = &head[..got];
    let not_kernel = |reason: &str| BootError::NotAKernel {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if head.len() >= 4 && &head[..4] == ELF_MAGIC {
        return probe_elf(path, &mut file, len);
    }
    if head.len() >= 0x206
        && u32::from_le_bytes(head[0x202..0x206].try_into().unwrap()) == HDRS_MAGIC
    {
        return probe_bzimage(path, head, len);
    }
    if head.len() < 0x206 && !head.is_empty() && head.len() < 4 {
        return Err(not_kernel("file too short"));
    }
    Err(not_kernel(
        "neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)",
    ))
}

fn probe_bzimage(path: &Path, head: &[u8], len: u64) -> Result<KernelInfo> {
    let u8_at = |o: usize| head.get(o).copied().unwrap_or(0);
    let u16_at = |o: usize| u16::from_le_bytes([u8_at(o), u8_at(o + 1)]);
    let u32_at =
        |o: usize| u32::from_le_bytes([u8_at(o), u8_at(o + 1), u8_at(o + 2), u8_at(o + 3)]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    let unsupported = |reason: String| BootError::Unsupported {
        path: path.to_owned(),
        reason,
    };
    let protocol = u16_at(0x206);
    if protocol < MIN_BOOT_PROTOCOL {
        return Err(unsupported(format!(
            "boot protocol {}.{:02} is older than the {}.{:02} vireo needs",
            protocol >> 8,
            protocol & 0xff,
            MIN_BOOT_PROTOCOL >> 8,
            MIN_BOOT_PROTOCOL & 0xff
        )));
    }
    if u8_at(0x211) & LOADFLAG_LOADED_HIGH == 0 {
        return Err(unsupported("not a bzImage (zImage loaded low)".into()));
    }
    if head.len() >= 0x238 && u16_at(0x236) & XLF_KERNEL_64 == 0 {
        return Err(unsupported(
            "no 64-bit entry point (XLF_KERNEL_64 not set)".into(),
        ));
    }
    let setup_sects = match u8_at(0x1f1) {
        0 => 4,
        n => u64::from(n),
    };
    let setup_bytes = (setup_sects + 1) * 512;
    let payload = u64::from(u32_at(0x1f4)) * 16; // syssize, in 16-byte paragraphs
    if len < setup_bytes + payload {
        return Err(BootError::Truncated {
            path: path.to_owned(),
            reason: format!(
                "the setup header announces {} bytes, the file has {len}",
                setup_bytes + payload
            ),
        });
    }
    let cmdline_size = u32_at(0x238) as usize; // protocol >= 2.06
    let initrd_addr_max = u64::from(u32_at(0x22c));
    let pref_address = u64_at(0x258);
    let init_size = u64::from(u32_at(0x260));
    Ok(KernelInfo {
        path: path.to_owned(),
        format: KernelFormat::BzImage { protocol },
        cmdline_max: cmdline_size.min(layout::CMDLINE_MAX_SIZE - 1),
        initrd_limit: initrd_addr_max.saturating_add(1),
        min_memory: pref_address
            .max(layout::HIGH_MEMORY_START)
            .saturating_add(init_size),
    })
}

fn probe_elf(path: &Path, file: &mut File, len: u64) -> Result<KernelInfo> {
    let mut ehdr = [0u8; 64];
    let got = read_at(file, 0, &mut ehdr).map_err(io_error("cannot read kernel", path))?;
    let truncated = |reason: String| BootError::Truncated {
        path: path.to_owned(),
        reason,
    };
    if got < 64 {
        return Err(truncated(format!(
            "ELF header needs 64 bytes, the file has {got}"
        )));
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let unsupported = |reason: &str| BootError::Unsupported {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(unsupported("not a 64-bit little-endian ELF"));
    }
    if u16_at(&ehdr, 18) != 62 {
        return Err(unsupported("ELF machine is not x86-64"));
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u64::from(u16_at(&ehdr, 54));
    let phnum = u64::from(u16_at(&ehdr, 56));
    if phentsize != 56 || phnum == 0 {
        return Err(unsupported("ELF has no usable program headers"));
    }
    let table_end = phoff.saturating_add(phentsize * phnum);
    if table_end > len {
        return Err(truncated(format!(
            "program headers end at byte {table_end}, the file has {len}"
        )));
    }
    let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
    read_at(file, phoff, &mut phdrs).map_err(io_error("cannot read kernel", path))?;
    let mut pvh = false;
    let mut has_load = false;
    for ph in phdrs.chunks_exact(56) {
        let p_type = u32_at(ph, 0);
        let offset = u64_at(ph, 8);
        let filesz = u64_at(ph, 32);
        let end = offset.saturating_add(filesz);
        if (p_type == 1 || p_type == 4) && end > len {
            return Err(truncated(format!(
                "a segment ends at byte {end}, the file has {len}"
            )));
        }
        has_load |= p_type == 1;
        if p_type == 4 {
            pvh |= elf_notes_have_pvh(file, offset, filesz);
        }
    }
    if !has_load {
        return Err(unsupported("ELF has no loadable segment"));
    }
    Ok(KernelInfo {
        path: path.to_owned(),
        format: if pvh {
            KernelFormat::ElfPvh
        } else {
            KernelFormat::Elf64
        },
        cmdline_max: layout::CMDLINE_MAX_SIZE - 1,
        initrd_limit: layout::MMIO_HOLE_START,
        min_memory: 0,
    })
}

/// Whether a PT_NOTE segment holds XEN_ELFNOTE_PHYS32_ENTRY (type 18, name "Xen").
fn elf_notes_have_pvh(file: &mut File, offset: u64, size: u64) -> bool {
    // Notes segments are small; a huge one is not a kernel's and is not scanned.
    if size > 1 << 20 {
        return false;
    }
    let mut buf = vec![0u8; size as usize];
    if read_at(file, offset, &mut buf).ok() != Some(buf.len()) {
        return false;
    }
    let mut pos = 0usize;
    while pos + 12 <= buf.len() {
        let namesz = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
        let descsz = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let ntype = u32::from_le_bytes(buf[pos + 8..pos + 12].try_into().unwrap());
        let name_start = pos + 12;
        let name = buf.get(name_start..name_start.saturating_add(namesz));
        if ntype == 18 && name.is_some_and(|n| n.starts_with(b"Xen")) {
            return true;
        }
        let align4 = |n: usize| n.saturating_add(3) & !3;
        pos = name_start
            .saturating_add(align4(namesz))
            .saturating_add(align4(descsz));
    }
    false
}

/// Checks that an initrd can be opened (before the VM is built).
pub fn check_initrd(path: &Path) -> Result<()> {
    open("cannot open initrd", path).map(drop)
}

/// Checks a command line against what the kernel accepts.
pub fn check_cmdline(info: &KernelInfo, cmdline: &str) -> Result<()> {
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() > info.cmdline_max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: info.cmdline_max,
        });
    }
    Ok(())
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub info: KernelInfo,
    pub entry: u64,
    /// First free byte after the kernel image.
    pub end: u64,
    setup_header: Option<setup_header>,
}

/// End of RAM below the MMIO hole.
fn low_ram_end<M: GuestMemoryBackend>(mem: &M) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().0 < layout::MMIO_HOLE_START)
        .map(|r| r.start_addr().0 + r.len())
        .max()
        .unwrap_or(0)
}

fn total_ram<M: GuestMemoryBackend>(mem: &M) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Loads the kernel described by `info` into guest memory.
pub fn load_kernel<M: GuestMemoryBackend>(mem: &M, info: &KernelInfo) -> Result<LoadedKernel> {
    let have = total_ram(mem);
    if info.min_memory > have {
        return Err(BootError::KernelTooBig {
            needed_mib: info.min_memory.div_ceil(1 << 20),
            have_mib: have >> 20,
        });
    }
    let mut file = open("cannot open kernel", &info.path)?;
    let high = Some(GuestAddress(layout::HIGH_MEMORY_START));
    let load_err = |e: linux_loader::loader::Error| match e {
        linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage)
        | linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel,
        ) => BootError::Load {
            path: info.path.clone(),
            reason: format!(
                "it does not fit in {} MiB of guest memory (or the file is truncated)",
                have >> 20
            ),
        },
        other => BootError::Load {
            path: info.path.clone(),
            reason: other.to_string(),
        },
    };
    match info.format {
        KernelFormat::BzImage { .. } => {
            let r = BzImage::load(mem, None, &mut file, high).map_err(load_err)?;
            Ok(LoadedKernel {
                info: info.clone(),
                // The 64-bit entry point sits 0x200 bytes into the protected-mode code.
                entry: r.kernel_load.0 + 0x200,
                end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
        KernelFormat::ElfPvh | KernelFormat::Elf64 => {
            let r = Elf::load(mem, None, &mut file, high).map_err(load_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => addr.0,
                _ => r.kernel_load.0,
            };
            let format = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(_) => KernelFormat::ElfPvh,
                _ => KernelFormat::Elf64,
            };
            Ok(LoadedKernel {
                info: KernelInfo {
                    format,
                    ..info.clone()
                },
                entry,
                end: r.kernel_end,
                setup_header: None,
            })
        }
    }
}

/// An initrd placed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

/// Loads an initrd at the top of low RAM, above the kernel and below its limit.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<LoadedInitrd> {
    let mut file = open("cannot open initrd", path)?;
    let size = file
        .metadata()
        .map_err(io_error("cannot read initrd", path))?
        .len();
    let limit = low_ram_end(mem).min(kernel.info.initrd_limit);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_owned(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel.end.max(layout::HIGH_MEMORY_START) {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::Load {
            path: path.to_owned(),
            reason: format!("reading the initrd: {e}"),
        })?;
    Ok(LoadedInitrd { addr, size })
}

/// The e820 map of the VM: RAM below the EBDA, the reserved BIOS area, RAM from 1 MiB to the
/// MMIO hole, and RAM above 4 GiB.
pub fn e820_map<M: GuestMemoryBackend>(mem: &M) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, layout::EBDA_START, E820_RAM),
        (
            layout::EBDA_START,
            layout::HIGH_MEMORY_START - layout::EBDA_START,
            E820_RESERVED,
        ),
    ];
    for r in mem.iter() {
        let start = r.start_addr().0.max(layout::HIGH_MEMORY_START);
        let end = r.start_addr().0 + r.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes the command line and the boot information structure; returns the entry state.
pub fn write_boot_info<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<u64>,
) -> Result<BootEntry> {
    check_cmdline(&kernel.info, cmdline)?;
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|e| BootError::Write(format!("command line: {e}")))?;
    let e820 = e820_map(mem);
    match kernel.info.format {
        KernelFormat::ElfPvh => {
            write_pvh_start_info(mem, bytes.len(), initrd, rsdp, &e820)?;
            Ok(BootEntry::Pvh {
                entry: kernel.entry,
                start_info: layout::PVH_INFO_START,
            })
        }
        KernelFormat::BzImage { .. } | KernelFormat::Elf64 => {
            write_zero_page(mem, kernel, bytes.len(), initrd, rsdp, &e820)?;
            Ok(BootEntry::Linux64 {
                entry: kernel.entry,
                zero_page: layout::ZERO_PAGE_START,
            })
        }
    }
}

fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<u64>,
    e820: &[(u64, u64, u32)],
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff; // undefined loader ID
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    // No real-mode code runs: the heap and loader flags only matter to the setup code.
    params.hdr.loadflags |= LOADFLAG_LOADED_HIGH;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    if e820.len() > params.e820_table.len() {
        return Err(BootError::Write("too many e820 entries".into()));
    }
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = addr;
        slot.size = size;
        slot.r#type = type_;
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::Write(format!("zero page: {e}")))
}

fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    _cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    rsdp: Option<u64>,
    e820: &[(u64, u64, u32)],
) -> Result<()> {
    let start_info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist_addr = layout::PVH_INFO_START + start_info_size.next_multiple_of(8);
    let memmap_addr = modlist_addr + std::mem::size_of::<hvm_modlist_entry>() as u64;
    let memmap_bytes = (e820.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    if memmap_addr + memmap_bytes > layout::PVH_INFO_START + layout::PVH_INFO_SIZE {
        return Err(BootError::Write(
            "PVH memory map does not fit its page".into(),
        ));
    }
    let start_info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { modlist_addr } else { 0 },
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: memmap_addr,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|&(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(memmap_addr));
    if let Some(i) = initrd {
        let module = hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(modlist_addr));
    }
    PvhBootConfigurator::write_bootparams::<M>(&params, mem)
        .map_err(|e| BootError::Write(format!("PVH start info: {e}")))
}

/// The 16-bit code at the reset vector (see [`write_reset_stub`]).
pub fn reset_stub() -> [u8; layout::RESET_VECTOR_SIZE as usize] {
    let [lo, hi] = layout::ports::ACPI_RESET.to_le_bytes();
    let mut code = [0xf4u8; layout::RESET_VECTOR_SIZE as usize]; // hlt padding
    #[rustfmt::skip]
    let stub = [
        0xba, lo, hi, // mov dx, ACPI_RESET
        0xb0, layout::ports::ACPI_RESET_VALUE, // mov al, ACPI_RESET_VALUE
        0xee, // out dx, al
        0xb0, 0xfe, // mov al, 0xfe (i8042: pulse the reset line)
        0xe6, layout::ports::I8042_COMMAND as u8, // out 0x64, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ];
    code[..stub.len()].copy_from_slice(&stub);
    code
}

/// Writes a real-mode stub at the reset vector (F000:FFF0) that resets the machine: it
/// writes the FADT reset value to the ACPI reset register, then (should that be ignored)
/// pulses the i8042 reset line, then halts.
///
/// Without firmware the reset vector would be zeroed RAM, and a guest that jumps there to
/// reboot would run through it forever. Linux does exactly that on vireo: a hardware-reduced
/// ACPI platform without DMI makes it pick the EFI reboot method, which does nothing without
/// EFI runtime services, and the next method it tries is the "BIOS" one —
/// `machine_real_restart()`, a far jump to F000:FFF0 in real mode.
pub fn write_reset_stub<M: GuestMemoryBackend>(mem: &M) -> Result<()> {
    mem.write_slice(&reset_stub(), GuestAddress(layout::RESET_VECTOR))
        .map_err(|e| BootError::Write(format!("reset vector: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryMmap, GuestRegionMmap};

    fn memory(size: u64) -> GuestMemoryMmap<()> {
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(size)
            .into_iter()
            .map(|r| (GuestAddress(r.start), r.size as usize))
            .collect();
        vm_memory::GuestRegionCollection::<GuestRegionMmap<()>>::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn probes_each_kernel_format() {
        let pvh = probe_kernel(Path::new(vireo_test_guest::PATH)).unwrap();
        assert_eq!(pvh.format, KernelFormat::ElfPvh);
        assert_eq!(pvh.cmdline_max, 2047);
        let elf = probe_kernel(Path::new(vireo_test_guest::NOPVH_ELF_PATH)).unwrap();
        assert_eq!(elf.format, KernelFormat::Elf64);
        let bz = probe_kernel(Path::new(vireo_test_guest::BZIMAGE_PATH)).unwrap();
        assert_eq!(bz.format, KernelFormat::BzImage { protocol: 0x020f });
        assert_eq!(bz.cmdline_max, 2047);
        assert_eq!(bz.initrd_limit, 0x8000_0000);
        assert!(bz.min_memory > layout::HIGH_MEMORY_START);
    }

    #[test]
    fn reset_stub_writes_the_acpi_reset_register_then_the_i8042() {
        let mem = memory(64 << 20);
        write_reset_stub(&mem).unwrap();
        let mut code = [0u8; 16];
        mem.read_slice(&mut code, GuestAddress(0xf_fff0)).unwrap();
        assert_eq!(code, reset_stub());
        // mov dx, 0x602; mov al, 1; out dx, al; mov al, 0xfe; out 0x64, al; hlt; jmp $-1
        assert_eq!(
            &code[..13],
            &[0xba, 0x02, 0x06, 0xb0, 0x01, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]
        );
        // The stub ends exactly at 1 MiB, in the e820 reserved area below it.
        assert_eq!(layout::RESET_VECTOR + 16, layout::HIGH_MEMORY_START);
        assert!(e820_map(&mem)
            .iter()
            .any(|&(start, len, kind)| kind != E820_RAM
                && start <= layout::RESET_VECTOR
                && start + len >= layout::HIGH_MEMORY_START));
    }

    #[test]
    fn command_line_limits() {
        let info = probe_kernel(Path::new(vireo_test_guest::PATH)).unwrap();
        assert!(check_cmdline(&info, &"a".repeat(2047)).is_ok());
        assert!(matches!(
            check_cmdline(&info, &"a".repeat(2048)),
            Err(BootError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
        assert!(matches!(
            check_cmdline(&info, "a\0b"),
            Err(BootError::CmdlineNul)
        ));
    }

    #[test]
    fn e820_covers_ram_around_the_hole() {
        let mem = memory(layout::MMIO_HOLE_START + (256 << 20));
        let map = e820_map(&mem);
        assert_eq!(
            map,
            vec![
                (0, layout::EBDA_START, E820_RAM),
                (
                    layout::EBDA_START,
                    layout::HIGH_MEMORY_START - layout::EBDA_START,
                    E820_RESERVED
                ),
                (
                    layout::HIGH_MEMORY_START,
                    layout::MMIO_HOLE_START - layout::HIGH_MEMORY_START,
                    E820_RAM
                ),
                (1 << 32, 256 << 20, E820_RAM),
            ]
        );
    }

    #[test]
    fn bzimage_zero_page_describes_cmdline_initrd_e820_and_rsdp() {
        let dir = std::env::temp_dir().join(format!("vireo-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let initrd_path = dir.join("initrd");
        std::fs::write(&initrd_path, vec![0x5a; 10_000]).unwrap();
        let mem = memory(64 << 20);
        let info = probe_kernel(Path::new(vireo_test_guest::BZIMAGE_PATH)).unwrap();
        let kernel = load_kernel(&mem, &info).unwrap();
        assert_eq!(kernel.entry, layout::HIGH_MEMORY_START + 0x200);
        let initrd = load_initrd(&mem, &kernel, &initrd_path).unwrap();
        assert_eq!(initrd.addr, ((64 << 20) - 10_000) & !0xfff);
        let entry = write_boot_info(
            &mem,
            &kernel,
            "console=ttyS0 x=1",
            Some(initrd),
            Some(0xe0000),
        )
        .unwrap();
        assert_eq!(
            entry,
            BootEntry::Linux64 {
                entry: 0x100200,
                zero_page: layout::ZERO_PAGE_START
            }
        );
        let zp: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ zp.hdr.header }, HDRS_MAGIC);
        assert_eq!({ zp.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ zp.hdr.ramdisk_image }, initrd.addr as u32);
        assert_eq!({ zp.hdr.ramdisk_size }, 10_000);
        assert_eq!({ zp.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(zp.e820_entries, 3);
        let mut cmdline = [0u8; 18];
        mem.read_slice(&mut cmdline, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 x=1\0");
        let in_guest: u8 = mem.read_obj(GuestAddress(initrd.addr + 9_999)).unwrap();
        assert_eq!(in_guest, 0x5a);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pvh_start_info_lists_memory_and_module() {
        let mem = memory(32 << 20);
        let info = probe_kernel(Path::new(vireo_test_guest::PATH)).unwrap();
        let kernel = load_kernel(&mem, &info).unwrap();
        let initrd = LoadedInitrd {
            addr: 0x1e0_0000,
            size: 4096,
        };
        let entry = write_boot_info(&mem, &kernel, "", Some(initrd), Some(0xe0000)).unwrap();
        let BootEntry::Pvh { start_info, .. } = entry else {
            panic!("expected a PVH entry, got {entry:?}");
        };
        let si: hvm_start_info = mem.read_obj(GuestAddress(start_info)).unwrap();
        assert_eq!(
            (si.magic, si.version, si.nr_modules),
            (PVH_START_MAGIC, 1, 1)
        );
        assert_eq!(
            (si.rsdp_paddr, si.cmdline_paddr),
            (0xe0000, layout::CMDLINE_START)
        );
        assert_eq!(si.memmap_entries, 3);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(si.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (0x10_0000, (32 << 20) - 0x10_0000, E820_RAM)
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x1e0_0000, 4096));
    }

    #[test]
    fn kernel_needing_more_memory_than_the_vm_has_is_refused() {
        let mem = memory(1 << 20);
        let info = probe_kernel(Path::new(vireo_test_guest::BZIMAGE_PATH)).unwrap();
        assert!(matches!(
            load_kernel(&mem, &info),
            Err(BootError::KernelTooBig { .. })
        ));
    }
}
