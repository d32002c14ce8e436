//! vmdesk's team store on PostgreSQL: its schema and migrations, its roles,
//! and the connection (TLS by rustls). What a user may do is the database's
//! to enforce: every table is written only by the store's owner role, users
//! read through row-level security and change through `SECURITY DEFINER`
//! functions that check the login (`session_user`) first. See
//! `sql/001_schema.sql` and `sql/002_api.sql`.

mod connect;
pub mod listen;
pub mod migrate;
pub mod notifier;
pub mod pgpass;
mod schema;
mod store;
pub mod testing;

pub use connect::{Target, TlsMode};
pub use schema::{init, roles, schema_version, scram_verifier, InitReport, Roles, STEPS};
pub use store::{generate_password, PgStore};

/// What can go wrong talking to the team store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL or one of its options is not usable.
    #[error("invalid store URL: {0}")]
    Url(String),
    /// TLS could not be set up (certificate files).
    #[error("TLS: {0}")]
    Tls(String),
    /// The server, the network or a statement failed.
    #[error("{}", db_message(.0))]
    Db(#[from] postgres::Error),
    /// The store holds a schema newer than this program knows.
    #[error("the team store's schema is at step {found}, newer than this vmdesk knows ({known}); update vmdesk")]
    TooNew { found: i32, known: i32 },
}

/// The server's own one-line message when it sent one (e.g. "permission
/// denied for table ledger"), else the client's.
fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let s = e.to_string();
            match std::error::Error::source(e) {
                Some(src) if !s.contains(&src.to_string()) => format!("{s}: {src}"),
                _ => s,
            }
        }
    }
}

impl Error {
    /// The SQLSTATE the server answered with, if any (see `sql/002_api.sql`).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Db(e) => e.as_db_error().map(|d| d.code().code()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
