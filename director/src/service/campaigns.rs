//! Campaigns: an image (or one per hardware id) rolled out to a group in waves, each wave
//! watched for failures, with soak times between waves and maintenance windows in each
//! vehicle's time zone.
//!
//! A campaign only ever delivers through [`assignments::assign`], so every Uptane check on
//! the way to the vehicle stays where it was; what a campaign adds is *when* each vehicle
//! is assigned. Its state moves draft → running ⇄ paused → completed | aborted, every move
//! an event. [`tick`] drives running campaigns: it assigns the waiting vehicles of the
//! current wave whose window is open, pauses the campaign when the wave's failures pass its
//! threshold (cancelling what was not yet delivered), and starts the next wave once every
//! vehicle of this one has an outcome and the soak time has passed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use uptane_core::hash::sha256_hex;
use uptane_core::ids::Vin;
use uptane_core::metadata::TargetFile;
use uptane_core::time::{UtcTime, parse_expires};

use super::assignments::{self, AssignRequest, AssignmentEcu, AssignmentStatus};
use super::events::NewEvent;
use super::groups::{self, TIMEZONE};
use super::plan::{Name, Share, Wave, Window, Zone, check_waves};
use super::tokens::random_token;
use super::{bad, exists, now_text};
use crate::error::DirectorError;
use crate::params;
use crate::sql::{Column, Conn, Param, ToParam, Value as SqlValue};

/// Vehicles one tick assigns per campaign at most (the rest on the next tick), so one
/// large wave does not hold the writer.
pub const ASSIGN_PER_TICK: usize = 500;

/// An operator's plan for a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    /// Its name.
    pub name: Name,
    /// Images in the Image repository; each goes to the ECUs of the hardware ids it is for.
    pub images: Vec<String>,
    /// The group it targets.
    pub group: Name,
    /// Its waves, in order.
    #[serde(default = "all_at_once")]
    pub waves: Vec<Wave>,
    /// A wave whose share of failed vehicles passes this pauses the campaign.
    #[serde(default = "five_percent")]
    pub max_failure_ratio: Share,
    /// Seconds between a wave's last outcome and the next wave.
    #[serde(default)]
    pub soak_secs: u64,
    /// When vehicles may be assigned, in their time zone; none means any time.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Whether vehicles that join the group while the campaign runs join the campaign.
    #[serde(default)]
    pub join_later: bool,
    /// Seconds after its start a wave counts as finished even though some of its vehicles
    /// have no outcome yet (parked, scrapped, offline for months): they keep their
    /// assignments, and the next wave starts. 0: a wave waits for every vehicle.
    #[serde(default = "a_week")]
    pub wave_timeout_secs: u64,
}

fn a_week() -> u64 {
    7 * 86_400
}

fn all_at_once() -> Vec<Wave> {
    vec![Wave::Share(Share::ALL)]
}

fn five_percent() -> Share {
    "5%".parse().expect("5% is a share")
}

/// Where a campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Created, not started.
    Draft,
    /// Delivering.
    Running,
    /// Stopped by an operator or by its failure threshold; nothing more is delivered.
    Paused,
    /// Every wave has run.
    Completed,
    /// Stopped for good; what was not delivered was cancelled.
    Aborted,
}

impl CampaignState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Draft => "draft",
            CampaignState::Running => "running",
            CampaignState::Paused => "paused",
            CampaignState::Completed => "completed",
            CampaignState::Aborted => "aborted",
        }
    }
}

impl ToParam for CampaignState {
    fn param(&self) -> Param<'_> {
        Param::Text(self.as_str())
    }
}

impl Column for CampaignState {
    fn column(value: SqlValue<'_>) -> Result<Self, String> {
        match value {
            SqlValue::Text("draft") => Ok(CampaignState::Draft),
            SqlValue::Text("running") => Ok(CampaignState::Running),
            SqlValue::Text("paused") => Ok(CampaignState::Paused),
            SqlValue::Text("completed") => Ok(CampaignState::Completed),
            SqlValue::Text("aborted") => Ok(CampaignState::Aborted),
            other => Err(format!("unknown campaign state {other:?}")),
        }
    }
}

/// What an operator asks a campaign to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignAction {
    /// draft → running.
    Start,
    /// running → paused.
    Pause,
    /// paused → running, past the failures seen so far.
    Resume,
    /// → aborted, cancelling every entry not final (`Withdrawal::Abort`).
    Abort,
    /// Assign again the vehicles whose update failed.
    RetryFailed,
}

impl std::str::FromStr for CampaignAction {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "start" => Ok(CampaignAction::Start),
            "pause" => Ok(CampaignAction::Pause),
            "resume" => Ok(CampaignAction::Resume),
            "abort" => Ok(CampaignAction::Abort),
            "retry-failed" => Ok(CampaignAction::RetryFailed),
            other => Err(format!(
                "no campaign action {other:?}: start, pause, resume, abort or retry-failed"
            )),
        }
    }
}

/// Where one vehicle of a campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// In the group, not picked by a wave yet.
    NotPicked,
    /// Picked; waiting to be assigned (its window, a paused campaign, the next tick).
    Waiting,
    /// Assigned; not every ECU has reported.
    Installing,
    /// Every ECU assigned reported the image installed.
    Installed,
    /// An ECU reported a failure.
    Failed,
    /// Not assigned: none of its ECUs can take the images, or the assignment was refused.
    Skipped,
    /// Cancelled (the campaign was aborted, or another assignment superseded it).
    Cancelled,
}

