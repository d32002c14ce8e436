//! An Azure Resource Manager test server on 127.0.0.1: the token endpoint of
//! `ClientSecretCredential` and the Compute routes vmdesk uses (list,
//! list_all with statusOnly, get, instanceView, start/powerOff/deallocate with
//! their operations, vmSizes) at api-version 2024-07-01, and the Network
//! reads of a VM's addresses (its network interface and public IP address,
//! `{name}-nic` and `{name}-ip`), with ARM's throttling as token buckets,
//! injected faults and call counters.
//!
//! Every ARM request passes, in order: the outage (if set), the next injected
//! fault, the bearer token check, the `api-version` check, the route, the
//! throttle, then the answer. Names of subscriptions, resource groups and VMs
//! match case-insensitively and are answered with the case they were added
//! with. A subscription or resource group no VM was ever added to answers 404
//! `SubscriptionNotFound` / `ResourceGroupNotFound`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The api-version the nextLinks and operation URLs carry.
const API_VERSION: &str = "2024-07-01";
/// The region of every VM.
const LOCATION: &str = "westeurope";
/// The OS disk of every VM, in GB.
const OS_DISK_GB: u32 = 30;
/// How many log lines are kept.
const LOG_LINES: usize = 2000;

/// The sizes the server knows: name, cores, memory MB, resource disk MB, data disks.
const SIZES: [(&str, u32, u32, u32, u32); 7] = [
    ("Standard_B1s", 1, 1024, 4096, 2),
    ("Standard_B1ms", 1, 2048, 4096, 2),
    ("Standard_B2s", 2, 4096, 8192, 4),
    ("Standard_B2ms", 2, 8192, 16384, 4),
    ("Standard_D2s_v5", 2, 8192, 0, 4),
    ("Standard_D4s_v5", 4, 16384, 0, 8),
    ("Standard_E2s_v5", 2, 16384, 0, 4),
];

/// The settings of a server.
#[derive(Debug, Clone)]
pub struct ArmConfig {
    /// The only tenant the token endpoint knows.
    pub tenant: String,
    /// The only client id it accepts.
    pub client_id: String,
    /// That client's secret.
    pub client_secret: String,
    /// VMs per list page.
    pub page_size: usize,
    /// How long start, power off and deallocate take.
    pub op_duration: Duration,
    /// Multiplies the rates and bursts of the ARM limits (`f64::INFINITY`: no limits).
    pub limits_scale: f64,
}

impl Default for ArmConfig {
    fn default() -> Self {
        Self {
            tenant: "vmdesk-test-tenant".to_owned(),
            client_id: "vmdesk-test-client".to_owned(),
            client_secret: "s3cret".to_owned(),
            page_size: 1000,
            op_duration: Duration::from_millis(300),
            limits_scale: 1.0,
        }
    }
}

/// The power state of a VM (`PowerState/...` in its instance view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// `PowerState/running`.
    Running,
    /// `PowerState/stopped` (powered off, still allocated).
    Stopped,
    /// `PowerState/deallocated`.
    Deallocated,
    /// `PowerState/starting`.
    Starting,
    /// `PowerState/stopping`.
    Stopping,
    /// `PowerState/deallocating`.
    Deallocating,
}

impl Power {
    fn word(self) -> &'static str {
        match self {
            Power::Running => "running",
            Power::Stopped => "stopped",
            Power::Deallocated => "deallocated",
            Power::Starting => "starting",
            Power::Stopping => "stopping",
            Power::Deallocating => "deallocating",
        }
    }

    fn is_transition(self) -> bool {
        matches!(
            self,
            Power::Starting | Power::Stopping | Power::Deallocating
        )
    }
}

/// A fault served instead of (or before) the next ARM answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 `TooManyRequests` with this `Retry-After`.
    Throttle {
        /// The `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// This status with an ARM error body (500 `InternalServerError`, ...).
    Status(u16),
    /// The normal answer, after this delay.
    Delay(Duration),
}

/// How many requests of each kind the server received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calls {
    /// Token requests.
    pub token: u64,
    /// List and list_all pages.
    pub list: u64,
    /// instanceView reads.
    pub instance_view: u64,
    /// VM GETs.
    pub get: u64,
    /// start, powerOff and deallocate.
    pub action: u64,
    /// Operation status polls.
    pub operation: u64,
    /// vmSizes reads.
    pub sizes: u64,
    /// Network interface and public IP address reads.
    pub network: u64,
    /// ARM requests to no known route.
    pub unknown: u64,
    /// Answers 429 by the limits (not injected).
    pub throttled: u64,
    /// Answers given by `fail_next` faults or the outage.
    pub injected: u64,
    /// ARM requests that carried an `Authorization` header (any token).
    pub authorized: u64,
}

impl Calls {
    /// Every ARM request (all but the token ones), whatever it was answered.
    pub fn arm(&self) -> u64 {
        self.list
            + self.instance_view
            + self.get
            + self.action
            + self.operation
            + self.sizes
            + self.unknown
    }
}

