//! Where a new VM runs, and whether it fits there, decided before it is paid
//! for; and the host overview (`vmdesk host list`, the window's Hosts view).
//!
//! The rule: a host's free memory is the smaller of what the host reports
//! free now (`virNodeGetFreeMemory`) and its memory less the memory of the
//! VMs vmdesk runs there (running, starting, being created or stopping: a
//! guest that has not touched its memory yet still holds it). A VM fits a
//! host when its memory fits that, and vmdesk's storage there has room for
//! the VM's first writes and its image (disks are thin: a qcow2 over the
//! image, growing as the guest writes). Without a host named, among the
//! libvirt hosts that answer, the one with the most free memory that fits
//! wins (ties: by name).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use ts_rs::TS;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::model::*;
use crate::provider::{Capacity, Provider, ProviderError};

/// Room a new VM's disk needs on its host beyond its image: its first
/// writes (the overlay's metadata, a booting guest's logs).
pub const FIRST_WRITES_MB: u64 = 64;

/// Where a VM would run and the room there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct Placement {
    /// The host.
    pub host: String,
    /// Its free memory for VMs (see the module's rule), in MiB; none where
    /// the host does not tell (a test driver, Azure).
    pub free_memory_mb: Option<i64>,
    /// Free space of vmdesk's storage there, in MiB (none: not known).
    pub free_disk_mb: Option<i64>,
}

/// How vmdesk reaches the displays of a host's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "lowercase")]
#[ts(export)]
pub enum ConsolePath {
    /// A descriptor the local daemon passes (`virDomainOpenGraphicsFD`).
    Local,
    /// An SSH channel to the display's socket on the host.
    Ssh,
    /// None: a `tls` or `tcp` host's displays are sockets of that host only.
    Unavailable,
    /// Not vmdesk's (an Azure VM's console is the cloud's).
    None,
}

impl ConsolePath {
    /// The console path of a host URI.
    pub fn of(uri: &str) -> Self {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Self::Unavailable;
        };
        if scheme == "azure" {
            return Self::None;
        }
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        match scheme.split_once('+') {
            None if host.is_empty() => Self::Local,
            Some((_, "unix")) if host.is_empty() => Self::Local,
            Some((_, "ssh")) if !host.is_empty() => Self::Ssh,
            _ => Self::Unavailable,
        }
    }
}

/// One host as the Hosts view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[ts(export)]
pub struct HostView {
    /// The host.
    #[serde(flatten)]
    pub host: Host,
    /// Whether it answered now.
    pub reachable: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// How many of vmdesk's VMs it has, and how many run.
    pub vms: i64,
    /// Of those, running.
    pub running: i64,
    /// Its memory, in MiB (none: not told).
    pub total_memory_mb: Option<i64>,
    /// Free memory for VMs, in MiB (see [`Placement`]).
    pub free_memory_mb: Option<i64>,
    /// Free space of vmdesk's storage there, in MiB.
    pub free_disk_mb: Option<i64>,
    /// How its VMs' consoles are reached.
    pub console: ConsolePath,
    /// The newest event about one of its VMs: its action and when.
    pub last_event: Option<HostEvent>,
}

/// An event in [`HostView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct HostEvent {
    /// What happened (`vm.sync`, `vm.start`, …).
    pub action: String,
    /// The VM.
    pub vm: String,
    /// When.
    pub at: String,
}

