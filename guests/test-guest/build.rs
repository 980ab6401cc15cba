//! Builds the test guest (freestanding C + GNU assembler) into a PVH ELF
//! at `$OUT_DIR/vireo-test-guest.elf` with the system gcc.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["guest/entry.S", "guest/main.c"];
const LINKER_SCRIPT: &str = "guest/linker.ld";

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
}
