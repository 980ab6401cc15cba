//! `vireo img`: qemu-img compatible image tool on top of vireo-block.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;

mod ojson;
use ojson::{Obj, J};
use vireo_block::qcow2::{CheckReport, Qcow2, RepairMode};
use vireo_block::{
    BlockBackend, CreateOptions, Error, ExtentKind, Format, OpenOptions, Preallocation,
};

mod bench;
mod fmt;
pub use fmt::{parse_size, size_to_str};

#[derive(Debug, Subcommand)]
pub enum ImgCommand {
    /// Create a new disk image.
    Create(CreateArgs),
    /// Show information about an image.
    Info(InfoArgs),
    /// Check an image for consistency (qcow2).
    Check(CheckArgs),
    /// Convert an image to another format.
    Convert(ConvertArgs),
    /// Change the virtual size of an image.
    Resize(ResizeArgs),
    /// Create, list, apply or delete internal snapshots.
    Snapshot(SnapshotArgs),
    /// Dump the allocation map of an image.
    Map(MapArgs),
    /// Compare the contents of two images.
    Compare(CompareArgs),
    /// Change the backing file of an image.
    Rebase(RebaseArgs),
    /// Commit an image's changes into its backing file.
    Commit(CommitArgs),
    /// Calculate the file size required for a new image.
    Measure(MeasureArgs),
    /// Run a simple I/O benchmark on an image.
    Bench(bench::BenchArgs),
    /// (test hook) Random writes with flushes, reporting each flush.
    #[command(hide = true)]
    CrashWriter(CrashWriterArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(short = 'f', default_value = "raw")]
    pub fmt: String,
    #[arg(short = 'o')]
    pub options: Vec<String>,
    #[arg(short = 'b')]
    pub backing: Option<String>,
    #[arg(short = 'F')]
    pub backing_fmt: Option<String>,
    #[arg(short = 'u')]
    pub unsafe_: bool,
    #[arg(short = 'q')]
    pub quiet: bool,
    pub filename: PathBuf,
    pub size: Option<String>,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(long = "output", default_value = "human")]
    pub output: String,
    #[arg(long = "backing-chain")]
    pub backing_chain: bool,
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    pub filename: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(short = 'r')]
    pub repair: Option<String>,
    #[arg(long = "output", default_value = "human")]
    pub output: String,
    #[arg(short = 'q')]
    pub quiet: bool,
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    pub filename: PathBuf,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(short = 'O', default_value = "raw")]
    pub out_fmt: String,
    #[arg(short = 'c')]
    pub compress: bool,
    #[arg(short = 'p')]
    pub progress: bool,
    #[arg(short = 'S')]
    pub sparse: Option<String>,
    #[arg(short = 't')]
    pub cache: Option<String>,
    #[arg(short = 'T')]
    pub src_cache: Option<String>,
    #[arg(short = 'o')]
    pub options: Vec<String>,
    #[arg(short = 'n')]
    pub no_create: bool,
    /// Backing file of the target: only data differing from it is written.
    #[arg(short = 'B')]
    pub backing: Option<String>,
    #[arg(short = 'F')]
    pub backing_fmt: Option<String>,
    /// Accepted for compatibility (parallel coroutines); requests are
    /// issued sequentially.
    #[arg(short = 'm')]
    pub coroutines: Option<u32>,
    /// Accepted for compatibility (out-of-order writes).
    #[arg(short = 'W')]
    pub out_of_order: bool,
    #[arg(short = 'q')]
    pub quiet: bool,
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    pub src: PathBuf,
    pub dst: PathBuf,
}

#[derive(Debug, Args)]
pub struct ResizeArgs {
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(long)]
    pub shrink: bool,
    #[arg(short = 'q')]
    pub quiet: bool,
    pub filename: PathBuf,
    #[arg(allow_hyphen_values = true)]
    pub size: String,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[arg(short = 'c')]
    pub create: Option<String>,
    #[arg(short = 'l')]
    pub list: bool,
    #[arg(short = 'a')]
    pub apply: Option<String>,
    #[arg(short = 'd')]
    pub delete: Option<String>,
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(short = 'q')]
    pub quiet: bool,
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    pub filename: PathBuf,
}

#[derive(Debug, Args)]
pub struct MapArgs {
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(long = "start-offset")]
    pub start_offset: Option<String>,
    #[arg(long = "max-length")]
    pub max_length: Option<String>,
    #[arg(long = "output", default_value = "human")]
    pub output: String,
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    pub filename: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[arg(short = 'f')]
    pub fmt1: Option<String>,
    #[arg(short = 'F')]
    pub fmt2: Option<String>,
    #[arg(short = 's')]
    pub strict: bool,
    #[arg(short = 'q')]
    pub quiet: bool,
    #[arg(short = 'p')]
    pub progress: bool,
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    pub file1: PathBuf,
    pub file2: PathBuf,
}

