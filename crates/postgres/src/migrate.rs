//! `vmdesk store migrate --to postgres://…`: copies an embedded data
//! directory (its SQLite file, read-only) into an empty team store, in one
//! transaction run as the store's owner role, verifies what it wrote (row
//! counts and ids per table, every user's balance rebuilt from the ledger)
//! and commits only if all of it matches.
//!
//! Ids are kept, so every reference (a session's VM, a ledger line's session,
//! an event's VM) stays true; the few rows `init` wrote (the first admin and
//! its event) are renumbered after the copied ones. An embedded user named
//! like the store's first admin becomes that admin. Every other user gets a
//! login of the cluster without a password (an existing plain login is used
//! as it is), in the store's user group and, for admins, its admin group.
//! What belongs to the desk (consoles, the OS image files, the desk's
//! settings) stays there.
//!
//! Refusals come back as [`crate::Error::Db`] with the server's message and
//! a SQLSTATE of their own: `VDM01` the team store is not empty, `VDM02` the
//! embedded data cannot be copied (missing, too new, a name the team store
//! cannot take), `VDM03` what was written does not match (nothing is kept).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::time::Instant;

use postgres::Transaction;
use rusqlite::types::ValueRef;
use rusqlite::OpenFlags;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{roles, schema_version, Error, Target, STEPS};

/// Name of the embedded store's file in a data directory (crates/core's
/// `store::DB_FILE`).
pub const DB_FILE: &str = "vmdesk.db";
/// The newest embedded schema this build reads (crates/core's number of
/// migrations).
pub const EMBEDDED_SCHEMA: i64 = 14;
/// The oldest embedded schema with every column copied (quarantine, billing,
/// sync and project limit columns); an older file is brought up to date by
/// opening it once with vmdesk.
pub const EMBEDDED_SCHEMA_MIN: i64 = 13;

/// SQLSTATE of a refusal: the team store is not empty (nothing changed).
pub const NOT_EMPTY: &str = "VDM01";
/// SQLSTATE of a refusal: the embedded data cannot be copied (missing, too
/// new or too old, a user name the team store cannot take).
pub const CANNOT_COPY: &str = "VDM02";
/// SQLSTATE of a refusal: what was written does not match what was read
/// (counts, ids, balances); the transaction is rolled back.
pub const MISMATCH: &str = "VDM03";

/// Rows per INSERT statement.
const CHUNK: usize = 2000;

/// One table's copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copied {
    pub table: String,
    /// Rows read from the embedded store and written to the team store.
    pub rows: i64,
}

/// Something not copied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub what: String,
    pub rows: i64,
    pub why: String,
}

/// What a migration did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The data directory copied from.
    pub source: String,
    /// The team store copied to ("host:port/db").
    pub target: String,
    /// The embedded schema version read.
    pub embedded_schema: i64,
    /// Rows copied, table by table, in the order copied.
    pub copied: Vec<Copied>,
    /// Users whose balance was rebuilt from the ledger and found equal to
    /// the embedded one.
    pub balances_checked: usize,
    /// The sum of all balances (equal on both sides).
    pub credits_total: i64,
    /// Logins created without a password: an admin gives each one
    /// (`ALTER ROLE … PASSWORD`, or certificate authentication).
    pub logins_created: Vec<String>,
    /// Logins the cluster had already, used as they are (their password is
    /// their own).
    pub logins_existing: Vec<String>,
    /// The embedded user that became the team store's first admin (same name).
    pub merged_admin: Option<String>,
    /// What stayed on the desk, and why.
    pub skipped: Vec<Skipped>,
    /// Things to know (work in progress copied as it was, the desk's mark).
    pub notes: Vec<String>,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
}

