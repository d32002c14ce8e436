//! [`PgStore`]: the team store as [`vmdesk_core::Store`]. Every change
//! is one call of a `vmdesk.*` function (the database checks who may);
//! reads go through row-level security. The server's refusals come back as
//! core's own errors, built from the structured DETAIL the functions send.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use vmdesk_core::model::*;
use vmdesk_core::provider::{PowerState, ProviderError};
use vmdesk_core::team::Observed;
use vmdesk_core::{
    Billed, Error as CoreError, ImportMachine, OpenConsole, Result as CoreResult, RuntimeCharge,
    SyncChange,
};
use vmdesk_core::{Billing, Consoles, Events, Places, Quarantine, Sessions, Users, Vms, Work};

use crate::listen::CHANNEL;
use crate::notifier::{Notifier, PAYLOAD};
use crate::{schema_version, scram_verifier, Error, Target, STEPS};

/// A desk's connection to the team store, as one login.
pub struct PgStore {
    conn: Arc<Conn>,
    /// Tells the other desks of this one's writes, after they commit, on
    /// the same connection (a desk holds two: this and its listener's).
    notifier: Notifier,
}

/// The store connection, shared by the desk's calls and its notifier.
struct Conn {
    target: Target,
    login: String,
    client: Mutex<Option<Client>>,
    /// The keys of this process's workers' liveness locks, taken again on
    /// every new connection.
    workers: Mutex<Vec<i64>>,
    /// Statements prepared on the current connection, by their text.
    prepared: Mutex<HashMap<String, Statement>>,
}

/// Pokes the notifier when dropped: held by every write, so that a write
/// that failed half-way (a refusal records a warning event) is told too.
struct Changed<'a>(&'a Notifier);

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.0.poke();
    }
}

/// Set on every store connection: this desk notifies after its commits
/// (see [`crate::notifier`]).
const NOTIFY_AFTER_COMMIT: &str = "SET vmdesk.notify = 'after_commit'";

/// The advisory lock a live worker holds, by the secret key the store gave
/// it (see `vmdesk.worker_register` and `vmdesk.worker_alive`).
const WORKER_LOCK: &str = "SELECT pg_advisory_lock($1)";

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("login", &self.conn.login)
            .finish()
    }
}

const SESSION_SELECT: &str = "SELECT s.id, s.vm_id, v.name, u.name, p.name, w.name, s.status, s.error,
        vmdesk.ts(s.created_at), vmdesk.ts(s.updated_at), vmdesk.ts(s.started_at), vmdesk.ts(s.ended_at)
    FROM vmdesk.sessions s
    JOIN vmdesk.vms v ON v.id = s.vm_id
    JOIN vmdesk.users u ON u.id = s.user_id
    JOIN vmdesk.projects p ON p.id = s.project_id
    LEFT JOIN vmdesk.workspaces w ON w.id = s.workspace_id ";

const VM_SELECT: &str = "SELECT v.id, v.name, v.os_type, v.ram_mb::bigint, v.disk_gb::bigint,
        v.cpu_cores::bigint, v.vm_type, v.status, v.ip_address, v.ssh_port::bigint,
        CASE WHEN v.status = 'RUNNING' AND v.started_at IS NOT NULL
             THEN extract(epoch FROM now() - v.started_at)::bigint
             ELSE v.uptime_seconds END,
        v.metadata::text, u.name, p.name, h.name, v.provider_id, v.live_session_id,
        vmdesk.ts(v.last_stopped), vmdesk.ts(v.created_at), vmdesk.ts(v.updated_at),
        vmdesk.ts(v.synced_at), v.synced_by
    FROM vmdesk.vms v
    LEFT JOIN vmdesk.users u ON u.id = v.owner_user_id
    LEFT JOIN vmdesk.projects p ON p.id = v.project_id
    JOIN vmdesk.hosts h ON h.id = v.host_id ";

const USER_COLS: &str = "id, name, role, balance, vmdesk.ts(created_at)";

impl PgStore {
    /// Connects as the target's login and checks that the store is set up
    /// for this vmdesk and that the login is one of its users.
    pub fn connect(target: Target) -> Result<PgStore, Error> {
        let mut client = target.connect()?;
        let at = schema_version(&mut client)?;
        let known = STEPS.len() as i32;
        if at > known {
            return Err(Error::TooNew { found: at, known });
        }
        if at < known {
            return Err(Error::Url(format!(
                "the database {} is not a vmdesk team store (or an older one): an admin sets it up with `vmdesk store init`",
                target.dbname()
            )));
        }
        let login: String = client
            .query_one("SELECT name FROM vmdesk.whoami()", &[])?
            .get(0);
        client.batch_execute(NOTIFY_AFTER_COMMIT)?;
        let conn = Arc::new(Conn {
            target,
            login,
            client: Mutex::new(Some(client)),
            workers: Mutex::new(Vec::new()),
            prepared: Mutex::new(HashMap::new()),
        });
        let theirs = Arc::clone(&conn);
        let notifier = Notifier::spawn(move || {
            theirs
                .with(|c| c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &PAYLOAD]))
                .is_ok()
        });
        Ok(PgStore { conn, notifier })
    }

    /// Held by a write until it returns: then the other desks are told.
    fn changed(&self) -> Changed<'_> {
        Changed(&self.notifier)
    }

    /// Refuses a non-admin before a read that only admins may make (the
    /// rows would be filtered anyway; this says why instead of "nothing").
    fn require_admin(&self, action: &'static str) -> CoreResult<()> {
        match self.whoami()?.role {
            Role::Admin => Ok(()),
            Role::User => Err(CoreError::AdminOnly(action)),
        }
    }

    fn session_by_id(&self, id: i64) -> CoreResult<Session> {
        self.conn
            .query(
                &format!("{SESSION_SELECT} WHERE s.id = $1"),
                &[&id],
                session_row,
            )?
            .pop()
            .ok_or(CoreError::UnknownSession(id))
    }
}

