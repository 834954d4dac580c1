//! Transport security and credentials against the real programs over real sockets: clients
//! that do not trust a server's certificate are refused, clear text only when asked for, a
//! vehicle's bound certificate works for it and for no other VIN, revoked and expired
//! credentials of every kind are refused with 401 and logged, a one-time provisioning token
//! survives a `kill -9` of the Director mid-registration without becoming reusable,
//! certificates are reloaded on SIGHUP, and a sniffer sees tokens only on an `--insecure`
//! link.
//!
//! Expiry is tested by injecting time: credentials are issued "in the past" through the
//! servers' own libraries on their own storage, never by waiting.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;
use service_runtime::pki::Ca;
use uptane_tests::proxy::LinkProxy;
use uptane_tests::sim::{Fleet, LIMIT, SimVehicle, VehicleSpec, wait_until};
use uptane_tests::{bin, blocking, run, run_ok, spawn_listening};

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

fn no_secondaries(vin: &str) -> VehicleSpec {
    VehicleSpec {
        vin: vin.into(),
        single_bank: Vec::new(),
        secondaries: Vec::new(),
    }
}

/// A `director` operator command; (success, stdout, stderr).
fn operator(fleet: &Fleet, args: &[&str], token: &str, ca: &str) -> (bool, String, String) {
    let (status, out, err) = run(
        Command::new(bin("director")).args(args).args([
            "--server",
            &fleet.director_url,
            "--token",
            token,
            "--ca-cert",
            ca,
            "--json",
        ]),
        LIMIT,
    );
    (status.success(), out, err)
}

/// The Director's security events of `kind`, newest first.
fn security_events(fleet: &Fleet, kind: &str) -> Vec<Value> {
    match fleet.operator(&["events", "--security"]) {
        Value::Array(events) => events.into_iter().filter(|e| e["kind"] == kind).collect(),
        _ => Vec::new(),
    }
}

/// An HTTPS client trusting the fleet's CA, presenting the TLS identity in `dir/tls`.
fn client_with_certificate(fleet: &Fleet, dir: &std::path::Path) -> reqwest::Client {
    let identity = service_runtime::tls::Identity::from_pem_files(
        &dir.join("tls/cert.pem"),
        &dir.join("tls/key.pem"),
    )
    .unwrap();
    service_runtime::http::ClientTls::new(Some(&fleet.ca_cert), Some(identity), false)
        .unwrap()
        .reqwest()
        .unwrap()
        .build()
        .unwrap()
}

