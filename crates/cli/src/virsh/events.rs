//! `vireo event`: lifecycle events as they happen, virsh's wording.

use std::time::{Duration, Instant};

use vireo_api::protocol::events::{
    EventsSubscribe, LifecycleEvent, SubscribeParams, EVENT_NOTIFICATION,
};
use vireo_api::Client;

use super::{err, print_json, OutputArgs, Result};

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

pub fn run(
    c: &mut Client,
    domain: Option<String>,
    event: Option<String>,
    looping: bool,
    timeout: Option<u64>,
    timestamp: bool,
    out: &OutputArgs,
) -> Result {
    let events = match event.as_deref() {
        None | Some("lifecycle") => Vec::new(),
        Some(e) => vec![e.to_string()],
    };
    c.call::<EventsSubscribe>(&SubscribeParams { domain, events })?;
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
    let mut count = 0u64;
    loop {
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => break,
            },
            None => None,
        };
        let Some(n) = c.next_notification(wait)? else {
            break;
        };
        if n.method != EVENT_NOTIFICATION {
            continue;
        }
        let Ok(ev) = serde_json::from_value::<LifecycleEvent>(n.params) else {
            continue;
        };
        count += 1;
        if out.json() {
            println!("{}", serde_json::to_string(&ev).unwrap_or_default());
        } else {
            let prefix = if timestamp {
                format!(
                    "{}.{:06}: ",
                    ev.timestamp_us / 1_000_000,
                    ev.timestamp_us % 1_000_000
                )
            } else {
                String::new()
            };
            let message = if ev.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", ev.message)
            };
            println!(
                "{prefix}event 'lifecycle' for domain '{}': {} {}{message}",
                ev.domain,
                capitalise(&ev.event),
                capitalise(&ev.detail)
            );
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        if !looping {
            break;
        }
    }
    if count == 0 && !looping {
        if out.json() {
            print_json(&serde_json::Value::Array(Vec::new()));
        }
        return err("no event arrived before the timeout");
    }
    println!("events received: {count}");
    Ok(())
}
