//! Consistency check (qemu-img check semantics) and refcount rebuild.

use std::path::Path;

use super::header::be64;
use super::{
    decode_l2, rc_max, rc_set, snapshot, Inner, L2Entry, Qcow2, OFFSET_MASK, OFLAG_COPIED,
    REFT_OFFSET_MASK,
};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    None,
    Leaks,
    All,
}

/// Result of a check, with qemu-img's counters.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    pub image_end_offset: u64,
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    /// One line per problem, worded like qemu-img.
    pub messages: Vec<String>,
}

struct Refs {
    refs: Vec<u64>,
    cs: u64,
}

impl Refs {
    fn inc(&mut self, off: u64, len: u64, what: &str, rep: &mut CheckReport) {
        if len == 0 {
            return;
        }
        let first = off / self.cs;
        let last = (off + len - 1) / self.cs;
        for c in first..=last {
            match self.refs.get_mut(c as usize) {
                Some(r) => *r += 1,
                None => {
                    rep.messages.push(format!(
                        "ERROR {what} at offset 0x{off:x} lies beyond the end of the image file"
                    ));
                    rep.corruptions += 1;
                    return;
                }
            }
        }
    }
}

impl Inner {
    fn read_table(&self, off: u64, n: u64) -> Result<Vec<u64>> {
        let mut b = vec![0u8; (n * 8) as usize];
        self.file.read_exact_at(&mut b, off, "L1 table")?;
        Ok(b.chunks_exact(8).map(|c| be64(c, 0)).collect())
    }

