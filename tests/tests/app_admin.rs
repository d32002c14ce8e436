//! A lab admin's corrections in the real app (Xvfb + tauri-driver +
//! WebKitWebDriver), on the real QEMU host, screenshots in target/artifacts/:
//! an adjustment that would go below zero is stopped as it is typed, one
//! that fits shows in the user's ledger (the Credits view's *Whose*), and a
//! creation the host refused is refunded once from *Failed creations*; the
//! CLI's sync, recovery and port cleanup run from the Admin view; a
//! project's cost controls are set and shown in the Pools view.
#![allow(missing_docs)]

use vmdesk_tests::{e2e, Vmdesk};

#[test]
fn an_admin_adjusts_a_balance_and_refunds_a_failed_creation_in_the_window() {
    let v = Vmdesk::new();
    v.qemu_and_ann(5000);
    // The host refuses ann's VM: FAILED_TO_START, charged.
    let (_vm, _cleanup, cost) = v.failed_creation("wide");
    let after_charge = 5000 - cost;

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &[], 0, "admin").await;
        app.nav("admin").await;
        let ann_balance = r#"[data-testid="user-balance-ann"]"#;
        app.wait_text(ann_balance, "ann's balance", |s| {
            s.replace(',', "") == after_charge.to_string()
        })
        .await;

        // Too much: the form says so as it is typed and will not submit.
        app.select(r#"select[aria-label="Adjust the credits of"]"#, "ann")
            .await;
        app.fill(r#"[data-testid="adjust-amount"]"#, "-99999").await;
        app.fill(r#"[data-testid="adjust-reason"]"#, "a double grant")
            .await;
        let problem = app
            .wait_text(r#"[data-testid="adjust-problem"]"#, "the problem", |s| {
                !s.is_empty()
            })
            .await;
        assert!(problem.contains("below zero"), "{problem}");
        let submit = app.find(r#"[data-testid="adjust-submit"]"#).await;
        assert!(!submit.is_enabled().await.expect("enabled?"));
        app.shot("adjust-too-much").await;

        // One that fits: the balance follows.
        app.fill(r#"[data-testid="adjust-amount"]"#, "-40").await;
        app.click(r#"[data-testid="adjust-submit"]"#).await;
        let want = (after_charge - 40).to_string();
        app.wait_text(ann_balance, &want, |s| s.replace(',', "") == want)
            .await;
        app.shot("adjusted").await;

        // The failed creation: refunded once, then no longer listed.
        app.fill(r#"[data-testid="refund-reason-wide"]"#, "the host refused it")
            .await;
        app.click(r#"[data-testid="refund-wide"]"#).await;
        app.wait_text(r#"[data-testid="refunds-empty"]"#, "nothing to refund", |s| {
            !s.is_empty()
        })
        .await;
        let want = (5000 - 40).to_string();
        app.wait_text(ann_balance, &want, |s| s.replace(',', "") == want)
            .await;
        app.shot("refunded").await;

        // The CLI's maintenance commands, from the Admin view.
        let note = r#"p.note[role="status"]"#;
        app.click(r#"[data-testid="admin-sync"]"#).await;
        app.wait_text(note, "the sync's note", |s| s.starts_with("Status sync:"))
            .await;
        app.click(r#"[data-testid="admin-recover"]"#).await;
        app.wait_text(note, "the recovery's note", |s| {
            s.contains("recover") || s.contains("Recovery")
        })
        .await;
        app.click(r#"[data-testid="admin-ports-cleanup"]"#).await;
        app.wait_text(note, "the cleanup's note", |s| s.contains("console port"))
            .await;
        app.shot("maintenance").await;

        // ann's ledger, from the admin's Credits view.
        app.nav("credits").await;
        app.select(r#"[data-testid="credits-whose"]"#, "ann").await;
        app.wait_text(r#"[data-testid="credits-user"]"#, "ann", |s| s == "ann")
            .await;
        let rows = app
            .wait_text(r#"[data-testid="ledger-row"]"#, "the newest entry", |s| {
                s.contains("Refund")
            })
            .await;
        assert!(rows.contains("the host refused it"), "{rows}");
        let all = app
            .c
            .execute(
                r#"return [...document.querySelectorAll('[data-testid="ledger-row"]')].map(r => r.innerText).join('\n');"#,
                vec![],
            )
            .await
            .expect("ledger rows");
        let all = all.as_str().unwrap_or_default().to_owned();
        assert!(all.contains("Adjustments") && all.contains("a double grant"), "{all}");
        assert!(all.contains("-40"), "{all}");
        app.shot("ann-ledger").await;

        // A project's cost controls, set in the Pools view and shown there.
        v.json(&["project", "create", "lab"]);
        v.json(&["project", "limits", "lab", "--max-session-minutes", "120"]);
        app.nav("pools").await;
        app.wait_text(r#"[data-testid="pool-limits-lab"]"#, "the limits", |s| {
            s == "Sessions end after 2 h."
        })
        .await;
        app.click(r#"[data-testid="limits-edit-lab"]"#).await;
        app.fill(r#"[data-testid="limit-idle"]"#, "30").await;
        app.fill(r#"[data-testid="limit-weekly"]"#, "6").await;
        app.shot("limits-form").await;
        app.click(r#"[data-testid="limits-save"]"#).await;
        app.wait_text(r#"[data-testid="pool-limits-lab"]"#, "the new limits", |s| {
            s.contains("closed when idle 30 min") && s.contains("6 h of sessions a week each")
        })
        .await;
        app.shot("limits-shown").await;
        app.close().await;
    });
    assert_eq!(v.json(&["credits", "show", "ann"])["balance"], 4960);
    assert_eq!(
        v.count("SELECT count(*) FROM ledger WHERE kind = 'refund'"),
        1
    );
}