/// One wave's vehicles by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WaveProgress {
    /// 1 for the first wave.
    pub wave: usize,
    /// What the wave picks (`10%`, `group:pilots`).
    pub plan: String,
    /// Whether it has started.
    pub started: bool,
    /// Vehicles it picked.
    pub vehicles: u64,
    /// Picked, not yet assigned.
    pub waiting: u64,
    /// Assigned, not finished.
    pub installing: u64,
    /// Installed.
    pub installed: u64,
    /// Failed.
    pub failed: u64,
    /// Skipped.
    pub skipped: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl WaveProgress {
    fn count(&mut self, outcome: Outcome) {
        self.vehicles += 1;
        match outcome {
            Outcome::NotPicked | Outcome::Waiting => self.waiting += 1,
            Outcome::Installing => self.installing += 1,
            Outcome::Installed => self.installed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Cancelled => self.cancelled += 1,
        }
    }

    /// Whether every vehicle of the wave has an outcome.
    fn finished(&self) -> bool {
        self.waiting == 0 && self.installing == 0
    }
}

/// A campaign as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CampaignDetail {
    /// Its plan.
    #[serde(flatten)]
    pub plan: NewCampaign,
    /// Where it stands.
    pub state: CampaignState,
    /// Why it is paused or aborted.
    pub reason: String,
    /// The current wave (1 for the first; 0 before it starts).
    pub current_wave: usize,
    /// Each wave's progress.
    pub progress: Vec<WaveProgress>,
    /// Group members no wave picked.
    pub not_picked: u64,
    /// When and by whom it was made, and its last change.
    pub created_at: String,
    /// Who made it.
    pub created_by: String,
    /// Its last change.
    pub updated_at: String,
}

#[derive(Debug, Clone)]
struct Campaign {
    id: i64,
    plan: NewCampaign,
    pinned: BTreeMap<String, Pinned>,
    seed: String,
    state: CampaignState,
    wave: usize,
    wave_started_at: Option<String>,
    wave_finished_at: Option<String>,
    accepted_failures: u64,
}

/// An image's content when the campaign was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pinned {
    length: u64,
    hashes: uptane_core::hash::Hashes,
}

impl Pinned {
    fn of(info: &TargetFile) -> Self {
        Pinned {
            length: info.length,
            hashes: info.hashes.clone(),
        }
    }
}

impl Campaign {
    fn actor(&self) -> String {
        format!("campaign:{}", self.plan.name)
    }
}

fn load(conn: &Conn, name: &str) -> Result<Campaign, DirectorError> {
    let stored = |e: serde_json::Error| {
        DirectorError::Internal(format!("campaign {name}'s stored plan: {e}"))
    };
    let row = conn.query_opt(
        "SELECT id, spec, pinned, seed, state, wave, wave_started_at, wave_finished_at, accepted_failures FROM campaigns WHERE name = ?1",
        params![name],
        |r| {
            Ok((
                r.get::<i64>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<CampaignState>(4)?,
                r.get::<i64>(5)?,
                r.get::<Option<String>>(6)?,
                r.get::<Option<String>>(7)?,
                r.get::<i64>(8)?,
            ))
        },
    )?;
    let Some((id, spec, pinned, seed, state, wave, started, finished, accepted)) = row else {
        return Err(DirectorError::NotFound(format!("no campaign {name}")));
    };
    Ok(Campaign {
        id,
        plan: serde_json::from_str(&spec).map_err(stored)?,
        pinned: serde_json::from_str(&pinned).map_err(stored)?,
        seed,
        state,
        wave: wave as usize,
        wave_started_at: started,
        wave_finished_at: finished,
        accepted_failures: accepted as u64,
    })
}

/// Checks a plan against the rules that need no database: images named, waves sound.
pub fn check_plan(plan: &NewCampaign) -> Result<(), DirectorError> {
    if plan.images.is_empty() || plan.images.len() > 16 {
        return Err(bad("a campaign names 1 to 16 images"));
    }
    for image in &plan.images {
        uptane_core::ids::check_target_name(image).map_err(|e| bad(e.to_string()))?;
    }
    let distinct: BTreeSet<&String> = plan.images.iter().collect();
    if distinct.len() != plan.images.len() {
        return Err(bad("an image is named twice"));
    }
    check_waves(&plan.waves).map_err(bad)?;
    if plan.windows.len() > 14 {
        return Err(bad("a campaign has at most 14 maintenance windows"));
    }
    if plan.soak_secs > 365 * 86_400 || plan.wave_timeout_secs > 365 * 86_400 {
        return Err(bad("a soak time or a wave timeout is at most a year"));
    }
    Ok(())
}

