//! Internal snapshots: table parsing/serialisation and create/apply/delete.

use super::header::{be16, be32, be64, check_table, Header, MAX_L1_BYTES};
use super::{decode_l2, Inner, L2Entry, Qcow2, OFFSET_MASK, OFLAG_COPIED};
use crate::{Error, HostFile, Result};
use std::sync::MutexGuard;

/// Largest snapshot table qemu accepts.
const MAX_TABLE_BYTES: u64 = 64 << 20;
const MAX_EXTRA: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    /// Virtual disk size when the snapshot was taken (None for old images).
    pub disk_size: Option<u64>,
    pub icount: Option<u64>,
    /// Unknown extra data beyond the fields we know, preserved.
    pub extra_rest: Vec<u8>,
}

impl Snapshot {
    fn entry_len(&self) -> u64 {
        let extra = 24 + self.extra_rest.len();
        let n = 40 + extra + self.id.len() + self.name.len();
        n.div_ceil(8) as u64 * 8
    }

    fn serialize(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.date_sec.to_be_bytes());
        out.extend_from_slice(&self.date_nsec.to_be_bytes());
        out.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        out.extend_from_slice(&(self.vm_state_size.min(u32::MAX as u64) as u32).to_be_bytes());
        out.extend_from_slice(&((24 + self.extra_rest.len()) as u32).to_be_bytes());
        out.extend_from_slice(&self.vm_state_size.to_be_bytes());
        out.extend_from_slice(&self.disk_size.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.icount.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&self.extra_rest);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.name.as_bytes());
        while (out.len() - start) % 8 != 0 {
            out.push(0);
        }
    }
}

pub(crate) fn table_len(s: &[Snapshot]) -> u64 {
    s.iter().map(Snapshot::entry_len).sum()
}

/// Parses the snapshot table, validating every field against the file.
pub(crate) fn read_table(file: &HostFile, hdr: &Header, flen: u64) -> Result<Vec<Snapshot>> {
    let path = file.path();
    let cs = hdr.cluster_size();
    let mut out = Vec::new();
    let mut off = hdr.snapshots_offset;
    for i in 0..hdr.nb_snapshots {
        if off - hdr.snapshots_offset > MAX_TABLE_BYTES {
            return Err(Error::field(
                path,
                "nb_snapshots",
                "snapshot table is too large",
            ));
        }
        let mut f = [0u8; 40];
        file.read_exact_at(&mut f, off, "snapshot table entry")?;
        let l1_table_offset = be64(&f, 0);
        let l1_size = be32(&f, 8);
        let id_len = be16(&f, 12) as u64;
        let name_len = be16(&f, 14) as u64;
        let extra_len = be32(&f, 36);
        if extra_len > MAX_EXTRA {
            return Err(Error::field(
                path,
                "snapshot extra_data_size",
                format!("snapshot {i}: {extra_len} bytes exceed {MAX_EXTRA}"),
            ));
        }
        if l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(Error::field(
                path,
                "snapshot l1_size",
                format!("snapshot {i}: {l1_size} entries exceed the maximum L1 size"),
            ));
        }
        check_table(
            path,
            "snapshot l1_table_offset",
            l1_table_offset,
            l1_size as u64 * 8,
            cs,
            flen,
        )?;
        let var_len = extra_len as u64 + id_len + name_len;
        if off + 40 + var_len > flen {
            return Err(Error::field(
                path,
                "snapshot table entry",
                format!("snapshot {i} extends beyond the end of the file"),
            ));
        }
        let mut v = vec![0u8; var_len as usize];
        file.read_exact_at(&mut v, off + 40, "snapshot table entry")?;
        let extra = &v[..extra_len as usize];
        let vm_state_size = if extra.len() >= 8 {
            be64(extra, 0)
        } else {
            be32(&f, 32) as u64
        };
        let disk_size = if extra.len() >= 16 {
            Some(be64(extra, 8))
        } else {
            None
        };
        let icount = if extra.len() >= 24 {
            let v = be64(extra, 16);
            (v != u64::MAX).then_some(v)
        } else {
            None
        };
        let extra_rest = if extra.len() > 24 {
            extra[24..].to_vec()
        } else {
            Vec::new()
        };
        let e = extra_len as usize;
        let id = String::from_utf8_lossy(&v[e..e + id_len as usize]).into_owned();
        let name = String::from_utf8_lossy(&v[e + id_len as usize..]).into_owned();
        out.push(Snapshot {
            l1_table_offset,
            l1_size,
            id,
            name,
            date_sec: be32(&f, 16),
            date_nsec: be32(&f, 20),
            vm_clock_nsec: be64(&f, 24),
            vm_state_size,
            disk_size,
            icount,
            extra_rest,
        });
        off += (40 + var_len).div_ceil(8) * 8;
    }
    Ok(out)
}

