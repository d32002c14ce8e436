//! The team store's schema: its roles, its migration steps and `init`.

use postgres::Client;

use crate::{Error, Result};

/// The migration steps, in order; never edit a step that has shipped.
pub const STEPS: &[&str] = &[
    include_str!("../sql/001_schema.sql"),
    include_str!("../sql/002_api.sql"),
    include_str!("../sql/003_serve.sql"),
    include_str!("../sql/004_speed.sql"),
    include_str!("../sql/005_admin.sql"),
    include_str!("../sql/006_hosts.sql"),
    include_str!("../sql/007_network.sql"),
    include_str!("../sql/008_corrections.sql"),
    include_str!("../sql/009_limits.sql"),
    include_str!("../sql/010_rename.sql"),
    include_str!("../sql/011_changes.sql"),
];

/// The store's roles, named after its database so that one cluster can hold
/// several stores: the owner of every object (no login), the group of its
/// users and the group of its admins (whose members are users too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    pub owner: String,
    pub users: String,
    pub admins: String,
}

/// The roles of the store in database `db`.
pub fn roles(db: &str) -> Roles {
    Roles {
        owner: format!("{db}_owner"),
        users: format!("{db}_user"),
        admins: format!("{db}_admin"),
    }
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn render(step: &str, r: &Roles) -> String {
    step.replace("@OWNER@", &ident(&r.owner))
        .replace("@USERS_LIT@", &literal(&r.users))
        .replace("@ADMINS_LIT@", &literal(&r.admins))
        .replace("@USERS@", &ident(&r.users))
        .replace("@ADMINS@", &ident(&r.admins))
}

/// A password as PostgreSQL stores it (SCRAM-SHA-256, salted): what vmdesk
/// sends instead of the password, so that no log or statement holds it.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// The step the store's schema is at (0: none yet).
pub fn schema_version(client: &mut Client) -> Result<i32> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('vmdesk_meta.migrations') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT coalesce(max(step), 0) FROM vmdesk_meta.migrations",
            &[],
        )?
        .get(0))
}

/// What [`init`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    /// The database did not exist and was created.
    pub created_database: bool,
    /// Migration steps applied now (1-based).
    pub applied: Vec<i32>,
    /// The first admin was added now (not there before).
    pub added_admin: bool,
    pub roles: Roles,
}

