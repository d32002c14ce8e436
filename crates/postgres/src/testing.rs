//! For tests and benchmarks (here and in other crates): a team store of
//! its own for each test, a fresh database on the cluster that
//! `scripts/postgres.sh` runs (`make test` starts it), initialised with an
//! admin; its database, roles and logins are dropped when it goes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::Mutex;

use crate::{init, scram_verifier, Target};
use postgres::Client;
use rand::Rng;

/// The cluster's coordinates, from the env file scripts/postgres.sh writes.
pub struct Cluster {
    pub vars: HashMap<String, String>,
}

impl Cluster {
    pub fn get() -> Cluster {
        let dir = std::env::var("VMDESK_PG_DIR").unwrap_or_else(|_| "/run/vmdesk-postgres".into());
        let path = format!("{dir}/env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{path}: {e}; start the test cluster with `bash scripts/postgres.sh start` (make test does)")
        });
        let vars = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Cluster { vars }
    }

    pub fn var(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing from the cluster's env file"))
    }

    /// A URL to `db` as `user`, over TCP on 127.0.0.1 without TLS.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{user}:{password}@{}:{}/{db}?sslmode=disable",
            self.var("VMDESK_PG_HOST"),
            self.var("VMDESK_PG_PORT")
        )
    }
}

pub fn token(n: usize) -> String {
    let mut r = rand::rng();
    (0..n)
        .map(|_| char::from(b'a' + r.random_range(0..26u8)))
        .collect()
}

/// One store: its database, its first admin, and the logins made for it.
pub struct Store {
    pub cluster: Cluster,
    pub db: String,
    pub admin: String,
    pub admin_pw: String,
    logins: Mutex<Vec<String>>,
}

impl Store {
    pub fn new() -> Store {
        let cluster = Cluster::get();
        let tag = token(8);
        let db = format!("vdt_{tag}");
        let admin = format!("adm_{tag}");
        let admin_pw = token(20);
        let su = Target::parse(&cluster.url(
            cluster.var("VMDESK_PG_SUPERUSER"),
            cluster.var("VMDESK_PG_PASSWORD"),
            &db,
        ))
        .unwrap();
        let report = init(&su, &admin, Some(&scram_verifier(&admin_pw))).expect("store init");
        assert!(report.created_database && report.added_admin);
        Store {
            cluster,
            db,
            admin: admin.clone(),
            admin_pw,
            logins: Mutex::new(vec![admin]),
        }
    }

    /// A URL to this store's database as `user` (with `password` if
    /// given), over TCP on 127.0.0.1 without TLS.
    pub fn url(&self, user: &str, password: Option<&str>) -> String {
        let cred = match password {
            Some(pw) => format!("{user}:{pw}"),
            None => user.to_owned(),
        };
        format!(
            "postgres://{cred}@{}:{}/{}?sslmode=disable",
            self.cluster.var("VMDESK_PG_HOST"),
            self.cluster.var("VMDESK_PG_PORT"),
            self.db
        )
    }

    /// Where the store is, as vmdesk shows it: "HOST:PORT/DB".
    pub fn place(&self) -> String {
        format!(
            "{}:{}/{}",
            self.cluster.var("VMDESK_PG_HOST"),
            self.cluster.var("VMDESK_PG_PORT"),
            self.db
        )
    }

    /// The target of the superuser on this store's database.
    pub fn superuser_target(&self) -> Target {
        Target::parse(&self.cluster.url(
            self.cluster.var("VMDESK_PG_SUPERUSER"),
            self.cluster.var("VMDESK_PG_PASSWORD"),
            &self.db,
        ))
        .unwrap()
    }

    pub fn superuser(&self) -> Client {
        self.superuser_target()
            .connect()
            .expect("superuser connects")
    }

    pub fn target(&self, user: &str, password: &str) -> Target {
        Target::parse(&self.cluster.url(user, password, &self.db)).unwrap()
    }

    pub fn connect(&self, user: &str, password: &str) -> Client {
        self.target(user, password)
            .connect()
            .unwrap_or_else(|e| panic!("{user} connects: {e}"))
    }

