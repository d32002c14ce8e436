//! The ARM test server against the real `azure_mgmt_compute` client and
//! `ClientSecretCredential`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::headers::HeaderName;
use azure_core::Url;
use azure_identity::ClientSecretCredential;
use azure_mgmt_compute::Client;
use futures::StreamExt;
use vmdesk_tests::arm::{ArmConfig, ArmServer, Fault, Power};

const SUB: &str = "00000000-0000-0000-0000-000000000001";
const SCOPE: &str = "https://management.azure.com/.default";

fn credential(server: &ArmServer, secret: &str) -> Arc<ClientSecretCredential> {
    let c = server.config();
    Arc::new(ClientSecretCredential::new(
        azure_core::new_http_client(),
        Url::parse(&server.url()).expect("server URL"),
        c.tenant.clone(),
        c.client_id.clone(),
        secret.to_owned(),
    ))
}

fn client_with(server: &ArmServer, secret: &str) -> Client {
    Client::builder(credential(server, secret))
        .endpoint(Url::parse(&server.url()).expect("server URL"))
        .scopes(&[SCOPE])
        .retry(azure_core::RetryOptions::none())
        .build()
        .expect("ARM client")
}

fn client(server: &ArmServer) -> Client {
    client_with(server, &server.config().client_secret)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn power_code(statuses: &[azure_mgmt_compute::models::InstanceViewStatus]) -> Option<String> {
    statuses
        .iter()
        .filter_map(|s| s.code.clone())
        .find(|c| c.starts_with("PowerState/"))
}

/// The HTTP status of a failed client call.
fn status_of(e: &azure_core::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::HttpResponse { status, .. } => Some(u16::from(*status)),
        _ => None,
    }
}

#[test]
fn list_all_status_only_pages_through_every_vm() {
    let server = ArmServer::start();
    server.add_vms(SUB, "rg-a", "vm-", 2000, "Standard_B2s", Power::Running);
    server.add_vms(
        SUB,
        "rg-b",
        "db-",
        500,
        "Standard_E2s_v5",
        Power::Deallocated,
    );
    let client = client(&server);
    let pages = rt().block_on(async {
        let mut stream = client
            .virtual_machines_client()
            .list_all(SUB)
            .status_only("true")
            .into_stream();
        let mut pages = Vec::new();
        while let Some(page) = stream.next().await {
            pages.push(page.expect("a page"));
        }
        pages
    });
    assert_eq!(pages.len(), 3);
    let vms: Vec<_> = pages.into_iter().flat_map(|p| p.value).collect();
    assert_eq!(vms.len(), 2500);
    let mut names = std::collections::HashSet::new();
    for vm in &vms {
        let name = vm.resource.name.clone().expect("name");
        let statuses = vm
            .properties
            .as_ref()
            .and_then(|p| p.instance_view.as_ref())
            .map(|v| v.statuses.clone())
            .expect("statuses");
        let want = if name.starts_with("vm-") {
            "PowerState/running"
        } else {
            "PowerState/deallocated"
        };
        assert_eq!(power_code(&statuses).as_deref(), Some(want), "{name}");
        assert_eq!(vm.resource.location, "westeurope");
        names.insert(name);
    }
    assert_eq!(names.len(), 2500);
    let calls = server.calls();
    assert_eq!((calls.list, calls.token, calls.arm()), (3, 1, 3));
}

#[test]
fn list_of_a_group_gives_the_model_and_unknown_scopes_are_404() {
    let server = ArmServer::with_config(ArmConfig {
        page_size: 2,
        ..ArmConfig::default()
    });
    server.add_vms(SUB, "Rg-A", "web-", 5, "Standard_D2s_v5", Power::Stopped);
    server.add_vm(SUB, "rg-b", "other", "Standard_B1s", Power::Running);
    let vms = client(&server).virtual_machines_client();
    rt().block_on(async {
        let mut stream = vms.list("rg-a", SUB).into_stream();
        let mut names = Vec::new();
        while let Some(page) = stream.next().await {
            for vm in page.expect("a page").value {
                let props = vm.properties.expect("properties");
                assert!(props.instance_view.is_none());
                let size = props.hardware_profile.and_then(|h| h.vm_size);
                assert_eq!(serde_json::to_value(size).expect("size"), "Standard_D2s_v5");
                let disk = props.storage_profile.and_then(|s| s.os_disk).expect("disk");
                assert_eq!(disk.disk_size_gb, Some(30));
                assert!(vm
                    .resource
                    .id
                    .expect("id")
                    .contains("/resourceGroups/Rg-A/"));
                names.push(vm.resource.name.expect("name"));
            }
        }
        assert_eq!(names, ["web-0", "web-1", "web-2", "web-3", "web-4"]);

        let e = vms.list("nope", SUB).into_stream().next().await;
        assert_eq!(status_of(&e.expect("a page").expect_err("404")), Some(404));
        let e = vms.list_all("other-sub").into_stream().next().await;
        assert_eq!(status_of(&e.expect("a page").expect_err("404")), Some(404));
    });
    assert_eq!(server.calls().list, 5);
}

