//! Team mode: how the window learns of other desks' changes. On the
//! embedded store the worker notices other processes' commits through
//! SQLite's `data_version`; on a team store the database pushes them: a
//! [`vmdesk_postgres::listen::Listener`] (LISTEN on the store's `vmdesk`
//! channel, connecting again after a drop) calls the same `on_change` the
//! core calls for this process's own changes, which tells the webview
//! (`changed`) to read what it shows again. After every (re)connection the
//! listener asks for a full refresh, which is the same `changed`: the
//! window's views reload everything they show on it.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmdesk_core::Core;
use vmdesk_postgres::listen::{Change, Listener};
use vmdesk_postgres::Target;

/// A burst of events (one transaction, many desks at once) becomes one
/// refresh: after the first, others arriving within this are folded in...
const SETTLE: Duration = Duration::from_millis(15);
/// ...for at most this long.
const SETTLE_MAX: Duration = Duration::from_millis(100);

/// Follows the team store while it lives; dropping it stops the listener
/// (and then the thread that relays its changes).
pub struct TeamWatch {
    _listener: Listener,
}

/// Starts following the team store's changes when `core` works on one
/// (`core.team()`), as `target` (the same store and login, with its
/// password): every committed change, and a full refresh after every
/// (re)connection, calls `on_change` (coalesced, on a thread of its own).
/// None on the embedded store. Keep the returned value for as long as the
/// window should follow the store.
pub fn start(
    core: &Core,
    target: Target,
    on_change: Arc<dyn Fn() + Send + Sync>,
) -> Option<TeamWatch> {
    let team = core.team()?;
    tracing::info!(store = %team.describe(), "following the team store's changes");
    let (tx, rx) = mpsc::channel::<Change>();
    let listener = Listener::spawn(target, move |change| {
        let _ = tx.send(change);
    });
    let relay = move || {
        // Ends when the listener (and so the sender) is gone.
        while let Ok(first) = rx.recv() {
            let began = Instant::now();
            let mut resync = first == Change::Resync;
            let mut events = usize::from(!resync);
            while began.elapsed() < SETTLE_MAX {
                match rx.recv_timeout(SETTLE) {
                    Ok(Change::Resync) => resync = true,
                    Ok(Change::Event { .. }) => events += 1,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if resync {
                tracing::info!("team store (re)connected: full refresh");
            } else {
                tracing::debug!(events, "team store changed");
            }
            on_change();
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("vmdesk-team-watch".into())
        .spawn(relay)
    {
        tracing::error!(error = %e, "could not follow the team store's changes");
        return None;
    }
    Some(TeamWatch {
        _listener: listener,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vmdesk_postgres::testing::{token, Store};

    /// Two desks on one team store (the cluster of scripts/postgres.sh):
    /// the admin's grant on one reaches the other's `on_change` within a
    /// second, pushed; a dropped connection brings a full refresh.
    #[test]
    fn another_desks_change_reaches_on_change_within_a_second() {
        let s = Store::new();
        let (ann, pw) = s.user("ann", false);
        let dir = std::env::temp_dir().join(format!("vmdesk-team-watch-{}", token(8)));
        let mut opts =
            vmdesk_core::OpenOptions::new(&dir, Arc::new(vmdesk_libvirt::LibvirtFactory::new()));
        opts.team = Some(Arc::new(
            vmdesk_postgres::PgStore::connect(s.target(&ann, &pw)).expect("desk connects"),
        ));
        let core = Core::open(opts).expect("team core");
        let (tx, rx) = mpsc::channel();
        let on_change: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let _ = tx.send(Instant::now());
        });
        let watch = start(&core, s.target(&ann, &pw), on_change).expect("team mode");
        // Connected: the first full refresh.
        rx.recv_timeout(Duration::from_secs(10))
            .expect("first refresh");

        let mut admin = s.admin();
        let t0 = Instant::now();
        admin
            .execute("SELECT vmdesk.credits_grant($1, 5, 'welcome')", &[&ann])
            .unwrap();
        let at = rx.recv_timeout(Duration::from_secs(1)).expect("pushed");
        println!("grant on another desk -> on_change in {:?}", at - t0);
        assert_eq!(core.credits_show(&ann, None).unwrap().balance, 5);

        // The listener's connection dropped: reconnected, full refresh.
        let t0 = Instant::now();
        s.superuser()
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = $2",
                &[&s.db, &vmdesk_postgres::listen::APPLICATION_NAME],
            )
            .unwrap();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("refresh after reconnect");
        println!("terminate -> full refresh in {:?}", t0.elapsed());

        // Dropped: the relay ends with the listener (its sender goes).
        drop(watch);
        let end = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(_) => assert!(end.elapsed() < Duration::from_secs(2)),
                Err(e) => {
                    assert_eq!(e, RecvTimeoutError::Disconnected, "the relay still runs");
                    break;
                }
            }
        }
        drop(core);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
