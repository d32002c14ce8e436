//! libpq's password file, `~/.pgpass` (or `PGPASSFILE`): lines of
//! `hostname:port:database:username:password`, `*` matching anything in the
//! first four fields, `\` escaping `:` and `\`, `#` starting a comment; the
//! first line that matches wins. As libpq does, a file that group or others
//! may read or write is ignored with a warning (it must be 0600 or less), and
//! so is anything that is not a regular file. For a connection over a Unix
//! socket in the default socket directory, the host name matched is
//! `localhost`.

use std::path::{Path, PathBuf};

/// The socket directory libpq uses when no host is given (Debian's).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// What a look-up found: the password, if a line matched, and a warning
/// for a person when the file was ignored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    pub password: Option<String>,
    pub warning: Option<String>,
}

/// The password file libpq would read: `PGPASSFILE`, else `~/.pgpass`.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".pgpass"))
}

/// The host name a connection to `host` is looked up under: `localhost` for
/// none or the default socket directory, else the host (or socket path) as given.
pub fn host_name(host: &str) -> &str {
    let h = host.trim_end_matches('/');
    if host.is_empty() || h == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    }
}

/// Looks `host`, `port`, `db` and `user` up in the password file at `file`.
pub fn lookup_in(file: &Path, host: &str, port: u16, db: &str, user: &str) -> Lookup {
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(_) => return Lookup::default(),
    };
    if !meta.is_file() {
        return Lookup {
            password: None,
            warning: Some(format!(
                "password file \"{}\" is not a plain file",
                file.display()
            )),
        };
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            return Lookup {
                password: None,
                warning: Some(format!(
                    "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less: it is ignored",
                    file.display()
                )),
            };
        }
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            return Lookup {
                password: None,
                warning: Some(format!("password file \"{}\": {e}", file.display())),
            }
        }
    };
    Lookup {
        password: find(&text, host_name(host), &port.to_string(), db, user),
        warning: None,
    }
}

/// Looks a connection up in the password file libpq would read ([`path`]).
pub fn lookup(host: &str, port: u16, db: &str, user: &str) -> Lookup {
    match path() {
        Some(p) => lookup_in(&p, host, port, db, user),
        None => Lookup::default(),
    }
}

/// The password of the first line of `text` whose fields match (the host
/// name already as [`host_name`] makes it).
pub fn find(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut rest = line;
        let mut ok = true;
        for want in [host, port, db, user] {
            match field_matches(rest, want) {
                Some(after) => rest = after,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let password = unescape(rest);
        // An empty password is no password (libpq's reading).
        return (!password.is_empty()).then_some(password);
    }
    None
}

/// Whether the field at the start of `s` matches `want` (`*` matches
/// anything); the text after its `:` if so.
fn field_matches<'a>(s: &'a str, want: &str) -> Option<&'a str> {
    if let Some(after) = s.strip_prefix("*:") {
        return Some(after);
    }
    let mut chars = s.char_indices();
    let mut wanted = want.chars();
    while let Some((i, c)) = chars.next() {
        let c = match c {
            ':' => {
                return wanted.next().is_none().then(|| &s[i + 1..]);
            }
            '\\' => match chars.next() {
                Some((_, e)) => e,
                None => return None,
            },
            c => c,
        };
        if wanted.next() != Some(c) {
            return None;
        }
    }
    // The line ended before the field's colon.
    None
}

/// The password field, escapes undone, up to an unescaped `:`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(e) => out.push(e),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A private directory of this test's own (removed at the end).
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("vmdesk-pgpass-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("temporary directory");
            Dir(d)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const FILE: &str = "\
# a comment:*:*:*:nope
db.example:5432:vmdesk:ann:first
db.example:5432:vmdesk:ann:second
*:6432:*:bob:any\\:host
localhost:5432:lab:*:for\\\\all
db.example:5432:vmdesk:eve
";

    #[test]
    fn the_first_matching_line_wins() {
        assert_eq!(
            find(FILE, "db.example", "5432", "vmdesk", "ann").as_deref(),
            Some("first")
        );
    }

    #[test]
    fn a_star_matches_any_value_and_escapes_are_undone() {
        assert_eq!(
            find(FILE, "anywhere", "6432", "whatever", "bob").as_deref(),
            Some("any:host")
        );
        assert_eq!(
            find(FILE, "localhost", "5432", "lab", "zed").as_deref(),
            Some("for\\all")
        );
    }

    #[test]
    fn nothing_matches_on_another_port_db_or_user_or_a_short_line() {
        assert_eq!(find(FILE, "db.example", "5433", "vmdesk", "ann"), None);
        assert_eq!(find(FILE, "db.example", "5432", "other", "ann"), None);
        assert_eq!(find(FILE, "db.example", "5432", "vmdesk", "annie"), None);
        assert_eq!(find(FILE, "db.example", "5432", "vmdesk", "an"), None);
        // eve's line has no password field.
        assert_eq!(find(FILE, "db.example", "5432", "vmdesk", "eve"), None);
        // A comment is never a line.
        assert_eq!(find(FILE, "# a comment", "*", "*", "*"), None);
    }

    #[test]
    fn an_escaped_colon_in_a_field_is_part_of_it() {
        let text = "fe80\\:\\:1:5432:db:ann:pw:ignored\n";
        assert_eq!(
            find(text, "fe80::1", "5432", "db", "ann").as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn the_default_socket_directory_is_localhost() {
        assert_eq!(host_name(""), "localhost");
        assert_eq!(host_name("/var/run/postgresql"), "localhost");
        assert_eq!(
            host_name("/run/vmdesk-postgres/sock"),
            "/run/vmdesk-postgres/sock"
        );
        assert_eq!(host_name("db.example"), "db.example");
    }

    #[test]
    fn a_file_others_may_read_is_ignored_with_a_warning() {
        let dir = Dir::new("mode");
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:ann:secret\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let l = lookup_in(&file, "db", 5432, "vmdesk", "ann");
        assert_eq!(l.password, None);
        let w = l.warning.expect("a warning");
        assert!(w.contains("0600") && w.contains("pgpass"), "{w}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let l = lookup_in(&file, "db", 5432, "vmdesk", "ann");
        assert_eq!(
            l,
            Lookup {
                password: Some("secret".into()),
                warning: None
            }
        );
    }

    #[test]
    fn a_missing_file_is_nothing_and_a_directory_is_warned_of() {
        let dir = Dir::new("missing");
        assert_eq!(
            lookup_in(&dir.path().join("none"), "db", 5432, "vmdesk", "ann"),
            Lookup::default()
        );
        let l = lookup_in(dir.path(), "db", 5432, "vmdesk", "ann");
        assert!(l.password.is_none() && l.warning.is_some());
    }
}