#[derive(Debug, Args)]
pub struct RebaseArgs {
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(short = 'b')]
    pub backing: String,
    #[arg(short = 'F')]
    pub backing_fmt: Option<String>,
    #[arg(short = 'u')]
    pub unsafe_: bool,
    #[arg(short = 'q')]
    pub quiet: bool,
    #[arg(short = 'p')]
    pub progress: bool,
    pub filename: PathBuf,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(short = 'd')]
    pub keep: bool,
    #[arg(short = 'q')]
    pub quiet: bool,
    #[arg(short = 'p')]
    pub progress: bool,
    pub filename: PathBuf,
}

#[derive(Debug, Args)]
pub struct MeasureArgs {
    #[arg(long = "size")]
    pub size: Option<String>,
    #[arg(short = 'O', default_value = "raw")]
    pub out_fmt: String,
    #[arg(short = 'f')]
    pub fmt: Option<String>,
    #[arg(short = 'o')]
    pub options: Vec<String>,
    #[arg(long = "output", default_value = "human")]
    pub output: String,
    pub filename: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CrashWriterArgs {
    pub filename: PathBuf,
    pub seed: u64,
    pub iterations: u64,
}

/// Error of a verb: message for stderr plus exit code.
struct Fail(String, u8);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail(e.to_string(), 1)
    }
}

type R<T> = std::result::Result<T, Fail>;

fn fail<T>(msg: impl Into<String>) -> R<T> {
    Err(Fail(msg.into(), 1))
}

/// Runs one `vireo img` verb; returns the process exit code (qemu-img's).
pub fn run(cmd: ImgCommand) -> ExitCode {
    let r = match cmd {
        ImgCommand::Create(a) => create(a),
        ImgCommand::Info(a) => info(a),
        ImgCommand::Check(a) => check(a),
        ImgCommand::Convert(a) => convert(a),
        ImgCommand::Resize(a) => resize(a),
        ImgCommand::Snapshot(a) => snapshot(a),
        ImgCommand::Map(a) => map(a),
        ImgCommand::Compare(a) => compare(a),
        ImgCommand::Rebase(a) => rebase(a),
        ImgCommand::Commit(a) => commit(a),
        ImgCommand::Measure(a) => measure(a),
        ImgCommand::Bench(a) => bench::bench(a).map_err(|e| Fail(e, 1)),
        ImgCommand::CrashWriter(a) => crash_writer(a),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(Fail(msg, code)) => {
            eprintln!("vireo img: {msg}");
            ExitCode::from(code)
        }
    }
}

fn parse_fmt(s: &Option<String>) -> R<Option<Format>> {
    match s {
        Some(f) => Ok(Some(Format::from_name(f)?)),
        None => Ok(None),
    }
}

fn open(path: &Path, fmt: &Option<String>, read_only: bool) -> R<Arc<dyn BlockBackend>> {
    let opts = OpenOptions {
        format: parse_fmt(fmt)?,
        read_only,
        ..Default::default()
    };
    Ok(vireo_block::open(path, &opts)?)
}

/// Splits `-o a=b,c=d` lists (qemu escapes commas as ",,").
fn parse_options(opts: &[String]) -> R<Vec<(String, String)>> {
    let mut out = Vec::new();
    for o in opts {
        let joined = o.replace(",,", "\u{1}");
        for kv in joined.split(',') {
            if kv.is_empty() {
                continue;
            }
            let kv = kv.replace('\u{1}', ",");
            match kv.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), v.to_string())),
                None => out.push((kv.to_string(), "on".to_string())),
            }
        }
    }
    Ok(out)
}

fn parse_bool(k: &str, v: &str) -> R<bool> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => fail(format!("Parameter '{k}' expects 'on' or 'off'")),
    }
}

fn create_options(fmt: Format, opts: &[String]) -> R<CreateOptions> {
    let mut c = CreateOptions {
        format: fmt,
        ..Default::default()
    };
    for (k, v) in parse_options(opts)? {
        match k.as_str() {
            "size" => c.size = parse_size(&v).map_err(|e| Fail(e, 1))?,
            "cluster_size" => c.cluster_size = parse_size(&v).map_err(|e| Fail(e, 1))? as u32,
            "backing_file" => c.backing_file = Some(v),
            "backing_fmt" => c.backing_format = Some(Format::from_name(&v)?),
            "preallocation" => {
                c.preallocation = match v.as_str() {
                    "off" => Preallocation::Off,
                    "metadata" => Preallocation::Metadata,
                    "full" | "falloc" => Preallocation::Full,
                    _ => return fail(format!("Invalid parameter '{v}' for preallocation")),
                }
            }
            "compat" => {
                c.version = match v.as_str() {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => return fail(format!("Invalid compatibility level: '{v}'")),
                }
            }
            "lazy_refcounts" => c.lazy_refcounts = parse_bool(&k, &v)?,
            "refcount_bits" => {
                c.refcount_bits = v
                    .parse()
                    .map_err(|_| Fail(format!("Invalid refcount_bits '{v}'"), 1))?
            }
            "compression_type" if v == "zlib" => {}
            "extended_l2" if v == "off" => {}
            _ if fmt == Format::Raw => {
                return fail(format!("Invalid parameter '{k}' for format raw"))
            }
            _ => {
                return fail(format!(
                    "Invalid parameter '{k}' (not supported yet: {k}={v})"
                ))
            }
        }
    }
    Ok(c)
}

