//! The SQLite file: schema migrations, connection settings and small helpers.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use rusqlite_migration::{Migrations, M};

use crate::error::{Error, Result};

/// The schema, one migration per step; never edit a step that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
INSERT INTO settings (key, value) VALUES ('install_id', lower(hex(randomblob(16))));

CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    -- Kept equal to the sum of the user's ledger entries by the trigger below.
    balance    INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at TEXT NOT NULL
) STRICT;
INSERT INTO users (name, role, balance, created_at)
VALUES ('admin', 'admin', 0, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

CREATE TABLE projects (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
) STRICT;

CREATE TABLE workspaces (
    id         INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (project_id, name)
) STRICT;

CREATE TABLE hosts (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL CHECK (kind IN ('libvirt', 'azure')),
    uri        TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

CREATE TABLE vms (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    os_type         TEXT NOT NULL,
    ram_mb          INTEGER NOT NULL CHECK (ram_mb > 0),
    disk_gb         INTEGER NOT NULL CHECK (disk_gb > 0),
    cpu_cores       INTEGER NOT NULL CHECK (cpu_cores > 0),
    vm_type         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('CREATING', 'STOPPED', 'STARTING', 'RUNNING',
                        'STOPPING', 'FAILED_TO_START', 'DESTROYED', 'UNKNOWN')),
    ip_address      TEXT,
    ssh_port        INTEGER,
    uptime_seconds  INTEGER,
    metadata        TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    owner_user_id   INTEGER REFERENCES users(id),
    project_id      INTEGER REFERENCES projects(id),
    host_id         INTEGER NOT NULL REFERENCES hosts(id),
    provider_id     TEXT,
    -- The live session holding the VM; kept by the triggers on sessions.
    live_session_id INTEGER,
    -- The worker (see workers/ in the data dir) creating the VM, while it is CREATING.
    worker          TEXT,
    last_stopped    TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    CHECK ((owner_user_id IS NULL) <> (project_id IS NULL))
) STRICT;
-- Allocation reads the free VMs of a pool, least recently stopped first, from these.
CREATE INDEX vms_free ON vms (project_id, last_stopped, id)
    WHERE live_session_id IS NULL AND status IN ('STOPPED', 'RUNNING');
CREATE INDEX vms_free_by_type ON vms (project_id, vm_type, last_stopped, id)
    WHERE live_session_id IS NULL AND status IN ('STOPPED', 'RUNNING');
CREATE INDEX vms_owner ON vms (owner_user_id);

CREATE TABLE sessions (
    id           INTEGER PRIMARY KEY,
    vm_id        INTEGER NOT NULL REFERENCES vms(id),
    user_id      INTEGER NOT NULL REFERENCES users(id),
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    workspace_id INTEGER REFERENCES workspaces(id),
    status       TEXT NOT NULL CHECK (status IN ('REQUESTED', 'STARTING', 'ACTIVE', 'TERMINATING',
                     'COMPLETED', 'TERMINATED', 'FAILED')),
    error        TEXT,
    -- The worker driving a transition; NULL when nobody is (pending or settled).
    worker       TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    started_at   TEXT,
    ended_at     TEXT
) STRICT;
-- The exclusivity rule itself: at most one live session per VM.
CREATE UNIQUE INDEX sessions_one_live_per_vm ON sessions (vm_id)
    WHERE status IN ('REQUESTED', 'STARTING', 'ACTIVE', 'TERMINATING');
CREATE INDEX sessions_user ON sessions (user_id, id);
CREATE INDEX sessions_pending ON sessions (status, worker)
    WHERE status IN ('REQUESTED', 'STARTING', 'TERMINATING');

CREATE TRIGGER sessions_hold_vm AFTER INSERT ON sessions
WHEN NEW.status IN ('REQUESTED', 'STARTING', 'ACTIVE', 'TERMINATING')
BEGIN
    UPDATE vms SET live_session_id = NEW.id WHERE id = NEW.vm_id;
END;
CREATE TRIGGER sessions_release_vm AFTER UPDATE OF status ON sessions
WHEN NEW.status NOT IN ('REQUESTED', 'STARTING', 'ACTIVE', 'TERMINATING')
BEGIN
    UPDATE vms SET live_session_id = NULL WHERE id = NEW.vm_id AND live_session_id = NEW.id;
END;

CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    amount     INTEGER NOT NULL CHECK (amount <> 0),
    kind       TEXT NOT NULL CHECK (kind IN ('grant', 'vm_create', 'runtime', 'refund', 'adjustment')),
    reason     TEXT NOT NULL,
    vm_id      INTEGER,
    session_id INTEGER,
    actor      TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
CREATE INDEX ledger_user ON ledger (user_id, id);
-- The balance follows the ledger in the same statement; its CHECK refuses a
-- negative balance, so the check and the deduction are one atomic step.
CREATE TRIGGER ledger_apply AFTER INSERT ON ledger
BEGIN
    UPDATE users SET balance = balance + NEW.amount WHERE id = NEW.user_id;
END;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;

CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    type       TEXT NOT NULL CHECK (type IN ('vm', 'session', 'billing', 'system', 'admin')),
    action     TEXT NOT NULL,
    severity   TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    actor      TEXT NOT NULL,
    vm_id      INTEGER,
    session_id INTEGER,
    details    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details)),
    created_at TEXT NOT NULL
) STRICT;
CREATE INDEX events_actor ON events (actor, id);
"#,
    r#"