impl Conn {
    /// Runs `f` on the connection, connecting again first if the last one
    /// was lost (the server restarted, the network dropped).
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> CoreResult<T> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let mut c = self
                .target
                .connect()
                .map_err(|e| CoreError::Store(e.to_string()))?;
            c.batch_execute(NOTIFY_AFTER_COMMIT)
                .map_err(|e| to_core(&self.login, e))?;
            self.prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            for w in self
                .workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                c.execute(WORKER_LOCK, &[w])
                    .map_err(|e| to_core(&self.login, e))?;
            }
            *slot = Some(c);
        }
        let client = slot.as_mut().expect("connected above");
        let out = f(client);
        if client.is_closed() {
            *slot = None;
        }
        out.map_err(|e| to_core(&self.login, e))
    }

    fn query<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        row: impl Fn(&Row) -> CoreResult<T>,
    ) -> CoreResult<Vec<T>> {
        let rows = self.with(|c| {
            let st = self.prepare(c, sql)?;
            c.query(&st, params)
        })?;
        rows.iter().map(row).collect()
    }

    fn one<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        row: impl Fn(&Row) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let r = self.with(|c| {
            let st = self.prepare(c, sql)?;
            c.query_one(&st, params)
        })?;
        row(&r)
    }

    /// `sql` prepared on the connection `c` (the one [`Self::with`] holds),
    /// once per connection: a call is then one round trip.
    fn prepare(&self, c: &mut Client, sql: &str) -> Result<Statement, postgres::Error> {
        let mut cache = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = cache.get(sql) {
            return Ok(st.clone());
        }
        let st = c.prepare(sql)?;
        cache.insert(sql.to_owned(), st.clone());
        Ok(st)
    }
}

impl PgStore {
    fn statement(&self, name: &str) -> CoreResult<CreditStatement> {
        let u = self.user(name)?;
        let entries = self.conn.query(
            "SELECT id, amount, kind, reason, vm_id, session_id, actor, vmdesk.ts(created_at)
             FROM vmdesk.ledger WHERE user_id = $1 ORDER BY id",
            &[&u.id],
            ledger_row,
        )?;
        Ok(CreditStatement {
            user: u.name,
            balance: u.balance,
            entries,
        })
    }
}

fn parse<T: FromStr<Err = String>>(s: &str) -> CoreResult<T> {
    s.parse().map_err(CoreError::Store)
}

fn user_row(r: &Row) -> CoreResult<User> {
    Ok(User {
        id: r.get(0),
        name: r.get(1),
        role: parse(r.get(2))?,
        balance: r.get(3),
        created_at: r.get(4),
    })
}

fn session_row(r: &Row) -> CoreResult<Session> {
    Ok(Session {
        id: r.get(0),
        vm_id: r.get(1),
        vm_name: r.get(2),
        user: r.get(3),
        project: r.get(4),
        workspace: r.get(5),
        status: parse(r.get(6))?,
        error: r.get(7),
        created_at: r.get(8),
        updated_at: r.get(9),
        started_at: r.get(10),
        ended_at: r.get(11),
    })
}

fn vm_row(r: &Row) -> CoreResult<Vm> {
    let metadata: String = r.get(11);
    Ok(Vm {
        id: r.get(0),
        name: r.get(1),
        os_type: r.get(2),
        ram_mb: r.get(3),
        disk_gb: r.get(4),
        cpu_cores: r.get(5),
        vm_type: r.get(6),
        status: parse(r.get(7))?,
        ip_address: r.get(8),
        ssh_port: r.get(9),
        uptime_seconds: r.get(10),
        metadata: serde_json::from_str(&metadata).unwrap_or(Value::Object(Default::default())),
        owner: r.get(12),
        pool: r.get(13),
        host: r.get(14),
        provider_id: r.get(15),
        session_id: r.get(16),
        last_stopped: r.get(17),
        created_at: r.get(18),
        updated_at: r.get(19),
        synced_at: r.get(20),
        synced_by: r.get(21),
    })
}

/// What core says an admin-only refusal was about; the database names the
/// action in words, core keeps a fixed set of them.
fn admin_action(action: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "add users",
        "change roles",
        "grant credits",
        "adjust credits",
        "refund credits",
        "set project limits",
        "rename projects",
        "delete projects",
        "rename workspaces",
        "delete workspaces",
        "enforce project limits",
        "add hosts",
        "create projects",
        "create workspaces",
        "add VMs to pools",
        "list users",
        "list every user's sessions",
        "list every user's VMs",
        "see another user's credits",
        "import VMs",
        "run recovery",
        "list quarantined machines",
        "purge quarantined machines",
    ];
    KNOWN
        .iter()
        .find(|k| **k == action)
        .copied()
        .unwrap_or("do that")
}

/// The server's refusal as core's error: the same code and sentence as
/// the embedded store gives for the same refusal.
fn to_core(login: &str, e: postgres::Error) -> CoreError {
    let Some(db) = e.as_db_error() else {
        return CoreError::Store(Error::Db(e).to_string());
    };
    let detail: Value = db
        .detail()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let s = |k: &str| detail.get(k).and_then(Value::as_str).map(str::to_owned);
    let n = |k: &str| detail.get(k).and_then(Value::as_i64);
    let msg = db.message().to_owned();
    match db.code().code() {
        "42501" => match (s("admin_only"), s("forbidden")) {
            (Some(action), _) => CoreError::AdminOnly(admin_action(&action)),
            (_, Some(action)) => CoreError::Forbidden {
                user: login.to_owned(),
                action,
            },
            _ => CoreError::Forbidden {
                user: login.to_owned(),
                action: msg,
            },
        },
        "VDN01" => {
            if let Some(w) = s("workspace") {
                CoreError::UnknownWorkspace {
                    project: s("project").unwrap_or_default(),
                    workspace: w,
                }
            } else if let Some(p) = s("project") {
                CoreError::UnknownProject(p)
            } else if let Some(u) = s("user") {
                CoreError::UnknownUser(u)
            } else if let Some(h) = s("host") {
                CoreError::UnknownHost(h)
            } else if let Some(id) = n("session") {
                CoreError::UnknownSession(id)
            } else if let Some(v) = s("vm") {
                CoreError::UnknownVm(v)
            } else {
                CoreError::Store(msg)
            }
        }
        "VDB01" => CoreError::InsufficientCredits {
            user: s("user").unwrap_or_default(),
            cost: n("cost").unwrap_or_default(),
            balance: n("balance").unwrap_or_default(),
        },
        "VDB02" => CoreError::BelowZero {
            user: s("user").unwrap_or_default(),
            amount: n("amount").unwrap_or_default(),
            balance: n("balance").unwrap_or_default(),
        },
        "VDB03" => CoreError::NotRefundable {
            vm: s("vm").unwrap_or_default(),
            why: s("why").unwrap_or(msg),
        },
        "VDQ01" => CoreError::QuotaUsed {
            project: s("project").unwrap_or_default(),
            hours: n("hours").unwrap_or_default(),
            used_minutes: n("used_minutes").unwrap_or_default(),
        },
        "VDA01" => CoreError::PoolEmpty(s("project").unwrap_or_default()),
        "VDA02" => CoreError::NoVmOfType {
            project: s("project").unwrap_or_default(),
            vm_type: s("vm_type").unwrap_or_default(),
        },
        "VDA03" => CoreError::AllInUse {
            project: s("project").unwrap_or_default(),
            total: n("total").unwrap_or_default() as u64,
        },
        "VDA04" => CoreError::NoneReady {
            project: s("project").unwrap_or_default(),
            busy: n("busy").unwrap_or_default() as u64,
            not_ready: n("not_ready").unwrap_or_default() as u64,
        },
        "VDS01" => CoreError::SessionState {
            id: n("session").unwrap_or_default(),
            status: s("status").unwrap_or_default(),
            action: "closed",
        },
        // A unique index refused a second row of the same name.
        "23505" => {
            let kind = match db.table().or(s("kind").as_deref()) {
                Some("users" | "user") => "user",
                Some("projects") => "project",
                Some("workspaces") => "workspace",
                Some("hosts") => "host",
                Some("vms") => "VM",
                _ => "thing",
            };
            CoreError::AlreadyExists {
                kind,
                name: s("name").unwrap_or_else(|| msg.clone()),
            }
        }
        "22023" => CoreError::Invalid(msg),
        "VDC01" => CoreError::ConsoleUnavailable(s("unavailable").unwrap_or(msg)),
        "VDC02" => CoreError::ConsoleRefused(s("refused").unwrap_or(msg)),
        "VDC03" => CoreError::PortPoolExhausted {
            start: n("start").unwrap_or_default() as u16,
            end: n("end").unwrap_or_default() as u16,
            total: n("total").unwrap_or_default() as u32,
        },
        _ => CoreError::Store(msg),
    }
}