fn create(a: CreateArgs) -> R<u8> {
    let fmt = Format::from_name(&a.fmt)?;
    let mut c = create_options(fmt, &a.options)?;
    if let Some(b) = a.backing {
        c.backing_file = Some(b);
    }
    if let Some(f) = &a.backing_fmt {
        c.backing_format = Some(Format::from_name(f)?);
    }
    let size = match &a.size {
        Some(s) => Some(parse_size(s).map_err(|e| Fail(e, 1))?),
        None => None,
    };
    if let Some(b) = &c.backing_file {
        let bpath = vireo_block::qcow2::resolve_backing(&a.filename, b);
        if !a.unsafe_ || size.is_none() {
            let img = vireo_block::open(
                &bpath,
                &OpenOptions {
                    format: c.backing_format,
                    read_only: true,
                    ..Default::default()
                },
            )
            .map_err(|e| Fail(format!("Could not open backing image: {e}"), 1))?;
            if c.backing_format.is_none() {
                c.backing_format = Some(img.format());
            }
            if size.is_none() {
                c.size = img.size();
            }
        }
    }
    if let Some(s) = size {
        c.size = s;
    } else if c.backing_file.is_none() && !a.options.iter().any(|o| o.contains("size=")) {
        return fail("Image creation needs a size parameter");
    }
    if !a.quiet {
        let mut line = format!("Formatting '{}', fmt={}", a.filename.display(), fmt);
        if fmt == Format::Qcow2 {
            line += &format!(
                " cluster_size={} extended_l2=off compression_type=zlib",
                c.cluster_size
            );
        }
        line += &format!(" size={}", c.size);
        if let Some(b) = &c.backing_file {
            line += &format!(" backing_file={b}");
        }
        if let Some(f) = c.backing_format {
            line += &format!(" backing_fmt={f}");
        }
        if fmt == Format::Qcow2 {
            line += &format!(
                " lazy_refcounts={} refcount_bits={}",
                if c.lazy_refcounts { "on" } else { "off" },
                c.refcount_bits
            );
        }
        println!("{line}");
    }
    vireo_block::create(&a.filename, &c)?;
    Ok(0)
}

fn pretty(v: &impl serde::Serialize) -> String {
    let mut out = Vec::new();
    let f = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, f);
    serde::Serialize::serialize(v, &mut ser).ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn snapshot_json(s: &vireo_block::qcow2::Snapshot) -> J {
    let mut m = Obj::new();
    if let Some(i) = s.icount {
        m.insert("icount", json!(i));
    }
    m.insert("vm-clock-nsec", json!(s.vm_clock_nsec % 1_000_000_000));
    m.insert("name", json!(s.name));
    m.insert("date-sec", json!(s.date_sec));
    m.insert("date-nsec", json!(s.date_nsec));
    m.insert("vm-clock-sec", json!(s.vm_clock_nsec / 1_000_000_000));
    m.insert("id", json!(s.id));
    m.insert("vm-state-size", json!(s.vm_state_size));
    J::O(m)
}

fn snapshot_table(snaps: &[vireo_block::qcow2::Snapshot]) -> String {
    let mut s = String::from("Snapshot list:\n");
    s += &format!(
        "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}\n",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    );
    for sn in snaps {
        let ns = sn.vm_clock_nsec;
        let secs = ns / 1_000_000_000;
        let clock = format!(
            "{:02}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (ns / 1_000_000) % 1000
        );
        let icount = sn.icount.map(|i| i.to_string()).unwrap_or_default();
        s += &format!(
            "{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}\n",
            sn.id,
            sn.name,
            size_to_str(sn.vm_state_size),
            fmt::local_date(sn.date_sec as i64),
            clock,
            icount
        );
    }
    s
}

