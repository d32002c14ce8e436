//! Console ports and their tokens on the embedded store: the data
//! directory is one desk, so `desk` is not needed to tell desks apart.

use rusqlite::{params, OptionalExtension};
use serde_json::json;

use super::{user, vm_by_id, vm_by_ref, Embedded};
use crate::core::SYSTEM;
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::store::now;
use crate::team::{Consoles, OpenConsole};

/// Whether `a` may see VM `v`'s console now: an admin, the VM's owner, or the
/// user of its active session; and the VM must run. `asked` is how the caller
/// named the VM.
fn may_show(tx: &rusqlite::Connection, a: &User, v: &Vm, asked: &str) -> Result<()> {
    let holds_session: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE vm_id = ?1 AND user_id = ?2 AND status = 'ACTIVE')",
        params![v.id, a.id],
        |r| r.get(0),
    )?;
    let allowed =
        a.role == Role::Admin || v.owner.as_deref() == Some(a.name.as_str()) || holds_session;
    if !allowed {
        return Err(if v.pool.is_some() || v.owner.is_none() {
            Error::Forbidden {
                user: a.name.clone(),
                action: format!(
                    "open the console of VM \"{}\" without a session on it",
                    v.name
                ),
            }
        } else {
            Error::UnknownVm(asked.to_owned())
        });
    }
    if v.status != VmStatus::Running {
        return Err(Error::ConsoleUnavailable(format!(
            "VM \"{}\" is {}, not RUNNING",
            v.name, v.status
        )));
    }
    Ok(())
}

impl Consoles for Embedded<'_> {
    fn console_reserve(
        &self,
        _desk: &str,
        vm: &str,
        (start, end): (u16, u16),
        skip: &[u16],
        worker: &str,
        token_hash: &str,
        expires_at: &str,
    ) -> Result<(u16, Vm)> {
        self.core.write(|tx| {
            let a = self.me(tx)?;
            let v = vm_by_ref(tx, vm)?;
            may_show(tx, &a, &v, vm)?;
            let skip = serde_json::to_string(skip).unwrap_or_else(|_| "[]".into());
            let port: Option<u16> = tx
                .query_row(
                    "WITH RECURSIVE p(port) AS (SELECT ?1 UNION ALL SELECT port + 1 FROM p WHERE port < ?2)
                     SELECT port FROM p
                     WHERE port NOT IN (SELECT port FROM consoles)
                       AND port NOT IN (SELECT value FROM json_each(?3))
                     LIMIT 1",
                    params![start, end, skip],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(port) = port else {
                return Err(Error::PortPoolExhausted {
                    start,
                    end,
                    total: u32::from(end - start) + 1,
                });
            };
            tx.execute(
                "INSERT INTO consoles (port, vm_id, user_id, worker, token_hash, token_expires, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![port, v.id, a.id, worker, token_hash, expires_at, now()],
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Vm, "console.open", &a.name, json!({"vm": v.name, "port": port}))
                    .vm(v.id),
            )?;
            Ok((port, v))
        })
    }

    fn console_redeem(
        &self,
        _desk: &str,
        port: u16,
        token_hash: &str,
    ) -> Result<std::result::Result<Vm, Error>> {
        self.core.write(|tx| {
            let row: Option<(i64, String, String, String, bool)> = tx
                .query_row(
                    "SELECT c.vm_id, u.name, c.token_hash, c.token_expires, c.token_used
                     FROM consoles c JOIN users u ON u.id = c.user_id WHERE c.port = ?1",
                    [port],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((vm_id, opener, stored, expires, used)) = row else {
                return Err(Error::ConsoleRefused(format!(
                    "no console is open on port {port}"
                )));
            };
            if token_hash.is_empty() {
                return Err(Error::ConsoleRefused("no token was given".into()));
            }
            if token_hash != stored {
                return Err(Error::ConsoleRefused("the token is wrong".into()));
            }
            if used {
                return Err(Error::ConsoleRefused("the token was already used".into()));
            }
            if expires <= now() {
                return Err(Error::ConsoleRefused("the token has expired".into()));
            }
            tx.execute("UPDATE consoles SET token_used = 1 WHERE port = ?1", [port])?;
            let v = vm_by_id(tx, vm_id)?;
            let still = user(tx, &opener).and_then(|a| may_show(tx, &a, &v, &v.name));
            match still {
                Ok(()) => Ok(Ok(v)),
                Err(e) => {
                    tx.execute("DELETE FROM consoles WHERE port = ?1", [port])?;
                    events::record(
                        tx,
                        NewEvent::info(
                            EventType::Vm,
                            "console.close",
                            SYSTEM,
                            json!({"port": port, "reason": e.one_line()}),
                        )
                        .vm(v.id),
                    )?;
                    Ok(Err(e))
                }
            }
        })
    }

    fn console_release(
        &self,
        _desk: &str,
        port: u16,
        reason: &str,
        recovery: bool,
    ) -> Result<bool> {
        self.core.write(|tx| {
            let vm: Option<i64> = tx
                .query_row("SELECT vm_id FROM consoles WHERE port = ?1", [port], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(vm_id) = vm else { return Ok(false) };
            tx.execute("DELETE FROM consoles WHERE port = ?1", [port])?;
            let ev = if recovery {
                NewEvent::info(
                    EventType::System,
                    "recovery.console",
                    SYSTEM,
                    json!({"port": port, "reason": reason}),
                )
            } else {
                NewEvent::info(
                    EventType::Vm,
                    "console.close",
                    SYSTEM,
                    json!({"port": port, "reason": reason}),
                )
            };
            events::record(tx, ev.vm(vm_id))?;
            Ok(true)
        })
    }

    fn consoles(&self, _desk: &str) -> Result<Vec<OpenConsole>> {
        let conn = self.core.db();
        let rows = conn
            .prepare(
                "SELECT c.port, v.name, u.name, c.created_at, c.worker FROM consoles c
                 JOIN vms v ON v.id = c.vm_id JOIN users u ON u.id = c.user_id
                 ORDER BY c.port",
            )?
            .query_map([], |r| {
                Ok(OpenConsole {
                    port: r.get(0)?,
                    vm: r.get(1)?,
                    user: r.get(2)?,
                    since: r.get(3)?,
                    worker: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
