//! What the Director's integration tests share: a Director behind its router, without a
//! socket, on a test database (in-memory SQLite, or PostgreSQL when
//! `DIRECTOR_TEST_POSTGRES` names a server), with an Image repository made of real signed
//! metadata, and vehicles that sign real manifests.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses part of it

use std::collections::{BTreeMap, HashMap};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use director::api::{AppState, router};
use director::catalog::ImageCatalog;
use director::db::{Db, DbError};
use director::keys::OnlineKeys;
use director::service::{self, DirectorService, Policy};
use director::sql::OwnedValue;
use serde_json::{Value, json};
use tower::ServiceExt;
use uptane_core::crypto::SigningKey;
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::manifest::{
    ECU_REPORT_TYPE, EcuVersionReport, InstalledImage, LastInstall, VehicleVersionManifest,
};
use uptane_core::testing::{RepoFixture, key};
use uptane_core::uptane::image_target_custom;

pub(crate) const VIN: &str = "VIN-0001";
pub(crate) const BRAKE_FW: &[u8] = b"brake firmware 2";

pub(crate) struct Fleet {
    pub app: axum::Router,
    pub service: DirectorService,
    pub db: Db,
    pub token: String,
    pub director_root: Vec<u8>,
}

pub(crate) struct Vehicle {
    pub vin: Vin,
    pub credential: String,
    pub ecus: Vec<(EcuSerial, HardwareId, SigningKey)>,
    pub counter: u64,
    /// What ECU `i` says of its last installation in the next manifest.
    pub last_install: BTreeMap<usize, LastInstall>,
}

pub(crate) fn serial(s: &str) -> EcuSerial {
    s.parse().unwrap()
}

pub(crate) fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

pub(crate) fn image_repo() -> ImageCatalog {
    image_repo_with(BRAKE_FW)
}

/// The Image repository, with `brake-2.bin` holding `brake` (re-published: other bytes).
pub(crate) fn image_repo_with(brake: &[u8]) -> ImageCatalog {
    let mut repo = RepoFixture::new();
    repo.expires = now() + chrono::Duration::days(30);
    repo.add_target(
        "brake-2.bin",
        brake,
        Some(image_target_custom(&["hw-brake"], 2)),
    );
    repo.add_target(
        "brake-alt.bin",
        b"another brake firmware",
        Some(image_target_custom(&["hw-brake"], 2)),
    );
    repo.add_target(
        "radio-1.bin",
        b"radio",
        Some(image_target_custom(&["hw-radio"], 1)),
    );
    repo.publish();
    let mut files = HashMap::new();
    files.insert("1.root.json".to_string(), repo.roots[0].clone());
    files.insert("timestamp.json".to_string(), repo.timestamp.clone());
    files.insert(
        format!("{}.snapshot.json", repo.versions.1),
        repo.snapshot.clone(),
    );
    files.insert(
        format!("{}.targets.json", repo.targets.common.version),
        repo.targets_files["targets"].clone(),
    );
    ImageCatalog::memory(files, repo.roots[0].clone())
}

/// The Director's online keys in these tests.
pub(crate) fn online_keys() -> OnlineKeys {
    OnlineKeys {
        targets: key(101),
        snapshot: key(102),
        timestamp: key(103),
    }
}

pub(crate) fn fleet() -> Fleet {
    let db = Db::for_tests().unwrap();
    let online = online_keys();
    let root_key = key(100);
    db.call_blocking(|conn| {
        service::store_initial_root(
            conn,
            &[&root_key],
            1,
            &online,
            chrono::Duration::days(365),
            now(),
        )
    })
    .unwrap();
    let token = db
        .call_blocking(|conn| {
            service::create_api_token(conn, "test", chrono::Duration::days(1), now())
        })
        .unwrap();
    let director_root = db
        .call_blocking(|conn| service::root(conn, 1))
        .unwrap()
        .unwrap();
    let service = DirectorService::new(
        db.clone(),
        service::KeyRing::fixed(online),
        image_repo(),
        Policy::default(),
    )
    .unwrap();
    let state = AppState {
        service: service.clone(),
        max_body_bytes: 64 * 1024,
    };
    Fleet {
        app: router(state),
        service,
        db,
        token,
        director_root,
    }
}

