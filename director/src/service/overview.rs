//! The fleet at a glance: what the dashboard's first page and `director overview` show.

use std::collections::BTreeMap;

use serde::Serialize;
use uptane_core::time::UtcTime;

use super::campaigns::{self, CampaignState};
use super::now_text;
use crate::error::DirectorError;
use crate::params;
use crate::sql::Conn;

/// Images listed at most, the most installed first.
pub const MAX_IMAGES: i64 = 50;

/// The fleet at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// Registered vehicles.
    pub vehicles: i64,
    /// Their ECUs.
    pub ecus: i64,
    /// Images in use: (file name, ECUs reporting it installed), the most installed first.
    pub images: Vec<ImageInUse>,
    /// Assignment entries by status.
    pub assignments: BTreeMap<String, i64>,
    /// Installed entries over installed and failed ones (`None` before any outcome).
    pub success_rate: Option<f64>,
    /// Campaigns by state.
    pub campaigns: BTreeMap<&'static str, i64>,
    /// Security events in the last 24 hours.
    pub security_events_24h: i64,
}

/// One image and the ECUs running it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInUse {
    /// Its file name.
    pub filename: String,
    /// ECUs that report it installed.
    pub ecus: i64,
}

/// The fleet at `now`.
pub fn overview(conn: &Conn, now: UtcTime) -> Result<Overview, DirectorError> {
    let assignments = super::assignments::entry_counts(conn)?;
    let (installed, failed) = (
        assignments.get("installed").copied().unwrap_or(0),
        assignments.get("failed").copied().unwrap_or(0),
    );
    let stored = campaigns::states(conn)?;
    let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
    for state in [
        CampaignState::Draft,
        CampaignState::Running,
        CampaignState::Paused,
        CampaignState::Completed,
        CampaignState::Aborted,
    ] {
        by_state.insert(
            state.as_str(),
            stored.get(state.as_str()).copied().unwrap_or(0),
        );
    }
    Ok(Overview {
        vehicles: conn.value("SELECT COUNT(*) FROM vehicles", params![])?,
        ecus: conn.value("SELECT COUNT(*) FROM ecus", params![])?,
        images: conn.query(
            "SELECT installed_filename, COUNT(*) FROM ecus WHERE installed_filename IS NOT NULL
             GROUP BY installed_filename ORDER BY COUNT(*) DESC, installed_filename LIMIT ?1",
            params![MAX_IMAGES],
            |r| {
                Ok(ImageInUse {
                    filename: r.get(0)?,
                    ecus: r.get(1)?,
                })
            },
        )?,
        success_rate: (installed + failed > 0)
            .then(|| installed as f64 / (installed + failed) as f64),
        assignments,
        campaigns: by_state,
        security_events_24h: conn.value(
            "SELECT COUNT(*) FROM events WHERE severity = 'security' AND at >= ?1",
            params![now_text(now - chrono::Duration::hours(24))],
        )?,
    })
}