fn info_one(img: &dyn BlockBackend) -> (J, String) {
    let mut h = String::new();
    let name = img.filename().display().to_string();
    h += &format!("image: {name}\nfile format: {}\n", img.format());
    h += &format!(
        "virtual size: {} ({} bytes)\n",
        size_to_str(img.size()),
        img.size()
    );
    h += &format!("disk size: {}\n", size_to_str(img.actual_size()));
    let q = img.as_qcow2();
    let hdr = q.map(|q| q.header());
    let snaps = q.map(|q| q.snapshots()).unwrap_or_default();
    let backing = hdr
        .as_ref()
        .and_then(|hd| hd.backing_file.clone())
        .map(|b| {
            let full = vireo_block::qcow2::resolve_backing(img.filename(), &b);
            (b, full.display().to_string())
        });
    if let Some(hdr) = &hdr {
        h += &format!("cluster_size: {}\n", hdr.cluster_size());
        if let Some((b, full)) = &backing {
            if full != b {
                h += &format!("backing file: {b} (actual path: {full})\n");
            } else {
                h += &format!("backing file: {b}\n");
            }
            if let Some(f) = &hdr.backing_format {
                h += &format!("backing file format: {f}\n");
            }
        }
    }
    if !snaps.is_empty() {
        h += &snapshot_table(&snaps);
    }
    // JSON, keys in qemu-img's order.
    let mut m = Obj::new();
    if let Some(f) = hdr.as_ref().and_then(|hd| hd.backing_format.clone()) {
        m.insert("backing-filename-format", json!(f));
    }
    if !snaps.is_empty() {
        m.insert("snapshots", J::A(snaps.iter().map(snapshot_json).collect()));
    }
    m.insert("virtual-size", json!(img.size()));
    m.insert("filename", json!(name));
    if let Some(hdr) = &hdr {
        m.insert("cluster-size", json!(hdr.cluster_size()));
    }
    m.insert("format", json!(img.format().name()));
    m.insert("actual-size", json!(img.actual_size()));
    if let Some(hdr) = &hdr {
        let mut d = Obj::new();
        h += "Format specific information:\n";
        if hdr.version >= 3 {
            let lazy = hdr.compatible & 1 != 0;
            let corrupt = hdr.incompatible & 2 != 0;
            h += &format!(
                "    compat: 1.1\n    compression type: zlib\n    lazy refcounts: {lazy}\n    refcount bits: {}\n    corrupt: {corrupt}\n    extended l2: false\n",
                1u32 << hdr.refcount_order
            );
            d.insert("compat", json!("1.1"));
            d.insert("compression-type", json!("zlib"));
            d.insert("lazy-refcounts", json!(lazy));
            d.insert("refcount-bits", json!(1u32 << hdr.refcount_order));
            d.insert("corrupt", json!(corrupt));
            d.insert("extended-l2", json!(false));
        } else {
            h += "    compat: 0.10\n    compression type: zlib\n    refcount bits: 16\n";
            d.insert("compat", json!("0.10"));
            d.insert("compression-type", json!("zlib"));
            d.insert("refcount-bits", json!(16));
        }
        let mut fs = Obj::new();
        fs.insert("type", json!("qcow2"));
        fs.insert("data", d);
        m.insert("format-specific", fs);
    }
    if let Some((b, full)) = &backing {
        m.insert("full-backing-filename", json!(full));
        m.insert("backing-filename", json!(b));
    }
    let dirty = hdr.as_ref().is_some_and(|hd| hd.incompatible & 1 != 0);
    m.insert("dirty-flag", json!(dirty));
    (J::O(m), h)
}

fn info(a: InfoArgs) -> R<u8> {
    let opts = OpenOptions {
        format: parse_fmt(&a.fmt)?,
        read_only: true,
        open_backing: a.backing_chain,
        ..Default::default()
    };
    let img = vireo_block::open(&a.filename, &opts)?;
    let mut chain: Vec<Arc<dyn BlockBackend>> = vec![img.clone()];
    if a.backing_chain {
        let mut cur = img;
        while let Some(b) = cur.backing().cloned() {
            chain.push(b.clone());
            cur = b;
        }
    }
    let infos: Vec<(J, String)> = chain.iter().map(|i| info_one(i.as_ref())).collect();
    match a.output.as_str() {
        "json" => {
            if a.backing_chain {
                let v = J::A(infos.into_iter().map(|(v, _)| v).collect());
                println!("{}", pretty(&v));
            } else if let Some((v, _)) = infos.into_iter().next() {
                println!("{}", pretty(&v));
            }
        }
        "human" => {
            let texts: Vec<String> = infos.into_iter().map(|(_, h)| h).collect();
            print!("{}", texts.join("\n"));
        }
        o => {
            return fail(format!(
                "--output must be used with human or json as argument (got {o})"
            ))
        }
    }
    Ok(0)
}

fn check_human(r: &CheckReport) {
    for m in &r.messages {
        eprintln!("{m}");
    }
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        println!("No errors were found on the image.");
    } else {
        if r.corruptions > 0 {
            println!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
                r.corruptions
            );
        }
        if r.leaks > 0 {
            println!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.",
                r.leaks
            );
        }
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        println!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            r.allocated_clusters,
            r.total_clusters,
            r.allocated_clusters as f64 * 100.0 / r.total_clusters as f64,
            r.fragmented_clusters as f64 * 100.0 / r.allocated_clusters as f64,
            r.compressed_clusters as f64 * 100.0 / r.allocated_clusters as f64
        );
    }
    if r.image_end_offset != 0 {
        println!("Image end offset: {}", r.image_end_offset);
    }
}

fn check_json(r: &CheckReport, file: &Path) -> J {
    // Key order as printed by qemu-img.
    let mut m = Obj::new();
    m.insert("image-end-offset", json!(r.image_end_offset));
    if r.compressed_clusters > 0 {
        m.insert("compressed-clusters", json!(r.compressed_clusters));
    }
    m.insert("total-clusters", json!(r.total_clusters));
    if r.corruptions > 0 {
        m.insert("corruptions", json!(r.corruptions));
    }
    if r.corruptions_fixed > 0 {
        m.insert("corruptions-fixed", json!(r.corruptions_fixed));
    }
    m.insert("check-errors", json!(r.check_errors));
    if r.leaks > 0 {
        m.insert("leaks", json!(r.leaks));
    }
    if r.leaks_fixed > 0 {
        m.insert("leaks-fixed", json!(r.leaks_fixed));
    }
    if r.allocated_clusters > 0 {
        m.insert("allocated-clusters", json!(r.allocated_clusters));
    }
    m.insert("filename", json!(file.display().to_string()));
    m.insert("format", json!("qcow2"));
    if r.fragmented_clusters > 0 {
        m.insert("fragmented-clusters", json!(r.fragmented_clusters));
    }
    J::O(m)
}

