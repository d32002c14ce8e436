//! The HTTP transport under the Azure client: token buckets per ARM policy
//! (reads per VM and per subscription, lists per subscription, writes per VM),
//! a timeout on every call, and bounded retries of 408/429/5xx and I/O errors
//! that honour `Retry-After` up to a cap. A `Retry-After` beyond the cap is
//! not retried early: the call fails at once, and so does every call of the
//! same scope until that time has passed (at most [`MAX_HOLD`]). A request
//! that carries the bearer token goes only to the ARM endpoint's origin.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use azure_core::error::{Error, ErrorKind};
use azure_core::{HttpClient, Method, Request, Response, StatusCode};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use vmdesk_core::provider::ProviderError;
use vmdesk_core::{ArmLimits, AzureSettings, SyncSettings};

use crate::endpoint;

/// The longest `Retry-After` taken as asked; a longer one (up to `u64::MAX`
/// seconds) counts as this long.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);

/// Counts of what the transport did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// Requests sent (retries included).
    pub sent: u64,
    /// Requests retried.
    pub retried: u64,
    /// 429 answers received.
    pub throttled: u64,
    /// Calls failed at once because ARM had asked to wait longer than the cap.
    pub held_back: u64,
}

/// What a request costs under ARM's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cost {
    /// A read of one VM (get, instanceView).
    VmRead { sub: String, vm: String },
    /// A list page of a subscription.
    List { sub: String },
    /// A write to one VM (start, powerOff, deallocate, ...).
    VmWrite { vm: String },
    /// A read of another resource of a subscription (a network interface,
    /// a public IP address): the subscription's reads.
    Read { sub: String, resource: String },
    /// Not limited here (operation status, sizes, tokens).
    Free,
}

impl Cost {
    fn of(method: &Method, url: &url::Url) -> Cost {
        let segs: Vec<String> = url
            .path_segments()
            .map(|s| s.map(str::to_lowercase).collect())
            .unwrap_or_default();
        let seg = |i: usize| segs.get(i).map(String::as_str);
        if seg(0) != Some("subscriptions") {
            return Cost::Free;
        }
        let sub = seg(1).unwrap_or_default().to_owned();
        if matches!(
            segs.last().map(String::as_str),
            Some("virtualmachines" | "networkinterfaces" | "publicipaddresses")
        ) && *method == Method::Get
        {
            return Cost::List { sub };
        }
        if seg(2) == Some("resourcegroups") && seg(6) == Some("virtualmachines") && segs.len() >= 8
        {
            let vm = format!("{sub}/{}/{}", segs[3], segs[7]);
            return match (method, segs.len()) {
                (&Method::Get, 8) => Cost::VmRead { sub, vm },
                (&Method::Get, 9) if seg(8) == Some("instanceview") => Cost::VmRead { sub, vm },
                (&Method::Post, 9) => Cost::VmWrite { vm },
                _ => Cost::Free,
            };
        }
        if seg(2) == Some("resourcegroups")
            && seg(5) == Some("microsoft.network")
            && segs.len() == 8
            && *method == Method::Get
        {
            let resource = format!("{sub}/{}/{}/{}", segs[3], segs[6], segs[7]);
            return Cost::Read { sub, resource };
        }
        Cost::Free
    }

    /// The scope a long `Retry-After` holds back.
    fn scope(&self) -> Option<String> {
        match self {
            Cost::VmRead { vm, .. } | Cost::VmWrite { vm } => Some(vm.clone()),
            Cost::Read { resource, .. } => Some(resource.clone()),
            Cost::List { sub } => Some(format!("{sub}/list")),
            Cost::Free => None,
        }
    }
}

/// The token buckets.
struct Buckets {
    vm_reads: DefaultKeyedRateLimiter<String>,
    sub_reads: DefaultKeyedRateLimiter<String>,
    lists: DefaultKeyedRateLimiter<String>,
    vm_writes: DefaultKeyedRateLimiter<String>,
}

fn quota(per_min: u32, burst: u32) -> Quota {
    let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(nz(per_min)).allow_burst(nz(burst))
}

impl Buckets {
    fn new(l: &ArmLimits) -> Self {
        Self {
            vm_reads: RateLimiter::keyed(quota(l.vm_reads_per_min, l.vm_reads_burst)),
            sub_reads: RateLimiter::keyed(quota(
                l.subscription_reads_per_min,
                l.subscription_reads_burst,
            )),
            lists: RateLimiter::keyed(quota(l.lists_per_min, l.lists_burst)),
            vm_writes: RateLimiter::keyed(quota(l.vm_writes_per_min, l.vm_writes_burst)),
        }
    }

