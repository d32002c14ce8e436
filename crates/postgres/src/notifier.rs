//! A desk's own NOTIFY, sent after its writes commit.
//!
//! PostgreSQL serialises the commits of notifying transactions (a lock held
//! from before the commit until after its WAL flush), so with the
//! `events_notify` trigger firing inside every change, no two changes of the
//! whole cluster could commit together: allocation stalled near 1,000/s on
//! the WAL flush alone. A desk's store connection therefore sets
//! `vmdesk.notify = 'after_commit'` (the trigger then stays silent for it,
//! see `sql/004_speed.sql`) and pokes a [`Notifier`] after each write. The
//! notifier's thread sends one `NOTIFY` for all the pokes that arrived since
//! its last one, as a transaction of its own on the desk's connection: a
//! transaction holding only a NOTIFY writes no WAL of its own, so it commits
//! without a flush and the lock is held for microseconds. Other clients
//! (psql, the migration) still notify at commit through the trigger.
//!
//! If the desk dies between its commit and its notify, the other desks hear
//! of that change with the next one (or at their next full refresh); the
//! change itself is committed and lost by nobody.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The payload of a desk's notify: no event id (the desk does not know it)
/// and the kind `change`; listeners read everything they show again.
pub const PAYLOAD: &str = r#"{"id":0,"type":"change"}"#;

/// At most one notify per this: a busy desk's writes are told together
/// (each NOTIFY takes the cluster's notify lock); the first write after a
/// quiet spell is told at once. Well under the second the other windows
/// have to show a change.
pub const GAP: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    /// Pokes not notified yet.
    pending: bool,
    stop: bool,
}

/// Sends the desk's notifies on a thread of its own until dropped.
pub struct Notifier {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the thread; `send` sends one notify and says whether it went
    /// (it is tried twice: the connection may have to be made again).
    pub fn spawn(send: impl Fn() -> bool + Send + 'static) -> Notifier {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vmdesk-notify".into())
            .spawn(move || run(&send, &theirs))
            .ok();
        Notifier { shared, thread }
    }

    /// Something was written: tell the other desks soon. Never blocks on
    /// the network.
    pub fn poke(&self) {
        let (state, wake) = &*self.shared;
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        // Already pending: the thread will send it; no need to wake it.
        if !s.pending {
            s.pending = true;
            wake.notify_one();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let (state, wake) = &*self.shared;
        state.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(send: &dyn Fn() -> bool, shared: &(Mutex<State>, Condvar)) {
    let (state, wake) = shared;
    let mut last: Option<Instant> = None;
    loop {
        {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            while !s.pending && !s.stop {
                s = wake.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            // Pokes made before a drop are still sent, without waiting.
            if !s.pending {
                return;
            }
            // Too soon after the last one: gather what comes meanwhile.
            while let Some(wait) = last
                .map(|t| t + GAP)
                .and_then(|next| next.checked_duration_since(Instant::now()))
                .filter(|_| !s.stop)
            {
                s = wake
                    .wait_timeout(s, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            s.pending = false;
        }
        last = Some(Instant::now());
        // A second try makes the connection again if the first found it lost.
        let _ = send() || send();
    }
}