/// Creates a draft campaign. `images` are the Image repository's answers for its images
/// (looked up and verified by the caller); each must be for some hardware.
pub fn create(
    conn: &Conn,
    plan: &NewCampaign,
    images: &ImageLookups,
    actor: &str,
    now: UtcTime,
) -> Result<CampaignDetail, DirectorError> {
    check_plan(plan)?;
    let mut pinned = BTreeMap::new();
    let mut hardware: BTreeMap<String, &String> = BTreeMap::new();
    for image in &plan.images {
        let Some(Some(info)) = images.get(image) else {
            return Err(DirectorError::NotFound(format!(
                "the image repository has no image {image:?}"
            )));
        };
        let ids = assignments::image_hardware_ids(info);
        if ids.is_empty() {
            return Err(bad(format!("image {image} names no hardware ids")));
        }
        // One image per hardware id: a second would supersede the first on the same ECU.
        for id in ids {
            if let Some(other) = hardware.insert(id.clone(), image) {
                return Err(bad(format!(
                    "images {other} and {image} are both for hardware {id}: a campaign has one image per hardware id"
                )));
            }
        }
        pinned.insert(image.clone(), Pinned::of(info));
    }
    let tx = conn.savepoint()?;
    groups::check_exists(&tx, &plan.group)?;
    for wave in &plan.waves {
        if let Wave::Group(group) = wave {
            groups::check_exists(&tx, group)?;
        }
    }
    if exists(&tx, "campaigns", "name", plan.name.as_str())? {
        return Err(DirectorError::Conflict(format!(
            "a campaign named {} exists",
            plan.name
        )));
    }
    let spec = serde_json::to_string(plan).expect("a plan serializes");
    let pinned = serde_json::to_string(&pinned).expect("hashes serialize");
    let seed = random_token("seed")?;
    tx.execute(
        "INSERT INTO campaigns (name, spec, pinned, seed, state, created_at, created_by, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
        params![plan.name.as_str(), spec, pinned, seed, CampaignState::Draft, now_text(now), actor],
    )?;
    let waves: Vec<String> = plan.waves.iter().map(ToString::to_string).collect();
    NewEvent::info(
        "campaign_created",
        actor,
        &format!(
            "{}: {} to group {} in waves {}",
            plan.name,
            plan.images.join(", "),
            plan.group,
            waves.join(",")
        ),
    )
    .record(&tx, now)?;
    tx.commit()?;
    show(conn, plan.name.as_str())
}

/// The names of the images running campaigns deliver.
pub fn running_images(conn: &Conn) -> Result<BTreeSet<String>, DirectorError> {
    let specs: Vec<String> = conn.query(
        "SELECT spec FROM campaigns WHERE state = ?1",
        params![CampaignState::Running],
        |r| r.get(0),
    )?;
    let mut images = BTreeSet::new();
    for spec in specs {
        let plan: NewCampaign = serde_json::from_str(&spec)
            .map_err(|e| DirectorError::Internal(format!("a stored campaign plan: {e}")))?;
        images.extend(plan.images);
    }
    Ok(images)
}

/// Each picked or pooled vehicle of campaign `id`: (VIN, wave, outcome).
fn outcomes(conn: &Conn, id: i64) -> Result<Vec<(String, Option<usize>, Outcome)>, DirectorError> {
    let rows: Vec<(String, Option<i64>, String, Option<AssignmentStatus>)> = conn.query(
        "SELECT cv.vin, cv.wave, cv.state, e.status FROM campaign_vehicles cv
         LEFT JOIN campaign_assignments ca ON ca.campaign_id = cv.campaign_id AND ca.vin = cv.vin
         LEFT JOIN assignment_ecus e ON e.assignment_id = ca.assignment_id AND e.vin = cv.vin
         WHERE cv.campaign_id = ?1 ORDER BY cv.vin",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let mut out: Vec<(String, Option<usize>, Outcome)> = Vec::new();
    let mut statuses: Vec<AssignmentStatus> = Vec::new();
    let flush = |out: &mut Vec<(String, Option<usize>, Outcome)>,
                 statuses: &mut Vec<AssignmentStatus>| {
        if let Some(last) = out.last_mut()
            && last.2 == Outcome::Installing
        {
            last.2 = assigned_outcome(statuses);
        }
        statuses.clear();
    };
    for (vin, wave, state, status) in rows {
        if out.last().is_none_or(|l| l.0 != vin) {
            flush(&mut out, &mut statuses);
            let outcome = match state.as_str() {
                "pool" => Outcome::NotPicked,
                "waiting" => Outcome::Waiting,
                "assigned" => Outcome::Installing,
                "skipped" => Outcome::Skipped,
                _ => Outcome::Cancelled,
            };
            out.push((vin, wave.map(|w| w as usize), outcome));
        }
        statuses.extend(status);
    }
    flush(&mut out, &mut statuses);
    Ok(out)
}

/// An assigned vehicle's outcome from its ECUs' entries.
fn assigned_outcome(statuses: &[AssignmentStatus]) -> Outcome {
    use AssignmentStatus as S;
    if statuses.contains(&S::Failed) {
        Outcome::Failed
    } else if statuses
        .iter()
        .any(|s| matches!(s, S::Pending | S::Delivered))
    {
        Outcome::Installing
    } else if statuses.contains(&S::Installed) {
        Outcome::Installed
    } else {
        Outcome::Cancelled
    }
}

fn progress(
    c: &Campaign,
    outcomes: &[(String, Option<usize>, Outcome)],
) -> (Vec<WaveProgress>, u64) {
    let mut waves: Vec<WaveProgress> = c
        .plan
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| WaveProgress {
            wave: i + 1,
            plan: w.to_string(),
            started: c.state != CampaignState::Draft && i <= c.wave,
            ..WaveProgress::default()
        })
        .collect();
    let mut not_picked = 0;
    for (_, wave, outcome) in outcomes {
        match wave.and_then(|w| waves.get_mut(w)) {
            Some(progress) => progress.count(*outcome),
            None => not_picked += 1,
        }
    }
    (waves, not_picked)
}