-- Whether a VM being created is to be started once it exists (vm create --no-start).
ALTER TABLE vms ADD COLUMN start_after_create INTEGER NOT NULL DEFAULT 1;
CREATE INDEX vms_pending ON vms (status, worker) WHERE status = 'CREATING';
"#,
    r#"
-- Disk images of the OS catalog (besides the built-in 'blank'), kept as files
-- under os/ in the data directory and uploaded to a host on first use.
CREATE TABLE os_images (
    name       TEXT PRIMARY KEY,
    file       TEXT NOT NULL,
    bytes      INTEGER NOT NULL CHECK (bytes > 0),
    created_at TEXT NOT NULL
) STRICT;
"#,
    r#"
-- When a VM last came up, for its uptime; set on every change to RUNNING.
ALTER TABLE vms ADD COLUMN started_at TEXT;
CREATE TRIGGER vms_started AFTER UPDATE OF status ON vms
WHEN NEW.status = 'RUNNING' AND OLD.status <> 'RUNNING'
BEGIN
    UPDATE vms SET started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
"#,
    r#"
-- Metered billing: running time is charged up to billed_until; the fraction of
-- a credit not charged yet is carried in thousandths.
ALTER TABLE vms ADD COLUMN billed_until TEXT;
ALTER TABLE vms ADD COLUMN billing_milli INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- When the host last told a VM's state, and what told it (poll, event).
ALTER TABLE vms ADD COLUMN synced_at TEXT;
ALTER TABLE vms ADD COLUMN synced_by TEXT;
"#,
    r#"
-- A host's machine by its id there (events, sync, import).
CREATE INDEX vms_host_machine ON vms (host_id, provider_id);
"#,
    r#"
-- Open consoles: a port of the pool, the VM it shows, who opened it, the
-- process serving its bridge (see workers/), and its single-use token, hashed.
CREATE TABLE consoles (
    port          INTEGER PRIMARY KEY,
    vm_id         INTEGER NOT NULL REFERENCES vms(id),
    user_id       INTEGER NOT NULL REFERENCES users(id),
    worker        TEXT NOT NULL,
    token_hash    TEXT NOT NULL,
    token_expires TEXT NOT NULL,
    token_used    INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
) STRICT;
"#,
    r#"