impl Report {
    /// Rows copied of `table` (0 if none or not copied).
    pub fn rows(&self, table: &str) -> i64 {
        self.copied
            .iter()
            .find(|c| c.table == table)
            .map_or(0, |c| c.rows)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "copied {} (schema {}) to {} in {:.1} s:",
            self.source,
            self.embedded_schema,
            self.target,
            self.elapsed_ms as f64 / 1000.0
        )?;
        for c in &self.copied {
            writeln!(f, "  {:<11} {:>8}", c.table, c.rows)?;
        }
        writeln!(
            f,
            "balances: {} users checked, equal to the ledger on both sides ({} credits in all)",
            self.balances_checked, self.credits_total
        )?;
        if let Some(a) = &self.merged_admin {
            writeln!(f, "the desk's user {a} is the team store's first admin")?;
        }
        if !self.logins_created.is_empty() {
            writeln!(
                f,
                "logins to give a password (created without one): {}",
                self.logins_created.join(", ")
            )?;
        }
        if !self.logins_existing.is_empty() {
            writeln!(
                f,
                "logins the cluster had already (their password is their own): {}",
                self.logins_existing.join(", ")
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "not copied: {} ({} rows): {}", s.what, s.rows, s.why)?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Copies the embedded store of `data_dir` into the empty team store at
/// `to`, verifies it and commits; see the module's documentation. `to`'s
/// login must be allowed to act as the store's owner role (the superuser
/// that ran `init`, typically).
pub fn from_embedded(data_dir: &Path, to: &Target) -> Result<Report, Error> {
    let started = Instant::now();
    let mut client = to.connect()?;
    let known = STEPS.len() as i32;
    let at = schema_version(&mut client)?;
    if at > known {
        return Err(Error::TooNew { found: at, known });
    }
    if at < known {
        return Err(refuse(
            &mut client,
            CANNOT_COPY,
            &format!(
                "the database {} is not an initialised vmdesk team store (or an older one): run `vmdesk store init` first",
                to.dbname()
            ),
        ));
    }
    let src = match read_embedded(data_dir) {
        Ok(src) => src,
        Err(msg) => return Err(refuse(&mut client, CANNOT_COPY, &msg)),
    };
    let mut report = Report {
        source: data_dir.display().to_string(),
        target: to.describe(),
        embedded_schema: src.version,
        ..Report::default()
    };
    let mut tx = client.transaction()?;
    match copy(&mut tx, to, &src, &mut report) {
        Ok(()) => {}
        Err(Refusal::Db(e)) => return Err(e.into()),
        Err(Refusal::Said(code, msg)) => return Err(refuse(&mut tx, code, &msg)),
    }
    tx.commit()?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Why a copy stops: the server refused, or this module did.
enum Refusal {
    Db(postgres::Error),
    Said(&'static str, String),
}

impl From<postgres::Error> for Refusal {
    fn from(e: postgres::Error) -> Self {
        Refusal::Db(e)
    }
}

/// Has the server raise `msg` with SQLSTATE `code`, so that the refusal is
/// an [`Error::Db`] like any other (and aborts an open transaction).
fn refuse(c: &mut impl postgres::GenericClient, code: &str, msg: &str) -> Error {
    const TAG: &str = "$vmdesk_migrate$";
    let text = msg.replace(TAG, "").replace('\'', "''");
    let sql = format!(
        "DO {TAG} BEGIN RAISE EXCEPTION USING MESSAGE = '{text}', ERRCODE = '{code}'; END {TAG}"
    );
    match c.batch_execute(&sql) {
        Err(e) => Error::Db(e),
        Ok(()) => Error::Url(msg.to_owned()),
    }
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

// ----- the embedded side ---------------------------------------------------

type Row = Map<String, Value>;

/// Everything read from the embedded store, in one read transaction.
struct Embedded {
    version: i64,
    install_id: String,
    /// Table name → rows (as JSON objects named by column), in id order.
    tables: BTreeMap<&'static str, Vec<Row>>,
    /// Rows per table of what stays on the desk.
    kept: Vec<(&'static str, i64)>,
}

impl Embedded {
    fn rows(&self, t: &str) -> &[Row] {
        self.tables.get(t).map_or(&[], |v| v.as_slice())
    }
}

/// The embedded tables copied, the query reading each, and its JSON columns
/// (stored as text in SQLite).
const READS: &[(&str, &str, &[&str])] = &[
    ("users", "SELECT id, name, role, balance, created_at FROM users ORDER BY id", &[]),
    (
        "projects",
        "SELECT id, name, created_at, max_session_minutes, idle_minutes, idle_cpu_percent,
                weekly_hours
         FROM projects ORDER BY id",
        &[],
    ),
    ("workspaces", "SELECT id, project_id, name, created_at FROM workspaces ORDER BY id", &[]),
    ("hosts", "SELECT id, name, kind, uri, created_at FROM hosts ORDER BY id", &[]),
    (
        "vms",
        "SELECT id, name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, ip_address, ssh_port,
                uptime_seconds, metadata, owner_user_id, project_id, host_id, provider_id,
                live_session_id, worker, start_after_create, last_stopped, started_at, billed_until,
                billing_milli, synced_at, synced_by, created_at, updated_at
         FROM vms ORDER BY id",
        &["metadata"],
    ),
    (
        "sessions",
        "SELECT id, vm_id, user_id, project_id, workspace_id, status, error, worker, created_at,
                updated_at, started_at, ended_at
         FROM sessions ORDER BY id",
        &[],
    ),
    (
        "ledger",
        "SELECT id, user_id, amount, kind, reason, vm_id, session_id, actor, created_at
         FROM ledger ORDER BY id",
        &[],
    ),
    (
        "events",
        "SELECT id, type, action, severity, actor, vm_id, session_id, details, created_at
         FROM events ORDER BY id",
        &["details"],
    ),
    ("quarantine", "SELECT host_id, machine, found_at FROM quarantine ORDER BY host_id, machine", &[]),
];

fn read_embedded(dir: &Path) -> Result<Embedded, String> {
    let path = dir.join(DB_FILE);
    if !path.is_file() {
        return Err(format!(
            "{} holds no vmdesk store (no {DB_FILE})",
            dir.display()
        ));
    }
    let sq = |e: rusqlite::Error| format!("reading {}: {e}", path.display());
    let mut conn = rusqlite::Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sq)?;
    // A running desk may write meanwhile: wait for its short locks.
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sq)?;
    // One read transaction: a consistent snapshot of every table.
    let tx = conn.transaction().map_err(sq)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sq)?;
    if version > EMBEDDED_SCHEMA {
        return Err(format!(
            "the embedded store in {} is at schema {version}, newer than this vmdesk knows ({EMBEDDED_SCHEMA}); update vmdesk",
            dir.display()
        ));
    }
    if version < EMBEDDED_SCHEMA_MIN {
        return Err(format!(
            "the embedded store in {} is at schema {version}, older than this migration reads ({EMBEDDED_SCHEMA_MIN}); open it once with this vmdesk (e.g. `vmdesk user list`) to bring it up to date",
            dir.display()
        ));
    }
    let install_id: String = tx
        .query_row(
            "SELECT coalesce((SELECT value FROM settings WHERE key = 'install_id'), '')",
            [],
            |r| r.get(0),
        )
        .map_err(sq)?;
    let mut tables = BTreeMap::new();
    for (table, sql, json_cols) in READS {
        let mut stmt = tx.prepare(sql).map_err(sq)?;
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let mut rows = stmt.query([]).map_err(sq)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sq)? {
            let mut obj = Map::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                let v = match r.get_ref(i).map_err(sq)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::from(n),
                    ValueRef::Real(x) => Value::from(x),
                    ValueRef::Text(t) => {
                        let s = String::from_utf8_lossy(t).into_owned();
                        if json_cols.contains(&name.as_str()) {
                            serde_json::from_str(&s).map_err(|e| {
                                format!("{table}.{name} is not JSON in {}: {e}", path.display())
                            })?
                        } else {
                            Value::String(s)
                        }
                    }
                    ValueRef::Blob(_) => {
                        return Err(format!(
                            "{table}.{name} holds a blob in {}; vmdesk never writes one",
                            path.display()
                        ))
                    }
                };
                obj.insert(name.clone(), v);
            }
            out.push(obj);
        }
        tables.insert(*table, out);
    }
    let mut kept = Vec::new();
    for t in ["consoles", "os_images", "settings"] {
        let n: i64 = tx
            .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .map_err(sq)?;
        kept.push((t, n));
    }
    drop(tx);
    let src = Embedded {
        version,
        install_id,
        tables,
        kept,
    };
    for u in src.rows("users") {
        let name = u["name"].as_str().unwrap_or_default();
        if let Err(e) = vmdesk_core::validate::name("user", name) {
            return Err(format!(
                "the desk's user {name:?} cannot be a login of the team store: {e}"
            ));
        }
        if name == "vmdesk" || name.starts_with("pg_") {
            return Err(format!(
                "the desk's user name {name:?} is reserved on the team store; its rows cannot be copied"
            ));
        }
    }
    Ok(src)
}

