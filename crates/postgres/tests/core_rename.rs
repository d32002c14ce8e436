//! Projects and workspaces renamed, and deleted only when empty (issue 16),
//! on both stores.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use stores::Desks;

fn names(d: &Desks) -> Vec<(String, Vec<String>)> {
    d.with(&d.admin(), |c, a| c.projects(a).unwrap())
        .into_iter()
        .map(|(p, w)| (p.name, w))
        .collect()
}

both!(
    projects_and_workspaces_are_renamed_and_deleted_only_when_empty,
    |d: &Desks| {
        d.pool(1);
        let admin = d.admin();
        d.with(&admin, |c, a| {
            c.workspace_create(a, "w1", "p").unwrap();
            c.workspace_create(a, "w2", "p").unwrap();
            c.project_create(a, "spare").unwrap();
            c.workspace_create(a, "sw", "spare").unwrap();
        });
        // Renamed: the pool's VM and the workspaces follow.
        let p = d.with(&admin, |c, a| c.project_rename(a, "p", "lab").unwrap());
        assert_eq!(p.name, "lab");
        let vm = d.with(&admin, |c, a| c.vm_list(a, true).unwrap()).remove(0);
        assert_eq!(vm.pool.as_deref(), Some("lab"));
        let w = d.with(&admin, |c, a| {
            c.workspace_rename(a, "lab", "w1", "team-a").unwrap()
        });
        assert_eq!((w.name.as_str(), w.project.as_str()), ("team-a", "lab"));
        assert_eq!(
            names(d),
            [
                ("lab".to_owned(), vec!["team-a".to_owned(), "w2".to_owned()]),
                ("spare".to_owned(), vec!["sw".to_owned()])
            ]
        );
        // Refusals change nothing.
        let err = d.with(&admin, |c, a| {
            c.project_rename(a, "lab", "spare").unwrap_err()
        });
        assert_eq!(err.code(), "already_exists", "{}", err.one_line());
        let err = d.with(&admin, |c, a| {
            c.project_rename(a, "lab", "bad name!").unwrap_err()
        });
        assert_eq!(err.code(), "invalid_input");
        let err = d.with(&admin, |c, a| {
            c.workspace_rename(a, "lab", "w2", "team-a").unwrap_err()
        });
        assert_eq!(err.code(), "already_exists");
        let err = d.with(&admin, |c, a| c.project_rename(a, "nope", "x").unwrap_err());
        assert_eq!(err.code(), "unknown_project");
        let err = d.with(&admin, |c, a| {
            c.workspace_delete(a, "lab", "nope").unwrap_err()
        });
        assert_eq!(err.code(), "unknown_workspace");
        let bob = d.user("bob", false, 1000);
        let err = d.with(&bob, |c, me| c.project_delete(me, "spare").unwrap_err());
        assert_eq!(err.code(), "admin_only");

        // Not empty: a VM, then a session's history.
        let err = d.with(&admin, |c, a| c.project_delete(a, "lab").unwrap_err());
        assert_eq!(
            err.to_string(),
            "the project lab is not empty: it has 1 VM; only an empty one is deleted"
        );
        let s = d.with(&bob, |c, me| {
            c.session_open(
                me,
                &vmdesk_core::SessionRequest {
                    project: "lab".into(),
                    workspace: Some("w2".into()),
                    vm_type: None,
                },
                true,
            )
            .unwrap()
        });
        d.with(&bob, |c, me| c.session_close(me, s.id, true).unwrap());
        let err = d.with(&admin, |c, a| {
            c.workspace_delete(a, "lab", "w2").unwrap_err()
        });
        assert!(
            err.to_string().contains("1 session (past ones too)"),
            "{err}"
        );
        d.with(&admin, |c, a| {
            c.workspace_delete(a, "lab", "team-a").unwrap()
        });
        // An empty project goes with its workspaces.
        d.with(&admin, |c, a| c.project_delete(a, "spare").unwrap());
        assert_eq!(names(d), [("lab".to_owned(), vec!["w2".to_owned()])]);
        let actions = d.actions(50);
        for a in [
            "project.delete",
            "workspace.delete",
            "workspace.rename",
            "project.rename",
        ] {
            assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
        }
    }
);
