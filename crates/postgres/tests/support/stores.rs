//! One behavioural suite, two stores: a [`Desks`] is a set of desks on the
//! embedded store (one data dir, one [`Core`], acting as any user) or on a
//! team store (a fresh PostgreSQL database; each user a login with a
//! [`Core`] of its own on its own desk), and tests written against it run on
//! both. See tests/two_stores.rs.
// Each test file uses some of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vmdesk_core::{Core, OpenOptions, SessionRequest, Vm, VmCreate};
use vmdesk_postgres::testing::Store;
use vmdesk_postgres::PgStore;

use crate::common::{self, MemoryFactory};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Team,
}

/// A desk: its own data dir and its core.
pub type Desk = Arc<(tempfile::TempDir, Core)>;

pub struct Desks {
    hosts: MemoryFactory,
    /// How long a guest is given to shut down before it is forced off.
    shutdown_timeout: std::time::Duration,
    embedded: Option<(tempfile::TempDir, Core)>,
    team: Option<Store>,
    /// Team mode: each login's password and desk.
    desks: Mutex<HashMap<String, (String, Option<Desk>)>>,
}

/// A session of project `p` (the one [`Desks::pool`] makes), any type.
pub fn req() -> SessionRequest {
    req_in("p")
}

/// A session of `project`, any type.
pub fn req_in(project: &str) -> SessionRequest {
    SessionRequest {
        project: project.into(),
        ..Default::default()
    }
}

/// A VM of one's own as the tests make it: 1024 MB, 20 GB, 2 CPUs (34
/// credits), blank OS, on the only host, started.
pub fn own_vm(name: &str) -> VmCreate {
    VmCreate {
        name: name.into(),
        ram_mb: 1024,
        disk_gb: 20,
        cpu_cores: 2,
        os_type: "blank".into(),
        host: None,
        start: true,
    }
}

impl Desks {
    /// `user` creates [`own_vm`] `name` and waits for it.
    pub fn create_vm(&self, user: &str, name: &str) -> Vm {
        self.with(user, |c, me| {
            c.vm_create(me, &own_vm(name), true, None).unwrap()
        })
    }

    pub fn new(kind: Kind) -> Desks {
        Desks::with_shutdown_timeout(kind, std::time::Duration::from_millis(300))
    }

