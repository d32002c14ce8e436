//! One behavioural suite, two stores: a [`Desks`] is a set of desks on the
//! embedded store (one data dir, one [`Core`], acting as any user) or on a
//! team store (a fresh PostgreSQL database; each user a login with a
//! [`Core`] of its own on its own desk), and tests written against it run on
//! both. See tests/two_stores.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vmdesk_core::{Core, OpenOptions};
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
    embedded: Option<(tempfile::TempDir, Core)>,
    team: Option<Store>,
    /// Team mode: each login's password and desk.
    desks: Mutex<HashMap<String, (String, Option<Desk>)>>,
}

impl Desks {
    pub fn new(kind: Kind) -> Desks {
        let hosts = MemoryFactory::default();
        let mut d = Desks {
            hosts,
            embedded: None,
            team: None,
            desks: Mutex::new(HashMap::new()),
        };
        match kind {
            Kind::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                let core = common::open(dir.path(), &d.hosts);
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
                    let s = self.team.as_ref().unwrap();
                    let store = PgStore::connect(s.target(user, pw)).expect("desk connects");
                    let dir = tempfile::tempdir().unwrap();
                    let mut opts = OpenOptions::new(dir.path(), Arc::new(self.hosts.clone()));
                    // As common::open sets them for the embedded store.
                    opts.start_timeout = std::time::Duration::from_secs(2);
                    opts.shutdown_timeout = std::time::Duration::from_millis(300);
                    opts.team = Some(Arc::new(store));
                    *desk = Some(Arc::new((dir, Core::open(opts).unwrap())));
                }
                Arc::clone(desk.as_ref().unwrap())
            }
        }
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
}
