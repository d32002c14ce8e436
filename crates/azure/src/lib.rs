//! The Azure provider of vmdesk. A host is a subscription (optionally narrowed
//! to resource groups), named by a URI `azure://SUBSCRIPTION[/RG,RG...]`.
//! VMs are imported, not created: vmdesk reads their power state, starts,
//! deallocates and powers them off, and keeps within ARM's request limits.
//!
//! Calls go through the real `azure_mgmt_compute` client; its transport is
//! [`transport::Transport`], which holds the token buckets, the timeouts and
//! the retries (`Retry-After` honoured up to a cap).

pub mod credentials;
pub mod endpoint;
mod provider;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vmdesk_core::model::{Host, HostKind};
use vmdesk_core::provider::{Provider, ProviderError, ProviderFactory};
use vmdesk_core::{AzureSettings, SyncSettings};

pub use credentials::CredentialSource;
pub use provider::{power_state_of, AzureProvider};
pub use transport::{Calls, Transport};

/// Runs `f` on a thread outside any tokio runtime: the blocking provider
/// calls (which drive this crate's own runtime) and the keyring (whose D-Bus
/// client blocks) may be called from a runtime's thread, such as the app's
/// `spawn_blocking` pool, where entering another runtime panics.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// The OAuth scope of Azure Resource Manager.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// What an Azure host URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The subscription id (a GUID).
    pub subscription: String,
    /// Resource groups to keep to, lowercase (empty: the whole subscription).
    pub resource_groups: Vec<String>,
}

impl Target {
    /// Reads `azure://SUBSCRIPTION[/RG,RG...]`.
    pub fn parse(uri: &str) -> Result<Target, ProviderError> {
        let bad =
            |why: &str| ProviderError::Refused(format!("{uri:?} is not an Azure host URI: {why}"));
        let rest = uri
            .strip_prefix("azure://")
            .ok_or_else(|| bad("it must start with azure://"))?;
        let (sub, groups) = rest.split_once('/').unwrap_or((rest, ""));
        check_subscription(sub).map_err(|e| bad(&e))?;
        let resource_groups = groups
            .split(',')
            .filter(|g| !g.is_empty())
            .map(|g| check_resource_group(g).map(|()| g.to_lowercase()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        Ok(Target {
            subscription: sub.to_lowercase(),
            resource_groups,
        })
    }

    /// The URI of a subscription, optionally narrowed to resource groups.
    pub fn uri(subscription: &str, resource_groups: &[String]) -> Result<String, ProviderError> {
        let groups = resource_groups.join(",");
        let uri = if groups.is_empty() {
            format!("azure://{subscription}")
        } else {
            format!("azure://{subscription}/{groups}")
        };
        Target::parse(&uri).map(|_| uri)
    }

    /// Whether a machine (`rg/name`) is inside the target.
    pub fn holds(&self, machine: &str) -> bool {
        self.resource_groups.is_empty()
            || machine
                .split_once('/')
                .is_some_and(|(rg, _)| self.resource_groups.iter().any(|g| g == rg))
    }
}

fn check_subscription(sub: &str) -> Result<(), String> {
    let groups: Vec<&str> = sub.split('-').collect();
    let shape_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    if shape_ok {
        Ok(())
    } else {
        Err(format!(
            "the subscription id {sub:?} is not a GUID such as 00000000-0000-0000-0000-000000000000"
        ))
    }
}

fn check_resource_group(rg: &str) -> Result<(), String> {
    let ok = (1..=90).contains(&rg.chars().count())
        && !rg.ends_with('.')
        && rg
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'));
    if ok {
        Ok(())
    } else {
        Err(format!("{rg:?} is not a resource group name"))
    }
}

/// Makes Azure providers, one per host URI, sharing one runtime, one
/// credential and one transport (so the buckets of a subscription are shared
/// by every caller in the process).
pub struct AzureFactory {
    settings: AzureSettings,
    sync: SyncSettings,
    shared: Mutex<Option<Shared>>,
    cache: Mutex<HashMap<String, Arc<AzureProvider>>>,
}

#[derive(Clone)]
struct Shared {
    runtime: Arc<tokio::runtime::Runtime>,
    transport: Arc<Transport>,
    credential: Arc<dyn azure_core::auth::TokenCredential>,
    source: CredentialSource,
}

impl AzureFactory {
    /// A factory for the settings' endpoint, credentials and limits. Nothing
    /// is started until an Azure host is used.
    pub fn new(settings: AzureSettings, sync: SyncSettings) -> Self {
        Self {
            settings,
            sync,
            shared: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The calls made so far through this factory's transport.
    pub fn calls(&self) -> Calls {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.transport.calls())
            .unwrap_or_default()
    }

    /// Where the credential came from (after the first connection).
    pub fn credential_source(&self) -> Option<CredentialSource> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.source)
    }

    fn shared(&self) -> Result<Shared, ProviderError> {
        let mut guard = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmdesk-azure")
            .enable_all()
            .build()
            .map_err(|e| {
                ProviderError::Unreachable(format!("cannot start the Azure runtime: {e}"))
            })?;
        let transport = Arc::new(Transport::new(&self.settings, &self.sync)?);
        let (credential, source) = credentials::credential(&self.settings, transport.clone())?;
        let s = Shared {
            runtime: Arc::new(runtime),
            transport,
            credential,
            source,
        };
        *guard = Some(s.clone());
        Ok(s)
    }

    /// The provider of an Azure host URI.
    pub fn provider(&self, uri: &str) -> Result<Arc<AzureProvider>, ProviderError> {
        let target = Target::parse(uri)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(uri) {
            return Ok(p.clone());
        }
        let shared = self.shared()?;
        let p = Arc::new(AzureProvider::new(
            target,
            &self.settings,
            &self.sync,
            shared.runtime,
            shared.transport,
            shared.credential,
        )?);
        cache.insert(uri.to_owned(), p.clone());
        Ok(p)
    }
}

impl ProviderFactory for AzureFactory {
    fn probe(&self, kind: HostKind, uri: &str) -> Result<(), ProviderError> {
        match kind {
            HostKind::Azure => self.provider(uri)?.probe(),
            other => Err(ProviderError::Unsupported(format!(
                "hosts of kind \"{other}\""
            ))),
        }
    }

