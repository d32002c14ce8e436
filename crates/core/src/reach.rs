//! Reaching VMs over the network (issue 15): the seed each VM boots with
//! (whose keys it lets in, its host key), the addresses status sync learns
//! from the hosts, and what `vmdesk ssh` runs.

use std::path::PathBuf;

use serde::Serialize;
use ts_rs::TS;

use crate::access::{self, HostKey, Seed};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::model::*;
use crate::provider::{NetworkChoice, ProviderError};
use crate::{AddressChange, SeenAddress};

/// Who a seed lets in: the owner of an own VM, the user of a pool VM's
/// session (a new instance each session, earlier keys revoked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeedFor {
    /// An own VM: its owner, one instance for its life.
    Owner,
    /// A pool VM lent to `user` for session `session`.
    Session { user: String, session: i64 },
    /// A pool VM between sessions: nobody.
    Nobody,
}

/// How to reach a VM by SSH, as `vmdesk ssh` runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct SshTarget {
    /// The VM.
    pub vm: String,
    /// Its IPv4 address.
    pub ip: String,
    /// Its SSH port.
    pub port: u16,
    /// The login name (root: every seed lets the keys in as root).
    pub user: String,
    /// The user's private key.
    #[ts(type = "string")]
    pub identity: PathBuf,
    /// The `known_hosts` file that holds the VM's host key.
    #[ts(type = "string")]
    pub known_hosts: PathBuf,
    /// The name the VM's host key is kept under (`vmdesk-vm-ID`).
    pub host_key_alias: String,
    /// Whether the host key is known (fixed by the seed this desk wrote):
    /// checked strictly; otherwise accepted on first contact and checked
    /// from then on.
    pub host_key_known: bool,
    /// The VM's host, as `[user@]host[:port]`, to jump through when the
    /// VM's network is only reachable from there (a remote libvirt host).
    pub jump: Option<String>,
}

