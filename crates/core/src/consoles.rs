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
use serde::Serialize;
use sha2::{Digest, Sha256};
use ts_rs::TS;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::model::*;

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
        range: (u16, u16),
        skip: &[u16],
        ttl: Duration,
    ) -> Result<ConsoleGrant> {
        let worker = self.worker_id()?.to_owned();
        let token = new_token();
        let expires_at = expiry(ttl);
        let (port, v) = self.acting(actor)?.consoles().console_reserve(
            &self.desk,
            vm,
            range,
            skip,
            &worker,
            &hash(&token),
            &expires_at,
        )?;
        Ok(ConsoleGrant {
            port,
            token,
            vm: v.name.clone(),
            machine: self.machine_spec(&v).machine_name,
            host: v.host.clone(),
            expires_at,
        })
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

    /// What the display of a host's machine offers now (its clipboard
    /// agent comes and goes with the guest).
    pub fn display_features(
        &self,
        host: &str,
        machine: &str,
    ) -> Result<crate::provider::DisplayFeatures> {
        self.provider(host)?
            .display_features(machine)
            .map_err(|e| Error::ConsoleUnavailable(e.to_string()))
    }

    /// Spends a console's token: it must be the one issued for that port,
    /// unused and not expired. Then checks again what was checked at the
    /// reservation (the opener may still see the VM, and it runs); if that no
    /// longer holds, the console is closed and its port freed, and the error
    /// says why. Returns the VM the console shows.
    pub fn console_redeem(&self, port: u16, token: &str) -> Result<Vm> {
        let hashed = if token.is_empty() {
            String::new()
        } else {
            hash(token)
        };
        self.reading()
            .consoles()
            .console_redeem(&self.desk, port, &hashed)?
    }

    /// Returns a console's port to the pool (nothing if it is free already).
    pub fn console_release(&self, port: u16, reason: &str) -> Result<bool> {
        self.reading()
            .consoles()
            .console_release(&self.desk, port, reason, false)
    }

    /// Frees the ports of consoles whose process is gone (a crash); returns them.
    pub fn console_cleanup(&self) -> Result<Vec<u16>> {
        let store = self.reading();
        let mut freed = Vec::new();
        for c in store.consoles().consoles(&self.desk)? {
            let gone = "the process serving the console is gone";
            if !self.worker_alive(&c.worker)
                && store
                    .consoles()
                    .console_release(&self.desk, c.port, gone, true)?
            {
                freed.push(c.port);
            }
        }
        Ok(freed)
    }

    /// The pool's statistics and its open consoles.
    pub fn console_stats(&self, (start, end): (u16, u16)) -> Result<PortStats> {
        let consoles: Vec<ConsoleInfo> = self
            .reading()
            .consoles()
            .consoles(&self.desk)?
            .into_iter()
            .filter(|c| (start..=end).contains(&c.port))
            .map(|c| ConsoleInfo {
                port: c.port,
                vm: c.vm,
                user: c.user,
                since: c.since,
            })
            .collect();
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
