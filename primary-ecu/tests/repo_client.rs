//! The repository client against a real HTTP server on 127.0.0.1 serving metadata made by
//! `uptane-core`'s builders.

#![allow(clippy::unwrap_used)] // test support code outside #[test] functions

mod support;

use std::time::Duration;

use primary_ecu::ports::HttpRepository;
use primary_ecu::repo::{
    ClientError, FetchError, Fetcher, MetadataDir, RefreshOutcome, Updater, download_verified,
};
use support::{Reply, Server};
use uptane_core::error::{AttackKind, UpdateError};
use uptane_core::sign::delegated_role;
use uptane_core::testing::{RepoFixture, key, now};
use uptane_core::trusted::{ImageRepo, Limits};

/// The test server is plaintext HTTP (it injects faults at the byte level).
fn plaintext() -> service_runtime::http::ClientTls {
    service_runtime::http::ClientTls::new(None, None, true).unwrap()
}

fn fetcher() -> Fetcher {
    Fetcher::new(&plaintext(), Duration::from_secs(10), 0).unwrap()
}

fn updater(
    base: &str,
    dir: &std::path::Path,
) -> Result<Updater<'static, ImageRepo, HttpRepository>, ClientError> {
    // Each test's repository lives as long as the test process.
    let remote: &'static HttpRepository = Box::leak(Box::new(HttpRepository::new(
        fetcher(),
        &format!("{base}/metadata"),
        &format!("{base}/targets"),
    )));
    Updater::new(remote, MetadataDir::new(dir), now(), Limits::default())
}

fn pinned(repo: &RepoFixture) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), repo.initial_root()).unwrap();
    dir
}

fn json_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn first_refresh_makes_the_tuf_requests_in_order_and_keeps_exact_bytes() {
    let mut repo = RepoFixture::new();
    repo.add_target("a.bin", b"aaa", None);
    repo.publish();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    let mut up = updater(&base, dir.path()).unwrap();
    assert_eq!(up.refresh().await.unwrap(), RefreshOutcome::Updated);
    assert_eq!(
        server.take_log(),
        [
            "/metadata/2.root.json",
            "/metadata/timestamp.json",
            "/metadata/2.snapshot.json",
            "/metadata/2.targets.json"
        ]
    );
    assert_eq!(
        std::fs::read(dir.path().join("timestamp.json")).unwrap(),
        repo.timestamp
    );
    assert_eq!(
        std::fs::read(dir.path().join("snapshot.json")).unwrap(),
        repo.snapshot
    );
    assert_eq!(
        json_files(dir.path()),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );

    // Nothing changed: only root and timestamp are asked for, local metadata is reused.
    let mut up = updater(&base, dir.path()).unwrap();
    assert_eq!(up.refresh().await.unwrap(), RefreshOutcome::Unchanged);
    assert_eq!(
        server.take_log(),
        ["/metadata/2.root.json", "/metadata/timestamp.json"]
    );
    assert!(
        up.trusted()
            .targets()
            .unwrap()
            .targets
            .contains_key("a.bin")
    );
}

#[tokio::test]
async fn refused_metadata_is_not_persisted() {
    let mut repo = RepoFixture::new();
    repo.publish_timestamp_only();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    updater(&base, dir.path()).unwrap().refresh().await.unwrap();
    let trusted = std::fs::read(dir.path().join("timestamp.json")).unwrap();

    let mut old = RepoFixture::new();
    old.expires = repo.expires;
    server.put(
        "/metadata/timestamp.json",
        Reply::Body(old.timestamp.clone()),
    );
    let err = updater(&base, dir.path())
        .unwrap()
        .refresh()
        .await
        .unwrap_err();
    assert!(matches!(
        &err,
        ClientError::Update { source, .. } if matches!(**source, UpdateError::Rollback { .. })
    ));
    assert_eq!(err.attack(), Some(AttackKind::Rollback));
    assert_eq!(
        std::fs::read(dir.path().join("timestamp.json")).unwrap(),
        trusted
    );
}

/// The `.partial` files a refresh left in `dir` (written while checked, never renamed).
fn partial_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