#[test]
fn instance_view_gives_the_power_state_case_insensitively() {
    let server = ArmServer::start();
    server.add_vm(SUB, "rg", "Box", "Standard_B2s", Power::Running);
    let vms = client(&server).virtual_machines_client();
    rt().block_on(async {
        let view = vms
            .instance_view("RG", "box", SUB)
            .await
            .expect("instance view");
        assert_eq!(
            power_code(&view.statuses).as_deref(),
            Some("PowerState/running")
        );
        assert_eq!(view.computer_name.as_deref(), Some("Box"));
        let e = vms
            .instance_view("rg", "ghost", SUB)
            .await
            .expect_err("no such VM");
        assert!(
            matches!(e.kind(), ErrorKind::HttpResponse { status, error_code }
                if u16::from(*status) == 404 && error_code.as_deref() == Some("ResourceNotFound")),
            "{e:?}"
        );
        let vm = vms.get("rg", "BOX", SUB).await.expect("get");
        assert_eq!(vm.resource.name.as_deref(), Some("Box"));
        let sizes = client(&server)
            .virtual_machine_sizes_client()
            .list("westeurope", SUB)
            .send()
            .await
            .expect("sizes")
            .into_body()
            .await
            .expect("sizes body");
        let b2s = sizes
            .value
            .iter()
            .find(|s| s.name.as_deref() == Some("Standard_B2s"))
            .expect("B2s");
        assert_eq!(
            (b2s.number_of_cores, b2s.memory_in_mb),
            (Some(2), Some(4096))
        );
    });
    let calls = server.calls();
    assert_eq!((calls.instance_view, calls.get, calls.sizes), (2, 1, 1));
    assert_eq!(server.reads_of(SUB, "rg", "box"), 2);
}

#[test]
fn start_answers_202_and_its_operation_succeeds() {
    let server = ArmServer::with_config(ArmConfig {
        op_duration: Duration::from_millis(800),
        ..ArmConfig::default()
    });
    server.add_vm(SUB, "rg", "vm1", "Standard_B1s", Power::Stopped);
    let client = client(&server);
    let credential = credential(&server, "s3cret");
    rt().block_on(async {
        let rsp = client
            .virtual_machines_client()
            .start("rg", "vm1", SUB)
            .send()
            .await
            .expect("start")
            .into_raw_response();
        assert_eq!(u16::from(rsp.status()), 202);
        let header = |n| rsp.headers().get_optional_str(&HeaderName::from_static(n));
        let op = header("azure-asyncoperation").expect("Azure-AsyncOperation");
        assert!(op.starts_with(&server.url()), "{op}");
        assert_eq!(header("location"), Some(&*format!("{op}&monitor=true")));
        assert_eq!(server.power(SUB, "rg", "vm1"), Some(Power::Starting));

        let token = credential.get_token(&[SCOPE]).await.expect("token");
        let http = reqwest::Client::new();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let body = http
                .get(op)
                .bearer_auth(token.token.secret())
                .send()
                .await
                .expect("poll")
                .bytes()
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            let status = v["status"].as_str().expect("status").to_owned();
            assert!(v["startTime"].is_string());
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            if status == "Succeeded" {
                assert!(v["endTime"].is_string());
                break;
            }
            assert!(Instant::now() < deadline, "the operation never ended");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, ["InProgress", "Succeeded"]);
        let view = client
            .virtual_machines_client()
            .instance_view("rg", "vm1", SUB)
            .await
            .expect("instance view");
        assert_eq!(
            power_code(&view.statuses).as_deref(),
            Some("PowerState/running")
        );
    });
    assert_eq!(server.power(SUB, "rg", "vm1"), Some(Power::Running));
    let calls = server.calls();
    assert_eq!(calls.action, 1);
    assert!(calls.operation >= 2);
}

