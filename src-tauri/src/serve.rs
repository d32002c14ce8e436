//! `vmdesk serve`: the team store's always-on worker. Run by an admin login
//! on any always-on machine, it does what must not depend on a desk being
//! open: status sync (libvirt lifecycle events and periodic passes, Azure),
//! metered billing, the sessions and creations desks left to a worker, and
//! the recovery of work whose desk died. Several
//! may run: one leads at a time, holding a PostgreSQL advisory lock on a
//! connection of its own; the others wait on it and take over within about a
//! second of the leader's connection ending (the server releases the lock
//! when the session ends, a `kill -9` included). What a leader does twice is
//! harmless: each VM's charge moves its billed-until mark under the VM's row
//! lock (see crates/postgres/sql/003_serve.sql), so no interval is billed
//! twice even while an old leader finishes a pass.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use vmdesk_libvirt::LibvirtFactory;

use crate::cli::{data_dir, open_core, settings, Global};

/// How often a waiting serve tries the lock, and a leader checks it holds it.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How often a leader looks for pending work and for work of dead workers.
const WORK_EVERY: Duration = Duration::from_secs(2);
/// How often a leader sweeps the hosts for marked machines without a row
/// (the quarantine), besides when it starts to lead.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Runs `vmdesk serve`. Without `foreground`, starts itself again detached
/// (its own process group, output to `serve.log` in the data directory) and
/// returns; with it, serves until killed.
pub fn run(g: &Global, foreground: bool) -> anyhow::Result<()> {
    let Some(url) = g.team.clone() else {
        bail!(
            "vmdesk serve works for a team store: log in first (`vmdesk login postgres://ADMIN@HOST/DB`) or pass --store URL"
        );
    };
    if !foreground {
        return detach(g);
    }
    // Events need libvirt's event loop, registered before any connection.
    vmdesk_libvirt::events::start_event_loop()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let factory = Arc::new(LibvirtFactory::watching(tx));
    let core = open_core(g, Arc::clone(&factory), None)?;
    core.require_admin(&g.actor, "run vmdesk serve")
        .map_err(|e| anyhow::anyhow!("{}", e.one_line()))?;
    let sync = settings(g)?.sync;
    let every = (
        Duration::from_secs(sync.fast_interval_secs.max(1)),
        Duration::from_secs(sync.full_interval_secs.max(1)),
    );
    let (target, _) = crate::store::with_password(&url)?;
    let host = hostname();
    let pid = std::process::id();
    eprintln!("serve: {} on {host} (pid {pid}), waiting to lead", g.actor);
    let mut waiting_said = false;
    loop {
        let mut lock = match target.connect() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("serve: cannot reach the team store: {e}; trying again");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        // The lock's key is the store's secret (admins only): a login that
        // could name it could hold the lead and stop sync and billing.
        let key: i64 = match lock.query_one("SELECT vmdesk.serve_lock_key()", &[]) {
            Ok(row) => row.get(0),
            Err(e) => {
                eprintln!("serve: the lead's key: {}", vmdesk_postgres::Error::from(e));
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        // Wait for the lock on this connection; a lost connection starts over.
        let got = loop {
            match lock.query_one("SELECT pg_try_advisory_lock($1)", &[&key]) {
                Ok(row) if row.get::<_, bool>(0) => break true,
                Ok(_) => {
                    if !waiting_said {
                        eprintln!("serve: another serve leads; waiting");
                        waiting_said = true;
                    }
                    std::thread::sleep(LOOK_EVERY);
                }
                Err(e) => {
                    eprintln!("serve: the lock's connection failed: {e}");
                    break false;
                }
            }
        };
        if !got {
            std::thread::sleep(LOOK_EVERY);
            continue;
        }
        waiting_said = false;
        let since = Instant::now();
        eprintln!("serve: leading");
        let _ = lock.execute(
            "SELECT vmdesk.system_note('serve.lead', 'info', $1::text::jsonb)",
            &[&json!({"host": host, "pid": pid}).to_string()],
        );
        // Leads while the lock's connection answers; looked at every half second.
        let holds = AtomicBool::new(true);
        let last_look = std::sync::Mutex::new(Instant::now());
        let lock = std::sync::Mutex::new(lock);
        let keep_going = || {
            let mut last = last_look.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= LOOK_EVERY {
                *last = Instant::now();
                let alive = lock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .simple_query("SELECT 1")
                    .is_ok();
                holds.store(alive, Ordering::SeqCst);
            }
            holds.load(Ordering::SeqCst)
        };
        let changes = |c: &[vmdesk_core::SyncChange]| {
            for c in c {
                eprintln!("serve: {}: {} -> {} ({})", c.vm, c.was, c.now, c.source);
            }
        };
        let pass = |p: &crate::watch::PassReport| {
            if let Some(e) = &p.error {
                eprintln!("serve: pass failed: {e}");
            }
        };
        let leading = AtomicBool::new(true);
        std::thread::scope(|scope| {
            // Work desks left to a worker, and the work of desks that died.
            scope.spawn(|| {
                let mut swept: Option<Instant> = None;
                while leading.load(Ordering::SeqCst) {
                    if swept.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                        swept = Some(Instant::now());
                        // Recovery, console ports and the quarantine of every host.
                        match core.recover_all(&g.actor) {
                            Ok(done) => {
                                for e in done {
                                    eprintln!("serve: {}: {}", e.action, e.details);
                                }
                            }
                            Err(e) => eprintln!("serve: recovery: {}", e.one_line()),
                        }
                    } else if let Err(e) = core.recover() {
                        eprintln!("serve: recovery: {}", e.one_line());
                    }
                    if let Err(e) = core.drive_pending() {
                        eprintln!("serve: pending work: {}", e.one_line());
                    }
                    for _ in 0..10 {
                        if !leading.load(Ordering::SeqCst) {
                            break;
                        }
                        std::thread::sleep(WORK_EVERY / 10);
                    }
                }
            });
            crate::watch::watch(
                &core,
                &factory,
                &g.actor,
                &rx,
                every,
                &crate::watch::Reports {
                    changes: &changes,
                    pass: &pass,
                },
                &keep_going,
            );
            leading.store(false, Ordering::SeqCst);
        });
        eprintln!(
            "serve: lost the lead after {:.0} s (the store's connection ended); waiting to lead again",
            since.elapsed().as_secs_f64()
        );
    }
}

/// Starts `vmdesk serve --foreground` with the same options, detached from
/// this terminal, and says where it logs.
fn detach(g: &Global) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::os::unix::process::CommandExt;
    let dir = data_dir(g)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join("serve.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe()?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting vmdesk serve")?;
    println!(
        "vmdesk serve started (pid {}); it logs to {}",
        child.id(),
        log_path.display()
    );
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "this machine".to_owned())
}