fn check(a: CheckArgs) -> R<u8> {
    let fmt = match parse_fmt(&a.fmt)? {
        Some(f) => f,
        None => vireo_block::probe(&a.filename)?,
    };
    if fmt != Format::Qcow2 {
        return Err(Fail("This image format does not support checks".into(), 63));
    }
    let mode = match a.repair.as_deref() {
        None => RepairMode::None,
        Some("leaks") => RepairMode::Leaks,
        Some("all") => RepairMode::All,
        Some(o) => return fail(format!("Invalid option for -r: '{o}' (use leaks or all)")),
    };
    let (before, after) =
        Qcow2::check_path(&a.filename, mode).map_err(|e| Fail(e.to_string(), 1))?;
    let fin = after.as_ref().unwrap_or(&before);
    if !a.quiet {
        if a.output == "json" {
            let mut r = fin.clone();
            r.leaks_fixed = before.leaks_fixed;
            r.corruptions_fixed = before.corruptions_fixed;
            println!("{}", pretty(&check_json(&r, &a.filename)));
        } else {
            if after.is_some() {
                for m in &before.messages {
                    eprintln!("Repairing {m}");
                }
                if before.leaks_fixed > 0 || before.corruptions_fixed > 0 {
                    println!(
                        "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...",
                        before.leaks_fixed, before.corruptions_fixed
                    );
                }
            }
            check_human(fin);
        }
    }
    Ok(if fin.corruptions > 0 {
        2
    } else if fin.leaks > 0 {
        3
    } else {
        0
    })
}

fn progress(quiet: bool, on: bool, done: u64, total: u64) {
    if on && !quiet {
        let p = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        eprint!("    ({p:.2}/100%)\r");
    }
}

fn convert(a: ConvertArgs) -> R<u8> {
    let src = open(&a.src, &a.fmt, true)?;
    let ofmt = Format::from_name(&a.out_fmt)?;
    let size = src.size();
    let mut copts = create_options(ofmt, &a.options)?;
    copts.size = size;
    if let Some(b) = &a.backing {
        copts.backing_file = Some(b.clone());
    }
    if let Some(f) = &a.backing_fmt {
        copts.backing_format = Some(Format::from_name(f)?);
    }
    if let Some(b) = &copts.backing_file {
        if ofmt != Format::Qcow2 {
            return fail(format!(
                "Backing file not supported for file format '{ofmt}'"
            ));
        }
        if copts.backing_format.is_none() {
            let bp = vireo_block::qcow2::resolve_backing(&a.dst, b);
            copts.backing_format = Some(vireo_block::probe(&bp)?);
        }
    }
    let with_backing = copts.backing_file.is_some();
    if a.compress && ofmt != Format::Qcow2 {
        return fail("Compression not supported for this file format");
    }
    let min_sparse = match &a.sparse {
        Some(s) => parse_size(s).map_err(|e| Fail(e, 1))?,
        None => 4096,
    };
    if !a.no_create {
        vireo_block::create(&a.dst, &copts)?;
    }
    let dst = vireo_block::open(
        &a.dst,
        &OpenOptions {
            format: Some(ofmt),
            read_only: false,
            open_backing: with_backing,
            ..Default::default()
        },
    )?;
    if dst.size() < size {
        return fail("Target image is smaller than the source");
    }
    let q = dst.as_qcow2();
    let chunk: u64 = match (a.compress, q) {
        (true, Some(q)) => q.cluster_size(),
        _ => 1 << 20,
    };
    let mut buf = vec![0u8; chunk as usize];
    let mut off = 0u64;
    progress(a.quiet, a.progress, 0, size);
    let mut old = vec![0u8; chunk as usize];
    while off < size {
        if with_backing && !a.compress {
            // Write only what differs from the target's backing chain.
            let n = (size - off).min(chunk) as usize;
            src.read_at(&mut buf[..n], off)?;
            dst.read_at(&mut old[..n], off)?;
            let gran = 64 << 10;
            let mut i = 0;
            while i < n {
                let e = (i + gran).min(n);
                if buf[i..e] != old[i..e] {
                    if buf[i..e].iter().all(|&x| x == 0) {
                        dst.write_zeroes(off + i as u64, (e - i) as u64)?;
                    } else {
                        dst.write_at(&buf[i..e], off + i as u64)?;
                    }
                }
                i = e;
            }
            off += n as u64;
            progress(a.quiet, a.progress, off, size);
            continue;
        }
        let ext = src.block_status(off, (size - off).min(chunk))?;
        let n = ext.length;
        if ext.kind != ExtentKind::Data {
            if a.no_create {
                dst.write_zeroes(off, n)?;
            }
            off += n;
            continue;
        }
        let b = &mut buf[..n as usize];
        src.read_at(b, off)?;
        if a.compress {
            if let Some(q) = q {
                if b.iter().any(|&x| x != 0) {
                    if off % chunk == 0 && (n == chunk || off + n == size) {
                        q.write_compressed(b, off)?;
                    } else {
                        dst.write_at(b, off)?;
                    }
                }
            }
        } else if min_sparse == 0 {
            dst.write_at(b, off)?;
        } else {
            // Skip runs of zeroes of at least `min_sparse` bytes.
            let gran = min_sparse.clamp(512, chunk) as usize;
            let mut i = 0usize;
            while i < b.len() {
                let end = (i + gran).min(b.len());
                let piece = &b[i..end];
                if piece.iter().any(|&x| x != 0) {
                    dst.write_at(piece, off + i as u64)?;
                } else if a.no_create {
                    dst.write_zeroes(off + i as u64, piece.len() as u64)?;
                }
                i = end;
            }
        }
        off += n;
        progress(a.quiet, a.progress, off, size);
    }
    dst.flush()?;
    if a.progress && !a.quiet {
        eprintln!("    (100.00/100%)");
    }
    Ok(0)
}

