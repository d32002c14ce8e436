//! Which store a desk works on, and the commands that choose it: `vmdesk
//! login`/`logout`, `vmdesk store init|status|migrate`.
//!
//! A team store is named by a `postgres://LOGIN@HOST:PORT/DB` URL: `--store
//! URL` (`VMDESK_STORE`) for one call, else `[store] url` in the settings
//! (written by `vmdesk login`), else there is none and the data directory's
//! own file is the store. Its password is found as libpq users expect: the
//! URL's own (discouraged, for scripts), `PGPASSWORD`, libpq's password file
//! (`PGPASSFILE` or `~/.pgpass`, 0600), then the OS keyring entry `vmdesk
//! login` kept (service [`KEYRING_SERVICE`], account: the URL without a
//! password). Client certificates are not supported yet.

use std::time::Duration;

use anyhow::{anyhow, bail};
use vmdesk_postgres::{PgStore, Target};

use crate::cli::{data_dir, emit, settings_path, Global};

/// The keyring service team store passwords are kept under.
pub const KEYRING_SERVICE: &str = "vmdesk-store";

/// How long connecting to a team store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a password came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The URL's own.
    Url,
    /// `PGPASSWORD`.
    Env,
    /// libpq's password file.
    Pgpass,
    /// The OS keyring (`vmdesk login`).
    Keyring,
    /// None was found (the server may need none: trust, peer).
    None,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Url => "the URL",
            Source::Env => "PGPASSWORD",
            Source::Pgpass => "the password file (~/.pgpass)",
            Source::Keyring => "the OS keyring",
            Source::None => "none",
        }
    }
}

/// The team store's URL for this call, if any: `--store`/`VMDESK_STORE`
/// (an empty one: the embedded store), else the settings' `[store] url`.
pub fn team_url(g: &Global) -> anyhow::Result<Option<String>> {
    if let Some(u) = &g.store {
        let u = u.trim();
        return Ok((!u.is_empty()).then(|| u.to_owned()));
    }
    Ok(crate::cli::settings(g)?.store.team_url().map(str::to_owned))
}

