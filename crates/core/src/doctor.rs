//! Checks of a data directory for `vmdesk doctor`: its permissions and its
//! database (integrity, schema version), read without opening the store (so
//! a broken database is reported, not migrated or created).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::model::HostKind;
use crate::store::{schema_version, DB_FILE, DIR_MODE};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, TS)]
#[serde(rename_all = "lowercase")]
#[ts(export)]
pub enum CheckStatus {
    /// As it should be.
    Ok,
    /// Works, but may bite later.
    Warning,
    /// Broken: something will fail.
    Error,
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warning => "warning",
            CheckStatus::Error => "error",
        })
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Check {
    /// What was checked (`data-dir`, `database`, `host:NAME`, …).
    pub check: String,
    /// How it came out.
    pub status: CheckStatus,
    /// What was found, and what to do about it.
    pub message: String,
}

impl Check {
    /// A check's outcome.
    pub fn new(check: impl Into<String>, status: CheckStatus, message: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status,
            message: message.into(),
        }
    }
}

/// The data directory's permissions: the directory 0700, its files 0600
/// (nothing for the group or others).
pub fn data_dir(dir: &Path) -> Check {
    let name = "data-dir";
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::new(
                name,
                CheckStatus::Warning,
                format!(
                    "{} does not exist yet (created at first use)",
                    dir.display()
                ),
            )
        }
        Err(e) => return Check::new(name, CheckStatus::Error, format!("{}: {e}", dir.display())),
    };
    if !meta.is_dir() {
        return Check::new(
            name,
            CheckStatus::Error,
            format!("{} is not a directory", dir.display()),
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Check::new(
            name,
            CheckStatus::Warning,
            format!(
                "{} is {mode:04o}: other users can read it; expected {DIR_MODE:04o} (chmod 700 {})",
                dir.display(),
                dir.display()
            ),
        );
    }
    let open: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.metadata()
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 != 0)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if !open.is_empty() {
        return Check::new(
            name,
            CheckStatus::Warning,
            format!(
                "files readable by other users in {}: {} (chmod 600 them)",
                dir.display(),
                open.join(", ")
            ),
        );
    }
    Check::new(
        name,
        CheckStatus::Ok,
        format!("{} is {mode:04o}, its files private", dir.display()),
    )
}

/// The database's integrity (`PRAGMA quick_check`) and schema version,
/// read-only.
pub fn database(dir: &Path) -> Check {
    let name = "database";
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Check::new(
            name,
            CheckStatus::Warning,
            format!(
                "{} does not exist yet (created at first use)",
                path.display()
            ),
        );
    }
    let look = || crate::embedded::inspect(&path);
    let supported = schema_version();
    match look() {
        Err(e) => Check::new(
            name,
            CheckStatus::Error,
            format!(
                "{} cannot be read: {e} (restore it from a backup, or move it away to start afresh)",
                path.display()
            ),
        ),
        Ok((check, _)) if check != "ok" => Check::new(
            name,
            CheckStatus::Error,
            format!("{} is damaged: {check}", path.display()),
        ),
        Ok((_, v)) if usize::try_from(v).is_ok_and(|v| v > supported) => Check::new(
            name,
            CheckStatus::Error,
            format!(
                "schema version {v} is newer than this build's ({supported}): use a newer vmdesk"
            ),
        ),
        Ok((_, v)) if usize::try_from(v).is_ok_and(|v| v < supported) => Check::new(
            name,
            CheckStatus::Warning,
            format!("schema version {v} of {supported}: it is migrated at the next start"),
        ),
        Ok((_, v)) => Check::new(
            name,
            CheckStatus::Ok,
            format!("{} intact, schema version {v}", path.display()),
        ),
    }
}

/// A host as the database lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    /// Its name.
    pub name: String,
    /// What kind of host.
    pub kind: HostKind,
    /// Its URI.
    pub uri: String,
}

/// The hosts of the data directory's database, read-only (none when there is
/// no readable database).
pub fn hosts(dir: &Path) -> Vec<HostRow> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Vec::new();
    }
    crate::embedded::host_rows(&path)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, uri)| HostRow {
            name,
            kind: HostKind::of_uri(&uri),
            uri,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_database_is_a_warning() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(database(dir.path()).status, CheckStatus::Warning);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).expect("write");
        assert_eq!(database(dir.path()).status, CheckStatus::Error);
    }

    #[test]
    fn a_new_store_is_intact_and_current() {
        let dir = tempfile::tempdir().expect("dir");
        drop(crate::store::open(dir.path()).expect("open"));
        let c = database(dir.path());
        assert_eq!(c.status, CheckStatus::Ok, "{}", c.message);
    }

    #[test]
    fn a_newer_schema_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        drop(crate::store::open(dir.path()).expect("open"));
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).expect("open");
        conn.pragma_update(None, "user_version", 10_000)
            .expect("set version");
        drop(conn);
        assert_eq!(database(dir.path()).status, CheckStatus::Error);
    }

    #[test]
    fn a_directory_open_to_others_is_a_warning() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert_eq!(data_dir(dir.path()).status, CheckStatus::Warning);
    }

    #[test]
    fn a_private_directory_is_ok() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        assert_eq!(data_dir(dir.path()).status, CheckStatus::Ok);
    }
}
