//! virtio-blk through its queue: the tests play the driver on a guest memory of their own
//! (testing.rs) and check the bytes in the image files on the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vireo_block::{CreateOptions, ExtentKind, Format};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT};
use vmm_sys_util::eventfd::EventFd;

use super::request::{RANGE_FLAG_UNMAP, SECTOR_SIZE};
use super::testing::*;
use super::worker::Worker;
use super::*;
use crate::virtio::{Activation, ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1};

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// Test disks are 1 MiB.
const DISK_SIZE: u64 = 1 << 20;
const SECTORS: u64 = DISK_SIZE / SECTOR_SIZE;
const ALL_FEATURES: u64 = VIRTIO_F_VERSION_1
    | 1 << VIRTIO_BLK_F_FLUSH
    | 1 << VIRTIO_BLK_F_DISCARD
    | 1 << VIRTIO_BLK_F_WRITE_ZEROES;

/// Request buffers in guest memory.
const HDR: u64 = DATA;
const STATUS: u64 = DATA + 0x100;
const BUF: u64 = DATA + 0x1000;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vireo-vblk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Byte `i` of the test pattern.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

fn raw_image(dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.join(name);
    let data: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    std::fs::write(&p, data).unwrap();
    p
}

fn qcow2_image(dir: &TempDir, name: &str, backing: Option<&Path>) -> PathBuf {
    let p = dir.join(name);
    vireo_block::create(
        &p,
        &CreateOptions {
            format: Format::Qcow2,
            size: DISK_SIZE,
            cluster_size: 65536,
            backing_file: backing.map(|b| b.to_string_lossy().into_owned()),
            backing_format: backing.map(|_| Format::Raw),
            ..Default::default()
        },
    )
    .unwrap();
    p
}

fn open(path: &Path, format: Option<Format>, read_only: bool, serial: Option<&str>) -> Arc<Disk> {
    Arc::new(
        Disk::open(&DiskOptions {
            path: path.to_path_buf(),
            format,
            read_only,
            serial: serial.map(str::to_string),
        })
        .unwrap(),
    )
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn range(sector: u64, count: u32, flags: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&count.to_le_bytes());
    r[12..].copy_from_slice(&flags.to_le_bytes());
    r
}

/// A disk's device with one queue served synchronously by the test.
struct Harness {
    drv: Driver,
    worker: Worker,
    irq: Arc<Recorder>,
    disk: Arc<Disk>,
}

impl Harness {
    fn new(disk: Arc<Disk>, features: u64) -> Harness {
        let mem = memory();
        let drv = Driver::new(&mem, 16);
        let irq = Arc::new(Recorder::default());
        let q = ActiveQueue {
            index: 0,
            queue: drv.queue(),
            kick: EventFd::new(0).unwrap(),
        };
        let worker = Worker::new(
            &disk,
            features,
            mem,
            q,
            irq.clone(),
            EventFd::new(0).unwrap(),
        );
        Harness {
            drv,
            worker,
            irq,
            disk,
        }
    }

    /// Makes `descs` available, serves the queue, and returns the status byte (at the last
    /// byte of the last descriptor) and the used length.
    fn submit(&mut self, descs: &[D]) -> (u8, u32) {
        let last = descs.last().unwrap();
        let status_at = last.addr + u64::from(last.len) - 1;
        self.drv.put(status_at, &[0xee]);
        let before = self.drv.used_idx();
        let head = self.drv.push(descs);
        self.worker.serve();
        assert_eq!(
            self.drv.used_idx(),
            before.wrapping_add(1),
            "one request completed"
        );
        let (id, len) = self.drv.used(before);
        assert_eq!(id, head);
        (self.drv.byte(status_at), len)
    }

    /// A request with the header at HDR, `data` readable at BUF (if any) and a separate
    /// status byte.
    fn out(&mut self, kind: u32, sector: u64, data: &[u8]) -> u8 {
        self.drv.put(HDR, &header(kind, sector));
        self.drv.put(BUF, data);
        let mut d = vec![r(HDR, 16)];
        if !data.is_empty() {
            d.push(r(BUF, data.len() as u32));
        }
        d.push(w(STATUS, 1));
        let (s, len) = self.submit(&d);
        assert_eq!(len, 1);
        s
    }

