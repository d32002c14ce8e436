//! Hosts, projects and workspaces on the embedded store.

use rusqlite::{params, OptionalExtension};
use serde_json::json;

use super::{already_exists, host, project_id, Embedded};
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::store::{self, now};
use crate::team::Places;

/// The columns of a [`Project`], for [`project_row`].
macro_rules! project_select {
    () => {
        "SELECT id, name, created_at, max_session_minutes, idle_minutes, idle_cpu_percent,
                weekly_hours FROM projects"
    };
}

fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        limits: ProjectLimits {
            max_session_minutes: r.get(3)?,
            idle_minutes: r.get(4)?,
            idle_cpu_percent: r.get(5)?,
            weekly_hours: r.get(6)?,
        },
    })
}

impl Places for Embedded<'_> {
    fn host_add(&self, name: &str, kind: HostKind, uri: &str) -> Result<Host> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "add hosts")?;
            tx.execute(
                "INSERT INTO hosts (name, kind, uri, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, kind, uri, now()],
            )
            .map_err(already_exists("host", name))?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "host.add",
                    &a.name,
                    json!({"host": name, "kind": kind, "uri": uri}),
                ),
            )?;
            host(tx, name)
        })
    }

    fn host(&self, name: &str) -> Result<Host> {
        host(&self.core.db(), name)
    }

    fn host_list(&self) -> Result<Vec<Host>> {
        let conn = self.core.db();
        self.me(&conn)?;
        let mut stmt = conn.prepare("SELECT name FROM hosts ORDER BY name")?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        names.iter().map(|n| host(&conn, n)).collect()
    }

    fn host_memory(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.core.db();
        self.me(&conn)?;
        let mut stmt = conn.prepare(
            "SELECT h.name, SUM(v.ram_mb) FROM vms v JOIN hosts h ON h.id = v.host_id
              WHERE v.status IN ('CREATING', 'STARTING', 'RUNNING', 'STOPPING')
              GROUP BY h.name ORDER BY h.name",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn project_create(&self, name: &str) -> Result<Project> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "create projects")?;
            let created_at = now();
            tx.execute(
                "INSERT INTO projects (name, created_at) VALUES (?1, ?2)",
                params![name, created_at],
            )
            .map_err(already_exists("project", name))?;
            let id = tx.last_insert_rowid();
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "project.create",
                    &a.name,
                    json!({"project": name}),
                ),
            )?;
            Ok(Project {
                id,
                name: name.to_owned(),
                created_at,
                limits: ProjectLimits::default(),
            })
        })
    }

    fn workspace_create(&self, name: &str, project: &str) -> Result<Workspace> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "create workspaces")?;
            let pid = project_id(tx, project)?;
            let created_at = now();
            tx.execute(
                "INSERT INTO workspaces (project_id, name, created_at) VALUES (?1, ?2, ?3)",
                params![pid, name, created_at],
            )
            .map_err(already_exists("workspace", name))?;
            let id = tx.last_insert_rowid();
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "workspace.create",
                    &a.name,
                    json!({"workspace": name, "project": project}),
                ),
            )?;
            Ok(Workspace {
                id,
                name: name.to_owned(),
                project: project.to_owned(),
                created_at,
            })
        })
    }

    fn projects(&self) -> Result<Vec<(Project, Vec<String>)>> {
        let conn = self.core.db();
        let projects: Vec<Project> = conn
            .prepare_cached(concat!(project_select!(), " ORDER BY name"))?
            .query_map([], project_row)?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(projects.len());
        for project in projects {
            let workspaces = conn
                .prepare_cached("SELECT name FROM workspaces WHERE project_id = ?1 ORDER BY name")?
                .query_map([project.id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            out.push((project, workspaces));
        }
        Ok(out)
    }

    fn project_limits_set(&self, project: &str, limits: &ProjectLimits) -> Result<Project> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "set project limits")?;
            let pid = project_id(tx, project)?;
            let was = tx.query_row(
                concat!(project_select!(), " WHERE id = ?1"),
                [pid],
                project_row,
            )?;
            tx.execute(
                "UPDATE projects SET max_session_minutes = ?2, idle_minutes = ?3,
                        idle_cpu_percent = ?4, weekly_hours = ?5 WHERE id = ?1",
                params![
                    pid,
                    limits.max_session_minutes,
                    limits.idle_minutes,
                    limits.idle_cpu_percent,
                    limits.weekly_hours
                ],
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "project.limits",
                    &a.name,
                    json!({"project": project, "was": was.limits, "now": limits}),
                ),
            )?;
            Ok(Project {
                limits: *limits,
                ..was
            })
        })
    }

    fn project_rename(&self, name: &str, new: &str) -> Result<Project> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "rename projects")?;
            let pid = project_id(tx, name)?;
            tx.execute(
                "UPDATE projects SET name = ?2 WHERE id = ?1",
                params![pid, new],
            )
            .map_err(already_exists("project", new))?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "project.rename",
                    &a.name,
                    json!({"project": new, "was": name}),
                ),
            )?;
            Ok(tx.query_row(
                concat!(project_select!(), " WHERE id = ?1"),
                [pid],
                project_row,
            )?)
        })
    }

    fn project_delete(&self, name: &str) -> Result<()> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "delete projects")?;
            let pid = project_id(tx, name)?;
            let (vms, sessions): (i64, i64) = tx.query_row(
                "SELECT (SELECT count(*) FROM vms WHERE project_id = ?1),
                        (SELECT count(*) FROM sessions WHERE project_id = ?1)",
                [pid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            not_empty("project", name, vms, sessions)?;
            tx.execute("DELETE FROM workspaces WHERE project_id = ?1", [pid])?;
            tx.execute("DELETE FROM projects WHERE id = ?1", [pid])?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "project.delete",
                    &a.name,
                    json!({"project": name}),
                ),
            )?;
            Ok(())
        })
    }

    fn workspace_rename(&self, project: &str, name: &str, new: &str) -> Result<Workspace> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "rename workspaces")?;
            let wid = workspace_id(tx, project, name)?;
            tx.execute(
                "UPDATE workspaces SET name = ?2 WHERE id = ?1",
                params![wid, new],
            )
            .map_err(already_exists("workspace", new))?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "workspace.rename",
                    &a.name,
                    json!({"project": project, "workspace": new, "was": name}),
                ),
            )?;
            let created_at: String = tx.query_row(
                "SELECT created_at FROM workspaces WHERE id = ?1",
                [wid],
                |r| r.get(0),
            )?;
            Ok(Workspace {
                id: wid,
                name: new.to_owned(),
                project: project.to_owned(),
                created_at,
            })
        })
    }

    fn workspace_delete(&self, project: &str, name: &str) -> Result<()> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "delete workspaces")?;
            let wid = workspace_id(tx, project, name)?;
            let sessions: i64 = tx.query_row(
                "SELECT count(*) FROM sessions WHERE workspace_id = ?1",
                [wid],
                |r| r.get(0),
            )?;
            not_empty("workspace", name, 0, sessions)?;
            tx.execute("DELETE FROM workspaces WHERE id = ?1", [wid])?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "workspace.delete",
                    &a.name,
                    json!({"project": project, "workspace": name}),
                ),
            )?;
            Ok(())
        })
    }

    fn install_id(&self) -> Result<String> {
        store::install_id(&self.core.db())
    }
}

fn workspace_id(conn: &rusqlite::Connection, project: &str, name: &str) -> Result<i64> {
    let pid = project_id(conn, project)?;
    conn.query_row(
        "SELECT id FROM workspaces WHERE project_id = ?1 AND name = ?2",
        params![pid, name],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| Error::UnknownWorkspace {
        project: project.to_owned(),
        workspace: name.to_owned(),
    })
}

/// Refuses to delete a project or workspace that VMs or sessions (past
/// ones too: their history names it) belong to.
pub(crate) fn not_empty(kind: &str, name: &str, vms: i64, sessions: i64) -> Result<()> {
    if vms == 0 && sessions == 0 {
        return Ok(());
    }
    let mut what = Vec::new();
    if vms > 0 {
        what.push(format!("{vms} VM{}", if vms == 1 { "" } else { "s" }));
    }
    if sessions > 0 {
        what.push(format!(
            "{sessions} session{} (past ones too)",
            if sessions == 1 { "" } else { "s" }
        ));
    }
    Err(Error::invalid(format!(
        "the {kind} {name} is not empty: it has {}; only an empty one is deleted",
        what.join(" and ")
    )))
}