// ----- the team side ---------------------------------------------------------

/// How each table is written: the record type of its JSON rows and the
/// expressions inserted (times arrive as RFC 3339 text).
const WRITES: &[(&str, &str, &str, &str)] = &[
    (
        "users",
        "id, name, role, balance, created_at",
        "id bigint, name text, role text, created_at text",
        // Balance 0: the ledger rebuilds it (ledger_apply), then it is compared.
        "r.id, r.name, r.role, 0, r.created_at::timestamptz",
    ),
    (
        "projects",
        "id, name, created_at, max_session_minutes, idle_minutes, idle_cpu_percent, weekly_hours",
        "id bigint, name text, created_at text, max_session_minutes bigint, idle_minutes bigint,
         idle_cpu_percent bigint, weekly_hours bigint",
        "r.id, r.name, r.created_at::timestamptz, r.max_session_minutes, r.idle_minutes,
         r.idle_cpu_percent, r.weekly_hours",
    ),
    (
        "workspaces",
        "id, project_id, name, created_at",
        "id bigint, project_id bigint, name text, created_at text",
        "r.id, r.project_id, r.name, r.created_at::timestamptz",
    ),
    (
        "hosts",
        "id, name, kind, uri, created_at",
        "id bigint, name text, kind text, uri text, created_at text",
        "r.id, r.name, r.kind, r.uri, r.created_at::timestamptz",
    ),
    (
        "vms",
        "id, name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, ip_address, ssh_port,
         uptime_seconds, metadata, owner_user_id, project_id, host_id, provider_id, live_session_id,
         worker, start_after_create, last_stopped, started_at, billed_until, billing_milli, synced_at,
         synced_by, created_at, updated_at",
        "id bigint, name text, os_type text, ram_mb integer, disk_gb integer, cpu_cores integer,
         vm_type text, status text, ip_address text, ssh_port integer, uptime_seconds bigint,
         metadata jsonb, owner_user_id bigint, project_id bigint, host_id bigint, provider_id text,
         live_session_id bigint, worker text, start_after_create bigint, last_stopped text,
         started_at text, billed_until text, billing_milli bigint, synced_at text, synced_by text,
         created_at text, updated_at text",
        "r.id, r.name, r.os_type, r.ram_mb, r.disk_gb, r.cpu_cores, r.vm_type, r.status, r.ip_address,
         r.ssh_port, r.uptime_seconds, coalesce(r.metadata, '{}'), r.owner_user_id, r.project_id,
         r.host_id, r.provider_id, r.live_session_id, r.worker, coalesce(r.start_after_create, 1) <> 0,
         r.last_stopped::timestamptz, r.started_at::timestamptz, r.billed_until::timestamptz,
         coalesce(r.billing_milli, 0), r.synced_at::timestamptz, r.synced_by, r.created_at::timestamptz,
         r.updated_at::timestamptz",
    ),
    (
        "sessions",
        "id, vm_id, user_id, project_id, workspace_id, status, error, worker, created_at, updated_at,
         started_at, ended_at",
        "id bigint, vm_id bigint, user_id bigint, project_id bigint, workspace_id bigint, status text,
         error text, worker text, created_at text, updated_at text, started_at text, ended_at text",
        "r.id, r.vm_id, r.user_id, r.project_id, r.workspace_id, r.status, r.error, r.worker,
         r.created_at::timestamptz, r.updated_at::timestamptz, r.started_at::timestamptz,
         r.ended_at::timestamptz",
    ),
    (
        "ledger",
        "id, user_id, amount, kind, reason, vm_id, session_id, actor, created_at",
        "id bigint, user_id bigint, amount bigint, kind text, reason text, vm_id bigint,
         session_id bigint, actor text, created_at text",
        "r.id, r.user_id, r.amount, r.kind, r.reason, r.vm_id, r.session_id, r.actor,
         r.created_at::timestamptz",
    ),
];

