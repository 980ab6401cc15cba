//! `events.*`: lifecycle events, delivered as JSON-RPC notifications (method
//! [`EVENT_NOTIFICATION`]) to connections that subscribed.

use serde::{Deserialize, Serialize};

use super::Empty;
use crate::method;

/// The `method` of event notifications.
pub const EVENT_NOTIFICATION: &str = "event.lifecycle";

/// Event names, with the details each carries.
pub const EVENTS: [(&str, &[&str]); 7] = [
    ("defined", &["added", "updated"]),
    ("undefined", &["removed"]),
    ("started", &["booted", "autostart", "restarted"]),
    ("suspended", &["paused"]),
    ("resumed", &["unpaused"]),
    ("stopped", &["shutdown", "destroyed", "crashed", "failed"]),
    ("rebooted", &["reset"]),
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeParams {
    /// Only this domain's events (name, id or UUID).
    #[serde(default)]
    pub domain: Option<String>,
    /// Only these events (names from [`EVENTS`]); all when empty.
    #[serde(default)]
    pub events: Vec<String>,
}

/// The params of an `event.lifecycle` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub domain: String,
    pub uuid: String,
    pub event: String,
    pub detail: String,
    /// Free text (e.g. why a VMM crashed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: u64,
}

method!(
    /// Start receiving `event.lifecycle` notifications on this connection.
    EventsSubscribe, "events.subscribe", SubscribeParams, Empty);