impl Users for PgStore {
    fn login(&self) -> &str {
        &self.conn.login
    }

    fn describe(&self) -> String {
        format!("{} @ {}", self.conn.login, self.conn.target.describe())
    }

    fn ssh_key_publish(&self, public: &str) -> CoreResult<()> {
        self.conn
            .with(|c| c.execute("SELECT vmdesk.ssh_key_publish($1)", &[&public]))?;
        Ok(())
    }

    fn ssh_key_of(&self, user: &str) -> CoreResult<Option<String>> {
        self.conn
            .one("SELECT vmdesk.ssh_key_of($1)", &[&user], |r| Ok(r.get(0)))
    }

    fn whoami(&self) -> CoreResult<User> {
        self.conn.one(
            &format!("SELECT {USER_COLS} FROM vmdesk.whoami()"),
            &[],
            user_row,
        )
    }

    fn user(&self, name: &str) -> CoreResult<User> {
        self.conn
            .query(
                &format!("SELECT {USER_COLS} FROM vmdesk.users WHERE name = $1"),
                &[&name],
                user_row,
            )?
            .pop()
            .ok_or_else(|| CoreError::UnknownUser(name.to_owned()))
    }

    fn user_add(&self, name: &str, admin: bool, password: Option<&str>) -> CoreResult<User> {
        let _changed = self.changed();
        let verifier = password.map(scram_verifier);
        self.conn.one(
            &format!("SELECT {USER_COLS} FROM vmdesk.user_add($1, $2, $3)"),
            &[&name, &admin, &verifier],
            user_row,
        )
    }

    fn user_list(&self) -> CoreResult<Vec<User>> {
        self.require_admin("list users")?;
        self.conn.query(
            &format!("SELECT {USER_COLS} FROM vmdesk.users ORDER BY name"),
            &[],
            user_row,
        )
    }

    fn user_role(&self, name: &str, role: Role) -> CoreResult<User> {
        let _changed = self.changed();
        self.conn.one(
            &format!("SELECT {USER_COLS} FROM vmdesk.user_role($1, $2)"),
            &[&name, &role.as_str()],
            user_row,
        )
    }

    fn credits_grant(&self, to: &str, amount: i64, reason: &str) -> CoreResult<CreditStatement> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.credits_grant($1, $2, $3)",
                &[&to, &amount, &reason],
            )
        })?;
        self.statement(to)
    }

    fn charge(
        &self,
        from: &str,
        amount: i64,
        kind: LedgerKind,
        reason: &str,
    ) -> CoreResult<LedgerEntry> {
        let _changed = self.changed();
        self.conn.one(
            "SELECT id, amount, kind, reason, vm_id, session_id, actor, vmdesk.ts(created_at)
             FROM vmdesk.charge($1, $2, $3, $4)",
            &[&from, &amount, &kind.as_str(), &reason],
            ledger_row,
        )
    }

    fn credits_adjust(&self, to: &str, amount: i64, reason: &str) -> CoreResult<CreditStatement> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.credits_adjust($1, $2, $3)",
                &[&to, &amount, &reason],
            )
        })?;
        self.statement(to)
    }

    fn credits_refund(&self, vm: i64, reason: &str) -> CoreResult<LedgerEntry> {
        let _changed = self.changed();
        self.conn.one(
            "SELECT id, amount, kind, reason, vm_id, session_id, actor, vmdesk.ts(created_at)
             FROM vmdesk.credits_refund($1, $2)",
            &[&vm, &reason],
            ledger_row,
        )
    }

    fn credits_show(&self, of: &str) -> CoreResult<CreditStatement> {
        if of != self.conn.login {
            self.require_admin("see another user's credits")?;
        }
        self.statement(of)
    }
}