#[test]
fn clients_refuse_servers_they_do_not_trust_and_clear_text_unless_insecure() {
    let fleet = Fleet::start();
    let stranger = fleet.path("stranger-ca.pem");
    std::fs::write(&stranger, Ca::generate("another CA").unwrap().cert_pem()).unwrap();
    let stranger = stranger.display().to_string();

    // The operator's command, trusting another CA.
    let (ok, _, err) = operator(&fleet, &["vehicle", "list"], &fleet.token, &stranger);
    assert!(!ok);
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Trusting no CA file at all: the system's roots do not know the fleet's CA either.
    let (status, _, err) = run(
        Command::new(bin("director")).args([
            "vehicle",
            "list",
            "--server",
            &fleet.director_url,
            "--token",
            &fleet.token,
        ]),
        LIMIT,
    );
    assert!(!status.success(), "{err}");
    // Clear text: refused before anything is sent, unless asked for by name.
    let plaintext = fleet.director_url.replace("https://", "http://");
    let (status, _, err) = run(
        Command::new(bin("director")).args([
            "vehicle",
            "list",
            "--server",
            &plaintext,
            "--token",
            &fleet.token,
        ]),
        LIMIT,
    );
    assert!(!status.success());
    assert!(err.contains("plaintext http://"), "{err}");

    // A Primary trusting another CA registers nothing and updates nothing.
    let mut vehicle = SimVehicle::prepare(&fleet, &no_secondaries("TLSVIN0001"));
    vehicle.set_ca_cert(std::path::Path::new(&stranger));
    let err = vehicle
        .init_primary(&fleet, &fleet.provisioning_token)
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // And one given http:// URLs refuses them at once.
    vehicle.set_ca_cert(&fleet.ca_cert);
    vehicle.set_director_url(&plaintext);
    let err = vehicle
        .init_primary(&fleet, &fleet.provisioning_token)
        .unwrap_err();
    assert!(err.contains("plaintext http://"), "{err}");
    assert_eq!(fleet.operator(&["vehicle", "list"]), serde_json::json!([]));

    // A publisher trusting another CA uploads nothing.
    let image = fleet.path("image.bin");
    std::fs::write(&image, b"image").unwrap();
    let token = run_ok(
        Command::new(bin("image-repo")).args([
            "token",
            "create",
            "--repo",
            &fleet.path("repo").display().to_string(),
            "--role",
            "targets",
        ]),
        LIMIT,
    );
    let (status, _, err) = run(
        Command::new(bin("image-repo")).args([
            "add",
            "--server",
            &fleet.image_url,
            "--token",
            token.trim(),
            "--ca-cert",
            &stranger,
            "--offline-keys",
            &fleet.path("repo-keys").display().to_string(),
            "--name",
            "x.bin",
            "--hardware-id",
            "hw",
            &image.display().to_string(),
        ]),
        LIMIT,
    );
    assert!(!status.success());
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn a_vehicle_certificate_works_for_its_own_vin_and_is_refused_for_another() {
    let fleet = Fleet::start();
    let a = SimVehicle::provision(&fleet, &no_secondaries("CERTVIN0001"));
    let b = SimVehicle::provision(&fleet, &no_secondaries("CERTVIN0002"));
    // Registration bound each Primary's certificate to its vehicle.
    let credentials = fleet.operator(&["vehicle", "credentials"]);
    let bound: Vec<&Value> = credentials
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["tls_fingerprint"])
        .collect();
    assert!(bound.iter().all(|f| f.is_string()), "{credentials}");

    let client = client_with_certificate(&fleet, &a.primary_dir);
    let url = |vin: &str| format!("{}/vehicles/{vin}/metadata/1.root.json", fleet.director_url);
    // A's certificate alone (no bearer credential) authenticates A.
    let status = blocking(async { client.get(url(&a.vin)).send().await.unwrap().status() });
    assert_eq!(status, 200);
    // A's certificate for B: 403, even with B's own bearer credential, and logged.
    let b_credential = std::fs::read_to_string(b.primary_dir.join("credential")).unwrap();
    let (status, body) = blocking(async {
        let response = client
            .get(url(&b.vin))
            .bearer_auth(b_credential.trim())
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    });
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("bound to another vehicle"), "{body}");
    let refused = security_events(&fleet, "vehicle_auth_refused");
    let event = refused
        .iter()
        .find(|e| e["vin"] == b.vin.as_str())
        .expect("a security event for the refusal");
    assert_eq!(event["attack"], "wrong_vehicle");
    assert_eq!(event["actor"], format!("vehicle:{}", a.vin));
    // Updates keep working for both.
    assert_eq!(a.once().0, 0);
    assert_eq!(b.once().0, 0);
}