/// A VM as stored.
struct Vm {
    sub: String,
    rg: String,
    name: String,
    size: &'static str,
    vm_id: String,
    power: Power,
    /// A running transition: when it ends, and the state it ends in.
    pending: Option<(Instant, Power)>,
    /// Its network interface's private address.
    private_ip: String,
    /// Its public address, if it has a public IP resource.
    public_ip: Option<String>,
}

impl Vm {
    fn power_at(&self, now: Instant) -> Power {
        match self.pending {
            Some((due, target)) if now >= due => target,
            _ => self.power,
        }
    }
}

/// A long-running operation (start, powerOff, deallocate).
struct Operation {
    due: Instant,
    started: SystemTime,
    ends: SystemTime,
}

/// A token bucket of a limit.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One of ARM's limits: a policy name, a rate and a burst.
#[derive(Clone, Copy)]
struct Limit {
    policy: &'static str,
    per_min: f64,
    burst: f64,
}

const VM_READ: Limit = Limit {
    policy: "VMRead",
    per_min: 12.0,
    burst: 36.0,
};
const SUBSCRIPTION_READ: Limit = Limit {
    policy: "SubscriptionRead",
    per_min: 8000.0,
    burst: 24000.0,
};
const VM_LIST: Limit = Limit {
    policy: "VMList",
    per_min: 300.0,
    burst: 900.0,
};
const VM_ACTION: Limit = Limit {
    policy: "VMAction",
    per_min: 4.0,
    burst: 12.0,
};

/// (subscription, resource group, name), lowercased.
type Key = (String, String, String);

fn key(sub: &str, rg: &str, name: &str) -> Key {
    (sub.to_lowercase(), rg.to_lowercase(), name.to_lowercase())
}

#[derive(Default)]
struct Inner {
    tokens: HashSet<String>,
    vms: BTreeMap<Key, Vm>,
    /// Known subscriptions (lowercased) and their known resource groups.
    subs: HashMap<String, HashSet<String>>,
    operations: HashMap<String, Operation>,
    buckets: HashMap<String, Bucket>,
    faults: VecDeque<Fault>,
    outage: Option<u16>,
    /// Where operation URLs point instead of this server (another origin).
    operation_base: Option<String>,
    calls: Calls,
    reads: HashMap<Key, u64>,
    log: VecDeque<String>,
}

struct Shared {
    config: ArmConfig,
    url: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running ARM test server; dropping it stops it.
pub struct ArmServer {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ArmServer {
    /// Starts a server with the default settings.
    pub fn start() -> ArmServer {
        Self::with_config(ArmConfig::default())
    }