impl Places for PgStore {
    fn host_add(&self, name: &str, kind: HostKind, uri: &str) -> CoreResult<Host> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.host_add($1, $2, $3)",
                &[&name, &kind.as_str(), &uri],
            )
        })?;
        self.host(name)
    }

    fn host(&self, name: &str) -> CoreResult<Host> {
        self.conn.query(
            "SELECT id, name, kind, uri, vmdesk.ts(created_at) FROM vmdesk.hosts WHERE name = $1",
            &[&name],
            host_row,
        )?
        .pop()
        .ok_or_else(|| CoreError::UnknownHost(name.to_owned()))
    }

    fn host_list(&self) -> CoreResult<Vec<Host>> {
        self.conn.query(
            "SELECT id, name, kind, uri, vmdesk.ts(created_at) FROM vmdesk.hosts ORDER BY name",
            &[],
            host_row,
        )
    }

    fn host_memory(&self) -> CoreResult<Vec<(String, i64)>> {
        self.conn
            .query("SELECT host, ram_mb FROM vmdesk.host_memory()", &[], |r| {
                Ok((r.get(0), r.get(1)))
            })
    }

    fn project_create(&self, name: &str) -> CoreResult<Project> {
        let _changed = self.changed();
        self.conn.one(
            concat!(project_select!(), " FROM vmdesk.project_create($1)"),
            &[&name],
            project_row,
        )
    }

    fn workspace_create(&self, name: &str, project: &str) -> CoreResult<Workspace> {
        let _changed = self.changed();
        self.conn.one(
            "SELECT id, name, vmdesk.ts(created_at) FROM vmdesk.workspace_create($1, $2)",
            &[&name, &project],
            |r| {
                Ok(Workspace {
                    id: r.get(0),
                    name: r.get(1),
                    project: project.to_owned(),
                    created_at: r.get(2),
                })
            },
        )
    }

    fn install_id(&self) -> CoreResult<String> {
        self.conn.one(
            "SELECT value FROM vmdesk.settings WHERE key = 'install_id'",
            &[],
            |r| Ok(r.get(0)),
        )
    }

    fn projects(&self) -> CoreResult<Vec<(Project, Vec<String>)>> {
        self.conn.query(
            "SELECT p.id, p.name, vmdesk.ts(p.created_at), p.max_session_minutes, p.idle_minutes,
                    p.idle_cpu_percent, p.weekly_hours,
                    coalesce(array_agg(w.name ORDER BY w.name) FILTER (WHERE w.name IS NOT NULL), '{}')
             FROM vmdesk.projects p LEFT JOIN vmdesk.workspaces w ON w.project_id = p.id
             GROUP BY p.id ORDER BY p.name",
            &[],
            |r| Ok((project_row(r)?, r.get(7))),
        )
    }

    fn project_rename(&self, name: &str, new: &str) -> CoreResult<Project> {
        let _changed = self.changed();
        self.conn
            .with(|c| c.execute("SELECT vmdesk.project_rename($1, $2)", &[&name, &new]))?;
        self.conn.one(
            concat!(project_select!(), " FROM vmdesk.projects WHERE name = $1"),
            &[&new],
            project_row,
        )
    }

    fn project_delete(&self, name: &str) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn
            .with(|c| c.execute("SELECT vmdesk.project_delete($1)", &[&name]))?;
        Ok(())
    }

    fn workspace_rename(&self, project: &str, name: &str, new: &str) -> CoreResult<Workspace> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.workspace_rename($1, $2, $3)",
                &[&project, &name, &new],
            )
        })?;
        self.conn.one(
            "SELECT w.id, w.name, vmdesk.ts(w.created_at) FROM vmdesk.workspaces w
             JOIN vmdesk.projects p ON p.id = w.project_id WHERE p.name = $1 AND w.name = $2",
            &[&project, &new],
            |r| {
                Ok(Workspace {
                    id: r.get(0),
                    name: r.get(1),
                    project: project.to_owned(),
                    created_at: r.get(2),
                })
            },
        )
    }

    fn workspace_delete(&self, project: &str, name: &str) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn
            .with(|c| c.execute("SELECT vmdesk.workspace_delete($1, $2)", &[&project, &name]))?;
        Ok(())
    }

    fn project_limits_set(&self, project: &str, limits: &ProjectLimits) -> CoreResult<Project> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.project_limits_set($1, $2, $3, $4, $5)",
                &[
                    &project,
                    &limits.max_session_minutes,
                    &limits.idle_minutes,
                    &limits.idle_cpu_percent,
                    &limits.weekly_hours,
                ],
            )
        })?;
        self.conn.one(
            concat!(project_select!(), " FROM vmdesk.projects WHERE name = $1"),
            &[&project],
            project_row,
        )
    }
}

impl Sessions for PgStore {
    fn sessions_limited(&self) -> CoreResult<Vec<vmdesk_core::limits::LimitedSession>> {
        let rows = self.conn.query(
            "SELECT o_id, o_user, o_project, o_max, o_idle, o_cpu, o_weekly, o_started,
                    o_idle_since, o_idle_warned, o_length_warned, o_vm, o_console
             FROM vmdesk.sessions_limited()",
            &[],
            |r| {
                Ok((
                    vmdesk_core::limits::LimitedSession {
                        id: r.get(0),
                        user: r.get(1),
                        project: r.get(2),
                        limits: ProjectLimits {
                            max_session_minutes: r.get(3),
                            idle_minutes: r.get(4),
                            idle_cpu_percent: r.get(5),
                            weekly_hours: r.get(6),
                        },
                        started_at: r.get(7),
                        idle_since: r.get(8),
                        idle_warned_at: r.get(9),
                        length_warned_at: r.get(10),
                        vm: Vm::default(),
                        console_open: r.get(12),
                    },
                    r.get::<_, i64>(11),
                ))
            },
        )?;
        rows.into_iter()
            .map(|(mut s, vm)| {
                s.vm = self.vm(&vm.to_string())?;
                Ok(s)
            })
            .collect()
    }

    fn session_limit_mark(&self, id: i64, mark: &vmdesk_core::limits::LimitMark) -> CoreResult<()> {
        let _changed = self.changed();
        let (rule, at) = match &mark.warn {
            Some((rule, at)) => (Some(rule.as_str()), Some(at.as_str())),
            None => (None, None),
        };
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.session_limit_mark($1, $2, $3, $4, $5, $6)",
                &[&id, &mark.idle_since, &rule, &at, &mark.reached, &mark.at],
            )
        })?;
        Ok(())
    }

    fn session_open(&self, req: &SessionRequest, worker: Option<&str>) -> CoreResult<Session> {
        let _changed = self.changed();
        // One round trip: the session opened and its VM's name. The row
        // comes from the function (the statement's snapshot predates it);
        // the user, project and workspace are the caller's own words.
        self.conn.one(
            "SELECT s.id, s.vm_id, v.name, s.status, s.error, vmdesk.ts(s.created_at),
                    vmdesk.ts(s.updated_at), vmdesk.ts(s.started_at), vmdesk.ts(s.ended_at)
             FROM vmdesk.session_open($1, $2, $3, $4) s JOIN vmdesk.vms v ON v.id = s.vm_id",
            &[&req.project, &req.workspace, &req.vm_type, &worker],
            |r| {
                Ok(Session {
                    id: r.get(0),
                    vm_id: r.get(1),
                    vm_name: r.get(2),
                    user: self.conn.login.clone(),
                    project: req.project.clone(),
                    workspace: req.workspace.clone(),
                    status: parse(r.get(3))?,
                    error: r.get(4),
                    created_at: r.get(5),
                    updated_at: r.get(6),
                    started_at: r.get(7),
                    ended_at: r.get(8),
                })
            },
        )
    }

    fn session_list(&self, all: bool) -> CoreResult<Vec<Session>> {
        if all {
            self.require_admin("list every user's sessions")?;
        }
        let me = self.whoami()?;
        self.conn.query(
            &format!("{SESSION_SELECT} WHERE $1 OR s.user_id = $2 ORDER BY s.id DESC LIMIT 10000"),
            &[&all, &me.id],
            session_row,
        )
    }

    fn session(&self, id: i64) -> CoreResult<Session> {
        self.session_by_id(id)
    }

    fn session_close_by(&self, id: i64, worker: Option<&str>) -> CoreResult<(Session, bool)> {
        let _changed = self.changed();
        let drive: bool = self
            .conn
            .with(|c| {
                c.query_one(
                    "SELECT drive FROM vmdesk.session_close($1, $2)",
                    &[&id, &worker],
                )
            })?
            .get(0);
        Ok((self.session_by_id(id)?, drive))
    }

    fn session_starting(&self, id: i64, worker: &str) -> CoreResult<Session> {
        let _changed = self.changed();
        self.conn
            .with(|c| c.execute("SELECT vmdesk.session_starting($1, $2)", &[&id, &worker]))?;
        self.session_by_id(id)
    }

    fn session_started(&self, id: i64, machine: &str) -> CoreResult<Session> {
        let _changed = self.changed();
        self.conn
            .with(|c| c.execute("SELECT vmdesk.session_started($1, $2)", &[&id, &machine]))?;
        self.session_by_id(id)
    }

    fn session_start_failed(&self, id: i64, reason: &str, vm_status: VmStatus) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.session_start_failed($1, $2, $3)",
                &[&id, &reason, &vm_status.as_str()],
            )
        })?;
        Ok(())
    }

    fn session_stopping(&self, id: i64, force_off_at: &str) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.session_stopping($1, $2)",
                &[&id, &force_off_at],
            )
        })?;
        Ok(())
    }

    fn session_ended(&self, id: i64, end: SessionStatus, forced_off: bool) -> CoreResult<Session> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.session_ended($1, $2, $3)",
                &[&id, &end.as_str(), &forced_off],
            )
        })?;
        self.session_by_id(id)
    }

    fn session_close_failed(&self, id: i64, reason: &str) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.session_close_failed($1, $2)",
                &[&id, &reason],
            )
        })?;
        Ok(())
    }
}

