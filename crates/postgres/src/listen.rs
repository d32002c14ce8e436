//! Changes pushed by the database: every change writes an event in its
//! transaction. A desk tells of its own changes just after they commit
//! (`{"id":0,"type":"change"}`, see [`crate::notifier`]); any other client's
//! change is told by the `events_notify` trigger (`{"id":N,"type":"…"}`,
//! sql/001_schema.sql and 004_speed.sql) at commit, on channel `vmdesk`
//! either way. A [`Listener`]
//! holds a connection of its own that `LISTEN`s on that channel, on a
//! thread of its own, and hands each notification to a callback. When the
//! connection drops (server restart, `pg_terminate_backend`, network) it
//! connects again, with backoff, until it is dropped; after every
//! (re)connection it sends [`Change::Resync`]: what happened while it was
//! away was not heard, so everything must be read again.
//!
//! The thread uses the blocking client, which runs a runtime of its own: it
//! is a plain thread, never inside a tokio runtime.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::Target;

/// The channel the store notifies on.
pub const CHANNEL: &str = "vmdesk";
/// The `application_name` of the listener's connection (in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "vmdesk-listen";

/// How long one wait for a notification lasts: a dropped listener stops
/// within about this.
const WAIT: Duration = Duration::from_millis(200);
/// The first wait before connecting again, doubled after each failure...
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Listener`]'s drop waits for the thread.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// What the listener tells its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A change was committed: its event's id and type (`session`, …), or
    /// id 0 and type `change` for a desk's own notify of its writes. What it
    /// is about is for the reader to read, under its own rights.
    Event {
        /// The event's id (0: a desk's notify, which may stand for several).
        id: i64,
        /// The event's type.
        kind: String,
    },
    /// The listener has just (re)connected: changes may have been missed,
    /// read everything again.
    Resync,
}

/// Follows the store's changes on a thread of its own until dropped.
pub struct Listener {
    /// Dropped to stop the thread (its receiver then says "disconnected").
    stop: Option<mpsc::Sender<()>>,
    /// Says "disconnected" once the thread has ended.
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Starts listening as `target`'s login; `on` is called on the
    /// listener's thread, with [`Change::Resync`] first (once connected) and
    /// after every reconnection, and a [`Change::Event`] per committed
    /// event. Keep `on` short: hand the work to another thread.
    pub fn spawn(target: Target, on: impl Fn(Change) + Send + 'static) -> Listener {
        let (stop_tx, stop_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vmdesk-listen".into())
            .spawn(move || {
                let _done = done_tx;
                run(target, &stop_rx, &on);
            })
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the store's listener thread");
        }
        Listener {
            stop: Some(stop_tx),
            done: done_rx,
            thread,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        drop(self.stop.take());
        // The thread looks at the stop signal at least every WAIT (and
        // connecting takes at most CONNECT_TIMEOUT): wait for it a moment,
        // and leave it to end by itself if it is stuck in a connect.
        match self.done.recv_timeout(STOP_WAIT) {
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            _ => tracing::debug!("the store's listener is still connecting; not waiting for it"),
        }
    }
}

fn stopped(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected))
}

/// Waits `d` unless stopped first; true if stopped.
fn sleep_or_stop(stop: &Receiver<()>, d: Duration) -> bool {
    matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Disconnected))
}

/// `d` times a random factor between 0.5 and 1.5.
fn jitter(d: Duration) -> Duration {
    let r = RandomState::new().build_hasher().finish();
    d.mul_f64(0.5 + (r % 1000) as f64 / 1000.0)
}

fn run(target: Target, stop: &Receiver<()>, on: &dyn Fn(Change)) {
    let mut target = target;
    target
        .config_mut()
        .application_name(APPLICATION_NAME)
        .connect_timeout(CONNECT_TIMEOUT)
        // A network that silently went away is noticed in about 25 s.
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(25));
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    while !stopped(stop) {
        let mut listening = false;
        match listen(&target, stop, on, &mut listening) {
            Ok(()) => return,
            Err(e) => {
                // A connection that got as far as listening was a good one:
                // the backoff starts again from the bottom.
                if listening {
                    backoff = BACKOFF_MIN;
                }
                if e != last_error {
                    tracing::warn!(store = %target.describe(), error = %e, retry_in = ?backoff, "store listener");
                } else {
                    tracing::debug!(store = %target.describe(), error = %e, retry_in = ?backoff, "store listener");
                }
                last_error = e;
            }
        }
        if sleep_or_stop(stop, jitter(backoff)) {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: connects, listens, reports, until stopped (Ok)
/// or the connection fails (Err: why).
fn listen(
    target: &Target,
    stop: &Receiver<()>,
    on: &dyn Fn(Change),
    listening: &mut bool,
) -> Result<(), String> {
    let mut client = target.connect().map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|e| crate::Error::from(e).to_string())?;
    tracing::info!(store = %target.describe(), "listening for the store's changes");
    *listening = true;
    on(Change::Resync);
    loop {
        if stopped(stop) {
            return Ok(());
        }
        // One wait of at most WAIT: None when it timed out, or when the
        // connection ended without an error (then the client is closed).
        let next = client.notifications().timeout_iter(WAIT).next();
        match next.map_err(|e| crate::Error::from(e).to_string())? {
            Some(n) if n.channel() == CHANNEL => on(parse(n.payload())),
            Some(_) => {}
            None if client.is_closed() => return Err("the connection closed".into()),
            None => {}
        }
    }
}

/// A payload `{"id":N,"type":"…"}`; anything else asks for a full refresh.
fn parse(payload: &str) -> Change {
    let v: serde_json::Value = match serde_json::from_str(payload) {
        Ok(v) => v,
        Err(_) => {
            tracing::warn!(payload, "unexpected notification from the store");
            return Change::Resync;
        }
    };
    match (v["id"].as_i64(), v["type"].as_str()) {
        (Some(id), Some(kind)) => Change::Event {
            id,
            kind: kind.to_owned(),
        },
        _ => {
            tracing::warn!(payload, "unexpected notification from the store");
            Change::Resync
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            parse(r#"{"id" : 42, "type" : "credits.grant"}"#),
            Change::Event {
                id: 42,
                kind: "credits.grant".into()
            }
        );
        assert_eq!(parse("nonsense"), Change::Resync);
        assert_eq!(parse(r#"{"id":"x"}"#), Change::Resync);
    }

    #[test]
    fn jitter_stays_within_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j <= Duration::from_millis(1500));
        }
    }
}
