//! The team store: one PostgreSQL database shared by many desks. Who acts is
//! the store's login, and what they may do the database enforces itself
//! (crates/postgres); this trait is the narrow interface [`Core`] reaches
//! it through. Operations not on it yet answer
//! [`Error::NotOnTeamStore`] in team mode instead of touching the desk's own
//! file, so a team desk never mixes the two.

use crate::error::{Error, Result};
use crate::model::*;
use crate::Core;

/// A shared store's side of the operations [`Core`] offers in team mode.
/// Every method acts as the store's login ([`TeamStore::login`]); refusals
/// come from the database and are mapped to the same [`Error`]s as on the
/// embedded store.
pub trait TeamStore: Send + Sync {
    /// The login this store acts as.
    fn login(&self) -> &str;
    /// A description for headers and logs ("ann @ db.example:5432/vmdesk").
    fn describe(&self) -> String;
    /// The login's user.
    fn whoami(&self) -> Result<User>;
    /// A user by name (oneself, or anyone for an admin).
    fn user(&self, name: &str) -> Result<User>;
    /// Adds a user and its login; `password` None makes a login without one
    /// (certificate authentication, or an existing login of the cluster).
    fn user_add(&self, name: &str, admin: bool, password: Option<&str>) -> Result<User>;
    /// Every user (admin).
    fn user_list(&self) -> Result<Vec<User>>;
    /// Makes a user admin or plain user (admin); never the last admin away.
    fn user_role(&self, name: &str, role: Role) -> Result<User>;
    /// Grants credits (admin); returns the user's statement after it.
    fn credits_grant(&self, to: &str, amount: i64, reason: &str) -> Result<CreditStatement>;
    /// Takes credits if the balance covers them, in one step (oneself, or anyone for an admin).
    fn charge(
        &self,
        from: &str,
        amount: i64,
        kind: LedgerKind,
        reason: &str,
    ) -> Result<LedgerEntry>;
    /// A user's balance and ledger (oneself, or anyone for an admin).
    fn credits_show(&self, of: &str) -> Result<CreditStatement>;
    /// Adds a host (admin); the caller has checked that it answers.
    fn host_add(&self, name: &str, kind: HostKind, uri: &str) -> Result<Host>;
    /// A host by name.
    fn host(&self, name: &str) -> Result<Host>;
    /// Every host.
    fn host_list(&self) -> Result<Vec<Host>>;
    /// Creates a project (admin).
    fn project_create(&self, name: &str) -> Result<Project>;
    /// Creates a workspace in a project (admin).
    fn workspace_create(&self, name: &str, project: &str) -> Result<Workspace>;
    /// Allocates a session (REQUESTED) on a free VM of the pool.
    fn session_open(&self, req: &SessionRequest, worker: Option<&str>) -> Result<Session>;
    /// Asks a session to end (TERMINATING).
    fn session_close(&self, id: i64) -> Result<Session>;
    /// The login's sessions; `all`: everyone's (admin).
    fn session_list(&self, all: bool) -> Result<Vec<Session>>;
    /// VMs the login may see: pools' and its own; `all`: everyone's (admin).
    fn vm_list(&self, all: bool) -> Result<Vec<Vm>>;
    /// The newest events the login may see, newest first.
    fn events(&self, limit: i64) -> Result<Vec<Event>>;
}

impl Core {
    /// The team store, when this core works on one.
    pub fn team(&self) -> Option<&dyn TeamStore> {
        self.opts.team.as_deref()
    }

    /// In team mode, the acting user is the store's login: `actor` must name it.
    pub(crate) fn team_as(&self, actor: &str) -> Result<Option<&dyn TeamStore>> {
        match self.team() {
            None => Ok(None),
            Some(t) if t.login() == actor => Ok(Some(t)),
            Some(t) => Err(Error::Forbidden {
                user: actor.to_owned(),
                action: format!(
                    "act on the team store, whose login is {:?} (on a team store you are your login)",
                    t.login()
                ),
            }),
        }
    }

    /// Refuses, in team mode, an operation the team store does not offer yet.
    pub(crate) fn embedded_only(&self, what: &'static str) -> Result<()> {
        match self.team() {
            None => Ok(()),
            Some(_) => Err(Error::NotOnTeamStore(what)),
        }
    }
}