#[test]
fn revoked_and_expired_credentials_of_every_kind_are_refused_and_logged() {
    let mut fleet = Fleet::start();
    fleet.publish_through_server();
    let vehicle = SimVehicle::provision(&fleet, &no_secondaries("REVOKEVIN01"));
    assert_eq!(vehicle.once().0, 0);
    let ca = fleet.ca_cert.display().to_string();
    let db = fleet.director_db();

    // Operator tokens: revoked by id; expired (issued "31 days ago" for 30 days).
    let second = run_ok(
        Command::new(bin("director")).args([
            "token",
            "create",
            "--dir",
            &fleet.path("director").display().to_string(),
            "--label",
            "temp",
        ]),
        LIMIT,
    );
    let listed = run_ok(
        Command::new(bin("director")).args([
            "token",
            "list",
            "--json",
            "--dir",
            &fleet.path("director").display().to_string(),
        ]),
        LIMIT,
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert!(
        !listed.to_string().contains(second.trim()),
        "a listing shows no secret"
    );
    let id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "temp")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(operator(&fleet, &["vehicle", "list"], second.trim(), &ca).0);
    run_ok(
        Command::new(bin("director")).args([
            "token",
            "revoke",
            "--dir",
            &fleet.path("director").display().to_string(),
            "--id",
            &id,
        ]),
        LIMIT,
    );
    let (ok, _, err) = operator(&fleet, &["vehicle", "list"], second.trim(), &ca);
    assert!(!ok);
    assert!(err.contains("HTTP 401") && err.contains("revoked"), "{err}");
    let expired = db
        .call_blocking(|conn| {
            director::service::create_api_token(
                conn,
                "old",
                chrono::Duration::days(30),
                now() - chrono::Duration::days(31),
            )
        })
        .unwrap();
    let (ok, _, err) = operator(&fleet, &["vehicle", "list"], &expired, &ca);
    assert!(!ok);
    assert!(err.contains("HTTP 401") && err.contains("expired"), "{err}");
    let refusals = security_events(&fleet, "unauthorized_api_call");
    assert!(refusals.len() >= 2, "{refusals:?}");

    // The vehicle credential: revoked (and the certificate binding with it), the vehicle
    // refused; re-issued and installed, the vehicle updates again.
    fleet.operator(&["vehicle", "revoke-credential", &vehicle.vin]);
    let (code, summary) = vehicle.once();
    // Refused by a server (docs/CLI.md), not "unreachable": the Director answered.
    assert_eq!(code, 5, "{summary}");
    assert!(summary.contains("401"), "{summary}");
    assert!(!security_events(&fleet, "vehicle_auth_refused").is_empty());
    vehicle.use_credential_only(&fleet).unwrap();
    let (code, summary) = vehicle.once();
    assert_eq!(code, 0, "{summary}");
    // Expired: issued "two years ago" for a year, straight into the Director's database.
    let vin: uptane_core::ids::Vin = vehicle.vin.parse().unwrap();
    let old = db
        .call_blocking(|conn| {
            director::service::credentials::issue(
                conn,
                &vin,
                None,
                chrono::Duration::days(365),
                "test",
                now() - chrono::Duration::days(730),
            )
        })
        .unwrap();
    let status = blocking(async {
        fleet
            .https_client()
            .get(format!(
                "{}/vehicles/{}/metadata/timestamp.json",
                fleet.director_url, vehicle.vin
            ))
            .bearer_auth(&old.credential)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 401);

    // Upload tokens: revoked by label; expired (issued "2 days ago" for a day).
    let repo = fleet.path("repo").display().to_string();
    let upload = |token: &str, name: &str| {
        let file = fleet.path(name);
        std::fs::write(&file, name.as_bytes()).unwrap();
        run(
            Command::new(bin("image-repo")).args([
                "add",
                "--server",
                &fleet.image_url,
                "--token",
                token,
                "--ca-cert",
                &ca,
                "--offline-keys",
                &fleet.path("repo-keys").display().to_string(),
                "--name",
                name,
                "--hardware-id",
                "hw-x",
                &file.display().to_string(),
            ]),
            LIMIT,
        )
    };
    let supplier = run_ok(
        Command::new(bin("image-repo")).args([
            "token", "create", "--repo", &repo, "--role", "targets", "--label", "supplier",
        ]),
        LIMIT,
    );
    assert!(upload(supplier.trim(), "before-revocation.bin").0.success());
    run_ok(
        Command::new(bin("image-repo"))
            .args(["token", "revoke", "--repo", &repo, "--label", "supplier"]),
        LIMIT,
    );
    let (status, _, err) = upload(supplier.trim(), "after-revocation.bin");
    assert!(!status.success());
    assert!(err.contains("HTTP 401") && err.contains("revoked"), "{err}");
    let old_upload = image_repo::tokens::Tokens::create(
        &fleet.path("repo"),
        "targets",
        "old",
        chrono::Duration::days(1),
        now() - chrono::Duration::days(2),
    )
    .unwrap();
    let (status, _, err) = upload(&old_upload, "expired.bin");
    assert!(!status.success());
    assert!(err.contains("HTTP 401") && err.contains("expired"), "{err}");
}

#[test]
fn a_one_time_provisioning_token_is_not_reusable_across_a_kill_9_mid_registration() {
    let mut fleet = Fleet::start();
    let created = fleet.operator(&[
        "provisioning-token",
        "create",
        "--label",
        "once",
        "--one-time",
    ]);
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["max_uses"], 1);

    // The Director aborts inside the registration's transaction, before its commit.
    fleet.restart_director_with(
        &[],
        &[("DIRECTOR_FAULT_CRASH_AT", "registration-before-commit")],
    );
    let first = SimVehicle::prepare(&fleet, &no_secondaries("ONCEVIN0001"));
    assert!(first.init_primary(&fleet, &token).is_err());
    assert!(
        fleet.director_exited(),
        "the Director did not crash where told"
    );
    fleet.restart_director_with(&[], &[]);
    // Neither the registration nor the use survived the crash...
    assert_eq!(fleet.operator(&["vehicle", "list"]), serde_json::json!([]));
    let uses = |fleet: &Fleet| {
        let listed = fleet.operator(&["provisioning-token", "list"]);
        let once = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == "once");
        once.unwrap()["uses"].as_u64().unwrap()
    };
    assert_eq!(uses(&fleet), 0);
    // ...so the interrupted init completes with the same token, once.
    first.init_primary(&fleet, &token).unwrap();
    assert_eq!(first.once().0, 0);
    assert_eq!(uses(&fleet), 1);

    // The Director killed right after: the use is as durable as the registration.
    fleet.restart_director();
    let second = SimVehicle::prepare(&fleet, &no_secondaries("ONCEVIN0002"));
    let err = second.init_primary(&fleet, &token).unwrap_err();
    assert!(err.contains("401") && err.contains("used up"), "{err}");
    // Refused before its body is read: the event names the token, and no VIN (nothing the
    // request chose reaches the log).
    let refused = security_events(&fleet, "provisioning_refused");
    assert!(
        refused.iter().any(
            |e| e["vin"].is_null() && e["detail"] == "token \"once\" has no registrations left"
        ),
        "{refused:?}"
    );
    // A default token is bounded too.
    let created = fleet.operator(&["provisioning-token", "create", "--label", "line"]);
    assert_eq!(created["max_uses"], 100);
    assert_eq!(created["expires_in_secs"], 7 * 86_400);
}