    /// A read of `len` bytes at `sector` into BUF: (status, the bytes read).
    fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
        self.drv.put(HDR, &header(VIRTIO_BLK_T_IN, sector));
        self.drv.put(BUF, &vec![0xaa; len as usize]);
        let (s, used) = self.submit(&[r(HDR, 16), w(BUF, len), w(STATUS, 1)]);
        if s == S_OK {
            assert_eq!(used, len + 1);
        }
        (s, self.drv.bytes(BUF, len as usize))
    }

    fn ranges(&mut self, kind: u32, ranges: &[[u8; 16]]) -> u8 {
        self.out(kind, 0, &ranges.concat())
    }
}

fn file_bytes(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    std::fs::read(p).unwrap()[offset as usize..offset as usize + len].to_vec()
}

#[test]
fn reads_scatter_image_bytes_over_any_layout() {
    let dir = TempDir::new("read");
    let img = raw_image(&dir, "d.raw");
    let mut h = Harness::new(open(&img, Some(Format::Raw), false, None), ALL_FEATURES);
    let (s, data) = h.read(8, 4096);
    assert_eq!(s, S_OK);
    assert_eq!(data, file_bytes(&img, 8 * 512, 4096));

    // The same request cut anywhere: header split in two, data over three uneven
    // descriptors, the last sharing its descriptor with the status byte.
    h.drv.put(HDR, &header(VIRTIO_BLK_T_IN, 3));
    let (s, used) = h.submit(&[
        r(HDR, 5),
        r(HDR + 5, 11),
        w(BUF, 100),
        w(BUF + 0x1000, 1000),
        w(BUF + 0x2000, 436 + 1),
    ]);
    assert_eq!((s, used), (S_OK, 1537));
    let want = file_bytes(&img, 3 * 512, 1536);
    assert_eq!(h.drv.bytes(BUF, 100), want[..100]);
    assert_eq!(h.drv.bytes(BUF + 0x1000, 1000), want[100..1100]);
    assert_eq!(h.drv.bytes(BUF + 0x2000, 436), want[1100..]);
    assert!(h.irq.irqs() > 0 && !h.irq.broken());
}

#[test]
fn writes_reach_the_image_and_flush() {
    let dir = TempDir::new("write");
    let img = raw_image(&dir, "d.raw");
    let mut h = Harness::new(open(&img, Some(Format::Raw), false, None), ALL_FEATURES);
    let data: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, 100, &data), S_OK);
    assert_eq!(h.out(VIRTIO_BLK_T_FLUSH, 0, &[]), S_OK);
    assert_eq!(file_bytes(&img, 100 * 512, 2048), data);
    // Neighbours untouched.
    assert_eq!(
        file_bytes(&img, 99 * 512, 512),
        file_bytes_pattern(99 * 512, 512)
    );
    assert_eq!(
        file_bytes(&img, 104 * 512, 512),
        file_bytes_pattern(104 * 512, 512)
    );
    // The last sector is writable; one past it is not.
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, SECTORS - 1, &[1; 512]), S_OK);
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, SECTORS, &[1; 512]), S_IOERR);
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, SECTORS - 1, &[1; 1024]), S_IOERR);
}

fn file_bytes_pattern(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len).map(pattern).collect()
}

/// Requests of several MiB, and a segment that spans two guest RAM regions.
#[test]
fn large_requests_and_segments_across_ram_regions() {
    let dir = TempDir::new("large");
    let p = dir.join("big.raw");
    let size = 3u64 << 20;
    std::fs::write(&p, (0..size).map(pattern).collect::<Vec<u8>>()).unwrap();
    let mut h = Harness::new(open(&p, Some(Format::Raw), false, None), ALL_FEATURES);
    let len = (2 << 20) + 4096;
    let (s, data) = h.read(1, len);
    assert_eq!(s, S_OK);
    assert_eq!(data, file_bytes_pattern(512, u64::from(len)));
    let new: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, 3, &new), S_OK);
    assert_eq!(file_bytes(&p, 3 * 512, len as usize), new);

    // Guest RAM in two regions that touch at 8 MiB: one descriptor across the seam.
    use vm_memory::GuestAddress;
    let mem = crate::virtio::GuestMemory::from_ranges(&[
        (GuestAddress(0), 8 << 20),
        (GuestAddress(8 << 20), 8 << 20),
    ])
    .unwrap();
    let disk = h.disk.clone();
    drop(h);
    let mut drv = Driver::new(&mem, 16);
    let irq = Arc::new(Recorder::default());
    let seam = (8 << 20) - 1024;
    drv.put(HDR, &header(VIRTIO_BLK_T_IN, 0));
    drv.push(&[r(HDR, 16), w(seam, 4096), w(STATUS, 1)]);
    testing::serve_once(&disk, ALL_FEATURES, &mem, drv.queue(), irq.clone()).unwrap();
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.byte(STATUS), S_OK);
    assert_eq!(drv.bytes(seam, 4096), file_bytes(&p, 0, 4096));
    // And a write from across the seam (a new driver: a fresh queue each time).
    let mut drv = Driver::new(&mem, 16);
    drv.put(seam, &[0x77; 4096]);
    drv.put(HDR, &header(VIRTIO_BLK_T_OUT, 16));
    drv.push(&[r(HDR, 16), r(seam, 4096), w(STATUS, 1)]);
    testing::serve_once(&disk, ALL_FEATURES, &mem, drv.queue(), irq.clone()).unwrap();
    assert_eq!(drv.byte(STATUS), S_OK);
    assert_eq!(file_bytes(&p, 16 * 512, 4096), vec![0x77; 4096]);
    assert!(!irq.broken());
}