/// Creates (or brings up to date) the store at `target`: its database if
/// missing, its roles, its schema by migration steps, and the first admin,
/// a login with `admin_verifier` as its password (`None`: a login the
/// cluster has, or one that authenticates by certificate). Idempotent, and
/// safe to run from two places at once (an advisory lock orders them). Runs
/// as a role that may create databases and roles, e.g. the cluster's
/// superuser.
pub fn init(
    target: &crate::Target,
    admin: &str,
    admin_verifier: Option<&str>,
) -> Result<InitReport> {
    let db = target.dbname().to_owned();
    if db.len() > 50 || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::Url(format!(
            "the database name {db:?} must be at most 50 letters, digits and '_' (the store's roles are named after it)"
        )));
    }
    let mut report = InitReport {
        roles: roles(&db),
        ..InitReport::default()
    };
    {
        let mut server = target.with_dbname("postgres").connect()?;
        let exists = server
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])?
            .is_some();
        if !exists {
            server.batch_execute(&format!("CREATE DATABASE {}", ident(&db)))?;
            report.created_database = true;
        }
    }
    let r = report.roles.clone();
    let mut c = target.connect()?;
    let mut tx = c.transaction()?;
    // Roles are the cluster's, not the database's: two inits of two stores
    // would race on them, so the lock is cluster-wide (no xact lock on a
    // database object).
    tx.execute("SELECT pg_advisory_xact_lock(7283461, 1)", &[])?;
    for (name, attrs) in [
        (&r.owner, "NOLOGIN CREATEROLE"),
        (&r.users, "NOLOGIN"),
        (&r.admins, "NOLOGIN"),
    ] {
        let have = tx
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[name])?
            .is_some();
        if !have {
            tx.batch_execute(&format!("CREATE ROLE {} {attrs}", ident(name)))?;
        }
    }
    tx.batch_execute(&format!(
        "GRANT {users} TO {admins};
         GRANT {users}, {admins} TO {owner} WITH ADMIN OPTION;
         REVOKE ALL ON DATABASE {db} FROM PUBLIC;
         GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {users};
         GRANT CONNECT, CREATE ON DATABASE {db} TO {owner};
         CREATE SCHEMA IF NOT EXISTS vmdesk_meta;
         REVOKE ALL ON SCHEMA vmdesk_meta FROM PUBLIC;
         GRANT USAGE ON SCHEMA vmdesk_meta TO {users};
         CREATE TABLE IF NOT EXISTS vmdesk_meta.migrations (
             step       integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         GRANT SELECT ON vmdesk_meta.migrations TO {users};",
        users = ident(&r.users),
        admins = ident(&r.admins),
        owner = ident(&r.owner),
        db = ident(&db),
    ))?;
    let at: i32 = tx
        .query_one(
            "SELECT coalesce(max(step), 0) FROM vmdesk_meta.migrations",
            &[],
        )?
        .get(0);
    let known = STEPS.len() as i32;
    if at > known {
        return Err(Error::TooNew { found: at, known });
    }
    for (i, step) in STEPS.iter().enumerate().skip(at as usize) {
        let n = i as i32 + 1;
        // The owner makes the objects, so that they are its own and the
        // SECURITY DEFINER functions run as it.
        tx.batch_execute(&format!("SET LOCAL ROLE {}", ident(&r.owner)))?;
        tx.batch_execute(&render(step, &r))?;
        tx.batch_execute("RESET ROLE")?;
        tx.execute(
            "INSERT INTO vmdesk_meta.migrations (step) VALUES ($1)",
            &[&n],
        )?;
        report.applied.push(n);
    }
    let known_admin = tx
        .query_opt("SELECT 1 FROM vmdesk.users WHERE name = $1", &[&admin])?
        .is_some();
    if !known_admin {
        let login = tx.query_opt(
            "SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&admin],
        )?;
        match (login, admin_verifier) {
            (None, verifier) => {
                let pw = verifier
                    .map(|v| format!(" PASSWORD {}", literal(v)))
                    .unwrap_or_default();
                tx.batch_execute(&format!("CREATE ROLE {} LOGIN{pw}", ident(admin)))?;
            }
            (Some(row), _) => {
                let (sup, login): (bool, bool) = (row.get(0), row.get(1));
                if !login {
                    return Err(Error::Url(format!(
                        "the role {admin:?} cannot log in, so it cannot be the store's admin"
                    )));
                }
                let _ = sup;
            }
        }
        tx.batch_execute(&format!(
            "GRANT {users}, {admins} TO {who}",
            users = ident(&r.users),
            admins = ident(&r.admins),
            who = ident(admin)
        ))?;
        tx.batch_execute(&format!("SET LOCAL ROLE {}", ident(&r.owner)))?;
        tx.execute(
            "INSERT INTO vmdesk.users (name, role) VALUES ($1, 'admin')",
            &[&admin],
        )?;
        tx.execute(
            "SELECT vmdesk.record('admin', 'store.init', 'info', 'vmdesk', NULL, NULL,
                 (SELECT id FROM vmdesk.users WHERE name = $1),
                 jsonb_build_object('admin', $1::text))",
            &[&admin],
        )?;
        tx.batch_execute("RESET ROLE")?;
        report.added_admin = true;
    }
    tx.commit()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_all_replaced_and_quoted() {
        let r = roles("lab");
        for step in STEPS {
            let sql = render(step, &r);
            assert!(!sql.contains('@'), "a placeholder is left in a step");
        }
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("o'k"), "'o''k'");
    }

    #[test]
    fn a_verifier_is_scram_and_never_the_password() {
        let v = scram_verifier("hunter2");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("hunter2"));
        assert_ne!(v, scram_verifier("hunter2"), "salted");
    }
}