fn mb(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Core {
    /// Memory held by vmdesk's VMs, by host name.
    fn committed_memory(&self) -> Result<HashMap<String, i64>> {
        Ok(self.reading().places().host_memory()?.into_iter().collect())
    }

    /// The capacity of a host (none: the host does not tell).
    fn capacity_of(&self, p: &Arc<dyn Provider>, host: &str) -> Result<Option<Capacity>> {
        match p.capacity() {
            Ok(c) => Ok(Some(c)),
            Err(ProviderError::Unsupported(_)) => Ok(None),
            Err(source) => Err(Error::Provider {
                host: host.to_owned(),
                source,
            }),
        }
    }

    fn placement_on(
        &self,
        host: &Host,
        committed: &HashMap<String, i64>,
    ) -> Result<(Placement, Option<Capacity>)> {
        let p = self.provider(&host.name)?;
        let cap = self.capacity_of(&p, &host.name)?;
        let free_memory_mb = cap.map(|c| {
            let unused = mb(c.total_memory_mb) - committed.get(&host.name).copied().unwrap_or(0);
            mb(c.free_memory_mb).min(unused).max(0)
        });
        Ok((
            Placement {
                host: host.name.clone(),
                free_memory_mb,
                free_disk_mb: cap.and_then(|c| c.free_disk_mb).map(mb),
            },
            cap,
        ))
    }

    /// Where a VM of `ram_mb` with the OS `os` would run: on `host` if named
    /// (refused with [`Error::NoRoom`] if it does not fit), else on the
    /// libvirt host with the most free memory that fits. Nothing is charged
    /// or written.
    pub fn placement(
        &self,
        actor: &str,
        ram_mb: i64,
        os: &str,
        host: Option<&str>,
    ) -> Result<Placement> {
        crate::validate::size(ram_mb, crate::validate::DISK_GB.0, crate::validate::CPUS.0)?;
        let image_mb = self.os_image(os)?.map_or(0, |i| i.bytes.div_ceil(1 << 20));
        let disk_mb = mb(FIRST_WRITES_MB + image_mb);
        let fits = |pl: &Placement| {
            pl.free_memory_mb.is_none_or(|m| m >= ram_mb)
                && pl.free_disk_mb.is_none_or(|d| d >= disk_mb)
        };
        let hosts = self.acting(actor)?.places().host_list()?;
        let committed = self.committed_memory()?;
        if let Some(name) = host {
            let h = hosts
                .iter()
                .find(|h| h.name == name)
                .ok_or_else(|| Error::UnknownHost(name.to_owned()))?;
            if h.kind != HostKind::Libvirt {
                return Ok(Placement {
                    host: h.name.clone(),
                    free_memory_mb: None,
                    free_disk_mb: None,
                });
            }
            let (pl, _) = self.placement_on(h, &committed)?;
            if !fits(&pl) {
                return Err(Error::NoRoom(no_room(
                    ram_mb,
                    disk_mb,
                    std::slice::from_ref(&pl),
                )));
            }
            return Ok(pl);
        }
        let libvirt: Vec<&Host> = hosts
            .iter()
            .filter(|h| h.kind == HostKind::Libvirt)
            .collect();
        if libvirt.is_empty() {
            return Err(Error::invalid(
                "there is no libvirt host yet: add one with 'vmdesk host add'",
            ));
        }
        let answers = each_host(&libvirt, |h| {
            self.placement_on(h, &committed).map(|(pl, _)| pl)
        });
        let mut seen = Vec::new();
        let mut last_error = None;
        for a in answers {
            match a {
                Ok(pl) => seen.push(pl),
                Err(e) => last_error = Some(e),
            }
        }
        if seen.is_empty() {
            return Err(last_error.unwrap_or_else(|| Error::invalid("no host answered")));
        }
        let best = seen
            .iter()
            .filter(|pl| fits(pl))
            .max_by(|a, b| {
                a.free_memory_mb
                    .unwrap_or(i64::MIN)
                    .cmp(&b.free_memory_mb.unwrap_or(i64::MIN))
                    .then_with(|| b.host.cmp(&a.host))
            })
            .cloned();
        best.ok_or_else(|| Error::NoRoom(no_room(ram_mb, disk_mb, &seen)))
    }

    /// Every host with its reachability, VMs, room and console path (see
    /// [`HostView`]); each host asked in parallel.
    pub fn host_overview(&self, actor: &str) -> Result<Vec<HostView>> {
        let hosts = self.acting(actor)?.places().host_list()?;
        let store = self.acting(actor)?;
        // An admin sees every VM; a user sees their own.
        let vms = match store.vms().vm_list(true) {
            Err(Error::AdminOnly(_)) => store.vms().vm_list(false)?,
            other => other?,
        };
        let committed = self.committed_memory()?;
        let events = store.events().events(1000)?;
        let views = each_host(&hosts.iter().collect::<Vec<_>>(), |h| {
            if h.kind == HostKind::Libvirt {
                self.placement_on(h, &committed)
            } else {
                self.provider(&h.name).map(|_| {
                    let pl = Placement {
                        host: h.name.clone(),
                        free_memory_mb: None,
                        free_disk_mb: None,
                    };
                    (pl, None)
                })
            }
        });
        Ok(hosts
            .into_iter()
            .zip(views)
            .map(|(host, seen)| {
                let mine: Vec<&Vm> = vms.iter().filter(|v| v.host == host.name).collect();
                let last_event = events.iter().find_map(|e| {
                    let vm = mine.iter().find(|v| Some(v.id) == e.vm_id)?;
                    Some(HostEvent {
                        action: e.action.clone(),
                        vm: vm.name.clone(),
                        at: e.created_at.clone(),
                    })
                });
                let (reachable, error, pl, cap) = match seen {
                    Ok((pl, cap)) => (true, None, Some(pl), cap),
                    Err(e) => (false, Some(e.one_line()), None, None),
                };
                HostView {
                    console: ConsolePath::of(&host.uri),
                    reachable,
                    error,
                    vms: i64::try_from(mine.len()).unwrap_or(i64::MAX),
                    running: i64::try_from(
                        mine.iter()
                            .filter(|v| v.status == VmStatus::Running)
                            .count(),
                    )
                    .unwrap_or(i64::MAX),
                    total_memory_mb: cap.map(|c| mb(c.total_memory_mb)),
                    free_memory_mb: pl.as_ref().and_then(|p| p.free_memory_mb),
                    free_disk_mb: pl.as_ref().and_then(|p| p.free_disk_mb),
                    last_event,
                    host,
                }
            })
            .collect())
    }
}

/// `ask` of each host, each on a thread of its own (one host that hangs
/// costs its own connect timeout, not the others'), in order.
fn each_host<T: Send>(hosts: &[&Host], ask: impl Fn(&Host) -> Result<T> + Sync) -> Vec<Result<T>> {
    std::thread::scope(|s| {
        let asks: Vec<_> = hosts.iter().map(|h| s.spawn(|| ask(h))).collect();
        asks.into_iter()
            .map(|a| {
                a.join()
                    .unwrap_or_else(|_| Err(Error::invalid("a host's check failed")))
            })
            .collect()
    })
}

/// The refusal when a VM fits no host: what it needs and the largest room.
fn no_room(ram_mb: i64, disk_mb: i64, seen: &[Placement]) -> String {
    let largest = seen
        .iter()
        .filter(|p| p.free_memory_mb.is_some())
        .max_by_key(|p| p.free_memory_mb);
    let room = match largest {
        Some(p) => format!(
            "; the most free memory is {} MB, on {}{}",
            p.free_memory_mb.unwrap_or(0),
            p.host,
            p.free_disk_mb
                .map(|d| format!(" (with {d} MB of free disk)"))
                .unwrap_or_default()
        ),
        None => String::new(),
    };
    format!(
        "no host has room for a VM of {ram_mb} MB of memory and {disk_mb} MB of disk to start with{room}; nothing was charged"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_path_follows_the_transport() {
        for (uri, path) in [
            ("qemu:///system", ConsolePath::Local),
            ("qemu+unix:///session", ConsolePath::Local),
            ("test:///default", ConsolePath::Local),
            ("qemu+ssh://ann@h/system", ConsolePath::Ssh),
            ("qemu+ssh://h:2222/session?keyfile=/k", ConsolePath::Ssh),
            ("qemu+tls://h/system", ConsolePath::Unavailable),
            ("qemu+tcp://h/system", ConsolePath::Unavailable),
            ("qemu://h/system", ConsolePath::Unavailable),
            ("azure://sub/rg", ConsolePath::None),
        ] {
            assert_eq!(ConsolePath::of(uri), path, "{uri}");
        }
    }

    #[test]
    fn the_refusal_names_the_largest_room() {
        let seen = [
            Placement {
                host: "a".into(),
                free_memory_mb: Some(300),
                free_disk_mb: Some(5000),
            },
            Placement {
                host: "b".into(),
                free_memory_mb: Some(900),
                free_disk_mb: None,
            },
        ];
        let s = no_room(4096, 74, &seen);
        assert!(s.contains("4096 MB of memory"), "{s}");
        assert!(s.contains("900 MB, on b"), "{s}");
        assert!(s.contains("nothing was charged"), "{s}");
    }
}
