//! `vmdesk sync --watch`: status sync that follows the hosts' lifecycle
//! events, with periodic passes, billing and checkpoints of the database's
//! write-ahead log. The app runs it as a child (`--parent-pipe`) and reads a
//! [`PassReport`] line from its stdout after every pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmdesk_core::Core;
use vmdesk_libvirt::LibvirtFactory;

use crate::cli::{open_core, out, settings, Global};

/// The write-ahead log is checkpointed when it grows past this (as the app does).
pub const WAL_LIMIT: u64 = 1 << 20;
/// How often the log's size is looked at.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How often the libvirt connections are looked at (and reopened).
const CONNECTIONS_EVERY: Duration = Duration::from_secs(2);
/// How long one look at the connections waits for a host to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How often running VMs without a known address are asked for one.
const ADDRESSES_EVERY: Duration = Duration::from_secs(2);

/// What one sync pass found, as the child tells the app (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassReport {
    /// When the pass ended.
    pub at: String,
    /// A full pass (every VM), or the fast one (active sessions' VMs).
    pub full: bool,
    /// How many VMs changed.
    pub changes: usize,
    /// Why the pass failed, if it did (the core's sentence).
    pub error: Option<String>,
    /// The hosts that could not be reached.
    pub unreachable: Vec<String>,
}

