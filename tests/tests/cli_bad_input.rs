//! Bad input: a non-zero exit, one clear line on stderr, and nothing changed.
#![allow(missing_docs)]

use vmdesk_tests::Vmdesk;

fn setup() -> Vmdesk {
    let v = Vmdesk::new();
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    v.json(&["project", "create", "p"]);
    v.json(&["project", "create", "empty"]);
    v.json(&["user", "add", "bob", "--credits", "100"]);
    v.json(&["user", "add", "eve"]);
    v.json(&[
        "vm",
        "add",
        "vm1",
        "--pool",
        "p",
        "--host",
        "local",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    v.json(&[
        "--as",
        "bob",
        "session",
        "open",
        "--project",
        "p",
        "--no-wait",
    ]);
    v
}

/// Runs each case and checks the exit, the single line and the database.
fn refused(v: &Vmdesk, cases: &[(&[&str], &str)]) {
    for (args, expected) in cases {
        let before = v.snapshot();
        let err = v.fails(args);
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
        assert!(err.starts_with("error: "), "{args:?}: {err:?}");
        assert!(
            err.contains(expected),
            "{args:?}: {err:?} does not say {expected:?}"
        );
        // Only the trace of a refused action (a warning event) may be added.
        let after: Vec<String> = v
            .snapshot()
            .into_iter()
            .filter(|row| {
                !(row.contains(".failed\"") || row.contains(".refused\"")) || before.contains(row)
            })
            .collect();
        assert_eq!(after, before, "{args:?} changed the database");
    }
}

const VM: [&str; 6] = ["--pool", "p", "--host", "local", "--disk-gb", "1"];

fn vm_add<'a>(name: &'a str, ram: &'a str, cpus: &'a str, disk: &'a str) -> Vec<&'a str> {
    vec![
        "vm",
        "add",
        name,
        "--pool",
        "p",
        "--host",
        "local",
        "--ram-mb",
        ram,
        "--disk-gb",
        disk,
        "--cpus",
        cpus,
    ]
}

#[test]
fn zero_negative_and_absurd_sizes_are_refused() {
    let v = setup();
    let _ = VM;
    refused(
        &v,
        &[
            (
                &vm_add("a", "0", "1", "1"),
                "memory must be between 64 and 1048576 MB, not 0",
            ),
            (
                &vm_add("a", "-512", "1", "1"),
                "memory must be between 64 and 1048576 MB, not -512",
            ),
            (
                &vm_add("a", "99999999999", "1", "1"),
                "memory must be between",
            ),
            (
                &vm_add("a", "64", "0", "1"),
                "the number of CPUs must be between 1 and 256, not 0",
            ),
            (
                &vm_add("a", "64", "-2", "1"),
                "the number of CPUs must be between 1 and 256, not -2",
            ),
            (
                &vm_add("a", "64", "100000", "1"),
                "the number of CPUs must be between",
            ),
            (
                &vm_add("a", "64", "1", "0"),
                "disk must be between 1 and 65536 GB, not 0",
            ),
            (&vm_add("a", "64", "1", "-1"), "disk must be between"),
            (
                &vm_add("a", "64", "1", "1000000000"),
                "disk must be between",
            ),
            (&vm_add("a", "lots", "1", "1"), "invalid value 'lots'"),
            (
                &["quote", "--ram-mb", "0", "--disk-gb", "20", "--cpus", "2"],
                "memory must be between",
            ),
            (
                &[
                    "quote",
                    "--ram-mb",
                    "1024",
                    "--disk-gb",
                    "20",
                    "--cpus",
                    "-1",
                ],
                "the number of CPUs must be between",
            ),
        ],
    );
}

#[test]
fn empty_long_and_metacharacter_names_are_refused() {
    let v = setup();
    let long = "a".repeat(300);
    refused(
        &v,
        &[
            (&vm_add("", "64", "1", "1"), "the VM name is empty"),
            (
                &vm_add(&long, "64", "1", "1"),
                "the VM name is 300 characters long; at most 63 are allowed",
            ),
            (
                &vm_add("a<b>&'\"", "64", "1", "1"),
                "may hold only letters, digits",
            ),
            (
                &vm_add("x;rm -rf", "64", "1", "1"),
                "may hold only letters, digits",
            ),
            (
                &vm_add("../etc", "64", "1", "1"),
                "may hold only letters, digits",
            ),
            (&["user", "add", ""], "the user name is empty"),
            (
                &["user", "add", &long],
                "the user name is 300 characters long",
            ),
            (&["user", "add", "b$(id)"], "may hold only letters, digits"),
            (
                &["project", "create", "<p>"],
                "may hold only letters, digits",
            ),
            (
                &["workspace", "create", "w&", "--project", "p"],
                "may hold only letters, digits",
            ),
            (
                &["host", "add", "h'", "--uri", "test:///default"],
                "may hold only letters, digits",
            ),
            (
                &["host", "add", "h2", "--uri", "not a uri"],
                "is not a connection URI",
            ),
            (
                &["user", "add", "bob"],
                "a user named \"bob\" already exists",
            ),
            (
                &vm_add("vm1", "64", "1", "1"),
                "a VM named \"vm1\" already exists",
            ),
        ],
    );
}

#[test]
fn unknown_users_projects_hosts_and_sessions_are_named() {
    let v = setup();
    refused(
        &v,
        &[
            (&["--as", "ghost", "vm", "list"], "no user named \"ghost\""),
            (
                &["--as", "ghost", "session", "open", "--project", "p"],
                "no user named \"ghost\"",
            ),
            (
                &["credits", "grant", "ghost", "10", "--reason", "x"],
                "no user named \"ghost\"",
            ),
            (
                &["session", "open", "--project", "nope"],
                "no project named \"nope\"",
            ),
            (
                &["session", "open", "--project", "p", "--workspace", "nope"],
                "project \"p\" has no workspace named \"nope\"",
            ),
            (
                &[
                    "vm",
                    "add",
                    "a",
                    "--pool",
                    "p",
                    "--host",
                    "nope",
                    "--ram-mb",
                    "64",
                    "--disk-gb",
                    "1",
                    "--cpus",
                    "1",
                ],
                "no host named \"nope\"",
            ),
            (
                &[
                    "vm",
                    "add",
                    "a",
                    "--pool",
                    "nope",
                    "--host",
                    "local",
                    "--ram-mb",
                    "64",
                    "--disk-gb",
                    "1",
                    "--cpus",
                    "1",
                ],
                "no project named \"nope\"",
            ),
            (&["session", "close", "9999"], "no session with id 9999"),
            (&["vm", "show", "nope"], "no VM named \"nope\""),
            (
                &["workspace", "create", "w", "--project", "nope"],
                "no project named \"nope\"",
            ),
            (
                &["session", "open", "--project", "empty"],
                "project \"empty\" has no VMs in its pool",
            ),
            (
                &["session", "open", "--project", "p"],
                "all 1 VMs of project \"p\" are in use",
            ),
            (
                &["session", "open", "--project", "p", "--type", "gpu"],
                "project \"p\" has no VM of type \"gpu\"",
            ),
        ],
    );
}

#[test]
fn non_admins_cannot_do_admin_things() {
    let v = setup();
    refused(
        &v,
        &[
            (
                &[
                    "--as", "bob", "credits", "grant", "bob", "100", "--reason", "gift",
                ],
                "only an administrator may grant credits",
            ),
            (
                &["--as", "bob", "user", "add", "mallory", "--admin"],
                "only an administrator may add users",
            ),
            (
                &[
                    "--as",
                    "bob",
                    "host",
                    "add",
                    "h",
                    "--uri",
                    "test:///default",
                ],
                "only an administrator may add hosts",
            ),
            (
                &["--as", "bob", "project", "create", "q"],
                "only an administrator may create projects",
            ),
            (
                &["--as", "bob", "vm", "list", "--all"],
                "only an administrator may list every user's VMs",
            ),
            (
                &["--as", "bob", "session", "list", "--all"],
                "only an administrator may list every user's sessions",
            ),
            (
                &["--as", "bob", "credits", "show", "eve"],
                "only an administrator may see another user's credits",
            ),
            (
                &["--as", "eve", "session", "close", "1"],
                "user \"eve\" may not close session 1 of bob",
            ),
        ],
    );
}

#[test]
fn bad_grants_are_refused() {
    let v = setup();
    refused(
        &v,
        &[
            (
                &["credits", "grant", "bob", "0", "--reason", "x"],
                "a grant must be between 1 and 1000000000 credits, not 0",
            ),
            (
                &["credits", "grant", "bob", "-5", "--reason", "x"],
                "a grant must be between 1 and 1000000000 credits, not -5",
            ),
            (
                &["credits", "grant", "bob", "1000000000000", "--reason", "x"],
                "a grant must be between",
            ),
            (
                &["credits", "grant", "bob", "10", "--reason", ""],
                "the reason is empty",
            ),
            (
                &["events", "--limit", "0"],
                "the limit must be between 1 and 10000",
            ),
            (&["--view", "nowhere", "events"], "invalid value 'nowhere'"),
        ],
    );
}

#[test]
fn bad_vm_creations_and_foreign_actions_are_refused() {
    let v = setup();
    v.json(&[
        "--as",
        "bob",
        "vm",
        "create",
        "mine",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
        "--no-start",
    ]);
    refused(
        &v,
        &[
            (
                &[
                    "--as",
                    "bob",
                    "vm",
                    "create",
                    "x",
                    "--ram-mb",
                    "64",
                    "--disk-gb",
                    "1",
                    "--cpus",
                    "1",
                    "--os",
                    "plan9",
                ],
                "unknown OS \"plan9\"",
            ),
            (
                &[
                    "--as",
                    "bob",
                    "vm",
                    "create",
                    "x",
                    "--ram-mb",
                    "0",
                    "--disk-gb",
                    "1",
                    "--cpus",
                    "1",
                ],
                "memory must be between",
            ),
            (
                &[
                    "--as",
                    "bob",
                    "vm",
                    "create",
                    "x<y",
                    "--ram-mb",
                    "64",
                    "--disk-gb",
                    "1",
                    "--cpus",
                    "1",
                ],
                "may hold only letters",
            ),
            (
                &[
                    "--as",
                    "bob",
                    "vm",
                    "create",
                    "x",
                    "--ram-mb",
                    "64",
                    "--disk-gb",
                    "1",
                    "--cpus",
                    "1",
                    "--host",
                    "nope",
                ],
                "no host named \"nope\"",
            ),
            (
                &[
                    "--as",
                    "eve",
                    "vm",
                    "create",
                    "x",
                    "--ram-mb",
                    "64",
                    "--disk-gb",
                    "1",
                    "--cpus",
                    "1",
                ],
                "not enough credits: the cost is 11 but the balance of \"eve\" is 0",
            ),
            (
                &["--as", "eve", "vm", "stop", "mine"],
                "no VM named \"mine\"",
            ),
            (
                &["--as", "eve", "vm", "destroy", "mine"],
                "no VM named \"mine\"",
            ),
            (
                &["--as", "eve", "vm", "meta", "mine", "a=b"],
                "no VM named \"mine\"",
            ),
            (
                &["--as", "bob", "vm", "meta", "mine", "novalue"],
                "\"novalue\" is not KEY=VALUE",
            ),
            (
                &["vm", "destroy", "vm1"],
                "VM vm1 is held by session 1; close the session first",
            ),
        ],
    );
}
