//! Where Azure credentials may go. The bearer token is sent only to the
//! configured ARM endpoint's origin (scheme, host and port), never to a host
//! an answer names; the endpoint and the authority host must be `https`
//! unless the settings allow insecure endpoints (test servers).

use url::{Origin, Url};
use vmdesk_core::provider::ProviderError;

/// Parses an endpoint credentials are sent to: `https`, or `http` when allowed.
pub fn secure_url(what: &str, url: &str, allow_insecure: bool) -> Result<Url, ProviderError> {
    let parsed = Url::parse(url)
        .map_err(|e| ProviderError::Refused(format!("the {what} {url:?} is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if allow_insecure => Ok(parsed),
        "http" => Err(ProviderError::Refused(format!(
            "the {what} {url:?} is not https: over http the Azure credentials would travel in \
             clear (allow_insecure_endpoints = true in [azure] allows it, for test servers only)"
        ))),
        other => Err(ProviderError::Refused(format!(
            "the {what} {url:?} must be an https URL, not {other}"
        ))),
    }
}

/// Whether a URL is on this origin (same scheme, host and port).
pub fn same_origin(url: &Url, origin: &Origin) -> bool {
    url.origin() == *origin
}

/// The origin of a URL, as `scheme://host:port`, for messages.
pub fn describe(origin: &Origin) -> String {
    origin.ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_endpoint_is_accepted() {
        assert!(secure_url("ARM endpoint", "https://management.azure.com", false).is_ok());
    }

    #[test]
    fn an_http_endpoint_is_refused_without_the_flag() {
        let e = secure_url("ARM endpoint", "http://127.0.0.1:8080", false).expect_err("http");
        assert!(e.to_string().contains("allow_insecure_endpoints"), "{e}");
    }

    #[test]
    fn an_http_endpoint_is_accepted_with_the_flag() {
        assert!(secure_url("ARM endpoint", "http://127.0.0.1:8080", true).is_ok());
    }

    #[test]
    fn another_port_is_another_origin() {
        let arm = Url::parse("http://127.0.0.1:8080/").expect("url").origin();
        let op = Url::parse("http://127.0.0.1:8081/operations/1").expect("url");
        assert!(!same_origin(&op, &arm));
    }

    #[test]
    fn a_path_on_the_endpoint_is_the_same_origin() {
        let arm = Url::parse("https://management.azure.com")
            .expect("url")
            .origin();
        let op = Url::parse("https://management.azure.com:443/subscriptions/s/operations/1")
            .expect("url");
        assert!(same_origin(&op, &arm));
    }
}
