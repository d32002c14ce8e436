//! Checks of user input. Everything that reaches the database, a libvirt XML
//! document or a host passes through here first.

use crate::error::{Error, Result};

/// Longest name of a user, project, workspace, host, VM or VM type.
pub const NAME_MAX: usize = 63;
/// Smallest and largest memory of a VM, in MB.
pub const RAM_MB: (i64, i64) = (64, 1_048_576);
/// Smallest and largest disk of a VM, in GB.
pub const DISK_GB: (i64, i64) = (1, 65_536);
/// Smallest and largest number of virtual CPUs.
pub const CPUS: (i64, i64) = (1, 256);
/// Largest number of credits in one grant.
pub const GRANT_MAX: i64 = 1_000_000_000;
/// Longest reason of a ledger entry.
pub const REASON_MAX: usize = 500;

/// Checks a name: 1 to 63 characters, letters, digits, `.`, `_` and `-`,
/// starting with a letter or a digit.
pub fn name(kind: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(format!("the {kind} name is empty")));
    }
    if value.chars().count() > NAME_MAX {
        return Err(Error::invalid(format!(
            "the {kind} name is {} characters long; at most {NAME_MAX} are allowed",
            value.chars().count()
        )));
    }
    let ok_first = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok_first || !ok_rest {
        return Err(Error::invalid(format!(
            "the {kind} name {value:?} may hold only letters, digits, '.', '_' and '-', and must start with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks a VM's name: a [`name`] that is not all digits, since a number
/// names a VM by its id wherever a VM is looked up.
pub fn vm_name(value: &str) -> Result<()> {
    name("VM", value)?;
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(format!(
            "the VM name {value:?} is all digits, which would read as a VM id; add a letter"
        )));
    }
    Ok(())
}

fn in_range(what: &str, unit: &str, value: i64, (lo, hi): (i64, i64)) -> Result<()> {
    if value < lo || value > hi {
        return Err(Error::invalid(format!(
            "{what} must be between {lo} and {hi} {unit}, not {value}"
        )));
    }
    Ok(())
}

/// Checks the size of a VM.
pub fn size(ram_mb: i64, disk_gb: i64, cpus: i64) -> Result<()> {
    in_range("memory", "MB", ram_mb, RAM_MB)?;
    in_range("disk", "GB", disk_gb, DISK_GB)?;
    in_range("the number of CPUs", "", cpus, CPUS).map_err(|_| {
        Error::invalid(format!(
            "the number of CPUs must be between {} and {}, not {cpus}",
            CPUS.0, CPUS.1
        ))
    })
}

/// Checks the amount of a credit grant.
pub fn grant_amount(amount: i64) -> Result<()> {
    in_range("a grant", "credits", amount, (1, GRANT_MAX))
}

/// Checks the amount of an adjustment: not zero, at most a grant's size
/// either way.
pub fn adjust_amount(amount: i64) -> Result<()> {
    if amount == 0 {
        return Err(Error::invalid("an adjustment of 0 credits changes nothing"));
    }
    in_range("an adjustment", "credits", amount, (-GRANT_MAX, GRANT_MAX))
}

/// Checks the reason of a ledger entry.
pub fn reason(value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid("the reason is empty"));
    }
    if value.chars().count() > REASON_MAX {
        return Err(Error::invalid(format!(
            "the reason is longer than {REASON_MAX} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid("the reason holds control characters"));
    }
    Ok(())
}

/// The environment variable that lets hosts use libvirt's unencrypted,
/// unauthenticated `tcp` transport (`1` to allow it).
pub const ALLOW_TCP_ENV: &str = "VMDESK_ALLOW_TCP";

/// Parameters a libvirt host URI may carry; all others (`command`, `netcat`,
/// `socket`, `proxy`, `mode`, `no_verify`, ...) are refused.
pub const URI_PARAMS: &[&str] = &["keyfile", "no_tty", "pkipath"];

/// Which host URIs are acceptable beyond the safe default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UriPolicy {
    /// Whether the `tcp` transport (no encryption, no authentication) is allowed.
    pub allow_tcp: bool,
}

impl UriPolicy {
    /// The policy of this process: `tcp` only when `VMDESK_ALLOW_TCP=1`.
    pub fn from_env() -> Self {
        Self {
            allow_tcp: std::env::var(ALLOW_TCP_ENV).is_ok_and(|v| v == "1"),
        }
    }
}

/// Checks a host URI under this process's policy (see [`uri_with`]).
pub fn uri(value: &str) -> Result<()> {
    uri_with(value, UriPolicy::from_env())
}

/// Checks a host URI: an Azure subscription (`azure://SUB[/RG,...]`), or a
/// libvirt URI whose transport is local (none or `unix`), `ssh` or `tls`
/// (`tcp` only when the policy allows it), with at most the parameters
/// [`URI_PARAMS`]: nothing in it can make libvirt run a program or reach a
/// socket of the caller's choosing.
pub fn uri_with(value: &str, policy: UriPolicy) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "{value:?} is not a connection URI vmdesk accepts ({why}); use one such as qemu:///system, qemu+ssh://user@host/system or qemu+tls://host/system"
        ))
    };
    if value.is_empty() || value.len() > 1024 || value.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad(
            "it must be 1 to 1024 printable characters without spaces",
        ));
    }
    let u = url::Url::parse(value).map_err(|e| bad(&e.to_string()))?;
    if u.password().is_some() {
        return Err(bad("it must not hold a password"));
    }
    if u.fragment().is_some() {
        return Err(bad("it must not have a fragment"));
    }
    let host = u.host_str().unwrap_or("");
    if !host.is_empty() && !host_ok(host) {
        return Err(bad("its host must be a DNS name or an IP address"));
    }
    if !u.username().is_empty() && !word_ok(u.username()) {
        return Err(bad(
            "its user name may hold only letters, digits, '.', '_' and '-'",
        ));
    }
    if u.scheme() == "azure" {
        if u.query().is_some() || u.port().is_some() || !u.username().is_empty() {
            return Err(bad("an Azure URI is azure://SUBSCRIPTION[/RG,RG...]"));
        }
        return Ok(());
    }
    let (driver, transport) = match u.scheme().split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (u.scheme(), None),
    };
    if !LIBVIRT_DRIVERS.contains(&driver) {
        return Err(bad(&format!(
            "{driver:?} is not a libvirt driver; use one of {}",
            LIBVIRT_DRIVERS.join(", ")
        )));
    }
    match transport {
        None | Some("ssh" | "tls") => {}
        Some("unix") if host.is_empty() => {}
        Some("unix") => return Err(bad("the unix transport takes no host")),
        Some("tcp") if policy.allow_tcp => {}
        Some("tcp") => {
            return Err(bad(&format!(
                "the tcp transport is neither encrypted nor authenticated; set {ALLOW_TCP_ENV}=1 to allow it"
            )))
        }
        Some(t) => {
            return Err(bad(&format!(
                "the transport {t:?} is not allowed; use none (local), unix, ssh or tls"
            )))
        }
    }
    if !u
        .path()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
    {
        return Err(bad(
            "its path may hold only letters, digits, '/', '.', '_' and '-'",
        ));
    }
    let tls = transport == Some("tls") || (transport.is_none() && !host.is_empty());
    for (key, val) in u.query_pairs() {
        let (key, val): (&str, &str) = (&key, &val);
        let ok = match key {
            "keyfile" => transport == Some("ssh") && path_ok(val),
            "no_tty" => transport == Some("ssh") && matches!(val, "0" | "1"),
            "pkipath" => tls && path_ok(val),
            _ => false,
        };
        if !ok {
            return Err(bad(&format!(
                "the parameter {key:?}={val:?} is not allowed here; allowed: keyfile and no_tty (ssh), pkipath (tls)"
            )));
        }
    }
    Ok(())
}

