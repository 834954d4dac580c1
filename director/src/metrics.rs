//! The Director's metrics (`director serve --metrics-listen`; names in docs/METRICS.md).
//!
//! Two kinds: counters this process keeps as requests pass (HTTP requests, manifests
//! accepted and refused, attacks reported, cache hits), which start from zero when the
//! process starts, as Prometheus counters do; and figures read from the database at each
//! scrape (vehicles, assignment entries by status, campaigns and their waves, the root's
//! expiry), which every replica reports alike.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use service_runtime::metrics::{Escaped, HttpMetrics};
use uptane_core::error::AttackKind;

use crate::error::DirectorError;
use crate::params;
use crate::service::DirectorService;
use std::collections::BTreeMap;

use crate::service::campaigns;
use crate::sql::Conn;

/// A manifest's outcome and, when refused, why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ManifestLabels {
    /// `accepted` or `refused`.
    pub outcome: &'static str,
    /// The attack a refusal names (`replay`, `forged_signature`, …); empty when accepted.
    pub reason: String,
}

/// An attack's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttackLabels {
    /// What an ECU reported.
    pub kind: String,
}

/// The counters the service keeps as requests pass.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// HTTP requests.
    pub http: HttpMetrics,
    manifests: Family<ManifestLabels, Counter>,
    attacks: Family<AttackLabels, Counter>,
}