impl Vms for PgStore {
    fn vm_list(&self, all: bool) -> CoreResult<Vec<Vm>> {
        if all {
            self.require_admin("list every user's VMs")?;
        }
        let me = self.whoami()?;
        self.conn.query(
            &format!(
                "{VM_SELECT} WHERE $1 OR v.project_id IS NOT NULL OR v.owner_user_id = $2 ORDER BY v.name"
            ),
            &[&all, &me.id],
            vm_row,
        )
    }

    fn vm_changes(&self, all: bool, since: Option<&str>) -> CoreResult<VmChanges> {
        if all {
            self.require_admin("list every user's VMs")?;
        }
        // Core checked the cursor (digits only).
        let since = since.unwrap_or("0");
        let me = self.whoami()?;
        // One statement, so one snapshot: the cursor (the oldest transaction
        // it does not see), the number of rows and the rows changed since.
        let sees = "($1 OR v.project_id IS NOT NULL OR v.owner_user_id = $2)";
        let rows = self.conn.query(
            &format!(
                "WITH snap AS (
                     SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS cursor,
                            (SELECT count(*) FROM vmdesk.vms v WHERE {sees}) AS total)
                 SELECT x.*, snap.cursor, snap.total FROM snap LEFT JOIN LATERAL (
                     {VM_SELECT} WHERE {sees} AND v.rev >= $3::text::xid8) x ON true"
            ),
            &[&all, &me.id, &since],
            |r| {
                let n = r.len();
                let vm = match r.get::<_, Option<i64>>(0) {
                    Some(_) => Some(vm_row(r)?),
                    None => None,
                };
                Ok((vm, r.get::<_, String>(n - 2), r.get::<_, i64>(n - 1)))
            },
        )?;
        let (cursor, total) = rows
            .first()
            .map(|(_, c, t)| (c.clone(), *t))
            .unwrap_or_default();
        let mut vms: Vec<Vm> = rows.into_iter().filter_map(|(v, _, _)| v).collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(VmChanges { vms, total, cursor })
    }

    fn vms_idle_watched(&self) -> CoreResult<Vec<(Vm, bool)>> {
        self.require_admin("watch VMs for idleness")?;
        self.conn.query(
            &format!(
                "SELECT x.*, EXISTS (SELECT 1 FROM vmdesk.consoles c WHERE c.vm_id = x.id)
                 FROM ({VM_SELECT}
                       WHERE v.project_id IS NULL AND v.status = 'RUNNING'
                         AND v.metadata ? 'idle_stop_minutes') x
                 ORDER BY x.id"
            ),
            &[],
            |r| Ok((vm_row(r)?, r.get::<_, bool>(22))),
        )
    }

    fn vm(&self, reference: &str) -> CoreResult<Vm> {
        // An id first, then a name (a VM's name is never all digits).
        let id: Option<i64> = reference.parse().ok();
        self.conn
            .query(
                &format!("{VM_SELECT} WHERE v.id = $1 OR ($1 IS NULL AND v.name = $2)"),
                &[&id, &reference],
                vm_row,
            )?
            .pop()
            .ok_or_else(|| CoreError::UnknownVm(reference.to_owned()))
    }

    fn vm_add(&self, spec: &NewVm, machine: &str, worker: &str) -> CoreResult<Vm> {
        let _changed = self.changed();
        let id: i64 = self
            .conn
            .with(|c| {
                c.query_one(
                    "SELECT id FROM vmdesk.vm_add($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &spec.name,
                        &spec.pool,
                        &spec.host,
                        &spec.os_type,
                        &spec.ram_mb,
                        &spec.disk_gb,
                        &spec.cpu_cores,
                        &spec.vm_type,
                        &machine,
                        &worker,
                    ],
                )
            })?
            .get(0);
        self.vm(&id.to_string())
    }

    fn vm_add_done(&self, id: i64, ok: bool, details: Value) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.vm_add_done($1, $2, $3::text::jsonb)",
                &[&id, &ok, &details.to_string()],
            )
        })?;
        Ok(())
    }

    fn vm_create(&self, spec: &VmCreate, machine: &str, worker: Option<&str>) -> CoreResult<Vm> {
        let _changed = self.changed();
        let id: i64 = self
            .conn
            .with(|c| {
                c.query_one(
                    "SELECT id FROM vmdesk.vm_create($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &spec.name,
                        &spec.host,
                        &spec.os_type,
                        &spec.ram_mb,
                        &spec.disk_gb,
                        &spec.cpu_cores,
                        &spec.start,
                        &machine,
                        &worker,
                    ],
                )
            })?
            .get(0);
        self.vm(&id.to_string())
    }

    fn vm_claim(&self, id: i64, worker: &str) -> CoreResult<bool> {
        let _changed = self.changed();
        Ok(self
            .conn
            .with(|c| c.query_one("SELECT vmdesk.vm_claim($1, $2)", &[&id, &worker]))?
            .get(0))
    }

    fn vm_start_after_create(&self, id: i64) -> CoreResult<bool> {
        let _changed = self.changed();
        let start: Option<bool> = self
            .conn
            .with(|c| c.query_one("SELECT vmdesk.vm_start_after_create($1)", &[&id]))?
            .get(0);
        start.ok_or_else(|| CoreError::UnknownVm(id.to_string()))
    }

    fn vm_created(&self, id: i64, outcome: Result<VmStatus, String>) -> CoreResult<Vm> {
        let _changed = self.changed();
        let (status, reason) = match &outcome {
            Ok(s) => (Some(s.as_str()), None),
            Err(r) => (None, Some(r.as_str())),
        };
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.vm_created($1, $2, $3)",
                &[&id, &status, &reason],
            )
        })?;
        self.vm(&id.to_string())
    }

    fn vm_action_begin(&self, id: i64, action: VmAction, force_off_at: &str) -> CoreResult<Vm> {
        let _changed = self.changed();
        let name = action_name(action);
        // The function returns the row as it was before it marked it.
        let was: String = self
            .conn
            .with(|c| {
                c.query_one(
                    "SELECT (vmdesk.vm_action_begin($1, $2, $3)).status",
                    &[&id, &name, &force_off_at],
                )
            })?
            .get(0);
        let mut v = self.vm(&id.to_string())?;
        v.status = parse(&was)?;
        Ok(v)
    }

    fn vm_action_done(
        &self,
        id: i64,
        action: VmAction,
        was: VmStatus,
        now: VmStatus,
        forced_off: bool,
        as_system: bool,
    ) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.vm_action_done($1, $2, $3, $4, $5, $6)",
                &[
                    &id,
                    &action_name(action),
                    &was.as_str(),
                    &now.as_str(),
                    &forced_off,
                    &as_system,
                ],
            )
        })?;
        Ok(())
    }

    fn vm_action_undo(&self, id: i64, was: VmStatus) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.vm_action_undo($1, $2)",
                &[&id, &was.as_str()],
            )
        })?;
        Ok(())
    }

    fn vm_list_active(&self) -> CoreResult<Vec<Vm>> {
        self.require_admin("list every user's VMs")?;
        self.conn.query(
            &format!(
                "{VM_SELECT} WHERE v.live_session_id IN
                   (SELECT id FROM vmdesk.sessions WHERE status = 'ACTIVE')
                 ORDER BY h.name, v.id"
            ),
            &[],
            vm_row,
        )
    }

    fn vm_by_machine(&self, uri: &str, machine: &str) -> CoreResult<Option<Vm>> {
        self.require_admin("list every user's VMs")?;
        Ok(self
            .conn
            .query(
                &format!(
                    "{VM_SELECT} WHERE v.provider_id = $1 AND h.uri = $2 AND v.status <> 'DESTROYED'"
                ),
                &[&machine, &uri],
                vm_row,
            )?
            .pop())
    }

    /// One locked function call per VM.
    fn vms_synced(&self, seen: Vec<(i64, Observed)>, source: &str) -> CoreResult<Vec<SyncChange>> {
        let _changed = self.changed();
        let mut changes = Vec::new();
        for (id, observed) in seen {
            let (state, error) = match &observed {
                Ok(PowerState::Running) => ("running", None),
                Ok(s) if s.is_off() => ("off", None),
                Ok(_) => ("between", None),
                Err(ProviderError::NotFound(_)) => ("not_found", None),
                Err(e) => ("error", Some(e.to_string())),
            };
            let r = self.conn.with(|c| {
                c.query_one(
                    "SELECT vm, was, now_status, terminated_session FROM vmdesk.vm_synced($1, $2, $3, $4)",
                    &[&id, &state, &error, &source],
                )
            })?;
            let (Some(vm), Some(was), Some(now)) = (
                r.get::<_, Option<String>>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<String>>(2),
            ) else {
                continue;
            };
            changes.push(SyncChange {
                vm,
                was: parse(&was)?,
                now: parse(&now)?,
                terminated_session: r.get(3),
                source: source.to_owned(),
            });
        }
        Ok(changes)
    }

    fn vm_addresses(
        &self,
        seen: Vec<vmdesk_core::SeenAddress>,
        source: &str,
    ) -> CoreResult<Vec<vmdesk_core::AddressChange>> {
        let _changed = self.changed();
        let mut out = Vec::new();
        for a in seen {
            let port = a.ssh_port.and_then(|p| i32::try_from(p).ok());
            let r = self.conn.with(|c| {
                c.query_one(
                    "SELECT vm, was FROM vmdesk.vm_address($1, $2, $3, $4, $5, $6)",
                    &[&a.vm_id, &a.ip, &port, &a.learned, &source, &a.public_ip],
                )
            })?;
            if let Some(vm) = r.get::<_, Option<String>>(0) {
                out.push(vmdesk_core::AddressChange {
                    vm,
                    was: r.get(1),
                    now: a.ip,
                    learned: a.learned,
                    source: source.to_owned(),
                });
            }
        }
        Ok(out)
    }

    fn vm_import(
        &self,
        host: &str,
        pool: &str,
        machines: &[ImportMachine],
    ) -> CoreResult<ImportReport> {
        let _changed = self.changed();
        let offer = serde_json::to_string(machines).map_err(|e| CoreError::Store(e.to_string()))?;
        let rows = self.conn.query(
            "SELECT machine, vm_id, skipped FROM vmdesk.vm_import($1, $2, $3::text::jsonb)",
            &[&host, &pool, &offer],
            |r| {
                Ok((
                    r.get::<_, String>(0),
                    r.get::<_, Option<i64>>(1),
                    r.get::<_, Option<String>>(2),
                ))
            },
        )?;
        let mut report = ImportReport::default();
        for (machine, vm, skipped) in rows {
            match (vm, skipped) {
                (Some(id), _) => report.imported.push(self.vm(&id.to_string())?),
                (None, reason) => report.skipped.push(Skipped {
                    machine,
                    reason: reason.unwrap_or_default(),
                }),
            }
        }
        Ok(report)
    }

    fn vm_meta(&self, vm: &str, patch: &Value) -> CoreResult<Vm> {
        let _changed = self.changed();
        let id: i64 = self.conn.one(
            "SELECT vmdesk.vm_meta($1, $2::text::jsonb)",
            &[&vm, &patch.to_string()],
            |r| Ok(r.get(0)),
        )?;
        self.vm(&id.to_string())
    }
}