/// At the end of every test that did not fail: each vehicle's row counts the entries its
/// targets list as the entries themselves say. The database's triggers (migration 012) keep
/// the count (`vehicle_contents`) through every write the test made; signing reads no
/// entries when it is 0.
impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let miscounted = self
            .db
            .call_blocking(|conn| service::assignments::miscounted_vehicles(conn))
            .unwrap();
        assert_eq!(
            miscounted, 0,
            "vehicles whose counts differ from their entries"
        );
    }
}

impl Fleet {
    /// `POST /vehicles/VIN/manifest` with `car`'s credential.
    pub(crate) async fn post_manifest(
        &self,
        car: &Vehicle,
        manifest: Vec<u8>,
    ) -> (StatusCode, Value) {
        let (status, outcome, _) = self
            .send(
                "POST",
                &format!("/vehicles/{}/manifest", car.vin),
                Some(&car.credential),
                Some(manifest),
            )
            .await;
        (status, outcome)
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap()
            .to_vec();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            bytes,
        )
    }

    pub(crate) async fn operator(
        &self,
        method: &str,
        uri: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let body = (!body.is_null()).then(|| serde_json::to_vec(&body).unwrap());
        let (status, json, _) = self.send(method, uri, Some(&self.token), body).await;
        (status, json)
    }

    pub(crate) async fn register(&self, vin: &str, seed: u8) -> Vehicle {
        let hw = |s: &str| -> HardwareId { s.parse().unwrap() };
        let ecus = vec![
            (serial(&format!("{vin}-gw")), hw("hw-gateway"), key(seed)),
            (
                serial(&format!("{vin}-brake")),
                hw("hw-brake"),
                key(seed + 1),
            ),
            (
                serial(&format!("{vin}-radio")),
                hw("hw-radio"),
                key(seed + 2),
            ),
        ];
        let body = json!({"vin": vin, "ecus": ecus.iter().enumerate().map(|(i, (s, hw, k))| json!({
            "serial": s, "hardware_id": hw, "public_key": k.public_key().to_json(), "primary": i == 0
        })).collect::<Vec<_>>()});
        let (status, json) = self.operator("POST", "/api/v1/vehicles", body).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
        Vehicle {
            vin: vin.parse().unwrap(),
            credential: json["credential"].as_str().unwrap().to_string(),
            ecus,
            counter: 0,
            last_install: BTreeMap::new(),
        }
    }

    /// The events stored (counted in the table: what a follower of the log is given lags
    /// on PostgreSQL while other transactions run).
    pub(crate) fn event_count(&self, security: bool) -> usize {
        self.db
            .call_blocking(move |conn| {
                conn.value::<i64>(
                    "SELECT COUNT(*) FROM events WHERE ?1 = 0 OR severity = 'security'",
                    director::params![security],
                )
            })
            .unwrap() as usize
    }

    pub(crate) fn events_of(&self, kind: &str) -> usize {
        let kind = kind.to_string();
        self.db
            .call_blocking(move |conn| {
                conn.value::<i64>(
                    "SELECT COUNT(*) FROM events WHERE kind = ?1",
                    director::params![kind],
                )
            })
            .unwrap() as usize
    }

    pub(crate) fn snapshot(&self) -> String {
        self.db
            .call_blocking(|conn| {
                let mut out = String::new();
                for table in [
                    "vehicles",
                    "ecus",
                    "seen_nonces",
                    "manifests",
                    "assignments",
                    "assignment_ecus",
                ] {
                    let rows = conn.query(&format!("SELECT * FROM {table}"), &[], |r| {
                        (0..r.len())
                            .map(|i| Ok(format!("{:?}", r.get::<OwnedValue>(i)?)))
                            .collect::<Result<Vec<_>, DbError>>()
                    })?;
                    for row in rows {
                        out.push_str(&row.join("|"));
                        out.push('\n');
                    }
                }
                Ok::<_, director::error::DirectorError>(out)
            })
            .unwrap()
    }
}