-- Machines on a host that carry this data directory's mark but have no VM
-- row (a crash between host and database, or a restored database): kept
-- stopped with their disks until an admin purges them after a grace period.
CREATE TABLE quarantine (
    host_id  INTEGER NOT NULL REFERENCES hosts(id),
    machine  TEXT NOT NULL,
    found_at TEXT NOT NULL,
    PRIMARY KEY (host_id, machine)
) STRICT;
"#,
    r#"
-- The SHA-256 of each catalog image, recorded at import (NULL: imported
-- before; computed from the file when used). An image's file is a plain name
-- inside os/ of the data directory, never a path.
ALTER TABLE os_images ADD COLUMN sha256 TEXT;
UPDATE os_images SET file = substr(file, 4) WHERE file LIKE 'os/%';
"#,
    r#"
-- The least memory (MB) and disk (GB) an imported OS boots with (NULL: not
-- said at import; the general minimum of a VM applies).
ALTER TABLE os_images ADD COLUMN min_ram_mb INTEGER;
ALTER TABLE os_images ADD COLUMN min_disk_gb INTEGER;
"#,
    r#"
-- A VM's creation charge is refunded once: a second refund entry for the
-- same VM is refused by the database, whoever races for it.
CREATE UNIQUE INDEX ledger_refund_once ON ledger (vm_id) WHERE kind = 'refund';
"#,
    r#"
-- A project's cost controls (NULL: no limit), and what enforcing them
-- found of each session.
ALTER TABLE projects ADD COLUMN max_session_minutes INTEGER;
ALTER TABLE projects ADD COLUMN idle_minutes INTEGER;
ALTER TABLE projects ADD COLUMN idle_cpu_percent INTEGER NOT NULL DEFAULT 5;
ALTER TABLE projects ADD COLUMN weekly_hours INTEGER;
ALTER TABLE sessions ADD COLUMN idle_since TEXT;
ALTER TABLE sessions ADD COLUMN idle_warned_at TEXT;
ALTER TABLE sessions ADD COLUMN length_warned_at TEXT;
-- The weekly quota reads a user's sessions in a project.
CREATE INDEX sessions_user_project ON sessions (user_id, project_id, started_at);
"#,
    r#"
-- Each VM row's change number (issue 16), so that a list refetches only the
-- rows changed since it last asked. Triggers set it on every insert and
-- update of the row, whoever writes, and when what the row shows by name
-- (its project, host or owner) is renamed. Writes are serialized, so the
-- numbers follow the order of commits.
ALTER TABLE vms ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
CREATE TABLE vm_rev (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL) STRICT;
INSERT INTO vm_rev (id, n) VALUES (1, 1);
UPDATE vms SET rev = 1;
CREATE INDEX vms_rev ON vms (rev);
CREATE TRIGGER vms_rev_insert AFTER INSERT ON vms BEGIN
    UPDATE vm_rev SET n = n + 1;
    UPDATE vms SET rev = (SELECT n FROM vm_rev) WHERE id = NEW.id;
END;
CREATE TRIGGER vms_rev_update AFTER UPDATE ON vms WHEN NEW.rev = OLD.rev BEGIN
    UPDATE vm_rev SET n = n + 1;
    UPDATE vms SET rev = (SELECT n FROM vm_rev) WHERE id = NEW.id;
END;
CREATE TRIGGER projects_rev AFTER UPDATE OF name ON projects BEGIN
    UPDATE vm_rev SET n = n + 1;
    UPDATE vms SET rev = (SELECT n FROM vm_rev) WHERE project_id = NEW.id;
END;
CREATE TRIGGER hosts_rev AFTER UPDATE OF name ON hosts BEGIN
    UPDATE vm_rev SET n = n + 1;
    UPDATE vms SET rev = (SELECT n FROM vm_rev) WHERE host_id = NEW.id;
