//! The command lines as an operator meets them (issue 19): the real binaries, their stdout,
//! stderr and exit status. Statuses are those of `service_runtime::cli::Exit`
//! (docs/CLI.md): 4 unreachable, 5 refused by a server, 6 bad configuration, 64 usage.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::mpsc;

use serde_json::Value;
use uptane_tests::sim::{Fleet, LIMIT};
use uptane_tests::{bin, run, run_ok};

const SECRETS: [(&str, &str); 5] = [
    ("DIRECTOR_TOKEN", "dat_SECRET_director_token"),
    ("IMAGE_REPO_TOKEN", "SECRET_upload_token"),
    ("PRIMARY_PROVISIONING_TOKEN", "SECRET_provisioning_token"),
    ("PRIMARY_OPERATOR_TOKEN", "SECRET_operator_token"),
    ("PRIMARY_VEHICLE_CREDENTIAL", "SECRET_vehicle_credential"),
];

/// The subcommand names a `--help` output lists.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

fn help_with_secrets(program: &str, path: &[String]) -> String {
    let mut command = Command::new(bin(program));
    command.args(path).arg("--help");
    for (name, value) in SECRETS {
        command.env(name, value);
    }
    let (status, out, err) = run(&mut command, LIMIT);
    assert!(status.success(), "{program} {path:?} --help: {err}");
    out
}

#[test]
fn no_help_shows_a_secret_from_the_environment() {
    let mut seen = 0;
    for program in ["director", "image-repo", "primary-ecu", "secondary-ecu"] {
        let mut queue = vec![Vec::<String>::new()];
        while let Some(path) = queue.pop() {
            let help = help_with_secrets(program, &path);
            seen += 1;
            for (name, value) in SECRETS {
                assert!(
                    !help.contains(value),
                    "`{program} {} --help` prints {name}'s value:\n{help}",
                    path.join(" ")
                );
            }
            for sub in subcommands(&help) {
                let mut next = path.clone();
                next.push(sub);
                queue.push(next);
            }
        }
    }
    // Every program's subcommands were walked, not only the top-level help.
    assert!(seen > 40, "only {seen} help pages");
}

