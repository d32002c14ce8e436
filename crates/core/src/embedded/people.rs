//! Users and their credits on the embedded store.

use rusqlite::params;
use serde_json::json;

use super::ledger::{self, Entry};
use super::{grant, statement, user, user_row, Embedded};
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::store::now;
use crate::team::Users;

impl Users for Embedded<'_> {
    fn login(&self) -> &str {
        self.actor
    }

    fn describe(&self) -> String {
        format!("embedded store in {}", self.core.data_dir().display())
    }

    fn whoami(&self) -> Result<User> {
        if self.system {
            return Ok(crate::core::system_actor());
        }
        user(&self.core.db(), self.actor)
    }

    fn user(&self, name: &str) -> Result<User> {
        user(&self.core.db(), name)
    }

    /// The embedded store has no logins: `password` is not used.
    fn user_add(&self, name: &str, admin_role: bool, _password: Option<&str>) -> Result<User> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "add users")?;
            let role = if admin_role { Role::Admin } else { Role::User };
            tx.execute(
                "INSERT INTO users (name, role, balance, created_at) VALUES (?1, ?2, 0, ?3)",
                params![name, role, now()],
            )
            .map_err(super::already_exists("user", name))?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "user.add",
                    &a.name,
                    json!({"user": name, "role": role}),
                ),
            )?;
            user(tx, name)
        })
    }

    fn user_list(&self) -> Result<Vec<User>> {
        let conn = self.core.db();
        self.admin_me(&conn, "list users")?;
        let mut stmt =
            conn.prepare("SELECT id, name, role, balance, created_at FROM users ORDER BY name")?;
        let rows = stmt.query_map([], user_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn user_role(&self, name: &str, role: Role) -> Result<User> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "change roles")?;
            let u = user(tx, name)?;
            if u.role == role {
                return Ok(u);
            }
            if role == Role::User {
                let admins: i64 =
                    tx.query_row("SELECT count(*) FROM users WHERE role = 'admin'", [], |r| {
                        r.get(0)
                    })?;
                if admins <= 1 {
                    return Err(Error::invalid(format!(
                        "{name} is the last admin; make another user admin first"
                    )));
                }
            }
            tx.execute(
                "UPDATE users SET role = ?1 WHERE id = ?2",
                params![role, u.id],
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "user.role",
                    &a.name,
                    json!({"user": name, "from": u.role, "to": role}),
                ),
            )?;
            user(tx, name)
        })
    }

    fn credits_grant(&self, to: &str, amount: i64, reason: &str) -> Result<CreditStatement> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "grant credits")?;
            let u = user(tx, to)?;
            grant(tx, &a.name, u.id, &u.name, amount, reason)?;
            statement(tx, &u)
        })
    }

    fn charge(
        &self,
        from: &str,
        amount: i64,
        kind: LedgerKind,
        reason: &str,
    ) -> Result<LedgerEntry> {
        self.core.write(|tx| {
            let a = self.me(tx)?;
            let u = user(tx, from)?;
            if a.id != u.id && a.role != Role::Admin {
                return Err(Error::Forbidden {
                    user: a.name,
                    action: format!("charge the credits of {}", u.name),
                });
            }
            let entry = ledger::append(
                tx,
                &u.name,
                Entry {
                    user_id: u.id,
                    amount: -amount,
                    kind,
                    reason,
                    vm_id: None,
                    session_id: None,
                    actor: &a.name,
                },
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Billing,
                    "credits.charge",
                    &a.name,
                    json!({"user": u.name, "amount": amount, "kind": kind, "reason": reason}),
                ),
            )?;
            Ok(entry)
        })
    }

    fn credits_show(&self, of: &str) -> Result<CreditStatement> {
        let conn = self.core.db();
        let a = self.me(&conn)?;
        let u = if of == a.name {
            a
        } else if a.role != Role::Admin {
            return Err(Error::AdminOnly("see another user's credits"));
        } else {
            user(&conn, of)?
        };
        statement(&conn, &u)
    }
}
