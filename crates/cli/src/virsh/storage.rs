//! Storage verbs (`pool-*`, `vol-*`): names, arguments and output as virsh's.
//!
//! As in virsh, a pool argument may be given positionally or as `--pool`, and a volume as
//! `NAME --pool POOL` or by its path or key alone (`vol-info /var/lib/vireo/images/a.qcow2`).

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use vireo_api::protocol::storage::*;
use vireo_api::protocol::Empty;
use vireo_api::Client;
use vireo_storage::units::{parse_scaled, pretty_capacity};

use super::domain::read_xml;
use super::{connect, err, print_fields, print_json, print_table, Error, OutputArgs, Result};

/// A pool: `POOL` or `--pool POOL` (name or UUID).
#[derive(Debug, Clone, Args)]
pub struct PoolArg {
    /// Pool name or UUID.
    #[arg(value_name = "POOL", required_unless_present = "pool_opt")]
    pool: Option<String>,
    /// Pool name or UUID (virsh's named form of the argument).
    #[arg(long = "pool", value_name = "POOL", conflicts_with = "pool")]
    pool_opt: Option<String>,
}

impl PoolArg {
    fn get(self) -> String {
        self.pool.or(self.pool_opt).unwrap_or_default()
    }
}

/// A volume: `VOL [--pool POOL]`; without a pool, VOL is a path or key.
#[derive(Debug, Clone, Args)]
pub struct VolArg {
    /// Volume name (with --pool), path or key.
    #[arg(value_name = "VOL")]
    vol: String,
    /// The pool the volume is in (name or UUID).
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
}