#[test]
fn operator_errors_say_what_to_do_and_exit_with_their_status() {
    let empty = tempfile::tempdir().unwrap();
    let director = |args: &[&str]| {
        let mut command = Command::new(bin("director"));
        command.args(args).env_remove("DIRECTOR_TOKEN");
        run(&mut command, LIMIT)
    };
    let no_dir = empty.path().join("nodir");
    let (status, _, err) = director(&[
        "token",
        "create",
        "--dir",
        no_dir.to_str().unwrap(),
        "--label",
        "x",
    ]);
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(
        err.contains("is not a Director directory") && err.contains("director init"),
        "{err}"
    );
    assert!(!err.contains("Error code 14"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");

    // Lifetimes out of range are refused before anything starts (a huge one overflowed the
    // expiry arithmetic in a request; none at all signed metadata already expired).
    for (flag, value) in [
        ("--metadata-lifetime-secs", "0"),
        ("--metadata-lifetime-secs", "9223372036854775807"),
        ("--vehicle-credential-lifetime-secs", "10"),
    ] {
        let (status, _, err) = director(&[
            "serve",
            "--dir",
            no_dir.to_str().unwrap(),
            "--image-repo",
            "http://127.0.0.1:9",
            "--insecure",
            flag,
            value,
        ]);
        assert_eq!(status.code(), Some(64), "{flag} {value}: {err}");
        assert!(err.contains(flag) && err.contains("3600"), "{err}");
    }

    let (status, _, err) = director(&["vehicle", "list"]);
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(
        err.contains("DIRECTOR_TOKEN") && err.contains("director token create"),
        "{err}"
    );

    let (status, _, err) = director(&[
        "vehicle",
        "list",
        "--token",
        "dat_x",
        "--server",
        "https://127.0.0.1:9",
    ]);
    assert_eq!(status.code(), Some(4), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with("error: could not reach the Director"),
        "{err}"
    );
    assert!(lines[1].trim_start().starts_with("cause:"), "{err}");

    let (status, _, err) = director(&["vehicle", "lst"]);
    assert_eq!(status.code(), Some(64), "{err}");

    // Local files that are not what a command needs: bad configuration, said plainly.
    let not_a_root = empty.path().join("not-a-root.json");
    std::fs::write(&not_a_root, b"{}").unwrap();
    let (status, _, err) = director(&[
        "init",
        "--dir",
        empty.path().join("d").to_str().unwrap(),
        "--offline-keys",
        empty.path().join("k").to_str().unwrap(),
        "--image-root",
        not_a_root.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(err.contains("does not verify as a root"), "{err}");
    let nowhere = empty.path().join("nowhere");
    for (program, args) in [
        ("primary-ecu", vec!["status", "--dir"]),
        ("primary-ecu", vec!["once", "--dir"]),
        ("secondary-ecu", vec!["run", "--insecure", "--dir"]),
    ] {
        let (status, _, err) = run(Command::new(bin(program)).args(&args).arg(&nowhere), LIMIT);
        assert_eq!(status.code(), Some(6), "{program} {args:?}: {err}");
        assert!(err.contains("init --dir"), "{program} {args:?}: {err}");
    }

    let fleet = Fleet::start();
    let (status, _, err) = run(
        Command::new(bin("director")).args([
            "vehicle",
            "list",
            "--server",
            &fleet.director_url,
            "--ca-cert",
            fleet.ca_cert.to_str().unwrap(),
            "--token",
            "dat_not_a_token",
        ]),
        LIMIT,
    );
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(
        err.contains("HTTP 401") && err.contains("DIRECTOR_TOKEN"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Records events straight into the Director's database (the server is running: SQLite
/// serializes the writers), as the service records them.
fn record_events(fleet: &Fleet, count: usize, detail: &str) {
    let db = fleet.director_db();
    let now: uptane_core::time::UtcTime = std::time::SystemTime::now().into();
    db.call_blocking(|conn| {
        let tx = conn.savepoint().unwrap();
        for i in 0..count {
            let detail = if detail.is_empty() {
                format!("event {i}")
            } else {
                detail.to_string()
            };
            director::service::NewEvent::info("cli_test", "test", &detail)
                .record(&tx, now)
                .unwrap();
        }
        tx.commit().unwrap();
        Ok::<_, director::db::DbError>(())
    })
    .unwrap();
}

/// Writes an event row past the service (which cuts details to 4 KiB): one a database from
/// before that bound, or edited by hand, can hold.
fn write_raw_event(fleet: &Fleet, detail: &str) {
    let db = fleet.director_db();
    db.call_blocking(|conn| {
        conn.execute(
            "INSERT INTO events (at, kind, severity, actor, detail) \
             VALUES ('2026-12-04T00:00:00Z', 'cli_test', 'info', 'test', ?1)",
            director::params![detail],
        )
        .unwrap();
        Ok::<_, director::db::DbError>(())
    })
    .unwrap();
}

fn event_ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn director_events_pages_newest_first_and_survives_a_megabyte_field() {
    let fleet = Fleet::start();
    record_events(&fleet, 5_000, "");
    let huge = "\u{1b}[31m".to_string() + &"x".repeat(1 << 20);
    write_raw_event(&fleet, &huge);
    record_events(&fleet, 1, "the newest");

    // JSON: newest first, whole fields, pages by --before.
    let page = fleet.operator(&["events", "--limit", "3"]);
    let ids = event_ids(&page);
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert_eq!(page[0]["detail"], "the newest");
    assert_eq!(page[1]["detail"].as_str().unwrap().len(), huge.len());
    let before = ids[2].to_string();
    let next = event_ids(&fleet.operator(&["events", "--limit", "2", "--before", &before]));
    assert_eq!(next, vec![ids[2] - 1, ids[2] - 2]);
    let all = fleet.operator(&["events", "--limit", "1000"]);
    assert_eq!(all.as_array().unwrap().len(), 1000);

    // A table: newest first, the long field cut, no escape sequence reaching the terminal.
    let out = run_ok(
        &mut fleet.operator_human(&["events", "--limit", "5"]),
        LIMIT,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    assert!(lines[1].contains("the newest"), "{out}");
    assert!(lines[2].len() < 1_000, "{}", lines[2].len());
    assert!(
        !out.contains('\u{1b}'),
        "an escape sequence reached the table"
    );
    assert!(out.contains("(older: --before"), "{out}");
    // Beyond the API's page size: a clear refusal, before any row is read.
    let (status, _, err) = run(
        &mut fleet.operator_human(&["events", "--limit", "1001"]),
        LIMIT,
    );
    assert_eq!(status.code(), Some(64), "{err}");

    // `| head -1`: the reader goes away; the command ends quietly with status 0. A thousand
    // events as JSON are about 250 KB, well past what a pipe buffers.
    let (mut child, stdout) =
        uptane_tests::start(fleet.operator_command(&["events", "--limit", "1000"]));
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "[");
    let status = child.wait_exit(LIMIT).expect("it ends");
    assert_eq!(status.code(), Some(0), "{}", child.stderr());
    assert!(!child.stderr().contains("panicked"), "{}", child.stderr());
}

#[test]
fn director_events_follow_prints_new_events_as_they_are_recorded() {
    let fleet = Fleet::start();
    record_events(&fleet, 3, "");
    let mut follow = fleet.operator_command(&["events", "--follow", "--poll-secs", "1"]);
    follow.args(["--limit", "2"]);
    let (_child, stdout) = uptane_tests::start(follow);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next =
        || -> Value { serde_json::from_str(&rx.recv_timeout(LIMIT).expect("a line")).unwrap() };
    // The newest two first, oldest of them first, then what is recorded later.
    let (a, b) = (next(), next());
    assert!(a["id"].as_i64() < b["id"].as_i64(), "{a} {b}");
    record_events(&fleet, 1, "recorded while following");
    // (An event recorded as the follower started may show on both sides of its start.)
    let later = (0..5)
        .map(|_| next())
        .find(|e| e["detail"] == "recorded while following")
        .expect("the event recorded while following");
    assert!(later["id"].as_i64() > b["id"].as_i64());

    // A filter that leaves the first page empty follows from the newest event of the log,
    // without replaying it.
    let mut future = fleet.operator_command(&["events", "--follow", "--poll-secs", "1"]);
    future.args(["--since", "2099-01-01T00:00:00Z"]);
    let (_child, stdout) = uptane_tests::start(future);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Recorded once the follower has read the log (its first page came back empty): wait
    // for that by recording until a line arrives, bounded.
    let mut first = None;
    for i in 0..200 {
        record_events(&fleet, 1, &format!("after the filter {i}"));
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(250)) {
            first = Some(line);
            break;
        }
    }
    let first: Value = serde_json::from_str(&first.expect("a followed event")).unwrap();
    assert!(
        first["detail"]
            .as_str()
            .unwrap()
            .starts_with("after the filter"),
        "replayed the log: {first}"
    );
}

/// An ECU public key file (TUF key JSON) for `director vehicle register --ecu`.
fn ecu_key_file(fleet: &Fleet, seed: u8) -> std::path::PathBuf {
    let key = uptane_core::testing::key(seed);
    let file = fleet.path(&format!("ecu-{seed}.pub.json"));
    std::fs::write(
        &file,
        serde_json::to_vec(key.public_key().to_json()).unwrap(),
    )
    .unwrap();
    file
}

#[test]
fn assign_says_which_earlier_entries_it_supersedes() {
    let fleet = Fleet::start();
    fleet.publish("brake-2.0.bin", "hw-brake", 2, b"brake 2.0");
    fleet.publish("brake-2.1.bin", "hw-brake", 2, b"brake 2.1");
    let key_file = ecu_key_file(&fleet, 7);
    let ecu = format!("ECU-BRAKE-1:hw-brake:{}", key_file.display());
    fleet.operator(&["vehicle", "register", "--vin", "VIN-CLI-1", "--ecu", &ecu]);
    let first = fleet.assign("brake-2.0.bin", &["VIN-CLI-1"]);
    let first_id = first["correlation_id"].as_str().unwrap();
    assert_eq!(first["superseded"], serde_json::json!([]));

    let out = run_ok(
        &mut fleet.operator_human(&["assign", "--image", "brake-2.1.bin", "--vin", "VIN-CLI-1"]),
        LIMIT,
    );
    assert!(out.contains("it supersedes 1 earlier entry"), "{out}");
    assert!(out.contains(first_id), "{out}");
    let listed = fleet.assignments("VIN-CLI-1");
    let old = listed
        .iter()
        .find(|e| e["correlation_id"] == first_id)
        .unwrap();
    assert_eq!(old["status"], "cancelled");
}

#[test]
fn image_repo_speaks_in_sentences_renews_and_shows_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let image_repo = |args: &[&str]| {
        let mut command = Command::new(bin("image-repo"));
        command.args(args);
        run(&mut command, LIMIT)
    };
    let (repo, keys) = (path("repo"), path("keys"));
    std::fs::write(path("a.bin"), b"image a").unwrap();
    run_ok(
        Command::new(bin("image-repo")).args(["init", "--repo", &repo, "--offline-keys", &keys]),
        LIMIT,
    );
    let (status, out, err) = image_repo(&[
        "add",
        "--repo",
        &repo,
        "--offline-keys",
        &keys,
        "--name",
        "a.bin",
        "--hardware-id",
        "hw",
        &path("a.bin"),
    ]);
    assert!(status.success(), "{err}");
    assert_eq!(
        out.trim(),
        "published targets version 2 (1 targets); snapshot version 2, timestamp version 2"
    );
    // Logs written to a file carry no colour codes.
    assert!(!err.contains('\u{1b}'), "{err:?}");

    let (status, out, err) = image_repo(&["status", "--repo", &repo]);
    assert!(status.success(), "{err}");
    let roles: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(roles, ["root", "timestamp", "snapshot", "targets"], "{out}");
    assert!(!out.contains("WARNING") && err.is_empty(), "{out}{err}");
    // Within a configured warning period: a warning that says how to renew.
    let (status, out, err) =
        image_repo(&["status", "--repo", &repo, "--targets-warning-days", "100"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("WARNING"), "{out}");
    assert!(err.contains("image-repo renew"), "{err}");

    let (status, out, err) =
        image_repo(&["renew", "--repo", &repo, "--offline-keys", &keys, "--json"]);
    assert!(status.success(), "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report["version"].as_u64(), report["targets"].as_u64()),
        (Some(3), Some(1))
    );
    let (_, out, _) = image_repo(&["status", "--repo", &repo, "--json"]);
    let status: Value = serde_json::from_str(&out).unwrap();
    let targets = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "targets")
        .unwrap();
    assert_eq!(targets["version"], 3);
    assert_eq!(targets["warning"], false);
}

#[test]
fn servers_say_listening_once() {
    let fleet = Fleet::start();
    let log = fleet.image_repo_log();
    assert!(!log.contains("listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

/// `secondary-ecu init` of a partial-verification door ECU, no Primary pinned.
fn door_init<'a>(dir: &'a str, director_root: &'a str, image: &'a str) -> [&'a str; 16] {
    [
        "init",
        "--dir",
        dir,
        "--vin",
        "VIN-DOOR",
        "--serial",
        "DOOR-1",
        "--hardware-id",
        "hw-door",
        "--mode",
        "partial",
        "--director-root",
        director_root,
        "--factory-image",
        image,
        "--insecure",
    ]
}

#[test]
fn ecu_init_defaults_the_factory_name_and_explains_an_unreachable_secondary() {
    let fleet = Fleet::start();
    let dir = fleet.path("cli-ecu");
    std::fs::write(fleet.path("door-1.0.bin"), b"door factory image").unwrap();
    // No --factory-name: the image's file name.
    let out = run_ok(
        Command::new(bin("secondary-ecu")).args(door_init(
            dir.to_str().unwrap(),
            fleet.path("director/1.root.json").to_str().unwrap(),
            fleet.path("door-1.0.bin").to_str().unwrap(),
        )),
        LIMIT,
    );
    assert!(out.contains("initialized ECU DOOR-1"), "{out}");

    let (status, out, err) = run(
        Command::new(bin("primary-ecu")).args([
            "init",
            "--dir",
            fleet.path("cli-primary").to_str().unwrap(),
            "--vin",
            "VIN-CLI-2",
            "--serial",
            "GW-1",
            "--hardware-id",
            "hw-gw",
            "--director-url",
            &fleet.director_url,
            "--image-repo-url",
            &fleet.director_url,
            "--ca-cert",
            fleet.ca_cert.to_str().unwrap(),
            "--secondary",
            "DOOR-1,127.0.0.1:9,partial",
            "--insecure",
            "--director-root",
            fleet.path("director/1.root.json").to_str().unwrap(),
            "--image-root",
            fleet.path("repo/metadata/1.root.json").to_str().unwrap(),
            "--factory-image",
            fleet.path("door-1.0.bin").to_str().unwrap(),
            "--operator-token",
            &fleet.token,
        ]),
        LIMIT,
    );
    assert_eq!(status.code(), Some(4), "{out}{err}");
    let error: Vec<&str> = err.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert!(
        error[0].starts_with("error: could not reach Secondary DOOR-1 at 127.0.0.1:9"),
        "{err}"
    );
    assert!(error[1].trim_start().starts_with("cause:"), "{err}");
    let debug_words: BTreeSet<&str> = ["Some(", "ConnectError(", "Os {", "Custom {"].into();
    for word in debug_words {
        assert!(!err.contains(word), "debug text {word:?} in:\n{err}");
    }
}

#[test]
fn completions_and_man_pages_come_from_each_program() {
    let out = tempfile::tempdir().unwrap();
    for program in ["director", "image-repo", "primary-ecu", "secondary-ecu"] {
        let mut command = Command::new(bin(program));
        command.args(["completions", "bash"]);
        for (name, value) in SECRETS {
            command.env(name, value);
        }
        let script = run_ok(&mut command, LIMIT);
        // Every top-level subcommand completes (clap_complete's bash script has a case for
        // each, named after the program and the subcommand).
        let top = help_with_secrets(program, &[]);
        let prefix = program.replace('-', "__subcmd__");
        for sub in subcommands(&top) {
            let case = format!("{prefix}__subcmd__{})", sub.replace('-', "__subcmd__"));
            assert!(
                script.contains(&case),
                "{program}: no completion case {case}"
            );
        }
        let script_file = out.path().join(format!("{program}.bash"));
        std::fs::write(&script_file, &script).unwrap();
        run_ok(Command::new("bash").arg("-n").arg(&script_file), LIMIT);

        let pages = out.path().join(format!("man-{program}"));
        let mut command = Command::new(bin(program));
        command.args(["man", "--out", pages.to_str().unwrap()]);
        for (name, value) in SECRETS {
            command.env(name, value);
        }
        let said = run_ok(&mut command, LIMIT);
        assert!(said.starts_with("wrote "), "{said}");
        let names: BTreeSet<String> = std::fs::read_dir(&pages)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&format!("{program}.1")), "{names:?}");
        for name in &names {
            let page = std::fs::read_to_string(pages.join(name)).unwrap();
            for (_, value) in SECRETS {
                assert!(!page.contains(value), "{name} prints a secret");
            }
        }
        for sub in subcommands(&top) {
            assert!(
                names.contains(&format!("{program}-{sub}.1")),
                "{program}: no man page for {sub}: {names:?}"
            );
        }
    }
}

/// The cursors of a listing's rows, newest first.
fn cursors(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cursor"].as_i64().unwrap())
        .collect()
}

/// `LIST --limit 2`, then `--before` the last cursor: the newest two, then the next, with
/// nothing repeated or skipped; the table ends with how to read on.
fn pages_newest_first(fleet: &Fleet, list: &[&str], expect_first: &str, key: &str) {
    let first = fleet.operator(&[list, &["--limit", "2"]].concat());
    let ids = cursors(&first);
    assert_eq!(ids.len(), 2, "{list:?}: {first}");
    assert!(ids[0] > ids[1], "{list:?}: {ids:?}");
    assert_eq!(first[0][key], expect_first, "{list:?}: {first}");
    let before = ids[1].to_string();
    let next = fleet.operator(&[list, &["--limit", "2", "--before", &before]].concat());
    let next_ids = cursors(&next);
    assert!(
        !next_ids.is_empty() && next_ids[0] < ids[1],
        "{list:?}: {next_ids:?}"
    );
    let table = run_ok(
        &mut fleet.operator_human(&[list, &["--limit", "2"]].concat()),
        LIMIT,
    );
    assert!(
        table
            .trim_end()
            .ends_with(&format!("(older: --before {})", ids[1])),
        "{list:?}:\n{table}"
    );
}

#[test]
fn every_listing_pages_newest_first() {
    let fleet = Fleet::start();
    fleet.publish("brake-2.0.bin", "hw-brake", 2, b"brake 2.0");
    let key_file = ecu_key_file(&fleet, 8);
    for i in 1..=3 {
        let ecu = format!("BRAKE-{i}:hw-brake:{}", key_file.display());
        let vin = format!("VIN-PAGE-{i}");
        fleet.operator(&["vehicle", "register", "--vin", &vin, "--ecu", &ecu]);
        fleet.assign("brake-2.0.bin", &[&vin]);
        fleet.operator(&[
            "provisioning-token",
            "create",
            "--label",
            &format!("plant-{i}"),
        ]);
    }
    pages_newest_first(&fleet, &["vehicle", "list"], "VIN-PAGE-3", "vin");
    pages_newest_first(&fleet, &["vehicle", "credentials"], "VIN-PAGE-3", "vin");
    pages_newest_first(&fleet, &["assignment", "list"], "VIN-PAGE-3", "vin");
    pages_newest_first(&fleet, &["provisioning-token", "list"], "plant-3", "label");

    // Operator tokens, read from the database on the Director's machine.
    let dir = fleet.path("director").display().to_string();
    for label in ["second", "third"] {
        run_ok(
            Command::new(bin("director"))
                .args(["token", "create", "--dir", &dir, "--label", label]),
            LIMIT,
        );
    }
    let listed = run_ok(
        Command::new(bin("director"))
            .args(["token", "list", "--dir", &dir, "--json", "--limit", "2"]),
        LIMIT,
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["label"], "third");
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // The API refuses a page larger than a thousand rows, before reading any.
    let refused = uptane_tests::blocking(async {
        fleet
            .https_client()
            .get(format!("{}/api/v1/vehicles?limit=5000", fleet.director_url))
            .bearer_auth(&fleet.token)
            .send()
            .await
            .unwrap()
    });
    assert_eq!(refused.status(), 400);
}

/// `PROGRAM ARGS --json`: its output, which must be one JSON document.
fn json_of(program: &str, args: &[&str]) -> Value {
    let out = run_ok(Command::new(bin(program)).args(args).arg("--json"), LIMIT);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{program} {args:?}: {e}: {out}"))
}

#[test]
fn commands_that_act_locally_speak_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let (repo, repo_keys) = (path("repo"), path("repo-keys"));
    let init = json_of(
        "image-repo",
        &["init", "--repo", &repo, "--offline-keys", &repo_keys],
    );
    assert_eq!(init["root_threshold"], 1);
    let key = json_of("image-repo", &["keygen", "--out", &path("supplier.key")]);
    assert!(key["key_id"].as_str().unwrap().len() >= 32, "{key}");
    let token = json_of(
        "image-repo",
        &[
            "token", "create", "--repo", &repo, "--role", "targets", "--label", "ci",
        ],
    );
    assert!(token["token"].is_string(), "{token}");
    let revoked = json_of(
        "image-repo",
        &["token", "revoke", "--repo", &repo, "--label", "ci"],
    );
    assert_eq!(revoked["revoked"], 1);
    let gc = json_of("image-repo", &["gc", "--repo", &repo]);
    assert_eq!(gc["blobs"], 0);
    // Upload tokens page too, newest first.
    for label in ["second", "third"] {
        json_of(
            "image-repo",
            &[
                "token", "create", "--repo", &repo, "--role", "targets", "--label", label,
            ],
        );
    }
    let page = json_of(
        "image-repo",
        &["token", "list", "--repo", &repo, "--limit", "2"],
    );
    assert_eq!(page[0]["label"], "third");
    assert_eq!(cursors(&page), [3, 2]);
    let rest = json_of(
        "image-repo",
        &[
            "token", "list", "--repo", &repo, "--limit", "2", "--before", "2",
        ],
    );
    assert_eq!(rest[0]["label"], "ci");
    assert_eq!(cursors(&rest), [1]);

    let director = path("director");
    let root = format!("{repo}/metadata/1.root.json");
    let init = json_of(
        "director",
        &[
            "init",
            "--dir",
            &director,
            "--offline-keys",
            &path("director-keys"),
            "--image-root",
            &root,
        ],
    );
    assert_eq!(init["root_keys"], 1);
    let token = json_of(
        "director",
        &["token", "create", "--dir", &director, "--label", "ops"],
    );
    assert!(
        token["token"].as_str().unwrap().starts_with("dat_"),
        "{token}"
    );
    let listed = json_of("director", &["token", "list", "--dir", &director]);
    assert_eq!(listed[0]["label"], "ops");
    let revoked = json_of(
        "director",
        &["token", "revoke", "--dir", &director, "--label", "ops"],
    );
    assert_eq!(revoked["revoked"], 1);

    std::fs::write(path("door.bin"), b"door").unwrap();
    let ecu = json_of(
        "secondary-ecu",
        &door_init(
            &path("ecu"),
            &format!("{director}/1.root.json"),
            &path("door.bin"),
        ),
    );
    assert_eq!(ecu["serial"], "DOOR-1");
    assert_eq!(ecu["fingerprint"].as_str().unwrap().len(), 64);
    let identity = json_of("primary-ecu", &["tls-identity", "--dir", &path("gw")]);
    assert_eq!(identity["fingerprint"].as_str().unwrap().len(), 64);
}

#[test]
fn image_repo_errors_end_with_their_status() {
    let fleet = Fleet::start();
    std::fs::write(fleet.path("x.bin"), b"x").unwrap();
    let keys = fleet.path("repo-keys").display().to_string();
    let file = fleet.path("x.bin").display().to_string();
    let add = |server: &str, token: &str| {
        let mut command = Command::new(bin("image-repo"));
        command.args([
            "add",
            "--server",
            server,
            "--token",
            token,
            "--ca-cert",
            fleet.ca_cert.to_str().unwrap(),
            "--offline-keys",
            &keys,
            "--name",
            "x.bin",
            "--hardware-id",
            "hw",
            &file,
        ]);
        run(&mut command, LIMIT)
    };
    let (status, _, err) = add("https://127.0.0.1:9", "irt_x");
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(
        err.starts_with("error: could not reach the Image repository"),
        "{err}"
    );
    let (status, _, err) = add(&fleet.image_url, "irt_not_a_token");
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(
        err.contains("HTTP 401") && err.contains("IMAGE_REPO_TOKEN"),
        "{err}"
    );
    let (status, _, err) = run(
        Command::new(bin("image-repo")).args([
            "status",
            "--repo",
            fleet.path("no-repo").to_str().unwrap(),
        ]),
        LIMIT,
    );
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(err.contains("image-repo init"), "{err}");
}

#[test]
fn groups_and_campaigns_read_as_tables_and_refusals_exit_5() {
    let fleet = Fleet::start();
    fleet.publish("brake-3.bin", "hw-brake", 3, b"brake 3");
    for (i, vin) in ["VIN-G-1", "VIN-G-2"].iter().enumerate() {
        let key_file = ecu_key_file(&fleet, 20 + i as u8);
        let ecu = format!("{vin}-BRAKE:hw-brake:{}", key_file.display());
        fleet.operator(&["vehicle", "register", "--vin", vin, "--ecu", &ecu]);
    }
    let human = |args: &[&str]| run_ok(&mut fleet.operator_human(args), LIMIT);
    let set = human(&[
        "vehicle",
        "set-attribute",
        "VIN-G-1",
        "region=eu",
        "timezone=Europe/Berlin",
    ]);
    assert!(
        set.contains("region") && set.contains("Europe/Berlin"),
        "{set}"
    );
    let group = human(&["group", "create", "eu", "--attribute", "region=eu"]);
    assert!(
        group.contains("dynamic") && group.contains("members: VIN-G-1"),
        "{group}"
    );
    human(&["group", "create", "pilots", "--vin", "VIN-G-2"]);
    let added = human(&["group", "add", "pilots", "VIN-G-1"]);
    assert!(added.contains("members: VIN-G-1 VIN-G-2"), "{added}");
    let list = human(&["group", "list"]);
    assert!(list.starts_with("GROUP"), "{list}");

    let created = human(&[
        "campaign",
        "create",
        "brakes",
        "--image",
        "brake-3.bin",
        "--group",
        "pilots",
        "--waves",
        "50%,100%",
        "--window",
        "mon-fri 01:00-05:00",
        "--soak",
        "10m",
    ]);
    assert!(created.contains("campaign brakes: draft"), "{created}");
    assert!(
        created.contains(
            "waves: 50%, 100% (pause above 5% failed; soak 600 s; a wave times out after 604800 s)"
        ),
        "{created}"
    );
    assert!(
        created.contains("windows: mon,tue,wed,thu,fri 01:00-05:00"),
        "{created}"
    );
    human(&["campaign", "start", "brakes"]);
    let paused = human(&["campaign", "pause", "brakes", "--reason", "supplier recall"]);
    assert!(
        paused.contains("campaign brakes: paused (supplier recall)"),
        "{paused}"
    );
    let list = human(&["campaign", "list"]);
    assert!(
        list.contains("brakes") && list.contains("paused") && list.contains("1/2"),
        "{list}"
    );
    let vehicles = human(&["campaign", "vehicles", "brakes"]);
    assert!(vehicles.starts_with("VIN"), "{vehicles}");

    // Refused by the Director: exit 5 and its reason.
    let (status, _, err) = run(
        &mut fleet.operator_human(&["campaign", "start", "brakes"]),
        LIMIT,
    );
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(
        err.contains("campaign brakes is paused: it cannot be started"),
        "{err}"
    );
    let (status, _, err) = run(
        &mut fleet.operator_human(&[
            "campaign",
            "create",
            "x",
            "--image",
            "brake-3.bin",
            "--group",
            "pilots",
            "--waves",
            "60%,20%",
        ]),
        LIMIT,
    );
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(err.contains("must rise"), "{err}");
    let (status, _, err) = run(
        &mut fleet.operator_human(&[
            "campaign", "create", "x", "--image", "a.bin", "--group", "g", "--soak", "ten",
        ]),
        LIMIT,
    );
    assert_eq!(status.code(), Some(64), "{err}");
    let aborted = human(&["campaign", "abort", "brakes"]);
    assert!(
        aborted.contains("campaign brakes: aborted (aborted by an operator)"),
        "{aborted}"
    );
}

/// The servers the tests run are test builds, and say so in `--version` (what the harness
/// asks before it sets a fault-injection variable, and how an operator tells a build not to
/// deploy: `service_runtime::program_version!`).
#[test]
fn a_test_build_says_so_in_its_version() {
    for program in ["director", "image-repo"] {
        let out = run_ok(
            Command::new(uptane_tests::test_build_bin(program)).arg("--version"),
            LIMIT,
        );
        assert_eq!(
            out.trim_end(),
            format!(
                "{program} {} (test build: fault injection)",
                env!("CARGO_PKG_VERSION")
            ),
        );
    }
}

/// `fleet-sim load --max-p99-ms` fails a run whose p99 latency is above it, and refuses a
/// bound that is not a number of milliseconds above 0 as a usage error.
#[test]
fn fleet_sim_load_fails_a_run_above_its_p99_bound() {
    let fleet_sim = |bound: &str| {
        let mut command = Command::new(bin("fleet-sim"));
        // Not as `cargo run` would start it: it would build the workspace's binaries again,
        // without the fault points the other tests running now use.
        command.env_remove("CARGO").args([
            "load",
            "--vehicles",
            "20",
            "--poll-secs",
            "2",
            "--duration",
            "4",
            &format!("--max-p99-ms={bound}"),
        ]);
        run(&mut command, std::time::Duration::from_secs(120))
    };
    for bound in ["0", "-1", "NaN", "inf", "fast"] {
        let (status, _, stderr) = fleet_sim(bound);
        // clap's usage status: fleet-sim is the project's test tool, outside the programs'
        // table of exit statuses (docs/CLI.md).
        assert_eq!(status.code(), Some(2), "{bound}: {stderr}");
        assert!(
            stderr.contains("is not a number of milliseconds above 0"),
            "{bound}: {stderr}"
        );
    }
    // No request is answered within a microsecond.
    let (status, stdout, stderr) = fleet_sim("0.001");
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("error: the p99 of all vehicle requests")
            && stdout.contains("is above --max-p99-ms 0.001"),
        "{stdout}"
    );
}