/// `raw` without its password: what the settings file and the keyring's
/// account name hold.
pub fn without_password(raw: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(raw).map_err(|e| anyhow!("invalid store URL: {e}"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        bail!(
            "invalid store URL: the scheme must be postgres://, not {}://",
            url.scheme()
        );
    }
    let _ = url.set_password(None);
    if url.query_pairs().any(|(k, _)| k == "password") {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "password")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    Ok(url.to_string())
}

/// Parses a store URL; the error is one line.
pub fn parse(raw: &str) -> anyhow::Result<Target> {
    Ok(Target::parse(raw)?)
}

/// The password the keyring keeps for `account`, if any; an error when the
/// keyring does not answer.
fn keyring_get(account: &str) -> Result<Option<String>, String> {
    off_runtime(|| {
        let entry = keyring::Entry::new(KEYRING_SERVICE, account).map_err(|e| e.to_string())?;
        match entry.get_password() {
            Ok(p) => Ok(Some(p)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    })
}

fn keyring_set(account: &str, password: &str) -> anyhow::Result<()> {
    off_runtime(|| {
        keyring::Entry::new(KEYRING_SERVICE, account)
            .and_then(|e| e.set_password(password))
            .map_err(|e| anyhow!("the OS keyring: {e}; nothing was saved"))
    })
}

/// Removes the keyring's entry for `account`; whether there was one.
fn keyring_delete(account: &str) -> anyhow::Result<bool> {
    off_runtime(|| {
        match keyring::Entry::new(KEYRING_SERVICE, account).and_then(|e| e.delete_credential()) {
            Ok(()) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(e) => Err(anyhow!("the OS keyring: {e}")),
        }
    })
}

/// Runs `f` outside any tokio runtime (the keyring's D-Bus client and the
/// PostgreSQL client block on runtimes of their own).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// The password for `raw` and where it came from: the URL's own,
/// `PGPASSWORD`, the password file, the keyring (`keyring`: whether to look
/// there). A password file that is ignored is warned of on stderr.
fn find_password(
    raw: &str,
    target: &Target,
    keyring: bool,
) -> anyhow::Result<(Option<String>, Source)> {
    if let Some(p) = url::Url::parse(raw)?.password() {
        return Ok((Some(percent_decode(p)), Source::Url));
    }
    if let Some(pw) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Ok((Some(pw), Source::Env));
    }
    let found = target.pgpass();
    if let Some(w) = found.warning {
        eprintln!("warning: {w}");
    }
    if let Some(pw) = found.password {
        return Ok((Some(pw), Source::Pgpass));
    }
    if keyring {
        match keyring_get(&without_password(raw)?) {
            Ok(Some(pw)) => return Ok((Some(pw), Source::Keyring)),
            Ok(None) => {}
            Err(e) => tracing::debug!("the OS keyring: {e}"),
        }
    }
    Ok((None, Source::None))
}

/// The target of `raw` with its password found (see the module's doc), and
/// where it came from.
pub fn with_password(raw: &str) -> anyhow::Result<(Target, Source)> {
    let mut target = parse(raw)?;
    target.connect_timeout(CONNECT_TIMEOUT);
    let (pw, source) = find_password(raw, &target, true)?;
    if let Some(pw) = pw {
        target.password(&pw);
    }
    Ok((target, source))
}

/// Whether a failure is the server refusing the password (or the login).
fn auth_failed(e: &vmdesk_postgres::Error) -> bool {
    matches!(e.code(), Some("28P01" | "28000"))
}

/// Whether a failure is a password the server wants and the client lacks.
fn password_missing(e: &vmdesk_postgres::Error) -> bool {
    e.code().is_none() && e.to_string().contains("password missing")
}

/// Connects to the team store of `raw` for a command: the password as the
/// module's doc says. Every failure is one line naming the store and what
/// to do.
pub fn connect(raw: &str) -> anyhow::Result<PgStore> {
    let account = without_password(raw)?;
    let (target, source) = with_password(raw)?;
    let place = target.describe();
    off_runtime(|| PgStore::connect(target.clone())).map_err(|e| {
        if password_missing(&e) {
            anyhow!(
                "the team store {place} wants a password for {} and none was found: run `vmdesk login {account}` (or set PGPASSWORD, or add it to ~/.pgpass)",
                target.user()
            )
        } else if auth_failed(&e) {
            anyhow!(
                "{e} on the team store {place} (password from {}): run `vmdesk login {account}` again",
                source.name()
            )
        } else if e.code().is_some() {
            anyhow!("the team store {place}: {e}")
        } else if matches!(e, vmdesk_postgres::Error::Db(_)) {
            anyhow!(
                "cannot reach the team store {place}: {e}; is its server up? (`vmdesk logout` goes back to the embedded store)"
            )
        } else {
            anyhow!("the team store {place}: {e}")
        }
    })
}

/// Reads a password: without echo from the terminal, or one line of
/// standard input when that is not a terminal (scripts, tests).
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _};
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(prompt)?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// A refused login: the field at fault (`store.url`, `store.password`;
/// none: the keyring or the settings file) and a sentence. Nothing was
/// saved.
#[derive(Debug)]
pub struct LoginError {
    /// The field at fault, if one is.
    pub field: Option<&'static str>,
    /// What went wrong, in one line.
    pub message: String,
}

impl LoginError {
    fn url(message: impl Into<String>) -> Self {
        Self {
            field: Some("store.url"),
            message: message.into(),
        }
    }

    fn password(message: impl Into<String>) -> Self {
        Self {
            field: Some("store.password"),
            message: message.into(),
        }
    }

    fn other(message: impl std::fmt::Display) -> Self {
        Self {
            field: None,
            message: message.to_string(),
        }
    }
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoginError {}

/// A login done: where, as whom, and where its password is.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// `HOST:PORT/DB`.
    pub place: String,
    /// The URL the settings file now holds (no password).
    pub url: String,
    /// The database login.
    pub login: String,
    /// Where the password is found from now on.
    pub password_from: Source,
}

/// The first step of a login: `raw` checked as the settings file would
/// take it (its password aside) and parsed; its account (the URL without
/// a password) and its target.
pub fn login_target(raw: &str) -> Result<(String, Target), LoginError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(LoginError::url(
            "Enter the team store's URL: postgres://LOGIN@HOST[:PORT]/DB.",
        ));
    }
    let account = without_password(raw).map_err(|e| LoginError::url(e.to_string()))?;
    if let Some(m) = vmdesk_core::settings::store_url_problem(&account) {
        return Err(LoginError::url(m));
    }
    let mut target = parse(raw).map_err(|e| LoginError::url(e.to_string()))?;
    target.connect_timeout(CONNECT_TIMEOUT);
    Ok((account, target))
}

