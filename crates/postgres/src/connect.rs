//! Store URLs and connections: `postgres://user@host:port/db?sslmode=…`, with
//! libpq's TLS modes (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert`. TLS is rustls; a server certificate is
//! always verified, against `sslrootcert` when given and the system's roots
//! otherwise: `require` does not mean "trust anyone" here.

use std::str::FromStr;
use std::sync::Arc;

use postgres::config::SslMode;
use postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Error, Result};

/// How a connection is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
}

/// A parsed store URL: where to connect and how.
#[derive(Clone)]
pub struct Target {
    config: Config,
    tls: TlsMode,
    root_cert: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Target")
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls)
            .finish()
    }
}

impl Target {
    /// Parses a `postgres://` (or `postgresql://`) URL.
    pub fn parse(raw: &str) -> Result<Target> {
        let mut url = url::Url::parse(raw).map_err(|e| Error::Url(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::Url(format!(
                "the scheme must be postgres://, not {}://",
                url.scheme()
            )));
        }
        let mut tls = TlsMode::Prefer;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for (k, v) in url.query_pairs() {
            match &*k {
                "sslmode" => {
                    tls = match &*v {
                        "disable" => TlsMode::Disable,
                        "allow" | "prefer" => TlsMode::Prefer,
                        "require" | "verify-ca" | "verify-full" => TlsMode::Require,
                        other => return Err(Error::Url(format!("unknown sslmode {other:?}"))),
                    }
                }
                "sslrootcert" => root_cert = Some(v.into_owned()),
                "sslcert" | "sslkey" => {
                    return Err(Error::Url(format!(
                        "{k} (client certificates) is not supported yet"
                    )))
                }
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let mut config = Config::from_str(url.as_str()).map_err(|e| Error::Url(e.to_string()))?;
        config.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require => SslMode::Require,
        });
        if config.get_user().is_none() {
            if let Ok(user) = std::env::var("PGUSER").or_else(|_| std::env::var("USER")) {
                config.user(&user);
            }
        }
        if config.get_dbname().is_none() {
            config.dbname("vmdesk");
        }
        Ok(Target {
            config,
            tls,
            root_cert,
        })
    }

    /// The login the connection will use.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    /// The database's name.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("vmdesk")
    }

    /// Where the store is, for people: "host:port/db" (never the password).
    pub fn describe(&self) -> String {
        use postgres::config::Host;
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}/{}", self.dbname())
    }

    /// The first host as libpq names it: a name or address, or a Unix
    /// socket's directory ("" when the URL names none).
    pub fn host(&self) -> String {
        use postgres::config::Host;
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        }
    }

    /// The first port (5432 when the URL names none).
    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// The password for this target in libpq's password file (`PGPASSFILE`
    /// or `~/.pgpass`), and a warning when that file was ignored.
    pub fn pgpass(&self) -> crate::pgpass::Lookup {
        crate::pgpass::lookup(&self.host(), self.port(), self.dbname(), self.user())
    }

    /// Whether the URL carries a password.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    /// Sets the password (from the keyring, a prompt or `PGPASSWORD`).
    pub fn password(&mut self, password: &str) -> &mut Self {
        self.config.password(password);
        self
    }

    /// Sets the login.
    pub fn with_user(&mut self, user: &str) -> &mut Self {
        self.config.user(user);
        self
    }

    /// The same server, another database (e.g. `postgres`, to create ours).
    pub fn with_dbname(&self, dbname: &str) -> Target {
        let mut t = self.clone();
        t.config.dbname(dbname);
        t
    }

    /// Sets how long connecting may take.
    pub fn connect_timeout(&mut self, d: std::time::Duration) -> &mut Self {
        self.config.connect_timeout(d);
        self
    }

    /// The client's settings, for this crate's own connections (e.g. the
    /// listener's application name and keepalives).
    pub(crate) fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Connects (blocking). Call it off any async runtime's worker threads:
    /// the client runs a runtime of its own.
    pub fn connect(&self) -> Result<Client> {
        match self.tls {
            TlsMode::Disable => Ok(self.config.connect(NoTls)?),
            TlsMode::Prefer | TlsMode::Require => {
                let tls = MakeRustlsConnect::new(self.client_config()?);
                Ok(self.config.connect(tls)?)
            }
        }
    }

    fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| Error::Tls(format!("sslrootcert {path}: {e}")))?;
                for c in certs {
                    let c = c.map_err(|e| Error::Tls(format!("sslrootcert {path}: {e}")))?;
                    roots
                        .add(c)
                        .map_err(|e| Error::Tls(format!("sslrootcert {path}: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_full_and_root_cert_are_ours_and_the_rest_goes_to_the_client() {
        let t = Target::parse(
            "postgres://ann:pw@db.example:6432/lab?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(t.tls(), TlsMode::Require);
        assert_eq!(t.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(t.user(), "ann");
        assert_eq!(t.dbname(), "lab");
        assert!(t.has_password());
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert!(!format!("{t:?}").contains("pw"));
    }

    #[test]
    fn other_schemes_and_modes_are_refused() {
        assert!(Target::parse("mysql://a@b/c").is_err());
        assert!(Target::parse("postgres://a@b/c?sslmode=trust-me").is_err());
        assert!(Target::parse("postgres://a@b/c?sslcert=x").is_err());
        assert_eq!(Target::parse("postgres://a@b").unwrap().dbname(), "vmdesk");
        assert_eq!(
            Target::parse("postgres://a@b/c?sslmode=disable")
                .unwrap()
                .tls(),
            TlsMode::Disable
        );
    }
}