    async fn take(&self, cost: &Cost) {
        match cost {
            Cost::VmRead { sub, vm } => {
                self.vm_reads.until_key_ready(vm).await;
                self.sub_reads.until_key_ready(sub).await;
            }
            Cost::List { sub } => self.lists.until_key_ready(sub).await,
            Cost::VmWrite { vm } => self.vm_writes.until_key_ready(vm).await,
            Cost::Read { sub, .. } => self.sub_reads.until_key_ready(sub).await,
            Cost::Free => {}
        }
    }
}

/// The transport: a reqwest client under buckets, timeouts and retries.
pub struct Transport {
    http: reqwest::Client,
    arm_origin: url::Origin,
    buckets: Buckets,
    attempts: u32,
    max_retry_after: Duration,
    held: Mutex<HashMap<String, Instant>>,
    sent: AtomicU64,
    retried: AtomicU64,
    throttled: AtomicU64,
    held_back: AtomicU64,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("attempts", &self.attempts)
            .field("max_retry_after", &self.max_retry_after)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport with the settings' limits, timeout and retries.
    pub fn new(azure: &AzureSettings, sync: &SyncSettings) -> Result<Self, ProviderError> {
        let arm = endpoint::secure_url(
            "ARM endpoint",
            &azure.endpoint,
            azure.allow_insecure_endpoints,
        )?;
        let timeout = Duration::from_secs(sync.timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| ProviderError::Unreachable(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            http,
            arm_origin: arm.origin(),
            buckets: Buckets::new(&azure.limits),
            attempts: sync.retry_attempts.max(1),
            max_retry_after: Duration::from_secs(azure.max_retry_after_secs),
            held: Mutex::new(HashMap::new()),
            sent: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        })
    }

    /// The origin (scheme, host, port) the bearer token may be sent to.
    pub fn arm_origin(&self) -> &url::Origin {
        &self.arm_origin
    }

    /// What the transport did so far.
    pub fn calls(&self) -> Calls {
        Calls {
            sent: self.sent.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            held_back: self.held_back.load(Ordering::Relaxed),
        }
    }

    fn held_until(&self, scope: &Option<String>) -> Option<Instant> {
        let scope = scope.as_ref()?;
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(scope).copied().filter(|t| *t > Instant::now())
    }

    fn hold(&self, scope: &Option<String>, until: Instant) {
        if let Some(scope) = scope {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.retain(|_, t| *t > Instant::now());
            held.insert(scope.clone(), until);
        }
    }
}

