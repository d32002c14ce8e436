//! Consoles: the persisted port pool of the WebSocket-to-VNC bridges. A port
//! is taken in one write transaction (atomic across processes: the table's
//! primary key is the port), by the process that serves the bridge (its
//! worker id); a console's token is single-use, short-lived and stored hashed.
//! Who may see the VM and whether it runs are checked when the port is
//! reserved and again when the token is redeemed. Ports whose process is gone
//! are freed by every console service periodically, at an admin's start and on
//! demand.

use std::time::Duration;

use rand::Rng;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use ts_rs::TS;

use crate::core::{user, vm_by_id, vm_by_ref, Core, SYSTEM};
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::store::now;

/// A console just reserved: its port and the token that opens it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct ConsoleGrant {
    /// The bridge's port on 127.0.0.1.
    pub port: u16,
    /// The single-use token (only its hash is stored).
    pub token: String,
    /// The VM it shows.
    pub vm: String,
    /// The VM's machine on its host.
    pub machine: String,
    /// The VM's host.
    pub host: String,
    /// Until when the token may be used.
    pub expires_at: String,
}

/// An open console, as the pool statistics list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct ConsoleInfo {
    /// Its port.
    pub port: u16,
    /// The VM it shows.
    pub vm: String,
    /// Who opened it.
    pub user: String,
    /// Since when.
    pub since: String,
}

