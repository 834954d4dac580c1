//! The upload API through the router, without a socket: every refusal leaves the served
//! repository byte-for-byte unchanged.

#![allow(clippy::unwrap_used)] // test support code outside #[test] functions

use std::collections::BTreeMap;
use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use image_repo::repo::{
    Expiry, InitOptions, RepoState, Repository, blob_info_of, image_custom, sign_targets_update,
};
use image_repo::server::{AppState, ServerConfig, router};
use image_repo::tokens::Tokens;
use tower::ServiceExt;
use uptane_core::crypto::SigningKey;
use uptane_core::sign::{TargetsBuilder, delegated_role};

struct Fixture {
    _dir: tempfile::TempDir,
    repo: Repository,
    keys: std::path::PathBuf,
    targets_token: String,
    acme_token: String,
    supplier: SigningKey,
}

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("offline");
    let repo = Repository::init(
        dir.path().join("repo"),
        &keys,
        InitOptions::default(),
        Expiry::default(),
        now(),
    )
    .unwrap();
    let supplier = uptane_core::testing::key(77);
    let mut delegation = delegated_role("acme", &[supplier.public_key()], 1, &["acme/*"], false);
    delegation.hardware_ids = Some(vec!["hw-acme".into()]);
    let public = supplier.public_key().clone();
    repo.update_targets(&keys, now(), |b| Ok(b.delegate(delegation, &[&public])))
        .unwrap();
    let targets_token = Tokens::create(
        repo.dir(),
        "targets",
        "oem",
        chrono::Duration::days(1),
        now(),
    )
    .unwrap();
    let acme_token = Tokens::create(
        repo.dir(),
        "acme",
        "supplier",
        chrono::Duration::days(1),
        now(),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        repo,
        keys,
        targets_token,
        acme_token,
        supplier,
    }
}

impl Fixture {
    fn app(&self) -> axum::Router {
        router(AppState::new(self.repo.clone(), ServerConfig::default()))
    }

    fn state(&self) -> RepoState {
        self.repo.state().unwrap()
    }

    /// Every served file, to compare before and after a refused upload.
    fn served(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        for root in [self.repo.metadata_dir(), self.repo.targets_dir()] {
            collect(&root, &root, &mut files);
        }
        files
    }

    async fn put(
        &self,
        uri: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::put(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body))
            .unwrap();
        send(self.app(), request).await
    }

    async fn upload_blob(&self, bytes: &[u8]) -> StatusCode {
        let sha = uptane_core::hash::sha256_hex(bytes);
        self.put(
            &format!("/api/v1/blobs/{sha}"),
            Some(&self.targets_token),
            bytes.to_vec(),
        )
        .await
        .0
    }

    fn signed_targets(&self, edit: impl FnOnce(TargetsBuilder) -> TargetsBuilder) -> Vec<u8> {
        sign_targets_update(&self.state(), &self.keys, Expiry::default(), now(), |b| {
            Ok(edit(b))
        })
        .unwrap()
    }

    fn signed_acme(
        &self,
        version: u64,
        key: &SigningKey,
        edit: impl FnOnce(TargetsBuilder) -> TargetsBuilder,
    ) -> Vec<u8> {
        let expires = now() + chrono::Duration::days(30);
        edit(TargetsBuilder::new(version, expires))
            .sign(&[key])
            .unwrap()
    }
}

/// Files in the repository's `blobs/` (where an upload is written before it is accepted).
fn files_in_blobs(repo: &Repository) -> usize {
    std::fs::read_dir(repo.dir().join("blobs"))
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0)
}

async fn send(app: axum::Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            files.insert(
                format!("{}/{name}", root.display()),
                std::fs::read(&path).unwrap(),
            );
        }
    }
}

const IMAGE: &[u8] = b"brake controller firmware 2.0";

fn with_image(b: TargetsBuilder) -> TargetsBuilder {
    b.target(
        "brake.bin",
        IMAGE,
        Some(image_custom(&["hw-brake".into()], 2)),
    )
}