impl Events for PgStore {
    fn system_note(&self, action: &str, severity: Severity, details: Value) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.system_note($1, $2, $3::text::jsonb)",
                &[&action, &severity.as_str(), &details.to_string()],
            )
        })?;
        Ok(())
    }

    fn owner_note(
        &self,
        action: &str,
        severity: Severity,
        vm: i64,
        details: Value,
    ) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.owner_note($1, $2, $3, $4::text::jsonb)",
                &[&action, &severity.as_str(), &vm, &details.to_string()],
            )
        })?;
        Ok(())
    }

    fn note_failure(&self, action: &str, vm: Option<i64>, details: Value) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.note_failure($1, $2, $3::text::jsonb)",
                &[&action, &vm, &details.to_string()],
            )
        })?;
        Ok(())
    }

    fn events_query(&self, q: &vmdesk_core::EventQuery, vm: Option<i64>) -> CoreResult<Vec<Event>> {
        let types: Vec<&str> = q.types.iter().map(|t| t.as_str()).collect();
        let severities: Vec<&str> = q.severities.iter().map(|s| s.as_str()).collect();
        self.conn.query(
            "SELECT id, type, action, severity, actor, vm_id, session_id, details::text, vmdesk.ts(created_at)
             FROM vmdesk.events
             WHERE (cardinality($1::text[]) = 0 OR type = ANY($1))
               AND (cardinality($2::text[]) = 0 OR severity = ANY($2))
               AND id > $3 AND ($4::bigint IS NULL OR vm_id = $4)
               AND ($6::text IS NULL OR actor = $6
                    OR subject_id = (SELECT id FROM vmdesk.users WHERE name = $6))
               AND ($7::text IS NULL OR created_at >= $7::text::timestamptz)
             ORDER BY id DESC LIMIT $5",
            &[
                &types,
                &severities,
                &q.after.unwrap_or(0),
                &vm,
                &q.limit,
                &q.user,
                &q.since,
            ],
            event_row,
        )
    }

    fn events(&self, limit: i64) -> CoreResult<Vec<Event>> {
        self.conn.query(
            "SELECT id, type, action, severity, actor, vm_id, session_id, details::text, vmdesk.ts(created_at)
             FROM vmdesk.events ORDER BY id DESC LIMIT $1",
            &[&limit],
            event_row,
        )
    }
}