#[test]
fn read_only_disks_refuse_writes_and_discards() {
    let dir = TempDir::new("ro");
    let img = raw_image(&dir, "d.raw");
    let disk = open(&img, Some(Format::Raw), true, None);
    let dev = Block::new(disk.clone(), 1);
    let f = dev.features();
    assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(
        f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
    // Even a driver that ignores RO and claims discard gets errors, never a write.
    let mut h = Harness::new(disk, ALL_FEATURES);
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, 0, &[0; 512]), S_IOERR);
    assert_eq!(h.ranges(VIRTIO_BLK_T_DISCARD, &[range(0, 8, 0)]), S_UNSUPP);
    assert_eq!(
        h.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[range(0, 8, 0)]),
        S_UNSUPP
    );
    assert_eq!(h.out(VIRTIO_BLK_T_FLUSH, 0, &[]), S_OK);
    assert_eq!(h.read(0, 512).0, S_OK);
    assert_eq!(
        std::fs::read(&img).unwrap(),
        file_bytes_pattern(0, DISK_SIZE)
    );
    // A read-only disk shares: a second reader may open it, a writer may not.
    let _second = open(&img, Some(Format::Raw), true, None);
    let e = Disk::open(&DiskOptions {
        path: img.clone(),
        format: Some(Format::Raw),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("is locked"), "{e}");
}

fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn discard_punches_holes_in_raw_files() {
    let dir = TempDir::new("discard");
    let img = raw_image(&dir, "d.raw");
    let before = allocated_bytes(&img);
    let mut h = Harness::new(open(&img, Some(Format::Raw), false, None), ALL_FEATURES);
    // Two ranges of 256 KiB.
    let s = h.ranges(
        VIRTIO_BLK_T_DISCARD,
        &[range(0, 512, 0), range(1024, 512, 0)],
    );
    assert_eq!(s, S_OK);
    assert!(
        allocated_bytes(&img) <= before - (512 << 10),
        "discard freed host blocks ({} -> {})",
        before,
        allocated_bytes(&img)
    );
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..256 << 10].iter().all(|&b| b == 0));
    assert_eq!(
        bytes[256 << 10..512 << 10],
        file_bytes_pattern(256 << 10, 256 << 10)[..]
    );
    assert!(bytes[512 << 10..768 << 10].iter().all(|&b| b == 0));
    // An empty range is a no-op, not an error.
    assert_eq!(h.ranges(VIRTIO_BLK_T_DISCARD, &[range(4, 0, 0)]), S_OK);
    assert_eq!(h.read(4, 512).1, vec![0; 512]);
    // Write-zeroes (with or without UNMAP) reads back as zeroes.
    let s = h.ranges(
        VIRTIO_BLK_T_WRITE_ZEROES,
        &[range(600, 3, RANGE_FLAG_UNMAP), range(700, 1, 0)],
    );
    assert_eq!(s, S_OK);
    let (_, data) = h.read(600, 512 * 3);
    assert!(data.iter().all(|&b| b == 0));
    assert!(h.read(700, 512).1.iter().all(|&b| b == 0));
    assert_eq!(h.read(701, 512).1, file_bytes_pattern(701 * 512, 512));
}