fn resize(a: ResizeArgs) -> R<u8> {
    let img = open(&a.filename, &a.fmt, false)?;
    let cur = img.size();
    let s = a.size.as_str();
    let new = if let Some(r) = s.strip_prefix('+') {
        cur.checked_add(parse_size(r).map_err(|e| Fail(e, 1))?)
            .ok_or_else(|| Fail("size overflow".into(), 1))?
    } else if let Some(r) = s.strip_prefix('-') {
        cur.checked_sub(parse_size(r).map_err(|e| Fail(e, 1))?)
            .ok_or_else(|| Fail("New image size must be positive".into(), 1))?
    } else {
        parse_size(s).map_err(|e| Fail(e, 1))?
    };
    if new < cur && !a.shrink {
        return fail("Use the --shrink option to perform a shrink operation.");
    }
    img.resize(new)?;
    img.flush()?;
    if !a.quiet {
        println!("Image resized.");
    }
    Ok(0)
}

fn snapshot(a: SnapshotArgs) -> R<u8> {
    let ro = a.list;
    let img = vireo_block::open(
        &a.filename,
        &OpenOptions {
            format: parse_fmt(&a.fmt)?,
            read_only: ro,
            open_backing: false,
            ..Default::default()
        },
    )?;
    let Some(q) = img.as_qcow2() else {
        return fail(format!(
            "Could not open '{}': snapshots are only supported for qcow2",
            a.filename.display()
        ));
    };
    if let Some(n) = &a.create {
        q.snapshot_create(n)?;
    } else if let Some(n) = &a.apply {
        q.snapshot_apply(n)?;
    } else if let Some(n) = &a.delete {
        q.snapshot_delete(n)?;
    } else {
        let snaps = q.snapshots();
        if !snaps.is_empty() {
            print!("{}", snapshot_table(&snaps));
        }
    }
    Ok(0)
}

struct MapEntry {
    start: u64,
    length: u64,
    depth: u32,
    present: bool,
    zero: bool,
    data: bool,
    compressed: bool,
    offset: Option<u64>,
}

fn map_entries(img: &dyn BlockBackend, start: u64, max_len: Option<u64>) -> R<Vec<MapEntry>> {
    let size = match max_len {
        Some(l) => img.size().min(start.saturating_add(l)),
        None => img.size(),
    };
    let mut out: Vec<MapEntry> = Vec::new();
    let mut off = start.min(size);
    while off < size {
        let e = img.block_status(off, (size - off).min(1 << 30))?;
        let me = MapEntry {
            start: off,
            length: e.length,
            depth: e.depth,
            present: e.kind != ExtentKind::Unallocated,
            zero: e.kind != ExtentKind::Data,
            data: e.kind == ExtentKind::Data || e.host_offset.is_some(),
            compressed: e.compressed,
            offset: if e.compressed { None } else { e.host_offset },
        };
        off += e.length.max(1);
        if let Some(l) = out.last_mut() {
            let contiguous = match (l.offset, me.offset) {
                (Some(a), Some(b)) => a + l.length == b,
                (None, None) => true,
                _ => false,
            };
            if l.depth == me.depth
                && l.present == me.present
                && l.zero == me.zero
                && l.data == me.data
                && l.compressed == me.compressed
                && contiguous
            {
                l.length += me.length;
                continue;
            }
        }
        out.push(me);
    }
    Ok(out)
}