#[tokio::test]
async fn a_large_file_written_while_checked_is_kept_only_if_admitted() {
    let mut repo = RepoFixture::new();
    for i in 0..400 {
        repo.add_target(&format!("file-{i:04}.bin"), i.to_string().as_bytes(), None);
    }
    repo.publish();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    updater(&base, dir.path()).unwrap().refresh().await.unwrap();
    let kept = std::fs::read(dir.path().join("targets.json")).unwrap();
    assert!(
        kept.len() >= 64 << 10,
        "{} bytes: too small to be written while it is checked",
        kept.len()
    );
    assert_eq!(kept, repo.targets_files["targets"]);
    assert!(partial_files(dir.path()).is_empty());

    // The next version, altered on the way: refused (its hash is not the snapshot's), and
    // neither the kept file nor a stray copy of the altered bytes is left changed on disk.
    repo.add_target("new.bin", b"new", None);
    repo.publish();
    server.publish(&repo);
    let path = format!("/metadata/{}.targets.json", repo.targets.common.version);
    let mut altered = repo.targets_files["targets"].clone();
    let at = altered.len() / 2;
    altered[at] ^= 1;
    server.put(&path, Reply::Body(altered));
    let err = updater(&base, dir.path())
        .unwrap()
        .refresh()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Update { source, .. } if matches!(**source, UpdateError::DigestMismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("targets.json")).unwrap(),
        kept
    );
    assert!(partial_files(dir.path()).is_empty());
    // The timestamp and snapshot admitted before the refusal are kept.
    assert_eq!(
        std::fs::read(dir.path().join("snapshot.json")).unwrap(),
        repo.snapshot
    );
}

/// Refreshes from a pinned `repo` whose server answers `timestamp.json` with endless bytes;
/// the client's directory and the refresh's error.
async fn refresh_with_endless_timestamp(repo: &RepoFixture) -> (tempfile::TempDir, ClientError) {
    let (server, base) = Server::start().await;
    server.publish(repo);
    server.put(
        "/metadata/timestamp.json",
        Reply::Endless(100 * 1024 * 1024),
    );
    let dir = pinned(repo);
    let err = updater(&base, dir.path())
        .unwrap()
        .refresh()
        .await
        .unwrap_err();
    (dir, err)
}

#[tokio::test]
async fn endless_metadata_is_cut_at_the_limit() {
    let repo = RepoFixture::new();
    let (dir, err) = refresh_with_endless_timestamp(&repo).await;
    assert!(matches!(
        err,
        ClientError::Fetch(FetchError::TooLarge { limit: 16_384, .. })
    ));
    assert_eq!(err.attack(), Some(AttackKind::EndlessData));
    assert_eq!(json_files(dir.path()), ["root.json"]);
}

#[tokio::test]
async fn delegated_role_names_are_percent_encoded() {
    let mut repo = RepoFixture::new();
    let k = key(30);
    repo.delegate(
        "targets",
        delegated_role("/a?b#c", &[k.public_key()], 1, &["*"], false),
        vec![k],
    );
    repo.add_delegated_target("/a?b#c", "x.bin", b"xx");
    repo.publish();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    let mut up = updater(&base, dir.path()).unwrap();
    up.refresh().await.unwrap();
    server.take_log();
    let target = up.find_target("x.bin").await.unwrap();
    assert_eq!(target.role(), "/a?b#c");
    assert_eq!(server.take_log(), ["/metadata/1.%2Fa%3Fb%23c.json"]);
    assert!(dir.path().join("%2Fa%3Fb%23c.json").exists());
}

#[tokio::test]
async fn target_download_verifies_and_leaves_nothing_on_failure() {
    let mut repo = RepoFixture::new();
    repo.add_target("dir/a.bin", b"good bytes", None);
    repo.publish();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    let out = tempfile::tempdir().unwrap();
    let mut up = updater(&base, dir.path()).unwrap();
    up.refresh().await.unwrap();
    let target = up.find_target("dir/a.bin").await.unwrap();
    let url = up.target_url(&format!("{base}/targets"), "dir/a.bin", target.info());
    let hash = &target.info().hashes["sha256"];
    assert_eq!(url, format!("{base}/targets/dir/{hash}.a.bin"));

    let path = url.strip_prefix(&base).unwrap().to_string();
    server.put(&path, Reply::Body(b"evil bytes".to_vec()));
    let dest = out.path().join("a.bin");
    let err = download_verified(&fetcher(), &url, target.info(), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.attack(), Some(AttackKind::ArbitrarySoftware));
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    server.put(&path, Reply::Body(b"good bytes and more".to_vec()));
    let err = download_verified(&fetcher(), &url, target.info(), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.attack(), Some(AttackKind::EndlessData));
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    server.put(&path, Reply::Body(b"good bytes".to_vec()));
    download_verified(&fetcher(), &url, target.info(), &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"good bytes");
}

