//! The second libvirt host of the remote-host tests: a session libvirtd of
//! the user `vmdesk-remote` in the network namespace `vmdesk-remote`, reached
//! over SSH (`scripts/remote-host.sh`, which `make test` runs).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{qemu_uri, tiny_linux, Vmdesk};

/// The remote host, started if it is not running.
pub struct Remote {
    /// Its libvirt URI (`qemu+ssh://vmdesk-remote@ADDR/session`).
    pub uri: String,
    /// Its network namespace.
    pub ns: String,
}

/// Runs `scripts/remote-host.sh ACTION`; its stdout.
pub fn script(action: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/remote-host.sh");
    let out = Command::new("bash")
        .arg(path)
        .arg(action)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/remote-host.sh");
    assert!(out.status.success(), "remote-host.sh {action} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Remote {
    /// The remote host, started (idempotent); `None` when this process
    /// cannot make one (not root).
    pub fn get() -> Option<Self> {
        if !std::fs::metadata("/proc/self")
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        {
            eprintln!("skipped: the remote test host needs root (network namespaces)");
            return None;
        }
        script("start");
        let env = script("env");
        let var = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} in remote-host.sh env"))
                .to_owned()
        };
        Some(Self {
            uri: var("VMDESK_REMOTE_URI"),
            ns: var("VMDESK_REMOTE_NS"),
        })
    }

    /// A desk with the local QEMU host `local` and this host as `remote`,
    /// tiny-linux in its catalog (128 MB, as `make run` imports it) and
    /// credits for the admin.
    pub fn desk(&self) -> Vmdesk {
        let v = Vmdesk::new();
        v.json(&["host", "add", "local", "--uri", &qemu_uri()]);
        v.json(&["host", "add", "remote", "--uri", &self.uri]);
        v.json(&["credits", "grant", "admin", "100000", "--reason", "tests"]);
        let image = tiny_linux();
        v.json(&[
            "os",
            "import",
            "tiny-linux",
            image.to_str().expect("path"),
            "--min-ram-mb",
            "128",
        ]);
        v
    }

    /// `vmdesk vm create NAME` of tiny-linux with `ram_mb` and 1 CPU, on
    /// `host` (none: placed); its JSON, and a guard that removes its machine
    /// from this host.
    pub fn create(
        &self,
        v: &Vmdesk,
        name: &str,
        ram_mb: &str,
        host: Option<&str>,
    ) -> (serde_json::Value, RemoteMachine) {
        let mut args = vec![
            "vm",
            "create",
            name,
            "--os",
            "tiny-linux",
            "--ram-mb",
            ram_mb,
            "--disk-gb",
            "1",
            "--cpus",
            "1",
        ];
        if let Some(h) = host {
            args.extend(["--host", h]);
        }
        let vm = v.json(&args);
        let machine = vm["provider_id"].as_str().expect("machine name");
        let guard = self.machine(machine);
        (vm, guard)
    }

    /// `virsh -c URI ARGS` (through SSH), its stdout trimmed.
    pub fn virsh(&self, args: &[&str]) -> String {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()
            .expect("run virsh");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The TCP sockets listening in the host's namespace (`ss -Htlnp`).
    pub fn tcp_listeners(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "ss", "-Htlnp"])
            .output()
            .expect("run ss in the namespace");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A guard that removes `machine` (domain and disk) from the host.
    pub fn machine(&self, machine: &str) -> RemoteMachine {
        RemoteMachine {
            uri: self.uri.clone(),
            machine: machine.to_owned(),
        }
    }
}

/// Removes a machine from the remote host when dropped.
pub struct RemoteMachine {
    uri: String,
    machine: String,
}

impl Drop for RemoteMachine {
    fn drop(&mut self) {
        let virsh = |args: &[&str]| {
            let _ = Command::new("virsh")
                .args(["-q", "-c", &self.uri])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        virsh(&["destroy", &self.machine]);
        virsh(&["undefine", &self.machine]);
        virsh(&[
            "vol-delete",
            "--pool",
            "vmdesk",
            &format!("{}.qcow2", self.machine),
        ]);
    }
}

/// Waits until `ok` holds, at most `limit` (panics then, naming `what`);
/// how long it took.
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    t.elapsed()
}