    fn connect(&self, host: &Host) -> Result<Arc<dyn Provider>, ProviderError> {
        match host.kind {
            HostKind::Azure => Ok(self.provider(&host.uri)?),
            other => Err(ProviderError::Unsupported(format!(
                "hosts of kind \"{other}\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn blocking_work_runs_from_inside_a_runtime_too() {
        let outer = tokio::runtime::Runtime::new().expect("runtime");
        let inner = tokio::runtime::Runtime::new().expect("runtime");
        let v = outer.block_on(async {
            tokio::task::spawn_blocking(move || off_runtime(|| inner.block_on(async { 7 })))
                .await
                .expect("join")
        });
        assert_eq!(v, 7);
    }

    #[test]
    fn a_subscription_uri_names_the_whole_subscription() {
        let t = Target::parse(&format!("azure://{SUB}")).expect("parse");
        assert_eq!(t.subscription, SUB);
        assert!(t.resource_groups.is_empty());
        assert!(t.holds("any-rg/vm1"));
    }

    #[test]
    fn resource_groups_narrow_the_target_case_insensitively() {
        let uri = Target::uri(SUB, &["Lab-RG".into(), "other".into()]).expect("uri");
        let t = Target::parse(&uri).expect("parse");
        assert_eq!(t.resource_groups, ["lab-rg", "other"]);
        assert!(t.holds("lab-rg/vm1"));
        assert!(!t.holds("third/vm1"));
    }

    #[test]
    fn a_subscription_that_is_not_a_guid_is_refused() {
        for bad in [
            "azure://nope",
            "azure://",
            "azure://0f8fad5b-d9cb-469f-a165-70867728950",
            "qemu:///system",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_resource_group_is_refused() {
        assert!(Target::uri(SUB, &["has space".into()]).is_err());
        assert!(Target::uri(SUB, &["ends.".into()]).is_err());
    }
}
