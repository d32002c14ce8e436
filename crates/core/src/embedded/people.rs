//! Users and their credits on the embedded store.

use rusqlite::{params, OptionalExtension};
use serde_json::json;

use super::ledger::{self, Entry};
use super::{grant, statement, user, user_row, vm_by_id, Embedded};
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

    fn credits_adjust(&self, to: &str, amount: i64, reason: &str) -> Result<CreditStatement> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "adjust credits")?;
            let u = user(tx, to)?;
            let balance: i64 =
                tx.query_row("SELECT balance FROM users WHERE id = ?1", [u.id], |r| {
                    r.get(0)
                })?;
            if balance + amount < 0 {
                return Err(Error::BelowZero {
                    user: u.name,
                    amount,
                    balance,
                });
            }
            ledger::append(
                tx,
                &u.name,
                Entry {
                    user_id: u.id,
                    amount,
                    kind: LedgerKind::Adjustment,
                    reason,
                    vm_id: None,
                    session_id: None,
                    actor: &a.name,
                },
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "credits.adjust",
                    &a.name,
                    json!({"user": u.name, "amount": amount, "reason": reason,
                           "balance": balance + amount}),
                ),
            )?;
            statement(tx, &u)
        })
    }

    fn credits_refund(&self, vm: i64, reason: &str) -> Result<LedgerEntry> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "refund credits")?;
            let v = vm_by_id(tx, vm)?;
            let refusal = |why: String| Error::NotRefundable {
                vm: v.name.clone(),
                why,
            };
            if v.status != VmStatus::FailedToStart {
                return Err(refusal(format!(
                    "it is {}; only a creation that failed is refunded",
                    v.status
                )));
            }
            let charge: Option<(i64, i64, String)> = tx
                .query_row(
                    "SELECT l.id, l.amount, u.name FROM ledger l JOIN users u ON u.id = l.user_id
                     WHERE l.vm_id = ?1 AND l.kind = 'vm_create' ORDER BY l.id LIMIT 1",
                    [v.id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((charge_id, charged, to)) = charge else {
                return Err(refusal("nothing was charged for its creation".into()));
            };
            let done: Option<i64> = tx
                .query_row(
                    "SELECT id FROM ledger WHERE vm_id = ?1 AND kind = 'refund'",
                    [v.id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(entry) = done {
                return Err(refusal(format!(
                    "it was refunded already (ledger entry {entry})"
                )));
            }
            let u = user(tx, &to)?;
            let entry = ledger::append(
                tx,
                &u.name,
                Entry {
                    user_id: u.id,
                    amount: -charged,
                    kind: LedgerKind::Refund,
                    reason,
                    vm_id: Some(v.id),
                    session_id: None,
                    actor: &a.name,
                },
            )?;
            // The VM says so too, for lists that show what is left to refund.
            tx.execute(
                "UPDATE vms SET metadata = json_set(metadata, '$.refunded', ?2) WHERE id = ?1",
                params![v.id, entry.id],
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Billing,
                    "credits.refund",
                    &a.name,
                    json!({"user": u.name, "vm": v.name, "amount": -charged,
                           "reason": reason, "charge": charge_id}),
                )
                .vm(v.id),
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
