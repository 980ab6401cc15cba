//! The raw format: the file is the disk. Sparse-aware: discard punches
//! holes, block status uses SEEK_DATA/SEEK_HOLE.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    check_range, BlockBackend, CreateOptions, Error, Extent, ExtentKind, Format, HostFile,
    Preallocation, Result,
};

pub struct Raw {
    file: HostFile,
    size: AtomicU64,
}

impl Raw {
    pub fn open(path: &Path, read_only: bool) -> Result<Raw> {
        Self::open_with(path, read_only, false)
    }

    /// `direct`: see `OpenOptions::direct`.
    pub fn open_with(path: &Path, read_only: bool, direct: bool) -> Result<Raw> {
        let file = HostFile::open_with(path, read_only, direct)?;
        let size = file.len()?;
        Ok(Raw {
            file,
            size: AtomicU64::new(size),
        })
    }

    fn ro(&self) -> Result<()> {
        if self.file.is_read_only() {
            return Err(Error::ReadOnly {
                path: self.file.path().to_path_buf(),
            });
        }
        Ok(())
    }
}

pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    if opts.backing_file.is_some() {
        return Err(Error::unsupported(
            path,
            "raw images cannot have a backing file",
        ));
    }
    let f = HostFile::create(path)?;
    // qemu-img rounds image sizes up to whole 512-byte sectors.
    let size = opts.size.div_ceil(512) * 512;
    f.set_len(size)?;
    if opts.preallocation == Preallocation::Full {
        f.write_zeroes(0, size)?;
    }
    f.sync()
}

impl BlockBackend for Raw {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn filename(&self) -> &Path {
        self.file.path()
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn is_read_only(&self) -> bool {
        self.file.is_read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.file.path(), offset, buf.len() as u64, self.size())?;
        self.file.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.ro()?;
        check_range(self.file.path(), offset, buf.len() as u64, self.size())?;
        self.file.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.file.sync()
    }
    fn discard(&self, offset: u64, length: u64) -> Result<()> {
        self.ro()?;
        check_range(self.file.path(), offset, length, self.size())?;
        self.file.punch_hole(offset, length)
    }
    fn write_zeroes(&self, offset: u64, length: u64) -> Result<()> {
        self.discard(offset, length)
    }
    fn block_status(&self, offset: u64, length: u64) -> Result<Extent> {
        check_range(self.file.path(), offset, length, self.size())?;
        let (data, end) = self.file.seek_status(offset, offset + length);
        let end = end.max(offset + length.min(1));
        Ok(Extent {
            offset,
            length: end - offset,
            kind: if data {
                ExtentKind::Data
            } else {
                ExtentKind::Zero
            },
            depth: 0,
            host_offset: if data { Some(offset) } else { None },
            compressed: false,
        })
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        self.ro()?;
        self.file.set_len(new_size)?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
    fn actual_size(&self) -> u64 {
        self.file.allocated()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExtentKind, OpenOptions};

    #[test]
    fn sparse_map_discard_and_io() {
        let dir = std::env::temp_dir().join(format!("vireo-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("r.raw");
        crate::create(
            &p,
            &CreateOptions {
                format: Format::Raw,
                size: 4 << 20,
                ..Default::default()
            },
        )
        .expect("create");
        let img = crate::open(&p, &OpenOptions::default()).expect("open");
        assert_eq!(img.format(), Format::Raw);
        img.write_at(&[0xaa; 1 << 20], 1 << 20).expect("write");
        img.flush().expect("flush");
        let e = img.block_status(0, 4 << 20).expect("status");
        assert_eq!((e.kind, e.length), (ExtentKind::Zero, 1 << 20));
        let e = img.block_status(1 << 20, 3 << 20).expect("status");
        assert_eq!((e.kind, e.length), (ExtentKind::Data, 1 << 20));
        img.discard(1 << 20, 512 << 10).expect("discard");
        let mut b = vec![1u8; 1 << 20];
        img.read_at(&mut b, 1 << 20).expect("read");
        assert!(b[..512 << 10].iter().all(|&x| x == 0));
        assert!(b[512 << 10..].iter().all(|&x| x == 0xaa));
        let e = img.block_status(1 << 20, 1 << 20).expect("status");
        assert_eq!(e.kind, ExtentKind::Zero, "hole punched");
        assert!(matches!(
            img.write_at(&[0; 2], (4 << 20) - 1),
            Err(Error::OutOfRange { .. })
        ));
        img.resize(8 << 20).expect("resize");
        assert_eq!(std::fs::metadata(&p).expect("stat").len(), 8 << 20);
        drop(img);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A block device (here a loop device) has the device's size, not its stat size of 0.
    /// Skipped where loop devices cannot be set up (not root, no /dev/loop-control).
    #[test]
    fn block_devices_have_their_size() {
        struct Loop(String);
        impl Drop for Loop {
            fn drop(&mut self) {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.0])
                    .status();
            }
        }
        let dir = std::env::temp_dir().join(format!("vireo-raw-bdev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("backing.img");
        std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => {
                eprintln!("skipped: cannot set up a loop device (needs root and losetup)");
                let _ = std::fs::remove_dir_all(&dir);
                return;
            }
        };
        let _loop = Loop(dev.clone());
        let img = Raw::open(Path::new(&dev), true).unwrap();
        assert_eq!(img.size(), 3 << 20);
        let mut b = [0u8; 512];
        img.read_at(&mut b, (3 << 20) - 512).unwrap();
        assert_eq!(b, [7u8; 512]);
        drop(img);
        drop(_loop);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
