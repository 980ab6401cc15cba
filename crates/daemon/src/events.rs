//! Lifecycle events fanned out to subscribed connections.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use vireo_api::protocol::events::{LifecycleEvent, EVENT_NOTIFICATION};
use vireo_api::protocol::{Notification, JSONRPC_VERSION};

/// Events a slow subscriber may have queued before it is dropped.
pub const SUBSCRIBER_QUEUE: usize = 4096;

struct Subscriber {
    id: u64,
    /// Only events of this domain (UUID).
    domain: Option<String>,
    /// Only these events; all when empty.
    events: Vec<String>,
    /// Serialised notification lines.
    tx: SyncSender<Arc<str>>,
}

#[derive(Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: std::sync::atomic::AtomicU64,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl EventBus {
    /// Adds a subscriber; returns its id for [`EventBus::unsubscribe`].
    pub fn subscribe(
        &self,
        domain: Option<String>,
        events: Vec<String>,
        tx: SyncSender<Arc<str>>,
    ) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber {
                id,
                domain,
                events,
                tx,
            });
        id
    }

    pub fn unsubscribe(&self, id: u64) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != id);
    }

    /// Sends an event to every matching subscriber; drops subscribers that are gone or
    /// too far behind.
    pub fn publish(&self, domain: &str, uuid: &str, event: &str, detail: &str, message: &str) {
        log::info!(
            "event: domain '{domain}' {event} ({detail}){}",
            if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            }
        );
        let note = Notification {
            jsonrpc: JSONRPC_VERSION.into(),
            method: EVENT_NOTIFICATION.into(),
            params: serde_json::to_value(LifecycleEvent {
                domain: domain.into(),
                uuid: uuid.into(),
                event: event.into(),
                detail: detail.into(),
                message: message.into(),
                timestamp_us: now_us(),
            })
            .unwrap_or_default(),
        };
        let Ok(mut line) = serde_json::to_string(&note) else {
            return;
        };
        line.push('\n');
        let line: Arc<str> = line.into();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| {
                let wanted = s.domain.as_deref().is_none_or(|d| d == uuid)
                    && (s.events.is_empty() || s.events.iter().any(|e| e == event));
                if !wanted {
                    return true;
                }
                match s.tx.try_send(line.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        log::warn!(
                            "dropping an event subscriber that is {SUBSCRIBER_QUEUE} events behind"
                        );
                        false
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }
            });
    }
}