impl Counters {
    /// A manifest accepted, with the attacks its ECUs reported.
    pub fn accepted(&self, attacks: &[AttackKind]) {
        self.manifests
            .get_or_create(&ManifestLabels {
                outcome: "accepted",
                reason: String::new(),
            })
            .inc();
        for kind in attacks {
            self.attacks
                .get_or_create(&AttackLabels {
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    /// A manifest refused as `attack`.
    pub fn refused(&self, attack: AttackKind) {
        self.manifests
            .get_or_create(&ManifestLabels {
                outcome: "refused",
                reason: attack.to_string(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CampaignLabels {
    campaign: Escaped,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaveLabels {
    campaign: Escaped,
    wave: u64,
    outcome: &'static str,
}

/// What the database says at a scrape.
#[derive(Debug, Default)]
struct Figures {
    vehicles: i64,
    entries: BTreeMap<String, i64>,
    campaigns: Vec<campaigns::CampaignDetail>,
    campaign_states: BTreeMap<String, i64>,
    root_version: u64,
    root_expires_in: i64,
}

fn figures(conn: &Conn, now: uptane_core::time::UtcTime) -> Result<Figures, DirectorError> {
    let root = crate::service::rotation::root_status(conn, chrono::Duration::zero(), now)?;
    let expires = uptane_core::time::parse_expires(&root.root_expires_at).unwrap_or(now);
    Ok(Figures {
        vehicles: conn.value("SELECT COUNT(*) FROM vehicles", params![])?,
        entries: crate::service::assignments::entry_counts(conn)?,
        campaigns: campaigns::active(conn)?,
        campaign_states: campaigns::states(conn)?,
        root_version: root.root_version,
        root_expires_in: (expires - now).num_seconds(),
    })
}

/// One scrape: the counters, then the database's figures, in the OpenMetrics text format.
pub async fn render(service: &DirectorService) -> Result<String, DirectorError> {
    let now = service_runtime::clock::now();
    let started = std::time::Instant::now();
    let figures = service.db().read(move |conn| figures(conn, now)).await?;
    let read_seconds = started.elapsed().as_secs_f64();
    let counters = service.counters();
    let mut registry = Registry::with_prefix("director");
    counters.http.register(&mut registry);
    registry.register(
        "manifests",
        "Vehicle version manifests accepted, and refused by the attack their refusal names",
        counters.manifests.clone(),
    );
    registry.register(
        "attacks_reported",
        "Attacks ECUs reported in accepted manifests, by kind",
        counters.attacks.clone(),
    );
    let (hits, misses) = service.cache_hits_and_misses();
    registry.register(
        "vehicle_cache_hits",
        "Vehicle requests answered from memory (credential and current timestamp)",
        ConstCounter::new(hits),
    );
    registry.register(
        "vehicle_cache_misses",
        "Vehicle requests that read the database",
        ConstCounter::new(misses),
    );
    let gauge = |value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        g
    };
    registry.register("vehicles", "Registered vehicles", gauge(figures.vehicles));
    let entries = Family::<StatusLabels, Gauge>::default();
    for (status, count) in &figures.entries {
        entries
            .get_or_create(&StatusLabels {
                status: status.clone(),
            })
            .set(*count);
    }
    registry.register(
        "assignment_entries",
        "Assignment entries (one per ECU), by status",
        entries,
    );
    registry.register(
        "root_version",
        "The newest Director root's version",
        gauge(figures.root_version as i64),
    );
    registry.register(
        "root_expires_in_seconds",
        "Seconds until the newest Director root expires (negative once expired): rotate before",
        gauge(figures.root_expires_in),
    );
    let states = Family::<CampaignLabels, Gauge>::default();
    let waves = Family::<WaveLabels, Gauge>::default();
    let current = Family::<CampaignLabels, Gauge>::default();
    for c in &figures.campaigns {
        let (campaign, state) = (Escaped(c.plan.name.to_string()), c.state.as_str());
        states
            .get_or_create(&CampaignLabels {
                campaign: campaign.clone(),
                state,
            })
            .set(1);
        current
            .get_or_create(&CampaignLabels {
                campaign: campaign.clone(),
                state,
            })
            .set(c.current_wave as i64);
        for w in &c.progress {
            for (outcome, count) in [
                ("waiting", w.waiting),
                ("installing", w.installing),
                ("installed", w.installed),
                ("failed", w.failed),
                ("skipped", w.skipped),
                ("cancelled", w.cancelled),
            ] {
                waves
                    .get_or_create(&WaveLabels {
                        campaign: campaign.clone(),
                        wave: w.wave as u64,
                        outcome,
                    })
                    .set(count as i64);
            }
        }
    }
    registry.register(
        "campaign",
        "Each running or paused campaign, 1 in its state",
        states,
    );
    registry.register(
        "campaign_current_wave",
        "Each running or paused campaign's current wave (1 for the first)",
        current,
    );
    let all = Family::<StateLabels, Gauge>::default();
    for state in ["draft", "running", "paused", "completed", "aborted"] {
        all.get_or_create(&StateLabels {
            state: state.to_string(),
        })
        .set(figures.campaign_states.get(state).copied().unwrap_or(0));
    }
    registry.register("campaigns", "Campaigns, by state", all);
    registry.register(
        "campaign_vehicles",
        "Vehicles of each running or paused campaign's waves, by outcome",
        waves,
    );
    let engine = Family::<EngineLabels, Gauge>::default();
    engine
        .get_or_create(&EngineLabels {
            engine: match service.db().engine() {
                crate::sql::Engine::Sqlite => "sqlite",
                crate::sql::Engine::Postgres => "postgres",
            },
        })
        .set(1);
    registry.register("database", "The database engine, 1", engine);
    let read = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    read.set(read_seconds);
    registry.register(
        "database_scrape_read_seconds",
        "Time this scrape took to read its figures from the database (a read connection's latency)",
        read,
    );
    if let Some(path) = service.db().path() {
        let size = |suffix: &str| {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            std::fs::metadata(file).map_or(0, |m| m.len() as i64)
        };
        registry.register(
            "database_bytes",
            "The SQLite database's size on disk, its write-ahead log included",
            gauge(size("") + size("-wal")),
        );
    }
    if let Some(counts) = service.db().checkpoint_counts() {
        registry.register(
            "wal_checkpoints",
            "Checkpoints of the SQLite write-ahead log finished by the checkpoint thread",
            ConstCounter::new(counts.passes),
        );
        registry.register(
            "wal_checkpoints_in_commit",
            "Checkpoints the writer ran inside a commit, the log at its bound (the checkpoint thread gone or behind, or readers holding the log)",
            ConstCounter::new(counts.in_commit),
        );
        registry.register(
            "wal_checkpoint_failures",
            "Checkpoints of the checkpoint thread that failed or found another connection checkpointing",
            ConstCounter::new(counts.failures),
        );
    }
    Ok(service_runtime::metrics::encode(&registry))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    engine: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ImageCatalog;
    use crate::db::Db;
    use crate::keys::OnlineKeys;
    use crate::service::{KeyRing, Policy, store_initial_root};
    use uptane_core::testing::key;

    fn service_on(db: Db) -> DirectorService {
        let online = || OnlineKeys {
            targets: key(10),
            snapshot: key(11),
            timestamp: key(12),
        };
        db.call_blocking(|conn| {
            let now = service_runtime::clock::now();
            store_initial_root(
                conn,
                &[&key(13)],
                1,
                &online(),
                chrono::Duration::days(365),
                now,
            )
        })
        .unwrap();
        let catalog = ImageCatalog::memory(Default::default(), Vec::new());
        DirectorService::new(db, KeyRing::fixed(online()), catalog, Policy::default()).unwrap()
    }

    /// On SQLite on disk the write-ahead log's checkpoints are counted (how they count:
    /// `db::checkpoint`'s tests); in memory there is no log to count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpoints_are_exported_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("director.db")).unwrap();
        let on_disk = render(&service_on(db)).await.unwrap();
        for line in [
            "director_wal_checkpoints_total 0",
            "director_wal_checkpoints_in_commit_total 0",
            "director_wal_checkpoint_failures_total 0",
        ] {
            assert!(
                on_disk.lines().any(|l| l == line),
                "{line} not in\n{on_disk}"
            );
        }
        let in_memory = render(&service_on(Db::open_in_memory().unwrap()))
            .await
            .unwrap();
        assert!(!in_memory.contains("wal_checkpoint"), "{in_memory}");
    }
}