#[test]
fn bad_discard_and_write_zeroes_requests_are_refused_whole() {
    let dir = TempDir::new("badrange");
    let img = raw_image(&dir, "d.raw");
    let mut h = Harness::new(open(&img, Some(Format::Raw), false, None), ALL_FEATURES);
    let d = VIRTIO_BLK_T_DISCARD;
    // UNMAP is meaningless on a discard; unknown flags anywhere.
    assert_eq!(h.ranges(d, &[range(0, 1, RANGE_FLAG_UNMAP)]), S_UNSUPP);
    assert_eq!(
        h.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[range(0, 1, 4)]),
        S_UNSUPP
    );
    // Out of range (the first range is fine: nothing may be applied).
    assert_eq!(
        h.ranges(d, &[range(0, 8, 0), range(SECTORS - 1, 2, 0)]),
        S_IOERR
    );
    assert_eq!(h.ranges(d, &[range(u64::MAX / 256, 8, 0)]), S_IOERR);
    assert_eq!(h.ranges(d, &[range(u64::MAX, 1, 0)]), S_IOERR);
    // Too long a segment, too many segments, a torn segment, no segment.
    assert_eq!(h.ranges(d, &[range(0, MAX_RANGE_SECTORS + 1, 0)]), S_IOERR);
    let many = vec![range(0, 1, 0); MAX_RANGES as usize + 1];
    assert_eq!(h.ranges(d, &many), S_IOERR);
    assert_eq!(h.out(d, 0, &[0; 20]), S_IOERR);
    assert_eq!(h.out(d, 0, &[]), S_IOERR);
    assert_eq!(
        std::fs::read(&img).unwrap(),
        file_bytes_pattern(0, DISK_SIZE)
    );
    // Not negotiated: unsupported.
    let mut h = Harness::new(h.disk.clone(), VIRTIO_F_VERSION_1);
    assert_eq!(h.ranges(d, &[range(0, 8, 0)]), S_UNSUPP);
}

/// qemu-img's verdict on an image (None when qemu-img is not installed).
fn qemu_img_check(p: &Path) -> Option<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(p)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qemu-img check: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text)
}

#[test]
fn qcow2_overlay_on_a_backing_file() {
    let dir = TempDir::new("qcow2");
    let base = raw_image(&dir, "base.raw");
    let top = qcow2_image(&dir, "top.qcow2", Some(&base));
    let disk = open(&top, Some(Format::Qcow2), false, None);
    // The backing file is locked for reading: nobody may write it under the VM.
    let e = Disk::open(&DiskOptions {
        path: base.clone(),
        format: Some(Format::Raw),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("is locked"), "{e}");

    let mut h = Harness::new(disk.clone(), ALL_FEATURES);
    let (s, data) = h.read(10, 1024);
    assert_eq!(s, S_OK);
    assert_eq!(
        data,
        file_bytes_pattern(10 * 512, 1024),
        "backing data shows through"
    );
    let new = vec![0x5a; 4096];
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, 256, &new), S_OK);
    assert_eq!(h.read(256, 4096).1, new);
    // Write-zeroes over data that the backing file has: reads zero, a zero cluster.
    assert_eq!(
        h.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[range(512, 128, 0)]),
        S_OK
    );
    assert!(h.read(512, 65536).1.iter().all(|&b| b == 0));
    let ext = disk.backend().block_status(512 * 512, 65536).unwrap();
    assert_eq!(ext.kind, ExtentKind::Zero);
    // Discard of the written cluster: afterwards reads come from the backing file again.
    assert_eq!(h.ranges(VIRTIO_BLK_T_DISCARD, &[range(256, 128, 0)]), S_OK);
    assert_eq!(h.read(256, 512).1, file_bytes_pattern(256 * 512, 512));
    assert_eq!(h.out(VIRTIO_BLK_T_FLUSH, 0, &[]), S_OK);
    // The base never changes.
    assert_eq!(
        std::fs::read(&base).unwrap(),
        file_bytes_pattern(0, DISK_SIZE)
    );
    drop(h);
    drop(disk);
    if let Some(verdict) = qemu_img_check(&top) {
        assert!(verdict.contains("No errors"), "{verdict}");
    } else {
        eprintln!("qemu-img check skipped: qemu-img not installed");
    }
}

#[test]
fn get_id_answers_the_serial() {
    let dir = TempDir::new("id");
    let img = raw_image(&dir, "d.raw");
    let mut h = Harness::new(
        open(&img, Some(Format::Raw), true, Some("vireo-disk-1")),
        ALL_FEATURES,
    );
    h.drv.put(HDR, &header(VIRTIO_BLK_T_GET_ID, 0));
    h.drv.put(BUF, &[0xff; 20]);
    let (s, used) = h.submit(&[r(HDR, 16), w(BUF, 20), w(STATUS, 1)]);
    assert_eq!((s, used), (S_OK, 21));
    assert_eq!(&h.drv.bytes(BUF, 20), b"vireo-disk-1\0\0\0\0\0\0\0\0");
    for bad in ["123456789012345678901", "tab\there", "é"] {
        let e = Disk::open(&DiskOptions {
            path: img.clone(),
            format: Some(Format::Raw),
            read_only: true,
            serial: Some(bad.into()),
        })
        .unwrap_err();
        assert!(matches!(e, DiskError::Serial(_)), "{e}");
    }
}