#[test]
fn a_wrong_secret_or_token_is_refused() {
    let server = ArmServer::start();
    server.add_vm(SUB, "rg", "vm1", "Standard_B1s", Power::Running);
    let client = client_with(&server, "wrong");
    rt().block_on(async {
        let e = client
            .virtual_machines_client()
            .instance_view("rg", "vm1", SUB)
            .await
            .expect_err("refused");
        assert_eq!(e.kind(), &ErrorKind::Credential, "{e:?}");

        let http = reqwest::Client::new();
        let url = format!(
            "{}/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01",
            server.url()
        );
        for rsp in [
            http.get(&url).send().await,
            http.get(&url).bearer_auth("forged").send().await,
        ] {
            let rsp = rsp.expect("answer");
            assert_eq!(rsp.status().as_u16(), 401);
            let v: serde_json::Value =
                serde_json::from_slice(&rsp.bytes().await.expect("body")).expect("JSON");
            assert_eq!(v["error"]["code"], "AuthenticationFailed");
        }
        let token = credential(&server, "s3cret")
            .get_token(&[SCOPE])
            .await
            .expect("token");
        let no_version = url.split('?').next().expect("path");
        let rsp = http
            .get(no_version)
            .bearer_auth(token.token.secret())
            .send()
            .await
            .expect("answer");
        assert_eq!(rsp.status().as_u16(), 400);
    });
    let calls = server.calls();
    assert_eq!((calls.token, calls.list, calls.instance_view), (2, 3, 0));
}

#[test]
fn injected_faults_surface_as_http_errors() {
    let server = ArmServer::start();
    server.add_vm(SUB, "rg", "vm1", "Standard_B1s", Power::Running);
    let vms = client(&server).virtual_machines_client();
    server.fail_next(
        1,
        Fault::Throttle {
            retry_after_secs: 7,
        },
    );
    server.fail_next(1, Fault::Status(503));
    server.fail_next(1, Fault::Delay(Duration::from_millis(300)));
    rt().block_on(async {
        let read = || vms.instance_view("rg", "vm1", SUB);
        let e = read().await.expect_err("429");
        assert!(
            matches!(e.kind(), ErrorKind::HttpResponse { status, error_code }
                if u16::from(*status) == 429 && error_code.as_deref() == Some("TooManyRequests")),
            "{e:?}"
        );
        assert_eq!(status_of(&read().await.expect_err("503")), Some(503));
        let t = Instant::now();
        read().await.expect("a slow answer");
        assert!(t.elapsed() >= Duration::from_millis(300));
        server.set_outage(Some(500));
        assert_eq!(status_of(&read().await.expect_err("outage")), Some(500));
        server.set_outage(None);
        read().await.expect("normal again");
    });
    let calls = server.calls();
    assert_eq!(
        (calls.instance_view, calls.injected, calls.throttled),
        (5, 4, 0)
    );
}

#[test]
fn the_per_vm_read_budget_throttles_after_its_burst() {
    let server = ArmServer::start();
    server.add_vm(SUB, "rg", "vm1", "Standard_B1s", Power::Running);
    server.add_vm(SUB, "rg", "vm2", "Standard_B1s", Power::Running);
    let vms = client(&server).virtual_machines_client();
    let token = rt().block_on(async {
        for i in 0..36 {
            vms.instance_view("rg", "vm1", SUB)
                .await
                .unwrap_or_else(|e| panic!("read {i}: {e:?}"));
        }
        let e = vms
            .instance_view("rg", "vm1", SUB)
            .await
            .expect_err("throttled");
        assert_eq!(status_of(&e), Some(429));
        vms.instance_view("rg", "vm2", SUB)
            .await
            .expect("another VM has its own budget");
        credential(&server, "s3cret")
            .get_token(&[SCOPE])
            .await
            .expect("token")
    });
    let (status, retry_after) = rt().block_on(async {
        let rsp = reqwest::Client::new()
            .get(format!(
                "{}/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/instanceView?api-version=2024-07-01",
                server.url()
            ))
            .bearer_auth(token.token.secret())
            .send()
            .await
            .expect("answer");
        let retry_after = rsp.headers()["retry-after"]
            .to_str()
            .expect("text")
            .parse::<u64>()
            .expect("seconds");
        (rsp.status().as_u16(), retry_after)
    });
    assert_eq!(status, 429);
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    assert_eq!(server.calls().throttled, 2);
    assert_eq!(server.reads_of(SUB, "rg", "vm1"), 38);
    assert!(server.log().iter().any(|l| l.ends_with("-> 429")));
}

#[test]
fn ten_thousand_vms_are_cheap() {
    let server = ArmServer::start();
    let t = Instant::now();
    let names = server.add_vms(SUB, "rg", "vm", 10_000, "Standard_B1s", Power::Running);
    assert_eq!(
        (names[0].as_str(), names[9999].as_str()),
        ("vm0000", "vm9999")
    );
    let client = client(&server);
    let count = rt().block_on(async {
        let mut stream = client.virtual_machines_client().list_all(SUB).into_stream();
        let mut count = 0;
        while let Some(page) = stream.next().await {
            count += page.expect("a page").value.len();
        }
        count
    });
    assert_eq!(count, 10_000);
    assert_eq!(server.calls().list, 10);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}
