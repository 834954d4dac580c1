//! Moving a running fleet's Director from SQLite to PostgreSQL (`director migrate --to`):
//! nothing is lost (every table counted on both sides, the history still listed), and the
//! vehicles update afterwards. The move is refused while a server uses the SQLite database,
//! and into a database that already holds a Director.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;
use uptane_tests::postgres::Postgres;
use uptane_tests::run;
use uptane_tests::sim::{Fleet, Mode, SimVehicle, VehicleSpec, wait_until};

const LIMIT: Duration = Duration::from_secs(120);

/// `director migrate --dir DIR --to URL --json`: its status, parsed output and stderr.
fn migrate(dir: &std::path::Path, to: &str) -> (bool, Value, String) {
    let (status, stdout, stderr) = run(
        std::process::Command::new(uptane_tests::bin("director")).args([
            "migrate",
            "--dir",
            &dir.display().to_string(),
            "--to",
            to,
            "--json",
        ]),
        LIMIT,
    );
    (
        status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

#[test]
fn a_fleet_moved_from_sqlite_to_postgres_loses_nothing_and_keeps_updating() {
    let postgres = Postgres::server();
    let mut fleet = Fleet::start_on_sqlite();
    let mut vehicle = SimVehicle::provision(
        &fleet,
        &VehicleSpec {
            vin: "MOVE01".into(),
            single_bank: Vec::new(),
            secondaries: vec![("DOOR".into(), "hw-door".into(), Mode::Full)],
        },
    );
    vehicle.start_primary();
    fleet.publish("door-1.bin", "hw-door", 1, &[1u8; 100_000]);
    fleet.assign("door-1.bin", &["MOVE01"]);
    assert!(wait_until(LIMIT, || fleet.installed_on(
        "MOVE01",
        "DOOR",
        "door-1.bin"
    )));
    // A group and a draft campaign for the next image, moved with the rest.
    fleet.publish("door-2.bin", "hw-door", 2, &[2u8; 100_000]);
    fleet.operator(&["vehicle", "set-attribute", "MOVE01", "plant=north"]);
    fleet.operator(&["group", "create", "north", "--attribute", "plant=north"]);
    fleet.operator(&["group", "create", "movers", "--vin", "MOVE01"]);
    fleet.operator(&[
        "campaign",
        "create",
        "door-2",
        "--image",
        "door-2.bin",
        "--group",
        "north",
    ]);
    let target = postgres.fresh().to_arg();
    let dir = fleet.path("director");

    // Refused while the server uses the database: what it wrote afterwards would be lost.
    let (moved, _, stderr) = migrate(&dir, &target);
    assert!(!moved);
    assert!(
        stderr.contains("another `director serve` is using the SQLite database"),
        "{stderr}"
    );

    fleet.stop_director();
    let (moved, report, stderr) = migrate(&dir, &target);
    assert!(moved, "{stderr}");
    let tables = report["tables"].as_array().unwrap();
    // Every table of the schema, each counted on both sides.
    assert_eq!(tables.len(), 17, "{report}");
    for table in tables {
        assert_eq!(table["source"], table["target"], "{table}");
    }
    let rows = |name: &str| {
        tables
            .iter()
            .find(|t| t["table"] == name)
            .and_then(|t| t["target"].as_i64())
            .unwrap()
    };
    assert_eq!(rows("vehicles"), 1);
    assert!(rows("manifests") > 0 && rows("events") > 0 && rows("roots") == 1);
    assert_eq!(
        (
            rows("vehicle_attributes"),
            rows("vehicle_groups"),
            rows("group_members"),
            rows("campaigns")
        ),
        (1, 2, 1, 1)
    );
    // The directory names the new database, readable by the Director's user only.
    let named = dir.join("database");
    assert_eq!(std::fs::read_to_string(&named).unwrap().trim(), target);
    assert_eq!(
        std::fs::metadata(&named).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A second move into the same database is refused: it holds a Director now.
    let copy = fleet.path("director-copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(dir.join("director.db"), copy.join("director.db")).unwrap();
    let (moved, _, stderr) = migrate(&copy, &target);
    assert!(!moved);
    assert!(stderr.contains("already holds a Director"), "{stderr}");

    // A copy of the directory that lost DIR/database is refused, not served from the
    // SQLite state of before the move (its spent nonces would be accepted again).
    let stale = fleet.path("director-stale");
    std::fs::create_dir_all(&stale).unwrap();
    for file in ["director.db", "director.db-moved"] {
        std::fs::copy(dir.join(file), stale.join(file)).unwrap();
    }
    let (status, _, stderr) = run(
        std::process::Command::new(uptane_tests::bin("director")).args([
            "migrate",
            "--dir",
            &stale.display().to_string(),
        ]),
        LIMIT,
    );
    assert!(!status.success());
    assert!(stderr.contains("was moved to postgres://"), "{stderr}");

    // The server now runs on PostgreSQL, with the history from before the move, and the
    // vehicle takes its next update through it.
    fleet.restart_director();
    let events_before = fleet.events("MOVE01", false).len();
    assert!(events_before > 0);
    let before = fleet.assignments("MOVE01");
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["status"], "installed");
    // The next update goes through the campaign made before the move.
    fleet.operator(&["campaign", "start", "door-2"]);
    assert!(wait_until(LIMIT, || fleet.installed_on(
        "MOVE01",
        "DOOR",
        "door-2.bin"
    )));
    assert!(wait_until(LIMIT, || fleet
        .operator(&["campaign", "show", "door-2"])["state"]
        == "completed"));
    assert_eq!(fleet.assignments("MOVE01").len(), 2);
    let db = fleet.director_db();
    assert_eq!(db.engine(), director::sql::Engine::Postgres);
    let manifests = db
        .call_blocking(|conn| conn.value::<i64>("SELECT COUNT(*) FROM manifests", &[]))
        .unwrap();
    assert!(manifests > rows("manifests"));
}