/// Whether an answer is worth another try.
fn retryable(status: StatusCode) -> bool {
    matches!(u16::from(status), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The wait an answer asks for (`Retry-After` in seconds, or the `-ms` forms),
/// at most [`MAX_HOLD`].
pub fn retry_after(headers: &azure_core::headers::Headers) -> Option<Duration> {
    let get = |name: &'static str| {
        headers
            .get_optional_str(&azure_core::headers::HeaderName::from_static(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    get("retry-after-ms")
        .or_else(|| get("x-ms-retry-after-ms"))
        .map(Duration::from_millis)
        .or_else(|| get("retry-after").map(Duration::from_secs))
        .map(|d| d.min(MAX_HOLD))
}

/// `now + d`, or the farthest instant a hold may reach when that overflows.
fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(MAX_HOLD))
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}

fn foreign_origin_error(url: &url::Url, arm: &url::Origin) -> Error {
    let to = endpoint::describe(&url.origin());
    let arm = endpoint::describe(arm);
    Error::with_message(ErrorKind::Other, || {
        format!("refused to send the ARM token to {to}: it goes only to the ARM endpoint {arm}")
    })
}

fn throttled_error(until: Instant) -> Error {
    let secs = until
        .saturating_duration_since(Instant::now())
        .as_secs()
        .max(1);
    Error::with_message(
        ErrorKind::HttpResponse {
            status: StatusCode::TooManyRequests,
            error_code: Some("Throttled".into()),
        },
        || format!("ARM asked to wait {secs} s more before the next call"),
    )
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        let bearer = request
            .headers()
            .get_optional_str(&azure_core::headers::AUTHORIZATION)
            .is_some();
        if bearer && !endpoint::same_origin(request.url(), &self.arm_origin) {
            return Err(foreign_origin_error(request.url(), &self.arm_origin));
        }
        let cost = Cost::of(request.method(), request.url());
        let scope = cost.scope();
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(until) = self.held_until(&scope) {
                self.held_back.fetch_add(1, Ordering::Relaxed);
                return Err(throttled_error(until));
            }
            self.buckets.take(&cost).await;
            self.sent.fetch_add(1, Ordering::Relaxed);
            let last = attempt >= self.attempts;
            let backoff = Duration::from_millis(250 << attempt.min(6)).min(self.max_retry_after);
            let wait = match self.http.execute_request(request).await {
                Ok(rsp) if !retryable(rsp.status()) => return Ok(rsp),
                Ok(rsp) => {
                    let asked = retry_after(rsp.headers());
                    if rsp.status() == StatusCode::TooManyRequests {
                        self.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    match asked {
                        Some(d) if d > self.max_retry_after => {
                            self.hold(&scope, later(d));
                            return Ok(rsp);
                        }
                        _ if last => return Ok(rsp),
                        Some(d) => d,
                        None => backoff,
                    }
                }
                Err(e) if last => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "ARM call failed; retrying");
                    backoff
                }
            };
            self.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(&format!("https://arm.test{s}?api-version=2024-07-01")).expect("url")
    }

    #[test]
    fn an_instance_view_is_a_read_of_its_vm() {
        let c = Cost::of(
            &Method::Get,
            &url("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/Vm1/instanceView"),
        );
        assert_eq!(
            c,
            Cost::VmRead {
                sub: "s".into(),
                vm: "s/rg/vm1".into()
            }
        );
    }

    #[test]
    fn a_list_all_page_is_a_list_of_its_subscription() {
        let c = Cost::of(
            &Method::Get,
            &url("/subscriptions/S/providers/Microsoft.Compute/virtualMachines"),
        );
        assert_eq!(c, Cost::List { sub: "s".into() });
    }

    #[test]
    fn a_start_is_a_write_to_its_vm() {
        let c = Cost::of(
            &Method::Post,
            &url("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm1/start"),
        );
        assert_eq!(
            c,
            Cost::VmWrite {
                vm: "s/rg/vm1".into()
            }
        );
    }

    #[test]
    fn a_network_read_is_a_read_of_its_subscription() {
        let u = url("/subscriptions/S1/resourceGroups/RG/providers/Microsoft.Network/networkInterfaces/web-nic");
        assert_eq!(
            Cost::of(&Method::Get, &u),
            Cost::Read {
                sub: "s1".into(),
                resource: "s1/rg/networkinterfaces/web-nic".into()
            }
        );
        assert_eq!(Cost::of(&Method::Delete, &u), Cost::Free);
        let all = url("/subscriptions/S1/providers/Microsoft.Network/publicIPAddresses");
        assert_eq!(
            Cost::of(&Method::Get, &all),
            Cost::List { sub: "s1".into() }
        );
    }

    #[test]
    fn an_operation_poll_is_not_limited() {
        let c = Cost::of(
            &Method::Get,
            &url(
                "/subscriptions/S/providers/Microsoft.Compute/locations/westeurope/operations/abc",
            ),
        );
        assert_eq!(c, Cost::Free);
    }

    fn transport(endpoint: &str) -> Transport {
        let azure = AzureSettings {
            endpoint: endpoint.into(),
            allow_insecure_endpoints: true,
            ..AzureSettings::default()
        };
        Transport::new(&azure, &SyncSettings::default()).expect("transport")
    }

    #[test]
    fn the_token_is_not_sent_to_another_origin() {
        let t = transport("https://management.azure.com");
        let mut req = Request::new(
            url::Url::parse("https://evil.example:8443/operations/1").expect("url"),
            Method::Get,
        );
        req.insert_header(azure_core::headers::AUTHORIZATION, "Bearer secret");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");

        let e = rt.block_on(t.execute_request(&req)).expect_err("refused");

        assert!(e.to_string().contains("https://evil.example:8443"), "{e}");
        assert_eq!(t.calls().sent, 0);
    }

    #[test]
    fn an_http_endpoint_makes_no_transport_without_the_flag() {
        let azure = AzureSettings {
            endpoint: "http://127.0.0.1:1".into(),
            ..AzureSettings::default()
        };
        assert!(Transport::new(&azure, &SyncSettings::default()).is_err());
    }

    #[test]
    fn the_largest_retry_after_is_capped() {
        let mut h = azure_core::headers::Headers::new();
        h.insert("retry-after", "18446744073709551615");
        assert_eq!(retry_after(&h), Some(MAX_HOLD));
        assert!(later(Duration::MAX) > Instant::now());
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = azure_core::headers::Headers::new();
        h.insert("retry-after", "7");
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "250");
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
    }
}