/// Logs in to the team store of `target` with `password`, as `vmdesk
/// login` and the window's Settings page both do: connects and lets the
/// server check the password, keeps it in the OS keyring (`keep`: else
/// `source`, PGPASSWORD or the password file, keeps supplying it), and
/// writes `account` (the URL without a password) as `[store] url` in the
/// settings file at `settings_path`. Nothing is saved on an error.
pub fn log_in(
    settings_path: &std::path::Path,
    account: &str,
    mut target: Target,
    password: &str,
    source: Source,
) -> Result<LoggedIn, LoginError> {
    target.password(password);
    let place = target.describe();
    // The settings must take the URL before anything is kept.
    let mut settings =
        vmdesk_core::Settings::load(settings_path).map_err(|e| LoginError::other(e.one_line()))?;
    settings.store.url = account.to_owned();
    if let Some(p) = settings.problems().into_iter().next() {
        return Err(if p.field == "store.url" {
            LoginError::url(p.message)
        } else {
            LoginError::other(format!(
                "{}: {} (in {}); nothing was saved",
                p.field,
                p.message,
                settings_path.display()
            ))
        });
    }
    let login = off_runtime(|| {
        let store = PgStore::connect(target.clone())?;
        use vmdesk_core::team::prelude::*;
        Ok::<_, vmdesk_postgres::Error>(store.login().to_owned())
    })
    .map_err(|e| {
        if auth_failed(&e) || password_missing(&e) {
            LoginError::password(e.to_string())
        } else if e.code().is_some() {
            LoginError::url(e.to_string())
        } else {
            LoginError::url(format!("cannot log in to {place}: {e}"))
        }
    })?;
    // Typed or in the URL: kept in the keyring. PGPASSWORD and the
    // password file keep supplying theirs.
    let keep = matches!(source, Source::None | Source::Url);
    if keep {
        keyring_set(account, password).map_err(LoginError::other)?;
    }
    if let Err(e) = settings.save(settings_path) {
        if keep {
            let _ = keyring_delete(account);
        }
        return Err(LoginError::other(format!(
            "{}; nothing was saved",
            e.one_line()
        )));
    }
    Ok(LoggedIn {
        place,
        url: account.to_owned(),
        login,
        password_from: if keep { Source::Keyring } else { source },
    })
}

/// `vmdesk login URL`.
pub fn login(g: &Global, raw: &str) -> anyhow::Result<()> {
    let (account, target) = login_target(raw)?;
    // A password kept earlier in the keyring is not the one to check: ask.
    let (found, source) = find_password(raw, &target, false)?;
    let password = match found {
        Some(pw) => pw,
        None => {
            let pw = read_password(&format!(
                "password of {} on {}: ",
                target.user(),
                target.describe()
            ))?;
            if pw.is_empty() {
                bail!("no password given: nothing was saved");
            }
            pw
        }
    };
    let done = log_in(&settings_path(g)?, &account, target, &password, source)?;
    let report = serde_json::json!({
        "store": done.place,
        "url": done.url,
        "login": done.login,
        "password_from": done.password_from.name(),
    });
    emit(g, &report, || {
        format!("logged in to {} as {}", done.place, done.login)
    })
}

