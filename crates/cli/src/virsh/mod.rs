//! virsh's verbs, talking to vireod through `vireo_api::Client`.
//!
//! One module per area (`domain`, `host`, `storage`): a clap `Subcommand` enum
//! flattened into the top-level command list and a `run(connect, cmd)` returning
//! [`Result`]; errors print as one line and exit with status 1.

pub mod console;
pub mod domain;
pub mod events;
pub mod host;
pub mod install;
pub mod storage;

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use vireo_api::{Client, ClientError, ConnectUri};

/// A failed command: one line for stderr.
#[derive(Debug)]
pub struct Error(pub String);

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        Error(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

pub type Result<T = ()> = std::result::Result<T, Error>;

pub fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

pub fn report(r: Result) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error(msg)) => {
            eprintln!("vireo: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to the daemon named by `-c URI` or the default URI.
pub fn connect(uri: Option<&str>) -> Result<Client> {
    let uri = ConnectUri::resolve(uri).map_err(|e| Error(e.to_string()))?;
    Ok(Client::connect(&uri)?)
}

/// `--output human|json` on verbs that print tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format: human (virsh's tables) or json (for scripts).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub output: Format,
}

impl OutputArgs {
    pub fn json(&self) -> bool {
        self.output == Format::Json
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
    );
}

/// Prints a virsh-style table: a header, a dashed rule, rows; columns padded to fit.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            s.push(' ');
            s.push_str(cell);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        s
    };
    println!("{}", line(header.to_vec()));
    let total: usize = widths.iter().map(|w| w + 3).sum::<usize>();
    println!("{}", "-".repeat(total.saturating_sub(1)));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
    println!();
}

/// Prints `key: value` lines aligned as virsh's dominfo does.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0) + 1;
    for (k, v) in fields {
        println!("{:<width$}{v}", format!("{k}:"));
    }
    println!();
}

/// Parses a size as virsh's scaled integers: a bare number is in `default_unit` bytes;
/// suffixes b, k/KiB, M/MiB, G/GiB, T/TiB (powers of 1024), KB/MB/GB/TB (powers of 1000).
pub fn parse_scaled(s: &str, default_unit: u64) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}': expected a number such as 512M or 2G"))?;
    let unit: u64 = match suffix {
        "" => default_unit,
        "b" | "B" | "bytes" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "KB" => 1000,
        "m" | "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        _ => return Err(format!("invalid size '{s}': unknown unit '{suffix}'")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("invalid size '{s}': too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_sizes() {
        assert_eq!(parse_scaled("1024", 1024), Ok(1 << 20));
        assert_eq!(parse_scaled("1G", 1024), Ok(1 << 30));
        assert_eq!(parse_scaled("2MB", 1024), Ok(2_000_000));
        assert!(parse_scaled("x", 1024).is_err());
        assert!(parse_scaled("1Q", 1024).is_err());
        assert!(parse_scaled("99999999999999T", 1).is_err());
    }
}
