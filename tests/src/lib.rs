//! Helpers of the whole-system tests: run the real `vmdesk` binary on a fresh
//! data directory and look into its SQLite file.

pub mod arm;
pub mod e2e;
pub mod remote;
pub mod source;
pub mod vnc;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The `vmdesk` binary under test: `$VMDESK_BIN`, or the workspace's debug build.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VMDESK_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug/vmdesk");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p vmdesk`, which `make test` does)",
        path.display()
    );
    path
}

/// The libvirt URI of the real QEMU host the tests use (`make test` starts its daemon).
pub fn qemu_uri() -> String {
    std::env::var("VMDESK_TEST_QEMU_URI").unwrap_or_else(|_| "qemu:///system".to_owned())
}

/// A fresh data directory and the commands to run `vmdesk` on it. Its
/// settings file is `settings.toml` in that directory (absent: the defaults),
/// never the user's.
pub struct Vmdesk {
    /// The data directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// Environment variables given to every command.
    pub env: Vec<(String, String)>,
}

impl Default for Vmdesk {
    fn default() -> Self {
        Self::new()
    }
}

impl Vmdesk {
    /// A new, empty data directory.
    pub fn new() -> Self {
        // Private, as vmdesk makes a data directory (a wider one is warned of).
        let dir = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .expect("temporary directory");
        Self {
            dir,
            env: Vec::new(),
        }
    }

    /// The settings file of this data directory.
    pub fn settings_path(&self) -> PathBuf {
        self.dir.path().join("settings.toml")
    }

    /// Writes the settings file.
    pub fn write_settings(&self, toml: &str) {
        std::fs::write(self.settings_path(), toml).expect("write the settings");
    }

