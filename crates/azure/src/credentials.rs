//! Where the Azure credential comes from, in this order: the environment
//! (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, and
//! `AZURE_AUTHORITY_HOST` if set), the settings' service principal with its
//! secret in the OS keyring, or the Azure CLI's login. Secrets never reach the
//! database or the settings file.

use std::sync::Arc;

use azure_core::auth::TokenCredential;
use azure_core::HttpClient;
use azure_identity::{AzureCliCredential, ClientSecretCredential};
use vmdesk_core::provider::ProviderError;
use vmdesk_core::AzureSettings;

/// The keyring service vmdesk's secrets are kept under.
pub const KEYRING_SERVICE: &str = "vmdesk";

/// Where a credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// The `AZURE_*` environment variables.
    Environment,
    /// The settings' service principal and the keyring's secret.
    Keyring,
    /// The Azure CLI's login.
    AzureCli,
}

/// The credential to use, and where it came from.
pub fn credential(
    settings: &AzureSettings,
    http: Arc<dyn HttpClient>,
) -> Result<(Arc<dyn TokenCredential>, CredentialSource), ProviderError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(tenant), Some(client), Some(secret)) = (
        env("AZURE_TENANT_ID"),
        env("AZURE_CLIENT_ID"),
        env("AZURE_CLIENT_SECRET"),
    ) {
        let authority =
            env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| settings.authority_host.clone());
        let authority = authority_url(&authority, settings.allow_insecure_endpoints)?;
        let cred = ClientSecretCredential::new(http, authority, tenant, client, secret);
        return Ok((Arc::new(cred), CredentialSource::Environment));
    }
    if !settings.tenant_id.is_empty() && !settings.client_id.is_empty() {
        let secret = secret(&settings.tenant_id, &settings.client_id)?.ok_or_else(|| {
            ProviderError::Credentials(format!(
                "the keyring holds no secret for client {} of tenant {}; run `vmdesk azure login` or set it in the app's settings",
                settings.client_id, settings.tenant_id
            ))
        })?;
        let cred = ClientSecretCredential::new(
            http,
            authority_url(&settings.authority_host, settings.allow_insecure_endpoints)?,
            settings.tenant_id.clone(),
            settings.client_id.clone(),
            secret,
        );
        return Ok((Arc::new(cred), CredentialSource::Keyring));
    }
    if !on_path("az") {
        return Err(ProviderError::Credentials(
            "no Azure credentials: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, \
             keep a service principal with `vmdesk azure login` (or in the app's settings), \
             or log in with the Azure CLI (`az login`)"
                .into(),
        ));
    }
    Ok((
        Arc::new(AzureCliCredential::new()),
        CredentialSource::AzureCli,
    ))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A client-secret credential for an explicit service principal (used to
/// check a secret before it is kept); an http authority host only if allowed.
pub fn client_secret(
    authority_host: &str,
    allow_insecure: bool,
    tenant: &str,
    client: &str,
    secret: &str,
    http: Arc<dyn HttpClient>,
) -> Result<Arc<dyn TokenCredential>, ProviderError> {
    Ok(Arc::new(ClientSecretCredential::new(
        http,
        authority_url(authority_host, allow_insecure)?,
        tenant.to_owned(),
        client.to_owned(),
        secret.to_owned(),
    )))
}

fn authority_url(host: &str, allow_insecure: bool) -> Result<url::Url, ProviderError> {
    crate::endpoint::secure_url("authority host", host, allow_insecure)
}

fn entry(tenant: &str, client: &str) -> Result<keyring::Entry, ProviderError> {
    keyring::Entry::new(KEYRING_SERVICE, &format!("azure:{tenant}:{client}")).map_err(keyring_error)
}

fn keyring_error(e: keyring::Error) -> ProviderError {
    ProviderError::Credentials(format!("the OS keyring: {e}"))
}

/// Keeps a service principal's secret in the OS keyring.
pub fn save_secret(tenant: &str, client: &str, secret: &str) -> Result<(), ProviderError> {
    entry(tenant, client)?
        .set_password(secret)
        .map_err(keyring_error)
}

/// The secret the keyring holds for a service principal, if any.
pub fn secret(tenant: &str, client: &str) -> Result<Option<String>, ProviderError> {
    crate::off_runtime(|| match entry(tenant, client)?.get_password() {
        Ok(s) => Ok(Some(s)),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(keyring_error(e)),
    })
}

/// Removes a service principal's secret from the keyring (nothing if absent).
pub fn forget_secret(tenant: &str, client: &str) -> Result<(), ProviderError> {
    crate::off_runtime(|| match entry(tenant, client)?.delete_credential() {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(keyring_error(e)),
    })
}

/// Checks a service principal (a token must be granted with it), keeps its
/// secret in the keyring and names it in the settings (which the caller saves).
pub fn login(
    settings: &mut AzureSettings,
    tenant: &str,
    client: &str,
    secret: &str,
) -> Result<(), ProviderError> {
    if tenant.trim().is_empty() || client.trim().is_empty() || secret.is_empty() {
        return Err(ProviderError::Credentials(
            "the tenant, the client id and the secret must not be empty".into(),
        ));
    }
    crate::endpoint::secure_url(
        "ARM endpoint",
        &settings.endpoint,
        settings.allow_insecure_endpoints,
    )?;
    let cred = client_secret(
        &settings.authority_host,
        settings.allow_insecure_endpoints,
        tenant,
        client,
        secret,
        azure_core::new_http_client(),
    )?;
    crate::off_runtime(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ProviderError::Unreachable(format!("cannot start a runtime: {e}")))?;
        runtime
            .block_on(cred.get_token(&[crate::ARM_SCOPE]))
            .map(|_| ())
            .map_err(|e| {
                ProviderError::Credentials(format!("no token was granted to client {client}: {e}"))
            })
    })?;
    save_secret(tenant, client, secret)?;
    settings.tenant_id = tenant.to_owned();
    settings.client_id = client.to_owned();
    Ok(())
}

/// Forgets the settings' service principal and its secret.
pub fn logout(settings: &mut AzureSettings) -> Result<(), ProviderError> {
    if !settings.tenant_id.is_empty() && !settings.client_id.is_empty() {
        forget_secret(&settings.tenant_id, &settings.client_id)?;
    }
    settings.tenant_id.clear();
    settings.client_id.clear();
    Ok(())
}