    fn walk(
        &mut self,
        l1: &[u64],
        active: bool,
        refs: &mut Refs,
        rep: &mut CheckReport,
    ) -> Result<()> {
        let flen = self.file.len()?;
        for (i, &l1e) in l1.iter().enumerate() {
            let l2 = l1e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if l2 % self.cs != 0 || l2.saturating_add(self.cs) > flen {
                rep.messages.push(format!(
                    "ERROR l2_offset=0x{l2:x}: L2 table is not cluster aligned or lies beyond the end of the file; L1 entry {i} corrupted"
                ));
                rep.corruptions += 1;
                continue;
            }
            refs.inc(l2, self.cs, "L2 table", rep);
            if active {
                let rc = self.get_refcount(l2 / self.cs)?;
                if (rc == 1) != (l1e & OFLAG_COPIED != 0) {
                    rep.messages.push(format!(
                        "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} refcount={rc}"
                    ));
                    rep.corruptions += 1;
                }
            }
            let t = self.l2_table(l2)?;
            // qemu measures fragmentation within each L2 table.
            let mut prev_host: Option<u64> = None;
            for e in t {
                match decode_l2(e, self.cb) {
                    L2Entry::Normal(h) | L2Entry::Zero(Some(h)) => {
                        if h % self.cs != 0 {
                            rep.messages.push(format!(
                                "ERROR offset=0x{h:x}: Cluster is not properly aligned; L2 entry corrupted."
                            ));
                            rep.corruptions += 1;
                            continue;
                        }
                        refs.inc(h, self.cs, "data cluster", rep);
                        if active {
                            let rc = self.get_refcount(h / self.cs)?;
                            if (rc == 1) != (e & OFLAG_COPIED != 0) {
                                rep.messages.push(format!(
                                    "ERROR OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}"
                                ));
                                rep.corruptions += 1;
                            }
                            rep.allocated_clusters += 1;
                            if prev_host.is_some_and(|p| p + self.cs != h) {
                                rep.fragmented_clusters += 1;
                            }
                            prev_host = Some(h);
                        }
                    }
                    L2Entry::Compressed { offset, len } => {
                        refs.inc(offset, len, "compressed cluster", rep);
                        if active {
                            // Like qemu: compressed clusters count as
                            // allocated, compressed and fragmented.
                            rep.allocated_clusters += 1;
                            rep.compressed_clusters += 1;
                            rep.fragmented_clusters += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Counts the references to every cluster of the file.
    fn compute_refs(&mut self, rep: &mut CheckReport, with_refcount_structs: bool) -> Result<Refs> {
        let flen = self.file.len()?;
        let n = flen.div_ceil(self.cs) as usize;
        let mut refs = Refs {
            refs: vec![0u64; n],
            cs: self.cs,
        };
        refs.inc(0, self.cs, "header", rep);
        if self.hdr.l1_size > 0 {
            refs.inc(
                self.hdr.l1_table_offset,
                self.hdr.l1_size as u64 * 8,
                "L1 table",
                rep,
            );
        }
        let l1 = self.l1.clone();
        self.walk(&l1, true, &mut refs, rep)?;
        if self.hdr.nb_snapshots > 0 {
            refs.inc(
                self.hdr.snapshots_offset,
                snapshot::table_len(&self.snapshots),
                "snapshot table",
                rep,
            );
        }
        for s in self.snapshots.clone() {
            if s.l1_size == 0 {
                continue;
            }
            refs.inc(
                s.l1_table_offset,
                s.l1_size as u64 * 8,
                "snapshot L1 table",
                rep,
            );
            let l1 = self.read_table(s.l1_table_offset, s.l1_size as u64)?;
            self.walk(&l1, false, &mut refs, rep)?;
        }
        if !with_refcount_structs {
            return Ok(refs);
        }
        refs.inc(
            self.hdr.refcount_table_offset,
            self.hdr.refcount_table_clusters as u64 * self.cs,
            "refcount table",
            rep,
        );
        for (b, &e) in self.rt.iter().enumerate() {
            let rb = e & REFT_OFFSET_MASK;
            if rb == 0 {
                continue;
            }
            if rb % self.cs != 0 || rb.saturating_add(self.cs) > flen {
                rep.messages.push(format!(
                    "ERROR refcount block {b} at 0x{rb:x} is not cluster aligned or lies beyond the end of the file"
                ));
                rep.corruptions += 1;
                continue;
            }
            refs.inc(rb, self.cs, "refcount block", rep);
        }
        Ok(refs)
    }

    fn check(&mut self) -> Result<CheckReport> {
        let mut rep = CheckReport {
            total_clusters: self.hdr.size.div_ceil(self.cs),
            ..Default::default()
        };
        let refs = self.compute_refs(&mut rep, true)?;
        let flen = self.file.len()?;
        let epb = self.epb();
        let mut max = refs.refs.len() as u64;
        for (b, &e) in self.rt.iter().enumerate() {
            let rb = e & REFT_OFFSET_MASK;
            if rb != 0 && rb % self.cs == 0 && rb.saturating_add(self.cs) <= flen {
                max = max.max((b as u64 + 1) * epb);
            }
        }
        // Refcounts far beyond the end of the file cannot be legitimate;
        // do not let a hostile refcount table make the scan unbounded.
        let max = max.min(refs.refs.len() as u64 + epb);
        let mut end = 0;
        for c in 0..max {
            let r = refs.refs.get(c as usize).copied().unwrap_or(0);
            let b = (c / epb) as usize;
            let rb = self.rt.get(b).copied().unwrap_or(0) & REFT_OFFSET_MASK;
            let rc = if rb == 0 || rb % self.cs != 0 || rb.saturating_add(self.cs) > flen {
                0
            } else {
                self.get_refcount(c)?
            };
            if rc > 0 || r > 0 {
                end = c + 1;
            }
            if rc < r {
                rep.messages
                    .push(format!("ERROR cluster {c} refcount={rc} reference={r}"));
                rep.corruptions += 1;
            } else if rc > r {
                rep.messages
                    .push(format!("Leaked cluster {c} refcount={rc} reference={r}"));
                rep.leaks += 1;
            }
        }
        rep.image_end_offset = end * self.cs;
        Ok(rep)
    }

    /// Rebuilds all refcounts from the references: writes a fresh set of
    /// refcount blocks and a new refcount table after the end of the file,
    /// then switches the header to them. The old structures become free.
    pub(crate) fn rebuild_refcounts(&mut self) -> Result<()> {
        let mut rep = CheckReport::default();
        let refs = self.compute_refs(&mut rep, false)?;
        let cs = self.cs;
        let epb = self.epb();
        let order = self.hdr.refcount_order;
        let n = refs.refs.len() as u64;
        let mut k = 0u64;
        let (blocks, tcl) = loop {
            let total = n + k;
            let blocks = total.div_ceil(epb);
            let tcl = (blocks * 8).div_ceil(cs);
            if blocks + tcl <= k {
                break (blocks, tcl);
            }
            k = blocks + tcl;
        };
        if tcl * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::Invalid(format!(
                "{}: refcount table would be too large",
                self.file.path().display()
            )));
        }
        let mut all = refs.refs;
        all.resize((n + k) as usize, 0);
        for c in n..n + blocks + tcl {
            all[c as usize] = 1;
        }
        let max = rc_max(order);
        let mut table = vec![0u8; (tcl * cs) as usize];
        for b in 0..blocks {
            let mut blk = vec![0u8; cs as usize];
            for i in 0..epb {
                let c = b * epb + i;
                let Some(&v) = all.get(c as usize) else { break };
                if v > max {
                    return Err(Error::Invalid(format!(
                        "{}: cluster {c} has {v} references, more than {}-bit refcounts can hold",
                        self.file.path().display(),
                        1u32 << order
                    )));
                }
                rc_set(&mut blk, i as usize, order, v);
            }
            let off = (n + b) * cs;
            self.file.write_at(&blk, off)?;
            table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
        }
        let toff = (n + blocks) * cs;
        self.file.write_at(&table, toff)?;
        self.file.sync()?;
        self.hdr.refcount_table_offset = toff;
        self.hdr.refcount_table_clusters = tcl as u32;
        self.write_header_fixed()?;
        self.file.sync()?;
        self.rt = table.chunks_exact(8).map(|c| be64(c, 0)).collect();
        self.rt_disk_cap = self.rt.len();
        let rbs: Vec<u64> = self
            .cache
            .map
            .iter()
            .filter(|(_, e)| e.kind == super::Kind::Refblock)
            .map(|(k, _)| *k)
            .collect();
        for k in rbs {
            self.cache.remove(k);
        }
        self.free_hint = 1;
        Ok(())
    }
}

impl Qcow2 {
    /// Checks the image's metadata consistency, like `qemu-img check`.
    pub fn check(&self) -> Result<CheckReport> {
        let mut g = self.lock();
        g.check()
    }

    /// Opens `path` and checks (and with `mode` != None repairs) it.
    pub fn check_path(path: &Path, mode: RepairMode) -> Result<(CheckReport, Option<CheckReport>)> {
        if mode == RepairMode::None {
            let img = Qcow2::open(
                path,
                &crate::OpenOptions {
                    read_only: true,
                    open_backing: false,
                    ..Default::default()
                },
            )?;
            return Ok((img.check()?, None));
        }
        let img = Qcow2::open_for_repair(path)?;
        let mut g = img.lock();
        let before = g.check()?;
        let need = match mode {
            RepairMode::All => before.corruptions > 0 || before.leaks > 0,
            RepairMode::Leaks => before.leaks > 0,
            RepairMode::None => false,
        };
        let dirty = g.hdr.incompatible & super::header::INCOMPAT_DIRTY != 0;
        if need || (mode == RepairMode::All && dirty) {
            g.flush()?;
            g.rebuild_refcounts()?;
            if mode == RepairMode::All {
                g.fix_copied_flags()?;
                g.hdr.incompatible &=
                    !(super::header::INCOMPAT_DIRTY | super::header::INCOMPAT_CORRUPT);
                g.write_header_fixed()?;
            }
            g.flush()?;
            let after = g.check()?;
            let mut before = before;
            before.leaks_fixed = before.leaks.saturating_sub(after.leaks);
            before.corruptions_fixed = before.corruptions.saturating_sub(after.corruptions);
            return Ok((before, Some(after)));
        }
        Ok((before, None))
    }
}