fn map(a: MapArgs) -> R<u8> {
    let img = open(&a.filename, &a.fmt, true)?;
    let parse = |v: &Option<String>| -> R<Option<u64>> {
        v.as_deref()
            .map(|x| parse_size(x).map_err(|e| Fail(e, 1)))
            .transpose()
    };
    let start = parse(&a.start_offset)?.unwrap_or(0);
    let entries = map_entries(img.as_ref(), start, parse(&a.max_length)?)?;
    if a.output == "json" {
        let lines: Vec<String> = entries
            .iter()
            .map(|e| {
                let mut s = format!(
                    "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                    e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
                );
                if let Some(o) = e.offset {
                    s += &format!(", \"offset\": {o}");
                }
                s + "}"
            })
            .collect();
        println!("[{}]", lines.join(",\n"));
    } else {
        println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
        for e in &entries {
            if e.compressed {
                return fail("File contains external, encrypted or compressed clusters.");
            }
            if let (true, false, Some(o)) = (e.data, e.zero, e.offset) {
                let mut layer: Arc<dyn BlockBackend> = img.clone();
                for _ in 0..e.depth {
                    if let Some(b) = layer.backing().cloned() {
                        layer = b;
                    }
                }
                let hex = |v: u64| {
                    if v == 0 {
                        "0".to_string()
                    } else {
                        format!("{v:#x}")
                    }
                };
                println!(
                    "{:<16}{:<16}{:<16}{}",
                    hex(e.start),
                    hex(e.length),
                    hex(o),
                    layer.filename().display()
                );
            }
        }
    }
    Ok(0)
}

fn compare(a: CompareArgs) -> R<u8> {
    let r = (|| -> R<u8> {
        let i1 = open(&a.file1, &a.fmt1, true)?;
        let i2 = open(&a.file2, &a.fmt2, true)?;
        let (s1, s2) = (i1.size(), i2.size());
        if a.strict && s1 != s2 {
            if !a.quiet {
                println!("Strict mode: Image size mismatch!");
            }
            return Ok(1);
        }
        let common = s1.min(s2);
        let chunk = 1u64 << 20;
        let mut b1 = vec![0u8; chunk as usize];
        let mut b2 = vec![0u8; chunk as usize];
        let mut off = 0;
        while off < common {
            let n = (common - off).min(chunk) as usize;
            i1.read_at(&mut b1[..n], off)?;
            i2.read_at(&mut b2[..n], off)?;
            if let Some(p) = b1[..n].iter().zip(&b2[..n]).position(|(x, y)| x != y) {
                if !a.quiet {
                    println!("Content mismatch at offset {}!", off + p as u64);
                }
                return Ok(1);
            }
            off += n as u64;
        }
        if s1 != s2 {
            if !a.quiet {
                println!("Warning: Image size mismatch!");
            }
            let bigger = if s1 > s2 { &i1 } else { &i2 };
            let end = s1.max(s2);
            while off < end {
                let n = (end - off).min(chunk) as usize;
                bigger.read_at(&mut b1[..n], off)?;
                if let Some(p) = b1[..n].iter().position(|&x| x != 0) {
                    if !a.quiet {
                        println!("Content mismatch at offset {}!", off + p as u64);
                    }
                    return Ok(1);
                }
                off += n as u64;
            }
        }
        if !a.quiet {
            println!("Images are identical.");
        }
        Ok(0)
    })();
    // compare reports errors with exit code 2
    r.map_err(|Fail(m, _)| Fail(m, 2))
}

fn rebase(a: RebaseArgs) -> R<u8> {
    let new_fmt = parse_fmt(&a.backing_fmt)?;
    let img = vireo_block::open(
        &a.filename,
        &OpenOptions {
            format: parse_fmt(&a.fmt)?,
            read_only: false,
            open_backing: !a.unsafe_,
            ..Default::default()
        },
    )?;
    let Some(q) = img.as_qcow2() else {
        return fail("rebase is only supported for qcow2 images");
    };
    let new_name = (!a.backing.is_empty()).then_some(a.backing.as_str());
    let mut fmt_name = new_fmt.map(|f| f.name().to_string());
    if !a.unsafe_ {
        let new_backing = match new_name {
            Some(n) => {
                let p = vireo_block::qcow2::resolve_backing(&a.filename, n);
                Some(vireo_block::open(
                    &p,
                    &OpenOptions {
                        format: new_fmt,
                        read_only: true,
                        ..Default::default()
                    },
                )?)
            }
            None => None,
        };
        if fmt_name.is_none() {
            fmt_name = new_backing.as_ref().map(|b| b.format().name().to_string());
        }
        let size = img.size();
        let cs = q.cluster_size();
        let mut old = vec![0u8; cs as usize];
        let mut new = vec![0u8; cs as usize];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(cs) as usize;
            if !q.is_allocated_here(off)? {
                // Current content comes from the old backing chain.
                img.read_at(&mut old[..n], off)?;
                match &new_backing {
                    Some(b) => {
                        let bs = b.size();
                        new[..n].fill(0);
                        if off < bs {
                            let m = ((bs - off) as usize).min(n);
                            b.read_at(&mut new[..m], off)?;
                        }
                    }
                    None => new[..n].fill(0),
                }
                if old[..n] != new[..n] {
                    img.write_at(&old[..n], off)?;
                }
            }
            off += n as u64;
            progress(a.quiet, a.progress, off, size);
        }
        img.flush()?;
    }
    q.set_backing(new_name, fmt_name.as_deref())?;
    Ok(0)
}

