//! The image repository as real processes: python-tuf and our own client read it, through
//! root and online key rotation and a supplier delegation; and a crash in the middle of a
//! publish leaves a repository clients can still verify.
//!
//! Everything here talks plaintext HTTP (`IMAGE_REPO_INSECURE`, the clients' `--insecure`):
//! python-tuf reads the repository without a CA bundle, and these tests are about TUF and
//! crash safety. The transport is tested in `tls.rs`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use uptane_tests::{ChildGuard, bin, copy, python_tuf_venv, run, run_ok, spawn_listening};

const LIMIT: Duration = Duration::from_secs(60);

struct Repo {
    dir: tempfile::TempDir,
}

/// An `image-repo` command allowed to talk plaintext HTTP.
fn image_repo(args: &[&str]) -> Command {
    let mut command = Command::new(bin("image-repo"));
    command.args(args).env("IMAGE_REPO_INSECURE", "true");
    command
}

impl Repo {
    fn new() -> Self {
        let repo = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        repo.cli(&[
            "init",
            "--repo",
            &repo.path("repo"),
            "--offline-keys",
            &repo.path("keys"),
        ]);
        repo
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn cli(&self, args: &[&str]) -> String {
        run_ok(&mut image_repo(args), LIMIT)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::write(self.dir.path().join(name), bytes).unwrap();
        self.path(name)
    }

    fn serve(&self, fault: Option<&str>) -> (ChildGuard, String) {
        let mut command = image_repo(&[]);
        command.args([
            "serve",
            "--repo",
            &self.path("repo"),
            "--listen",
            "127.0.0.1:0",
        ]);
        command.env_remove("IMAGE_REPO_FAULT_CRASH_AT");
        if let Some(point) = fault {
            command.env("IMAGE_REPO_FAULT_CRASH_AT", point);
        }
        let (child, addr) = spawn_listening(command, LIMIT);
        (child, format!("http://{addr}"))
    }

    fn timestamp_version(&self) -> u64 {
        let bytes = std::fs::read(self.dir.path().join("repo/metadata/timestamp.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        doc["signed"]["version"].as_u64().unwrap()
    }
}

/// Our TUF client (the Primary's repository client) downloading `names`.
fn our_client(repo: &Repo, url: &str, client_dir: &Path, names: &[&str]) -> Result<(), String> {
    let md = client_dir.join("ours-md");
    let out = client_dir.join("ours-out");
    if !md.exists() {
        std::fs::create_dir_all(&md).unwrap();
        copy(
            &repo.dir.path().join("repo/metadata/1.root.json"),
            &md.join("root.json"),
        );
    }
    let mut command = Command::new(bin("tuf-conformance-client"));
    command
        .arg("--metadata-url")
        .arg(format!("{url}/metadata"))
        .arg("--metadata-dir")
        .arg(&md);
    for name in names {
        command.args(["--target-name", name]);
    }
    command
        .arg("--target-dir")
        .arg(&out)
        .arg("--target-base-url")
        .arg(format!("{url}/targets"))
        .arg("download");
    let (status, _, stderr) = run(&mut command, LIMIT);
    if status.success() {
        Ok(())
    } else {
        Err(stderr)
    }
}

const PYTHON_CLIENT: &str = r#"
import sys
from tuf.ngclient import Updater
metadata_dir, url, target_dir, *names = sys.argv[1:]
updater = Updater(metadata_dir=metadata_dir, metadata_base_url=url + "/metadata/",
                  target_dir=target_dir, target_base_url=url + "/targets/", bootstrap=None)
updater.refresh()
for name in names:
    info = updater.get_targetinfo(name)
    if info is None:
        sys.exit(f"python-tuf: no target {name}")
    path = updater.find_cached_target(info) or updater.download_target(info)
    print(path)
"#;

/// python-tuf's ngclient downloading `names`; returns the paths it stored them at.
fn python_client(repo: &Repo, url: &str, client_dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let md = client_dir.join("py-md");
    let out = client_dir.join("py-out");
    if !md.exists() {
        std::fs::create_dir_all(&md).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        copy(
            &repo.dir.path().join("repo/metadata/1.root.json"),
            &md.join("root.json"),
        );
    }
    let script = client_dir.join("client.py");
    std::fs::write(&script, PYTHON_CLIENT).unwrap();
    let stdout = run_ok(
        Command::new(python_tuf_venv())
            .arg(&script)
            .arg(&md)
            .arg(url)
            .arg(&out)
            .args(names),
        LIMIT,
    );
    stdout.lines().map(PathBuf::from).collect()
}

#[test]
fn python_tuf_and_our_client_read_the_repository_through_rotations_and_delegation() {
    let repo = Repo::new();
    let image_a = vec![0xa1u8; 300_000];
    let image_b = b"second image".to_vec();
    let (a, b) = (repo.write("a.bin", &image_a), repo.write("b.bin", &image_b));
    let keys = repo.path("keys");
    let repo_dir = repo.path("repo");
    repo.cli(&[
        "add",
        "--repo",
        &repo_dir,
        "--offline-keys",
        &keys,
        "--name",
        "ecu/a.bin",
        "--hardware-id",
        "hw-a",
        "--release-counter",
        "1",
        &a,
    ]);
    let (_server, url) = repo.serve(None);
    let token = repo
        .cli(&["token", "create", "--repo", &repo_dir, "--role", "targets"])
        .trim()
        .to_string();
    repo.cli(&[
        "add",
        "--server",
        &url,
        "--token",
        &token,
        "--offline-keys",
        &keys,
        "--name",
        "b.bin",
        "--hardware-id",
        "hw-b",
        &b,
    ]);

    let clients = tempfile::tempdir().unwrap();
    let paths = python_client(&repo, &url, clients.path(), &["ecu/a.bin", "b.bin"]);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), image_a);
    assert_eq!(std::fs::read(&paths[1]).unwrap(), image_b);
    our_client(&repo, &url, clients.path(), &["ecu/a.bin", "b.bin"]).unwrap();

    // Root rotation to a 2-of-3 root, then a new timestamp key; both clients walk the chain.
    repo.cli(&[
        "rotate-root",
        "--repo",
        &repo_dir,
        "--offline-keys",
        &keys,
        "--keys",
        "3",
        "--threshold",
        "2",
    ]);
    repo.cli(&[
        "rotate-online",
        "--repo",
        &repo_dir,
        "--offline-keys",
        &keys,
        "--role",
        "timestamp",
    ]);
    let image_c = b"after rotation".to_vec();
    let c = repo.write("c.bin", &image_c);
    repo.cli(&[
        "add",
        "--server",
        &url,
        "--token",
        &token,
        "--offline-keys",
        &keys,
        "--name",
        "c.bin",
        "--hardware-id",
        "hw-c",
        &c,
    ]);
    let paths = python_client(&repo, &url, clients.path(), &["c.bin", "b.bin"]);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), image_c);
    our_client(&repo, &url, clients.path(), &["c.bin", "b.bin"]).unwrap();

    // A supplier delegation: the supplier signs its own role and uploads through its token.
    let supplier_key = repo.path("supplier.pem");
    repo.cli(&["keygen", "--out", &supplier_key]);
    let public = format!("{supplier_key}.pub.json");
    repo.cli(&[
        "delegate",
        "--server",
        &url,
        "--token",
        &token,
        "--offline-keys",
        &keys,
        "--role",
        "acme",
        "--key",
        &public,
        "--path",
        "acme/*",
        "--hardware-id",
        "hw-acme",
    ]);
    let supplier_token = repo
        .cli(&["token", "create", "--repo", &repo_dir, "--role", "acme"])
        .trim()
        .to_string();
    let image_d = b"supplier image".to_vec();
    let d = repo.write("d.bin", &image_d);
    repo.cli(&[
        "supplier-add",
        "--server",
        &url,
        "--token",
        &supplier_token,
        "--role",
        "acme",
        "--key",
        &supplier_key,
        "--name",
        "acme/ctl.bin",
        "--hardware-id",
        "hw-acme",
        "--release-counter",
        "4",
        &d,
    ]);
    let paths = python_client(&repo, &url, clients.path(), &["acme/ctl.bin", "ecu/a.bin"]);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), image_d);
    assert_eq!(std::fs::read(&paths[1]).unwrap(), image_a);
    our_client(&repo, &url, clients.path(), &["acme/ctl.bin", "ecu/a.bin"]).unwrap();

    // Removing a target: neither client finds it any more.
    repo.cli(&[
        "remove",
        "--server",
        &url,
        "--token",
        &token,
        "--offline-keys",
        &keys,
        "--name",
        "b.bin",
    ]);
    let script = clients.path().join("client.py");
    let (status, _, stderr) = run(
        Command::new(python_tuf_venv())
            .arg(&script)
            .arg(clients.path().join("py-md"))
            .arg(&url)
            .arg(clients.path().join("py-out"))
            .arg("b.bin"),
        LIMIT,
    );
    assert!(
        !status.success() && stderr.contains("no target b.bin"),
        "{stderr}"
    );
    assert!(our_client(&repo, &url, clients.path(), &["b.bin"]).is_err());
}

