//! qcow2 (versions 2 and 3): read/write engine.
//!
//! # Write ordering (crash safety)
//!
//! Metadata is cached write-back and written in dependency order, so a crash
//! at any instant leaves an image whose only possible defect is leaked
//! clusters (refcount higher than the number of references):
//!
//! 1. **Allocation**: a new cluster gets refcount 1 in the (cached) refcount
//!    block *before* anything points to it.
//! 2. **Data** of a newly allocated cluster is `pwrite`n immediately, before
//!    the L2 entry referencing it is updated (the L2 update only lives in the
//!    cache until step 4).
//! 3. On flush (or when a dirty L2 table must be evicted) dirty refcount
//!    blocks are written and `fdatasync`ed first — this also makes all data
//!    written so far durable — then refcount-table entries for new refcount
//!    blocks, then `fdatasync`.
//! 4. Dirty L2 tables are written, `fdatasync`.
//! 5. The L1 table (new L2 tables) is written, `fdatasync`.
//! 6. Only now are clusters that lost their last reference (copy-on-write,
//!    discard, overwritten compressed clusters) given back: their refcounts
//!    are decremented, written and synced. Until then they are not reused.
//!
//! Structural changes (refcount-table relocation, L1 growth, snapshots,
//! rebase) follow the same rule: new structure written and synced, then the
//! header switched to it and synced, then the old structure freed.

mod check;
mod header;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub use check::{CheckReport, RepairMode};
pub use header::{Header, MAGIC};
pub use snapshot::Snapshot;

use crate::{
    check_range, open_in_chain, read_backing, BlockBackend, CreateOptions, Error, Extent,
    ExtentKind, Format, HostFile, OpenOptions, Preallocation, Result, DIRECT_ALIGN,
};
use header::{be64, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};

pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
pub(crate) const OFLAG_COPIED: u64 = 1 << 63;
pub(crate) const OFLAG_COMPRESSED: u64 = 1 << 62;
pub(crate) const OFLAG_ZERO: u64 = 1;

/// Decoded L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L2Entry {
    Unallocated,
    /// Reads as zeroes; `Some(host)` for a preallocated zero cluster.
    Zero(Option<u64>),
    Normal(u64),
    /// Compressed data at `offset`, at most `len` bytes (sector granular).
    Compressed {
        offset: u64,
        len: u64,
    },
}

pub(crate) fn decode_l2(e: u64, cluster_bits: u32) -> L2Entry {
    if e & OFLAG_COMPRESSED != 0 {
        let x = 62 - (cluster_bits - 8);
        let offset = e & ((1u64 << x) - 1);
        let nsec = (e & !(OFLAG_COPIED | OFLAG_COMPRESSED)) >> x;
        let len = (nsec + 1) * 512 - (offset & 511);
        return L2Entry::Compressed { offset, len };
    }
    let host = e & OFFSET_MASK;
    if e & OFLAG_ZERO != 0 {
        return L2Entry::Zero(if host != 0 { Some(host) } else { None });
    }
    if host == 0 {
        L2Entry::Unallocated
    } else {
        L2Entry::Normal(host)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    L2,
    Refblock,
}

struct CacheEntry {
    data: Vec<u8>,
    dirty: bool,
    kind: Kind,
    used: u64,
}

/// Bounded cache of L2 tables and refcount blocks (keyed by host offset).
struct Cache {
    map: HashMap<u64, CacheEntry>,
    /// LRU order: last-use tick -> offset.
    lru: BTreeMap<u64, u64>,
    cap: usize,
    tick: u64,
}

impl Cache {
    fn touch(&mut self, off: u64) {
        self.tick += 1;
        let t = self.tick;
        if let Some(e) = self.map.get_mut(&off) {
            self.lru.remove(&e.used);
            e.used = t;
            self.lru.insert(t, off);
        }
    }

    fn insert(&mut self, off: u64, data: Vec<u8>, kind: Kind, dirty: bool) {
        self.tick += 1;
        let used = self.tick;
        if let Some(old) = self.map.insert(
            off,
            CacheEntry {
                data,
                dirty,
                kind,
                used,
            },
        ) {
            self.lru.remove(&old.used);
        }
        self.lru.insert(used, off);
    }

    fn remove(&mut self, off: u64) {
        if let Some(e) = self.map.remove(&off) {
            self.lru.remove(&e.used);
        }
    }

    fn lru_victim(&self) -> Option<(u64, bool, Kind)> {
        let (_, &off) = self.lru.iter().next()?;
        self.map.get(&off).map(|e| (off, e.dirty, e.kind))
    }
}

pub(crate) struct Inner {
    pub(crate) file: Arc<HostFile>,
    pub(crate) hdr: Header,
    pub(crate) cb: u32,
    pub(crate) cs: u64,
    pub(crate) l2_entries: u64,
    pub(crate) l1: Vec<u64>,
    l1_dirty: bool,
    pub(crate) rt: Vec<u64>,
    rt_dirty: BTreeSet<usize>,
    rt_disk_cap: usize,
    cache: Cache,
    pending_free: Vec<(u64, u64)>,
    free_hint: u64,
    pub(crate) snapshots: Vec<Snapshot>,
    comp_cursor: u64,
    has_backing: bool,
    meta_prealloc: Option<bool>,
    /// Reads and in-place writes currently doing data I/O outside the lock;
    /// while non-zero, released clusters are not handed back (they might
    /// still be read or written) and snapshots are not taken.
    inflight: Arc<AtomicUsize>,
    /// Guest clusters whose whole-cluster allocating write is writing its
    /// data outside the lock (the L2 entry is set afterwards). Other writes
    /// to these clusters wait (`Qcow2::alloc_done`).
    writing: HashSet<u64>,
}

/// What a write to one guest cluster still needs once its metadata work
/// under the lock is done.
enum WriteStep {
    /// Nothing (done under the lock: copy-on-write of a partial cluster).
    Done,
    /// Write the data at this host offset of an allocated cluster with
    /// refcount 1 (counted in `inflight` until done).
    InPlace(u64),
    /// Write the (whole-cluster) data to this newly allocated host cluster,
    /// then link it with `Inner::link_new_cluster`.
    New(u64),
    /// Copy-on-write of a partial cluster outside the lock: read the
    /// cluster's current content (`entry`, counted in `inflight` while it
    /// is read), merge the data, write it to the new host cluster `h`, then
    /// link it if the L2 entry is still `raw` (otherwise start over).
    Cow { h: u64, raw: u64, entry: L2Entry },
}

/// An open qcow2 image.
pub struct Qcow2 {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Signalled when an entry leaves `Inner::writing`.
    alloc_done: Condvar,
    file: Arc<HostFile>,
    cluster_size: u64,
    inflight: Arc<AtomicUsize>,
    backing: Option<Arc<dyn BlockBackend>>,
    read_only: bool,
    size: AtomicU64,
}

fn rc_get(block: &[u8], idx: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[idx / per_byte];
            let shift = (idx % per_byte) * bits;
            ((byte >> shift) as u64) & ((1u64 << bits) - 1)
        }
        3 => block[idx] as u64,
        4 => u16::from_be_bytes([block[idx * 2], block[idx * 2 + 1]]) as u64,
        5 => header::be32(block, idx * 4) as u64,
        _ => be64(block, idx * 8),
    }
}