impl Inner {
    fn read_l1_at(&self, off: u64, n: u32) -> Result<Vec<u64>> {
        let mut b = vec![0u8; n as usize * 8];
        self.file
            .read_exact_at(&mut b, off, "snapshot l1_table_offset")?;
        Ok(b.chunks_exact(8).map(|c| be64(c, 0)).collect())
    }

    /// Adds `delta` to the refcount of every L2 table and data cluster
    /// reachable from `l1`.
    pub(crate) fn update_tree_refcounts(&mut self, l1: &[u64], delta: i64) -> Result<()> {
        for &l1e in l1 {
            let l2 = l1e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            let t = self.l2_table(l2)?;
            for e in t {
                match decode_l2(e, self.cb) {
                    L2Entry::Normal(h) | L2Entry::Zero(Some(h)) => {
                        self.add_refcount(h / self.cs, delta)?
                    }
                    L2Entry::Compressed { offset, len } => {
                        let first = offset / self.cs;
                        let last = (offset + len - 1) / self.cs;
                        for c in first..=last {
                            self.add_refcount(c, delta)?;
                        }
                    }
                    _ => {}
                }
            }
            self.add_refcount(l2 / self.cs, delta)?;
        }
        Ok(())
    }

    /// Sets the COPIED flag of every active L1/L2 entry iff its refcount is 1.
    pub(crate) fn fix_copied_flags(&mut self) -> Result<()> {
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let l2 = l1e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            let want = self.get_refcount(l2 / self.cs)? == 1;
            let new = if want {
                l1e | OFLAG_COPIED
            } else {
                l1e & !OFLAG_COPIED
            };
            if new != l1e {
                self.l1[i] = new;
                self.l1_dirty = true;
            }
            let t = self.l2_table(l2)?;
            for (j, e) in t.into_iter().enumerate() {
                let host = match decode_l2(e, self.cb) {
                    L2Entry::Normal(h) | L2Entry::Zero(Some(h)) => h,
                    _ => continue,
                };
                let want = self.get_refcount(host / self.cs)? == 1;
                let ne = if want {
                    e | OFLAG_COPIED
                } else {
                    e & !OFLAG_COPIED
                };
                if ne != e {
                    self.l2_set(l2, j as u64, ne)?;
                }
            }
        }
        Ok(())
    }

    /// Writes a new snapshot table and switches the header to it.
    fn write_snapshot_table(&mut self, snaps: Vec<Snapshot>) -> Result<()> {
        let old_off = self.hdr.snapshots_offset;
        let old_len = if self.hdr.nb_snapshots > 0 {
            table_len(&self.snapshots)
        } else {
            0
        };
        let mut buf = Vec::new();
        for s in &snaps {
            s.serialize(&mut buf);
        }
        let (off, n) = if buf.is_empty() {
            (0, 0)
        } else {
            let clusters = (buf.len() as u64).div_ceil(self.cs);
            let off = self.alloc_clusters(clusters)?;
            buf.resize((clusters * self.cs) as usize, 0);
            self.file.write_at(&buf, off)?;
            (off, snaps.len() as u32)
        };
        self.flush()?;
        self.hdr.snapshots_offset = off;
        self.hdr.nb_snapshots = n;
        self.write_header_fixed()?;
        self.file.sync()?;
        self.snapshots = snaps;
        if old_len > 0 {
            let first = old_off / self.cs;
            let last = (old_off + old_len - 1) / self.cs;
            for c in first..=last {
                self.add_refcount(c, -1)?;
            }
        }
        Ok(())
    }

    fn find_snapshot(&self, name: &str) -> Result<usize> {
        self.snapshots
            .iter()
            .position(|s| s.id == name)
            .or_else(|| self.snapshots.iter().position(|s| s.name == name))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: snapshot '{name}' not found",
                    self.file.path().display()
                ))
            })
    }
}