/// The port pool's statistics (the seed's `get_system_status`).
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[ts(export)]
pub struct PortStats {
    /// Ports in the pool.
    pub total: u32,
    /// Ports taken by open consoles.
    pub allocated: u32,
    /// Ports free.
    pub free: u32,
    /// Allocated as a percentage of the total.
    pub utilization_percent: f64,
    /// `healthy`, or `warning` from 90 % utilization.
    pub health: String,
    /// The open consoles.
    pub consoles: Vec<ConsoleInfo>,
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The expiry a token with a lifetime too long to write gets: it never comes,
/// and still compares as text with the times the core writes.
const NEVER: &str = "9999-12-31T23:59:59.999Z";

/// When a token given `ttl` from now expires (saturating at [`NEVER`]).
fn expiry(ttl: Duration) -> String {
    use chrono::Datelike;
    let at = i64::try_from(ttl.as_millis())
        .ok()
        .and_then(chrono::TimeDelta::try_milliseconds)
        .and_then(|d| chrono::Utc::now().checked_add_signed(d));
    match at {
        Some(at) if at.year() <= 9999 => at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        _ => NEVER.to_owned(),
    }
}

/// Whether `a` may see VM `v`'s console now: an admin, the VM's owner, or the
/// user of its active session; and the VM must run. `asked` is how the caller
/// named the VM.
fn may_show(tx: &rusqlite::Transaction<'_>, a: &User, v: &Vm, asked: &str) -> Result<()> {
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

impl Core {
    /// Reserves the lowest free port of `start..=end` (but those in `skip`,
    /// which were found in use outside vmdesk) for a console on a running VM
    /// the actor may see: an admin, the VM's owner, or the user of its
    /// active session. The bridge binds the port next; if it cannot, it
    /// releases it and asks again with the port in `skip`.
    pub fn console_reserve(
        &self,
        actor: &str,
        vm: &str,
        (start, end): (u16, u16),
        skip: &[u16],
        ttl: Duration,
    ) -> Result<ConsoleGrant> {
        let worker = self.worker_id()?.to_owned();
        let token = new_token();
        if let Some(t) = self.team_as(actor)? {
            let expires_at = expiry(ttl);
            let (port, v) = t.console_reserve(
                &self.desk,
                vm,
                (start, end),
                skip,
                &worker,
                &hash(&token),
                &expires_at,
            )?;
            return Ok(ConsoleGrant {
                port,
                token,
                vm: v.name.clone(),
                machine: self.machine_spec(&v).machine_name,
                host: v.host.clone(),
                expires_at,
            });
        }
        let grant = self.write(|tx| {
            let a = user(tx, actor)?;
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
            let (ts, expires_at) = (now(), expiry(ttl));
            tx.execute(
                "INSERT INTO consoles (port, vm_id, user_id, worker, token_hash, token_expires, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![port, v.id, a.id, worker, hash(&token), expires_at, ts],
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Vm, "console.open", &a.name, json!({"vm": v.name, "port": port}))
                    .vm(v.id),
            )?;
            Ok(ConsoleGrant {
                port,
                token: token.clone(),
                vm: v.name.clone(),
                machine: self.machine_spec(&v).machine_name,
                host: v.host.clone(),
                expires_at,
            })
        })?;
        Ok(grant)
    }

    /// A new connection to the display of a host's machine.
    pub fn console_stream(
        &self,
        host: &str,
        machine: &str,
    ) -> Result<std::os::unix::net::UnixStream> {
        self.provider(host)?
            .console_stream(machine)
            .map_err(|e| Error::ConsoleUnavailable(e.to_string()))
    }

    /// Spends a console's token: it must be the one issued for that port,
    /// unused and not expired. Then checks again what was checked at the
    /// reservation (the opener may still see the VM, and it runs); if that no
    /// longer holds, the console is closed and its port freed, and the error
    /// says why. Returns the VM the console shows.
    pub fn console_redeem(&self, port: u16, token: &str) -> Result<Vm> {
        if let Some(t) = self.team() {
            let hashed = if token.is_empty() {
                String::new()
            } else {
                hash(token)
            };
            return match t.console_redeem(&self.desk, port, &hashed)? {
                (v, None) => Ok(v),
                (_, Some(why)) if why.contains("not RUNNING") => {
                    Err(Error::ConsoleUnavailable(why))
                }
                (_, Some(why)) => Err(Error::Forbidden {
                    user: t.login().to_owned(),
                    action: why,
                }),
            };
        }
        self.write(|tx| {
            let row: Option<(i64, String, String, String, bool)> = tx
                .query_row(
                    "SELECT c.vm_id, u.name, c.token_hash, c.token_expires, c.token_used
                     FROM consoles c JOIN users u ON u.id = c.user_id WHERE c.port = ?1",
                    [port],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((vm_id, opener, token_hash, expires, used)) = row else {
                return Err(Error::ConsoleRefused(format!(
                    "no console is open on port {port}"
                )));
            };
            if token.is_empty() {
                return Err(Error::ConsoleRefused("no token was given".into()));
            }
            if hash(token) != token_hash {
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
        })?
    }

    /// Returns a console's port to the pool (nothing if it is free already).
    pub fn console_release(&self, port: u16, reason: &str) -> Result<bool> {
        if let Some(t) = self.team() {
            return t.console_release(&self.desk, port, reason, false);
        }
        self.write(|tx| {
            let vm: Option<i64> = tx
                .query_row("SELECT vm_id FROM consoles WHERE port = ?1", [port], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(vm_id) = vm else { return Ok(false) };
            tx.execute("DELETE FROM consoles WHERE port = ?1", [port])?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Vm,
                    "console.close",
                    SYSTEM,
                    json!({"port": port, "reason": reason}),
                )
                .vm(vm_id),
            )?;
            Ok(true)
        })
    }

    /// Frees the ports of consoles whose process is gone (a crash); returns them.
    pub fn console_cleanup(&self) -> Result<Vec<u16>> {
        if let Some(t) = self.team() {
            let mut freed = Vec::new();
            for c in t.consoles(&self.desk)? {
                let gone = "the process serving the console is gone";
                if !self.worker_alive(&c.worker)
                    && t.console_release(&self.desk, c.port, gone, true)?
                {
                    freed.push(c.port);
                }
            }
            return Ok(freed);
        }
        let rows: Vec<(u16, String)> = self
            .db()
            .prepare("SELECT port, worker FROM consoles ORDER BY port")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut freed = Vec::new();
        for (port, worker) in rows {
            if crate::worker::is_alive(&self.opts.data_dir, &worker) {
                continue;
            }
            let done = self.write(|tx| {
                let n = tx.execute("DELETE FROM consoles WHERE port = ?1 AND worker = ?2", params![port, worker])?;
                if n > 0 {
                    events::record(
                        tx,
                        NewEvent::info(
                            EventType::System,
                            "recovery.console",
                            SYSTEM,
                            json!({"port": port, "reason": "the process serving the console is gone"}),
                        ),
                    )?;
                }
                Ok(n > 0)
            })?;
            if done {
                freed.push(port);
            }
        }
        Ok(freed)
    }

    /// The pool's statistics and its open consoles.
    pub fn console_stats(&self, (start, end): (u16, u16)) -> Result<PortStats> {
        let conn = self.db();
        let consoles: Vec<ConsoleInfo> = if let Some(t) = self.team() {
            t.consoles(&self.desk)?
                .into_iter()
                .filter(|c| (start..=end).contains(&c.port))
                .map(|c| ConsoleInfo {
                    port: c.port,
                    vm: c.vm,
                    user: c.user,
                    since: c.since,
                })
                .collect()
        } else {
            conn.prepare(
                "SELECT c.port, v.name, u.name, c.created_at FROM consoles c
                 JOIN vms v ON v.id = c.vm_id JOIN users u ON u.id = c.user_id
                 WHERE c.port BETWEEN ?1 AND ?2 ORDER BY c.port",
            )?
            .query_map(params![start, end], |r| {
                Ok(ConsoleInfo {
                    port: r.get(0)?,
                    vm: r.get(1)?,
                    user: r.get(2)?,
                    since: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?
        };
        let total = u32::from(end.saturating_sub(start)) + 1;
        let allocated = consoles.len() as u32;
        let utilization_percent = (f64::from(allocated) * 1000.0 / f64::from(total)).round() / 10.0;
        Ok(PortStats {
            total,
            allocated,
            free: total - allocated,
            utilization_percent,
            health: if utilization_percent >= 90.0 {
                "warning"
            } else {
                "healthy"
            }
            .into(),
            consoles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_as_its_sha256() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_lifetime_too_long_to_write_saturates() {
        assert_eq!(expiry(Duration::MAX), NEVER);
        assert_eq!(expiry(Duration::from_secs(u64::MAX)), NEVER);
        assert!(expiry(Duration::from_secs(60)).as_str() < NEVER);
    }

    #[test]
    fn tokens_are_fresh_and_long() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 48);
    }
}