#[test]
fn a_crash_at_any_point_of_a_publish_leaves_a_verifiable_repository() {
    let repo = Repo::new();
    let keys = repo.path("keys");
    let repo_dir = repo.path("repo");
    let first = repo.write("first.bin", b"first image");
    repo.cli(&[
        "add",
        "--repo",
        &repo_dir,
        "--offline-keys",
        &keys,
        "--name",
        "first.bin",
        "--hardware-id",
        "hw",
        &first,
    ]);
    let token = repo
        .cli(&["token", "create", "--repo", &repo_dir, "--role", "targets"])
        .trim()
        .to_string();
    let clients = tempfile::tempdir().unwrap();
    for (i, point) in ["after-blobs", "after-role", "after-snapshot"]
        .into_iter()
        .enumerate()
    {
        let before = repo.timestamp_version();
        let (mut server, url) = repo.serve(Some(point));
        let name = format!("crash-{i}.bin");
        let file = repo.write(&name, format!("image {i}").as_bytes());
        let (status, _, _) = run(
            &mut image_repo(&[
                "add",
                "--server",
                &url,
                "--token",
                &token,
                "--offline-keys",
                &keys,
                "--name",
                &name,
                "--hardware-id",
                "hw",
                &file,
            ]),
            LIMIT,
        );
        assert!(
            !status.success(),
            "the publish at {point} should have been cut"
        );
        let exit = server.wait_exit(LIMIT).expect("the server aborted");
        assert!(!exit.success(), "{point}: {}", server.stderr());
        assert_eq!(
            repo.timestamp_version(),
            before,
            "{point}: nothing new is published"
        );

        // Restarted, the repository still verifies, with the old content.
        let (_server, url) = repo.serve(None);
        our_client(&repo, &url, clients.path(), &["first.bin"]).unwrap();
        assert!(our_client(&repo, &url, clients.path(), &[&name]).is_err());
        // And publishing works again.
        repo.cli(&[
            "add",
            "--server",
            &url,
            "--token",
            &token,
            "--offline-keys",
            &keys,
            "--name",
            &name,
            "--hardware-id",
            "hw",
            &file,
        ]);
        our_client(&repo, &url, clients.path(), &[&name]).unwrap();
    }
}