/// Tables with an identity id, whose sequences are set past the copy.
const ID_TABLES: &[&str] = &[
    "users",
    "projects",
    "workspaces",
    "hosts",
    "vms",
    "sessions",
    "ledger",
    "events",
];

fn max_id(rows: &[Row]) -> i64 {
    rows.iter()
        .filter_map(|r| r.get("id").and_then(Value::as_i64))
        .max()
        .unwrap_or(0)
}

fn sum_ids(rows: &[Row]) -> i64 {
    rows.iter()
        .filter_map(|r| r.get("id").and_then(Value::as_i64))
        .sum()
}

/// Inserts `rows` in chunks through `INSERT … SELECT … FROM jsonb_to_recordset`,
/// in id order; `joins` lets a table join what its `select` needs.
fn insert(
    tx: &mut Transaction<'_>,
    table: &str,
    cols: &str,
    record: &str,
    select: &str,
    joins: &str,
    rows: &[Row],
) -> Result<(), postgres::Error> {
    let overriding = if ID_TABLES.contains(&table) {
        "OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let order = if ID_TABLES.contains(&table) {
        "ORDER BY r.id"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO vmdesk.{table} ({cols}) {overriding}
         SELECT {select} FROM jsonb_to_recordset($1::text::jsonb) AS r({record}) {joins} {order}"
    );
    let stmt = tx.prepare(&sql)?;
    for chunk in rows.chunks(CHUNK) {
        let json = Value::Array(chunk.iter().cloned().map(Value::Object).collect()).to_string();
        tx.execute(&stmt, &[&json])?;
    }
    Ok(())
}