/// `%XX` escapes undone (a URL's password).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A logout done.
#[derive(Debug, Clone)]
pub struct LoggedOut {
    /// The team store left, `HOST:PORT/DB`.
    pub place: String,
    /// Whether the keyring held its password (now gone).
    pub forgot: bool,
    /// Why the keyring could not be cleared, if it could not.
    pub warning: Option<String>,
}

/// Logs out of the team store the settings file at `settings_path` names,
/// as `vmdesk logout` and the window's Settings page both do: its password
/// leaves the OS keyring and `[store] url` the settings. `None`: the
/// settings name no team store.
pub fn log_out(settings_path: &std::path::Path) -> anyhow::Result<Option<LoggedOut>> {
    let mut settings = vmdesk_core::Settings::load(settings_path)?;
    let Some(url) = settings.store.team_url().map(str::to_owned) else {
        return Ok(None);
    };
    let place = parse(&url).map(|t| t.describe()).unwrap_or(url.clone());
    let (forgot, warning) = match keyring_delete(&url) {
        Ok(had) => (had, None),
        Err(e) => (false, Some(format!("{e}; the password may still be there"))),
    };
    settings.store.url.clear();
    settings.save(settings_path)?;
    Ok(Some(LoggedOut {
        place,
        forgot,
        warning,
    }))
}

/// `vmdesk logout`.
pub fn logout(g: &Global) -> anyhow::Result<()> {
    let path = settings_path(g)?;
    let dir = data_dir(g)?;
    let Some(out) = log_out(&path)? else {
        return emit(
            g,
            &serde_json::json!({"store": "embedded", "data_dir": dir}),
            || {
                format!(
                    "not logged in to a team store: the embedded store at {} is in use",
                    dir.display()
                )
            },
        );
    };
    if let Some(w) = &out.warning {
        eprintln!("warning: {w}");
    }
    let (place, forgot) = (out.place, out.forgot);
    emit(
        g,
        &serde_json::json!({"logged_out_of": place, "password_forgotten": forgot, "store": "embedded", "data_dir": dir}),
        || {
            format!(
                "logged out of {place}{}: back to the embedded store at {}",
                if forgot {
                    " (its password is gone from the OS keyring)"
                } else {
                    ""
                },
                dir.display()
            )
        },
    )
}

/// The URL `login` uses on the store of `raw`: its login replaced, its
/// password gone (its TLS options kept).
fn login_url(raw: &str, login: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(&without_password(raw)?)?;
    url.set_username(login)
        .map_err(|()| anyhow!("the store URL {raw:?} has no host"))?;
    Ok(url.to_string())
}