    /// Desks whose guests are given `shutdown_timeout` to shut down before
    /// they are forced off (300 ms in [`Desks::new`]).
    pub fn with_shutdown_timeout(kind: Kind, shutdown_timeout: std::time::Duration) -> Desks {
        let hosts = MemoryFactory::default();
        let mut d = Desks {
            hosts,
            shutdown_timeout,
            embedded: None,
            team: None,
            desks: Mutex::new(HashMap::new()),
        };
        match kind {
            Kind::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                let core = Core::open(d.options(dir.path())).unwrap();
                d.embedded = Some((dir, core));
            }
            Kind::Team => {
                let s = Store::new();
                d.desks
                    .lock()
                    .unwrap()
                    .insert(s.admin.clone(), (s.admin_pw.clone(), None));
                d.team = Some(s);
            }
        }
        d
    }

    /// Whether these desks work on a team store.
    pub fn is_team(&self) -> bool {
        self.team.is_some()
    }

    /// The first admin's name.
    pub fn admin(&self) -> String {
        match &self.team {
            None => "admin".to_owned(),
            Some(s) => s.admin.clone(),
        }
    }

    /// The core `user` works through: the one core of the embedded store,
    /// or the user's own desk on the team store.
    pub fn core(&self, user: &str) -> Desk {
        match &self.embedded {
            Some(_) => unreachable!("use with() on the embedded store"),
            None => {
                let mut desks = self.desks.lock().unwrap();
                let (pw, desk) = desks
                    .get_mut(user)
                    .unwrap_or_else(|| panic!("{user} has no login here"));
                if desk.is_none() {
                    let pw = pw.clone();
                    *desk = Some(self.new_desk(user, &pw));
                }
                Arc::clone(desk.as_ref().unwrap())
            }
        }
    }

    /// A core's options on `dir`, as common::open sets them.
    fn options(&self, dir: &std::path::Path) -> OpenOptions {
        let mut opts = OpenOptions::new(dir, Arc::new(self.hosts.clone()));
        opts.start_timeout = std::time::Duration::from_secs(2);
        opts.shutdown_timeout = self.shutdown_timeout;
        opts
    }

    /// A new desk of `user`'s on the team store, with its own connection.
    fn new_desk(&self, user: &str, pw: &str) -> Desk {
        let s = self.team.as_ref().unwrap();
        let store = PgStore::connect(s.target(user, pw)).expect("desk connects");
        let dir = tempfile::tempdir().unwrap();
        let mut opts = self.options(dir.path());
        opts.team = Some(Arc::new(store));
        Arc::new((dir, Core::open(opts).unwrap()))
    }

    /// Runs `f` as `user` through a core of its own, as another process
    /// would: on the embedded store a second core on the same data dir (its
    /// own SQLite connection), on the team store a new desk of `user`'s (its
    /// own PostgreSQL connection).
    pub fn with_another<T>(&self, user: &str, f: impl FnOnce(&Core, &str) -> T) -> T {
        match &self.embedded {
            Some((dir, _)) => f(&Core::open(self.options(dir.path())).unwrap(), user),
            None => {
                let pw = self.password(user);
                let desk = self.new_desk(user, &pw);
                f(&desk.1, user)
            }
        }
    }

    /// Runs `f` as `user` through another process of `user`'s own desk: on
    /// the embedded store a second core on the same data dir, on the team
    /// store a second core on the data dir of `user`'s desk (the same desk,
    /// so the same console port pool) with its own connection. The core is
    /// gone (its process dead) when `f` returns.
    pub fn with_another_process<T>(&self, user: &str, f: impl FnOnce(&Core, &str) -> T) -> T {
        match &self.embedded {
            Some(_) => self.with_another(user, f),
            None => {
                let desk = self.core(user);
                let s = self.team.as_ref().unwrap();
                let store =
                    PgStore::connect(s.target(user, &self.password(user))).expect("desk connects");
                let mut opts = self.options(desk.0.path());
                opts.team = Some(Arc::new(store));
                f(&Core::open(opts).unwrap(), user)
            }
        }
    }

    /// The action names of the newest `limit` events the admin sees, newest first.
    pub fn actions(&self, limit: i64) -> Vec<String> {
        self.events(limit).into_iter().map(|e| e.action).collect()
    }

    /// The newest `limit` events the admin sees, newest first.
    pub fn events(&self, limit: i64) -> Vec<vmdesk_core::model::Event> {
        let a = self.admin();
        self.with(&a, |c, a| c.events(a, limit).unwrap())
    }

    /// The admin's events named `action`, oldest first.
    pub fn events_named(&self, action: &str) -> Vec<vmdesk_core::model::Event> {
        let mut v: Vec<_> = self
            .events(10_000)
            .into_iter()
            .filter(|e| e.action == action)
            .collect();
        v.reverse();
        v
    }

    /// Runs `f` with the core `user` works through and `user` as the actor.
    pub fn with<T>(&self, user: &str, f: impl FnOnce(&Core, &str) -> T) -> T {
        match &self.embedded {
            Some((_, core)) => f(core, user),
            None => {
                let desk = self.core(user);
                f(&desk.1, user)
            }
        }
    }

    /// Adds a user (by the admin) with `credits`; returns its name (unique on
    /// the team store, whose logins are the cluster's).
    pub fn user(&self, prefix: &str, admin: bool, credits: i64) -> String {
        let name = match &self.team {
            None => prefix.to_owned(),
            Some(_) => format!("{prefix}_{}", vmdesk_postgres::testing::token(6)),
        };
        let pw = vmdesk_postgres::generate_password();
        let a = self.admin();
        self.with(&a, |c, a| {
            c.user_add_login(a, &name, admin, credits, Some(&pw))
                .unwrap()
        });
        if let Some(s) = &self.team {
            s.forget_login(&name);
            self.desks.lock().unwrap().insert(name.clone(), (pw, None));
        }
        name
    }

    /// A project `p` on host `h` with `n` VMs ready (STOPPED), added by the
    /// admin (on the team store, from the admin's desk).
    pub fn pool(&self, n: usize) {
        let a = self.admin();
        self.with(&a, |c, a| {
            c.host_add(a, "h", "test:///default").unwrap();
            c.project_create(a, "p").unwrap();
            for i in 0..n {
                c.vm_add(a, &common::vm(&format!("vm{i}"), "standard"))
                    .unwrap();
            }
        });
    }

    /// The password of `user`'s login (team store).
    pub fn password(&self, user: &str) -> String {
        self.desks.lock().unwrap()[user].0.clone()
    }

    /// The team store's test harness.
    pub fn team_store(&self) -> &Store {
        self.team.as_ref().expect("a team store")
    }

    /// Writes the store behind the core's back, as a hand or another client
    /// could: `sqlite` on the embedded store's file, or `postgres` as the
    /// cluster's superuser on the team store (its tables are in the `vmdesk`
    /// schema). Returns the rows changed.
    pub fn write_store(&self, sqlite: &str, postgres: &str) -> u64 {
        match (&self.embedded, &self.team) {
            (Some((dir, _)), _) => common::db(dir.path()).execute(sqlite, []).unwrap() as u64,
            (None, Some(s)) => s.superuser().execute(postgres, &[]).unwrap(),
            (None, None) => unreachable!("desks are on one store or the other"),
        }
    }

    /// The id of a worker of `user`'s whose process has died: on the
    /// embedded store an id no process holds (a worker's lock file goes
    /// with it), on the team store a worker a desk of `user`'s registered
    /// before its connection ended (returned once the store no longer
    /// holds its lock).
    pub fn dead_worker(&self, user: &str) -> String {
        use vmdesk_core::team::prelude::*;
        let id = format!("4242-{}", vmdesk_postgres::testing::token(12));
        let Some(s) = &self.team else {
            return id;
        };
        let desk = PgStore::connect(s.target(user, &self.password(user))).expect("desk connects");
        desk.register_worker(&id).unwrap();
        let a = self.admin();
        let alive = |id: &str| self.with(&a, |c, _| c.team().unwrap().worker_alive(id).unwrap());
        assert!(alive(&id), "a worker lives while its connection does");
        drop(desk);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(&id) {
            assert!(
                std::time::Instant::now() < end,
                "a dead desk's worker still looks alive after 5 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        id
    }

    /// The ids of the live workers of `user`'s processes: on the embedded
    /// store every worker of the data dir (its lock files), on the team
    /// store the workers of `user`'s whose lock the store holds.
    pub fn live_workers(&self, user: &str) -> Vec<String> {
        match (&self.embedded, &self.team) {
            (Some((dir, _)), _) => {
                let mut ids: Vec<String> = std::fs::read_dir(dir.path().join("workers"))
                    .map(|r| {
                        r.map(|e| {
                            let name = e.unwrap().file_name().to_string_lossy().into_owned();
                            name.trim_end_matches(".lock").to_owned()
                        })
                        .collect()
                    })
                    .unwrap_or_default();
                ids.sort();
                ids
            }
            (None, Some(s)) => s
                .superuser()
                .query(
                    // As vmdesk.worker_alive tells it: the lock of its key is held.
                    "SELECT w.worker FROM vmdesk.workers w JOIN vmdesk.users u ON u.id = w.user_id
                      WHERE u.name = $1 AND EXISTS (
                        SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                         WHERE l.locktype = 'advisory' AND d.datname = current_database()
                           AND l.classid = ((w.lock_key >> 32) & 4294967295)::oid
                           AND l.objid = (w.lock_key & 4294967295)::oid
                           AND l.objsubid = 1 AND l.granted)
                      ORDER BY 1",
                    &[&user],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            (None, None) => unreachable!("desks are on one store or the other"),
        }
    }

    /// The test host's machines.
    pub fn host(&self) -> &common::MemoryHost {
        &self.hosts.0
    }
}

/// Writes each test once, for both stores: `both!(name, |d| { ... })`
/// makes `name::embedded` and `name::team`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn embedded() {
                let f: fn(&$crate::stores::Desks) = $body;
                f(&$crate::stores::Desks::new($crate::stores::Kind::Embedded));
            }
            #[test]
            fn team() {
                let f: fn(&$crate::stores::Desks) = $body;
                f(&$crate::stores::Desks::new($crate::stores::Kind::Team));
            }
        }
    };
    // Desks made by `$new(kind)` (e.g. with another shutdown timeout).
    ($name:ident, new = $new:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn embedded() {
                let n: fn($crate::stores::Kind) -> $crate::stores::Desks = $new;
                let f: fn(&$crate::stores::Desks) = $body;
                f(&n($crate::stores::Kind::Embedded));
            }
            #[test]
            fn team() {
                let n: fn($crate::stores::Kind) -> $crate::stores::Desks = $new;
                let f: fn(&$crate::stores::Desks) = $body;
                f(&n($crate::stores::Kind::Team));
            }
        }
    };
}
