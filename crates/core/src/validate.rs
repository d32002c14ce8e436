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

/// Checks a libvirt connection URI: `scheme://...`, printable, at most 1024 bytes.
pub fn uri(value: &str) -> Result<()> {
    let scheme_ok = value.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_lowercase())
            && scheme.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')
            })
    });
    if !scheme_ok || value.len() > 1024 || value.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::invalid(format!(
            "{value:?} is not a connection URI such as qemu:///system"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