impl Vehicle {
    pub(crate) fn report(
        &self,
        i: usize,
        installed: &[u8],
        filename: &str,
        counter: u64,
        nonce: &str,
    ) -> Vec<u8> {
        let (serial, _, key) = &self.ecus[i];
        EcuVersionReport {
            report_type: ECU_REPORT_TYPE.into(),
            ecu_serial: serial.clone(),
            installed_image: InstalledImage {
                filename: filename.into(),
                length: installed.len() as u64,
                hashes: uptane_core::hash::standard_hashes(installed),
                release_counter: 0,
            },
            attacks_detected: vec![],
            latest_time: now(),
            nonce: nonce.into(),
            report_counter: counter,
            last_install: self.last_install.get(&i).cloned(),
        }
        .sign(key)
        .unwrap()
    }

    /// A manifest with every ECU on `images[i]` (content, file name).
    pub(crate) fn manifest(&mut self, images: &[(&[u8], &str)]) -> Vec<u8> {
        self.counter += 1;
        let reports: BTreeMap<EcuSerial, Vec<u8>> = (0..self.ecus.len())
            .map(|i| {
                let (bytes, name) = images[i];
                (
                    self.ecus[i].0.clone(),
                    self.report(
                        i,
                        bytes,
                        name,
                        self.counter,
                        &format!("n{}-{i}", self.counter),
                    ),
                )
            })
            .collect();
        self.sign_manifest(&reports)
    }

    pub(crate) fn sign_manifest(&self, reports: &BTreeMap<EcuSerial, Vec<u8>>) -> Vec<u8> {
        VehicleVersionManifest::new(&self.vin, &self.ecus[0].0, reports)
            .unwrap()
            .sign(&self.ecus[0].2)
            .unwrap()
    }

    pub(crate) fn factory(&mut self) -> Vec<u8> {
        self.manifest(&[
            (b"gw 1", "gw-1.bin"),
            (b"brake 1", "brake-1.bin"),
            (b"radio 0", "radio-0.bin"),
        ])
    }
}

pub(crate) async fn fetch(fleet: &Fleet, vehicle: &Vehicle, file: &str) -> (StatusCode, Vec<u8>) {
    let (status, _, bytes) = fleet
        .send(
            "GET",
            &format!("/vehicles/{}/metadata/{file}", vehicle.vin),
            Some(&vehicle.credential),
            None,
        )
        .await;
    (status, bytes)
}

impl Fleet {
    /// `car` fetches its current timestamp, snapshot and targets, as a Primary's refresh
    /// does: what the targets list is then delivered.
    pub(crate) async fn deliver(&self, car: &Vehicle) {
        let version = |bytes: &[u8], file: &str| {
            let doc: Value = serde_json::from_slice(bytes).unwrap();
            doc["signed"]["meta"][file]["version"].as_u64().unwrap()
        };
        let (status, timestamp) = fetch(self, car, "timestamp.json").await;
        assert_eq!(status, StatusCode::OK);
        let snapshot_version = version(&timestamp, "snapshot.json");
        let (status, snapshot) =
            fetch(self, car, &format!("{snapshot_version}.snapshot.json")).await;
        assert_eq!(status, StatusCode::OK);
        let targets_version = version(&snapshot, "targets.json");
        let (status, _) = fetch(self, car, &format!("{targets_version}.targets.json")).await;
        assert_eq!(status, StatusCode::OK);
    }

    /// Vehicle `vin`'s assignment entries, newest first.
    pub(crate) async fn entries(&self, vin: &Vin) -> Vec<Value> {
        let (status, entries) = self
            .operator(
                "GET",
                &format!("/api/v1/assignments?vin={vin}"),
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{entries}");
        entries.as_array().unwrap().clone()
    }
}
