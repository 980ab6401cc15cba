//! Builds the test guest (freestanding C + GNU assembler) into a PVH ELF
//! at `$OUT_DIR/vireo-test-guest.elf` with the system gcc.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["guest/entry.S", "guest/main.c"];
const LINKER_SCRIPT: &str = "guest/linker.ld";
/// Files `#include`d by the sources (rebuild when they change).
const INCLUDED: &[&str] = &[
    "guest/virtio.c",
    "guest/virtio_misc.c",
    "guest/virtio_net.c",
    "guest/virtio_blk.c",
];

const CFLAGS: &[&str] = &[
    "-m64",
    "-std=gnu11",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdinc",
    "-fno-pic",
    "-fno-pie",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-mcmodel=small",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-delete-null-pointer-checks",
    "-fcf-protection=none",
    "-fno-tree-loop-distribute-patterns",
    "-march=x86-64",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
];

fn fail(msg: &str) -> ! {
    eprintln!("error: building the vireo test guest failed: {msg}");
    std::process::exit(1);
}

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!("`{shown}` exited with {s}")),
        Err(e) => fail(&format!(
            "could not run `{shown}`: {e} (a gcc with x86_64 support is required)"
        )),
    }
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let cc = env::var("VIREO_GUEST_CC").unwrap_or_else(|_| "gcc".to_string());
    println!("cargo:rerun-if-env-changed=VIREO_GUEST_CC");
    println!("cargo:rerun-if-changed={LINKER_SCRIPT}");
    for inc in INCLUDED {
        println!("cargo:rerun-if-changed={inc}");
    }

    let mut objs = Vec::new();
    for src in SOURCES {
        println!("cargo:rerun-if-changed={src}");
        let path = manifest.join(src);
        let obj = out.join(
            Path::new(src)
                .file_name()
                .map(|n| format!("{}.o", n.to_string_lossy()))
                .expect("source file name"),
        );
        run(Command::new(&cc)
            .args(CFLAGS)
            .arg("-c")
            .arg(&path)
            .arg("-o")
            .arg(&obj));
        objs.push(obj);
    }

    let elf = out.join("vireo-test-guest.elf");
    run(Command::new(&cc)
        .args([
            "-m64",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
            "-Wl,-z,noexecstack",
        ])
        .arg(format!("-Wl,-T,{}", manifest.join(LINKER_SCRIPT).display()))
        .args(&objs)
        .arg("-o")
        .arg(&elf));

    // The same program for the two other ways vireo enters a kernel: an ELF without the PVH
    // note (entered at e_entry in long mode with a zero page), and a bzImage.
    let objcopy = env::var("VIREO_GUEST_OBJCOPY").unwrap_or_else(|_| "objcopy".to_string());
    println!("cargo:rerun-if-env-changed=VIREO_GUEST_OBJCOPY");
    run(Command::new(&objcopy)
        .args(["--remove-section=.note.Xen"])
        .arg(&elf)
        .arg(out.join("vireo-test-guest-nopvh.elf")));
    let flat = out.join("vireo-test-guest.bin");
    run(Command::new(&objcopy)
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&flat));
    let image =
        std::fs::read(&flat).unwrap_or_else(|e| fail(&format!("reading {}: {e}", flat.display())));
    let elf_bytes =
        std::fs::read(&elf).unwrap_or_else(|e| fail(&format!("reading {}: {e}", elf.display())));
    let mem_end = elf_memory_end(&elf_bytes)
        .unwrap_or_else(|| fail("cannot read the guest ELF's program headers"));
    std::fs::write(
        out.join("vireo-test-guest.bzImage"),
        bzimage(&image, mem_end - LOAD_ADDR),
    )
    .unwrap_or_else(|e| fail(&format!("writing the bzImage: {e}")));
}

/// Where the guest is linked and where a bzImage's protected-mode part is loaded.
const LOAD_ADDR: u64 = 0x10_0000;

/// Highest end address (p_vaddr + p_memsz) of the ELF's PT_LOAD segments.
fn elf_memory_end(elf: &[u8]) -> Option<u64> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(32)? as usize;
    let (phentsize, phnum) = (u16_at(54)? as usize, u16_at(56)? as usize);
    (0..phnum)
        .filter_map(|i| {
            let ph = phoff + i * phentsize;
            let is_load = elf.get(ph..ph + 4)? == 1u32.to_le_bytes();
            is_load.then(|| Some(u64_at(ph + 16)? + u64_at(ph + 40)?))?
        })
        .max()
}

/// Wraps the flat image (linked at `LOAD_ADDR`, 64-bit entry 0x200 bytes in) as a bzImage:
/// one setup sector after the boot sector, holding the Linux boot protocol 2.15 header.
fn bzimage(image: &[u8], init_size: u64) -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut b = vec![0u8; setup_len];
    let put = |b: &mut Vec<u8>, off: usize, bytes: &[u8]| {
        b[off..off + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut b, 0x1f1, &[SETUP_SECTS]);
    put(
        &mut b,
        0x1f4,
        &(image.len().div_ceil(16) as u32).to_le_bytes(),
    ); // syssize
    put(&mut b, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut b, 0x202, b"HdrS");
    put(&mut b, 0x206, &0x020fu16.to_le_bytes()); // protocol 2.15
    put(&mut b, 0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(&mut b, 0x214, &(LOAD_ADDR as u32).to_le_bytes()); // code32_start
    put(&mut b, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut b, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut b, 0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(&mut b, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut b, 0x258, &LOAD_ADDR.to_le_bytes()); // pref_address
    put(&mut b, 0x260, &(init_size as u32).to_le_bytes()); // init_size
    b.extend_from_slice(image);
    // syssize counts 16-byte paragraphs: pad so the file holds all it announces.
    b.resize(setup_len + image.len().div_ceil(16) * 16, 0);
    b
}