/// A target name may hold `?`, `#`, `%`, spaces and letters outside ASCII (G-4 refuses only
/// control and invisible characters): the URL percent-encodes it, so the request names the
/// file (written as they are, `?` and `#` would end the path and fetch another).
#[tokio::test]
async fn a_target_name_with_url_characters_is_fetched_under_its_own_name() {
    let name = "dir/fw v1#2?%é.bin";
    let mut repo = RepoFixture::new();
    repo.add_target(name, b"odd name", None);
    repo.publish();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    let out = tempfile::tempdir().unwrap();
    let mut up = updater(&base, dir.path()).unwrap();
    up.refresh().await.unwrap();
    let target = up.find_target(name).await.unwrap();
    let url = up.target_url(&format!("{base}/targets"), name, target.info());
    let hash = &target.info().hashes["sha256"];
    let path = format!("/targets/dir/{hash}.fw%20v1%232%3F%25%C3%A9.bin");
    assert_eq!(url, format!("{base}{path}"));
    server.put(&path, Reply::Body(b"odd name".to_vec()));
    server.clear_log();
    let dest = out.path().join("odd.bin");
    download_verified(&fetcher(), &url, target.info(), &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"odd name");
    assert_eq!(server.take_log(), [path]);
}

#[tokio::test]
async fn resumes_a_download_with_a_range_request() {
    let body = b"0123456789abcdef".to_vec();
    let (server, base) = Server::start().await;
    server.put("/t", Reply::Body(body.clone()));
    let hashes = uptane_core::hash::standard_hashes(&body);
    let mut verifier = uptane_core::hash::StreamVerifier::new(Some(16), &hashes).unwrap();
    verifier.update(&body[..6]).unwrap();
    let mut digests = service_runtime::digest::ThreadedDigests::start(verifier).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    std::fs::write(&path, &body[..6]).unwrap();
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    fetcher()
        .download_to(&format!("{base}/t"), &file, &mut digests, 16)
        .await
        .unwrap();
    digests.finish().await.unwrap().finish().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
}

#[tokio::test]
async fn a_download_slower_than_the_minimum_is_abandoned() {
    let (server, base) = Server::start().await;
    server.put(
        "/slow",
        Reply::Trickle(vec![b'x'; 200], Duration::from_millis(20)),
    );
    let slow = Fetcher::with_grace(
        &plaintext(),
        Duration::from_secs(10),
        1_000_000,
        Duration::from_millis(100),
    )
    .unwrap();
    let err = slow
        .fetch_bounded(&format!("{base}/slow"), 1000)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::TooSlow { .. }));
    assert_eq!(
        ClientError::from(err).attack(),
        Some(AttackKind::SlowRetrieval)
    );
}

/// Accepted metadata is written beside the next fetch, in order: a chain of roots ends with
/// the newest on disk, and what was accepted is durable even when a later file is refused.
#[tokio::test]
async fn accepted_roots_are_kept_in_order_even_when_the_refresh_then_fails() {
    let mut repo = RepoFixture::new();
    for version in 2..=4 {
        let current: serde_json::Value =
            serde_json::from_slice(repo.roots.last().unwrap()).unwrap();
        let old: uptane_core::metadata::Root =
            serde_json::from_value(current["signed"].clone()).unwrap();
        let builder = uptane_core::sign::RootBuilder::from_root(&old, version, repo.expires);
        repo.rotate_root(builder, vec![key(1)]);
    }
    repo.publish();
    let (dir, err) = refresh_with_endless_timestamp(&repo).await;
    assert!(
        matches!(err, ClientError::Fetch(FetchError::TooLarge { .. })),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("root.json")).unwrap(),
        repo.roots[3]
    );
    assert_eq!(json_files(dir.path()), ["root.json"]);
}
