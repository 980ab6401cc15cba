//! A writer for the `newc` cpio format, the one the Linux kernel unpacks as initramfs.

use std::io::{self, Write};

/// Builds an uncompressed newc archive in memory (the kernel unpacks it without a
/// decompressor, which is faster under TCG than gzip).
#[derive(Default)]
pub struct Archive {
    data: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (parents are not created implicitly: add them first).
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
        self
    }

    /// Every missing parent directory of `path`, outermost first.
    pub fn parents(&mut self, path: &str, seen: &mut Vec<String>) -> &mut Self {
        let mut acc = String::new();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if !seen.contains(&acc) {
                seen.push(acc.clone());
                let p = acc.clone();
                self.dir(&p);
            }
        }
        self
    }

    /// A regular file with `mode` permission bits.
    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> &mut Self {
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), contents);
        self
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(path, S_IFCHR | (mode & 0o7777), (major, minor), &[]);
        self
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), contents: &[u8]) {
        let name = path.trim_start_matches('/');
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            contents.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(contents);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    /// Ends the archive (the `TRAILER!!!` entry) and writes it out.
    pub fn finish(mut self, out: &mut impl Write) -> io::Result<()> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        out.write_all(&self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_are_aligned_and_terminated() {
        let mut a = Archive::new();
        a.dir("bin").file("bin/x", 0o755, b"abc");
        let mut out = Vec::new();
        a.finish(&mut out).unwrap();
        assert_eq!(&out[..6], b"070701");
        assert!(out.len().is_multiple_of(4));
        // Second header starts 4-aligned after "bin\0".
        let second = 116; // 110-byte header + "bin\0", padded to 4
        assert_eq!(&out[second..second + 6], b"070701");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // File size field of bin/x: 3 bytes.
        assert_eq!(&out[second + 54..second + 62], b"00000003");
    }
}