impl Work for PgStore {
    fn register_worker(&self, worker: &str) -> CoreResult<()> {
        let key: i64 = self.conn.with(|c| {
            let key: i64 = c
                .query_one("SELECT vmdesk.worker_register($1)", &[&worker])?
                .get(0);
            c.execute(WORKER_LOCK, &[&key])?;
            Ok(key)
        })?;
        self.conn
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key);
        Ok(())
    }

    fn worker_alive(&self, worker: &str) -> CoreResult<bool> {
        Ok(self
            .conn
            .with(|c| c.query_one("SELECT vmdesk.worker_alive($1)", &[&worker]))?
            .get(0))
    }

    fn claim_pending(&self, worker: &str) -> CoreResult<Option<(String, i64, String)>> {
        let _changed = self.changed();
        let r = self.conn.with(|c| {
            c.query_one(
                "SELECT o_kind, o_id, o_status FROM vmdesk.claim_pending($1)",
                &[&worker],
            )
        })?;
        Ok(match (r.get(0), r.get(1), r.get(2)) {
            (Some(kind), Some(id), Some(status)) => Some((kind, id, status)),
            _ => None,
        })
    }

    fn claimed_work(&self) -> CoreResult<Vec<(String, i64, String)>> {
        self.conn.query(
            "SELECT o_kind, o_id, o_worker FROM vmdesk.claimed_work()",
            &[],
            |r| Ok((r.get(0), r.get(1), r.get(2))),
        )
    }

    fn reclaim(&self, kind: &str, id: i64, dead: &str, me: &str) -> CoreResult<bool> {
        let _changed = self.changed();
        Ok(self
            .conn
            .with(|c| {
                c.query_one(
                    "SELECT vmdesk.reclaim($1, $2, $3, $4)",
                    &[&kind, &id, &dead, &me],
                )
            })?
            .get(0))
    }

    fn recovered_vm(&self, id: i64, me: &str, dead: &str, machine: &str) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.recovered_vm($1, $2, $3, $4)",
                &[&id, &me, &dead, &machine],
            )
        })?;
        Ok(())
    }

    fn recovered_session(
        &self,
        id: i64,
        me: &str,
        dead: &str,
        vm_status: VmStatus,
    ) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.recovered_session($1, $2, $3, $4)",
                &[&id, &me, &dead, &vm_status.as_str()],
            )
        })?;
        Ok(())
    }

    fn serve_leader(&self) -> CoreResult<Option<(String, i32, String)>> {
        let r = self.conn.with(|c| {
            c.query_one(
                "SELECT o_host, o_pid, o_since FROM vmdesk.serve_leader()",
                &[],
            )
        })?;
        Ok(match (r.get(0), r.get(1), r.get(2)) {
            (Some(host), Some(pid), Some(since)) => Some((host, pid, since)),
            _ => None,
        })
    }
}

impl Consoles for PgStore {
    fn console_reserve(
        &self,
        desk: &str,
        vm: &str,
        (start, end): (u16, u16),
        skip: &[u16],
        worker: &str,
        token_hash: &str,
        expires_at: &str,
    ) -> CoreResult<(u16, Vm)> {
        let _changed = self.changed();
        let skip: Vec<i32> = skip.iter().map(|p| i32::from(*p)).collect();
        let r = self.conn.with(|c| {
            c.query_one(
                "SELECT o_port, o_vm_id FROM vmdesk.console_reserve($1, $2, $3, $4, $5, $6, $7, $8::text::timestamptz)",
                &[
                    &desk,
                    &vm,
                    &i32::from(start),
                    &i32::from(end),
                    &skip,
                    &worker,
                    &token_hash,
                    &expires_at,
                ],
            )
        })?;
        let port: i32 = r.get(0);
        let vm_id: i64 = r.get(1);
        Ok((port as u16, self.vm(&vm_id.to_string())?))
    }

    fn console_redeem(
        &self,
        desk: &str,
        port: u16,
        token_hash: &str,
    ) -> CoreResult<Result<Vm, CoreError>> {
        let _changed = self.changed();
        let r = self.conn.with(|c| {
            c.query_one(
                "SELECT o_vm_id, o_error FROM vmdesk.console_redeem($1, $2, $3)",
                &[&desk, &i32::from(port), &token_hash],
            )
        })?;
        let vm_id: i64 = r.get(0);
        Ok(match r.get::<_, Option<String>>(1) {
            None => Ok(self.vm(&vm_id.to_string())?),
            Some(why) if why.contains("not RUNNING") => Err(CoreError::ConsoleUnavailable(why)),
            Some(why) => Err(CoreError::Forbidden {
                user: self.login().to_owned(),
                action: why,
            }),
        })
    }