#[test]
fn malformed_requests_get_an_error_status() {
    let dir = TempDir::new("malformed");
    let img = raw_image(&dir, "d.raw");
    let mut h = Harness::new(open(&img, Some(Format::Raw), false, None), ALL_FEATURES);
    // Unknown request type.
    assert_eq!(h.out(0x7777, 0, &[]), S_UNSUPP);
    // Reads: beyond the end, sector overflow, torn sector, readable data.
    assert_eq!(h.read(SECTORS, 512).0, S_IOERR);
    assert_eq!(h.read(SECTORS - 1, 1024).0, S_IOERR);
    assert_eq!(h.read(u64::MAX, 512).0, S_IOERR);
    assert_eq!(h.read(u64::MAX / 512 + 1, 512).0, S_IOERR);
    assert_eq!(h.read(0, 100).0, S_IOERR);
    assert_eq!(h.out(VIRTIO_BLK_T_IN, 0, &[0; 512]), S_IOERR);
    // Writes: torn sector, data in the writable part.
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, 0, &[0; 100]), S_IOERR);
    h.drv.put(HDR, &header(VIRTIO_BLK_T_OUT, 0));
    assert_eq!(
        h.submit(&[r(HDR, 16), w(BUF, 512), w(STATUS, 1)]).0,
        S_IOERR
    );
    // Flush with data.
    assert_eq!(h.out(VIRTIO_BLK_T_FLUSH, 0, &[0; 512]), S_IOERR);
    // Short header.
    assert_eq!(h.submit(&[r(HDR, 15), w(STATUS, 1)]).0, S_IOERR);
    // No header at all: the status byte alone.
    assert_eq!(h.submit(&[w(STATUS, 1)]).0, S_IOERR);
    // Readable after writable.
    h.drv.put(HDR, &header(VIRTIO_BLK_T_IN, 0));
    assert_eq!(
        h.submit(&[r(HDR, 16), w(BUF, 512), r(BUF + 0x1000, 512), w(STATUS, 1)])
            .0,
        S_IOERR
    );
    // A data buffer outside guest memory, or straddling its end.
    assert_eq!(
        h.submit(&[r(HDR, 16), w(MEM_SIZE + 0x1000, 512), w(STATUS, 1)])
            .0,
        S_IOERR
    );
    assert_eq!(
        h.submit(&[r(HDR, 16), w(MEM_SIZE - 256, 512), w(STATUS, 1)])
            .0,
        S_IOERR
    );
    assert_eq!(
        h.submit(&[r(HDR, 16), w(u64::MAX - 100, 512), w(STATUS, 1)])
            .0,
        S_IOERR
    );
    // A write from outside guest memory never reaches the disk.
    h.drv.put(HDR, &header(VIRTIO_BLK_T_OUT, 0));
    assert_eq!(
        h.submit(&[r(HDR, 16), r(MEM_SIZE, 512), w(STATUS, 1)]).0,
        S_IOERR
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        file_bytes_pattern(0, DISK_SIZE)
    );
    assert!(!h.irq.broken(), "all of these have a usable status byte");
    // The queue still works.
    assert_eq!(h.read(0, 512), (S_OK, file_bytes_pattern(0, 512)));
}