/// The libvirt drivers a host URI may name (the part of the scheme before any `+`).
pub const LIBVIRT_DRIVERS: &[&str] = &["qemu", "test", "lxc", "xen", "ch", "bhyve", "vz"];

/// A DNS name, an IPv4 address or a bracketed IPv6 address.
fn host_ok(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    word_ok(host) && !host.contains('_')
}

/// Letters, digits, `.`, `_` and `-`, not starting with `-` (never an option).
fn word_ok(s: &str) -> bool {
    !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// An absolute path of letters, digits, `/`, `.`, `_` and `-`.
fn path_ok(s: &str) -> bool {
    s.starts_with('/')
        && !s.split('/').any(|part| part == "..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_that_is_no_libvirt_driver_is_refused() {
        for uri in [
            "ftp://example.org/",
            "http://127.0.0.1/",
            "file:///etc/passwd",
        ] {
            let err = uri_with(uri, UriPolicy::default()).expect_err("refused");
            assert!(err.to_string().contains("is not a libvirt driver"), "{err}");
        }
        assert!(uri_with("qemu:///system", UriPolicy::default()).is_ok());
        assert!(uri_with("test:///default", UriPolicy::default()).is_ok());
    }

    #[test]
    fn name_accepts_letters_digits_and_separators() {
        assert!(name("VM", "web-01.test_a").is_ok());
    }

    #[test]
    fn name_rejects_empty() {
        assert!(name("VM", "").is_err());
    }

    #[test]
    fn name_rejects_64_characters() {
        assert!(name("VM", &"a".repeat(64)).is_err());
        assert!(name("VM", &"a".repeat(63)).is_ok());
    }

    #[test]
    fn name_rejects_xml_and_shell_metacharacters() {
        for bad in [
            "a<b", "a>b", "a&b", "a'b", "a\"b", "a b", "a;b", "a/b", "-a", ".a", "a\nb",
        ] {
            assert!(name("VM", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn size_rejects_zero_negative_and_absurd() {
        assert!(size(0, 20, 2).is_err());
        assert!(size(1024, -1, 2).is_err());
        assert!(size(1024, 20, 0).is_err());
        assert!(size(i64::MAX, 20, 2).is_err());
        assert!(size(1024, 20, 100_000).is_err());
        assert!(size(1024, 20, 2).is_ok());
    }

    #[test]
    fn uri_accepts_libvirt_uris_and_rejects_others() {
        assert!(uri("qemu:///system").is_ok());
        assert!(uri("test:///default").is_ok());
        assert!(uri("qemu+ssh://user@host/system").is_ok());
        assert!(uri("system").is_err());
        assert!(uri("").is_err());
        assert!(uri("qemu:///sys tem").is_err());
    }

    #[test]
    fn uri_accepts_the_safe_transports() {
        for ok in [
            "qemu:///session",
            "qemu+unix:///system",
            "qemu+ssh://user@host.example:2222/system",
            "qemu+ssh://user@host/system?keyfile=/home/u/.ssh/id_ed25519&no_tty=1",
            "qemu+tls://host.example/system?pkipath=/etc/pki/vmdesk",
            "qemu://host.example/system",
            "qemu+ssh://[::1]/system",
            "azure://00000000-0000-0000-0000-000000000000/rg-a,rg-b",
        ] {
            assert!(
                uri_with(ok, UriPolicy::default()).is_ok(),
                "{ok:?} was refused"
            );
        }
    }

    #[test]
    fn uri_refuses_transports_that_run_programs() {
        for bad in [
            "qemu+ext:///system?command=/tmp/x",
            "qemu+ext:///system",
            "qemu+libssh2://host/system",
            "qemu+foo://host/system",
        ] {
            assert!(
                uri_with(bad, UriPolicy::default()).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn uri_refuses_parameters_that_pick_programs_or_sockets() {
        for bad in [
            "qemu+ssh://host/system?netcat=/tmp/x",
            "qemu+ssh://host/system?command=/tmp/x",
            "qemu+ssh://host/system?proxy=native",
            "qemu+unix:///system?socket=/tmp/evil.sock",
            "qemu:///system?socket=/tmp/evil.sock",
            "qemu:///system?mode=legacy",
            "qemu+tls://host/system?no_verify=1",
            "qemu:///embed?root=/tmp/x",
            "qemu+ssh://host/system?keyfile=-oProxyCommand=x",
            "qemu+ssh://host/system?keyfile=relative",
        ] {
            assert!(
                uri_with(bad, UriPolicy::default()).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn uri_refuses_hosts_and_users_that_look_like_options() {
        for bad in [
            "qemu+ssh://-oProxyCommand=x/system",
            "qemu+ssh://-x@host/system",
            "qemu+ssh://user:secret@host/system",
            "qemu:///system#frag",
            "qemu+unix://host/system",
        ] {
            assert!(
                uri_with(bad, UriPolicy::default()).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn uri_allows_tcp_only_when_asked_for() {
        let tcp = "qemu+tcp://127.0.0.1:16509/system";
        assert!(uri_with(tcp, UriPolicy::default()).is_err());
        assert!(uri_with(tcp, UriPolicy { allow_tcp: true }).is_ok());
    }

    #[test]
    fn a_refused_uri_is_invalid_input() {
        let e = uri_with("qemu+ext:///system?command=/tmp/x", UriPolicy::default())
            .expect_err("refused");
        assert_eq!(e.code(), "invalid_input");
    }
}
