//! One subscription's VMs through `azure_mgmt_compute`: power state from
//! `instanceView`, a full pass from one paged `list_all(statusOnly)`, and
//! start/deallocate/power off with the long-running operation polled here
//! (the SDK answers the 202 and does not poll).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::{HttpClient, Method, Request};
use azure_mgmt_compute::models::{InstanceViewStatus, VirtualMachine};
use futures::{StreamExt, TryStreamExt};
use vmdesk_core::provider::{Address, Machine, MachineSpec, PowerState, Provider, ProviderError};
use vmdesk_core::{AzureSettings, SyncSettings};

use crate::transport::{retry_after, Transport};
use crate::{Target, ARM_SCOPE};

/// The api-versions of the reads of a VM's addresses.
const COMPUTE_API: &str = "2024-07-01";
const NETWORK_API: &str = "2024-05-01";

/// The item marked primary, else the first.
fn primary_first(items: &[serde_json::Value]) -> Option<serde_json::Value> {
    items
        .iter()
        .find(|i| i["properties"]["primary"] == true)
        .or_else(|| items.first())
        .cloned()
}

/// An IPv4 address as a JSON string holds it.
fn ipv4(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .filter(|s| s.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
}

/// How long a start or stop may take before vmdesk stops waiting for it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);

/// The power state an instance view's statuses give (`PowerState/...`).
pub fn power_state_of(statuses: &[InstanceViewStatus]) -> PowerState {
    let code = statuses
        .iter()
        .filter_map(|s| s.code.as_deref())
        .find_map(|c| c.strip_prefix("PowerState/"));
    match code {
        Some("running") => PowerState::Running,
        Some("stopped") => PowerState::Stopped,
        Some("deallocated") => PowerState::Deallocated,
        Some("starting") => PowerState::Starting,
        Some("stopping" | "deallocating") => PowerState::Stopping,
        _ => PowerState::Unknown,
    }
}

/// What is asked of a VM.
#[derive(Debug, Clone, Copy)]
enum Action {
    Start,
    Deallocate,
    PowerOff,
}

/// The provider of one Azure subscription (or some of its resource groups).
pub struct AzureProvider {
    target: Target,
    client: azure_mgmt_compute::Client,
    runtime: Arc<tokio::runtime::Runtime>,
    transport: Arc<Transport>,
    credential: Arc<dyn TokenCredential>,
    batch: usize,
    poll: Duration,
}

fn arm_error(e: azure_core::Error) -> ProviderError {
    let text = e.to_string();
    match e.kind() {
        ErrorKind::HttpResponse { status, .. } => match u16::from(*status) {
            404 => ProviderError::NotFound(text),
            401 | 403 => ProviderError::Credentials(text),
            _ => ProviderError::Unreachable(format!("ARM answered {}: {text}", u16::from(*status))),
        },
        ErrorKind::Credential => ProviderError::Credentials(text),
        _ => ProviderError::Unreachable(text),
    }
}

/// A machine's id: `rg/name`, lowercase (Azure names are case-insensitive).
fn machine_of(id: &str) -> Option<String> {
    let segs: Vec<&str> = id.trim_matches('/').split('/').collect();
    let rg = segs
        .iter()
        .position(|s| s.eq_ignore_ascii_case("resourceGroups"))?;
    let name = segs.last()?;
    Some(format!("{}/{}", segs.get(rg + 1)?, name).to_lowercase())
}

fn split(machine: &str) -> Result<(&str, &str), ProviderError> {
    machine.split_once('/').ok_or_else(|| {
        ProviderError::NotFound(format!(
            "{machine:?} is not an Azure machine id (resource-group/name)"
        ))
    })
}

impl AzureProvider {
    pub(crate) fn new(
        target: Target,
        settings: &AzureSettings,
        sync: &SyncSettings,
        runtime: Arc<tokio::runtime::Runtime>,
        transport: Arc<Transport>,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Self, ProviderError> {
        let endpoint = crate::endpoint::secure_url(
            "ARM endpoint",
            &settings.endpoint,
            settings.allow_insecure_endpoints,
        )?;
        let client = azure_mgmt_compute::Client::builder(credential.clone())
            .endpoint(endpoint)
            .scopes(&[ARM_SCOPE])
            .retry(azure_core::RetryOptions::none())
            .transport(azure_core::TransportOptions::new(transport.clone()))
            .build()
            .map_err(arm_error)?;
        Ok(Self {
            target,
            client,
            runtime,
            transport,
            credential,
            batch: sync.batch_size.max(1) as usize,
            poll: Duration::from_millis(settings.poll_interval_ms),
        })
    }

    /// The subscription and resource groups it covers.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Checks the credential and that the subscription can be listed.
    pub fn probe(&self) -> Result<(), ProviderError> {
        self.block_on(|| async {
            let mut pages = self
                .client
                .virtual_machines_client()
                .list_all(&self.target.subscription)
                .status_only("true")
                .into_stream();
            pages.try_next().await.map_err(arm_error).map(|_| ())
        })
    }

    async fn instance_view(&self, machine: &str) -> Result<PowerState, ProviderError> {
        let (rg, name) = split(machine)?;
        let view = self
            .client
            .virtual_machines_client()
            .instance_view(rg, name, &self.target.subscription)
            .await
            .map_err(arm_error)?;
        Ok(power_state_of(&view.statuses))
    }

    /// Every VM of the target from one paged `list_all` (statusOnly: with
    /// power states; otherwise with their model).
    async fn list(
        &self,
        status_only: bool,
    ) -> Result<Vec<(String, VirtualMachine)>, ProviderError> {
        let mut b = self
            .client
            .virtual_machines_client()
            .list_all(&self.target.subscription);
        if status_only {
            b = b.status_only("true");
        }
        let mut pages = b.into_stream();
        let mut vms = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(arm_error)? {
            for vm in page.value {
                let Some(machine) = vm.resource.id.as_deref().and_then(machine_of) else {
                    continue;
                };
                if self.target.holds(&machine) {
                    vms.push((machine, vm));
                }
            }
        }
        Ok(vms)
    }

    async fn statuses(&self) -> Result<HashMap<String, PowerState>, ProviderError> {
        Ok(self
            .list(true)
            .await?
            .into_iter()
            .map(|(m, vm)| {
                let statuses = vm
                    .properties
                    .and_then(|p| p.instance_view)
                    .map(|v| v.statuses)
                    .unwrap_or_default();
                (m, power_state_of(&statuses))
            })
            .collect())
    }

    async fn act(&self, machine: &str, action: Action) -> Result<(), ProviderError> {
        let (rg, name) = split(machine)?;
        let (sub, vms) = (
            &self.target.subscription,
            self.client.virtual_machines_client(),
        );
        let rsp = match action {
            Action::Start => vms
                .start(rg, name, sub)
                .send()
                .await
                .map(|r| r.into_raw_response()),
            Action::Deallocate => vms
                .deallocate(rg, name, sub)
                .send()
                .await
                .map(|r| r.into_raw_response()),
            Action::PowerOff => vms
                .power_off(rg, name, sub)
                .skip_shutdown(true)
                .send()
                .await
                .map(|r| r.into_raw_response()),
        }
        .map_err(arm_error)?;
        let header = |n: &'static str| {
            rsp.headers()
                .get_optional_str(&azure_core::headers::HeaderName::from_static(n))
                .map(str::to_owned)
        };
        let first_wait = retry_after(rsp.headers())
            .unwrap_or(self.poll)
            .min(self.poll * 5);
        match header("azure-asyncoperation").or_else(|| header("location")) {
            Some(op) => self.wait_operation(&op, first_wait).await,
            None if u16::from(rsp.status()) == 200 => Ok(()),
            None => Err(ProviderError::Refused(format!(
                "ARM accepted the {action:?} of {machine} without an operation to follow"
            ))),
        }
    }

    /// Polls an `Azure-AsyncOperation` (or `Location`) URL to its end; one
    /// outside the ARM endpoint's origin is refused (the token goes nowhere else).
    async fn wait_operation(&self, op: &str, mut wait: Duration) -> Result<(), ProviderError> {
        let url = url::Url::parse(op).map_err(|e| {
            ProviderError::Refused(format!("ARM gave a bad operation URL {op:?}: {e}"))
        })?;
        let arm = self.transport.arm_origin();
        if !crate::endpoint::same_origin(&url, arm) {
            return Err(ProviderError::Refused(format!(
                "ARM named an operation on another origin ({}); vmdesk sends its token only to the ARM endpoint {}, so it does not follow it",
                crate::endpoint::describe(&url.origin()),
                crate::endpoint::describe(arm)
            )));
        }
        let deadline = Instant::now() + OPERATION_TIMEOUT;
        loop {
            tokio::time::sleep(wait).await;
            let (code, headers, body) = self.authorized_get(url.clone()).await?;
            if code == 202 && body.is_empty() {
                // A Location monitor that is still running.
            } else if !(200..300).contains(&code) {
                return Err(ProviderError::Unreachable(format!(
                    "the operation status answered {code}"
                )));
            } else {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                match v["status"].as_str().unwrap_or(if code == 200 {
                    "Succeeded"
                } else {
                    "InProgress"
                }) {
                    "Succeeded" => return Ok(()),
                    "Failed" | "Canceled" => {
                        return Err(ProviderError::Refused(format!(
                            "the operation ended {}: {}",
                            v["status"].as_str().unwrap_or_default(),
                            v["error"]["message"].as_str().unwrap_or("no reason given")
                        )))
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                return Err(ProviderError::Timeout(format!(
                    "the operation {op} did not end in {OPERATION_TIMEOUT:?}"
                )));
            }
            wait = retry_after(&headers)
                .unwrap_or(self.poll)
                .min(self.poll * 5);
        }
    }

    /// GETs an ARM resource by its id (`/subscriptions/…`) through the
    /// transport (its buckets, retries and the ARM origin only), as JSON.
    async fn get_resource(&self, id: &str, api: &str) -> Result<serde_json::Value, ProviderError> {
        if !id.starts_with("/subscriptions/") || id.contains(['?', '#']) || id.contains("..") {
            return Err(ProviderError::Refused(format!(
                "ARM named a resource {id:?} that is not one"
            )));
        }
        let base = self.transport.arm_origin().ascii_serialization();
        let url = url::Url::parse(&format!("{base}{id}?api-version={api}"))
            .map_err(|e| ProviderError::Refused(format!("a bad resource id {id:?}: {e}")))?;
        self.get_url(url).await
    }

    /// GETs a URL of the ARM origin with the bearer token, through the
    /// transport: the status, headers and body.
    async fn authorized_get(
        &self,
        url: url::Url,
    ) -> Result<(u16, azure_core::headers::Headers, Vec<u8>), ProviderError> {
        let token = self
            .credential
            .get_token(&[ARM_SCOPE])
            .await
            .map_err(arm_error)?;
        let mut req = Request::new(url, Method::Get);
        req.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        let rsp = self
            .transport
            .execute_request(&req)
            .await
            .map_err(arm_error)?;
        let (status, headers, body) = rsp.deconstruct();
        let body = body.collect().await.map_err(arm_error)?;
        Ok((u16::from(status), headers, body.to_vec()))
    }

    /// GETs an ARM URL (of the ARM origin) through the transport, as JSON.
    async fn get_url(&self, url: url::Url) -> Result<serde_json::Value, ProviderError> {
        let id = url.path().to_owned();
        let (code, _, body) = self.authorized_get(url).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match code {
            200..=299 => Ok(v),
            404 => Err(ProviderError::NotFound(id.to_owned())),
            _ => Err(ProviderError::Unreachable(format!(
                "ARM answered {code} for {id}: {}",
                v["error"]["message"].as_str().unwrap_or("no reason given")
            ))),
        }
    }

    /// A VM's private address (its primary network interface's primary IP
    /// configuration) and public address (the public IP resource that
    /// configuration names), read through the network API.
    async fn address_async(&self, machine: &str) -> Result<Option<Address>, ProviderError> {
        let (rg, name) = split(machine)?;
        let sub = &self.target.subscription;
        let vm = self
            .get_resource(
                &format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"),
                COMPUTE_API,
            )
            .await?;
        let nics = vm["properties"]["networkProfile"]["networkInterfaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(nic_id) = primary_first(&nics).and_then(|n| n["id"].as_str().map(str::to_owned))
        else {
            return Ok(None);
        };
        let nic = self.get_resource(&nic_id, NETWORK_API).await?;
        let configs = nic["properties"]["ipConfigurations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(config) = primary_first(&configs) else {
            return Ok(None);
        };
        let Some(ip) = ipv4(&config["properties"]["privateIPAddress"]) else {
            return Ok(None);
        };
        let public_ip = match config["properties"]["publicIPAddress"]["id"].as_str() {
            Some(id) => ipv4(&self.get_resource(id, NETWORK_API).await?["properties"]["ipAddress"]),
            None => None,
        };
        Ok(Some(Address {
            ip,
            source: "azure",
            public_ip,
        }))
    }

    /// Every item of a paged ARM list (`value`, `nextLink`), through the
    /// transport; a `nextLink` off the ARM origin is not followed.
    async fn list_resources(
        &self,
        path: &str,
        api: &str,
    ) -> Result<Vec<serde_json::Value>, ProviderError> {
        let mut items = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(id) = next.take() {
            let page = if id.starts_with('/') {
                self.get_resource(&id, api).await?
            } else {
                let url = url::Url::parse(&id).map_err(|e| {
                    ProviderError::Refused(format!("ARM gave a bad nextLink {id:?}: {e}"))
                })?;
                if !crate::endpoint::same_origin(&url, self.transport.arm_origin()) {
                    return Err(ProviderError::Refused(format!(
                        "ARM named a next page on another origin ({}); vmdesk does not follow it",
                        crate::endpoint::describe(&url.origin())
                    )));
                }
                self.get_url(url).await?
            };
            items.extend(page["value"].as_array().cloned().unwrap_or_default());
            next = page["nextLink"].as_str().map(str::to_owned);
        }
        Ok(items)
    }

    /// The addresses of many VMs from two listings of the subscription
    /// (its network interfaces and its public IP addresses), however many
    /// VMs there are.
    async fn addresses_async(
        &self,
        machines: &[String],
    ) -> Result<HashMap<String, Address>, ProviderError> {
        let sub = &self.target.subscription;
        let nics = self
            .list_resources(
                &format!("/subscriptions/{sub}/providers/Microsoft.Network/networkInterfaces"),
                NETWORK_API,
            )
            .await?;
        let ips = self
            .list_resources(
                &format!("/subscriptions/{sub}/providers/Microsoft.Network/publicIPAddresses"),
                NETWORK_API,
            )
            .await?;
        let public: HashMap<String, String> = ips
            .iter()
            .filter_map(|ip| {
                Some((
                    ip["id"].as_str()?.to_lowercase(),
                    ipv4(&ip["properties"]["ipAddress"])?,
                ))
            })
            .collect();
        let wanted: std::collections::HashSet<String> =
            machines.iter().map(|m| m.to_lowercase()).collect();
        let mut out: HashMap<String, (bool, Address)> = HashMap::new();
        for nic in &nics {
            let Some(machine) = nic["properties"]["virtualMachine"]["id"]
                .as_str()
                .and_then(machine_of)
            else {
                continue;
            };
            if !wanted.contains(&machine) {
                continue;
            }
            let configs = nic["properties"]["ipConfigurations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let Some(config) = primary_first(&configs) else {
                continue;
            };
            let Some(ip) = ipv4(&config["properties"]["privateIPAddress"]) else {
                continue;
            };
            let public_ip = config["properties"]["publicIPAddress"]["id"]
                .as_str()
                .and_then(|id| public.get(&id.to_lowercase()).cloned());
            let primary = nic["properties"]["primary"] == true;
            // The VM's primary interface wins over its others.
            if out.get(&machine).is_some_and(|(p, _)| *p) {
                continue;
            }
            out.insert(
                machine,
                (
                    primary,
                    Address {
                        ip,
                        source: "azure",
                        public_ip,
                    },
                ),
            );
        }
        Ok(out.into_iter().map(|(m, (_, a))| (m, a)).collect())
    }

    async fn inventory_async(&self) -> Result<Vec<Machine>, ProviderError> {
        let models = self.list(false).await?;
        let statuses = self.statuses().await?;
        let mut sizes: HashMap<String, HashMap<String, (i64, i64)>> = HashMap::new();
        let mut out = Vec::new();
        for (machine, vm) in models {
            let location = vm.resource.location.clone();
            if !sizes.contains_key(&location) {
                let list = self
                    .client
                    .virtual_machine_sizes_client()
                    .list(&location, &self.target.subscription)
                    .send()
                    .await
                    .map_err(arm_error)?
                    .into_body()
                    .await
                    .map_err(arm_error)?;
                let table = list
                    .value
                    .into_iter()
                    .filter_map(|s| {
                        Some((
                            s.name?.to_lowercase(),
                            (i64::from(s.memory_in_mb?), i64::from(s.number_of_cores?)),
                        ))
                    })
                    .collect();
                sizes.insert(location.clone(), table);
            }
            let props = vm.properties.unwrap_or_default();
            let size = props
                .hardware_profile
                .and_then(|h| h.vm_size)
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let (ram_mb, cpu_cores) = sizes
                .get(&location)
                .and_then(|t| t.get(&size.to_lowercase()))
                .copied()
                .unwrap_or((0, 0));
            let os_disk = props.storage_profile.and_then(|s| s.os_disk);
            let os_type = os_disk
                .as_ref()
                .and_then(|d| d.os_type.as_ref())
                .map(|t| format!("{t:?}").to_lowercase())
                .unwrap_or_else(|| "linux".into());
            out.push(Machine {
                power: statuses
                    .get(&machine)
                    .copied()
                    .unwrap_or(PowerState::Unknown),
                name: vm.resource.name.unwrap_or_else(|| machine.clone()),
                machine,
                size,
                ram_mb,
                cpu_cores,
                disk_gb: os_disk
                    .and_then(|d| d.disk_size_gb)
                    .map(i64::from)
                    .unwrap_or(30),
                os_type,
            });
        }
        Ok(out)
    }
}

impl AzureProvider {
    /// Drives a call on this crate's runtime, from any thread.
    fn block_on<T: Send, F: std::future::Future<Output = T>>(
        &self,
        make: impl FnOnce() -> F + Send,
    ) -> T {
        crate::off_runtime(|| self.runtime.block_on(make()))
    }
}

impl Provider for AzureProvider {
    fn provisions(&self) -> bool {
        false
    }

    fn ensure_disk(&self, _spec: &MachineSpec) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(
            "creating Azure VMs (create them in Azure, then `vmdesk host import`)".into(),
        ))
    }

    fn delete_disk(&self, _machine: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("deleting Azure disks".into()))
    }

    fn ensure_defined(&self, spec: &MachineSpec) -> Result<(), ProviderError> {
        self.power_state(&spec.machine_name).map(|_| ())
    }

    fn start(&self, machine: &str) -> Result<(), ProviderError> {
        self.block_on(|| self.act(machine, Action::Start))
    }

    /// Deallocates: the guest is shut down and its compute released.
    fn shutdown(&self, machine: &str) -> Result<(), ProviderError> {
        self.block_on(|| self.act(machine, Action::Deallocate))
    }

    fn force_off(&self, machine: &str) -> Result<(), ProviderError> {
        self.block_on(|| self.act(machine, Action::PowerOff))
    }

    fn power_state(&self, machine: &str) -> Result<PowerState, ProviderError> {
        self.block_on(|| self.instance_view(machine))
    }

    fn undefine(&self, _machine: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("deleting Azure VMs".into()))
    }

    fn marked(&self, _install_id: &str) -> Result<Vec<String>, ProviderError> {
        // vmdesk creates nothing in Azure, so nothing of it can be left over.
        Ok(Vec::new())
    }

    fn power_states(
        &self,
        machines: &[String],
        all: bool,
    ) -> Vec<Result<PowerState, ProviderError>> {
        self.block_on(|| async {
            if all {
                return match self.statuses().await {
                    Ok(map) => machines
                        .iter()
                        .map(|m| {
                            map.get(&m.to_lowercase()).copied().ok_or_else(|| {
                                ProviderError::NotFound(format!("the subscription has no VM {m}"))
                            })
                        })
                        .collect(),
                    Err(e) => {
                        let text = e.to_string();
                        machines
                            .iter()
                            .map(|_| Err(ProviderError::Unreachable(text.clone())))
                            .collect()
                    }
                };
            }
            futures::stream::iter(machines)
                .map(|m| self.instance_view(m))
                .buffered(self.batch)
                .collect()
                .await
        })
    }

    fn inventory(&self) -> Result<Vec<Machine>, ProviderError> {
        self.block_on(|| self.inventory_async())
    }

    fn address(&self, machine: &str) -> Result<Option<Address>, ProviderError> {
        self.block_on(|| self.address_async(machine))
    }

    fn addresses(&self, machines: &[String]) -> Vec<Result<Option<Address>, ProviderError>> {
        match self.block_on(|| self.addresses_async(machines)) {
            Ok(mut found) => machines
                .iter()
                .map(|m| Ok(found.remove(&m.to_lowercase())))
                .collect(),
            Err(e) => {
                let text = e.to_string();
                machines
                    .iter()
                    .map(|_| Err(ProviderError::Unreachable(text.clone())))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: &str) -> InstanceViewStatus {
        let mut s = InstanceViewStatus::new();
        s.code = Some(code.into());
        s
    }

    #[test]
    fn power_states_map_as_the_seed_says() {
        for (code, want) in [
            ("PowerState/running", PowerState::Running),
            ("PowerState/stopped", PowerState::Stopped),
            ("PowerState/deallocated", PowerState::Deallocated),
            ("PowerState/starting", PowerState::Starting),
            ("PowerState/stopping", PowerState::Stopping),
            ("PowerState/deallocating", PowerState::Stopping),
            ("PowerState/unheard-of", PowerState::Unknown),
        ] {
            let statuses = [status("ProvisioningState/succeeded"), status(code)];
            assert_eq!(power_state_of(&statuses), want, "{code}");
        }
    }

    #[test]
    fn no_power_status_is_unknown() {
        assert_eq!(
            power_state_of(&[status("ProvisioningState/updating")]),
            PowerState::Unknown
        );
    }

    #[test]
    fn a_resource_id_gives_the_lowercase_machine() {
        let id = "/subscriptions/S/resourceGroups/Lab-RG/providers/Microsoft.Compute/virtualMachines/Web01";
        assert_eq!(machine_of(id).as_deref(), Some("lab-rg/web01"));
    }
}