/// Chains the protocol cannot answer: the device asks for a reset and stops serving the
/// queue; nothing panics, nothing reaches the disk.
#[test]
fn unanswerable_chains_break_the_queue() {
    let dir = TempDir::new("broken");
    let img = raw_image(&dir, "d.raw");
    let disk = open(&img, Some(Format::Raw), false, None);
    let write_hdr = |h: &Harness| h.drv.put(HDR, &header(VIRTIO_BLK_T_OUT, 0));
    type Case = (&'static str, Box<dyn Fn(&mut Harness)>);
    let cases: Vec<Case> = vec![
        (
            "status byte not writable",
            Box::new(|h| {
                h.drv.push(&[r(HDR, 16), r(BUF, 512), r(STATUS, 1)]);
            }),
        ),
        (
            "status byte outside memory",
            Box::new(|h| {
                h.drv.push(&[r(HDR, 16), r(BUF, 512), w(MEM_SIZE, 1)]);
            }),
        ),
        (
            "zero-length last descriptor",
            Box::new(|h| {
                h.drv.push(&[r(HDR, 16), r(BUF, 512), w(STATUS, 0)]);
            }),
        ),
        (
            "descriptor loop",
            Box::new(|h| {
                h.drv.desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 1);
                h.drv.desc(1, BUF, 512, VRING_DESC_F_NEXT as u16, 0);
                h.drv.publish(0);
            }),
        ),
        (
            "next index beyond the table",
            Box::new(|h| {
                h.drv.desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 999);
                h.drv.publish(0);
            }),
        ),
        (
            "head index beyond the table",
            Box::new(|h| h.drv.publish(700)),
        ),
        (
            "available index too far ahead",
            Box::new(|h| h.drv.set_avail_idx(h.drv.size + 5)),
        ),
        (
            "too many descriptors (indirect)",
            Box::new(|h| {
                let mut d = vec![r(HDR, 16)];
                d.extend((0..=SEG_MAX as u64).map(|i| r(BUF + 512 * i, 512)));
                d.push(w(STATUS, 1));
                h.drv.push_indirect(DATA + 0x40_0000, &d);
            }),
        ),
    ];
    for (name, make) in cases {
        let mut h = Harness::new(disk.clone(), ALL_FEATURES);
        write_hdr(&h);
        h.drv.put(STATUS, &[0xee]);
        make(&mut h);
        h.worker.serve();
        assert!(h.irq.broken(), "{name}: needs reset");
        assert_eq!(h.drv.used_idx(), 0, "{name}: nothing completed");
        // A broken queue ignores further requests until the device is reset.
        h.drv.push(&[r(HDR, 16), r(BUF, 512), w(STATUS, 1)]);
        h.worker.serve();
        assert_eq!(h.drv.used_idx(), 0, "{name}: queue stopped");
    }
    assert_eq!(
        std::fs::read(&img).unwrap(),
        file_bytes_pattern(0, DISK_SIZE)
    );
}

#[test]
fn indirect_chains_up_to_the_segment_limit_work() {
    let dir = TempDir::new("indirect");
    let img = raw_image(&dir, "d.raw");
    let mut h = Harness::new(open(&img, Some(Format::Raw), false, None), ALL_FEATURES);
    h.drv.put(HDR, &header(VIRTIO_BLK_T_IN, 2));
    let mut d = vec![r(HDR, 16)];
    d.extend((0..SEG_MAX as u64).map(|i| w(BUF + 512 * i, 512)));
    d.push(w(STATUS, 1));
    let before = h.drv.used_idx();
    h.drv.push_indirect(DATA + 0x40_0000, &d);
    h.worker.serve();
    assert_eq!(h.drv.used(before).1, SEG_MAX * 512 + 1);
    assert_eq!(h.drv.byte(STATUS), S_OK);
    assert_eq!(
        h.drv.bytes(BUF, SEG_MAX as usize * 512),
        file_bytes_pattern(2 * 512, u64::from(SEG_MAX) * 512)
    );
}

/// A disk whose format was probed as raw refuses writes that would make it probe as
/// something else next time; other writes to sector 0 are fine.
#[test]
fn probed_raw_disks_keep_their_format() {
    let dir = TempDir::new("probe");
    let img = raw_image(&dir, "d.img");
    let mut h = Harness::new(open(&img, None, false, None), ALL_FEATURES);
    let mut qcow2_header = vec![0u8; 512];
    qcow2_header[..4].copy_from_slice(b"QFI\xfb");
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, 0, &qcow2_header), S_IOERR);
    assert_eq!(vireo_block::probe(&img).unwrap(), Format::Raw);
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, 0, &[0x11; 1024]), S_OK);
    assert_eq!(
        h.out(VIRTIO_BLK_T_OUT, 1, &qcow2_header),
        S_OK,
        "only sector 0 counts"
    );
    // With format=raw given the guest owns every byte.
    drop(h);
    let mut h = Harness::new(open(&img, Some(Format::Raw), false, None), ALL_FEATURES);
    assert_eq!(h.out(VIRTIO_BLK_T_OUT, 0, &qcow2_header), S_OK);
    // A probe of a qcow2 image finds it.
    let q = qcow2_image(&dir, "q.img", None);
    assert_eq!(open(&q, None, true, None).backend().format(), Format::Qcow2);
}