impl SshTarget {
    /// The `ssh` arguments before the command: options, then the destination.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "-i".to_owned(),
            self.identity.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            format!("HostKeyAlias={}", self.host_key_alias),
            "-o".into(),
            format!(
                "StrictHostKeyChecking={}",
                if self.host_key_known {
                    "yes"
                } else {
                    "accept-new"
                }
            ),
            "-p".into(),
            self.port.to_string(),
            "-l".into(),
            self.user.clone(),
        ];
        if let Some(j) = &self.jump {
            a.push("-J".into());
            a.push(j.clone());
        }
        a.push(self.ip.clone());
        a
    }

    /// The command line a person can paste (each argument quoted for a
    /// POSIX shell where it needs to be).
    pub fn command_line(&self) -> String {
        std::iter::once("ssh".to_owned())
            .chain(self.args().iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `s` as an IPv4 address, if it is one (and nothing else).
pub(crate) fn ipv4(s: &str) -> Option<std::net::Ipv4Addr> {
    s.parse().ok()
}

/// The name a VM's host key is kept under in `known_hosts`.
pub fn host_key_alias(vm_id: i64) -> String {
    format!("vmdesk-vm-{vm_id}")
}

/// `[user@]host[:port]` of an ssh-reached libvirt URI
/// (`qemu+ssh://user@host:port/system`), for `ssh -J`.
pub fn jump_host(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    if !scheme.ends_with("+ssh") && !scheme.ends_with("+libssh2") && !scheme.ends_with("+libssh") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    // What goes to ssh's command line is a plain user@host:port only.
    let ok = !authority.is_empty()
        && !authority.starts_with('-')
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:[]".contains(&b));
    ok.then(|| authority.to_owned())
}

impl Core {
    /// The network VMs on host `host` go on.
    pub(crate) fn network_of(&self, vm: &Vm) -> NetworkChoice {
        self.opts.network.choice(&vm.host)
    }

    /// The public key of `user`, where this desk may use it: on the
    /// embedded store every user of the desk has a pair here; on a team
    /// store only the login's own (another user's private key is on their
    /// desk, and this desk must not make one for them).
    fn key_here(&self, user: &str) -> Result<Option<String>> {
        match self.team() {
            // Another user's key is the one their desk published.
            Some(t) if t.login() != user => {
                let key = self.reading().users().ssh_key_of(user)?;
                Ok(key.filter(|k| access::public_key(k).is_ok()))
            }
            _ => Ok(Some(access::user_key(self.data_dir(), user)?.public)),
        }
    }

    /// On a team store, publishes the actor's public key (made on first
    /// use), so that a worker starting their VMs lets them in. A failure
    /// is logged, not the caller's: it costs only that SSH key.
    pub(crate) fn publish_key(&self, actor: &str) {
        let Some(team) = self.team() else { return };
        let published = access::user_key(self.data_dir(), team.login())
            .and_then(|k| self.acting(actor)?.users().ssh_key_publish(&k.public));
        if let Err(e) = published {
            tracing::warn!(error = %e.one_line(), "the SSH key was not published");
        }
    }

    /// The seed a VM's machine boots with (see [`SeedFor`]), as the bytes
    /// of its disk; the host key it fixes is remembered in the user's
    /// `known_hosts` on this desk.
    pub(crate) fn seed(&self, vm: &Vm, who: &SeedFor) -> Result<Vec<u8>> {
        let (user, generation, revoke) = match who {
            SeedFor::Owner => (vm.owner.as_deref(), 0, false),
            SeedFor::Session { user, session } => (Some(user.as_str()), *session, true),
            SeedFor::Nobody => (None, 0, vm.pool.is_some()),
        };
        let key = match user {
            Some(u) => self.key_here(u)?,
            None => None,
        };
        let mut seed = Seed::new(
            &vm.name,
            u64::try_from(generation).unwrap_or(0),
            key.clone().into_iter().collect(),
        )?;
        seed.revoke = revoke;
        let host_key = HostKey::new(&format!("vmdesk:{}", vm.name))?;
        if let (Some(u), Some(_)) = (user, &key) {
            access::remember_host_key(
                self.data_dir(),
                u,
                &host_key_alias(vm.id),
                &host_key.public,
            )?;
        }
        seed.host_key = Some(host_key);
        seed.vfat()
    }

    /// Who the seed of `vm` lets in now: its owner, or the user of its
    /// live session.
    pub(crate) fn seed_for(&self, vm: &Vm) -> SeedFor {
        if vm.owner.is_some() {
            return SeedFor::Owner;
        }
        match vm
            .session_id
            .map(|sid| self.reading().sessions().session(sid))
        {
            Some(Ok(s)) => SeedFor::Session {
                user: s.user,
                session: s.id,
            },
            _ => SeedFor::Nobody,
        }
    }

    /// The full spec of `vm`'s machine on provider `p`, with the seed that
    /// lets `who` in where the host takes seeds.
    pub(crate) fn seeded_spec(
        &self,
        p: &dyn crate::provider::Provider,
        vm: &Vm,
        who: &SeedFor,
    ) -> Result<crate::provider::MachineSpec> {
        let mut spec = self.full_spec(vm)?;
        if p.takes_seed() {
            spec.seed = Some(self.seed(vm, who)?);
        }
        Ok(spec)
    }

    /// How `actor` reaches VM `reference` by SSH: its address (asked of its
    /// host now if the row has none yet), the actor's key, the host key.
    pub fn ssh_target(&self, actor: &str, reference: &str) -> Result<SshTarget> {
        let store = self.acting(actor)?;
        let me = store.users().whoami()?;
        let vm = store.vms().vm(reference)?;
        let mine = vm.owner.as_deref() == Some(me.name.as_str())
            || vm.session_id.is_some_and(|sid| {
                store
                    .sessions()
                    .session(sid)
                    .is_ok_and(|s| s.user == me.name && s.status == SessionStatus::Active)
            });
        if !mine && me.role != Role::Admin {
            return Err(Error::Forbidden {
                user: me.name,
                action: format!(
                    "log in to VM {} (it is not yours, nor lent to you)",
                    vm.name
                ),
            });
        }
        if vm.status != VmStatus::Running {
            return Err(Error::invalid(format!(
                "VM {} is {}: it must be running to log in",
                vm.name,
                vm.status.as_str()
            )));
        }
        // A public address (Azure's) is the one reachable from a desk. It is
        // in the metadata, which the owner may set: like every address, it
        // goes to ssh's command line only as an IPv4 address.
        let public = vm.metadata["public_ip"].as_str().map(str::to_owned);
        let ip = match public.as_ref().or(vm.ip_address.as_ref()) {
            Some(ip) => ipv4(ip)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "VM {}'s address {ip:?} is not an IPv4 address: vmdesk does not give it to ssh",
                        vm.name
                    ))
                })?
                .to_string(),
            None => self.address_now(&vm)?.ok_or_else(|| {
                Error::invalid(format!(
                    "VM {} has no IP address yet: its network has not given it one (wait for it to boot, \
                     or check the host's network in `vmdesk host list`)",
                    vm.name
                ))
            })?,
        };
        let key = access::user_key(self.data_dir(), &me.name)?;
        let alias = host_key_alias(vm.id);
        let host = store.places().host(&vm.host)?;
        Ok(SshTarget {
            vm: vm.name.clone(),
            ip,
            port: vm
                .ssh_port
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| self.opts.network.ssh_port(&vm.host)),
            user: "root".into(),
            identity: key.private,
            known_hosts: self
                .data_dir()
                .join("ssh")
                .join(&me.name)
                .join("known_hosts"),
            host_key_known: access::knows_host(self.data_dir(), &me.name, &alias),
            host_key_alias: alias,
            jump: jump_host(&host.uri),
        })
    }

    /// Asks the VM's host for its address now, and records what it says.
    fn address_now(&self, vm: &Vm) -> Result<Option<String>> {
        let p = self.provider(&vm.host)?;
        let machine = self.machine_spec(vm).machine_name;
        let found = match p.address(&machine) {
            Ok(a) => a,
            Err(ProviderError::Unsupported(_)) => return Ok(None),
            Err(source) => {
                return Err(Error::Provider {
                    host: vm.host.clone(),
                    source,
                })
            }
        };
        let ip = found.as_ref().map(|a| a.ip.clone());
        if found.is_some() {
            // Recorded where this process may (status sync is an admin's);
            // the answer stands either way.
            let seen = vec![self.seen_address(vm, found)];
            let _ = self.reading().vms().vm_addresses(seen, "ssh");
        }
        Ok(ip)
    }

    fn seen_address(&self, vm: &Vm, found: Option<crate::provider::Address>) -> SeenAddress {
        // What a host says may come from the guest (its agent): anything
        // but an IPv4 address is no address.
        let found = found.and_then(|mut a| {
            if ipv4(&a.ip).is_none() {
                tracing::warn!(vm = %vm.name, address = ?a.ip, "not an IPv4 address: ignored");
                return None;
            }
            a.public_ip = a.public_ip.filter(|p| ipv4(p).is_some());
            Some(a)
        });
        match found {
            Some(a) => SeenAddress {
                vm_id: vm.id,
                ip: Some(a.ip),
                ssh_port: Some(i64::from(self.opts.network.ssh_port(&vm.host))),
                learned: Some(a.source.to_owned()),
                public_ip: a.public_ip,
            },
            None => SeenAddress {
                vm_id: vm.id,
                ip: None,
                ssh_port: None,
                learned: None,
                public_ip: None,
            },
        }
    }

    /// Learns the addresses of running VMs from their hosts and records
    /// what changed (a `vm.address` event each); a VM that is off loses
    /// its address. `all`: every running libvirt VM; otherwise only those
    /// whose address is not known yet (cheap enough to run every few
    /// seconds). `azure`: Azure VMs too (three ARM reads each: the VM, its
    /// network interface, its public IP; for full passes only).
    pub fn sync_addresses(
        &self,
        all: bool,
        azure: bool,
        source: &str,
    ) -> Result<Vec<AddressChange>> {
        let store = self.reading();
        // Status sync is an admin's (`serve` on a team store).
        if store.users().whoami()?.role != Role::Admin {
            return Ok(Vec::new());
        }
        let vms = store.vms().vm_list(true)?;
        let hosts = store.places().host_list()?;
        let asked_hosts: std::collections::HashSet<&str> = hosts
            .iter()
            .filter(|h| h.kind == HostKind::Libvirt || azure)
            .map(|h| h.name.as_str())
            .collect();
        let on_azure: std::collections::HashSet<&str> = hosts
            .iter()
            .filter(|h| h.kind == HostKind::Azure)
            .map(|h| h.name.as_str())
            .collect();
        let mut seen = Vec::new();
        // The running VMs to ask about, by host (one call per host: a
        // provider may answer from one listing).
        let mut ask: std::collections::BTreeMap<&str, Vec<&Vm>> = Default::default();
        for vm in &vms {
            if !asked_hosts.contains(vm.host.as_str()) {
                continue;
            }
            match vm.status {
                VmStatus::Running
                    if all || (vm.ip_address.is_none() && !on_azure.contains(vm.host.as_str())) =>
                {
                    ask.entry(vm.host.as_str()).or_default().push(vm);
                }
                VmStatus::Stopped | VmStatus::FailedToStart | VmStatus::Destroyed
                    if vm.ip_address.is_some() =>
                {
                    seen.push(self.seen_address(vm, None));
                }
                _ => {}
            }
        }
        for (host, vms) in ask {
            let Ok(p) = self.provider(host) else { continue };
            let machines: Vec<String> = vms
                .iter()
                .map(|vm| self.machine_spec(vm).machine_name)
                .collect();
            for (vm, found) in vms.into_iter().zip(p.addresses(&machines)) {
                match found {
                    // Not known yet is no change: a lease may come.
                    Ok(None) if vm.ip_address.is_none() => {}
                    Ok(found) => seen.push(self.seen_address(vm, found)),
                    Err(_) => {}
                }
            }
        }
        if seen.is_empty() {
            return Ok(Vec::new());
        }
        store.vms().vm_addresses(seen, source)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_jump_host_is_the_ssh_uris_authority_only() {
        assert_eq!(
            jump_host("qemu+ssh://vmdesk-remote@10.213.47.2/session").as_deref(),
            Some("vmdesk-remote@10.213.47.2")
        );
        assert_eq!(
            jump_host("qemu+ssh://h:2222/system?keyfile=/k").as_deref(),
            Some("h:2222")
        );
        assert_eq!(jump_host("qemu:///system"), None);
        assert_eq!(jump_host("qemu+tls://h/system"), None);
        assert_eq!(jump_host("qemu+ssh://-oProxyCommand=x/system"), None);
        assert_eq!(jump_host("qemu+ssh://a b@h/system"), None);
    }

    #[test]
    fn the_command_line_quotes_what_a_shell_would_split() {
        let t = SshTarget {
            vm: "web".into(),
            ip: "192.168.213.10".into(),
            port: 22,
            user: "root".into(),
            identity: "/data dir/ssh/ann/id_ed25519".into(),
            known_hosts: "/d/ssh/ann/known_hosts".into(),
            host_key_alias: host_key_alias(7),
            host_key_known: true,
            jump: Some("u@h".into()),
        };
        let line = t.command_line();
        assert!(
            line.starts_with("ssh -i '/data dir/ssh/ann/id_ed25519' "),
            "{line}"
        );
        assert!(line.contains("-o StrictHostKeyChecking=yes"), "{line}");
        assert!(line.contains("-o HostKeyAlias=vmdesk-vm-7"), "{line}");
        assert!(line.ends_with("-J u@h 192.168.213.10"), "{line}");
        let unknown = SshTarget {
            host_key_known: false,
            ..t
        };
        assert!(unknown
            .command_line()
            .contains("StrictHostKeyChecking=accept-new"));
    }
}