fn commit(a: CommitArgs) -> R<u8> {
    let top = open(&a.filename, &a.fmt, false)?;
    let Some(q) = top.as_qcow2() else {
        return fail("commit is only supported for qcow2 images");
    };
    let hdr = q.header();
    let Some(bname) = hdr.backing_file.clone() else {
        return fail(format!(
            "Image '{}' does not have a backing file",
            a.filename.display()
        ));
    };
    let bpath = vireo_block::qcow2::resolve_backing(&a.filename, &bname);
    let bfmt = match &hdr.backing_format {
        Some(f) => Some(Format::from_name(f)?),
        None => None,
    };
    let base = vireo_block::open(
        &bpath,
        &OpenOptions {
            format: bfmt,
            read_only: false,
            ..Default::default()
        },
    )?;
    let size = top.size();
    if base.size() < size {
        base.resize(size)?;
    }
    let mut off = 0;
    let mut buf = vec![0u8; 1 << 20];
    while off < size {
        let e = top.block_status(off, (size - off).min(1 << 20))?;
        if e.depth == 0 && e.kind != ExtentKind::Unallocated {
            if e.kind == ExtentKind::Zero {
                base.write_zeroes(off, e.length)?;
            } else {
                let b = &mut buf[..e.length as usize];
                top.read_at(b, off)?;
                base.write_at(b, off)?;
            }
        }
        off += e.length;
        progress(a.quiet, a.progress, off, size);
    }
    base.flush()?;
    if !a.keep {
        q.make_empty()?;
    }
    if !a.quiet {
        println!("Image committed.");
    }
    Ok(0)
}

/// Metadata size of a fully allocated qcow2 image (qemu's formula).
fn qcow2_meta_size(vsize: u64, cs: u64, refcount_order: u32) -> u64 {
    let aligned = vsize.div_ceil(cs) * cs;
    let per = cs / 8;
    let mut meta = cs;
    let nl2e = (aligned / cs).div_ceil(per) * per;
    meta += nl2e * 8;
    let nl1e = (nl2e * 8 / cs).div_ceil(per) * per;
    meta += nl1e * 8;
    let clusters = (meta + aligned) / cs;
    let rpb = cs * 8 / (1u64 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(rpb);
        table = blocks.div_ceil(per);
        n = clusters + blocks + table;
        if n == last {
            break;
        }
    }
    meta + (blocks + table) * cs
}

fn measure(a: MeasureArgs) -> R<u8> {
    let ofmt = Format::from_name(&a.out_fmt)?;
    let c = create_options(ofmt, &a.options)?;
    let (vsize, data) = match (&a.size, &a.filename) {
        (Some(s), None) => (parse_size(s).map_err(|e| Fail(e, 1))?, 0),
        (None, Some(f)) => {
            let img = open(f, &a.fmt, true)?;
            let size = img.size();
            let cs = if ofmt == Format::Qcow2 {
                c.cluster_size as u64
            } else {
                512
            };
            let mut data = 0u64;
            let mut off = 0;
            while off < size {
                let e = img.block_status(off, (size - off).min(1 << 30))?;
                if e.kind == ExtentKind::Data {
                    let s = e.offset / cs * cs;
                    let end = (e.offset + e.length).div_ceil(cs) * cs;
                    data += end - s;
                }
                off += e.length;
            }
            (size, data)
        }
        _ => return fail("Either --size N or one filename must be specified."),
    };
    let (required, full) = match ofmt {
        Format::Raw => (if a.filename.is_some() { data } else { vsize }, vsize),
        Format::Qcow2 => {
            let cs = c.cluster_size as u64;
            let order = c.refcount_bits.trailing_zeros();
            let meta = qcow2_meta_size(vsize, cs, order);
            (meta + data, meta + vsize.div_ceil(cs) * cs)
        }
        f => {
            return fail(format!(
                "measure for output format {f} is not supported yet"
            ))
        }
    };
    if a.output == "json" {
        let mut v = Obj::new();
        if ofmt == Format::Qcow2 && a.filename.is_some() {
            v.insert("bitmaps", json!(0));
        }
        v.insert("required", json!(required));
        v.insert("fully-allocated", json!(full));
        println!("{}", pretty(&v));
    } else {
        println!("required size: {required}\nfully allocated size: {full}");
        if ofmt == Format::Qcow2 && a.filename.is_some() {
            println!("bitmaps size: 0");
        }
    }
    Ok(0)
}

/// Deterministic xorshift PRNG shared with the tests.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Test hook for the crash-safety test: performs `iterations` random writes
/// (seeded), flushing every few writes. Prints `W <off> <len> <seed>` for
/// each write and `F <n>` after each completed flush.
fn crash_writer(a: CrashWriterArgs) -> R<u8> {
    use std::io::Write;
    let img = open(&a.filename, &Some("qcow2".into()), false)?;
    let size = img.size();
    let mut rng = Rng(a.seed | 1);
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 256 << 10];
    for i in 0..a.iterations {
        let len = ((rng.next() % (192 << 10)) + 1) as usize;
        let off = rng.next() % (size - len as u64);
        let dseed = rng.next() | 1;
        let mut r = Rng(dseed);
        for c in buf[..len].chunks_mut(8) {
            let v = r.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        img.write_at(&buf[..len], off)?;
        writeln!(out, "W {off} {len} {dseed}").ok();
        if i % 4 == 3 {
            img.flush()?;
            writeln!(out, "F {i}").ok();
            out.flush().ok();
        }
    }
    Ok(0)
}