    fn console_release(
        &self,
        desk: &str,
        port: u16,
        reason: &str,
        recovery: bool,
    ) -> CoreResult<bool> {
        let _changed = self.changed();
        Ok(self
            .conn
            .with(|c| {
                c.query_one(
                    "SELECT vmdesk.console_release($1, $2, $3, $4)",
                    &[&desk, &i32::from(port), &reason, &recovery],
                )
            })?
            .get(0))
    }

    fn consoles(&self, desk: &str) -> CoreResult<Vec<OpenConsole>> {
        self.conn.query(
            "SELECT c.port, v.name, u.name, vmdesk.ts(c.created_at), c.worker
             FROM vmdesk.consoles c JOIN vmdesk.vms v ON v.id = c.vm_id
             JOIN vmdesk.users u ON u.id = c.user_id
             WHERE c.desk = $1 ORDER BY c.port",
            &[&desk],
            |r| {
                let port: i32 = r.get(0);
                Ok(OpenConsole {
                    port: port as u16,
                    vm: r.get(1),
                    user: r.get(2),
                    since: r.get(3),
                    worker: r.get(4),
                })
            },
        )
    }
}

impl Billing for PgStore {
    fn billable_vms(&self) -> CoreResult<Vec<i64>> {
        self.conn
            .query("SELECT * FROM vmdesk.billable_vms()", &[], |r| Ok(r.get(0)))
    }

    fn bill_vm(
        &self,
        id: i64,
        now: chrono::DateTime<chrono::Utc>,
        observed: Option<i64>,
        cfg: vmdesk_core::BillingConfig,
    ) -> CoreResult<Option<Billed>> {
        let _changed = self.changed();
        let at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let r = self.conn.with(|c| {
            c.query_one(
                "SELECT vm, payer, seconds, credits, exhausted, end_session, stop_vm
                 FROM vmdesk.bill_vm($1, $2::text::timestamptz, $3, $4, $5)",
                &[&id, &at, &observed, &cfg.hourly_percent, &cfg.warn_seconds],
            )
        })?;
        let seconds: Option<i64> = r.get(2);
        let (Some(seconds), Some(vm), Some(user)) = (seconds, r.get(0), r.get(1)) else {
            return Ok(None);
        };
        Ok(Some(Billed {
            charge: RuntimeCharge {
                vm,
                user,
                seconds,
                credits: r.get::<_, Option<i64>>(3).unwrap_or(0),
                exhausted: r.get::<_, Option<bool>>(4).unwrap_or(false),
            },
            end_session: r.get(5),
            stop_vm: r.get::<_, Option<bool>>(6).unwrap_or(false),
        }))
    }
}

impl Quarantine for PgStore {
    fn machine_known(&self, host: &str, machine: &str) -> CoreResult<(bool, bool)> {
        self.conn.one(
            "SELECT o_has_row, o_quarantined FROM vmdesk.machine_known($1, $2)",
            &[&host, &machine],
            |r| Ok((r.get(0), r.get(1))),
        )
    }

    fn quarantine_add(&self, host: &str, machine: &str, powered_off: bool) -> CoreResult<bool> {
        let _changed = self.changed();
        self.conn.one(
            "SELECT vmdesk.quarantine_add($1, $2, $3)",
            &[&host, &machine, &powered_off],
            |r| Ok(r.get(0)),
        )
    }

    fn quarantine_keep(&self, host: &str, marked: &[String]) -> CoreResult<()> {
        self.conn
            .with(|c| c.execute("SELECT vmdesk.quarantine_keep($1, $2)", &[&host, &marked]))?;
        Ok(())
    }

    fn quarantined(&self) -> CoreResult<Vec<Quarantined>> {
        self.require_admin("list quarantined machines")?;
        self.conn.query(
            "SELECT h.name, q.machine, vmdesk.ts(q.found_at) FROM vmdesk.quarantine q
             JOIN vmdesk.hosts h ON h.id = q.host_id ORDER BY q.found_at, q.machine",
            &[],
            |r| {
                Ok(Quarantined {
                    host: r.get(0),
                    machine: r.get(1),
                    found_at: r.get(2),
                })
            },
        )
    }

    fn quarantine_purged(&self, host: &str, machine: &str) -> CoreResult<()> {
        let _changed = self.changed();
        self.conn.with(|c| {
            c.execute(
                "SELECT vmdesk.quarantine_purged($1, $2)",
                &[&host, &machine],
            )
        })?;
        Ok(())
    }
}

fn action_name(a: VmAction) -> &'static str {
    match a {
        VmAction::Start => "start",
        VmAction::Stop => "stop",
        VmAction::Restart => "restart",
        VmAction::Destroy => "destroy",
    }
}

/// The columns of a [`Project`] for [`project_row`] (before a FROM).
macro_rules! project_select {
    () => {
        "SELECT id, name, vmdesk.ts(created_at), max_session_minutes, idle_minutes,
                idle_cpu_percent, weekly_hours"
    };
}
use project_select;

fn project_row(r: &Row) -> CoreResult<Project> {
    Ok(Project {
        id: r.get(0),
        name: r.get(1),
        created_at: r.get(2),
        limits: ProjectLimits {
            max_session_minutes: r.get(3),
            idle_minutes: r.get(4),
            idle_cpu_percent: r.get(5),
            weekly_hours: r.get(6),
        },
    })
}

/// A ledger entry from `id, amount, kind, reason, vm_id, session_id, actor,
/// vmdesk.ts(created_at)`.
fn ledger_row(r: &Row) -> CoreResult<LedgerEntry> {
    Ok(LedgerEntry {
        id: r.get(0),
        amount: r.get(1),
        kind: parse(r.get(2))?,
        reason: r.get(3),
        vm_id: r.get(4),
        session_id: r.get(5),
        actor: r.get(6),
        created_at: r.get(7),
    })
}

fn event_row(r: &Row) -> CoreResult<Event> {
    let details: String = r.get(7);
    Ok(Event {
        id: r.get(0),
        event_type: parse(r.get(1))?,
        action: r.get(2),
        severity: parse(r.get(3))?,
        actor: r.get(4),
        vm_id: r.get(5),
        session_id: r.get(6),
        details: serde_json::from_str(&details).unwrap_or(Value::Null),
        created_at: r.get(8),
    })
}

fn host_row(r: &Row) -> CoreResult<Host> {
    Ok(Host {
        id: r.get(0),
        name: r.get(1),
        kind: parse(r.get(2))?,
        uri: r.get(3),
        created_at: r.get(4),
    })
}

/// A password for a new login: 24 letters and digits.
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}