#[test]
fn a_kill_at_any_moment_of_a_publish_leaves_old_or_new_state() {
    let repo = Repo::new();
    let keys = repo.path("keys");
    let repo_dir = repo.path("repo");
    let clients = tempfile::tempdir().unwrap();
    let image = repo.write("img.bin", b"image");
    repo.cli(&[
        "add",
        "--repo",
        &repo_dir,
        "--offline-keys",
        &keys,
        "--name",
        "base.bin",
        "--hardware-id",
        "hw",
        &image,
    ]);
    // Kill the publishing process at increasing delays; each time the repository verifies.
    for (i, delay_ms) in [0u64, 2, 5, 10, 20, 40].into_iter().enumerate() {
        let before = repo.timestamp_version();
        let mut child = image_repo(&[])
            .args([
                "add",
                "--repo",
                &repo_dir,
                "--offline-keys",
                &keys,
                "--name",
                &format!("k{i}.bin"),
                "--hardware-id",
                "hw",
                &image,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let (_server, url) = repo.serve(None);
        our_client(&repo, &url, clients.path(), &["base.bin"]).unwrap();
        let published = our_client(&repo, &url, clients.path(), &[&format!("k{i}.bin")]).is_ok();
        // The new image is visible exactly when the new timestamp is.
        assert_eq!(
            published,
            repo.timestamp_version() > before,
            "kill after {delay_ms} ms"
        );
    }
}
