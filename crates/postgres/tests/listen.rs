//! Changes pushed by the database (LISTEN/NOTIFY) reach a [`Listener`]
//! within a second, across logins; a listener whose backend is terminated
//! connects again and asks for a full refresh; a dropped listener stops.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use vmdesk_postgres::listen::{Change, Listener, APPLICATION_NAME, CHANNEL};
use vmdesk_postgres::testing::Store;

/// A listener as `user` whose changes arrive, timestamped, on the receiver.
fn listener(s: &Store, user: &(String, String)) -> (Listener, Receiver<(Change, Instant)>) {
    let (tx, rx) = mpsc::channel();
    let l = Listener::spawn(s.target(&user.0, &user.1), move |c| {
        let _ = tx.send((c, Instant::now()));
    });
    (l, rx)
}

/// The next change within `within`.
fn next(rx: &Receiver<(Change, Instant)>, within: Duration) -> (Change, Instant) {
    rx.recv_timeout(within)
        .unwrap_or_else(|e| panic!("no change within {within:?}: {e}"))
}

/// Waits for the first Resync (the listener is connected and listening).
fn connected(rx: &Receiver<(Change, Instant)>) -> Instant {
    let (c, at) = next(rx, Duration::from_secs(10));
    assert_eq!(c, Change::Resync, "a listener says Resync first");
    at
}

/// The next event within a second, skipping nothing else: only events come
/// while the connection holds.
fn event(rx: &Receiver<(Change, Instant)>) -> (i64, String, Instant) {
    match next(rx, Duration::from_secs(1)) {
        (Change::Event { id, kind }, at) => (id, kind, at),
        (other, _) => panic!("expected an event, got {other:?}"),
    }
}

fn grant(admin: &mut postgres::Client, to: &str) {
    admin
        .execute("SELECT vmdesk.credits_grant($1, 1, 'listen test')", &[&to])
        .unwrap();
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The listener's backends on this store's database.
fn listener_pids(s: &Store) -> Vec<i32> {
    s.superuser()
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&s.db, &APPLICATION_NAME],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn another_logins_change_reaches_the_listener_within_a_second() {
    let s = Store::new();
    let ann = s.user("ann", false);
    let (_l, rx) = listener(&s, &ann);
    connected(&rx);
    let mut admin = s.admin();
    let mut took = Vec::new();
    let mut last = 0;
    for _ in 0..50 {
        // From before the statement (it commits on return) to the callback.
        let t0 = Instant::now();
        grant(&mut admin, &ann.0);
        let (id, kind, at) = event(&rx);
        assert!(id > last, "events come in order: {id} after {last}");
        assert_eq!(kind, "billing");
        last = id;
        took.push(at - t0);
    }
    took.sort();
    let (p50, p99, max) = (pct(&took, 0.5), pct(&took, 0.99), took[took.len() - 1]);
    println!("change -> listener callback over 50 grants: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(max < Duration::from_secs(1), "max {max:?}");
    assert!(rx.try_recv().is_err(), "one event per grant, nothing else");
}

#[test]
fn a_terminated_listener_reconnects_resyncs_and_hears_again() {
    let s = Store::new();
    let ann = s.user("ann", false);
    let (_l, rx) = listener(&s, &ann);
    connected(&rx);
    let mut admin = s.admin();
    grant(&mut admin, &ann.0);
    event(&rx);

    let mut times = Vec::new();
    for round in 0..3 {
        let pids = listener_pids(&s);
        assert_eq!(pids.len(), 1, "one listener backend: {pids:?}");
        let mut su = s.superuser();
        let t0 = Instant::now();
        let killed: bool = su
            .query_one("SELECT pg_terminate_backend($1)", &[&pids[0]])
            .unwrap()
            .get(0);
        assert!(killed);
        // A change while it is away is not heard: Resync says so.
        let (c, at) = next(&rx, Duration::from_secs(5));
        assert_eq!(c, Change::Resync, "round {round}");
        times.push(at - t0);
        assert_ne!(listener_pids(&s), pids, "a new backend");
        grant(&mut admin, &ann.0);
        let (_, kind, _) = event(&rx);
        assert_eq!(kind, "billing");
    }
    let t = Instant::now();
    drop(s.connect(&ann.0, &ann.1));
    println!(
        "terminate -> reconnected and Resync sent: {times:?} (one connection alone takes {:?} here)",
        t.elapsed()
    );
    assert!(
        times.iter().all(|t| *t < Duration::from_secs(2)),
        "{times:?}"
    );
}

#[test]
fn a_dropped_listener_ends_its_thread_within_a_second() {
    let s = Store::new();
    let ann = s.user("ann", false);
    let (l, rx) = listener(&s, &ann);
    connected(&rx);
    let t0 = Instant::now();
    drop(l);
    let dropped = t0.elapsed();
    // The callback (and its sender) went with the thread.
    let gone = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) => break t0.elapsed(),
            Err(RecvTimeoutError::Timeout) => panic!("the listener's thread still runs"),
        }
    };
    println!("drop returned in {dropped:?}, thread gone in {gone:?}");
    assert!(gone < Duration::from_secs(1), "{gone:?}");
    // And its backend goes too.
    let t = Instant::now();
    while !listener_pids(&s).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(2), "backend still there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_dropped_listener_stops_while_it_cannot_connect() {
    // Nothing listens on port 1: connecting fails at once, the listener
    // backs off; dropping it still ends it promptly.
    let target =
        vmdesk_postgres::Target::parse("postgres://nobody:x@127.0.0.1:1/vmdesk?sslmode=disable")
            .unwrap();
    let (tx, rx) = mpsc::channel::<Change>();
    let l = Listener::spawn(target, move |c| {
        let _ = tx.send(c);
    });
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    drop(l);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(1)),
        Err(RecvTimeoutError::Disconnected)
    ));
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_plain_user_hears_only_ids_and_types() {
    let s = Store::new();
    let ann = s.user("ann", false);
    let bob = s.user("bob", false);
    // What goes over the wire to ann, raw.
    let mut raw = s.connect(&ann.0, &ann.1);
    raw.batch_execute(&format!("LISTEN {CHANNEL}")).unwrap();
    let (_l, rx) = listener(&s, &ann);
    connected(&rx);
    // A change that is bob's (his credits), by the admin: ann may not read
    // it, and hears only that event N of type T was committed.
    let mut admin = s.admin();
    admin
        .execute(
            "SELECT vmdesk.credits_grant($1, 7, 'a secret reason')",
            &[&bob.0],
        )
        .unwrap();
    let (id, kind, _) = event(&rx);
    assert_eq!(kind, "billing");
    let n = raw
        .notifications()
        .timeout_iter(Duration::from_secs(2))
        .next()
        .unwrap()
        .expect("a notification");
    assert_eq!(n.channel(), CHANNEL);
    let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| &**k).collect();
    keys.sort();
    assert_eq!(keys, ["id", "type"], "payload {}", n.payload());
    assert_eq!(v["id"].as_i64(), Some(id));
    assert_eq!(v["type"].as_str(), Some("billing"));
    assert!(!n.payload().contains("secret") && !n.payload().contains(&bob.0));
    // And reading the event itself is refused to ann (row-level security).
    let seen: i64 = raw
        .query_one("SELECT count(*) FROM vmdesk.events WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "ann cannot read bob's event");
}