    /// `vmdesk --as USER ssh VM -- ARGS`, tried until the guest's SSH server
    /// answers (it starts right after the guest's lease) or `limit`.
    pub fn ssh_until(
        &self,
        user: &str,
        vm: &str,
        args: &[&str],
        limit: std::time::Duration,
    ) -> Output {
        let mut all = vec!["--as", user, "ssh", vm, "--"];
        all.extend_from_slice(args);
        let t = std::time::Instant::now();
        loop {
            let out = self
                .command(&all)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("vmdesk ssh");
            if out.status.success() || t.elapsed() >= limit {
                return out;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// A `vmdesk` command on this data directory, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--data-dir")
            .arg(self.dir.path())
            .arg("--config")
            .arg(self.settings_path())
            .args(args);
        for v in [
            "VMDESK_DATA_DIR",
            "VMDESK_USER",
            "VMDESK_CONFIG",
            "VMDESK_STORE",
            "PGPASSWORD",
            "PGPASSFILE",
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_ID",
            "AZURE_CLIENT_SECRET",
            "AZURE_AUTHORITY_HOST",
        ] {
            c.env_remove(v);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs `vmdesk ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run vmdesk")
    }

    /// Runs `vmdesk --json ARGS`, which must succeed, and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "vmdesk {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON document")
    }

    /// Runs `vmdesk ARGS`, which must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "vmdesk {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The SQLite file, opened directly.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("vmdesk.db")).expect("open the database")
    }

    /// Every row of every table, as text: equal snapshots mean nothing changed.
    pub fn snapshot(&self) -> Vec<String> {
        let db = self.db();
        let tables: Vec<String> = db
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("list tables");
        let mut rows = Vec::new();
        for t in tables {
            let mut stmt = db
                .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
                .expect("select");
            let n = stmt.column_count();
            let table_rows: Vec<String> = stmt
                .query_map([], |r| {
                    let cells: Vec<String> = (0..n).map(|i| cell(r.get_ref(i))).collect();
                    Ok(format!("{t}: {}", cells.join(", ")))
                })
                .and_then(|rows| rows.collect())
                .expect("rows");
            rows.extend(table_rows);
        }
        rows
    }

    /// The first 8 characters of the data directory's install id: the tag in
    /// the names of its machines and images on hosts.
    pub fn install_tag(&self) -> String {
        let id: String = self
            .db()
            .query_row(
                "SELECT value FROM settings WHERE key = 'install_id'",
                [],
                |r| r.get(0),
            )
            .expect("install id");
        id.chars().take(8).collect()
    }

    /// One integer from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).expect("count")
    }
}

fn cell(v: rusqlite::Result<rusqlite::types::ValueRef<'_>>) -> String {
    use rusqlite::types::ValueRef;
    match v {
        Ok(ValueRef::Null) => "NULL".to_owned(),
        Ok(ValueRef::Integer(i)) => i.to_string(),
        Ok(ValueRef::Real(f)) => f.to_string(),
        Ok(ValueRef::Text(t)) => format!("{:?}", String::from_utf8_lossy(t)),
        Ok(ValueRef::Blob(b)) => format!("blob {b:?}"),
        Err(e) => format!("error {e}"),
    }
}

/// `virsh -c <the QEMU host> ARGS`, its stdout trimmed.
pub fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(qemu_uri())
        .args(args)
        .output()
        .expect("run virsh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes a machine (domain and disk) from the QEMU host when dropped,
/// whatever happened to the test.
pub struct Machine(pub String);

impl Drop for Machine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        virsh(&["destroy", &self.0]);
        virsh(&["undefine", &self.0]);
        for volume in [format!("{}.qcow2", self.0), format!("{}-seed.img", self.0)] {
            virsh(&["vol-delete", "--pool", "vmdesk", &volume]);
        }
    }
}

/// The least memory tiny-linux boots with, as `make run` records it
/// (scripts/run.sh, TINY_MIN_RAM_MB).
pub const TINY_RAM_MB: &str = "128";

impl Vmdesk {
    /// Adds tiny-linux to the catalog with its least memory.
    pub fn import_tiny_linux(&self) {
        let image = tiny_linux();
        self.json(&[
            "os",
            "import",
            "tiny-linux",
            image.to_str().expect("path"),
            "--min-ram-mb",
            TINY_RAM_MB,
        ]);
    }

    /// `vmdesk [--as USER] vm create NAME` of tiny-linux with its least
    /// memory, 1 GB and 1 CPU, then `extra`; its JSON.
    pub fn create_tiny(&self, user: Option<&str>, name: &str, extra: &[&str]) -> Value {
        let mut args = Vec::new();
        if let Some(u) = user {
            args.extend(["--as", u]);
        }
        args.extend([
            "vm",
            "create",
            name,
            "--os",
            "tiny-linux",
            "--ram-mb",
            TINY_RAM_MB,
            "--disk-gb",
            "1",
            "--cpus",
            "1",
        ]);
        args.extend_from_slice(extra);
        self.json(&args)
    }

    /// Adds the real QEMU host as `qemu` and a user `ann` with `credits`.
    pub fn qemu_and_ann(&self, credits: i64) {
        self.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
        self.json(&["user", "add", "ann", "--credits", &credits.to_string()]);
    }

    /// The price of a VM of this size (`vmdesk quote`).
    pub fn cost(&self, ram_mb: &str, disk_gb: &str, cpus: &str) -> i64 {
        self.json(&[
            "quote",
            "--ram-mb",
            ram_mb,
            "--disk-gb",
            disk_gb,
            "--cpus",
            cpus,
        ])["cost"]
            .as_i64()
            .expect("cost")
    }

    /// ann's VM `name`, whose creation the QEMU host refuses (256 vCPUs are
    /// more than its 'pc' machine takes): FAILED_TO_START, its price charged.
    /// Returns the VM, the guard that removes its machine, and the price.
    pub fn failed_creation(&self, name: &str) -> (Value, Machine, i64) {
        let cost = self.cost("64", "1", "256");
        let out = self.run(&[
            "--as",
            "ann",
            "vm",
            "create",
            name,
            "--ram-mb",
            "64",
            "--disk-gb",
            "1",
            "--cpus",
            "256",
        ]);
        assert!(!out.status.success(), "the host took 256 vCPUs");
        let vm = self.json(&["vm", "show", name]);
        let machine = Machine(vm["provider_id"].as_str().unwrap_or_default().to_owned());
        assert_eq!(vm["status"], "FAILED_TO_START");
        (vm, machine, cost)
    }

    /// `user`'s own VM `name` with no OS (it boots to its firmware), of the
    /// least size: the VM's JSON and the guard that removes its machine.
    pub fn create_blank(&self, user: &str, name: &str) -> (Value, Machine) {
        let vm = self.json(&[
            "--as",
            user,
            "vm",
            "create",
            name,
            "--ram-mb",
            "64",
            "--disk-gb",
            "1",
            "--cpus",
            "1",
        ]);
        let machine = vm["provider_id"].as_str().expect("machine name").to_owned();
        (vm, Machine(machine))
    }

    /// Adds the real QEMU host as `qemu`, credits for `admin`, a project `lab`
    /// and a tiny pool VM `name` on it. Returns the VM's machine name and the guard that removes
    /// the machine from the host.
    pub fn qemu_pool_vm(&self, name: &str) -> (String, Machine) {
        self.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
        // Enough credits that metered billing never ends the admin's sessions.
        self.json(&["credits", "grant", "admin", "1000000", "--reason", "tests"]);
        self.json(&["project", "create", "lab"]);
        let vm = self.json(&[
            "vm",
            "add",
            name,
            "--pool",
            "lab",
            "--host",
            "qemu",
            "--ram-mb",
            "64",
            "--disk-gb",
            "1",
            "--cpus",
            "1",
        ]);
        let machine = vm["provider_id"].as_str().expect("machine name").to_owned();
        (machine.clone(), Machine(machine))
    }
}

/// Kills (and reaps) a child process when dropped, whatever happened to the test.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Waits up to `limit` for the process to end by itself; its exit status.
    pub fn exits_within(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let t = std::time::Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return Some(status);
            }
            if t.elapsed() > limit {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Vmdesk {
    /// `vmdesk --json console open VM --origin TEST_ORIGIN`, running; its JSON.
    pub fn open_console(&self, vm: &str) -> (KillOnDrop, Value) {
        use std::io::BufRead;
        let mut child = self
            .command(&[
                "--json",
                "console",
                "open",
                vm,
                "--origin",
                vnc::TEST_ORIGIN,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("vmdesk console open");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut text = String::new();
        let json = loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).expect("read") > 0,
                "no console: {text}"
            );
            text.push_str(&line);
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                break v;
            }
        };
        (KillOnDrop(child), json)
    }

    /// `vmdesk sync --watch` in the background, given 1.5 s to connect and
    /// register for the hosts' events.
    pub fn watcher(&self) -> KillOnDrop {
        let w = KillOnDrop(
            self.command(&["--json", "sync", "--watch"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn the watcher"),
        );
        std::thread::sleep(std::time::Duration::from_millis(1500));
        w
    }
}

/// An X server (Xvfb) on `display` for the app, stopped on drop.
pub fn xvfb(display: &str) -> KillOnDrop {
    let x = KillOnDrop(
        Command::new("Xvfb")
            .args([display, "-screen", "0", "1280x900x24", "-nolisten", "tcp"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("Xvfb (make setup installs it)"),
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    x
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private session bus with an unlocked GNOME keyring (the Secret Service)
/// on it, for tests of what vmdesk keeps in the OS keyring. Stopped on drop.
pub struct SessionKeyring {
    /// Its home (the keyring files live under it).
    pub home: tempfile::TempDir,
    /// `DBUS_SESSION_BUS_ADDRESS` of its bus.
    pub bus: String,
    bus_pid: u32,
}

impl SessionKeyring {
    /// Starts `dbus-daemon --session` and `gnome-keyring-daemon --unlock`.
    pub fn start() -> Self {
        let home = tempfile::tempdir().expect("keyring home");
        let run = home.path().join("run");
        std::fs::create_dir(&run).expect("runtime dir");
        let out = Command::new("dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .output()
            .expect("run dbus-daemon (make test installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let bus = lines.next().expect("bus address").trim().to_owned();
        let bus_pid = lines
            .next()
            .and_then(|p| p.trim().parse().ok())
            .expect("bus pid");
        let keyring = Command::new("sh")
            .arg("-c")
            .arg("printf pw | gnome-keyring-daemon --daemonize --unlock --components=secrets")
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", &run)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus)
            .output()
            .expect("run gnome-keyring-daemon (make test installs it)");
        assert!(keyring.status.success(), "gnome-keyring-daemon failed");
        Self { home, bus, bus_pid }
    }

    /// The environment a process needs to reach this keyring.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.bus.clone()),
            ("HOME".into(), self.home.path().display().to_string()),
        ]
    }
}

impl Drop for SessionKeyring {
    fn drop(&mut self) {
        // The keyring daemon leaves when its bus goes.
        let _ = Command::new("kill").arg(self.bus_pid.to_string()).status();
    }
}

/// The tiny-linux image that `make test` builds (scripts/build-tiny-linux.sh),
/// or `VMDESK_TEST_TINY_LINUX`.
pub fn tiny_linux() -> PathBuf {
    std::env::var_os("VMDESK_TEST_TINY_LINUX")
        .map(Into::into)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/os/tiny-linux.qcow2")
        })
}

/// Whether a guest's serial console shows tiny-linux's shell prompt.
pub fn has_shell(serial: &str) -> bool {
    serial.contains("/ #")
}

/// Reads a guest's serial log until its shell prompt shows or `limit`
/// passes; returns what was read last.
pub fn serial_until_shell(log: &Path, limit: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let serial = std::fs::read_to_string(log).unwrap_or_default();
        if has_shell(&serial) || std::time::Instant::now() >= deadline {
            return serial;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// The volumes of vmdesk's storage pool whose names start with a prefix
/// (a data dir's image volumes, whole or partial), removed when dropped.
pub struct PoolVolumes(pub String);

impl PoolVolumes {
    /// Their names.
    pub fn names(&self) -> Vec<String> {
        virsh(&["vol-list", "--pool", "vmdesk"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|v| v.starts_with(&self.0))
            .map(str::to_owned)
            .collect()
    }

    /// A volume's path on the host.
    pub fn path(&self, volume: &str) -> String {
        virsh(&["vol-path", "--pool", "vmdesk", volume])
    }
}

impl Drop for PoolVolumes {
    fn drop(&mut self) {
        for v in self.names() {
            virsh(&["vol-delete", "--pool", "vmdesk", &v]);
        }
    }
}

/// The outputs of concurrent `session open` processes racing for one pool:
/// waits for every one, checks that exactly `won` succeeded and that every
/// other said, in one line, exactly `refusal`; returns the winners' outputs.
pub fn race_outcome(children: Vec<std::process::Child>, won: usize, refusal: &str) -> Vec<Output> {
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let (ok, refused): (Vec<_>, Vec<_>) = outputs.into_iter().partition(|o| o.status.success());
    assert_eq!(ok.len(), won, "successful allocations");
    for o in &refused {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert_eq!(err.trim_end(), refusal);
    }
    ok
}
