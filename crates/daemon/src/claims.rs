//! Which host files the running domains use as disks (with their qcow2 backing chains),
//! and which files a storage operation is changing — so that neither steps on the other:
//! a volume a running domain uses cannot be uploaded to, resized or deleted, and a
//! domain whose disk is being changed does not start.
//!
//! One mutex, taken last (never held while taking another lock), so it can be used from
//! anywhere: the supervisor records a domain's disks as it starts and forgets them when
//! it stops; storage handlers hold a [`JobClaim`] for the duration of their operation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use vireo_block::OpenOptions;

/// Deepest backing chain followed (qemu's own limit is far larger; real chains are short).
const MAX_CHAIN: usize = 16;

#[derive(Default)]
pub struct DiskClaims {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Running domain → the files it uses (canonical paths).
    domains: HashMap<String, Vec<PathBuf>>,
    /// File being changed → (number of operations, what they do).
    jobs: HashMap<PathBuf, (usize, &'static str)>,
}

/// The canonical form of `p` (itself if it cannot be resolved, e.g. it does not exist).
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `disk` and the backing files its qcow2 header chain names, canonical.
pub fn with_backing_chain(disk: &Path) -> Vec<PathBuf> {
    let mut chain = vec![canonical(disk)];
    let opts = OpenOptions {
        read_only: true,
        open_backing: false,
        cache_bytes: 64 << 10,
        ..Default::default()
    };
    while chain.len() < MAX_CHAIN {
        let cur = chain.last().expect("not empty").clone();
        let Ok(img) = vireo_block::open(&cur, &opts) else {
            break;
        };
        let Some(b) = img.as_qcow2().and_then(|q| q.header().backing_file) else {
            break;
        };
        let next = canonical(&vireo_block::qcow2::resolve_backing(&cur, &b));
        if chain.contains(&next) {
            break;
        }
        chain.push(next);
    }
    chain
}

/// A storage operation's hold on one file; released when dropped.
pub struct JobClaim<'a> {
    claims: &'a DiskClaims,
    path: PathBuf,
}

impl Drop for JobClaim<'_> {
    fn drop(&mut self) {
        let mut g = self.claims.lock();
        if let Some((n, _)) = g.jobs.get_mut(&self.path) {
            *n -= 1;
            if *n == 0 {
                g.jobs.remove(&self.path);
            }
        }
    }
}

/// A starting domain's hold on its disks: released when dropped unless [`kept`](Self::keep).
pub struct DomainClaim<'a> {
    claims: &'a DiskClaims,
    domain: String,
    keep: bool,
}

impl DomainClaim<'_> {
    /// The domain runs: its disks stay claimed until [`DiskClaims::release_domain`].
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for DomainClaim<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.claims.release_domain(&self.domain);
        }
    }
}

impl DiskClaims {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `disks` (and their backing chains) for `domain`, which is starting; refused
    /// with a message when a storage operation is changing one of them.
    pub fn claim_domain(&self, domain: &str, disks: &[PathBuf]) -> Result<DomainClaim<'_>, String> {
        let files: Vec<PathBuf> = disks.iter().flat_map(|d| with_backing_chain(d)).collect();
        let mut g = self.lock();
        for f in &files {
            if let Some((_, what)) = g.jobs.get(f) {
                return Err(format!("its disk {} is {what}", f.display()));
            }
        }
        g.domains.insert(domain.to_string(), files);
        Ok(DomainClaim {
            claims: self,
            domain: domain.to_string(),
            keep: false,
        })
    }

    /// Records the disks of a domain found running (re-attached after a daemon restart):
    /// it runs already, so nothing can be refused.
    pub fn record_domain(&self, domain: &str, disks: &[PathBuf]) {
        let files: Vec<PathBuf> = disks.iter().flat_map(|d| with_backing_chain(d)).collect();
        self.lock().domains.insert(domain.to_string(), files);
    }

    /// The domain stopped.
    pub fn release_domain(&self, domain: &str) {
        self.lock().domains.remove(domain);
    }

    /// Claims `path` for a storage operation that changes it (`what`: "being uploaded
    /// to"); refused, naming the domain, while a running domain uses it.
    pub fn claim_job(&self, path: &Path, what: &'static str) -> Result<JobClaim<'_>, String> {
        let key = canonical(path);
        let mut g = self.lock();
        let mut users: Vec<&String> = g
            .domains
            .iter()
            .filter(|(_, files)| files.contains(&key))
            .map(|(d, _)| d)
            .collect();
        users.sort();
        if let Some(d) = users.first() {
            return Err(format!(
                "{} is in use by running domain '{d}'",
                path.display()
            ));
        }
        let e = g.jobs.entry(key.clone()).or_insert((0, what));
        e.0 += 1;
        Ok(JobClaim {
            claims: self,
            path: key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_jobs_exclude_each_other() {
        let dir = std::env::temp_dir().join(format!("vireo-claims-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.qcow2");
        let top = dir.join("top.qcow2");
        vireo_block::create(
            &base,
            &vireo_block::CreateOptions {
                format: vireo_block::Format::Qcow2,
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        vireo_block::create(
            &top,
            &vireo_block::CreateOptions {
                format: vireo_block::Format::Qcow2,
                size: 1 << 20,
                backing_file: Some(base.display().to_string()),
                backing_format: Some(vireo_block::Format::Qcow2),
                ..Default::default()
            },
        )
        .unwrap();
        let other = dir.join("other.raw");
        std::fs::write(&other, b"").unwrap();

        let c = DiskClaims::default();
        c.claim_domain("vm1", std::slice::from_ref(&top))
            .unwrap()
            .keep();
        // The disk and its backing file are in use; another file is not.
        for p in [&top, &base] {
            let e = c.claim_job(p, "being resized").err().unwrap();
            assert!(e.contains("running domain 'vm1'"), "{e}");
        }
        // Another spelling of the same file is the same file.
        let e = c
            .claim_job(&dir.join(".").join("base.qcow2"), "being deleted")
            .err()
            .unwrap();
        assert!(e.contains("vm1"), "{e}");
        {
            let _job = c.claim_job(&other, "being uploaded to").unwrap();
            let e = c
                .claim_domain("vm2", std::slice::from_ref(&other))
                .err()
                .unwrap();
            assert!(e.contains("being uploaded to"), "{e}");
        }
        // A failed start (claim dropped without keep) leaves nothing behind.
        drop(c.claim_domain("vm2", std::slice::from_ref(&other)).unwrap());
        drop(c.claim_job(&other, "being deleted").unwrap());
        c.release_domain("vm1");
        assert!(c.claim_job(&base, "being deleted").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