#[test]
fn a_renewed_server_certificate_is_served_after_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("reload CA").unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let tls = dir.path().join("tls");
    ca.issue_server(&["127.0.0.1"])
        .unwrap()
        .write(&tls)
        .unwrap();
    let repo = dir.path().join("repo");
    run_ok(
        Command::new(bin("image-repo"))
            .args(["init", "--repo"])
            .arg(&repo)
            .arg("--offline-keys")
            .arg(dir.path().join("keys")),
        LIMIT,
    );
    let mut command = Command::new(bin("image-repo"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(&repo)
        .arg("--tls-cert")
        .arg(tls.join("cert.pem"))
        .arg("--tls-key")
        .arg(tls.join("key.pem"));
    let (server, addr) = spawn_listening(command, LIMIT);
    let served = || {
        let config = service_runtime::tls::client_config(
            &service_runtime::tls::ServerTrust::Roots(std::sync::Arc::new(
                service_runtime::tls::roots_from_pem_file(&ca_file).unwrap(),
            )),
            None,
        )
        .unwrap();
        blocking(async {
            let stream =
                service_runtime::tls::connect(&addr, "127.0.0.1", std::sync::Arc::new(config))
                    .await
                    .unwrap();
            let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
            service_runtime::tls::Fingerprint::of(&cert)
        })
    };
    let first = served();
    let renewed = ca.issue_server(&["127.0.0.1"]).unwrap();
    renewed.write(&tls).unwrap();
    let expected = renewed.fingerprint().unwrap();
    assert_ne!(first, expected);
    run_ok(
        Command::new("kill").args(["-HUP", &server.id().to_string()]),
        LIMIT,
    );
    assert!(
        wait_until(LIMIT, || served() == expected),
        "the renewed certificate was not served; stderr:\n{}",
        server.stderr()
    );
}

#[test]
fn uploads_can_require_a_client_certificate_from_the_upload_ca() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let server_ca = Ca::generate("server CA").unwrap();
    std::fs::write(p("ca.pem"), server_ca.cert_pem()).unwrap();
    server_ca
        .issue_server(&["127.0.0.1"])
        .unwrap()
        .write(&dir.path().join("tls"))
        .unwrap();
    let upload_ca = Ca::generate("supplier CA").unwrap();
    std::fs::write(p("upload-ca.pem"), upload_ca.cert_pem()).unwrap();
    upload_ca
        .issue_client("acme")
        .unwrap()
        .write(&dir.path().join("acme"))
        .unwrap();
    run_ok(
        Command::new(bin("image-repo")).args([
            "init",
            "--repo",
            &p("repo"),
            "--offline-keys",
            &p("keys"),
        ]),
        LIMIT,
    );
    let mut command = Command::new(bin("image-repo"));
    command.args([
        "serve",
        "--repo",
        &p("repo"),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &p("tls/cert.pem"),
        "--tls-key",
        &p("tls/key.pem"),
        "--upload-client-ca",
        &p("upload-ca.pem"),
    ]);
    let (_server, addr) = spawn_listening(command, LIMIT);
    let url = format!("https://{addr}");
    let token = run_ok(
        Command::new(bin("image-repo")).args([
            "token",
            "create",
            "--repo",
            &p("repo"),
            "--role",
            "targets",
        ]),
        LIMIT,
    );
    std::fs::write(p("image.bin"), b"an image").unwrap();
    let add = |name: &str, certificate: &[&str]| {
        run(
            Command::new(bin("image-repo"))
                .args([
                    "add",
                    "--server",
                    &url,
                    "--token",
                    token.trim(),
                    "--ca-cert",
                    &p("ca.pem"),
                    "--offline-keys",
                    &p("keys"),
                    "--name",
                    name,
                    "--hardware-id",
                    "hw",
                ])
                .args(certificate)
                .arg(p("image.bin")),
            LIMIT,
        )
    };
    let (status, _, err) = add("no-cert.bin", &[]);
    assert!(!status.success());
    assert!(
        err.contains("HTTP 401") && err.contains("client certificate"),
        "{err}"
    );
    // A certificate from another CA fails the handshake itself.
    server_ca
        .issue_client("mallory")
        .unwrap()
        .write(&dir.path().join("mallory"))
        .unwrap();
    let (status, _, _) = add(
        "other-ca.bin",
        &[
            "--client-cert",
            &p("mallory/cert.pem"),
            "--client-key",
            &p("mallory/key.pem"),
        ],
    );
    assert!(!status.success());
    let (status, _, err) = add(
        "with-cert.bin",
        &[
            "--client-cert",
            &p("acme/cert.pem"),
            "--client-key",
            &p("acme/key.pem"),
        ],
    );
    assert!(status.success(), "{err}");
    // Downloads stay open to clients without a certificate.
    let client =
        service_runtime::http::ClientTls::new(Some(&dir.path().join("ca.pem")), None, false)
            .unwrap()
            .reqwest()
            .unwrap()
            .build()
            .unwrap();
    let status = blocking(async {
        client
            .get(format!("{url}/metadata/timestamp.json"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
}

#[test]
fn a_sniffer_reads_an_upload_token_on_an_insecure_link_and_nothing_on_a_tls_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let ca = Ca::generate("sniff CA").unwrap();
    std::fs::write(p("ca.pem"), ca.cert_pem()).unwrap();
    ca.issue_server(&["127.0.0.1"])
        .unwrap()
        .write(&dir.path().join("tls"))
        .unwrap();
    run_ok(
        Command::new(bin("image-repo")).args([
            "init",
            "--repo",
            &p("repo"),
            "--offline-keys",
            &p("keys"),
        ]),
        LIMIT,
    );
    let token = run_ok(
        Command::new(bin("image-repo")).args([
            "token",
            "create",
            "--repo",
            &p("repo"),
            "--role",
            "targets",
        ]),
        LIMIT,
    );
    let token = token.trim();
    std::fs::write(p("image.bin"), vec![7u8; 10_000]).unwrap();
    let sniffed = |flags: &[&str], scheme: &str, client: &[&str], name: &str| {
        let mut command = Command::new(bin("image-repo"));
        command
            .args(["serve", "--repo", &p("repo"), "--listen", "127.0.0.1:0"])
            .args(flags);
        let (_server, addr) = spawn_listening(command, LIMIT);
        let tap = LinkProxy::start(&addr).unwrap();
        tap.tap();
        run_ok(
            Command::new(bin("image-repo"))
                .args([
                    "add",
                    "--server",
                    &format!("{scheme}://{}", tap.addr()),
                    "--token",
                    token,
                    "--offline-keys",
                    &p("keys"),
                    "--name",
                    name,
                    "--hardware-id",
                    "hw",
                ])
                .args(client)
                .arg(p("image.bin")),
            LIMIT,
        );
        let captured = tap.captured();
        assert!(
            captured.len() > 10_000,
            "the tap saw {} bytes",
            captured.len()
        );
        captured.windows(token.len()).any(|w| w == token.as_bytes())
    };
    assert!(
        sniffed(&["--insecure"], "http", &["--insecure"], "clear.bin"),
        "the sniffer must see the token on a plaintext link (or this test proves nothing)"
    );
    let tls_flags = [
        "--tls-cert",
        &p("tls/cert.pem"),
        "--tls-key",
        &p("tls/key.pem"),
    ];
    assert!(!sniffed(
        &tls_flags,
        "https",
        &["--ca-cert", &p("ca.pem")],
        "tls.bin"
    ));
}

#[test]
fn a_primary_renews_its_credential_and_the_new_one_takes_over_at_its_first_use() {
    let fleet = Fleet::start();
    let vehicle = SimVehicle::provision(&fleet, &no_secondaries("RENEWVIN001"));
    let old = std::fs::read_to_string(vehicle.primary_dir.join("credential")).unwrap();
    // Time injected into the Primary's own record: its credential is 300 days into a year.
    let state_path = vehicle.primary_dir.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let format = uptane_core::time::format_expires;
    state["credential_issued_at"] = format(&(now() - chrono::Duration::days(300))).into();
    state["credential_expires_at"] = format(&(now() + chrono::Duration::days(65))).into();
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();

    let (code, summary) = vehicle.once();
    assert_eq!(code, 0, "{summary}");
    let new = std::fs::read_to_string(vehicle.primary_dir.join("credential")).unwrap();
    assert_ne!(new, old);
    let state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let expires =
        uptane_core::time::parse_expires(state["credential_expires_at"].as_str().unwrap()).unwrap();
    assert!(expires > now() + chrono::Duration::days(300));
    // The new one took over at its first use, although the vehicle also shows its bound
    // certificate: no renewal is pending, and the Director's expiry is the new one's.
    let listed = fleet.operator(&["vehicle", "credentials", "--vin", &vehicle.vin]);
    assert_eq!(listed[0]["renewal_pending"], false, "{listed}");
    assert_eq!(
        listed[0]["expires_at"], state["credential_expires_at"],
        "{listed}"
    );
    assert!(listed[0]["tls_fingerprint"].is_string(), "{listed}");
}