impl VolArg {
    fn get(self) -> VolRef {
        VolRef {
            pool: self.pool,
            vol: self.vol,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Define a pool from a name, a type (dir) and a target directory.
    PoolDefineAs {
        name: String,
        /// Pool type: dir.
        #[arg(value_name = "TYPE")]
        pool_type: String,
        /// The directory holding the volumes.
        #[arg(long, value_name = "PATH")]
        target: String,
    },
    /// Define (or update) a pool from an XML file ('-' for stdin).
    PoolDefine { file: PathBuf },
    /// Create an inactive pool's target directory.
    PoolBuild(PoolArg),
    /// Start (activate) a defined pool.
    PoolStart {
        #[command(flatten)]
        p: PoolArg,
        /// Build the pool (create its directory) first.
        #[arg(long)]
        build: bool,
    },
    /// Stop (deactivate) a pool; its volumes stay on disk.
    PoolDestroy(PoolArg),
    /// Start the pool with the daemon (--disable: don't).
    PoolAutostart {
        #[command(flatten)]
        p: PoolArg,
        #[arg(long)]
        disable: bool,
    },
    /// List pools (active ones; --all for every pool).
    PoolList {
        /// Inactive pools too.
        #[arg(long)]
        all: bool,
        /// Only inactive pools.
        #[arg(long)]
        inactive: bool,
        /// Only pools that autostart.
        #[arg(long)]
        autostart: bool,
        /// Only pools that do not autostart.
        #[arg(long, conflicts_with = "autostart")]
        no_autostart: bool,
        /// Persistence, capacity, allocation and available space too.
        #[arg(long)]
        details: bool,
        /// Print only names.
        #[arg(long)]
        name: bool,
        /// Print only UUIDs.
        #[arg(long)]
        uuid: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Information about a pool.
    PoolInfo {
        #[command(flatten)]
        p: PoolArg,
        /// Sizes in bytes.
        #[arg(long)]
        bytes: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Rescan a pool's directory.
    PoolRefresh(PoolArg),
    /// Remove an inactive pool's definition (its directory stays).
    PoolUndefine(PoolArg),
    /// A pool's XML definition.
    PoolDumpxml {
        #[command(flatten)]
        p: PoolArg,
        /// The stored definition rather than the running one.
        #[arg(long)]
        inactive: bool,
    },
    /// Create a volume from a name and a capacity (units: b, KiB, M, G, GB, …; bytes by default).
    VolCreateAs {
        #[arg(value_name = "POOL")]
        pool: String,
        name: String,
        capacity: String,
        /// Allocate this much up front (the whole capacity: fully allocated).
        #[arg(long)]
        allocation: Option<String>,
        /// raw (default) or qcow2.
        #[arg(long)]
        format: Option<String>,
        /// A volume to back the new one (a qcow2 linked clone): name in POOL, path or key.
        #[arg(long, value_name = "VOL")]
        backing_vol: Option<String>,
        /// The backing volume's format (probed when not given).
        #[arg(long, value_name = "FORMAT")]
        backing_vol_format: Option<String>,
        /// qcow2 with its metadata preallocated.
        #[arg(long)]
        prealloc_metadata: bool,
    },
    /// Create a volume from a libvirt volume XML file ('-' for stdin).
    VolCreate {
        #[arg(value_name = "POOL")]
        pool: String,
        file: PathBuf,
        #[arg(long)]
        prealloc_metadata: bool,
    },
    /// List a pool's volumes.
    VolList {
        #[command(flatten)]
        p: PoolArg,
        /// Type, capacity and allocation too.
        #[arg(long)]
        details: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Information about a volume.
    VolInfo {
        #[command(flatten)]
        v: VolArg,
        /// Sizes in bytes.
        #[arg(long)]
        bytes: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A volume's path.
    VolPath(VolArg),
    /// A volume's XML description.
    VolDumpxml(VolArg),
    /// Copy a volume (a standalone copy in the same pool).
    VolClone {
        #[command(flatten)]
        v: VolArg,
        /// Name of the copy.
        newname: String,
        #[arg(long)]
        prealloc_metadata: bool,
    },
    /// Change a volume's capacity.
    VolResize {
        #[command(flatten)]
        v: VolArg,
        /// The new capacity (with --delta: the change).
        capacity: String,
        /// The capacity is added (with --shrink: subtracted).
        #[arg(long)]
        delta: bool,
        /// Allow making the volume smaller (the data beyond is lost).
        #[arg(long)]
        shrink: bool,
        /// Allocate the new space (raw volumes).
        #[arg(long)]
        allocate: bool,
    },
    /// Delete a volume.
    VolDelete(VolArg),
    /// Write a local file into a volume.
    VolUpload {
        #[command(flatten)]
        v: VolArg,
        /// The local file ('-' for stdin).
        file: PathBuf,
        /// Where in the volume to start (bytes).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// At most this many bytes.
        #[arg(long)]
        length: Option<u64>,
    },
    /// Copy a volume's contents to a local file.
    VolDownload {
        #[command(flatten)]
        v: VolArg,
        /// The local file ('-' for stdout).
        file: PathBuf,
        /// Where in the volume to start (bytes).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// At most this many bytes.
        #[arg(long)]
        length: Option<u64>,
    },
}

fn size(what: &str, s: &str) -> Result<u64> {
    parse_scaled(what, s).map_err(|e| Error(e.to_string()))
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn state_word(s: PoolState) -> &'static str {
    match s {
        PoolState::Running => "running",
        PoolState::Inactive => "inactive",
    }
}

fn capacity(v: Option<u64>, bytes: bool) -> String {
    match v {
        Some(v) if bytes => format!("{v} bytes"),
        Some(v) => pretty_capacity(v),
        None => "-".into(),
    }
}

pub fn run(uri: Option<&str>, cmd: StorageCommand) -> Result {
    let mut c = connect(uri)?;
    match cmd {
        StorageCommand::PoolDefineAs {
            name,
            pool_type,
            target,
        } => {
            let r = c.call::<PoolDefineAs>(&PoolDefineAsParams {
                name,
                pool_type,
                target,
            })?;
            println!("Pool {} defined\n", r.name);
        }
        StorageCommand::PoolDefine { file } => {
            let xml = read_xml(&file)?;
            let r = c.call::<PoolDefine>(&PoolDefineParams { xml })?;
            println!("Pool {} defined from {}\n", r.name, file.display());
        }
        StorageCommand::PoolBuild(p) => {
            let pool = p.get();
            c.call::<PoolBuild>(&PoolRef::new(&pool))?;
            println!("Pool {pool} built\n");
        }
        StorageCommand::PoolStart { p, build } => {
            let pool = p.get();
            c.call::<PoolStart>(&PoolStartParams {
                pool: pool.clone(),
                build,
            })?;
            println!("Pool {pool} started\n");
        }
        StorageCommand::PoolDestroy(p) => {
            let pool = p.get();
            c.call::<PoolDestroy>(&PoolRef::new(&pool))?;
            println!("Pool {pool} destroyed\n");
        }
        StorageCommand::PoolAutostart { p, disable } => {
            let pool = p.get();
            c.call::<PoolSetAutostart>(&PoolAutostartParams {
                pool: pool.clone(),
                enable: !disable,
            })?;
            if disable {
                println!("Pool {pool} unmarked as autostarted\n");
            } else {
                println!("Pool {pool} marked as autostarted\n");
            }
        }
        StorageCommand::PoolList {
            all,
            inactive,
            autostart,
            no_autostart,
            details,
            name,
            uuid,
            out,
        } => {
            let r = c.call::<PoolList>(&PoolListParams {
                all,
                inactive,
                autostart: match (autostart, no_autostart) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
            })?;
            if out.json() {
                print_json(&r.pools);
            } else if name || uuid {
                for p in &r.pools {
                    match (name, uuid) {
                        (true, true) => println!("{} {}", p.uuid, p.name),
                        (true, false) => println!("{}", p.name),
                        _ => println!("{}", p.uuid),
                    }
                }
                println!();
            } else if details {
                let rows: Vec<Vec<String>> = r
                    .pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            state_word(p.state).into(),
                            yes_no(p.autostart),
                            yes_no(p.persistent),
                            capacity(p.capacity, false),
                            capacity(p.allocation, false),
                            capacity(p.available, false),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "Name",
                        "State",
                        "Autostart",
                        "Persistent",
                        "Capacity",
                        "Allocation",
                        "Available",
                    ],
                    &rows,
                );
            } else {
                let rows: Vec<Vec<String>> = r
                    .pools
                    .iter()
                    .map(|p| {
                        let state = if p.state.is_active() {
                            "active"
                        } else {
                            "inactive"
                        };
                        vec![p.name.clone(), state.into(), yes_no(p.autostart)]
                    })
                    .collect();
                print_table(&["Name", "State", "Autostart"], &rows);
            }
        }
        StorageCommand::PoolInfo { p, bytes, out } => {
            let i = c.call::<PoolGetInfo>(&PoolRef::new(p.get()))?;
            if out.json() {
                print_json(&i);
                return Ok(());
            }
            let mut f = vec![
                ("Name", i.name.clone()),
                ("UUID", i.uuid.clone()),
                ("State", state_word(i.state).into()),
                ("Persistent", yes_no(i.persistent)),
                ("Autostart", yes_no(i.autostart)),
            ];
            if i.state.is_active() {
                f.push(("Capacity", capacity(i.capacity, bytes)));
                f.push(("Allocation", capacity(i.allocation, bytes)));
                f.push(("Available", capacity(i.available, bytes)));
            }
            print_fields(&f);
        }
        StorageCommand::PoolRefresh(p) => {
            let pool = p.get();
            c.call::<PoolRefresh>(&PoolRef::new(&pool))?;
            println!("Pool {pool} refreshed\n");
        }
        StorageCommand::PoolUndefine(p) => {
            let pool = p.get();
            c.call::<PoolUndefine>(&PoolRef::new(&pool))?;
            println!("Pool {pool} has been undefined\n");
        }
        StorageCommand::PoolDumpxml { p, inactive } => {
            let r = c.call::<PoolGetXml>(&PoolGetXmlParams {
                pool: p.get(),
                inactive,
            })?;
            print!("{}", r.xml);
            if !r.xml.ends_with('\n') {
                println!();
            }
        }
        StorageCommand::VolCreateAs {
            pool,
            name,
            capacity,
            allocation,
            format,
            backing_vol,
            backing_vol_format,
            prealloc_metadata,
        } => {
            let capacity = size("capacity", &capacity)?;
            let allocation = allocation.map(|a| size("allocation", &a)).transpose()?;
            let v = c.call::<VolCreateAs>(&VolCreateAsParams {
                pool,
                name,
                capacity,
                format,
                allocation,
                backing_vol,
                backing_vol_format,
                prealloc_metadata,
            })?;
            println!("Vol {} created\n", v.name);
        }
        StorageCommand::VolCreate {
            pool,
            file,
            prealloc_metadata,
        } => {
            let xml = read_xml(&file)?;
            let v = c.call::<VolCreate>(&VolCreateParams {
                pool,
                xml,
                prealloc_metadata,
            })?;
            println!("Vol {} created from {}\n", v.name, file.display());
        }
        StorageCommand::VolList { p, details, out } => {
            let r = c.call::<VolList>(&VolListParams {
                pool: p.get(),
                details,
            })?;
            if out.json() {
                print_json(&r.volumes);
            } else if details {
                let rows: Vec<Vec<String>> = r
                    .volumes
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            v.path.display().to_string(),
                            v.vol_type.clone(),
                            pretty_capacity(v.capacity),
                            pretty_capacity(v.allocation),
                        ]
                    })
                    .collect();
                print_table(&["Name", "Path", "Type", "Capacity", "Allocation"], &rows);
            } else {
                let rows: Vec<Vec<String>> = r
                    .volumes
                    .iter()
                    .map(|v| vec![v.name.clone(), v.path.display().to_string()])
                    .collect();
                print_table(&["Name", "Path"], &rows);
            }
        }
        StorageCommand::VolInfo { v, bytes, out } => {
            let i = c.call::<VolGetInfo>(&v.get())?;
            if out.json() {
                print_json(&i);
                return Ok(());
            }
            let mut f = vec![
                ("Name", i.name.clone()),
                ("Type", i.vol_type.clone()),
                ("Capacity", capacity(Some(i.capacity), bytes)),
                ("Allocation", capacity(Some(i.allocation), bytes)),
            ];
            // virsh shows the format only through vol-dumpxml; scripts want it here.
            f.push(("Format", i.format.clone()));
            if let Some(b) = &i.backing {
                f.push(("Backing store", b.path.display().to_string()));
            }
            print_fields(&f);
        }
        StorageCommand::VolPath(v) => {
            let r = c.call::<VolGetPath>(&v.get())?;
            println!("{}\n", r.path.display());
        }
        StorageCommand::VolDumpxml(v) => {
            let r = c.call::<VolGetXml>(&v.get())?;
            print!("{}", r.xml);
            if !r.xml.ends_with('\n') {
                println!();
            }
        }
        StorageCommand::VolClone {
            v,
            newname,
            prealloc_metadata,
        } => {
            let vol = v.get();
            let from = vol.vol.clone();
            c.call::<VolClone>(&VolCloneParams {
                vol,
                new_name: newname.clone(),
                prealloc_metadata,
            })?;
            println!("Vol {newname} cloned from {from}\n");
        }
        StorageCommand::VolResize {
            v,
            capacity,
            delta,
            shrink,
            allocate,
        } => {
            let vol = v.get();
            let name = vol.vol.clone();
            // virsh accepts a leading '-' with --shrink --delta.
            let (text, negative) = match capacity.strip_prefix('-') {
                Some(rest) => (rest, true),
                None => (capacity.as_str(), false),
            };
            if negative && !(delta && shrink) {
                return err(format!(
                    "invalid capacity '{capacity}': a negative size needs --delta and --shrink"
                ));
            }
            let bytes = size("capacity", text)?;
            c.call::<VolResize>(&VolResizeParams {
                vol,
                capacity: bytes,
                delta,
                shrink,
                allocate,
            })?;
            if delta {
                println!("Size of volume '{name}' successfully changed by {capacity}\n");
            } else {
                println!("Size of volume '{name}' successfully changed to {capacity}\n");
            }
        }
        StorageCommand::VolDelete(v) => {
            let vol = v.get();
            let name = vol.vol.clone();
            c.call::<VolDelete>(&vol)?;
            println!("Vol {name} deleted\n");
        }
        StorageCommand::VolUpload {
            v,
            file,
            offset,
            length,
        } => upload(&mut c, v.get(), &file, offset, length)?,
        StorageCommand::VolDownload {
            v,
            file,
            offset,
            length,
        } => download(&mut c, v.get(), &file, offset, length)?,
    }
    Ok(())
}

fn upload(c: &mut Client, vol: VolRef, file: &PathBuf, offset: u64, length: Option<u64>) -> Result {
    let params = VolTransferParams {
        vol,
        offset,
        length,
    };
    let name = file.display();
    let r = if file.as_os_str() == "-" {
        c.call_upload::<VolUpload>(&params, &mut std::io::stdin().lock())
    } else {
        let mut f = File::open(file).map_err(|e| Error(format!("cannot open {name}: {e}")))?;
        c.call_upload::<VolUpload>(&params, &mut f)
    };
    r.map_err(|e| match e {
        vireo_api::ClientError::Transfer(e) => Error(format!("cannot read {name}: {e}")),
        e => e.into(),
    })?;
    Ok(())
}

fn download(
    c: &mut Client,
    vol: VolRef,
    file: &PathBuf,
    offset: u64,
    length: Option<u64>,
) -> Result {
    let params = VolTransferParams {
        vol,
        offset,
        length,
    };
    let name = file.display();
    let r = if file.as_os_str() == "-" {
        c.call_download::<VolDownload>(&params, &mut std::io::stdout().lock())
    } else {
        let f = File::create(file).map_err(|e| Error(format!("cannot create {name}: {e}")))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let r = c.call_download::<VolDownload>(&params, &mut w);
        let synced = match &r {
            Ok(_) => w
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all()),
            Err(_) => Ok(()),
        };
        if r.is_err() || synced.is_err() {
            // No partial copy that looks like a complete one.
            let _ = std::fs::remove_file(file);
        }
        synced.map_err(|e| Error(format!("cannot write {name}: {e}")))?;
        r
    };
    r.map_err(|e| match e {
        vireo_api::ClientError::Transfer(e) => Error(format!("cannot write {name}: {e}")),
        e => e.into(),
    })?;
    Ok(())
}

/// Makes sure the default pool runs and returns it (virt-install's `--disk size=`).
pub fn ensure_default_pool(c: &mut Client) -> Result<PoolInfo> {
    Ok(c.call::<PoolEnsureDefault>(&Empty {})?)
}