impl Qcow2 {
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.lock().snapshots.clone()
    }

    /// The metadata lock for a snapshot operation on a writable image, once no data I/O
    /// runs outside the lock: in-place writes must not land in clusters that become (or
    /// stop being) shared with a snapshot.
    fn lock_for_snapshot(&self) -> Result<MutexGuard<'_, Inner>> {
        if self.is_read_only_img() {
            return Err(Error::ReadOnly {
                path: self.path_buf(),
            });
        }
        let g = self.lock();
        g.wait_no_readers();
        Ok(g)
    }

    /// Creates an internal snapshot of the current disk state.
    pub fn snapshot_create(&self, name: &str) -> Result<()> {
        let mut g = self.lock_for_snapshot()?;
        if g.snapshots.iter().any(|s| s.name == name) {
            return Err(Error::Invalid(format!(
                "{}: a snapshot named '{name}' already exists",
                g.file.path().display()
            )));
        }
        if g.snapshots.len() as u32 >= super::header::MAX_SNAPSHOTS {
            return Err(Error::Invalid("too many snapshots".into()));
        }
        g.flush()?;
        // 1. Every cluster of the active tree gains one reference.
        let l1 = g.l1.clone();
        g.update_tree_refcounts(&l1, 1)?;
        g.fix_copied_flags()?;
        g.flush()?;
        // 2. Copy of the L1 table (without COPIED flags).
        let n = l1.len() as u64;
        let l1_off = if n > 0 {
            let clusters = (n * 8).div_ceil(g.cs);
            let off = g.alloc_clusters(clusters)?;
            let mut buf = vec![0u8; (clusters * g.cs) as usize];
            for (i, e) in g.l1.iter().enumerate() {
                buf[i * 8..i * 8 + 8].copy_from_slice(&(e & !OFLAG_COPIED).to_be_bytes());
            }
            g.file.write_at(&buf, off)?;
            off
        } else {
            0
        };
        // 3. New snapshot table, header switch.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let next_id = g
            .snapshots
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let mut snaps = g.snapshots.clone();
        snaps.push(Snapshot {
            l1_table_offset: l1_off,
            l1_size: n as u32,
            id: next_id.to_string(),
            name: name.to_string(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(g.hdr.size),
            icount: None,
            extra_rest: Vec::new(),
        });
        g.write_snapshot_table(snaps)?;
        g.flush()
    }

    /// Reverts the disk to the snapshot (by ID or name).
    pub fn snapshot_apply(&self, name: &str) -> Result<()> {
        let mut g = self.lock_for_snapshot()?;
        g.flush()?;
        let i = g.find_snapshot(name)?;
        let s = g.snapshots[i].clone();
        let snap_l1 = g.read_l1_at(s.l1_table_offset, s.l1_size)?;
        g.update_tree_refcounts(&snap_l1, 1)?;
        g.flush()?;
        let new_size = s.disk_size.unwrap_or(g.hdr.size);
        let need = Header::l1_entries_for(new_size, g.cb).max(snap_l1.len() as u64);
        g.grow_l1(need)?;
        let old = g.l1.clone();
        for (k, e) in g.l1.iter_mut().enumerate() {
            *e = snap_l1.get(k).copied().unwrap_or(0) & !OFLAG_COPIED;
        }
        g.write_l1()?;
        g.file.sync()?;
        g.hdr.size = new_size;
        g.write_header_fixed()?;
        g.file.sync()?;
        g.update_tree_refcounts(&old, -1)?;
        g.fix_copied_flags()?;
        g.flush()?;
        self.set_size(new_size);
        Ok(())
    }

    /// Deletes the snapshot (by ID or name).
    pub fn snapshot_delete(&self, name: &str) -> Result<()> {
        let mut g = self.lock_for_snapshot()?;
        g.flush()?;
        let i = g.find_snapshot(name)?;
        let s = g.snapshots[i].clone();
        let snap_l1 = g.read_l1_at(s.l1_table_offset, s.l1_size)?;
        let mut snaps = g.snapshots.clone();
        snaps.remove(i);
        g.write_snapshot_table(snaps)?;
        g.update_tree_refcounts(&snap_l1, -1)?;
        if s.l1_size > 0 {
            let cs = g.cs;
            let first = s.l1_table_offset / cs;
            let last = (s.l1_table_offset + s.l1_size as u64 * 8 - 1) / cs;
            for c in first..=last {
                g.add_refcount(c, -1)?;
            }
        }
        g.fix_copied_flags()?;
        g.flush()
    }
}
