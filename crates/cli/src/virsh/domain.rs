//! Domain verbs: names, arguments and output as virsh's.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use vireo_api::protocol::domain::*;
use vireo_api::{Client, ClientError, ErrorKind};

use super::{
    connect, err, parse_scaled, print_fields, print_json, print_table, Error, OutputArgs, Result,
};

/// A domain argument: name, id or UUID.
#[derive(Debug, Clone, Args)]
pub struct DomainArg {
    /// Domain name, id or UUID.
    pub domain: String,
}

#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Change the persistent definition (applies at the next start).
    #[arg(long)]
    pub config: bool,
    /// Change the running domain.
    #[arg(long)]
    pub live: bool,
    /// Change the running domain if it runs, else the definition.
    #[arg(long)]
    pub current: bool,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        Scope {
            config: self.config,
            live: self.live,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// List domains (running ones; --all for every domain).
    List {
        /// Inactive domains too.
        #[arg(long)]
        all: bool,
        /// Only inactive domains.
        #[arg(long)]
        inactive: bool,
        /// Print only names.
        #[arg(long)]
        name: bool,
        /// Print only UUIDs.
        #[arg(long)]
        uuid: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Define (or update) a persistent domain from an XML file ('-' for stdin).
    Define { file: PathBuf },
    /// Remove a stopped domain's definition.
    Undefine {
        #[command(flatten)]
        d: DomainArg,
        /// Also delete the disk images it references.
        #[arg(long)]
        remove_all_storage: bool,
    },
    /// Start a transient domain from an XML file (gone when it stops).
    Create {
        file: PathBuf,
        /// Attach to the console after starting.
        #[arg(long)]
        console: bool,
        /// Leave the vCPUs paused.
        #[arg(long)]
        paused: bool,
    },
    /// Start a defined domain.
    Start {
        #[command(flatten)]
        d: DomainArg,
        /// Attach to the console (from the first byte of output).
        #[arg(long)]
        console: bool,
        /// Leave the vCPUs paused.
        #[arg(long)]
        paused: bool,
    },
    /// Ask the guest to power off (ACPI power button); returns at once.
    Shutdown(DomainArg),
    /// Stop a domain now (like pulling the plug).
    Destroy(DomainArg),
    /// Restart the guest (a hard reset: vireo has no guest agent).
    Reboot(DomainArg),
    /// Hard reset, like the reset button.
    Reset(DomainArg),
    /// Pause a running domain.
    Suspend(DomainArg),
    /// Resume a paused domain.
    Resume(DomainArg),
    /// Start the domain with the daemon (--disable: don't).
    Autostart {
        #[command(flatten)]
        d: DomainArg,
        #[arg(long)]
        disable: bool,
    },
    /// Basic information about a domain.
    Dominfo {
        #[command(flatten)]
        d: DomainArg,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A domain's state.
    Domstate {
        #[command(flatten)]
        d: DomainArg,
        /// Also say why.
        #[arg(long)]
        reason: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Statistics of a domain (state, CPU, memory, vCPUs).
    Domstats {
        /// Domains (all running ones if none).
        domains: Vec<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Print a domain's XML.
    Dumpxml {
        #[command(flatten)]
        d: DomainArg,
        /// The persistent definition rather than the running one.
        #[arg(long)]
        inactive: bool,
    },
    /// Edit a domain's XML in $EDITOR; saved only if it is valid.
    Edit(DomainArg),
    /// Attach to a running domain's serial console (Ctrl-] detaches).
    Console(DomainArg),
    /// Print lifecycle events as they happen.
    Event {
        /// Only this domain's events.
        #[arg(long)]
        domain: Option<String>,
        /// Only this event (defined, undefined, started, suspended, resumed, stopped,
        /// rebooted; 'lifecycle' for all).
        #[arg(long)]
        event: Option<String>,
        /// Keep printing events until interrupted (default: exit after one).
        #[arg(long = "loop")]
        looping: bool,
        /// Give up after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Prefix each event with its time.
        #[arg(long)]
        timestamp: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A domain's disks.
    Domblklist {
        #[command(flatten)]
        d: DomainArg,
        /// Also the type and device columns.
        #[arg(long)]
        details: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A domain's network interfaces.
    Domiflist {
        #[command(flatten)]
        d: DomainArg,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Set the memory a domain gets (KiB, or with a unit: 512M, 2G).
    Setmem {
        #[command(flatten)]
        d: DomainArg,
        size: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Set a domain's maximum memory (KiB, or with a unit).
    Setmaxmem {
        #[command(flatten)]
        d: DomainArg,
        size: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Set a domain's vCPU count.
    Setvcpus {
        #[command(flatten)]
        d: DomainArg,
        count: u32,
        /// Set the maximum instead.
        #[arg(long)]
        maximum: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

pub fn run(uri: Option<&str>, cmd: DomainCommand) -> Result {
    let mut c = connect(uri)?;
    match cmd {
        DomainCommand::List {
            all,
            inactive,
            name,
            uuid,
            out,
        } => list(&mut c, all, inactive, name, uuid, &out),
        DomainCommand::Define { file } => {
            let xml = read_xml(&file)?;
            let r = c.call::<DomainDefine>(&DefineParams { xml })?;
            for w in &r.warnings {
                eprintln!("vireo: warning: {w}");
            }
            println!("Domain '{}' defined from {}", r.name, file.display());
            Ok(())
        }
        DomainCommand::Undefine {
            d,
            remove_all_storage,
        } => {
            let r = c.call::<DomainUndefine>(&UndefineParams {
                domain: d.domain,
                remove_all_storage,
            })?;
            for path in &r.removed_storage {
                println!("Volume '{path}' removed.");
            }
            println!("Domain '{}' has been undefined", r.name);
            Ok(())
        }
        DomainCommand::Create {
            file,
            console,
            paused,
        } => {
            let xml = read_xml(&file)?;
            let r = c.call::<DomainCreate>(&CreateParams {
                xml,
                paused: paused || console,
            })?;
            println!("Domain '{}' created from {}", r.name, file.display());
            if console {
                return attach_from_start(&mut c, &r.name, paused);
            }
            Ok(())
        }
        DomainCommand::Start { d, console, paused } => start(&mut c, &d.domain, console, paused),
        DomainCommand::Shutdown(d) => {
            c.call::<DomainShutdown>(&DomainRef::new(&d.domain))?;
            println!("Domain '{}' is being shutdown", d.domain);
            Ok(())
        }
        DomainCommand::Destroy(d) => {
            c.call::<DomainDestroy>(&DomainRef::new(&d.domain))?;
            println!("Domain '{}' destroyed", d.domain);
            Ok(())
        }
        DomainCommand::Reboot(d) => {
            c.call::<DomainReboot>(&DomainRef::new(&d.domain))?;
            println!("Domain '{}' is being rebooted", d.domain);
            Ok(())
        }
        DomainCommand::Reset(d) => {
            c.call::<DomainReset>(&DomainRef::new(&d.domain))?;
            println!("Domain '{}' was reset", d.domain);
            Ok(())
        }
        DomainCommand::Suspend(d) => {
            c.call::<DomainSuspend>(&DomainRef::new(&d.domain))?;
            println!("Domain '{}' suspended", d.domain);
            Ok(())
        }
        DomainCommand::Resume(d) => {
            c.call::<DomainResume>(&DomainRef::new(&d.domain))?;
            println!("Domain '{}' resumed", d.domain);
            Ok(())
        }
        DomainCommand::Autostart { d, disable } => {
            c.call::<DomainSetAutostart>(&AutostartParams {
                domain: d.domain.clone(),
                enable: !disable,
            })?;
            if disable {
                println!("Domain '{}' unmarked as autostarted", d.domain);
            } else {
                println!("Domain '{}' marked as autostarted", d.domain);
            }
            Ok(())
        }
        DomainCommand::Dominfo { d, out } => dominfo(&mut c, &d.domain, &out),
        DomainCommand::Domstate { d, reason, out } => {
            let s = c.call::<DomainGetState>(&DomainRef::new(&d.domain))?;
            if out.json() {
                print_json(&s);
            } else if reason {
                println!("{} ({})\n", s.state, s.reason);
            } else {
                println!("{}\n", s.state);
            }
            Ok(())
        }
        DomainCommand::Domstats { domains, out } => domstats(&mut c, domains, &out),
        DomainCommand::Dumpxml { d, inactive } => {
            let r = c.call::<DomainGetXml>(&GetXmlParams {
                domain: d.domain,
                inactive,
            })?;
            print!("{}", r.xml);
            if !r.xml.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        DomainCommand::Edit(d) => edit(&mut c, &d.domain),
        DomainCommand::Console(d) => {
            let r = c.call::<DomainOpenConsole>(&DomainRef::new(&d.domain))?;
            super::console::attach(&r.socket, &d.domain)
        }
        DomainCommand::Event {
            domain,
            event,
            looping,
            timeout,
            timestamp,
            out,
        } => super::events::run(&mut c, domain, event, looping, timeout, timestamp, &out),
        DomainCommand::Domblklist { d, details, out } => {
            let r = c.call::<DomainBlockList>(&DomainRef::new(&d.domain))?;
            if out.json() {
                print_json(&r.disks);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .disks
                .iter()
                .map(|b| {
                    let source = b.source.clone().unwrap_or_else(|| "-".into());
                    if details {
                        vec![b.kind.clone(), b.device.clone(), b.target.clone(), source]
                    } else {
                        vec![b.target.clone(), source]
                    }
                })
                .collect();
            if details {
                print_table(&["Type", "Device", "Target", "Source"], &rows);
            } else {
                print_table(&["Target", "Source"], &rows);
            }
            Ok(())
        }
        DomainCommand::Domiflist { d, out } => {
            let r = c.call::<DomainInterfaceList>(&DomainRef::new(&d.domain))?;
            if out.json() {
                print_json(&r.interfaces);
                return Ok(());
            }
            let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
            let rows: Vec<Vec<String>> = r
                .interfaces
                .iter()
                .map(|i| {
                    vec![
                        dash(&i.interface),
                        i.kind.clone(),
                        dash(&i.source),
                        dash(&i.model),
                        dash(&i.mac),
                    ]
                })
                .collect();
            print_table(&["Interface", "Type", "Source", "Model", "MAC"], &rows);
            Ok(())
        }
        DomainCommand::Setmem { d, size, scope } => set_memory(&mut c, d, &size, scope, false),
        DomainCommand::Setmaxmem { d, size, scope } => set_memory(&mut c, d, &size, scope, true),
        DomainCommand::Setvcpus {
            d,
            count,
            maximum,
            scope,
        } => {
            c.call::<DomainSetVcpus>(&SetVcpusParams {
                domain: d.domain,
                count,
                maximum,
                scope: scope.scope(),
            })?;
            Ok(())
        }
    }
}

/// Reads a domain XML file ('-': stdin), bounded.
pub fn read_xml(file: &Path) -> Result<String> {
    const MAX: u64 = 4 << 20;
    let mut s = String::new();
    let read = if file == Path::new("-") {
        std::io::stdin().take(MAX + 1).read_to_string(&mut s)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX + 1).read_to_string(&mut s))
    };
    read.map_err(|e| Error(format!("cannot read {}: {e}", file.display())))?;
    if s.len() as u64 > MAX {
        return err(format!("{} is larger than {MAX} bytes", file.display()));
    }
    Ok(s)
}

fn list(
    c: &mut Client,
    all: bool,
    inactive: bool,
    name: bool,
    uuid: bool,
    out: &OutputArgs,
) -> Result {
    let r = c.call::<DomainList>(&ListParams { all, inactive })?;
    if out.json() {
        print_json(&r.domains);
        return Ok(());
    }
    if name || uuid {
        for d in &r.domains {
            match (uuid, name) {
                (true, true) => println!("{}  {}", d.uuid, d.name),
                (true, false) => println!("{}", d.uuid),
                _ => println!("{}", d.name),
            }
        }
        println!();
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .domains
        .iter()
        .map(|d| {
            vec![
                d.id.map_or("-".into(), |i| i.to_string()),
                d.name.clone(),
                d.state.to_string(),
            ]
        })
        .collect();
    print_table(&["Id", "Name", "State"], &rows);
    Ok(())
}

/// `start --console` (also `vireo install`).
pub fn start_with_console(c: &mut Client, domain: &str) -> Result {
    start(c, domain, true, false)
}

fn start(c: &mut Client, domain: &str, console: bool, paused: bool) -> Result {
    if !console {
        let r = c.call::<DomainStart>(&StartParams {
            domain: domain.into(),
            paused,
        })?;
        println!("Domain '{}' started", r.name);
        return Ok(());
    }
    // Started paused so the console sees the very first byte, then resumed.
    let r = match c.call::<DomainStart>(&StartParams {
        domain: domain.into(),
        paused: true,
    }) {
        Err(ClientError::Rpc(e)) if e.kind() == ErrorKind::NotSupported => {
            c.call::<DomainStart>(&StartParams {
                domain: domain.into(),
                paused: false,
            })?
        }
        r => r?,
    };
    println!("Domain '{}' started", r.name);
    attach_from_start(c, &r.name, paused)
}

/// Opens the console of a domain started paused, then resumes it (unless the user asked
/// for it to stay paused).
fn attach_from_start(c: &mut Client, name: &str, stay_paused: bool) -> Result {
    let r = c.call::<DomainOpenConsole>(&DomainRef::new(name))?;
    let stream = super::console::connect(&r.socket)?;
    if !stay_paused {
        let state = c.call::<DomainGetState>(&DomainRef::new(name))?;
        if state.state == DomainState::Paused {
            c.call::<DomainResume>(&DomainRef::new(name))?;
        }
    }
    super::console::run(stream, name)
}

fn dominfo(c: &mut Client, domain: &str, out: &OutputArgs) -> Result {
    let i = c.call::<DomainGetInfo>(&DomainRef::new(domain))?;
    if out.json() {
        print_json(&i);
        return Ok(());
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut fields = vec![
        ("Id", i.id.map_or("-".into(), |x| x.to_string())),
        ("Name", i.name.clone()),
        ("UUID", i.uuid.clone()),
        ("OS Type", i.os_type.clone()),
        ("State", i.state.to_string()),
        ("CPU(s)", i.vcpus.to_string()),
    ];
    if let Some(ns) = i.cpu_time_ns {
        fields.push(("CPU time", format!("{:.1}s", ns as f64 / 1e9)));
    }
    fields.extend([
        ("Max memory", format!("{} KiB", i.max_memory_kib)),
        ("Used memory", format!("{} KiB", i.used_memory_kib)),
        ("Persistent", yes_no(i.persistent)),
        (
            "Autostart",
            if i.autostart { "enable" } else { "disable" }.into(),
        ),
        ("Managed save", "no".into()),
        ("Security model", "none".into()),
        ("Security DOI", "0".into()),
    ]);
    print_fields(&fields);
    Ok(())
}

fn domstats(c: &mut Client, mut domains: Vec<String>, out: &OutputArgs) -> Result {
    if domains.is_empty() {
        domains = c
            .call::<DomainList>(&ListParams::default())?
            .domains
            .into_iter()
            .map(|d| d.name)
            .collect();
    }
    let mut all = Vec::new();
    for d in &domains {
        all.push(c.call::<DomainGetStats>(&DomainRef::new(d))?);
    }
    if out.json() {
        print_json(&all);
        return Ok(());
    }
    for s in all {
        println!("Domain: '{}'", s.name);
        for (k, v) in &s.stats {
            match v {
                serde_json::Value::String(s) => println!("  {k}={s}"),
                v => println!("  {k}={v}"),
            }
        }
        println!();
    }
    Ok(())
}

fn set_memory(c: &mut Client, d: DomainArg, size: &str, scope: ScopeArgs, maximum: bool) -> Result {
    let bytes = parse_scaled(size, 1024).map_err(Error)?;
    c.call::<DomainSetMemory>(&SetMemoryParams {
        domain: d.domain,
        kib: bytes / 1024,
        maximum,
        scope: scope.scope(),
    })?;
    Ok(())
}

/// `edit`: the persistent XML in $VISUAL/$EDITOR (vi) on a private temp copy; saved with
/// `domain.define` only if changed and valid. An invalid edit is reported; on a terminal
/// the user may edit again, otherwise the old definition stays.
fn edit(c: &mut Client, domain: &str) -> Result {
    let xml = c
        .call::<DomainGetXml>(&GetXmlParams {
            domain: domain.into(),
            inactive: true,
        })?
        .xml;
    let dir = std::env::temp_dir().join(format!("vireo-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let file = dir.join(format!("{domain}.xml"));
    std::fs::write(&file, &xml)?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    loop {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&file)
            .status()
            .map_err(|e| Error(format!("cannot run editor '{editor}': {e}")))?;
        if !status.success() {
            return err(format!(
                "editor '{editor}' failed ({status}); definition unchanged"
            ));
        }
        let edited = read_xml(&file)?;
        if edited == xml {
            println!("Domain '{domain}' XML configuration not changed.");
            return Ok(());
        }
        match c.call::<DomainDefine>(&DefineParams { xml: edited }) {
            Ok(r) => {
                for w in &r.warnings {
                    eprintln!("vireo: warning: {w}");
                }
                println!("Domain '{}' XML configuration edited.", r.name);
                return Ok(());
            }
            Err(ClientError::Rpc(e)) if std::io::stdin().is_terminal() => {
                eprintln!("vireo: error: {e}");
                eprint!("Failed. Try again? [y,n]: ");
                std::io::stderr().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !answer.trim().eq_ignore_ascii_case("y") {
                    return err("edit abandoned; definition unchanged");
                }
            }
            Err(e) => return Err(Error(format!("{e} (definition unchanged)"))),
        }
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