/// Campaign `name` and its progress.
pub fn show(conn: &Conn, name: &str) -> Result<CampaignDetail, DirectorError> {
    let c = load(conn, name)?;
    let (reason, created_at, created_by, updated_at): (String, String, String, String) = conn
        .query_row(
            "SELECT reason, created_at, created_by, updated_at FROM campaigns WHERE id = ?1",
            params![c.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let (progress, not_picked) = progress(&c, &outcomes(conn, c.id)?);
    Ok(CampaignDetail {
        state: c.state,
        reason,
        current_wave: if c.state == CampaignState::Draft {
            0
        } else {
            c.wave + 1
        },
        progress,
        not_picked,
        created_at,
        created_by,
        updated_at,
        plan: c.plan,
    })
}

/// Every campaign, newest first.
pub fn list(conn: &Conn) -> Result<Vec<CampaignDetail>, DirectorError> {
    let names: Vec<String> = conn.query(
        "SELECT name FROM campaigns ORDER BY id DESC LIMIT ?1",
        params![MAX_LISTED],
        |r| r.get(0),
    )?;
    names.iter().map(|n| show(conn, n)).collect()
}

/// Campaigns a listing shows at most, the newest.
pub const MAX_LISTED: i64 = 1000;

/// How many campaigns are in each state.
pub fn states(conn: &Conn) -> Result<BTreeMap<String, i64>, DirectorError> {
    Ok(conn
        .query(
            "SELECT state, COUNT(*) FROM campaigns GROUP BY state",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect())
}

/// The campaigns that are running or paused, with their progress.
pub fn active(conn: &Conn) -> Result<Vec<CampaignDetail>, DirectorError> {
    let names: Vec<String> = conn.query(
        "SELECT name FROM campaigns WHERE state IN (?1, ?2) ORDER BY id",
        params![CampaignState::Running, CampaignState::Paused],
        |r| r.get(0),
    )?;
    names.iter().map(|n| show(conn, n)).collect()
}

fn set_state(
    conn: &Conn,
    c: &Campaign,
    state: CampaignState,
    reason: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    conn.execute(
        "UPDATE campaigns SET state = ?1, reason = ?2, updated_at = ?3 WHERE id = ?4",
        params![state, reason, now_text(now), c.id],
    )?;
    Ok(())
}

/// Puts group members not yet in campaign `c` into its pool, for waves to pick. Returns how
/// many.
fn enroll(conn: &Conn, c: &Campaign, now: UtcTime) -> Result<usize, DirectorError> {
    let members = groups::members(conn, &c.plan.group)?;
    let known: BTreeSet<String> = conn
        .query(
            "SELECT vin FROM campaign_vehicles WHERE campaign_id = ?1",
            params![c.id],
            |r| r.get(0),
        )?
        .into_iter()
        .collect();
    let mut added = 0;
    for vin in members.difference(&known) {
        let rank = sha256_hex(format!("{}:{vin}", c.seed).as_bytes());
        conn.execute(
            "INSERT INTO campaign_vehicles (campaign_id, vin, rank, wave, state, updated_at) VALUES (?1, ?2, ?3, NULL, 'pool', ?4)",
            params![c.id, vin, rank, now_text(now)],
        )?;
        added += 1;
    }
    Ok(added)
}

/// Picks the vehicles of wave `k` from the pool (callers enroll the group's new members
/// first); returns how many.
fn pick(conn: &Conn, c: &Campaign, k: usize, now: UtcTime) -> Result<usize, DirectorError> {
    let pool: Vec<String> = conn.query(
        "SELECT vin FROM campaign_vehicles WHERE campaign_id = ?1 AND wave IS NULL ORDER BY rank",
        params![c.id],
        |r| r.get(0),
    )?;
    let picked: Vec<String> = match &c.plan.waves[k] {
        Wave::Share(share) => {
            let total: i64 = conn.value(
                "SELECT COUNT(*) FROM campaign_vehicles WHERE campaign_id = ?1",
                params![c.id],
            )?;
            let already = total as u64 - pool.len() as u64;
            let n = share.of(total as u64).saturating_sub(already) as usize;
            pool.into_iter().take(n).collect()
        }
        Wave::Group(group) => {
            let members = groups::members(conn, group)?;
            pool.into_iter().filter(|v| members.contains(v)).collect()
        }
    };
    for vin in &picked {
        conn.execute(
            "UPDATE campaign_vehicles SET wave = ?1, state = 'waiting', updated_at = ?2 WHERE campaign_id = ?3 AND vin = ?4",
            params![k as i64, now_text(now), c.id, vin],
        )?;
    }
    Ok(picked.len())
}

/// What a campaign's withdrawal does to an entry the vehicle may already hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Withdrawal {
    /// A pause or a closed window: a vehicle that cannot have seen any of its entries has
    /// them cancelled and waits again; one that may hold any (delivered, or already signed
    /// into the targets it is served) runs on whole, as when the campaign goes on.
    Hold,
    /// An abort: the operator's cancel for every entry (`assignments::cancel_entries`):
    /// what the vehicle may hold is withdrawn from its targets and ends on the ECU's word.
    Abort,
}

/// Withdraws the open entries of campaign `c` from the vehicles `only` accepts, saying
/// `why`, as `how` says. Vehicles all of whose entries are then cancelled go back to
/// `back_to` (waiting, to be assigned again; or cancelled). Returns the vehicles whose
/// metadata changes.
fn withdraw(
    conn: &Conn,
    c: &Campaign,
    how: Withdrawal,
    why: &str,
    back_to: &str,
    now: UtcTime,
    only: impl Fn(&str) -> bool,
) -> Result<Vec<String>, DirectorError> {
    let mut by_vin: BTreeMap<String, Vec<AssignmentEcu>> = BTreeMap::new();
    for entry in assignments::campaign_entries(conn, c.id)? {
        by_vin.entry(entry.vin.clone()).or_default().push(entry);
    }
    let mut touched = Vec::new();
    // Each vehicle's row, in VIN order as an operator's cancel takes them: a replica storing
    // metadata it signed before this withdrawal holds the row while it checks what it
    // signed. (One tick may withdraw twice, for a window then for a pause, so against a
    // cancel on another replica the order can cross; PostgreSQL then fails one side as a
    // deadlock, which is tried again: the tick at its next period, the cancel as a 503.)
    for (vin, entries) in by_vin {
        let withdrawable = |e: &AssignmentEcu| match how {
            Withdrawal::Hold => e.status == AssignmentStatus::Pending,
            Withdrawal::Abort => !e.status.is_final() && e.cancel_requested_at.is_none(),
        };
        if !only(&vin) || !entries.iter().any(withdrawable) {
            continue;
        }
        conn.lock_row("vehicles", "vin", &vin)?;
        let outcome = match how {
            Withdrawal::Abort => assignments::cancel_entries(conn, &entries, why, now)?,
            Withdrawal::Hold => {
                // The whole vehicle or nothing of it: if the vehicle may hold any of its
                // entries (delivered, final, or signed into the targets it is served), its
                // update is under way and runs on whole; otherwise every pending entry is
                // cancelled and the vehicle waits again, to be assigned whole.
                let served = assignments::served_entries(conn, &vin)?;
                let unseen = |e: &AssignmentEcu| {
                    e.status == AssignmentStatus::Pending
                        && !served.contains(&e.correlation_id, &e.ecu_serial)
                };
                if !entries
                    .iter()
                    .all(|e| e.status == AssignmentStatus::Cancelled || unseen(e))
                {
                    continue;
                }
                assignments::cancel_entries(conn, &entries, why, now)?
            }
        };
        if outcome.cancelled + outcome.cancel_requested == 0 {
            continue;
        }
        let was_cancelled = entries
            .iter()
            .filter(|e| e.status == AssignmentStatus::Cancelled)
            .count();
        if was_cancelled + outcome.cancelled == entries.len() {
            conn.execute(
                "DELETE FROM campaign_assignments WHERE campaign_id = ?1 AND vin = ?2",
                params![c.id, &vin],
            )?;
            conn.execute(
                "UPDATE campaign_vehicles SET state = ?1, detail = ?2, updated_at = ?3 WHERE campaign_id = ?4 AND vin = ?5",
                params![back_to, why, now_text(now), c.id, &vin],
            )?;
        }
        touched.push(vin);
    }
    Ok(touched)
}

/// The zone of each of campaign `c`'s vehicles that has a `timezone` attribute.
fn zones(conn: &Conn, c: &Campaign) -> Result<HashMap<String, String>, DirectorError> {
    Ok(conn
        .query(
            "SELECT cv.vin, a.value FROM campaign_vehicles cv
             JOIN vehicle_attributes a ON a.vin = cv.vin AND a.name = ?1
             WHERE cv.campaign_id = ?2",
            params![TIMEZONE, c.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect())
}

/// Whether vehicle `vin`'s window is open at `now` (`None`: its zone is unknown here).
fn window_open(c: &Campaign, zone: Option<&String>, now: UtcTime) -> Result<bool, String> {
    let zone = match zone {
        None => Zone::utc(),
        Some(name) => Zone::named(name)?,
    };
    Ok(zone.open(&c.plan.windows, now))
}

/// A maintenance window holds delivery, not only assignment: what a vehicle has not fetched
/// by the time its window closes is withdrawn until its window opens again.
fn hold_outside_windows(
    conn: &Conn,
    c: &Campaign,
    now: UtcTime,
) -> Result<Vec<String>, DirectorError> {
    if c.plan.windows.is_empty() {
        return Ok(Vec::new());
    }
    let zones = zones(conn, c)?;
    let why = format!(
        "campaign {}: outside the vehicle's maintenance window",
        c.plan.name
    );
    withdraw(conn, c, Withdrawal::Hold, &why, "waiting", now, |vin| {
        !window_open(c, zones.get(vin), now).unwrap_or(false)
    })
}

fn pause(
    conn: &Conn,
    c: &Campaign,
    reason: &str,
    actor: &str,
    now: UtcTime,
) -> Result<Vec<String>, DirectorError> {
    let why = format!("campaign {} paused", c.plan.name);
    let touched = withdraw(conn, c, Withdrawal::Hold, &why, "waiting", now, |_| true)?;
    set_state(conn, c, CampaignState::Paused, reason, now)?;
    NewEvent::info(
        "campaign_paused",
        actor,
        &format!(
            "{}: {reason}; {} not yet delivered withdrawn",
            c.plan.name,
            touched.len()
        ),
    )
    .record(conn, now)?;
    Ok(touched)
}

/// Does what an operator asked of campaign `name`; returns the vehicles whose metadata
/// changes. Assignments are made by the [`tick`] that follows.
pub fn act(
    conn: &Conn,
    name: &Name,
    action: CampaignAction,
    reason: Option<&str>,
    actor: &str,
    now: UtcTime,
) -> Result<Vec<String>, DirectorError> {
    let tx = conn.savepoint()?;
    tx.lock_row("campaigns", "name", name.as_str())?;
    let c = load(&tx, name.as_str())?;
    use CampaignAction as A;
    use CampaignState as S;
    let refuse = |what: &str| {
        Err(DirectorError::Conflict(format!(
            "campaign {name} is {}: it cannot be {what}",
            c.state.as_str()
        )))
    };
    let mut touched = Vec::new();
    match (action, c.state) {
        (A::Start, S::Draft) => {
            if enroll(&tx, &c, now)? == 0 {
                return Err(DirectorError::Conflict(format!(
                    "group {} has no members: nothing to start",
                    c.plan.group
                )));
            }
            pick(&tx, &c, 0, now)?;
            tx.execute(
                "UPDATE campaigns SET state = ?1, wave = 0, wave_started_at = ?2, wave_finished_at = NULL, updated_at = ?2 WHERE id = ?3",
                params![S::Running, now_text(now), c.id],
            )?;
            NewEvent::info(
                "campaign_started",
                actor,
                &format!("{}: wave 1 of {}", name, c.plan.waves.len()),
            )
            .record(&tx, now)?;
        }
        (A::Start, _) => return refuse("started"),
        (A::Pause, S::Running) => {
            touched = pause(
                &tx,
                &c,
                reason.unwrap_or("paused by an operator"),
                actor,
                now,
            )?;
        }
        (A::Pause, _) => return refuse("paused"),
        (A::Resume, S::Paused) => {
            let failed = current_failures(&tx, &c)?;
            tx.execute(
                "UPDATE campaigns SET state = ?1, reason = '', accepted_failures = ?2, updated_at = ?3 WHERE id = ?4",
                params![S::Running, failed as i64, now_text(now), c.id],
            )?;
            NewEvent::info(
                "campaign_resumed",
                actor,
                &format!(
                    "{name}: wave {} goes on past its {failed} failures",
                    c.wave + 1
                ),
            )
            .record(&tx, now)?;
        }
        (A::Resume, _) => return refuse("resumed"),
        (A::Abort, S::Draft | S::Running | S::Paused) => {
            let why = format!("campaign {name} aborted");
            touched = withdraw(&tx, &c, Withdrawal::Abort, &why, "cancelled", now, |_| true)?;
            tx.execute(
                "UPDATE campaign_vehicles SET state = 'cancelled', detail = ?1, updated_at = ?2 WHERE campaign_id = ?3 AND state IN ('pool', 'waiting')",
                params![why, now_text(now), c.id],
            )?;
            let reason = reason.unwrap_or("aborted by an operator");
            set_state(&tx, &c, S::Aborted, reason, now)?;
            NewEvent::info("campaign_aborted", actor, &format!("{name}: {reason}"))
                .record(&tx, now)?;
        }
        (A::Abort, _) => return refuse("aborted"),
        (A::RetryFailed, S::Running | S::Paused | S::Completed) => {
            let failed: Vec<(String, Option<usize>)> = outcomes(&tx, c.id)?
                .into_iter()
                .filter(|o| o.2 == Outcome::Failed)
                .map(|o| (o.0, o.1))
                .collect();
            if failed.is_empty() {
                return Err(DirectorError::Conflict(format!(
                    "campaign {name} has no failed vehicles"
                )));
            }
            for (vin, _) in &failed {
                tx.execute(
                    "DELETE FROM campaign_assignments WHERE campaign_id = ?1 AND vin = ?2",
                    params![c.id, vin],
                )?;
                tx.execute(
                    "UPDATE campaign_vehicles SET state = 'waiting', detail = 'retrying after a failure', updated_at = ?1 WHERE campaign_id = ?2 AND vin = ?3",
                    params![now_text(now), c.id, vin],
                )?;
            }
            let in_current = failed.iter().filter(|f| f.1 == Some(c.wave)).count() as u64;
            let state = if c.state == S::Completed {
                S::Running
            } else {
                c.state
            };
            tx.execute(
                "UPDATE campaigns SET state = ?1, accepted_failures = ?2, wave_finished_at = NULL, updated_at = ?3 WHERE id = ?4",
                params![state, c.accepted_failures.saturating_sub(in_current) as i64, now_text(now), c.id],
            )?;
            NewEvent::info(
                "campaign_retrying",
                actor,
                &format!(
                    "{name}: {} failed vehicles to be assigned again",
                    failed.len()
                ),
            )
            .record(&tx, now)?;
        }
        (A::RetryFailed, _) => return refuse("retried"),
    }
    tx.commit()?;
    Ok(touched)
}

fn current_failures(conn: &Conn, c: &Campaign) -> Result<u64, DirectorError> {
    Ok(outcomes(conn, c.id)?
        .iter()
        .filter(|o| o.1 == Some(c.wave) && o.2 == Outcome::Failed)
        .count() as u64)
}

/// What the Image repository said of each image a step may deliver: its entry, or `None`
/// when it no longer lists the image. An image it could not be asked about (unreachable)
/// is absent: its campaigns assign nothing this step, but still watch their failures.
pub type ImageLookups = HashMap<String, Option<TargetFile>>;

/// Drives every running campaign one step at `now`: see the module's documentation.
/// Returns the vehicles whose metadata changes.
pub fn tick(
    conn: &Conn,
    images: &ImageLookups,
    now: UtcTime,
) -> Result<Vec<String>, DirectorError> {
    let names: Vec<String> = conn.query(
        "SELECT name FROM campaigns WHERE state = ?1 ORDER BY id",
        params![CampaignState::Running],
        |r| r.get(0),
    )?;
    let mut touched = Vec::new();
    for name in names {
        let tx = conn.savepoint()?;
        // Replicas tick too: one at a time per campaign, each seeing the last one's work.
        tx.lock_row("campaigns", "name", &name)?;
        let c = load(&tx, &name)?;
        if c.state == CampaignState::Running {
            let mut stepped = Vec::new();
            match step(&tx, c, images, now, &mut stepped) {
                Ok(()) => touched.extend(stepped),
                // The database failing ends the tick (the next one tries again); anything
                // else is this campaign's alone: its step is rolled back, the others go on.
                Err(e @ (DirectorError::Db(_) | DirectorError::Busy(_))) => return Err(e),
                Err(e) => {
                    tracing::error!(campaign = %name, error = %e, "a campaign step failed; rolled back");
                    continue;
                }
            }
        }
        tx.commit()?;
    }
    Ok(touched)
}

/// Whether campaign `c` may assign with what the Image repository said: `Ok(true)` when every
/// image was looked up and holds the content pinned at creation; `Ok(false)` when one could
/// not be looked up this time; `Err(reason)` to pause for.
fn deliverable(c: &Campaign, images: &ImageLookups) -> Result<bool, String> {
    let mut all = true;
    for image in &c.plan.images {
        match images.get(image) {
            None => all = false,
            Some(None) => {
                return Err(format!(
                    "image {image} is no longer in the Image repository"
                ));
            }
            Some(Some(info)) if c.pinned.get(image) != Some(&Pinned::of(info)) => {
                return Err(format!(
                    "image {image} was re-published with other content since the campaign was made: \
                     make a new campaign for the new content"
                ));
            }
            Some(Some(_)) => {}
        }
    }
    Ok(all)
}

fn step(
    conn: &Conn,
    mut c: Campaign,
    images: &ImageLookups,
    now: UtcTime,
    touched: &mut Vec<String>,
) -> Result<(), DirectorError> {
    let actor = c.actor();
    let can_assign = match deliverable(&c, images) {
        Ok(all) => all,
        Err(reason) => {
            touched.extend(pause(conn, &c, &reason, &actor, now)?);
            return Ok(());
        }
    };
    touched.extend(hold_outside_windows(conn, &c, now)?);
    // Each pass starts at most one wave; bounded by the number of waves.
    for _ in 0..=c.plan.waves.len() {
        if c.plan.join_later {
            // Vehicles that joined the group go to the pool; the current wave takes what
            // its plan takes of them (its share of the grown group, or its group's members).
            let joined = enroll(conn, &c, now)?;
            let picked = pick(conn, &c, c.wave, now)?;
            if joined + picked > 0 {
                NewEvent::info(
                    "campaign_joined",
                    &actor,
                    &format!(
                        "{}: {joined} vehicles joined the group; wave {} took {picked}",
                        c.plan.name,
                        c.wave + 1
                    ),
                )
                .record(conn, now)?;
            }
        }
        if can_assign {
            touched.extend(assign_waiting(conn, &c, images, now)?);
        }
        let outcomes = outcomes(conn, c.id)?;
        let (waves, _) = progress(&c, &outcomes);
        let current = &waves[c.wave];
        // A share of the whole wave (as hawkBit's error threshold): small waves first.
        let counted = current.vehicles - current.skipped;
        let failed = current.failed.saturating_sub(c.accepted_failures);
        if failed > 0 && c.plan.max_failure_ratio.exceeded_by(failed, counted) {
            let reason = format!(
                "wave {}: {} of {counted} vehicles failed, more than {}",
                c.wave + 1,
                current.failed,
                c.plan.max_failure_ratio
            );
            touched.extend(pause(conn, &c, &reason, &actor, now)?);
            return Ok(());
        }
        let started = c
            .wave_started_at
            .as_deref()
            .and_then(parse_expires)
            .unwrap_or(now);
        let timed_out = c.plan.wave_timeout_secs > 0
            && (now - started).num_seconds() >= c.plan.wave_timeout_secs as i64;
        if !timed_out && !waves[..=c.wave].iter().all(WaveProgress::finished) {
            return Ok(());
        }
        let finished_at = match &c.wave_finished_at {
            Some(at) => parse_expires(at).unwrap_or(now),
            None => {
                conn.execute(
                    "UPDATE campaigns SET wave_finished_at = ?1, updated_at = ?1 WHERE id = ?2",
                    params![now_text(now), c.id],
                )?;
                let kind = if waves[..=c.wave].iter().all(WaveProgress::finished) {
                    "campaign_wave_finished"
                } else {
                    "campaign_wave_timed_out"
                };
                NewEvent::info(
                    kind,
                    &actor,
                    &format!(
                        "{}: wave {}: {} installed, {} failed, {} skipped, {} cancelled, {} without an outcome",
                        c.plan.name,
                        c.wave + 1,
                        current.installed,
                        current.failed,
                        current.skipped,
                        current.cancelled,
                        current.waiting + current.installing
                    ),
                )
                .record(conn, now)?;
                c.wave_finished_at = Some(now_text(now));
                now
            }
        };
        if (now - finished_at).num_seconds() < c.plan.soak_secs as i64 {
            return Ok(());
        }
        if c.wave + 1 == c.plan.waves.len() {
            set_state(conn, &c, CampaignState::Completed, "", now)?;
            NewEvent::info("campaign_completed", &actor, c.plan.name.as_str()).record(conn, now)?;
            return Ok(());
        }
        c.wave += 1;
        c.wave_started_at = Some(now_text(now));
        c.wave_finished_at = None;
        c.accepted_failures = 0;
        let picked = pick(conn, &c, c.wave, now)?;
        conn.execute(
            "UPDATE campaigns SET wave = ?1, wave_started_at = ?2, wave_finished_at = NULL, accepted_failures = 0, updated_at = ?2 WHERE id = ?3",
            params![c.wave as i64, now_text(now), c.id],
        )?;
        NewEvent::info(
            "campaign_wave_started",
            &actor,
            &format!(
                "{}: wave {} of {} ({}): {picked} vehicles",
                c.plan.name,
                c.wave + 1,
                c.plan.waves.len(),
                c.plan.waves[c.wave]
            ),
        )
        .record(conn, now)?;
    }
    Ok(())
}

/// Assigns the waiting vehicles of waves up to the current one whose window is open, at most
/// [`ASSIGN_PER_TICK`]; returns them.
fn assign_waiting(
    conn: &Conn,
    c: &Campaign,
    images: &ImageLookups,
    now: UtcTime,
) -> Result<Vec<String>, DirectorError> {
    let waiting: Vec<(String, Option<String>)> = conn.query(
        "SELECT cv.vin, a.value FROM campaign_vehicles cv
         LEFT JOIN vehicle_attributes a ON a.vin = cv.vin AND a.name = ?1
         WHERE cv.campaign_id = ?2 AND cv.state = 'waiting' AND cv.wave <= ?3 ORDER BY cv.rank",
        params![TIMEZONE, c.id, c.wave as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let actor = c.actor();
    let mut assigned = Vec::new();
    for (vin, zone) in waiting {
        if assigned.len() == ASSIGN_PER_TICK {
            break;
        }
        match window_open(c, zone.as_ref(), now) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                note(conn, c, &vin, &e, now)?;
                continue;
            }
        }
        match assign_vehicle(conn, c, &vin, images, &actor, now) {
            Ok(ids) if ids.is_empty() => {
                skip(
                    conn,
                    c,
                    &vin,
                    "no ECU of this vehicle has hardware the campaign's images are for",
                    now,
                )?;
            }
            Ok(ids) => {
                for id in ids {
                    conn.execute(
                        "INSERT INTO campaign_assignments (campaign_id, vin, assignment_id) VALUES (?1, ?2, ?3)",
                        params![c.id, &vin, id],
                    )?;
                }
                conn.execute(
                    "UPDATE campaign_vehicles SET state = 'assigned', detail = '', attempts = attempts + 1, updated_at = ?1 WHERE campaign_id = ?2 AND vin = ?3",
                    params![now_text(now), c.id, &vin],
                )?;
                assigned.push(vin);
            }
            Err(
                e @ (DirectorError::BadRequest(_)
                | DirectorError::NotFound(_)
                | DirectorError::Conflict(_)),
            ) => skip(conn, c, &vin, &e.to_string(), now)?,
            Err(e) => return Err(e),
        }
    }
    Ok(assigned)
}

/// Assigns each image of `c` that some ECU of `vin` can take, all or none; returns the
/// assignments' ids (none when no ECU can take any).
fn assign_vehicle(
    conn: &Conn,
    c: &Campaign,
    vin: &str,
    images: &ImageLookups,
    actor: &str,
    now: UtcTime,
) -> Result<Vec<i64>, DirectorError> {
    let hardware: BTreeSet<String> = conn
        .query(
            "SELECT hardware_id FROM ecus WHERE vin = ?1",
            params![vin],
            |r| r.get(0),
        )?
        .into_iter()
        .collect();
    let vin: Vin = vin
        .parse()
        .map_err(|e| DirectorError::Internal(format!("a stored VIN: {e}")))?;
    let tx = conn.savepoint()?;
    let mut ids = Vec::new();
    for image in &c.plan.images {
        let Some(Some(info)) = images.get(image) else {
            return Err(DirectorError::Internal(format!(
                "image {image} was not looked up"
            )));
        };
        if !assignments::image_hardware_ids(info)
            .iter()
            .any(|h| hardware.contains(h))
        {
            continue;
        }
        let request = AssignRequest {
            image: image.clone(),
            vins: vec![vin.clone()],
            hardware_id: None,
            ecus: vec![],
        };
        let assigned = assignments::assign(&tx, &request, info, actor, now)?;
        ids.push(tx.value(
            "SELECT id FROM assignments WHERE correlation_id = ?1",
            params![assigned.correlation_id],
        )?);
    }
    tx.commit()?;
    Ok(ids)
}

fn skip(
    conn: &Conn,
    c: &Campaign,
    vin: &str,
    why: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    conn.execute(
        "UPDATE campaign_vehicles SET state = 'skipped', detail = ?1, updated_at = ?2 WHERE campaign_id = ?3 AND vin = ?4",
        params![why, now_text(now), c.id, vin],
    )?;
    NewEvent::info(
        "campaign_vehicle_skipped",
        &c.actor(),
        &format!("{}: {why}", c.plan.name),
    )
    .vin(vin)
    .record(conn, now)?;
    Ok(())
}

fn note(
    conn: &Conn,
    c: &Campaign,
    vin: &str,
    why: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    conn.execute(
        "UPDATE campaign_vehicles SET detail = ?1, updated_at = ?2 WHERE campaign_id = ?3 AND vin = ?4 AND detail != ?1",
        params![why, now_text(now), c.id, vin],
    )?;
    Ok(())
}

/// Each vehicle of campaign `name` with its wave, outcome and detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CampaignVehicle {
    /// The vehicle.
    pub vin: String,
    /// Its wave (1 for the first), if picked.
    pub wave: Option<usize>,
    /// Where it stands.
    pub outcome: Outcome,
    /// Why it is skipped, waiting or cancelled.
    pub detail: String,
}

/// The vehicles of campaign `name`.
pub fn vehicles(conn: &Conn, name: &str) -> Result<Vec<CampaignVehicle>, DirectorError> {
    let c = load(conn, name)?;
    let details: HashMap<String, String> = conn
        .query(
            "SELECT vin, detail FROM campaign_vehicles WHERE campaign_id = ?1",
            params![c.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect();
    Ok(outcomes(conn, c.id)?
        .into_iter()
        .map(|(vin, wave, outcome)| CampaignVehicle {
            detail: details.get(&vin).cloned().unwrap_or_default(),
            vin,
            wave: wave.map(|w| w + 1),
            outcome,
        })
        .collect())
}