END;
CREATE TRIGGER users_rev AFTER UPDATE OF name ON users BEGIN
    UPDATE vm_rev SET n = n + 1;
    UPDATE vms SET rev = (SELECT n FROM vm_rev) WHERE owner_user_id = NEW.id;
END;
"#,
];

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "vmdesk.db";

/// The current time, as stored: RFC 3339, UTC, milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The time `d` ago, written as the core writes times (comparable as text).
pub fn ago(d: Duration) -> String {
    let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
    (chrono::Utc::now() - d).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How long a statement waits for another process's write lock.
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// Waits for a lock held by another process with short, growing sleeps, so that
/// many processes take turns quickly (SQLite's own timeout sleeps up to 100 ms).
fn busy_handler(attempt: i32) -> bool {
    let attempt = u64::try_from(attempt).unwrap_or(0);
    let step_us = (50 + attempt * 25).min(2_000);
    // The waits add up to roughly BUSY_WAIT before giving up.
    let waited_us: u64 = if attempt < 78 {
        (0..attempt).map(|a| (50 + a * 25).min(2_000)).sum()
    } else {
        (0..78).map(|a| 50 + a * 25).sum::<u64>() + (attempt - 78) * 2_000
    };
    if waited_us > BUSY_WAIT.as_micros() as u64 {
        return false;
    }
    // A little jitter so that waiting processes do not wake in lock-step.
    let jitter = u64::from(std::process::id() % 7) * 10;
    std::thread::sleep(Duration::from_micros(step_us + jitter));
    true
}

/// A connection and this connection's handle on the data directory's write
/// lock. Writers of all processes queue on that lock in the kernel (`flock`)
/// rather than polling SQLite's lock, so the lock passes from one writer to
/// the next without sleeps; SQLite's own locking still guards correctness.
/// Before the lock, writers line up in a first-come, first-served queue
/// ([`Place`]), so the lock is handed to the longest waiter instead of to
/// whichever of all the waiters the kernel wakes first.
pub struct Db {
    conn: Connection,
    lock: File,
    /// This connection's handle on the queue's ticket file (appends).
    tickets: Option<File>,
    lock_wait: Duration,
    dir: std::path::PathBuf,
}

impl std::ops::Deref for Db {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Db {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// How long a writer waits for another process's write lock by default.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Mode of the data directory: its owner's alone.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files vmdesk creates in it.
pub const FILE_MODE: u32 = 0o600;

/// Creates the data directory (its parents as usual, itself 0700) and warns
/// when an existing one is open to other users.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            // The umask may have narrowed the mode further; never wider.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{mode:o}"),
                    "the data directory is open to other users; run 'chmod 700' on it"
                );
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Opens a file of the data directory for writing, creating it 0600.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Opens (creating and migrating if needed) the database of a data directory.
pub fn open(dir: &Path) -> Result<Db> {
    let io = |source| Error::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    ensure_private_dir(dir).map_err(io)?;
    let path = dir.join(DB_FILE);
    // SQLite gives the -wal and -shm files the mode of the database file.
    private_file(&path).map_err(io)?;
    let mut conn = Connection::open(&path)?;
    conn.busy_handler(Some(busy_handler))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints (which fsync) run outside the write path: see `checkpoint`.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "cache_size", -16_384)?;
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;

    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    check_version(current)?;
    let migrations = migrations();
    if usize::try_from(current).unwrap_or(0) < MIGRATIONS.len() {
        // Creating or migrating: one process at a time, across processes.
        let lock = lock_file(dir).map_err(io)?;
        let held = acquire(dir, &lock, None, LOCK_WAIT)?;
        // Another process may have migrated further while this one waited.
        let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        check_version(current)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        migrations.to_latest(&mut conn)?;
        drop(held);
        drop(lock);
    }
    let lock = lock_file(dir).map_err(io)?;
    // Without a ticket file writers still serialize, in no particular order.
    let tickets = ticket_file(dir).ok();
    Ok(Db {
        conn,
        lock,
        tickets,
        lock_wait: LOCK_WAIT,
        dir: dir.to_path_buf(),
    })
}

/// The schema version this build writes.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

/// Refuses a database whose schema is newer than this build's: its rows
/// would be written without the newer columns and triggers.
fn check_version(found: i64) -> Result<()> {
    if usize::try_from(found).is_ok_and(|f| f > MIGRATIONS.len()) {
        return Err(Error::DatabaseTooNew {
            found,
            supported: MIGRATIONS.len(),
        });
    }
    Ok(())
}

impl Db {
    /// Sets how long a write waits for another process's write lock before
    /// it fails with [`Error::Busy`].
    pub fn set_lock_wait(&mut self, wait: Duration) {
        self.lock_wait = wait;
    }
}

/// Copies the write-ahead log back into the database file without blocking
/// writers (a PASSIVE checkpoint), on a connection of its own. Writers never
/// checkpoint (and so never fsync) themselves; long-lived processes call this
/// periodically and every process calls it when it closes.
pub fn checkpoint(dir: &Path) -> Result<()> {
    let conn = Connection::open(dir.join(DB_FILE))?;
    conn.busy_handler(Some(busy_handler))?;
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    Ok(())
}

/// Name of the write lock file inside the data directory.
pub const LOCK_FILE: &str = "vmdesk.lock";

fn lock_file(dir: &Path) -> std::io::Result<File> {
    private_file(&dir.join(LOCK_FILE))
}

/// Name of the queue's ticket file inside the data directory: each writer
/// appends a byte, and where its byte landed is its ticket.
pub const TICKET_FILE: &str = "vmdesk.tickets";
/// Name of the file whose bytes are the queue's slots (locked, never written).
pub const QUEUE_FILE: &str = "vmdesk.queue";
/// Slots of the queue: ticket `t` holds slot `t % SLOTS`.
const SLOTS: u64 = 4096;
/// The ticket file is emptied (by a writer holding the lock) past this size.
const TICKETS_MAX: u64 = 1 << 20;

fn ticket_file(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(dir.join(TICKET_FILE))
}

/// A writer's place in the queue: a lock on its ticket's slot (an open file
/// description's lock, `F_OFD_SETLK`), held until it has written and let go
/// of the write lock; its successor waits for that slot. The kernel drops
/// the lock with the description, so a writer that dies hands over too.
/// The queue only orders writers: the write lock (and SQLite's) still
/// guard the database, so a place that cannot be had (no such locks on
/// this file system, a slot still held after the ticket file wrapped) only
/// costs the order.
struct Place {
    /// The description holding the slot's lock.
    slots: File,
    /// The slot of the writer ahead.
    ahead: u64,
    /// The ticket.
    ticket: u64,
}

fn slot_lock(kind: i32, slot: u64) -> nix::libc::flock {
    nix::libc::flock {
        l_type: kind as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: slot as i64,
        l_len: 1,
        l_pid: 0,
    }
}

impl Place {
    /// Takes a ticket and locks its slot.
    fn take(dir: &Path, mut tickets: &File) -> std::io::Result<Place> {
        use nix::fcntl::{fcntl, FcntlArg};
        use std::io::{Seek, Write};
        tickets.write_all(&[0])?;
        // O_APPEND put the byte at the end: this description's offset is
        // now just past it, whoever appended meanwhile.
        let ticket = tickets.stream_position()?;
        let slots = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(FILE_MODE)
            .open(dir.join(QUEUE_FILE))?;
        let mine = slot_lock(nix::libc::F_WRLCK, ticket % SLOTS);
        fcntl(&slots, FcntlArg::F_OFD_SETLK(&mine))?;
        Ok(Place {
            slots,
            ahead: (ticket + SLOTS - 1) % SLOTS,
            ticket,
        })
    }

    /// Whether the writer ahead is gone (or never came) now.
    fn ahead_gone(&self) -> bool {
        use nix::fcntl::{fcntl, FcntlArg};
        let mut probe = slot_lock(nix::libc::F_WRLCK, self.ahead);
        fcntl(&self.slots, FcntlArg::F_OFD_GETLK(&mut probe))
            .is_ok_and(|_| i32::from(probe.l_type) == nix::libc::F_UNLCK)
    }

    /// Waits until the writer ahead has let go (it is done, or died).
    fn wait_ahead(&self) {
        use nix::fcntl::{fcntl, FcntlArg};
        let ahead = slot_lock(nix::libc::F_WRLCK, self.ahead);
        if fcntl(&self.slots, FcntlArg::F_OFD_SETLKW(&ahead)).is_ok() {
            let _ = fcntl(
                &self.slots,
                FcntlArg::F_OFD_SETLK(&slot_lock(nix::libc::F_UNLCK, self.ahead)),
            );
        }
    }
}

/// How a writer holds the data directory's write lock, and its place in
/// the queue (let go after the lock).
enum Held {
    /// On the connection's own lock file handle.
    Own(Option<Place>),
    /// On a handle of its own, taken by a waiting thread.
    Other(File, Option<Place>),
    /// Not at all: the file system has no `flock` (SQLite still serializes).
    Unlocked(Option<Place>),
}

/// Takes the write lock, waiting at most `wait`: in line first (a ticket of
/// the queue, when `tickets` is given), then the lock. With nobody ahead and
/// the lock free it is a few system calls. Otherwise a thread waits, for the
/// writer ahead and then in the kernel's queue of the lock on a handle of its
/// own (so the lock passes on without polling), while this one waits at most
/// `wait`: a stopped or hung holder makes this writer fail with
/// [`Error::Busy`] instead of hanging for ever. A waiter given up on leaves
/// its place and releases the lock as soon as it gets it.
fn acquire(dir: &Path, lock: &File, tickets: Option<&File>, wait: Duration) -> Result<Held> {
    let place = tickets.and_then(|t| Place::take(dir, t).ok());
    if place.as_ref().is_none_or(Place::ahead_gone) {
        match lock.try_lock() {
            Ok(()) => return Ok(Held::Own(place)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(_)) => return Ok(Held::Unlocked(place)),
        }
    }
    let io = |source| Error::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    let file = lock_file(dir).map_err(io)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("vmdesk-lock-wait".into())
        .spawn(move || {
            if let Some(p) = &place {
                p.wait_ahead();
            }
            let taken = file.lock();
            // If nobody waits any more, the handle and the place come back
            // and are dropped here, unlocking.
            let _ = tx.send((taken, file, place));
        })
        .map_err(io)?;
    match rx.recv_timeout(wait) {
        Ok((Ok(()), file, place)) => Ok(Held::Other(file, place)),
        Ok((Err(_), _, place)) => Ok(Held::Unlocked(place)),
        Err(_) => Err(Error::Busy {
            holder: lock_holder(lock).map_or_else(
                || "another process".to_owned(),
                |pid| format!("process {pid}"),
            ),
            secs: wait.as_secs_f64(),
        }),
    }
}

/// The process holding a `flock` on this file, from `/proc/locks`.
fn lock_holder(lock: &File) -> Option<u32> {
    let meta = lock.metadata().ok()?;
    let dev = meta.dev();
    let (major, minor) = (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    );
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    holder_in(&std::fs::read_to_string("/proc/locks").ok()?, &id)
}

/// The pid of the FLOCK line of `/proc/locks` on the file `id` (MAJ:MIN:INODE).
fn holder_in(locks: &str, id: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK ADVISORY WRITE 1234 08:01:5678 0 EOF"; blocked waiters are "1: -> FLOCK ...".
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// An identity of the data directory (device and inode): a copy of the
/// directory has another, so its machines on shared hosts are not this one's.
pub fn dir_identity(dir: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(dir)?;
    Ok(format!("{}:{}", m.dev(), m.ino()))
}

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction: the write lock is taken
/// first, so what `f` reads cannot change before it writes.
pub fn write<T>(db: &mut Db, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
    let held = acquire(&db.dir, &db.lock, db.tickets.as_ref(), db.lock_wait)?;
    let out = (|| {
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    })();
    // The lock first, then the place: the writer behind finds the lock free.
    let place = match held {
        Held::Own(place) => {
            let _ = db.lock.unlock();
            place
        }
        Held::Other(file, place) => {
            let _ = file.unlock();
            place
        }
        Held::Unlocked(place) => place,
    };
    if let (Some(p), Some(t)) = (place, &db.tickets) {
        // Empty the ticket file now and then. Writers that took a ticket
        // before this may then share a slot with later ones: the order
        // slips for a moment, nothing else.
        if p.ticket > TICKETS_MAX {
            let _ = t.set_len(0);
        }
    }
    out
}

/// The install id of this data directory (marks its machines on shared hosts).
pub fn install_id(conn: &Connection) -> Result<String> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'install_id'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        assert!(migrations().validate().is_ok());
    }

    #[test]
    fn writers_get_the_lock_in_the_order_they_came() {
        let dir = tempfile::tempdir().expect("a dir");
        drop(open(dir.path()).expect("a database"));
        for _ in 0..5 {
            let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let d = dir.path().to_path_buf();
            let holder = std::thread::spawn(move || {
                let mut db = open(&d).expect("a database");
                write(&mut db, |_| {
                    held_tx.send(()).expect("told");
                    go_rx.recv().expect("released");
                    Ok(())
                })
            });
            held_rx.recv().expect("held");
            // Six writers come one after another while the lock is held.
            let waiters: Vec<_> = (0..6)
                .map(|i| {
                    let (d, order) = (dir.path().to_path_buf(), std::sync::Arc::clone(&order));
                    let w = std::thread::spawn(move || {
                        let mut db = open(&d).expect("a database");
                        write(&mut db, |_| {
                            order.lock().expect("order").push(i);
                            Ok(())
                        })
                    });
                    std::thread::sleep(Duration::from_millis(60));
                    w
                })
                .collect();
            go_tx.send(()).expect("go");
            holder.join().expect("holder").expect("written");
            for w in waiters {
                w.join().expect("waiter").expect("written");
            }
            assert_eq!(*order.lock().expect("order"), [0, 1, 2, 3, 4, 5]);
        }
    }

    #[test]
    fn a_writer_that_dies_in_line_hands_over() {
        let dir = tempfile::tempdir().expect("a dir");
        let db = open(dir.path()).expect("a database");
        // A place taken and dropped (its description closed, as at a crash)
        // does not hold up the next writer.
        let tickets = db.tickets.as_ref().expect("a ticket file");
        let first = Place::take(dir.path(), tickets).expect("a place");
        let second = Place::take(dir.path(), tickets).expect("a place");
        assert_eq!(second.ticket, first.ticket + 1);
        assert!(!second.ahead_gone(), "the first is ahead");
        drop(first);
        assert!(second.ahead_gone());
    }

    #[test]
    fn the_holder_of_a_flock_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 08:01:42 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 08:01:42 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 99 08:01:42 0 EOF\n";
        assert_eq!(holder_in(locks, "08:01:42"), Some(4242));
        assert_eq!(holder_in(locks, "08:01:43"), None);
    }

    #[test]
    fn a_newer_schema_is_refused_and_the_current_one_is_not() {
        let newer = i64::try_from(MIGRATIONS.len() + 1).unwrap_or(i64::MAX);
        assert!(matches!(
            check_version(newer),
            Err(Error::DatabaseTooNew { .. })
        ));
        assert!(check_version(newer - 1).is_ok());
    }
}