fn rc_set(block: &mut [u8], idx: usize, order: u32, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (idx % per_byte) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let b = &mut block[idx / per_byte];
            *b = (*b & !mask) | (((v as u8) << shift) & mask);
        }
        3 => block[idx] = v as u8,
        4 => block[idx * 2..idx * 2 + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => block[idx * 4..idx * 4 + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => block[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

pub(crate) fn rc_max(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

impl Inner {
    fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) fn epb(&self) -> u64 {
        (self.cs * 8) >> self.hdr.refcount_order
    }

    // ----- cache -----------------------------------------------------------

    fn make_room(&mut self) -> Result<()> {
        while self.cache.map.len() >= self.cache.cap {
            let Some((off, dirty, kind)) = self.cache.lru_victim() else {
                break;
            };
            if dirty {
                if kind == Kind::L2 {
                    // The L2 table may reference new clusters: their
                    // refcounts and data must be durable first.
                    self.flush_refcounts(true)?;
                }
                if let Some(e) = self.cache.map.get_mut(&off) {
                    self.file.write_at(&e.data, off)?;
                    e.dirty = false;
                }
            }
            self.cache.remove(off);
        }
        Ok(())
    }

    fn load(&mut self, off: u64, kind: Kind, what: &'static str) -> Result<()> {
        if self.cache.map.contains_key(&off) {
            self.cache.touch(off);
            return Ok(());
        }
        if off % self.cs != 0 || off == 0 {
            return Err(Error::corrupt(
                self.path(),
                format!("{what} offset 0x{off:x} is not a valid cluster offset"),
            ));
        }
        let flen = self.file.len()?;
        if off.checked_add(self.cs).is_none_or(|e| e > flen) {
            return Err(Error::corrupt(
                self.path(),
                format!("{what} at 0x{off:x} lies beyond the end of the file ({flen} bytes)"),
            ));
        }
        self.make_room()?;
        let mut data = vec![0u8; self.cs as usize];
        self.file.read_at(&mut data, off)?;
        self.cache.insert(off, data, kind, false);
        Ok(())
    }

    fn entry(&mut self, off: u64) -> Result<&mut CacheEntry> {
        let Inner { cache, file, .. } = self;
        cache
            .map
            .get_mut(&off)
            .ok_or_else(|| Error::corrupt(file.path(), "metadata cache inconsistency"))
    }

    fn insert_new(&mut self, off: u64, kind: Kind, data: Vec<u8>) -> Result<()> {
        self.make_room()?;
        self.cache.insert(off, data, kind, true);
        Ok(())
    }

    pub(crate) fn l2_get(&mut self, l2: u64, idx: u64) -> Result<u64> {
        self.load(l2, Kind::L2, "L2 table")?;
        let e = self.entry(l2)?;
        Ok(be64(&e.data, idx as usize * 8))
    }

    pub(crate) fn l2_set(&mut self, l2: u64, idx: u64, v: u64) -> Result<()> {
        self.load(l2, Kind::L2, "L2 table")?;
        let e = self.entry(l2)?;
        let i = idx as usize * 8;
        e.data[i..i + 8].copy_from_slice(&v.to_be_bytes());
        e.dirty = true;
        Ok(())
    }

    pub(crate) fn l2_table(&mut self, l2: u64) -> Result<Vec<u64>> {
        self.load(l2, Kind::L2, "L2 table")?;
        let e = self.entry(l2)?;
        Ok(e.data.chunks_exact(8).map(|c| be64(c, 0)).collect())
    }

    // ----- refcounts -------------------------------------------------------

    pub(crate) fn get_refcount(&mut self, cluster: u64) -> Result<u64> {
        let epb = self.epb();
        let b = (cluster / epb) as usize;
        let rb = match self.rt.get(b) {
            None => return Ok(0),
            Some(&o) => o & REFT_OFFSET_MASK,
        };
        if rb == 0 {
            return Ok(0);
        }
        self.load(rb, Kind::Refblock, "refcount block")?;
        let order = self.hdr.refcount_order;
        let e = self.entry(rb)?;
        Ok(rc_get(&e.data, (cluster % epb) as usize, order))
    }

    /// Creates the refcount block for block index `b`, placed at the first
    /// cluster it covers (free by construction: no refblock means every
    /// cluster of the range has refcount 0).
    fn create_refblock(&mut self, b: usize) -> Result<u64> {
        let epb = self.epb();
        let first = b as u64 * epb;
        let off = first * self.cs;
        self.check_no_overlap(off, 1)?;
        let mut data = vec![0u8; self.cs as usize];
        rc_set(&mut data, 0, self.hdr.refcount_order, 1);
        self.insert_new(off, Kind::Refblock, data)?;
        if self.rt.len() <= b {
            self.rt.resize(b + 1, 0);
        }
        self.rt[b] = off;
        self.rt_dirty.insert(b);
        Ok(off)
    }

    pub(crate) fn set_refcount(&mut self, cluster: u64, v: u64) -> Result<()> {
        let order = self.hdr.refcount_order;
        if v > rc_max(order) {
            return Err(Error::Invalid(format!(
                "{}: refcount of cluster {cluster} would overflow {}-bit refcounts",
                self.path().display(),
                1u32 << order
            )));
        }
        let epb = self.epb();
        let b = (cluster / epb) as usize;
        let mut rb = self.rt.get(b).copied().unwrap_or(0) & REFT_OFFSET_MASK;
        if rb == 0 {
            if v == 0 {
                return Ok(());
            }
            rb = self.create_refblock(b)?;
            if cluster % epb == 0 {
                return Err(Error::corrupt(
                    self.path(),
                    format!("cluster {cluster} collides with a new refcount block"),
                ));
            }
        }
        self.load(rb, Kind::Refblock, "refcount block")?;
        let e = self.entry(rb)?;
        rc_set(&mut e.data, (cluster % epb) as usize, order, v);
        e.dirty = true;
        if v == 0 && cluster < self.free_hint {
            self.free_hint = cluster;
        }
        Ok(())
    }

    pub(crate) fn add_refcount(&mut self, cluster: u64, delta: i64) -> Result<()> {
        let cur = self.get_refcount(cluster)?;
        let new = if delta < 0 {
            cur.checked_sub(delta.unsigned_abs()).ok_or_else(|| {
                Error::corrupt(
                    self.path(),
                    format!("refcount of cluster {cluster} would drop below zero"),
                )
            })?
        } else {
            cur.checked_add(delta as u64)
                .ok_or_else(|| Error::Invalid(format!("refcount of cluster {cluster} overflows")))?
        };
        self.set_refcount(cluster, new)
    }

    /// Host byte ranges that must never be handed out by the allocator.
    fn check_no_overlap(&self, off: u64, n: u64) -> Result<()> {
        let end = off + n * self.cs;
        let mut regions = vec![
            (0u64, self.cs, "header"),
            (
                self.hdr.refcount_table_offset,
                self.hdr.refcount_table_clusters as u64 * self.cs,
                "refcount table",
            ),
        ];
        if self.hdr.l1_size > 0 {
            regions.push((
                self.hdr.l1_table_offset,
                self.hdr.l1_size as u64 * 8,
                "L1 table",
            ));
        }
        if self.hdr.nb_snapshots > 0 {
            regions.push((
                self.hdr.snapshots_offset,
                snapshot::table_len(&self.snapshots),
                "snapshot table",
            ));
        }
        for (s, l, what) in regions {
            if off < s + l && s < end {
                return Err(Error::corrupt(
                    self.path(),
                    format!("refcounts claim cluster at 0x{off:x} is free but it holds the {what}"),
                ));
            }
        }
        Ok(())
    }

    /// Allocates `n` contiguous clusters with refcount 1; returns the host
    /// offset of the first. The refcounts are only cached; see the write
    /// ordering in the module documentation.
    pub(crate) fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        let off = self.alloc_clusters_noreloc(n)?;
        self.relocate_rt_if_needed()?;
        Ok(off)
    }

    fn alloc_clusters_noreloc(&mut self, n: u64) -> Result<u64> {
        let epb = self.epb();
        'retry: loop {
            let mut start = self.free_hint;
            let mut len = 0;
            let mut idx = start;
            let mut first_free = None;
            while len < n {
                if self.get_refcount(idx)? == 0 {
                    if len == 0 {
                        start = idx;
                    }
                    first_free.get_or_insert(idx);
                    len += 1;
                } else {
                    len = 0;
                }
                idx += 1;
            }
            // Everything below the first free cluster seen is in use.
            if let Some(f) = first_free {
                self.free_hint = self.free_hint.max(f);
            }
            let mut c = start;
            while c < start + n {
                let b = (c / epb) as usize;
                if self.rt.get(b).copied().unwrap_or(0) & REFT_OFFSET_MASK == 0 {
                    self.create_refblock(b)?;
                    let first = b as u64 * epb;
                    if first >= start && first < start + n {
                        continue 'retry;
                    }
                }
                c = (c / epb + 1) * epb;
            }
            self.check_no_overlap(start * self.cs, n)?;
            for c in start..start + n {
                self.set_refcount(c, 1)?;
            }
            if start == self.free_hint {
                self.free_hint = start + n;
            }
            return Ok(start * self.cs);
        }
    }

    pub(crate) fn alloc_cluster(&mut self) -> Result<u64> {
        self.alloc_clusters(1)
    }

    /// The in-memory refcount table outgrew the on-disk one: write a bigger
    /// table elsewhere, then switch the header to it.
    fn relocate_rt_if_needed(&mut self) -> Result<()> {
        if self.rt.len() <= self.rt_disk_cap {
            return Ok(());
        }
        let (off, clusters, cap) = loop {
            let want = self.rt.len() + self.rt.len() / 2 + 8;
            let clusters = (want as u64 * 8).div_ceil(self.cs);
            let off = self.alloc_clusters_noreloc(clusters)?;
            let cap = (clusters * self.cs / 8) as usize;
            if self.rt.len() <= cap {
                break (off, clusters, cap);
            }
            for c in 0..clusters {
                self.set_refcount(off / self.cs + c, 0)?;
            }
        };
        if clusters * self.cs > header::MAX_REFTABLE_BYTES {
            return Err(Error::Invalid(format!(
                "{}: image too large: refcount table would exceed {} bytes",
                self.path().display(),
                header::MAX_REFTABLE_BYTES
            )));
        }
        // Refcount blocks (and the new table's own refcounts) first.
        self.write_dirty(Kind::Refblock)?;
        self.file.sync()?;
        let mut buf = vec![0u8; (clusters * self.cs) as usize];
        for (i, e) in self.rt.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.file.write_at(&buf, off)?;
        self.file.sync()?;
        let old_off = self.hdr.refcount_table_offset;
        let old_clusters = self.hdr.refcount_table_clusters as u64;
        self.hdr.refcount_table_offset = off;
        self.hdr.refcount_table_clusters = clusters as u32;
        self.write_header_fixed()?;
        self.file.sync()?;
        self.rt_disk_cap = cap;
        self.rt_dirty.clear();
        for c in 0..old_clusters {
            self.add_refcount(old_off / self.cs + c, -1)?;
        }
        Ok(())
    }

    fn write_dirty(&mut self, kind: Kind) -> Result<bool> {
        let mut any = false;
        let mut keys: Vec<u64> = self
            .cache
            .map
            .iter()
            .filter(|(_, e)| e.dirty && e.kind == kind)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        for k in keys {
            if let Some(e) = self.cache.map.get_mut(&k) {
                self.file.write_at(&e.data, k)?;
                e.dirty = false;
                any = true;
            }
        }
        Ok(any)
    }

    /// Steps 3 of the write ordering: refcount blocks, sync, refcount table
    /// entries, sync.
    fn flush_refcounts(&mut self, force_sync: bool) -> Result<()> {
        let wrote = self.write_dirty(Kind::Refblock)?;
        if wrote || force_sync || !self.rt_dirty.is_empty() {
            self.file.sync()?;
        }
        if !self.rt_dirty.is_empty() {
            let dirty: Vec<usize> = self.rt_dirty.iter().copied().collect();
            for b in dirty {
                if b < self.rt_disk_cap {
                    let v = self.rt.get(b).copied().unwrap_or(0);
                    self.file.write_at(
                        &v.to_be_bytes(),
                        self.hdr.refcount_table_offset + b as u64 * 8,
                    )?;
                }
            }
            self.rt_dirty.clear();
            self.file.sync()?;
        }
        Ok(())
    }

    pub(crate) fn write_l1(&mut self) -> Result<()> {
        let mut buf = vec![0u8; self.l1.len() * 8];
        for (i, e) in self.l1.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.file.write_at(&buf, self.hdr.l1_table_offset)?;
        self.l1_dirty = false;
        Ok(())
    }

    pub(crate) fn write_header_fixed(&mut self) -> Result<()> {
        let n = self.hdr.fixed_len();
        let mut b = vec![0u8; n];
        self.hdr.write_fixed(&mut b);
        self.file.write_at(&b, 0)
    }

    pub(crate) fn write_header_cluster(&mut self) -> Result<()> {
        let path = self.path().to_path_buf();
        let b = self.hdr.to_cluster(&path)?;
        self.file.write_at(&b, 0)
    }

    /// Full flush following the documented write ordering.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.file.is_read_only() {
            return Ok(());
        }
        self.relocate_rt_if_needed()?;
        self.flush_refcounts(true)?;
        if self.write_dirty(Kind::L2)? {
            self.file.sync()?;
        }
        if self.l1_dirty {
            self.write_l1()?;
            self.file.sync()?;
        }
        if !self.pending_free.is_empty() {
            // A read that looked up a cluster before it was released may
            // still be reading it: wait for those (new reads need the lock).
            self.wait_no_readers();
            let frees = std::mem::take(&mut self.pending_free);
            let mut released = Vec::new();
            for (off, len) in frees {
                let first = off / self.cs;
                let last = (off + len.max(1) - 1) / self.cs;
                for c in first..=last {
                    self.add_refcount(c, -1)?;
                    if self.get_refcount(c)? == 0 {
                        released.push(c);
                    }
                }
            }
            self.flush_refcounts(false)?;
            // Give the space of released clusters back to the host file
            // system (discard passthrough). Nothing durable references them.
            released.sort_unstable();
            released.dedup();
            let mut i = 0;
            while i < released.len() {
                let mut j = i + 1;
                while j < released.len() && released[j] == released[j - 1] + 1 {
                    j += 1;
                }
                let start = released[i] * self.cs;
                let len = (j - i) as u64 * self.cs;
                if let Err(e) = self.file.punch_hole(start, len) {
                    log::debug!("{}: punching a hole failed: {e}", self.path().display());
                }
                i = j;
            }
        }
        Ok(())
    }

    /// Waits until no read or in-place write is doing data I/O outside the
    /// lock. Must be called with the lock held (so no new one can start).
    pub(crate) fn wait_no_readers(&self) {
        while self.inflight.load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
    }

    fn free_later(&mut self, entry: L2Entry) {
        match entry {
            L2Entry::Normal(h) | L2Entry::Zero(Some(h)) => self.pending_free.push((h, self.cs)),
            L2Entry::Compressed { offset, len } => self.pending_free.push((offset, len)),
            _ => {}
        }
    }

    // ----- mapping ---------------------------------------------------------

    pub(crate) fn lookup(&mut self, gc: u64) -> Result<L2Entry> {
        let l1i = (gc / self.l2_entries) as usize;
        let Some(&l1e) = self.l1.get(l1i) else {
            return Ok(L2Entry::Unallocated);
        };
        let l2 = l1e & OFFSET_MASK;
        if l2 == 0 {
            return Ok(L2Entry::Unallocated);
        }
        let e = self.l2_get(l2, gc % self.l2_entries)?;
        let d = decode_l2(e, self.cb);
        if let L2Entry::Normal(h) = d {
            if h % self.cs != 0 {
                return Err(Error::corrupt(
                    self.path(),
                    format!("L2 entry for guest cluster {gc} has unaligned host offset 0x{h:x}"),
                ));
            }
        }
        Ok(d)
    }

    fn read_compressed(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        inflate_cluster(&self.file, self.cs, offset, len)
    }

    /// Reads the current content of guest cluster `gc` into `buf`
    /// (cluster-sized), from this layer or the backing file.
    fn read_cluster_content(
        &mut self,
        gc: u64,
        entry: L2Entry,
        buf: &mut [u8],
        backing: Option<&Arc<dyn BlockBackend>>,
    ) -> Result<()> {
        match entry {
            L2Entry::Unallocated => match backing {
                Some(b) => read_backing(b.as_ref(), buf, gc * self.cs),
                None => {
                    buf.fill(0);
                    Ok(())
                }
            },
            L2Entry::Zero(_) => {
                buf.fill(0);
                Ok(())
            }
            L2Entry::Normal(h) => self.file.read_at(buf, h),
            L2Entry::Compressed { offset, len } => {
                let d = self.read_compressed(offset, len)?;
                buf.copy_from_slice(&d);
                Ok(())
            }
        }
    }

    /// Maps a read request to pieces of uniform status (under the lock).
    fn plan_read(&mut self, off: u64, len: usize) -> Result<Vec<ReadPiece>> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            let gc = pos >> self.cb;
            let inoff = pos & (self.cs - 1);
            let mut n = ((self.cs - inoff) as usize).min(len - done);
            let entry = self.lookup(gc)?;
            // Coalesce following clusters with the same status (and, for
            // data, contiguous host offsets) into one request.
            if !matches!(entry, L2Entry::Compressed { .. }) {
                let mut k = 1;
                while done + n < len {
                    let next = self.lookup(gc + k)?;
                    let same = match (entry, next) {
                        (L2Entry::Normal(h), L2Entry::Normal(h2)) => h2 == h + k * self.cs,
                        (L2Entry::Unallocated, L2Entry::Unallocated) => true,
                        (L2Entry::Zero(_), L2Entry::Zero(_)) => true,
                        _ => false,
                    };
                    if !same {
                        break;
                    }
                    n += (self.cs as usize).min(len - done - n);
                    k += 1;
                }
            }
            out.push(ReadPiece {
                at: done,
                n,
                entry,
                pos,
                inoff,
            });
            done += n;
        }
        Ok(out)
    }

    /// Returns the offset of a writable (refcount 1) L2 table for L1 index
    /// `l1i`, allocating or copying it as needed.
    fn l2_for_write(&mut self, l1i: usize) -> Result<u64> {
        let l1e = self.l1.get(l1i).copied().ok_or_else(|| {
            Error::corrupt(self.file.path(), format!("L1 index {l1i} out of range"))
        })?;
        let off = l1e & OFFSET_MASK;
        if off == 0 {
            let n = self.alloc_cluster()?;
            self.insert_new(n, Kind::L2, vec![0u8; self.cs as usize])?;
            self.l1[l1i] = n | OFLAG_COPIED;
            self.l1_dirty = true;
            return Ok(n);
        }
        if l1e & OFLAG_COPIED != 0 {
            return Ok(off);
        }
        if self.get_refcount(off / self.cs)? == 1 {
            self.l1[l1i] |= OFLAG_COPIED;
            self.l1_dirty = true;
            return Ok(off);
        }
        self.load(off, Kind::L2, "L2 table")?;
        let data = self.entry(off)?.data.clone();
        let n = self.alloc_cluster()?;
        self.insert_new(n, Kind::L2, data)?;
        self.l1[l1i] = n | OFLAG_COPIED;
        self.l1_dirty = true;
        self.pending_free.push((off, self.cs));
        Ok(n)
    }

    /// Writes `data` at `inoff` of guest cluster `gc`, entirely under the
    /// lock.
    fn write_cluster(
        &mut self,
        gc: u64,
        inoff: u64,
        data: &[u8],
        backing: Option<&Arc<dyn BlockBackend>>,
    ) -> Result<()> {
        match self.plan_write_cluster(gc, inoff, data, backing, false)? {
            WriteStep::Done => Ok(()),
            WriteStep::InPlace(h) => self.file.write_at(data, h),
            WriteStep::Cow { .. } => unreachable!("only planned with defer"),
            WriteStep::New(h) => {
                if let Err(e) = self.file.write_at(data, h) {
                    self.pending_free.push((h, self.cs));
                    return Err(e);
                }
                self.link_new_cluster(gc, h)
            }
        }
    }

    /// Does the metadata part of a write to guest cluster `gc`. With
    /// `defer`, a whole-cluster write to a cluster that needs a new host
    /// cluster only allocates it, marks `gc` in `writing` and returns
    /// `New` (the caller writes the data without the lock, then links it);
    /// partial writes that need copy-on-write are always done here.
    fn plan_write_cluster(
        &mut self,
        gc: u64,
        inoff: u64,
        data: &[u8],
        backing: Option<&Arc<dyn BlockBackend>>,
        defer: bool,
    ) -> Result<WriteStep> {
        let l1i = (gc / self.l2_entries) as usize;
        let l2i = gc % self.l2_entries;
        let l2 = self.l2_for_write(l1i)?;
        let raw = self.l2_get(l2, l2i)?;
        let cur = decode_l2(raw, self.cb);
        if let L2Entry::Normal(h) = cur {
            if raw & OFLAG_COPIED != 0 || self.get_refcount(h / self.cs)? == 1 {
                if h % self.cs != 0 {
                    return Err(Error::corrupt(
                        self.path(),
                        format!(
                            "L2 entry for guest cluster {gc} has unaligned host offset 0x{h:x}"
                        ),
                    ));
                }
                if raw & OFLAG_COPIED == 0 {
                    self.l2_set(l2, l2i, raw | OFLAG_COPIED)?;
                }
                return Ok(WriteStep::InPlace(h + inoff));
            }
        }
        if data.len() as u64 == self.cs {
            let h = self.alloc_cluster()?;
            if defer {
                self.writing.insert(gc);
            }
            return Ok(WriteStep::New(h));
        }
        if defer {
            let h = self.alloc_cluster()?;
            self.writing.insert(gc);
            return Ok(WriteStep::Cow { h, raw, entry: cur });
        }
        // Aligned so that with O_DIRECT the copy-on-write bypasses the page
        // cache like the guest data does.
        let mut store = vec![0u8; self.cs as usize + DIRECT_ALIGN];
        let a = store.as_ptr().align_offset(DIRECT_ALIGN);
        let full = &mut store[a..a + self.cs as usize];
        self.read_cluster_content(gc, cur, full, backing)?;
        full[inoff as usize..inoff as usize + data.len()].copy_from_slice(data);
        let h = self.alloc_cluster()?;
        self.file.write_at(full, h)?;
        self.l2_set(l2, l2i, h | OFLAG_COPIED)?;
        self.free_later(cur);
        Ok(WriteStep::Done)
    }

    /// Like `link_new_cluster`, but only if the L2 entry of `gc` is still
    /// `raw`; otherwise `h` is released and false returned.
    fn link_cow_cluster(&mut self, gc: u64, h: u64, raw: u64) -> Result<bool> {
        let l1i = (gc / self.l2_entries) as usize;
        let l2i = gc % self.l2_entries;
        let now = match self.l1.get(l1i) {
            Some(&l1e) if l1e & OFFSET_MASK != 0 => self.l2_get(l1e & OFFSET_MASK, l2i),
            Some(_) => Ok(0),
            None => Err(Error::corrupt(
                self.path(),
                format!("L1 index {l1i} out of range"),
            )),
        };
        match now {
            Ok(now) if now == raw => self.link_new_cluster(gc, h).map(|_| true),
            Ok(_) => {
                self.pending_free.push((h, self.cs));
                Ok(false)
            }
            Err(e) => {
                self.pending_free.push((h, self.cs));
                Err(e)
            }
        }
    }

    /// Points guest cluster `gc` at the new host cluster `h` (whose data
    /// has been written), releasing whatever the entry referenced by then.
    /// On failure `h` is released again.
    fn link_new_cluster(&mut self, gc: u64, h: u64) -> Result<()> {
        let l1i = (gc / self.l2_entries) as usize;
        let l2i = gc % self.l2_entries;
        let r = (|| {
            // Looked up again: the L2 table may have been copied (snapshot)
            // or the entry changed (discard, zeroing) meanwhile.
            let l2 = self.l2_for_write(l1i)?;
            let raw = self.l2_get(l2, l2i)?;
            self.l2_set(l2, l2i, h | OFLAG_COPIED)?;
            Ok(decode_l2(raw, self.cb))
        })();
        match r {
            Ok(cur) => {
                self.free_later(cur);
                Ok(())
            }
            Err(e) => {
                self.pending_free.push((h, self.cs));
                Err(e)
            }
        }
    }

    /// Writes a whole guest cluster compressed (used by convert -c). Falls
    /// back to an uncompressed write when compression does not pay.
    fn write_compressed(&mut self, gc: u64, data: &[u8]) -> Result<()> {
        let c = miniz_oxide::deflate::compress_to_vec(data, 6);
        if c.len() as u64 >= self.cs - 512 {
            return self.write_cluster(gc, 0, data, None);
        }
        let l1i = (gc / self.l2_entries) as usize;
        let l2i = gc % self.l2_entries;
        let l2 = self.l2_for_write(l1i)?;
        let raw = self.l2_get(l2, l2i)?;
        let cur = decode_l2(raw, self.cb);
        let len = c.len() as u64;
        let pos = if self.comp_cursor != 0 && (self.comp_cursor % self.cs) + len <= self.cs {
            self.add_refcount(self.comp_cursor / self.cs, 1)?;
            self.comp_cursor
        } else {
            self.alloc_cluster()?
        };
        self.file.write_at(&c, pos)?;
        let x = 62 - (self.cb - 8);
        let nsec = ((pos + len - 1) >> 9) - (pos >> 9);
        let e = OFLAG_COMPRESSED | (nsec << x) | pos;
        self.comp_cursor = pos + len;
        self.l2_set(l2, l2i, e)?;
        self.free_later(cur);
        Ok(())
    }

    /// Deallocates whole clusters: `zero` makes them read as zeroes,
    /// otherwise (discard) they become unallocated.
    fn zero_or_discard(
        &mut self,
        off: u64,
        len: u64,
        zero: bool,
        backing: Option<&Arc<dyn BlockBackend>>,
    ) -> Result<()> {
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let gc = pos >> self.cb;
            let inoff = pos & (self.cs - 1);
            let n = (self.cs - inoff).min(end - pos);
            if n < self.cs {
                if zero {
                    let z = vec![0u8; n as usize];
                    self.write_cluster(gc, inoff, &z, backing)?;
                }
                pos += n;
                continue;
            }
            let cur = self.lookup(gc)?;
            let want_zero_flag = zero && (self.has_backing || cur != L2Entry::Unallocated);
            let new = if zero && self.hdr.version >= 3 && self.has_backing {
                OFLAG_ZERO
            } else {
                0
            };
            if zero && self.hdr.version < 3 && self.has_backing {
                let z = vec![0u8; self.cs as usize];
                self.write_cluster(gc, 0, &z, backing)?;
            } else if cur != L2Entry::Unallocated || (want_zero_flag && new != 0) {
                let l2 = self.l2_for_write((gc / self.l2_entries) as usize)?;
                // Without a backing file an unallocated cluster reads as
                // zeroes, so plain deallocation is enough.
                self.l2_set(l2, gc % self.l2_entries, new)?;
                self.free_later(cur);
            }
            pos += n;
        }
        Ok(())
    }

    fn block_status(
        &mut self,
        off: u64,
        len: u64,
        backing: Option<&Arc<dyn BlockBackend>>,
    ) -> Result<Extent> {
        let first = self.lookup(off >> self.cb)?;
        let end = off + len;
        let mut pos = ((off >> self.cb) + 1) << self.cb;
        let host_of = |e: L2Entry| match e {
            L2Entry::Normal(h) | L2Entry::Zero(Some(h)) => Some(h),
            _ => None,
        };
        let first_host = host_of(first).map(|h| h + (off & (self.cs - 1)));
        while pos < end {
            let e = self.lookup(pos >> self.cb)?;
            let same = match (first, e) {
                (L2Entry::Unallocated, L2Entry::Unallocated) => true,
                (L2Entry::Zero(None), L2Entry::Zero(None)) => true,
                (L2Entry::Zero(Some(_)), L2Entry::Zero(Some(h))) => {
                    first_host.map(|f| f + (pos - off)) == Some(h)
                }
                (L2Entry::Normal(_), L2Entry::Normal(h)) => {
                    first_host.map(|f| f + (pos - off)) == Some(h)
                }
                (L2Entry::Compressed { .. }, L2Entry::Compressed { .. }) => true,
                _ => false,
            };
            if !same {
                break;
            }
            pos += self.cs;
        }
        let mut length = pos.min(end) - off;
        if let (L2Entry::Normal(_), Some(h), true) =
            (first, first_host, self.metadata_preallocated()?)
        {
            // Like qemu: in a metadata-preallocated image, a data cluster
            // whose host range is a hole in the file reads as zeroes.
            let (data, e) = self.file.seek_status(h, h + length);
            length = e.saturating_sub(h).clamp(1, length);
            if !data {
                return Ok(Extent {
                    offset: off,
                    length,
                    kind: ExtentKind::Zero,
                    depth: 0,
                    host_offset: first_host,
                    compressed: false,
                });
            }
        }
        let (kind, compressed) = match first {
            L2Entry::Unallocated => {
                if let Some(b) = backing {
                    let bsize = b.size();
                    if off < bsize {
                        let mut ext = b.block_status(off, length.min(bsize - off))?;
                        ext.depth += 1;
                        return Ok(ext);
                    }
                    // Beyond the backing file: reads as zeroes.
                    return Ok(Extent {
                        offset: off,
                        length,
                        kind: ExtentKind::Unallocated,
                        depth: 1 + chain_depth(b.as_ref()),
                        host_offset: None,
                        compressed: false,
                    });
                }
                (ExtentKind::Unallocated, false)
            }
            L2Entry::Zero(_) => (ExtentKind::Zero, false),
            L2Entry::Normal(_) => (ExtentKind::Data, false),
            L2Entry::Compressed { .. } => (ExtentKind::Data, true),
        };
        Ok(Extent {
            offset: off,
            length,
            kind,
            depth: 0,
            host_offset: first_host,
            compressed,
        })
    }

    /// qemu's heuristic: the image looks metadata-preallocated when many
    /// more clusters are refcounted than the host file really allocates.
    fn metadata_preallocated(&mut self) -> Result<bool> {
        if let Some(v) = self.meta_prealloc {
            return Ok(v);
        }
        let real = self.file.allocated() / self.cs;
        let threshold = (real * 10 / 9).max(real + 2);
        let epb = self.epb();
        let order = self.hdr.refcount_order;
        let flen = self.file.len()?;
        let mut count = 0u64;
        let file_blocks = (flen / self.cs) / epb + 1;
        for b in 0..self.rt.len().min(file_blocks as usize) {
            let rb = self.rt[b] & REFT_OFFSET_MASK;
            if rb == 0 || rb % self.cs != 0 || rb.saturating_add(self.cs) > flen {
                continue;
            }
            self.load(rb, Kind::Refblock, "refcount block")?;
            let e = self.entry(rb)?;
            count += (0..epb as usize)
                .filter(|&i| rc_get(&e.data, i, order) != 0)
                .count() as u64;
            if count >= threshold {
                break;
            }
        }
        let v = count >= threshold;
        self.meta_prealloc = Some(v);
        Ok(v)
    }

    /// Grows the L1 table to `entries` entries (new table, then header).
    pub(crate) fn grow_l1(&mut self, entries: u64) -> Result<()> {
        if entries as usize <= self.l1.len() {
            return Ok(());
        }
        if entries * 8 > header::MAX_L1_BYTES {
            return Err(Error::Invalid(format!(
                "{}: virtual size too large for the cluster size (L1 table would exceed {} bytes)",
                self.path().display(),
                header::MAX_L1_BYTES
            )));
        }
        self.flush()?;
        let clusters = (entries * 8).div_ceil(self.cs);
        let off = self.alloc_clusters(clusters)?;
        self.flush_refcounts(true)?;
        let old_off = self.hdr.l1_table_offset;
        let old_clusters = (self.l1.len() as u64 * 8).div_ceil(self.cs);
        self.l1.resize(entries as usize, 0);
        let mut buf = vec![0u8; (clusters * self.cs) as usize];
        for (i, e) in self.l1.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.file.write_at(&buf, off)?;
        self.file.sync()?;
        self.hdr.l1_table_offset = off;
        self.hdr.l1_size = entries as u32;
        self.write_header_fixed()?;
        self.file.sync()?;
        if old_clusters > 0 && old_off != 0 {
            for c in 0..old_clusters {
                self.add_refcount(old_off / self.cs + c, -1)?;
            }
        }
        self.flush_refcounts(false)
    }

    fn resize(&mut self, new_size: u64, backing: Option<&Arc<dyn BlockBackend>>) -> Result<()> {
        let new_size = new_size.div_ceil(512) * 512;
        if new_size < self.hdr.size {
            if !self.snapshots.is_empty() {
                return Err(Error::unsupported(
                    self.path(),
                    "shrinking images that have internal snapshots",
                ));
            }
            // Everything beyond the new end must read as zeroes if the
            // image grows again: zero the range (deallocating whole
            // clusters), then shrink the header's size.
            let end = self.hdr.size.div_ceil(self.cs) * self.cs;
            self.zero_or_discard(new_size, end - new_size, true, backing)?;
            self.flush()?;
            self.hdr.size = new_size;
            self.write_header_fixed()?;
            return self.file.sync();
        }
        if !self.snapshots.is_empty() && self.hdr.version < 3 {
            return Err(Error::unsupported(
                self.path(),
                "resizing v2 images with snapshots",
            ));
        }
        let need = Header::l1_entries_for(new_size, self.cb);
        self.grow_l1(need)?;
        let old_size = self.hdr.size;
        self.flush()?;
        self.hdr.size = new_size;
        self.write_header_fixed()?;
        self.file.sync()?;
        // The new area must read as zeroes, not as a longer backing file's
        // data showing through (as qemu does).
        if let Some(b) = backing {
            let end = b.size().min(new_size);
            if end > old_size {
                self.zero_or_discard(old_size, end - old_size, true, Some(b))?;
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Preallocates every cluster (`metadata`: allocated, unwritten;
    /// `full`: allocated and zero-filled).
    fn preallocate(&mut self, mode: Preallocation) -> Result<()> {
        let nclusters = self.hdr.size.div_ceil(self.cs);
        for gc in 0..nclusters {
            let l1i = (gc / self.l2_entries) as usize;
            let l2 = self.l2_for_write(l1i)?;
            let h = self.alloc_cluster()?;
            self.l2_set(l2, gc % self.l2_entries, h | OFLAG_COPIED)?;
        }
        let end = (self.alloc_end()? + 1) * self.cs;
        if mode == Preallocation::Full {
            // Zero every data cluster explicitly.
            let z = vec![0u8; self.cs as usize];
            for gc in 0..nclusters {
                if let L2Entry::Normal(h) = self.lookup(gc)? {
                    self.file.write_at(&z, h)?;
                }
            }
        }
        if self.file.len()? < end {
            self.file.set_len(end)?;
        }
        self.flush()
    }

    /// Index of the last cluster with a non-zero refcount.
    pub(crate) fn alloc_end(&mut self) -> Result<u64> {
        let epb = self.epb();
        let mut last = 0;
        let file_blocks = (self.file.len()? / self.cs) / epb + 2;
        for b in (0..self.rt.len().min(file_blocks as usize)).rev() {
            if self.rt[b] & REFT_OFFSET_MASK == 0 {
                continue;
            }
            for i in (0..epb).rev() {
                let c = b as u64 * epb + i;
                if self.get_refcount(c)? != 0 {
                    last = c;
                    break;
                }
            }
            if last != 0 {
                break;
            }
        }
        Ok(last)
    }
}

/// Reads and inflates one compressed cluster (raw deflate).
fn inflate_cluster(file: &HostFile, cs: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
    let flen = file.len()?;
    if offset >= flen {
        return Err(Error::corrupt(
            file.path(),
            format!("compressed cluster at 0x{offset:x} lies beyond the end of the file"),
        ));
    }
    let len = len.min(flen - offset).min(2 * cs);
    let mut c = vec![0u8; len as usize];
    file.read_at(&mut c, offset)?;
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(&c, cs as usize).map_err(|e| {
        Error::corrupt(
            file.path(),
            format!("cannot decompress cluster at 0x{offset:x}: {e:?}"),
        )
    })?;
    if out.len() != cs as usize {
        return Err(Error::corrupt(
            file.path(),
            format!(
                "compressed cluster at 0x{offset:x} inflates to {} bytes, not {cs}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// One piece of a read request: `n` bytes at buffer offset `at`.
struct ReadPiece {
    at: usize,
    n: usize,
    entry: L2Entry,
    /// Guest offset of the piece.
    pos: u64,
    /// Offset of `pos` within its cluster.
    inoff: u64,
}

fn chain_depth(b: &dyn BlockBackend) -> u32 {
    match b.backing() {
        Some(n) => 1 + chain_depth(n.as_ref()),
        None => 0,
    }
}

/// Resolves a backing file name relative to the directory of `image`.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(p),
        _ => p.to_path_buf(),
    }
}

impl Qcow2 {
    /// Opens a qcow2 image by path (with its backing chain).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Qcow2> {
        let mut chain = Vec::new();
        Qcow2::open_chain(path, opts, &mut chain)
    }

    pub(crate) fn open_chain(
        path: &Path,
        opts: &OpenOptions,
        chain: &mut Vec<PathBuf>,
    ) -> Result<Qcow2> {
        Qcow2::open_inner(path, opts, chain, false)
    }

    /// Opens for `check -r`: a dirty or corrupt image is not refused.
    pub(crate) fn open_for_repair(path: &Path) -> Result<Qcow2> {
        let opts = OpenOptions {
            open_backing: false,
            ..Default::default()
        };
        Qcow2::open_inner(path, &opts, &mut Vec::new(), true)
    }

    fn open_inner(
        path: &Path,
        opts: &OpenOptions,
        chain: &mut Vec<PathBuf>,
        repair: bool,
    ) -> Result<Qcow2> {
        let file = HostFile::open_with(path, opts.read_only, opts.direct)?;
        let flen = file.len()?;
        let hdr = Header::read(&file, flen)?;
        let cb = hdr.cluster_bits;
        let cs = 1u64 << cb;
        if !opts.read_only && !repair && hdr.incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(Error::corrupt(
                path,
                "the image is marked corrupt; open it read-only or repair it with 'check -r all'",
            ));
        }
        let mut l1 = vec![0u64; hdr.l1_size as usize];
        if hdr.l1_size > 0 {
            let mut b = vec![0u8; hdr.l1_size as usize * 8];
            file.read_exact_at(&mut b, hdr.l1_table_offset, "l1_table_offset")?;
            for (i, c) in b.chunks_exact(8).enumerate() {
                l1[i] = be64(c, 0);
            }
        }
        let rt_bytes = hdr.refcount_table_clusters as u64 * cs;
        let mut b = vec![0u8; rt_bytes as usize];
        file.read_exact_at(&mut b, hdr.refcount_table_offset, "refcount_table_offset")?;
        let rt: Vec<u64> = b.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let snapshots = snapshot::read_table(&file, &hdr, flen)?;
        let backing = match (&hdr.backing_file, opts.open_backing) {
            (Some(name), true) => {
                let bpath = resolve_backing(path, name);
                let fmt = match &hdr.backing_format {
                    Some(f) => Some(
                        Format::from_name(f)
                            .map_err(|e| Error::field(path, "backing format", e.to_string()))?,
                    ),
                    None => None,
                };
                let bopts = OpenOptions {
                    format: fmt,
                    read_only: true,
                    open_backing: true,
                    cache_bytes: opts.cache_bytes,
                    direct: opts.direct,
                };
                Some(open_in_chain(&bpath, &bopts, chain)?)
            }
            _ => None,
        };
        let cap = (opts.cache_bytes as u64 / cs).max(4) as usize;
        let rt_disk_cap = rt.len();
        let has_backing = hdr.backing_file.is_some();
        let file = Arc::new(file);
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut inner = Inner {
            file: file.clone(),
            inflight: inflight.clone(),
            cb,
            cs,
            l2_entries: cs / 8,
            l1,
            l1_dirty: false,
            rt,
            rt_dirty: BTreeSet::new(),
            rt_disk_cap,
            cache: Cache {
                map: HashMap::new(),
                lru: BTreeMap::new(),
                cap,
                tick: 0,
            },
            pending_free: Vec::new(),
            free_hint: 1,
            snapshots,
            comp_cursor: 0,
            has_backing,
            meta_prealloc: None,
            writing: HashSet::new(),
            hdr,
        };
        if !opts.read_only && !repair {
            if inner.hdr.incompatible & INCOMPAT_DIRTY != 0 {
                // Refcounts may be stale (lazy refcounts / crash): rebuild.
                log::warn!("{}: dirty bit set, rebuilding refcounts", path.display());
                inner.rebuild_refcounts()?;
                inner.fix_copied_flags()?;
                inner.flush()?;
                inner.hdr.incompatible &= !INCOMPAT_DIRTY;
                inner.write_header_fixed()?;
                inner.file.sync()?;
            }
            if inner.hdr.autoclear != 0 {
                // We do not maintain any autoclear feature (e.g. bitmaps).
                inner.hdr.autoclear = 0;
                inner.write_header_fixed()?;
                inner.file.sync()?;
            }
        }
        let size = inner.hdr.size;
        Ok(Qcow2 {
            path: path.to_path_buf(),
            inner: Mutex::new(inner),
            alloc_done: Condvar::new(),
            file,
            cluster_size: cs,
            inflight,
            backing,
            read_only: opts.read_only,
            size: AtomicU64::new(size),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ro(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly {
                path: self.path.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// The content of guest cluster `gc` with L2 entry `entry`, read
    /// without the lock (`buf` is cluster-sized).
    fn cluster_content(&self, gc: u64, entry: L2Entry, buf: &mut [u8]) -> Result<()> {
        match entry {
            L2Entry::Unallocated => match &self.backing {
                Some(b) => read_backing(b.as_ref(), buf, gc * self.cluster_size),
                None => {
                    buf.fill(0);
                    Ok(())
                }
            },
            L2Entry::Zero(_) => {
                buf.fill(0);
                Ok(())
            }
            L2Entry::Normal(h) => self.file.read_at(buf, h),
            L2Entry::Compressed { offset, len } => {
                let d = inflate_cluster(&self.file, self.cluster_size, offset, len)?;
                buf.copy_from_slice(&d);
                Ok(())
            }
        }
    }

    fn read_pieces(&self, buf: &mut [u8], plan: &[ReadPiece]) -> Result<()> {
        for p in plan {
            let chunk = &mut buf[p.at..p.at + p.n];
            match p.entry {
                L2Entry::Unallocated => match &self.backing {
                    Some(b) => read_backing(b.as_ref(), chunk, p.pos)?,
                    None => chunk.fill(0),
                },
                L2Entry::Zero(_) => chunk.fill(0),
                L2Entry::Normal(h) => self.file.read_at(chunk, h + p.inoff)?,
                L2Entry::Compressed { offset, len } => {
                    let d = inflate_cluster(&self.file, self.cluster_size, offset, len)?;
                    let i = p.inoff as usize;
                    chunk.copy_from_slice(&d[i..i + p.n]);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn is_read_only_img(&self) -> bool {
        self.read_only
    }

    pub(crate) fn path_buf(&self) -> PathBuf {
        self.path.clone()
    }

    pub(crate) fn set_size(&self, s: u64) {
        self.size.store(s, Ordering::Release);
    }

    pub fn header(&self) -> Header {
        self.lock().hdr.clone()
    }

    pub fn cluster_size(&self) -> u64 {
        self.lock().cs
    }

    /// Writes guest cluster-aligned, cluster-sized `data` compressed.
    pub fn write_compressed(&self, data: &[u8], offset: u64) -> Result<()> {
        self.ro()?;
        let mut g = self.lock();
        if offset % g.cs != 0 || data.len() as u64 != g.cs.min(g.hdr.size - offset.min(g.hdr.size))
        {
            return Err(Error::Invalid(
                "compressed writes must cover exactly one cluster".into(),
            ));
        }
        check_range(&self.path, offset, data.len() as u64, g.hdr.size)?;
        let gc = offset / g.cs;
        while g.writing.contains(&gc) {
            g = self.alloc_done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if (data.len() as u64) < g.cs {
            let mut full = vec![0u8; g.cs as usize];
            full[..data.len()].copy_from_slice(data);
            return g.write_compressed(gc, &full);
        }
        g.write_compressed(gc, data)
    }

    /// Changes the backing file recorded in the header (no data is copied).
    pub fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        self.ro()?;
        let mut g = self.lock();
        g.flush()?;
        g.hdr.backing_file = name.map(str::to_string);
        g.hdr.backing_format = if name.is_some() {
            format.map(str::to_string)
        } else {
            None
        };
        g.has_backing = name.is_some();
        g.write_header_cluster()?;
        g.file.sync()
    }

    /// Marks whether guest cluster range is allocated in this layer only.
    pub fn is_allocated_here(&self, offset: u64) -> Result<bool> {
        let mut g = self.lock();
        let gc = offset / g.cs;
        Ok(g.lookup(gc)? != L2Entry::Unallocated)
    }

    /// Makes the top layer empty (all clusters unallocated), used by commit.
    pub fn make_empty(&self) -> Result<()> {
        self.ro()?;
        let size = self.size();
        let mut g = self.lock();
        let cs = g.cs;
        g.zero_or_discard(0, size.div_ceil(cs) * cs, false, None)?;
        g.flush()
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if !self.read_only {
            if let Err(e) = self.lock().flush() {
                log::error!("{}: flush on close failed: {e}", self.path.display());
            }
        }
    }
}

impl BlockBackend for Qcow2 {
    fn format(&self) -> Format {
        Format::Qcow2
    }
    fn filename(&self) -> &Path {
        &self.path
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        // Metadata lookup under the lock, data I/O outside it.
        let plan = {
            let mut g = self.lock();
            check_range(&self.path, offset, buf.len() as u64, g.hdr.size)?;
            let plan = g.plan_read(offset, buf.len())?;
            self.inflight.fetch_add(1, Ordering::AcqRel);
            plan
        };
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _done = Done(&self.inflight);
        self.read_pieces(buf, &plan)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        // Metadata work under the lock, one cluster at a time; data writes
        // into clusters this image already owns (refcount 1) and
        // whole-cluster writes into newly allocated clusters are done
        // outside it, so writers run in parallel.
        self.ro()?;
        check_range(&self.path, offset, buf.len() as u64, self.size())?;
        let cs = self.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let gc = pos / cs;
            let inoff = pos % cs;
            let n = ((cs - inoff) as usize).min(buf.len() - done);
            let data = &buf[done..done + n];
            let step = {
                let mut g = self.lock();
                while g.writing.contains(&gc) {
                    g = self.alloc_done.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                check_range(&self.path, pos, n as u64, g.hdr.size)?;
                let step = g.plan_write_cluster(gc, inoff, data, self.backing.as_ref(), true)?;
                if let WriteStep::InPlace(_)
                | WriteStep::Cow {
                    entry: L2Entry::Normal(_) | L2Entry::Compressed { .. },
                    ..
                } = step
                {
                    self.inflight.fetch_add(1, Ordering::AcqRel);
                }
                step
            };
            match step {
                WriteStep::Done => {}
                WriteStep::InPlace(h) => {
                    let r = self.file.write_at(data, h);
                    self.inflight.fetch_sub(1, Ordering::AcqRel);
                    r?;
                }
                WriteStep::Cow { h, raw, entry } => {
                    let counted = matches!(entry, L2Entry::Normal(_) | L2Entry::Compressed { .. });
                    let mut store = vec![0u8; cs as usize + DIRECT_ALIGN];
                    let a = store.as_ptr().align_offset(DIRECT_ALIGN);
                    let full = &mut store[a..a + cs as usize];
                    let r = self.cluster_content(gc, entry, full);
                    if counted {
                        self.inflight.fetch_sub(1, Ordering::AcqRel);
                    }
                    let r = r.and_then(|()| {
                        full[inoff as usize..inoff as usize + n].copy_from_slice(data);
                        self.file.write_at(full, h)
                    });
                    let mut g = self.lock();
                    g.writing.remove(&gc);
                    self.alloc_done.notify_all();
                    match r {
                        Ok(()) => {
                            if !g.link_cow_cluster(gc, h, raw)? {
                                // The entry changed meanwhile (discard,
                                // zeroing, snapshot): redo this cluster.
                                continue;
                            }
                        }
                        Err(e) => {
                            g.pending_free.push((h, cs));
                            return Err(e);
                        }
                    }
                }
                WriteStep::New(h) => {
                    let r = self.file.write_at(data, h);
                    let mut g = self.lock();
                    g.writing.remove(&gc);
                    self.alloc_done.notify_all();
                    match r {
                        Ok(()) => g.link_new_cluster(gc, h)?,
                        Err(e) => {
                            g.pending_free.push((h, cs));
                            return Err(e);
                        }
                    }
                }
            }
            done += n;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.lock().flush()
    }
    fn discard(&self, offset: u64, length: u64) -> Result<()> {
        self.ro()?;
        let mut g = self.lock();
        check_range(&self.path, offset, length, g.hdr.size)?;
        // Round inwards to whole clusters; partial clusters are left alone.
        let cs = g.cs;
        let start = offset.div_ceil(cs) * cs;
        let end = (offset + length) / cs * cs;
        let end = if offset + length == g.hdr.size {
            offset + length
        } else {
            end
        };
        if end > start {
            g.zero_or_discard(start, end - start, false, self.backing.as_ref())?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, length: u64) -> Result<()> {
        self.ro()?;
        let mut g = self.lock();
        check_range(&self.path, offset, length, g.hdr.size)?;
        g.zero_or_discard(offset, length, true, self.backing.as_ref())
    }
    fn block_status(&self, offset: u64, length: u64) -> Result<Extent> {
        let mut g = self.lock();
        check_range(&self.path, offset, length, g.hdr.size)?;
        g.block_status(offset, length, self.backing.as_ref())
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        self.ro()?;
        let mut g = self.lock();
        g.resize(new_size, self.backing.as_ref())?;
        self.size.store(g.hdr.size, Ordering::Release);
        Ok(())
    }
    fn backing(&self) -> Option<&Arc<dyn BlockBackend>> {
        self.backing.as_ref()
    }
    fn as_qcow2(&self) -> Option<&Qcow2> {
        Some(self)
    }
    fn actual_size(&self) -> u64 {
        self.lock().file.allocated()
    }
}

/// Creates a qcow2 image.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    let cs = opts.cluster_size as u64;
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::Invalid(format!(
            "Cluster size must be a power of two between 512 and 2048k (got {cs})"
        )));
    }
    let rb = opts.refcount_bits;
    if !rb.is_power_of_two() || rb > 64 {
        return Err(Error::Invalid(format!(
            "Refcount width must be a power of two and may not exceed 64 bits (got {rb})"
        )));
    }
    if opts.version != 2 && opts.version != 3 {
        return Err(Error::Invalid(format!(
            "invalid qcow2 version {}",
            opts.version
        )));
    }
    if opts.version == 2 && rb != 16 {
        return Err(Error::Invalid(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)".into(),
        ));
    }
    if opts.version == 2 && opts.lazy_refcounts {
        return Err(Error::Invalid(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)".into(),
        ));
    }
    if opts.backing_file.is_some() && opts.preallocation != Preallocation::Off {
        return Err(Error::Invalid(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on"
                .into(),
        ));
    }
    let cb = cs.trailing_zeros();
    let order = rb.trailing_zeros();
    let mut hdr = Header {
        version: opts.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: cb,
        size: 0,
        crypt_method: 0,
        l1_size: 0,
        l1_table_offset: 0,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: 0,
        compatible: if opts.lazy_refcounts {
            header::COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear: 0,
        refcount_order: order,
        header_length: if opts.version == 3 { 112 } else { 72 },
        compression_type: 0,
        backing_file: opts.backing_file.clone(),
        backing_format: opts.backing_format.map(|f| f.name().to_string()),
        feature_names: Vec::new(),
        other_exts: Vec::new(),
    };
    let hc = hdr.to_cluster(path)?;
    let file = HostFile::create(path)?;
    file.write_at(&hc, 0)?;
    let mut rt = vec![0u8; cs as usize];
    rt[0..8].copy_from_slice(&(2 * cs).to_be_bytes());
    file.write_at(&rt, cs)?;
    let mut rb = vec![0u8; cs as usize];
    for i in 0..3 {
        rc_set(&mut rb, i, order, 1);
    }
    file.write_at(&rb, 2 * cs)?;
    file.sync()?;
    drop(file);
    let img = Qcow2::open(
        path,
        &OpenOptions {
            format: Some(Format::Qcow2),
            read_only: false,
            open_backing: false,
            cache_bytes: 8 << 20,
            direct: false,
        },
    )?;
    {
        let mut g = img.lock();
        // qemu addresses qcow2 images in 512-byte sectors.
        g.resize(opts.size, None)?;
        if opts.preallocation != Preallocation::Off {
            g.preallocate(opts.preallocation)?;
        }
        g.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
