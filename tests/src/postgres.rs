//! A PostgreSQL server for the tests that need one whichever engine the fleet's Director runs
//! on (moving a Director from SQLite to PostgreSQL): the one `DIRECTOR_TEST_POSTGRES` names
//! (`.ci/run` starts one), or else a throwaway cluster started here with
//! `tools/pg-test-cluster.sh` and stopped when dropped. A test that cannot have one fails,
//! saying why: nothing is skipped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use director::db::Database;

/// A PostgreSQL server for a test.
#[derive(Debug)]
pub struct Postgres {
    url: String,
    /// The throwaway cluster's directory, when this started one.
    cluster: Option<String>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/pg-test-cluster.sh")
}

impl Postgres {
    /// The server the tests were given, or a new throwaway cluster.
    pub fn server() -> Self {
        if let Ok(url) = std::env::var("DIRECTOR_TEST_POSTGRES")
            && !url.is_empty()
        {
            return Self { url, cluster: None };
        }
        let (status, stdout, stderr) = crate::run(
            Command::new("bash").arg(script()).arg("start"),
            Duration::from_secs(300),
        );
        assert!(
            status.success(),
            "this test needs PostgreSQL (Debian's postgresql package): {stderr}"
        );
        let value = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("pg-test-cluster.sh printed no {name}: {stdout}"))
        };
        Self {
            url: value("DIRECTOR_TEST_POSTGRES"),
            cluster: Some(value("PG_TEST_DIR")),
        }
    }

    /// A new, empty database on it.
    pub fn fresh(&self) -> Database {
        Database::fresh_on(&self.url).expect("a new database on the test server")
    }
}

/// The Director's database a `fleet-sim` command was asked for (`--database`), and the
/// throwaway cluster behind it, kept running as long as this is.
#[derive(Debug)]
pub struct ChosenDatabase {
    /// `None`: SQLite in the Director's directory.
    pub database: Option<Database>,
    _server: Option<Postgres>,
}

impl ChosenDatabase {
    /// `sqlite`, `postgres` (a throwaway cluster from Debian's PostgreSQL, or the server
    /// `DIRECTOR_TEST_POSTGRES` names) or `postgres://…` (a new database on that server).
    pub fn from_arg(arg: &str) -> Result<Self, String> {
        Ok(match arg {
            "sqlite" => Self {
                database: None,
                _server: None,
            },
            "postgres" => {
                let server = Postgres::server();
                Self {
                    database: Some(server.fresh()),
                    _server: Some(server),
                }
            }
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => Self {
                database: Some(Database::fresh_on(url).map_err(|e| {
                    format!("a new database on {}: {e}", director::pg::redacted(url))
                })?),
                _server: None,
            },
            other => {
                return Err(format!(
                    "--database is sqlite, postgres or postgres://…, not {other:?}"
                ));
            }
        })
    }

    /// As the narration names it.
    pub fn describe(&self) -> String {
        self.database
            .as_ref()
            .map_or("SQLite".to_string(), ToString::to_string)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(dir) = &self.cluster {
            let _ = crate::run(
                Command::new("bash").arg(script()).args(["stop", dir]),
                Duration::from_secs(60),
            );
        }
    }
}