/// The OS user's name, the default first admin.
fn os_user() -> Option<String> {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// `vmdesk store init URL [--admin NAME]`: run as a role that may create
/// databases and roles (the cluster's superuser).
pub fn init(g: &Global, raw: &str, admin: Option<String>) -> anyhow::Result<()> {
    let admin = match admin.or_else(os_user) {
        Some(a) => a,
        None => bail!("give the first admin's login with --admin NAME"),
    };
    let (target, source) = with_password(raw)?;
    let place = target.describe();
    let fail = |e: vmdesk_postgres::Error| {
        if password_missing(&e) {
            anyhow!(
                "{place} wants a password for {} and none was found: put it in the URL, PGPASSWORD or ~/.pgpass",
                target.user()
            )
        } else if e.code().is_some() {
            anyhow!("{place}: {e}")
        } else {
            anyhow!("cannot reach {place}: {e}")
        }
    };
    let _ = source;
    // A login the cluster has keeps its password (or certificate).
    let exists = {
        let mut c = target.with_dbname("postgres").connect().map_err(fail)?;
        c.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&admin])
            .map_err(|e| fail(e.into()))?
            .is_some()
    };
    let password = (!exists).then(vmdesk_postgres::generate_password);
    let verifier = password.as_deref().map(vmdesk_postgres::scram_verifier);
    let report = vmdesk_postgres::init(&target, &admin, verifier.as_deref()).map_err(fail)?;
    let step = vmdesk_postgres::STEPS.len();
    let url = login_url(raw, &admin)?;
    let shown = report.added_admin.then_some(password).flatten();
    let json = serde_json::json!({
        "store": place,
        "created_database": report.created_database,
        "applied_steps": report.applied,
        "schema_step": step,
        "admin": admin,
        "added_admin": report.added_admin,
        "password": shown,
        "login_url": url,
        "roles": {"owner": report.roles.owner, "users": report.roles.users, "admins": report.roles.admins},
    });
    emit(g, &json, || {
        let mut lines = Vec::new();
        if report.created_database || !report.applied.is_empty() {
            let steps: Vec<String> = report.applied.iter().map(i32::to_string).collect();
            lines.push(format!(
                "set up the team store {place}{}: schema step {step} (applied {})",
                if report.created_database {
                    " (database created)"
                } else {
                    ""
                },
                if steps.is_empty() {
                    "none".to_owned()
                } else {
                    steps.join(", ")
                }
            ));
        } else {
            lines.push(format!(
                "the team store {place} is up to date, schema step {step}"
            ));
        }
        let first = if report.applied.is_empty() {
            "admin"
        } else {
            "first admin"
        };
        match (&shown, report.added_admin) {
            (Some(pw), _) => lines.push(format!(
                "{first} {admin}, password: {pw} — keep it (it is not shown again); `vmdesk login {url}` to use it"
            )),
            (None, true) => lines.push(format!(
                "{first} {admin}: an existing login of the cluster, with its own password; `vmdesk login {url}` to use it"
            )),
            (None, false) => lines.push(format!("admin {admin} was already there")),
        }
        lines.join("\n")
    })
}

/// `vmdesk store status`.
pub fn status(g: &Global) -> anyhow::Result<()> {
    let Some(raw) = team_url(g)? else {
        let dir = data_dir(g)?;
        return emit(
            g,
            &serde_json::json!({"store": "embedded", "data_dir": dir}),
            || format!("embedded store at {}", dir.display()),
        );
    };
    let store = connect(&raw)?;
    use vmdesk_core::team::prelude::*;
    let me = store.whoami()?;
    let (target, _) = with_password(&raw)?;
    let step = off_runtime(|| -> Result<i32, vmdesk_postgres::Error> {
        vmdesk_postgres::schema_version(&mut target.connect()?)
    })?;
    let place = target.describe();
    let json = serde_json::json!({
        "store": place,
        "url": without_password(&raw)?,
        "login": me.name,
        "role": me.role,
        "balance": me.balance,
        "schema_step": step,
    });
    emit(g, &json, || {
        format!(
            "store   {place} (team)\nlogin   {}\nrole    {}\nschema  step {step}",
            me.name, me.role
        )
    })
}

/// `vmdesk store migrate --to URL`: copies this desk's embedded data
/// directory into an empty team store.
pub fn migrate(g: &Global, to: &str) -> anyhow::Result<()> {
    let (target, _) = with_password(to)?;
    let dir = data_dir(g)?;
    let report = vmdesk_postgres::migrate::from_embedded(&dir, &target)?;
    emit(g, &report, || report.to_string())
}

/// What `vmdesk user add` says of a login's password on a team store.
pub fn login_hint(g: &Global, name: &str) -> Option<String> {
    let raw = team_url(g).ok().flatten()?;
    login_url(&raw, name).ok()
}