#[test]
fn unsupported_formats_and_missing_files_are_named() {
    let dir = TempDir::new("formats");
    let e = Disk::open(&DiskOptions {
        path: dir.join("missing.qcow2"),
        format: Some(Format::Qcow2),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing.qcow2"), "{e}");
    let vmdk = dir.join("d.vmdk");
    std::fs::write(&vmdk, b"KDMV").unwrap();
    let e = Disk::open(&DiskOptions {
        path: vmdk,
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("format vmdk cannot back a VM disk"), "{e}");
}

#[test]
fn config_space_and_features() {
    let dir = TempDir::new("config");
    let q = qcow2_image(&dir, "q.qcow2", None);
    let dev = Block::new(open(&q, Some(Format::Qcow2), false, None), 4);
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), vec![QUEUE_SIZE; 4]);
    let f = dev.features();
    for b in [
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert_ne!(f & 1 << b, 0, "feature {b}");
    }
    assert_eq!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    let rd = |off: u64, n: usize| {
        let mut b = vec![0u8; n];
        dev.read_config(off, &mut b);
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b);
        u64::from_le_bytes(v)
    };
    assert_eq!(rd(0, 8), SECTORS);
    assert_eq!(rd(12, 4), u64::from(SEG_MAX));
    assert_eq!(rd(20, 4), 512);
    assert_eq!(rd(34, 2), 4);
    assert_eq!(rd(44, 4), 128, "discard alignment: a 64 KiB cluster");
    assert_eq!(rd(40, 4), u64::from(MAX_RANGES));
    assert_eq!(rd(56, 1), 1);
    // Out of range reads as zero, partially too; writes are ignored.
    assert_eq!(rd(58, 4), 0);
    assert_eq!(rd(u64::MAX - 1, 4), 0);
    let mut dev = dev;
    dev.write_config(0, &[0xff; 8]);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
}