/// A desk (`PgStore`) notifies after its commits, not inside them (the
/// notify lock would serialise every commit of the cluster): its changes
/// reach another login's listener within a second as a `change`, and a
/// burst of writes is told together rather than one notify each.
#[test]
fn a_desks_writes_are_told_after_commit_and_bursts_together() {
    use vmdesk_core::team::prelude::*;
    use vmdesk_postgres::notifier::GAP;
    use vmdesk_postgres::PgStore;

    let s = Store::new();
    let ann = s.user("ann", false);
    let (_l, rx) = listener(&s, &ann);
    connected(&rx);
    let desk = PgStore::connect(s.target(&s.admin, &s.admin_pw)).unwrap();

    // One write: told within a second, by the desk's notifier.
    let t0 = Instant::now();
    desk.credits_grant(&ann.0, 5, "listen test").unwrap();
    let (id, kind, at) = event(&rx);
    assert_eq!(
        (id, kind.as_str()),
        (0, "change"),
        "the desk's own notify, not the trigger's"
    );
    assert!(at - t0 < Duration::from_secs(1));
    // The trigger stayed silent for it: nothing else comes.
    assert!(matches!(
        rx.recv_timeout(GAP * 2),
        Err(RecvTimeoutError::Timeout)
    ));

    // Twenty writes in a burst: a few notifies (one per GAP), not twenty,
    // and the last write is told.
    let t0 = Instant::now();
    for _ in 0..20 {
        desk.credits_grant(&ann.0, 1, "burst").unwrap();
    }
    let burst = t0.elapsed();
    let mut told = 0;
    while let Ok((c, _)) = rx.recv_timeout(GAP * 3) {
        assert_eq!(
            c,
            Change::Event {
                id: 0,
                kind: "change".into()
            }
        );
        told += 1;
    }
    let most = 2 + (burst.as_secs_f64() / GAP.as_secs_f64()).ceil() as usize;
    assert!(
        (1..=most).contains(&told),
        "{told} notifies for 20 writes in {burst:?}"
    );
    assert_eq!(desk.credits_show(&ann.0).unwrap().balance, 25);

    // Anyone else's change (here the plain client) is still told by the
    // trigger, at commit, with its event.
    let mut admin = s.admin();
    grant(&mut admin, &ann.0);
    let (id, kind, _) = event(&rx);
    assert!(id > 0 && kind == "billing", "{id} {kind}");
}