    pub fn admin(&self) -> Client {
        self.connect(&self.admin, &self.admin_pw)
    }

    /// Adds a user (a new login with a password) through the admin's
    /// function; returns its name and password.
    /// Drops `login` with the store (a login made outside [`Store::user`]).
    pub fn forget_login(&self, login: &str) {
        self.logins.lock().unwrap().push(login.to_owned());
    }

    pub fn user(&self, prefix: &str, admin: bool) -> (String, String) {
        let name = format!("{prefix}_{}", token(8));
        let pw = token(20);
        self.admin()
            .execute(
                "SELECT vmdesk.user_add($1, $2, $3)",
                &[&name, &admin, &scram_verifier(&pw)],
            )
            .expect("user_add");
        self.logins.lock().unwrap().push(name.clone());
        (name, pw)
    }

    /// Runs `sql` with psql, the plain PostgreSQL client, as `user`.
    pub fn psql(&self, user: &str, password: &str, sql: &str) -> Output {
        Command::new("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.cluster.var("VMDESK_PG_HOST"))
            .arg("-p")
            .arg(self.cluster.var("VMDESK_PG_PORT"))
            .arg("-U")
            .arg(user)
            .arg("-d")
            .arg(&self.db)
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql (make setup installs postgresql-client)")
    }

    /// A pool project `name` with `n` VMs ready (STOPPED) on a test host.
    pub fn pool(&self, name: &str, n: usize) {
        self.pool_of(name, n, "tiny-linux", 96);
    }

    /// [`Store::pool`] of VMs of OS `os` with `ram_mb`.
    pub fn pool_of(&self, name: &str, n: usize, os: &str, ram_mb: i64) {
        let mut a = self.admin();
        a.execute("SELECT vmdesk.project_create($1)", &[&name])
            .unwrap();
        let host = format!("h-{name}");
        a.execute(
            "SELECT vmdesk.host_add($1, 'libvirt', 'test:///default')",
            &[&host],
        )
        .unwrap();
        for i in 0..n {
            let vm = format!("{name}-vm{i}");
            let id: i64 = a
                .query_one(
                    "SELECT id FROM vmdesk.vm_add($1, $2, $3, $4, $5, 1, 1, NULL, NULL, NULL)",
                    &[&vm, &name, &host, &os, &ram_mb],
                )
                .unwrap()
                .get(0);
            a.execute("SELECT vmdesk.vm_set_status($1, 'STOPPED', NULL)", &[&id])
                .unwrap();
        }
    }

    /// A pool project `name` with `n` VMs ready (STOPPED): the first made
    /// through the functions as [`Store::pool`] does, the others copied from
    /// it by the superuser in one statement (a big pool in a second), then
    /// the table analysed as autovacuum would have done.
    pub fn big_pool(&self, name: &str, n: usize) {
        self.pool(name, 1);
        let mut su = self.superuser();
        su.execute(
            "INSERT INTO vmdesk.vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status,
                                     project_id, host_id, provider_id, start_after_create, last_stopped)
             SELECT $1 || '-vm' || i, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status,
                    project_id, host_id, 'machine-' || i, start_after_create, last_stopped
             FROM vmdesk.vms, generate_series(1, $2::int - 1) AS i
             WHERE name = $1 || '-vm0'",
            &[&name, &(n as i32)],
        )
        .unwrap();
        su.batch_execute("ANALYZE vmdesk.vms").unwrap();
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let Ok(mut su) = self.superuser_target().with_dbname("postgres").connect() else {
            return;
        };
        let _ = su.batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.db
        ));
        let r = crate::roles(&self.db);
        for login in self.logins.lock().unwrap().iter() {
            let _ = su.batch_execute(&format!("DROP ROLE IF EXISTS \"{login}\""));
        }
        for g in [r.admins, r.users, r.owner] {
            let _ = su.batch_execute(&format!("DROP ROLE IF EXISTS \"{g}\""));
        }
    }
}