fn copy(
    tx: &mut Transaction<'_>,
    to: &Target,
    src: &Embedded,
    report: &mut Report,
) -> Result<(), Refusal> {
    let r = roles(to.dbname());
    tx.batch_execute(&format!("SET LOCAL ROLE {}", ident(&r.owner)))?;
    // Nobody changes the store meanwhile; a second migration waits here,
    // then finds it not empty.
    tx.batch_execute(
        "LOCK TABLE vmdesk.users, vmdesk.projects, vmdesk.workspaces, vmdesk.hosts, vmdesk.vms,
              vmdesk.sessions, vmdesk.ledger, vmdesk.events, vmdesk.consoles, vmdesk.quarantine
         IN EXCLUSIVE MODE",
    )?;

    // ---- the store must be as init left it
    let mut found = Vec::new();
    for t in [
        "projects",
        "workspaces",
        "hosts",
        "vms",
        "sessions",
        "ledger",
        "consoles",
        "quarantine",
    ] {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM vmdesk.{t}"), &[])?
            .get(0);
        if n > 0 {
            found.push(format!("{n} {t}"));
        }
    }
    let team_users: Vec<(i64, String, String)> = tx
        .query("SELECT id, name, role FROM vmdesk.users ORDER BY id", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if team_users.len() > 1 {
        found.push(format!(
            "{} users besides the first admin",
            team_users.len() - 1
        ));
    }
    let other_events: i64 = tx
        .query_one(
            "SELECT count(*) FROM vmdesk.events WHERE action <> 'store.init'",
            &[],
        )?
        .get(0);
    if other_events > 0 {
        found.push(format!("{other_events} events besides its init"));
    }
    if !found.is_empty() {
        return Err(Refusal::Said(
            NOT_EMPTY,
            format!(
                "the team store is not empty ({}): migrate only into a store fresh from `vmdesk store init`; nothing was changed",
                found.join(", ")
            ),
        ));
    }

    let users = src.rows("users");
    let events = src.rows("events");
    let mut expected_users = users.len() as i64;
    let mut merged_id = None;

    // ---- make room: the first admin and init's events move past the copy,
    // or the admin takes the embedded user of the same name's place
    if let Some((tid, tname, trole)) = team_users.first() {
        let same = users
            .iter()
            .find(|u| u["name"].as_str() == Some(tname.as_str()));
        match same {
            Some(u) => {
                let eid = u["id"].as_i64().unwrap_or_default();
                tx.execute("DELETE FROM vmdesk.users WHERE id = $1", &[tid])?;
                tx.execute(
                    "UPDATE vmdesk.events SET subject_id = $2 WHERE subject_id = $1",
                    &[tid, &eid],
                )?;
                merged_id = Some((eid, trole.clone()));
                report.merged_admin = Some(tname.clone());
            }
            None => {
                expected_users += 1;
                if users.iter().any(|u| u["id"].as_i64() == Some(*tid)) {
                    tx.execute(
                        "SELECT setval(pg_get_serial_sequence('vmdesk.users', 'id'), greatest($1, (SELECT max(id) FROM vmdesk.users)))",
                        &[&max_id(users)],
                    )?;
                    let new: i64 = tx
                        .query_one(
                            "UPDATE vmdesk.users SET id = DEFAULT WHERE id = $1 RETURNING id",
                            &[tid],
                        )?
                        .get(0);
                    tx.execute(
                        "UPDATE vmdesk.events SET subject_id = $2 WHERE subject_id = $1",
                        &[tid, &new],
                    )?;
                }
            }
        }
    }
    let team_events: Vec<i64> = tx
        .query("SELECT id FROM vmdesk.events ORDER BY id", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let max_event = max_id(events);
    if team_events.iter().any(|id| *id <= max_event) {
        tx.execute(
            "SELECT setval(pg_get_serial_sequence('vmdesk.events', 'id'), greatest($1, (SELECT max(id) FROM vmdesk.events)))",
            &[&max_event],
        )?;
        for id in &team_events {
            tx.execute("UPDATE vmdesk.events SET id = DEFAULT WHERE id = $1", &[id])?;
        }
    }

    // ---- copy, parents first
    for (table, cols, record, select) in WRITES {
        let rows = src.rows(table);
        insert(tx, table, cols, record, select, "", rows)?;
        report.copied.push(Copied {
            table: (*table).to_owned(),
            rows: rows.len() as i64,
        });
        if *table == "users" {
            if let Some((eid, role)) = &merged_id {
                // The store's first admin stays admin, whatever it was on the desk.
                tx.execute(
                    "UPDATE vmdesk.users SET role = $2 WHERE id = $1 AND $2 = 'admin'",
                    &[eid, role],
                )?;
            }
            logins(tx, &r, src, report)?;
        }
    }
    // Each event is about the user whose session or VM it concerns, or
    // whom its details name; else nobody (only admins see it).
    tx.batch_execute("ALTER TABLE vmdesk.events DISABLE TRIGGER events_notify")?;
    insert(
        tx,
        "events",
        "id, type, action, severity, actor, vm_id, session_id, subject_id, details, created_at",
        "id bigint, type text, action text, severity text, actor text, vm_id bigint,
         session_id bigint, details jsonb, created_at text",
        "r.id, r.type, r.action, r.severity, r.actor, r.vm_id, r.session_id,
         coalesce(s.user_id, v.owner_user_id, u.id), coalesce(r.details, '{}'),
         r.created_at::timestamptz",
        "LEFT JOIN vmdesk.sessions s ON s.id = r.session_id
         LEFT JOIN vmdesk.vms v ON v.id = r.vm_id
         LEFT JOIN vmdesk.users u ON u.name = r.details->>'user'",
        events,
    )?;
    tx.batch_execute("ALTER TABLE vmdesk.events ENABLE TRIGGER events_notify")?;
    report.copied.push(Copied {
        table: "events".into(),
        rows: events.len() as i64,
    });
    let quarantine = src.rows("quarantine");
    insert(
        tx,
        "quarantine",
        "host_id, machine, found_at",
        "host_id bigint, machine text, found_at text",
        "r.host_id, r.machine, r.found_at::timestamptz",
        "",
        quarantine,
    )?;
    report.copied.push(Copied {
        table: "quarantine".into(),
        rows: quarantine.len() as i64,
    });
    for t in ID_TABLES {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('vmdesk.{t}', 'id'), coalesce(max(id), 0) + 1, false) FROM vmdesk.{t}"
            ),
            &[],
        )?;
    }

    // ---- verify: every id read is there, and nothing else but init's rows
    let mut wrong = Vec::new();
    for (table, _, _) in READS {
        let rows = src.rows(table);
        let (n, sum, total): (i64, i64, i64) = if ID_TABLES.contains(table) {
            let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
            let row = tx.query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE id = ANY($1)),
                            coalesce(sum(id) FILTER (WHERE id = ANY($1)), 0)::bigint,
                            count(*)
                     FROM vmdesk.{table}"
                ),
                &[&ids],
            )?;
            (row.get(0), row.get(1), row.get(2))
        } else {
            let n: i64 = tx
                .query_one(&format!("SELECT count(*) FROM vmdesk.{table}"), &[])?
                .get(0);
            (n, 0, n)
        };
        let want_sum = if ID_TABLES.contains(table) {
            sum_ids(rows)
        } else {
            0
        };
        let want_total = rows.len() as i64
            + match *table {
                "users" => expected_users - users.len() as i64,
                "events" => team_events.len() as i64,
                _ => 0,
            };
        if (n, sum, total) != (rows.len() as i64, want_sum, want_total) {
            wrong.push(format!(
                "{table}: {n} of {} rows read are there (id sum {sum}, {want_sum} read), {total} in all ({want_total} expected)",
                rows.len()
            ));
        }
    }
    // Live sessions: the triggers must have left each VM held as it was.
    let live: HashMap<i64, Option<i64>> = tx
        .query("SELECT id, live_session_id FROM vmdesk.vms", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for v in src.rows("vms") {
        let id = v["id"].as_i64().unwrap_or_default();
        let want = v["live_session_id"].as_i64();
        if live.get(&id).copied().flatten() != want {
            wrong.push(format!(
                "VM {id}: held by session {:?}, {want:?} on the desk",
                live.get(&id).copied().flatten()
            ));
        }
    }
    if !wrong.is_empty() {
        return Err(Refusal::Said(
            MISMATCH,
            format!(
                "the copy does not match the desk, so nothing was kept: {}",
                wrong.join("; ")
            ),
        ));
    }
    // Balances: rebuilt from the ledger by ledger_apply, equal to the desk's.
    let balances: HashMap<i64, (String, i64)> = tx
        .query("SELECT id, name, balance FROM vmdesk.users", &[])?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut differ = Vec::new();
    let mut total = 0;
    for u in users {
        let id = u["id"].as_i64().unwrap_or_default();
        let name = u["name"].as_str().unwrap_or_default();
        let want = u["balance"].as_i64().unwrap_or_default();
        let got = balances.get(&id).map_or(0, |b| b.1);
        if got != want {
            differ.push(format!("{name}: {want} on the desk, {got} from its ledger"));
        }
        total += want;
    }
    if !differ.is_empty() {
        return Err(Refusal::Said(
            MISMATCH,
            format!(
                "balances differ from the ledger, so nothing was kept: {}",
                differ.join("; ")
            ),
        ));
    }
    report.balances_checked = users.len();
    report.credits_total = total;

    // ---- what stays on the desk, and what to know
    for (t, n) in &src.kept {
        let why = match *t {
            "consoles" => "open consoles are the desk's own (its 127.0.0.1 ports and bridge processes); each desk opens its own against the team store",
            "os_images" => "imported OS images are files in the desk's data directory (os/); import them again where VMs are created",
            _ => "the desk's own settings (its install id, options) stay in its data directory",
        };
        report.skipped.push(Skipped {
            what: (*t).to_owned(),
            rows: *n,
            why: why.to_owned(),
        });
    }
    let in_transit = src
        .rows("sessions")
        .iter()
        .filter(|s| {
            matches!(
                s["status"].as_str(),
                Some("REQUESTED" | "STARTING" | "TERMINATING")
            )
        })
        .count();
    let creating = src
        .rows("vms")
        .iter()
        .filter(|v| v["status"].as_str() == Some("CREATING"))
        .count();
    if in_transit + creating > 0 {
        report.notes.push(format!(
            "{in_transit} sessions and {creating} VMs were between two states and were copied as they were; the team store's worker (vmdesk serve) takes them over"
        ));
    }
    if !src.install_id.is_empty() {
        report.notes.push(format!(
            "the desk's machines on its hosts carry its install id {}; keep the data directory until they are all known to the team store",
            src.install_id
        ));
    }
    let summary: Map<String, Value> = report
        .copied
        .iter()
        .map(|c| (c.table.clone(), Value::from(c.rows)))
        .collect();
    tx.execute(
        "SELECT vmdesk.record('admin', 'store.migrate', 'info', 'vmdesk', NULL, NULL, NULL,
             jsonb_build_object('source', $1::text, 'by', session_user::text, 'rows', $2::text::jsonb))",
        &[&report.source, &Value::Object(summary).to_string()],
    )?;
    tx.batch_execute("RESET ROLE")?;
    Ok(())
}