/// Uploads [`IMAGE`] and publishes targets metadata listing it; the publish report.
async fn publish_image(f: &Fixture) -> serde_json::Value {
    assert_eq!(f.upload_blob(IMAGE).await, StatusCode::CREATED);
    let (status, report) = f
        .put(
            "/api/v1/metadata/targets",
            Some(&f.targets_token),
            f.signed_targets(with_image),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    report
}

/// A target name holding characters a URL gives a meaning to is served at the URL a client
/// makes of it (`uptane_core::metadata::quote_target_path`, the Primary's rule).
#[tokio::test]
async fn an_image_named_with_url_characters_is_served_at_its_percent_encoded_url() {
    let f = fixture();
    let odd: &[u8] = b"an image with an odd name";
    let name = "dir/fw v1#2?%\u{e9}.bin";
    assert_eq!(f.upload_blob(odd).await, StatusCode::CREATED);
    let (status, report) = f
        .put(
            "/api/v1/metadata/targets",
            Some(&f.targets_token),
            f.signed_targets(|b| b.target(name, odd, None)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let sha = uptane_core::hash::sha256_hex(odd);
    let path = uptane_core::metadata::quote_target_path(&format!("dir/{sha}.fw v1#2?%\u{e9}.bin"));
    let response = f
        .app()
        .oneshot(
            Request::get(format!("/targets/{path}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(&body[..], odd);
}

#[tokio::test]
async fn publishes_an_uploaded_image_and_serves_it_with_ranges() {
    let f = fixture();
    let report = publish_image(&f).await;
    assert_eq!(report["version"], 3);
    let sha = uptane_core::hash::sha256_hex(IMAGE);
    let request = Request::get(format!("/targets/{sha}.brake.bin"))
        .header(header::RANGE, "bytes=6-")
        .body(Body::empty())
        .unwrap();
    let response = f.app().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(&body[..], &IMAGE[6..]);
    let response = f
        .app()
        .oneshot(
            Request::get("/metadata/timestamp.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let response = f
        .app()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // What operators alert on: nothing offline-signed expires soon in a new repository.
    let response = f
        .app()
        .oneshot(Request::get("/status").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["root_version"], 1, "{status}");
    assert_eq!(status["expiring"], serde_json::json!([]), "{status}");
}

/// One image request: status, the headers a resuming client reads, and the body.
async fn get_image(
    f: &Fixture,
    method: &str,
    uri: &str,
    range: Option<&str>,
) -> (StatusCode, [Option<String>; 3], Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(range) = range {
        request = request.header(header::RANGE, range);
    }
    let response = f
        .app()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
    };
    let headers = [
        header(header::CONTENT_LENGTH),
        header(header::CONTENT_RANGE),
        header(header::ACCEPT_RANGES),
    ];
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, body.to_vec())
}

#[tokio::test]
async fn serves_an_image_whole_or_one_range_of_it_and_nothing_hidden() {
    let f = fixture();
    publish_image(&f).await;
    let uri = format!(
        "/targets/{}.brake.bin",
        uptane_core::hash::sha256_hex(IMAGE)
    );
    let len = IMAGE.len();
    let some = |s: &str| Some(s.to_string());

    let (status, headers, body) = get_image(&f, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers, [Some(len.to_string()), None, some("bytes")]);
    assert_eq!(body, IMAGE);

    let (status, headers, body) = get_image(&f, "HEAD", &uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[0], Some(len.to_string()));
    assert!(body.is_empty());

    let (status, headers, body) = get_image(&f, "GET", &uri, Some("bytes=2-4")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let range = format!("bytes 2-4/{len}");
    assert_eq!(headers, [some("3"), Some(range), some("bytes")]);
    assert_eq!(body, &IMAGE[2..5]);

    let (status, headers, body) = get_image(&f, "GET", &uri, Some("bytes=-5")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers[1],
        Some(format!("bytes {}-{}/{len}", len - 5, len - 1))
    );
    assert_eq!(body, &IMAGE[len - 5..]);

    // Past the end: 416, with the length a client can resume against.
    let past = format!("bytes={len}-");
    let (status, headers, body) = get_image(&f, "GET", &uri, Some(&past)).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers[1], Some(format!("bytes */{len}")));
    assert!(body.is_empty());

    // Several ranges, or a malformed one: ignored, the whole image.
    for ignored in ["bytes=0-1,4-5", "bytes=4-1", "pages=1-"] {
        let (status, _, body) = get_image(&f, "GET", &uri, Some(ignored)).await;
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::OK, IMAGE),
            "{ignored}"
        );
    }

    // A temporary link, a directory, a name never published: 404.
    let targets = f.repo.targets_dir();
    std::fs::write(targets.join(".tmp-link-1"), IMAGE).unwrap();
    std::fs::create_dir_all(targets.join("dir")).unwrap();
    for missing in [
        "/targets/.tmp-link-1",
        "/targets/dir",
        "/targets/absent.bin",
    ] {
        let (status, _, _) = get_image(&f, "GET", missing, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    }
}

/// Runs a refused upload and checks its status and that nothing served changed.
async fn assert_refused(
    f: &Fixture,
    uri: &str,
    token: Option<&str>,
    body: Vec<u8>,
    expected: StatusCode,
) -> String {
    let before = f.served();
    let (status, json) = f.put(uri, token, body).await;
    assert_eq!(status, expected, "{json}");
    assert_eq!(
        f.served(),
        before,
        "served files changed after a refused upload"
    );
    json["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn refuses_uploads_without_a_valid_token() {
    let f = fixture();
    f.upload_blob(IMAGE).await;
    let body = f.signed_targets(with_image);
    assert_refused(
        &f,
        "/api/v1/metadata/targets",
        None,
        body.clone(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some("irt_forged"),
        body.clone(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let sha = uptane_core::hash::sha256_hex(IMAGE);
    assert_refused(
        &f,
        &format!("/api/v1/blobs/{sha}"),
        None,
        IMAGE.to_vec(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn refuses_a_token_for_another_role() {
    let f = fixture();
    f.upload_blob(IMAGE).await;
    let body = f.signed_targets(with_image);
    let error = assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some(&f.acme_token),
        body,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(error.contains("acme"), "{error}");
}

#[tokio::test]
async fn refuses_a_bad_signature() {
    let f = fixture();
    f.upload_blob(IMAGE).await;
    let state = f.state();
    let forged =
        TargetsBuilder::from_targets(state.targets(), 3, now() + chrono::Duration::days(1));
    let body = with_image(forged)
        .sign(&[&uptane_core::testing::key(99)])
        .unwrap();
    let error = assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some(&f.targets_token),
        body,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(error.contains("threshold"), "{error}");
}

#[tokio::test]
async fn refuses_a_version_that_does_not_go_up() {
    let f = fixture();
    f.upload_blob(IMAGE).await;
    let state = f.state();
    let keys = image_repo::keys::load_role_keys(&f.keys, "targets").unwrap();
    for version in [1, 2] {
        let body = with_image(TargetsBuilder::from_targets(
            state.targets(),
            version,
            now() + chrono::Duration::days(1),
        ))
        .sign(&[&keys[0]])
        .unwrap();
        assert_refused(
            &f,
            "/api/v1/metadata/targets",
            Some(&f.targets_token),
            body,
            StatusCode::CONFLICT,
        )
        .await;
    }
}

#[tokio::test]
async fn refuses_expired_metadata() {
    let f = fixture();
    f.upload_blob(IMAGE).await;
    let state = f.state();
    let keys = image_repo::keys::load_role_keys(&f.keys, "targets").unwrap();
    let body = with_image(TargetsBuilder::from_targets(
        state.targets(),
        3,
        now() - chrono::Duration::seconds(1),
    ))
    .sign(&[&keys[0]])
    .unwrap();
    let error = assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some(&f.targets_token),
        body,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(error.contains("expired"), "{error}");
}

#[tokio::test]
async fn refuses_paths_and_hardware_outside_the_delegation() {
    let f = fixture();
    f.upload_blob(IMAGE).await;
    let outside = f.signed_acme(1, &f.supplier, |b| {
        b.target(
            "brake.bin",
            IMAGE,
            Some(image_custom(&["hw-acme".into()], 1)),
        )
    });
    let error = assert_refused(
        &f,
        "/api/v1/metadata/acme",
        Some(&f.acme_token),
        outside,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(error.contains("not authorized for target"), "{error}");
    let other_hw = f.signed_acme(1, &f.supplier, |b| {
        b.target(
            "acme/x.bin",
            IMAGE,
            Some(image_custom(&["hw-brake".into()], 1)),
        )
    });
    let error = assert_refused(
        &f,
        "/api/v1/metadata/acme",
        Some(&f.acme_token),
        other_hw,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(error.contains("hardware id"), "{error}");
    // Signed by the OEM's targets key instead of the supplier's: not the delegated key.
    let keys = image_repo::keys::load_role_keys(&f.keys, "targets").unwrap();
    let wrong_key = f.signed_acme(1, &keys[0], |b| {
        b.target(
            "acme/x.bin",
            IMAGE,
            Some(image_custom(&["hw-acme".into()], 1)),
        )
    });
    assert_refused(
        &f,
        "/api/v1/metadata/acme",
        Some(&f.acme_token),
        wrong_key,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Inside the delegation it is accepted.
    let good = f.signed_acme(1, &f.supplier, |b| {
        b.target(
            "acme/x.bin",
            IMAGE,
            Some(image_custom(&["hw-acme".into()], 1)),
        )
    });
    let (status, json) = f
        .put("/api/v1/metadata/acme", Some(&f.acme_token), good)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

#[tokio::test]
async fn refuses_metadata_whose_blob_differs() {
    let f = fixture();
    f.upload_blob(IMAGE).await;
    let info = blob_info_of(IMAGE);
    let longer = f
        .signed_targets(|b| b.target_with("brake.bin", info.length + 1, info.hashes.clone(), None));
    let error = assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some(&f.targets_token),
        longer,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(error.contains("bytes"), "{error}");
    let mut hashes = info.hashes.clone();
    hashes.insert("sha512".into(), uptane_core::hash::sha512_hex(b"other"));
    let wrong_hash = f.signed_targets(|b| b.target_with("brake.bin", info.length, hashes, None));
    assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some(&f.targets_token),
        wrong_hash,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let never_uploaded = f.signed_targets(|b| b.target("other.bin", b"never uploaded", None));
    let error = assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some(&f.targets_token),
        never_uploaded,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(error.contains("no uploaded blob"), "{error}");
}

#[tokio::test]
async fn refuses_blobs_that_do_not_hash_to_their_name_or_are_truncated() {
    let f = fixture();
    let sha = uptane_core::hash::sha256_hex(IMAGE);
    let error = assert_refused(
        &f,
        &format!("/api/v1/blobs/{sha}"),
        Some(&f.targets_token),
        b"other bytes".to_vec(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(error.contains("hashes to"), "{error}");
    let before = f.served();
    let request = Request::put(format!("/api/v1/blobs/{sha}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", f.targets_token))
        .header(header::CONTENT_LENGTH, IMAGE.len() + 10)
        .body(Body::from(IMAGE.to_vec()))
        .unwrap();
    let (status, json) = send(f.app(), request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert!(json["error"].as_str().unwrap().contains("truncated"));
    assert_eq!(f.served(), before);
    assert!(f.repo.blob_info(&sha).unwrap().is_none());
    assert_refused(
        &f,
        "/api/v1/blobs/not-a-hash",
        Some(&f.targets_token),
        IMAGE.to_vec(),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn refuses_malformed_metadata_and_unknown_roles() {
    let f = fixture();
    assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some(&f.targets_token),
        b"{not json".to_vec(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let token =
        Tokens::create(f.repo.dir(), "nobody", "", chrono::Duration::days(1), now()).unwrap();
    let body = f.signed_acme(1, &f.supplier, |b| b);
    assert_refused(
        &f,
        "/api/v1/metadata/nobody",
        Some(&token),
        body,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn serves_nothing_outside_metadata_and_targets() {
    let f = fixture();
    for uri in [
        "/metadata/..%2Fkeys%2Fsnapshot.pem",
        "/metadata/%2E%2E%2Ftokens.json",
        "/metadata/.lock",
        "/targets/../keys/snapshot.pem",
        "/targets/%2E%2E/keys/snapshot.pem",
        "/targets/..%2Fkeys%2Fsnapshot.pem",
        "/blobs/x",
        "/keys/snapshot.pem",
    ] {
        let response = f
            .app()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(
            response.status().is_client_error(),
            "{uri}: {}",
            response.status()
        );
    }
}

#[tokio::test]
async fn metadata_uploads_are_capped_per_role_after_the_token_is_checked() {
    let f = fixture();
    let config = ServerConfig {
        max_targets_bytes: 1000,
        max_delegated_bytes: 500,
        ..ServerConfig::default()
    };
    let app = || router(AppState::new(f.repo.clone(), config.clone()));
    let upload = |role: &str, token: Option<&str>, length: usize| {
        let mut request = Request::put(format!("/api/v1/metadata/{role}"));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request
            .header(header::CONTENT_LENGTH, length)
            .body(Body::from(vec![b'{'; length]))
            .unwrap()
    };
    // Without a token, the size does not matter: 401, the body unread.
    let (status, json) = send(app(), upload("targets", None, 10 << 20)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    // With one, each role has its cap.
    let (status, json) = send(app(), upload("targets", Some(&f.targets_token), 1001)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert_eq!(json["error"], "metadata larger than 1000 bytes");
    let (status, json) = send(app(), upload("acme", Some(&f.acme_token), 501)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert_eq!(json["error"], "metadata larger than 500 bytes");
    // Under the cap, the upload is read and checked (and this one is malformed).
    let (status, _) = send(app(), upload("acme", Some(&f.acme_token), 400)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[test]
fn blobs_no_published_metadata_lists_are_collected_after_the_grace_period() {
    let f = fixture();
    let listed = f.repo.import_file(&write_temp(IMAGE)).unwrap();
    let orphan = f.repo.import_file(&write_temp(b"never published")).unwrap();
    // Only the first is published.
    let bytes = f.signed_targets(with_image);
    f.repo.publish_role("targets", bytes, now()).unwrap();
    let partial = f.repo.blob_tempfile().unwrap().keep().unwrap().1;
    let blobs = f.repo.blobs_dir();
    let exists = |info: &image_repo::repo::BlobInfo| blobs.join(&info.hashes["sha256"]).exists();
    let grace = std::time::Duration::from_secs(3600);
    // Within the grace period, nothing goes (the metadata may still be on its way).
    let early = f
        .repo
        .collect_garbage(std::time::SystemTime::now(), grace)
        .unwrap();
    assert_eq!(early, image_repo::repo::Collected::default());
    let later = std::time::SystemTime::now() + 2 * grace;
    let collected = f.repo.collect_garbage(later, grace).unwrap();
    assert_eq!(collected.blobs, 1);
    assert_eq!(collected.partial_uploads, 1);
    assert!(exists(&listed), "a published image was collected");
    assert!(!exists(&orphan), "an unlisted blob stayed");
    assert!(!partial.exists(), "an interrupted upload stayed");
    // The published image is still served.
    assert!(f.repo.state().is_ok());
}

fn write_temp(bytes: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "image-repo-test-{}-{}",
        std::process::id(),
        uptane_core::hash::sha256_hex(bytes)
    ));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A supplier delegating another supplier's role name to its own key: the repository reads
/// each role back through the first delegator that reaches it, so the other supplier's
/// metadata would stop verifying, and with it the whole repository (no publish, no timestamp
/// renewal). Refused, and the repository still loads.
#[tokio::test]
async fn a_delegation_to_a_role_name_another_role_delegates_is_refused() {
    let f = fixture();
    let bosch = uptane_core::testing::key(78);
    let delegation = delegated_role("bosch", &[bosch.public_key()], 1, &["bosch/*"], false);
    let public = bosch.public_key().clone();
    f.repo
        .update_targets(&f.keys, now(), |b| Ok(b.delegate(delegation, &[&public])))
        .unwrap();
    let bosch_v1 = f.signed_acme(1, &bosch, |b| b);
    f.repo.publish_role("bosch", bosch_v1, now()).unwrap();

    let hijack = delegated_role("bosch", &[f.supplier.public_key()], 1, &["acme/*"], false);
    let acme_public = f.supplier.public_key().clone();
    let upload = f.signed_acme(1, &f.supplier, |b| b.delegate(hijack, &[&acme_public]));
    let error = assert_refused(
        &f,
        "/api/v1/metadata/acme",
        Some(&f.acme_token),
        upload,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(
        error.contains("delegates \"bosch\" with other keys or another threshold than targets"),
        "{error}"
    );
    assert!(f.state().roles.contains_key("bosch"));

    // The same delegation as the top-level one (same key, same threshold) is one role.
    let same = delegated_role("bosch", &[bosch.public_key()], 1, &["acme/*"], false);
    let upload = f.signed_acme(1, &f.supplier, |b| b.delegate(same, &[&public]));
    let (status, json) = f
        .put("/api/v1/metadata/acme", Some(&f.acme_token), upload)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert!(f.state().roles.contains_key("bosch"));
}

/// Anyone may ask for every old version of every metadata file: each is served, from the
/// file, and only the current ones are kept in memory (before, all were, for good).
#[tokio::test]
async fn only_current_metadata_is_kept_in_memory_and_older_versions_are_still_served() {
    let f = fixture();
    for _ in 0..5 {
        f.repo.update_targets(&f.keys, now(), Ok).unwrap();
    }
    let state = AppState::new(f.repo.clone(), ServerConfig::default());
    let mut files = BTreeMap::new();
    collect(&f.repo.metadata_dir(), &f.repo.metadata_dir(), &mut files);
    assert!(files.len() > 10, "{:?}", files.keys());
    for round in 0..2 {
        for (path, bytes) in &files {
            let name = path.rsplit('/').next().unwrap();
            let response = router(state.clone())
                .oneshot(
                    Request::get(format!("/metadata/{name}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/json",
                "{name}"
            );
            let body = axum::body::to_bytes(response.into_body(), 64 << 20)
                .await
                .unwrap();
            assert_eq!(&body[..], &bytes[..], "{name} (round {round})");
        }
        // 1.root.json, timestamp.json, the current snapshot and targets.
        assert_eq!(state.metadata_files_kept(), 4);
    }
}

/// An image larger than `--max-blob-bytes` is refused from its declared length, before a
/// byte of it is written to disk (before, it was written up to the limit first).
#[tokio::test]
async fn an_image_declared_larger_than_the_limit_is_refused_before_it_is_written() {
    let f = fixture();
    let state = AppState::new(
        f.repo.clone(),
        ServerConfig {
            max_blob_bytes: 1_000,
            ..ServerConfig::default()
        },
    );
    let request = Request::put(format!("/api/v1/blobs/{}", "0".repeat(64)))
        .header(header::AUTHORIZATION, format!("Bearer {}", f.targets_token))
        .header(header::CONTENT_LENGTH, 1u64 << 40)
        .body(Body::from_stream(futures_util::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >()))
        .unwrap();
    let (status, json) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        send(router(state), request),
    )
    .await
    .expect("answered without reading the body");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("larger than 1000 bytes")
    );
    assert_eq!(files_in_blobs(&f.repo), 0, "nothing written to blobs/");
}

/// An image trickled in (100 bytes every 10 s, each chunk well within the idle timeout)
/// would hold its connection and a temporary file for ever: refused with 408 once past the
/// grace period, and nothing kept.
#[tokio::test(start_paused = true)]
async fn an_image_uploaded_at_a_trickle_is_refused() {
    let f = fixture();
    let state = AppState::new(f.repo.clone(), ServerConfig::default());
    let trickle = futures_util::stream::unfold(0u32, |sent| async move {
        (sent < 1_000).then_some(())?;
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        Some((Ok::<_, std::io::Error>(vec![7u8; 100]), sent + 1))
    });
    let request = Request::put(format!("/api/v1/blobs/{}", "0".repeat(64)))
        .header(header::AUTHORIZATION, format!("Bearer {}", f.targets_token))
        .body(Body::from_stream(trickle))
        .unwrap();
    let started = tokio::time::Instant::now();
    let (status, json) = send(router(state), request).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("upload slower than 4096 bytes/s"), "{error}");
    // Past the default grace period (the idle timeout, 60 s), at the next look (each second).
    let grace = service_runtime::http::ServerLimits::default().idle_timeout;
    let took = started.elapsed();
    assert!(
        took >= grace && took <= grace + std::time::Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(files_in_blobs(&f.repo), 0, "nothing kept in blobs/");
}

/// An upload that stops sending (over HTTP/2 a client's PINGs keep its connection from
/// being idle) is refused past the grace period all the same: no chunk needs to arrive.
#[tokio::test(start_paused = true)]
async fn an_image_upload_that_stalls_is_refused() {
    let f = fixture();
    let state = AppState::new(f.repo.clone(), ServerConfig::default());
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(vec![7u8; 1000])]);
    let stalled = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    let request = Request::put(format!("/api/v1/blobs/{}", "0".repeat(64)))
        .header(header::AUTHORIZATION, format!("Bearer {}", f.targets_token))
        .body(Body::from_stream(stalled))
        .unwrap();
    let grace = service_runtime::http::ServerLimits::default().idle_timeout;
    let started = tokio::time::Instant::now();
    let answered = tokio::time::timeout(grace * 2, send(router(state), request)).await;
    let (status, json) = answered.expect("a stalled upload was still waited for");
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("upload slower than 4096 bytes/s"), "{error}");
    let took = started.elapsed();
    assert!(
        took >= grace && took <= grace + std::time::Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(files_in_blobs(&f.repo), 0, "nothing kept in blobs/");
}

/// Uploads may not take the room the renewals of snapshot and timestamp need (a full disk
/// stops them, and the fleet sees a freeze within a day): refused with 507 before a byte is
/// written, whatever the token may upload.
#[tokio::test]
async fn uploads_leave_the_room_metadata_renewals_need() {
    let f = fixture();
    let before = f.served();
    let state = AppState::new(
        f.repo.clone(),
        ServerConfig {
            min_free_bytes: u64::MAX / 2,
            ..ServerConfig::default()
        },
    );
    let blob = Request::put(format!(
        "/api/v1/blobs/{}",
        uptane_core::hash::sha256_hex(IMAGE)
    ))
    .header(header::AUTHORIZATION, format!("Bearer {}", f.targets_token))
    .header(header::CONTENT_LENGTH, IMAGE.len())
    .body(Body::from(IMAGE))
    .unwrap();
    let (status, json) = send(router(state.clone()), blob).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{json}");
    assert!(json["error"].as_str().unwrap().contains("keeps"), "{json}");
    let targets = f.signed_targets(|b| b);
    let metadata = Request::put("/api/v1/metadata/targets")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.targets_token))
        .header(header::CONTENT_LENGTH, targets.len())
        .body(Body::from(targets))
        .unwrap();
    let (status, json) = send(router(state), metadata).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{json}");
    assert_eq!(f.served(), before);
    let blobs = std::fs::read_dir(f.repo.dir().join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(blobs, 0);
}

/// A name whose stored form (`<digest hex>.<name>`, for each digest listed) would not fit a
/// file name is refused with 400 when its metadata is uploaded (before: accepted, then a 500
/// at the link); the same name listed with SHA-256 alone fits, and is published.
#[tokio::test]
async fn a_name_too_long_to_store_is_refused_and_one_that_fits_is_published() {
    let f = fixture();
    assert_eq!(f.upload_blob(IMAGE).await, StatusCode::CREATED);
    let name = format!("dir/{}.bin", "n".repeat(186)); // 190 bytes: fits 64 + 1 + 190
    let both = uptane_core::hash::standard_hashes(IMAGE);
    let sha256_only: uptane_core::hash::Hashes = both
        .iter()
        .filter(|(k, _)| k.as_str() == "sha256")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let custom = Some(image_custom(&["hw-brake".into()], 2));
    let with = |hashes: uptane_core::hash::Hashes| {
        let (name, custom) = (name.clone(), custom.clone());
        f.signed_targets(move |b| b.target_with(&name, IMAGE.len() as u64, hashes, custom))
    };
    let error = assert_refused(
        &f,
        "/api/v1/metadata/targets",
        Some(&f.targets_token),
        with(both.clone()),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(error.contains("longer than a file name may be"), "{error}");
    let (status, json) = f
        .put(
            "/api/v1/metadata/targets",
            Some(&f.targets_token),
            with(sha256_only),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
}