/// The threaded path: activation starts a worker per queue, kicks are served, reset stops
/// the workers, and the device can be activated again (a driver reset).
#[test]
fn workers_serve_kicks_and_stop_on_reset() {
    let dir = TempDir::new("threads");
    let img = raw_image(&dir, "d.raw");
    let disk = open(&img, Some(Format::Raw), false, None);
    let mut dev = Block::new(disk, 2);
    let mem = memory();
    for round in 0..2u8 {
        let mut drv = Driver::new(&mem, 16);
        drv.put(DATA, &[0; 0x10000]);
        drv.put(HDR, &header(VIRTIO_BLK_T_OUT, 40));
        drv.put(BUF, &[round + 1; 512]);
        let irq = Arc::new(Recorder::default());
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        dev.activate(Activation {
            mem: mem.clone(),
            acked_features: dev.features(),
            queues: vec![ActiveQueue {
                index: 1,
                queue: drv.queue(),
                kick: kick.try_clone().unwrap(),
            }],
            interrupt: irq.clone(),
        })
        .unwrap();
        drv.push(&[r(HDR, 16), r(BUF, 512), w(STATUS, 1)]);
        kick.write(1).unwrap();
        // Bounded wait for the worker thread (not a timing assertion).
        for _ in 0..5000 {
            if drv.used_idx() == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(drv.used_idx(), 1, "round {round}: request served");
        assert_eq!(drv.byte(STATUS), S_OK);
        dev.reset();
        assert!(irq.irqs() >= 1, "the driver was interrupted");
        assert_eq!(file_bytes(&img, 40 * 512, 512), vec![round + 1; 512]);
    }
    // Two queues served at once, by two threads, on two rings.
    let mut drivers = [Driver::new(&mem, 16), Driver::at(&mem, 16, 0x8000)];
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(Recorder::default());
    dev.activate(Activation {
        mem: mem.clone(),
        acked_features: dev.features(),
        queues: (0..2u16)
            .map(|i| ActiveQueue {
                index: i,
                queue: drivers[usize::from(i)].queue(),
                kick: kicks[usize::from(i)].try_clone().unwrap(),
            })
            .collect(),
        interrupt: irq.clone(),
    })
    .unwrap();
    for (i, drv) in drivers.iter_mut().enumerate() {
        let base = DATA + 0x10000 * (i as u64 + 1);
        drv.put(base, &header(VIRTIO_BLK_T_OUT, 50 + i as u64));
        drv.put(base + 0x1000, &[0xc0 + i as u8; 512]);
        drv.push(&[r(base, 16), r(base + 0x1000, 512), w(base + 0x2000, 1)]);
    }
    for k in &kicks {
        k.write(1).unwrap();
    }
    for _ in 0..5000 {
        if drivers.iter().all(|d| d.used_idx() == 1) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    dev.reset();
    for (i, drv) in drivers.iter().enumerate() {
        assert_eq!(drv.used_idx(), 1, "queue {i} served");
        assert_eq!(drv.byte(DATA + 0x10000 * (i as u64 + 1) + 0x2000), S_OK);
        assert_eq!(
            file_bytes(&img, (50 + i as u64) * 512, 512),
            vec![0xc0 + i as u8; 512]
        );
    }

    // A queue the device does not have is refused at activation.
    let drv = Driver::new(&mem, 16);
    let e = dev
        .activate(Activation {
            mem: mem.clone(),
            acked_features: dev.features(),
            queues: vec![ActiveQueue {
                index: 2,
                queue: drv.queue(),
                kick: EventFd::new(0).unwrap(),
            }],
            interrupt: Arc::new(Recorder::default()),
        })
        .unwrap_err();
    assert!(e.to_string().contains("queue 2"), "{e}");
}

/// Random descriptor chains and request bytes: the device never panics, never touches
/// memory outside the buffers it was given, and every request is either answered or
/// breaks the queue.
#[test]
fn random_chains_never_panic() {
    let dir = TempDir::new("fuzz");
    let img = raw_image(&dir, "d.raw");
    let disk = open(&img, Some(Format::Raw), false, None);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let iterations = 3000;
    for _ in 0..iterations {
        let mut h = Harness::new(disk.clone(), next());
        // A header of a random (mostly known) type and sector near the disk.
        let kind = [0, 1, 4, 8, 11, 13, 99][(next() % 7) as usize];
        let sector = match next() % 4 {
            0 => next(),
            _ => next() % (SECTORS + 4),
        };
        h.drv.put(HDR, &header(kind, sector));
        let mut payload = vec![0u8; 64];
        payload.iter_mut().for_each(|b| *b = next() as u8);
        h.drv.put(BUF, &payload);
        let n = 1 + next() % 6;
        for i in 0..n {
            let addr = match next() % 8 {
                0 => next(),
                1 => MEM_SIZE - next() % 1024,
                _ => DATA + next() % 0x8000,
            };
            let len = match next() % 4 {
                0 => next() as u32,
                1 => 512 * (next() % 4) as u32,
                _ => (next() % 1100) as u32,
            };
            let mut flags = (next() % 8) as u16; // NEXT, WRITE, INDIRECT at random
            if i + 1 < n && next() % 4 != 0 {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let nxt = if next() % 8 == 0 {
                next() as u16
            } else {
                (i + 1) as u16
            };
            h.drv.desc(i as u16, addr, len, flags, nxt);
        }
        let head = if next() % 16 == 0 { next() as u16 } else { 0 };
        h.drv.publish(head);
        h.worker.serve();
        assert!(
            h.drv.used_idx() == 1 || h.irq.broken(),
            "a request is answered or the queue is broken"
        );
    }
}

/// A backend error (here: a qcow2 L1 entry pointing at an unaligned offset) is answered
/// with IOERR, never a reset; the queue keeps working.
#[test]
fn backend_errors_are_ioerr_and_the_queue_goes_on() {
    let dir = TempDir::new("eio");
    let q = qcow2_image(&dir, "q.qcow2", None);
    {
        let mut h = Harness::new(open(&q, Some(Format::Qcow2), false, None), ALL_FEATURES);
        assert_eq!(h.out(VIRTIO_BLK_T_OUT, 0, &[0x42; 512]), S_OK);
        assert_eq!(h.out(VIRTIO_BLK_T_FLUSH, 0, &[]), S_OK);
    }
    // Corrupt L1[0] (the header's l1_table_offset is at byte 40).
    let mut bytes = std::fs::read(&q).unwrap();
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
    bytes[l1..l1 + 8].copy_from_slice(&(0x8000_0000_0000_1234u64).to_be_bytes());
    std::fs::write(&q, &bytes).unwrap();
    let disk = Disk::open(&DiskOptions {
        path: q.clone(),
        format: Some(Format::Qcow2),
        read_only: true,
        serial: None,
    });
    let disk = disk.expect("vireo-block checks L1 entries when it uses them, not at open");
    let mut h = Harness::new(Arc::new(disk), ALL_FEATURES);
    assert_eq!(h.read(0, 512).0, S_IOERR);
    assert!(!h.irq.broken(), "an I/O error has a status; no reset");
    // The queue still serves requests (L1[0] covers the whole 1 MiB disk: ask for the id).
    h.drv.put(HDR, &header(VIRTIO_BLK_T_GET_ID, 0));
    assert_eq!(h.submit(&[r(HDR, 16), w(BUF, 20), w(STATUS, 1)]).0, S_OK);
}