/// Runs `sync --watch` until the process ends (or, with `parent_pipe`, until
/// standard input closes): changes go to stdout, as lines of text or JSON;
/// with `parent_pipe`, a [`PassReport`] per pass instead.
pub fn run(g: &Global, parent_pipe: bool) -> anyhow::Result<()> {
    if parent_pipe {
        std::thread::spawn(|| {
            // Blocks until the parent's end closes: then the parent is gone.
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    // Events need libvirt's event loop, registered before any connection.
    vmdesk_libvirt::events::start_event_loop()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let factory = Arc::new(LibvirtFactory::watching(tx));
    let core = open_core(g, Arc::clone(&factory), None)?;
    let sync = settings(g)?.sync;
    if !sync.enabled {
        eprintln!("status sync is disabled in the settings ([sync] enabled = false)");
        return Ok(());
    }
    let json = g.json;
    let every = (
        Duration::from_secs(sync.fast_interval_secs),
        Duration::from_secs(sync.full_interval_secs),
    );
    let line = |text: String| {
        if let Err(e) = out(&text) {
            // Nobody reads any more (`sync --watch | head`): stop quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    };
    let changes = |changes: &[vmdesk_core::SyncChange]| {
        if parent_pipe {
            return;
        }
        for c in changes {
            line(if json {
                serde_json::to_string(c).unwrap_or_default()
            } else {
                format!("{}: {} -> {} ({})", c.vm, c.was, c.now, c.source)
            });
        }
    };
    let pass = |p: &PassReport| {
        if parent_pipe {
            line(serde_json::to_string(p).unwrap_or_default());
        }
    };
    watch(
        &core,
        &factory,
        &g.actor,
        &rx,
        every,
        &Reports {
            changes: &changes,
            pass: &pass,
        },
        &|| true,
    );
    Ok(())
}

/// Where [`watch`] reports.
pub struct Reports<'a> {
    /// What changed (each pass, each event).
    pub changes: &'a dyn Fn(&[vmdesk_core::SyncChange]),
    /// How each pass went.
    pub pass: &'a dyn Fn(&PassReport),
}

/// Follows the libvirt hosts: lifecycle events are reconciled as they come;
/// a connection that died is reopened (and followed by a full pass); a full
/// pass runs at the start and every `full_every`, a pass over the active
/// sessions' VMs every `fast_every`, each followed by billing; the
/// write-ahead log is checkpointed past [`WAL_LIMIT`]. Runs while
/// `keep_going` says so (`vmdesk serve`: while it leads).
pub fn watch(
    core: &Core,
    factory: &LibvirtFactory,
    actor: &str,
    rx: &std::sync::mpsc::Receiver<vmdesk_libvirt::events::LifecycleEvent>,
    (fast_every, full_every): (Duration, Duration),
    reports: &Reports<'_>,
    keep_going: &dyn Fn() -> bool,
) {
    let report = reports.changes;
    let mut last_full = Instant::now();
    let mut last_fast = Instant::now();
    let mut full_due = true;
    let mut last_check = Instant::now() - CONNECTIONS_EVERY * 5;
    let mut last_checkpoint = Instant::now();
    let mut unreachable: Vec<String> = Vec::new();
    // The URIs found down at the last look.
    let mut was_down: Vec<String> = Vec::new();
    // Machines seen off under a session, to look at again once the reboot
    // grace is over.
    let mut again: Vec<(Instant, String, String)> = Vec::new();
    let mut last_addresses = Instant::now();
    while keep_going() {
        // Writers never checkpoint (see vmdesk_core::store); a headless
        // watcher is the one long-lived process, so it keeps the log short.
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            last_checkpoint = Instant::now();
            if let Err(e) = core.checkpoint_if_over(WAL_LIMIT) {
                tracing::warn!(error = %e.one_line(), "checkpoint");
            }
        }
        let now = Instant::now();
        for (_, uri, machine) in again.extract_if(.., |(due, _, _)| *due <= now) {
            reconciled(
                core.reconcile_machine(&uri, &machine, "event", true),
                report,
            );
        }
        let wait = again
            .iter()
            .map(|(due, _, _)| due.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(500))
            .min(Duration::from_millis(500))
            .min(CHECKPOINT_EVERY);
        if let Ok(e) = rx.recv_timeout(wait) {
            let r = core.reconcile_machine(&e.uri, &e.machine, "event", false);
            if matches!(r, Ok(vmdesk_core::Reconciled::LookAgain)) {
                again.push((Instant::now() + core.reboot_grace(), e.uri, e.machine));
            } else {
                reconciled(r, report);
            }
            continue;
        }
        // Addresses come by DHCP some seconds after a start, with no event:
        // running VMs without one are asked often, every running VM at each
        // sync pass (a lease that changed).
        if last_addresses.elapsed() >= ADDRESSES_EVERY {
            last_addresses = Instant::now();
            if let Err(e) = core.sync_addresses(false, false, "poll") {
                tracing::warn!(error = %e.one_line(), "addresses");
            }
        }
        let mut full = full_due || last_full.elapsed() >= full_every;
        if last_check.elapsed() >= CONNECTIONS_EVERY {
            last_check = Instant::now();
            let mut down = Vec::new();
            for uri in core.libvirt_uris().unwrap_or_default() {
                let back = if factory.is_connected(&uri) {
                    // Connected in the background since the last look.
                    was_down.contains(&uri)
                } else if factory.provider_within(&uri, CONNECT_WAIT).is_ok() {
                    true
                } else {
                    // The connect goes on in the background; a host that
                    // hangs costs this loop CONNECT_WAIT, not its timeout.
                    down.push(uri);
                    continue;
                };
                if back {
                    // (Re)connected: events may have been missed meanwhile.
                    tracing::info!(%uri, "watching");
                    full = true;
                }
            }
            if down.iter().any(|u| !was_down.contains(u)) {
                // A host just went away: its VMs are UNKNOWN now, not at the
                // next full pass.
                full = true;
            }
            unreachable = host_names(core, actor, &down);
            was_down = down;
        }
        if full || last_fast.elapsed() >= fast_every {
            last_fast = Instant::now();
            if full {
                last_full = last_fast;
                full_due = false;
            }
            if let Err(e) = core.sync_addresses(true, full, "poll") {
                tracing::warn!(error = %e.one_line(), "addresses");
            }
            let (changes, error) = match core.sync_and_bill(full, "poll") {
                Ok(changes) => {
                    if !changes.is_empty() {
                        report(&changes);
                    }
                    (changes.len(), None)
                }
                Err(err) => {
                    tracing::warn!(error = %err.one_line(), "sync");
                    (0, Some(err.one_line()))
                }
            };
            (reports.pass)(&PassReport {
                at: vmdesk_core::ago(Duration::ZERO),
                full,
                changes,
                error,
                unreachable: unreachable.clone(),
            });
        }
    }
}

/// The names of the hosts of `uris` (a URI without a host stays a URI).
fn host_names(core: &Core, actor: &str, uris: &[String]) -> Vec<String> {
    if uris.is_empty() {
        return Vec::new();
    }
    let hosts = core.host_list(actor).unwrap_or_default();
    uris.iter()
        .map(|u| {
            hosts
                .iter()
                .find(|h| &h.uri == u)
                .map_or_else(|| u.clone(), |h| h.name.clone())
        })
        .collect()
}

fn reconciled(
    r: vmdesk_core::Result<vmdesk_core::Reconciled>,
    report: &dyn Fn(&[vmdesk_core::SyncChange]),
) {
    match r {
        Ok(vmdesk_core::Reconciled::Changed(change)) => report(&[change]),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err.one_line(), "event"),
    }
}