/// A login for every copied user: an existing plain login is used as it is,
/// a missing one created without a password; each joins the store's user
/// group, and admins its admin group.
fn logins(
    tx: &mut Transaction<'_>,
    r: &crate::Roles,
    src: &Embedded,
    report: &mut Report,
) -> Result<(), Refusal> {
    for u in src.rows("users") {
        let name = u["name"].as_str().unwrap_or_default();
        let admin = u["role"].as_str() == Some("admin");
        if report.merged_admin.as_deref() == Some(name) {
            continue;
        }
        let have = tx.query_opt(
            "SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&name],
        )?;
        match have {
            None => {
                tx.batch_execute(&format!("CREATE ROLE {} LOGIN", ident(name)))?;
                report.logins_created.push(name.to_owned());
            }
            Some(row) => {
                let (sup, login): (bool, bool) = (row.get(0), row.get(1));
                if sup || !login {
                    return Err(Refusal::Said(
                        CANNOT_COPY,
                        format!(
                            "the cluster has a role {name:?} that is not a plain login, so the desk's user {name:?} cannot become it; nothing was changed"
                        ),
                    ));
                }
                report.logins_existing.push(name.to_owned());
            }
        }
        tx.batch_execute(&format!("GRANT {} TO {}", ident(&r.users), ident(name)))?;
        if admin {
            tx.batch_execute(&format!("GRANT {} TO {}", ident(&r.admins), ident(name)))?;
        }
    }
    Ok(())
}