    /// Starts a server with these settings, on its own thread and runtime.
    pub fn with_config(config: ArmConfig) -> ArmServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("the bound address").port();
        let shared = Arc::new(Shared {
            config,
            url: format!("http://127.0.0.1:{port}"),
            inner: Mutex::new(Inner::default()),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .fallback(arm)
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the ARM server's runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                tokio::select! {
                    served = axum::serve(listener, app) => served.expect("serve ARM"),
                    _ = stopped => {}
                }
            });
            // Drops the open connections too.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        ArmServer {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the ARM endpoint and the authority host.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ArmConfig {
        &self.shared.config
    }

    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` and `AZURE_AUTHORITY_HOST` for it.
    pub fn env(&self) -> Vec<(String, String)> {
        let c = &self.shared.config;
        [
            ("AZURE_TENANT_ID", c.tenant.clone()),
            ("AZURE_CLIENT_ID", c.client_id.clone()),
            ("AZURE_CLIENT_SECRET", c.client_secret.clone()),
            ("AZURE_AUTHORITY_HOST", self.url()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Adds (or replaces) a VM of one of the known sizes; panics on another size.
    pub fn add_vm(&self, sub: &str, rg: &str, name: &str, size: &str, power: Power) {
        let size = known_size(size);
        let mut inner = self.shared.lock();
        inner.insert_vm(sub, rg, name, size, power);
    }

    /// Adds `n` VMs named `{prefix}{i}` (`i` zero-padded, from 0); returns their names.
    pub fn add_vms(
        &self,
        sub: &str,
        rg: &str,
        prefix: &str,
        n: usize,
        size: &str,
        power: Power,
    ) -> Vec<String> {
        let size = known_size(size);
        let width = n.saturating_sub(1).to_string().len();
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i:0width$}")).collect();
        let mut inner = self.shared.lock();
        for name in &names {
            inner.insert_vm(sub, rg, name, size, power);
        }
        names
    }

    /// Makes a subscription known without VMs (its lists answer empty, not 404).
    pub fn add_subscription(&self, sub: &str) {
        self.shared
            .lock()
            .subs
            .entry(sub.to_lowercase())
            .or_default();
    }

    /// Sets a VM's power state at once (ending any transition); panics if there is no such VM.
    pub fn set_power(&self, sub: &str, rg: &str, name: &str, power: Power) {
        let mut inner = self.shared.lock();
        let vm = inner
            .vms
            .get_mut(&key(sub, rg, name))
            .unwrap_or_else(|| panic!("no VM {sub}/{rg}/{name} on the ARM test server"));
        vm.power = power;
        vm.pending = None;
    }

    /// A VM's power state now, if it exists.
    pub fn power(&self, sub: &str, rg: &str, name: &str) -> Option<Power> {
        let now = Instant::now();
        let inner = self.shared.lock();
        inner
            .vms
            .get(&key(sub, rg, name))
            .map(|vm| vm.power_at(now))
    }

    /// Removes a VM; false if there was none.
    /// Gives a VM a public IP address (none: takes it away).
    pub fn set_public_ip(&self, sub: &str, rg: &str, name: &str, ip: Option<&str>) {
        if let Some(vm) = self.shared.lock().vms.get_mut(&key(sub, rg, name)) {
            vm.public_ip = ip.map(str::to_owned);
        }
    }

    /// A VM's private address.
    pub fn private_ip(&self, sub: &str, rg: &str, name: &str) -> Option<String> {
        self.shared
            .lock()
            .vms
            .get(&key(sub, rg, name))
            .map(|vm| vm.private_ip.clone())
    }

    /// Removes a VM; whether it existed.
    pub fn remove_vm(&self, sub: &str, rg: &str, name: &str) -> bool {
        self.shared.lock().vms.remove(&key(sub, rg, name)).is_some()
    }

    /// Serves `fault` to each of the next `n` ARM requests (after those queued before).
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut inner = self.shared.lock();
        inner.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Answers every ARM request with this status (ARM error body) until set to `None`.
    pub fn set_outage(&self, status: Option<u16>) {
        self.shared.lock().outage = status;
    }

    /// Names operation (`Azure-AsyncOperation`, `Location`) URLs on this base,
    /// such as another server's URL, instead of this server's (`None`: its own).
    pub fn set_operation_base(&self, base: Option<String>) {
        self.shared.lock().operation_base = base;
    }

    /// Forgets every issued token: ARM answers 401 until the client gets a new one.
    pub fn revoke_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    /// Refills every limit's bucket.
    pub fn reset_limits(&self) {
        self.shared.lock().buckets.clear();
    }

    /// The counters so far.
    pub fn calls(&self) -> Calls {
        self.shared.lock().calls.clone()
    }

    /// How many GET and instanceView requests named this VM (throttled ones too).
    pub fn reads_of(&self, sub: &str, rg: &str, name: &str) -> u64 {
        let inner = self.shared.lock();
        inner.reads.get(&key(sub, rg, name)).copied().unwrap_or(0)
    }

    /// Zeroes the counters (and the per-VM reads).
    pub fn reset_calls(&self) {
        let mut inner = self.shared.lock();
        inner.calls = Calls::default();
        inner.reads.clear();
    }

    /// The last requests as `METHOD /path?query -> status`, oldest first.
    pub fn log(&self) -> Vec<String> {
        self.shared.lock().log.iter().cloned().collect()
    }
}

impl Drop for ArmServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn known_size(size: &str) -> &'static str {
    SIZES
        .iter()
        .map(|s| s.0)
        .find(|s| *s == size)
        .unwrap_or_else(|| {
            panic!(
                "the ARM test server knows no VM size {size:?}; known: {:?}",
                SIZES.map(|s| s.0)
            )
        })
}

impl Inner {
    fn insert_vm(&mut self, sub: &str, rg: &str, name: &str, size: &'static str, power: Power) {
        let k = key(sub, rg, name);
        self.subs
            .entry(k.0.clone())
            .or_default()
            .insert(k.1.clone());
        let vm = Vm {
            sub: sub.to_owned(),
            rg: rg.to_owned(),
            name: name.to_owned(),
            size,
            vm_id: uuid::Uuid::new_v4().to_string(),
            power,
            pending: None,
            private_ip: format!("10.0.{}.{}", self.vms.len() / 250, self.vms.len() % 250 + 4),
            public_ip: None,
        };
        self.vms.insert(k, vm);
    }

    fn record(&mut self, method: &Method, uri: &Uri, status: StatusCode) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log
            .push_back(format!("{method} {uri} -> {}", status.as_u16()));
    }

    /// Takes a token from every bucket, or none and the seconds until all have one.
    fn take(
        &mut self,
        limits: &[(String, Limit)],
        scale: f64,
        now: Instant,
    ) -> (Result<(), u64>, String) {
        if !scale.is_finite() {
            return (Ok(()), String::new());
        }
        let mut wait: f64 = 0.0;
        for (k, limit) in limits {
            let (rate, burst) = (limit.per_min / 60.0 * scale, (limit.burst * scale).max(1.0));
            let b = self.buckets.entry(k.clone()).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            b.tokens = (b.tokens + rate * now.duration_since(b.at).as_secs_f64()).min(burst);
            b.at = now;
            if b.tokens < 1.0 {
                wait = wait.max((1.0 - b.tokens) / rate);
            }
        }
        let allowed = wait == 0.0;
        let mut remaining = Vec::new();
        for (k, limit) in limits {
            if let Some(b) = self.buckets.get_mut(k) {
                if allowed {
                    b.tokens -= 1.0;
                }
                remaining.push(format!(
                    "Microsoft.Compute/{};{}",
                    limit.policy,
                    b.tokens.max(0.0).floor()
                ));
            }
        }
        let result = if allowed {
            Ok(())
        } else {
            Err((wait.ceil() as u64).max(1))
        };
        (result, remaining.join(","))
    }
}

/// A VM named in a request path, as written there.
#[derive(Debug)]
struct VmRef {
    sub: String,
    rg: String,
    name: String,
}

impl VmRef {
    fn key(&self) -> Key {
        key(&self.sub, &self.rg, &self.name)
    }
}

/// A VM action: start, powerOff or deallocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Start,
    PowerOff,
    Deallocate,
}

impl Action {
    /// The state during the action and the one it ends in.
    fn states(self) -> (Power, Power) {
        match self {
            Action::Start => (Power::Starting, Power::Running),
            Action::PowerOff => (Power::Stopping, Power::Stopped),
            Action::Deallocate => (Power::Deallocating, Power::Deallocated),
        }
    }
}

/// An ARM route, parsed from the method and path.
#[derive(Debug)]
enum Route {
    ListAll {
        sub: String,
    },
    List {
        sub: String,
        rg: String,
    },
    Get(VmRef),
    InstanceView(VmRef),
    Action(VmRef, Action),
    Operation {
        sub: String,
        id: String,
    },
    Sizes {
        sub: String,
    },
    /// A VM's network interface (`{vm}-nic`) or public IP (`{vm}-ip`).
    Network {
        sub: String,
        rg: String,
        kind: NetKind,
        name: String,
    },
    /// Every network interface or public IP of a subscription.
    NetworkList {
        sub: String,
        kind: NetKind,
    },
    Unknown,
}

/// A Network resource kind that the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetKind {
    Nic,
    PublicIp,
}

/// The `*` segments of `path` if it matches `pattern` (literals case-insensitively).
fn capture<'a>(path: &[&'a str], pattern: &[&str]) -> Option<Vec<&'a str>> {
    if path.len() != pattern.len() {
        return None;
    }
    let mut out = Vec::new();
    for (seg, pat) in path.iter().zip(pattern) {
        if *pat == "*" {
            if seg.is_empty() {
                return None;
            }
            out.push(*seg);
        } else if !seg.eq_ignore_ascii_case(pat) {
            return None;
        }
    }
    Some(out)
}

const SUB_VMS: [&str; 5] = [
    "subscriptions",
    "*",
    "providers",
    "Microsoft.Compute",
    "virtualMachines",
];
const RG_VMS: [&str; 7] = [
    "subscriptions",
    "*",
    "resourceGroups",
    "*",
    "providers",
    "Microsoft.Compute",
    "virtualMachines",
];

impl Route {
    fn parse(method: &Method, path: &str) -> Route {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let vm = |c: &[&str]| VmRef {
            sub: c[0].to_owned(),
            rg: c[1].to_owned(),
            name: c[2].to_owned(),
        };
        let get = method == Method::GET;
        let one_more = |extra: &'static str| [&RG_VMS[..], &["*", extra]].concat();
        if let (true, Some(c)) = (get, capture(&segs, &SUB_VMS)) {
            return Route::ListAll {
                sub: c[0].to_owned(),
            };
        }
        if let (true, Some(c)) = (get, capture(&segs, &RG_VMS)) {
            return Route::List {
                sub: c[0].to_owned(),
                rg: c[1].to_owned(),
            };
        }
        if let (true, Some(c)) = (get, capture(&segs, &[&RG_VMS[..], &["*"]].concat())) {
            return Route::Get(vm(&c));
        }
        if let (true, Some(c)) = (get, capture(&segs, &one_more("instanceView"))) {
            return Route::InstanceView(vm(&c));
        }
        for (word, action) in [
            ("start", Action::Start),
            ("powerOff", Action::PowerOff),
            ("deallocate", Action::Deallocate),
        ] {
            if let (true, Some(c)) = (method == Method::POST, capture(&segs, &one_more(word))) {
                return Route::Action(vm(&c), action);
            }
        }
        let location = |rest: &[&'static str]| {
            let base = [
                "subscriptions",
                "*",
                "providers",
                "Microsoft.Compute",
                "locations",
                "*",
            ];
            capture(&segs, &[&base[..], rest].concat())
        };
        if let (true, Some(c)) = (get, location(&["operations", "*"])) {
            return Route::Operation {
                sub: c[0].to_owned(),
                id: c[2].to_owned(),
            };
        }
        for (word, kind) in [
            ("networkInterfaces", NetKind::Nic),
            ("publicIPAddresses", NetKind::PublicIp),
        ] {
            let pattern = [
                "subscriptions",
                "*",
                "resourceGroups",
                "*",
                "providers",
                "Microsoft.Network",
                word,
                "*",
            ];
            let all = ["subscriptions", "*", "providers", "Microsoft.Network", word];
            if let (true, Some(c)) = (get, capture(&segs, &all)) {
                return Route::NetworkList {
                    sub: c[0].to_owned(),
                    kind,
                };
            }
            if let (true, Some(c)) = (get, capture(&segs, &pattern)) {
                return Route::Network {
                    sub: c[0].to_owned(),
                    rg: c[1].to_owned(),
                    kind,
                    name: c[2].to_owned(),
                };
            }
        }
        if let (true, Some(c)) = (get, location(&["vmSizes"])) {
            return Route::Sizes {
                sub: c[0].to_owned(),
            };
        }
        Route::Unknown
    }

    /// The counter of this route.
    fn count(&self, calls: &mut Calls) {
        let counter = match self {
            Route::ListAll { .. } | Route::List { .. } => &mut calls.list,
            Route::Get(_) => &mut calls.get,
            Route::InstanceView(_) => &mut calls.instance_view,
            Route::Action(..) => &mut calls.action,
            Route::Operation { .. } => &mut calls.operation,
            Route::Sizes { .. } => &mut calls.sizes,
            Route::Network { .. } | Route::NetworkList { .. } => &mut calls.network,
            Route::Unknown => &mut calls.unknown,
        };
        *counter += 1;
    }

    /// The buckets this route takes a token from.
    fn limits(&self) -> Vec<(String, Limit)> {
        let vm_key = |v: &VmRef, l: Limit| {
            let (s, r, n) = v.key();
            (format!("{}:{s}/{r}/{n}", l.policy), l)
        };
        let sub_key = |s: &str, l: Limit| (format!("{}:{}", l.policy, s.to_lowercase()), l);
        match self {
            Route::ListAll { sub } | Route::List { sub, .. } => vec![sub_key(sub, VM_LIST)],
            Route::Get(v) | Route::InstanceView(v) => {
                vec![vm_key(v, VM_READ), sub_key(&v.sub, SUBSCRIPTION_READ)]
            }
            Route::Action(v, _) => vec![vm_key(v, VM_ACTION)],
            Route::Network { sub, .. } => vec![sub_key(sub, SUBSCRIPTION_READ)],
            Route::NetworkList { sub, .. } => vec![sub_key(sub, VM_LIST)],
            Route::Operation { .. } | Route::Sizes { .. } | Route::Unknown => Vec::new(),
        }
    }
}

/// An ARM error answer: `{"error":{"code","message"}}`.
fn arm_error(status: StatusCode, code: &str, message: impl Display) -> Response {
    let body = json!({"error": {"code": code, "message": message.to_string()}});
    (status, Json(body)).into_response()
}

/// The ARM error code of a status.
fn status_code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "AuthenticationFailed",
        403 => "AuthorizationFailed",
        404 => "NotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "InternalServerError",
    }
}

fn status_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    arm_error(
        status,
        status_code_name(status),
        format!("injected {}", status.as_u16()),
    )
}

fn too_many(retry_after: u64, message: &str) -> Response {
    let mut rsp = arm_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
    rsp.headers_mut()
        .insert("retry-after", HeaderValue::from(retry_after));
    rsp
}

fn header(rsp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        rsp.headers_mut().insert(name, v);
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// POST `/{tenant}/oauth2/v2.0/token`: the client credentials grant.
async fn token(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let c = &s.config;
    let oauth_error = |status: StatusCode, error: &str, description: &str| {
        let body = json!({"error": error, "error_description": description});
        (status, Json(body)).into_response()
    };
    let form = form.map(|f| f.0).unwrap_or_default();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let rsp = if tenant != c.tenant {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        )
    } else if field("grant_type") != "client_credentials" {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: only client_credentials is supported here.",
        )
    } else if field("client_id") != c.client_id || field("client_secret") != c.client_secret {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        )
    } else if field("scope").is_empty() {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS90014: The required field 'scope' is missing.",
        )
    } else {
        let token = format!("arm-test-{}", uuid::Uuid::new_v4().simple());
        s.lock().tokens.insert(token.clone());
        let body = json!({
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        });
        Json(body).into_response()
    };
    let mut inner = s.lock();
    inner.calls.token += 1;
    inner.record(&Method::POST, &uri, rsp.status());
    rsp
}

/// Every other request: an ARM call.
async fn arm(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let route = Route::parse(&method, uri.path());
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let (outage, fault) = {
        let mut inner = s.lock();
        route.count(&mut inner.calls);
        if headers.contains_key("authorization") {
            inner.calls.authorized += 1;
        }
        if let Route::Get(v) | Route::InstanceView(v) = &route {
            *inner.reads.entry(v.key()).or_default() += 1;
        }
        let outage = inner.outage;
        let fault = if outage.is_none() {
            inner.faults.pop_front()
        } else {
            None
        };
        if outage.is_some() || fault.is_some() {
            inner.calls.injected += 1;
        }
        (outage, fault)
    };
    let rsp = match (outage, fault) {
        (Some(status), _) => status_error(status),
        (None, Some(Fault::Throttle { retry_after_secs })) => {
            too_many(retry_after_secs, "injected throttling")
        }
        (None, Some(Fault::Status(status))) => status_error(status),
        (None, Some(Fault::Delay(d))) => {
            tokio::time::sleep(d).await;
            answer(&s, &route, &headers, &query)
        }
        (None, None) => answer(&s, &route, &headers, &query),
    };
    s.lock().record(&method, &uri, rsp.status());
    rsp
}

/// The answer past the faults: auth, api-version, throttle, then the route.
fn answer(
    s: &Shared,
    route: &Route,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let mut inner = s.lock();
    match bearer {
        None => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        }
        Some(t) if !inner.tokens.contains(&t) => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The access token is invalid or expired.",
            )
        }
        Some(_) => {}
    }
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    if matches!(route, Route::Unknown) {
        return arm_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "The ARM test server has no such route.",
        );
    }
    let now = Instant::now();
    let (taken, remaining) = inner.take(&route.limits(), s.config.limits_scale, now);
    let mut rsp = match taken {
        Err(wait) => {
            inner.calls.throttled += 1;
            too_many(
                wait,
                "The request is throttled: the operation rate exceeds ARM's limit.",
            )
        }
        Ok(()) => Answer {
            inner: &mut inner,
            config: &s.config,
            url: &s.url,
            query,
            now,
        }
        .route(route),
    };
    if !remaining.is_empty() {
        header(&mut rsp, "x-ms-ratelimit-remaining-resource", &remaining);
    }
    rsp
}

/// The answers of the routes, under the lock.
struct Answer<'a> {
    inner: &'a mut Inner,
    config: &'a ArmConfig,
    url: &'a str,
    query: &'a HashMap<String, String>,
    now: Instant,
}

impl Answer<'_> {
    fn route(self, route: &Route) -> Response {
        match route {
            Route::ListAll { sub } => self.list(sub, None),
            Route::List { sub, rg } => self.list(sub, Some(rg)),
            Route::Get(v) => self.get(v),
            Route::InstanceView(v) => self.with_vm(v, |vm, now| Json(instance_view(vm, now))),
            Route::Action(v, action) => self.action(v, *action),
            Route::Operation { sub, id } => self.operation(sub, id),
            Route::Sizes { sub } => self.sizes(sub),
            Route::Network {
                sub,
                rg,
                kind,
                name,
            } => self.network(sub, rg, *kind, name),
            Route::NetworkList { sub, kind } => self.network_list(sub, *kind),
            Route::Unknown => arm_error(StatusCode::NOT_FOUND, "NotFound", "no such route"),
        }
    }

    /// A VM's network interface or public IP address, by the names the
    /// VM's model gives them.
    fn network(self, sub: &str, rg: &str, kind: NetKind, name: &str) -> Response {
        let suffix = match kind {
            NetKind::Nic => "-nic",
            NetKind::PublicIp => "-ip",
        };
        let vm = name
            .strip_suffix(suffix)
            .and_then(|vm| self.inner.vms.get(&key(sub, rg, vm)));
        let found = match (vm, kind) {
            (Some(vm), NetKind::Nic) => Some(nic_json(vm)),
            (Some(vm), NetKind::PublicIp) => ip_json(vm),
            (None, _) => None,
        };
        match found {
            Some(v) => Json(v).into_response(),
            None => arm_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                format!("The Resource '{name}' under resource group '{rg}' was not found."),
            ),
        }
    }

    /// Every network interface or public IP of a subscription, one page.
    fn network_list(self, sub: &str, kind: NetKind) -> Response {
        if let Some(rsp) = self.unknown_scope(sub, None) {
            return rsp;
        }
        let value: Vec<Value> = self
            .inner
            .vms
            .values()
            .filter(|vm| vm.sub.eq_ignore_ascii_case(sub))
            .filter_map(|vm| match kind {
                NetKind::Nic => Some(nic_json(vm)),
                NetKind::PublicIp => ip_json(vm),
            })
            .collect();
        Json(json!({ "value": value })).into_response()
    }

    /// 404 for a subscription (and resource group) no VM was ever added to.
    fn unknown_scope(&self, sub: &str, rg: Option<&str>) -> Option<Response> {
        let Some(groups) = self.inner.subs.get(&sub.to_lowercase()) else {
            return Some(arm_error(
                StatusCode::NOT_FOUND,
                "SubscriptionNotFound",
                format!("The subscription '{sub}' could not be found."),
            ));
        };
        match rg {
            Some(rg) if !groups.contains(&rg.to_lowercase()) => Some(arm_error(
                StatusCode::NOT_FOUND,
                "ResourceGroupNotFound",
                format!("Resource group '{rg}' could not be found."),
            )),
            _ => None,
        }
    }

    fn list(self, sub: &str, rg: Option<&str>) -> Response {
        if let Some(rsp) = self.unknown_scope(sub, rg) {
            return rsp;
        }
        let skip = match self.query.get("$skiptoken").map(|t| t.parse::<usize>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidSkipToken",
                    "The $skiptoken is not valid.",
                )
            }
        };
        let status_only = self.query.get("statusOnly");
        let statuses = status_only.is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let (sub_lc, rg_lc) = (sub.to_lowercase(), rg.map(str::to_lowercase));
        let page_size = self.config.page_size.max(1);
        let mut matching = self
            .inner
            .vms
            .iter()
            .filter(|(k, _)| k.0 == sub_lc && rg_lc.as_ref().is_none_or(|r| *r == k.1))
            .skip(skip);
        let value: Vec<Value> = matching
            .by_ref()
            .take(page_size)
            .map(|(_, vm)| {
                if statuses {
                    status_view(vm, self.now)
                } else {
                    model_view(vm, None)
                }
            })
            .collect();
        let mut body = json!({ "value": value });
        if matching.next().is_some() {
            let path = match rg {
                Some(rg) => format!("/subscriptions/{sub}/resourceGroups/{rg}"),
                None => format!("/subscriptions/{sub}"),
            };
            let flag = status_only
                .map(|v| format!("&statusOnly={v}"))
                .unwrap_or_default();
            body["nextLink"] = json!(format!(
                "{}{path}/providers/Microsoft.Compute/virtualMachines?api-version={API_VERSION}{flag}&$skiptoken={}",
                self.url,
                skip + page_size
            ));
        }
        Json(body).into_response()
    }

    fn get(self, v: &VmRef) -> Response {
        let expand = self
            .query
            .get("$expand")
            .is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
        self.with_vm(v, |vm, now| {
            Json(model_view(vm, expand.then(|| instance_view(vm, now))))
        })
    }

    /// Answers with `f` of the VM, or 404.
    fn with_vm<R: IntoResponse>(self, v: &VmRef, f: impl FnOnce(&Vm, Instant) -> R) -> Response {
        if let Some(rsp) = self.unknown_scope(&v.sub, Some(&v.rg)) {
            return rsp;
        }
        match self.inner.vms.get(&v.key()) {
            Some(vm) => f(vm, self.now).into_response(),
            None => not_found(v),
        }
    }

    fn action(self, v: &VmRef, action: Action) -> Response {
        if let Some(rsp) = self.unknown_scope(&v.sub, Some(&v.rg)) {
            return rsp;
        }
        let Some(vm) = self.inner.vms.get_mut(&v.key()) else {
            return not_found(v);
        };
        let (during, target) = action.states();
        let now = self.now;
        let current = vm.power_at(now);
        // Already there (powering off a deallocated VM leaves it deallocated):
        // an operation that has succeeded; already on the way: its end.
        let due =
            if current == target || (action == Action::PowerOff && current == Power::Deallocated) {
                now
            } else if let Some((due, _)) = vm.pending.filter(|&(due, t)| t == target && due > now) {
                due
            } else {
                let due = now + self.config.op_duration;
                vm.power = during;
                vm.pending = Some((due, target));
                due
            };
        let id = uuid::Uuid::new_v4().to_string();
        let started = SystemTime::now();
        self.inner.operations.insert(
            id.clone(),
            Operation {
                due,
                started,
                ends: started + due.saturating_duration_since(now),
            },
        );
        let base = self.inner.operation_base.as_deref().unwrap_or(self.url);
        let op = format!(
            "{base}/subscriptions/{}/providers/Microsoft.Compute/locations/{LOCATION}/operations/{id}?api-version={API_VERSION}",
            v.sub
        );
        let mut rsp = StatusCode::ACCEPTED.into_response();
        header(&mut rsp, "azure-asyncoperation", &op);
        header(&mut rsp, "location", &format!("{op}&monitor=true"));
        rsp
    }

    fn operation(self, sub: &str, id: &str) -> Response {
        let Some(op) = self.inner.operations.get(id) else {
            return arm_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                format!("The operation '{id}' of subscription '{sub}' was not found."),
            );
        };
        let done = self.now >= op.due;
        if self.query.get("monitor").is_some_and(|m| m == "true") {
            // The Location form: 202 while running, then 200 without a body.
            return if done {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            }
            .into_response();
        }
        let mut body = json!({
            "name": id,
            "status": if done { "Succeeded" } else { "InProgress" },
            "startTime": rfc3339(op.started),
        });
        if done {
            body["endTime"] = json!(rfc3339(op.ends));
        }
        Json(body).into_response()
    }

    fn sizes(self, sub: &str) -> Response {
        if let Some(rsp) = self.unknown_scope(sub, None) {
            return rsp;
        }
        let value: Vec<Value> = SIZES
            .iter()
            .map(|(name, cores, memory, resource_disk, disks)| {
                json!({
                    "name": name,
                    "numberOfCores": cores,
                    "memoryInMB": memory,
                    "osDiskSizeInMB": 1_047_552,
                    "resourceDiskSizeInMB": resource_disk,
                    "maxDataDiskCount": disks,
                })
            })
            .collect();
        Json(json!({ "value": value })).into_response()
    }
}

fn not_found(v: &VmRef) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!(
            "The Resource 'Microsoft.Compute/virtualMachines/{}' under resource group '{}' was not found.",
            v.name, v.rg
        ),
    )
}

/// A VM's network interface: one primary IP configuration with its private
/// address and, if the VM has one, its public IP resource.
fn nic_json(vm: &Vm) -> Value {
    let mut config = json!({
        "name": "ipconfig1",
        "properties": {"primary": true, "privateIPAddress": vm.private_ip,
                       "privateIPAllocationMethod": "Dynamic"},
    });
    if vm.public_ip.is_some() {
        config["properties"]["publicIPAddress"] =
            json!({"id": net_id(vm, "publicIPAddresses", "-ip")});
    }
    json!({
        "id": net_id(vm, "networkInterfaces", "-nic"),
        "name": format!("{}-nic", vm.name),
        "type": "Microsoft.Network/networkInterfaces",
        "location": LOCATION,
        "properties": {
            "ipConfigurations": [config],
            "primary": true,
            "virtualMachine": {"id": vm_id(vm)},
        },
    })
}

/// A VM's public IP resource, if it has one.
fn ip_json(vm: &Vm) -> Option<Value> {
    vm.public_ip.as_ref().map(|ip| {
        json!({
            "id": net_id(vm, "publicIPAddresses", "-ip"),
            "name": format!("{}-ip", vm.name),
            "type": "Microsoft.Network/publicIPAddresses",
            "location": LOCATION,
            "properties": {"ipAddress": ip, "publicIPAllocationMethod": "Static"},
        })
    })
}

/// The id of a VM's network resource (`networkInterfaces`, `{name}-nic`).
fn net_id(vm: &Vm, kind: &str, suffix: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/{kind}/{}{suffix}",
        vm.sub, vm.rg, vm.name
    )
}

fn vm_id(vm: &Vm) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
        vm.sub, vm.rg, vm.name
    )
}

/// The provisioning and power statuses of a VM.
fn statuses(vm: &Vm, now: Instant) -> Value {
    let power = vm.power_at(now);
    let provisioning = if power.is_transition() {
        ("ProvisioningState/updating", "Updating")
    } else {
        ("ProvisioningState/succeeded", "Provisioning succeeded")
    };
    json!([
        {"code": provisioning.0, "level": "Info", "displayStatus": provisioning.1},
        {
            "code": format!("PowerState/{}", power.word()),
            "level": "Info",
            "displayStatus": format!("VM {}", power.word()),
        },
    ])
}

/// GET `.../instanceView`.
fn instance_view(vm: &Vm, now: Instant) -> Value {
    json!({
        "computerName": vm.name,
        "osName": "ubuntu",
        "osVersion": "22.04",
        "statuses": statuses(vm, now),
    })
}

/// An item of a statusOnly list.
fn status_view(vm: &Vm, now: Instant) -> Value {
    json!({
        "id": vm_id(vm),
        "name": vm.name,
        "type": "Microsoft.Compute/virtualMachines",
        "location": LOCATION,
        "properties": {
            "vmId": vm.vm_id,
            "instanceView": {"statuses": statuses(vm, now)},
        },
    })
}

/// A VM's model (a list item or a GET), with its instance view if expanded.
fn model_view(vm: &Vm, instance_view: Option<Value>) -> Value {
    let mut v = json!({
        "id": vm_id(vm),
        "name": vm.name,
        "type": "Microsoft.Compute/virtualMachines",
        "location": LOCATION,
        "properties": {
            "vmId": vm.vm_id,
            "hardwareProfile": {"vmSize": vm.size},
            "storageProfile": {
                "osDisk": {
                    "osType": "Linux",
                    "name": format!("{}_OsDisk_1_{}", vm.name, vm.vm_id.replace('-', "")),
                    "createOption": "FromImage",
                    "diskSizeGB": OS_DISK_GB,
                },
            },
            "networkProfile": {
                "networkInterfaces": [{"id": net_id(vm, "networkInterfaces", "-nic"), "properties": {"primary": true}}],
            },
            "provisioningState": "Succeeded",
        },
    });
    if let Some(view) = instance_view {
        v["properties"]["instanceView"] = view;
    }
    v
}
