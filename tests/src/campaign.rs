//! `fleet-sim campaign`: a phased rollout on real processes. A fleet of vehicles (each a
//! Primary and a Secondary) sits behind one dynamic group; an operator starts a four-wave
//! campaign with a failure threshold through the `director` CLI; in the third wave the
//! simulator makes some Secondaries fail their trial boot (they roll back); the campaign
//! pauses itself, the operator resumes it, and it completes. The closing table gives each
//! wave's outcomes as the Director records them, and every expectation is checked.
//!
//! Vehicles are parked (Primary stopped, as a car that is off) until their wave picks them,
//! so the simulator can prepare a failing Secondary before its Primary first polls; a
//! vehicle no wave has picked has no assignment at all, which the run checks too.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::sim::{Fleet, SimVehicle, VehicleSpec, metric, wait_until};

/// The run's shape.
#[derive(Debug, Clone, Copy)]
pub struct CampaignArgs {
    /// Vehicles in the fleet (at least 20).
    pub vehicles: usize,
    /// Secondaries of the third wave that fail their trial boot.
    pub failing: usize,
}

/// One wave's line in the closing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveRow {
    /// 1 for the first.
    pub wave: u64,
    /// What it picks.
    pub plan: String,
    /// Vehicles picked.
    pub vehicles: u64,
    /// Installed.
    pub installed: u64,
    /// Failed (rolled back).
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// What the run observed.
#[derive(Debug)]
pub struct CampaignReport {
    /// Each wave.
    pub waves: Vec<WaveRow>,
    /// Why the campaign paused itself.
    pub paused_because: String,
    /// Expectations that did not hold (empty: the run passed).
    pub broken: Vec<String>,
}

const CAMPAIGN: &str = "ecu1-v2";
const IMAGE: &str = "ecu-1-v2.bin";
const FAILING_WAVE: u64 = 3;
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn image() -> Vec<u8> {
    (0..256 * 1024usize)
        .map(|i| (i.wrapping_mul(193) ^ 0x5a) as u8)
        .collect()
}

/// Runs the campaign, narrating to `out`.
pub fn run(out: &mut dyn Write, args: CampaignArgs) -> std::io::Result<CampaignReport> {
    let started = Instant::now();
    let say = |out: &mut dyn Write, text: &str| -> std::io::Result<()> {
        writeln!(out, "[{:>5.1}s] {text}", started.elapsed().as_secs_f64())
    };
    let fleet = Fleet::start();
    say(
        out,
        &format!(
            "Provisioning {} vehicles (a Primary and a Secondary of hardware hw-ecu-1 each).",
            args.vehicles
        ),
    )?;
    let mut vehicles: Vec<SimVehicle> = (0..args.vehicles)
        .map(|i| SimVehicle::provision(&fleet, &VehicleSpec::standard(&format!("CAMP{i:03}"), 1)))
        .collect();
    fleet.publish(IMAGE, "hw-ecu-1", 2, &image());
    say(out, &format!("Published {IMAGE} for hw-ecu-1."))?;

    let group = fleet.operator(&["group", "create", "ecu1-fleet", "--hardware-id", "hw-ecu-1"]);
    say(
        out,
        &format!(
            "director group create ecu1-fleet --hardware-id hw-ecu-1: {} members",
            group["members"]
        ),
    )?;
    let created = fleet.operator(&[
        "campaign",
        "create",
        CAMPAIGN,
        "--image",
        IMAGE,
        "--group",
        "ecu1-fleet",
        "--waves",
        "10%,30%,60%,100%",
        "--max-failure-ratio",
        "20%",
        "--soak",
        "2s",
        "--start",
    ]);
    say(
        out,
        &format!(
            "director campaign create {CAMPAIGN} --waves 10%,30%,60%,100% --max-failure-ratio 20% --soak 2s --start: {}",
            created["state"]
        ),
    )?;

    let mut broken = Vec::new();
    // A wave holds back everyone it has not picked: no assignment at all.
    let picked = fleet.operator(&["campaign", "vehicles", CAMPAIGN]);
    let parked: Vec<String> = picked
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|v| v["wave"].is_null())
        .filter_map(|v| v["vin"].as_str().map(String::from))
        .collect();
    for vin in &parked {
        if !fleet.assignments(vin).is_empty() {
            broken.push(format!("{vin} was assigned before a wave picked it"));
        }
    }
    say(
        out,
        &format!(
            "{} vehicles not yet picked by a wave: none of them has an assignment",
            parked.len()
        ),
    )?;
    let mut started_vins: BTreeSet<String> = BTreeSet::new();
    let mut failing_vins: BTreeSet<String> = BTreeSet::new();
    let mut paused_because = String::new();
    let mut resumed = false;
    let mut last_wave = 0;
    let deadline = Instant::now() + RUN_LIMIT;
    let finished = loop {
        if Instant::now() > deadline {
            break None;
        }
        let shown = fleet.operator(&["campaign", "show", CAMPAIGN]);
        let state = shown["state"].as_str().unwrap_or_default().to_string();
        let wave = shown["current_wave"].as_u64().unwrap_or(0);
        if wave != last_wave {
            say(
                out,
                &format!(
                    "wave {wave} of 4 started ({})",
                    shown["progress"][wave as usize - 1]["plan"]
                        .as_str()
                        .unwrap_or_default()
                ),
            )?;
            last_wave = wave;
        }
        // Wake the vehicles their wave picked; in the failing wave, some with a
        // Secondary whose new image will not boot.
        let picked = fleet.operator(&["campaign", "vehicles", CAMPAIGN]);
        for v in picked.as_array().cloned().unwrap_or_default() {
            let (Some(vin), Some(wave)) = (v["vin"].as_str(), v["wave"].as_u64()) else {
                continue;
            };
            if started_vins.contains(vin) {
                continue;
            }
            let Some(vehicle) = vehicles.iter_mut().find(|x| x.vin == vin) else {
                continue;
            };
            if wave == FAILING_WAVE && failing_vins.len() < args.failing {
                vehicle.start_secondary(0, &["--fault-fail-boot"]);
                failing_vins.insert(vin.to_string());
                say(
                    out,
                    &format!(
                        "  {vin} (wave {wave}) comes online; its Secondary will fail the trial boot"
                    ),
                )?;
            }
            vehicle.start_primary();
            started_vins.insert(vin.to_string());
        }
        match state.as_str() {
            "paused" if !resumed => {
                paused_because = shown["reason"].as_str().unwrap_or_default().to_string();
                say(
                    out,
                    &format!("The campaign paused itself: {paused_because}"),
                )?;
                // What Prometheus would see at this moment.
                let scraped = fleet.director_metrics();
                let paused =
                    format!("director_campaign{{campaign=\"{CAMPAIGN}\",state=\"paused\"}}");
                let failed = format!(
                    "director_campaign_vehicles{{campaign=\"{CAMPAIGN}\",wave=\"{FAILING_WAVE}\",outcome=\"failed\"}}"
                );
                let (seen_paused, seen_failed) =
                    (metric(&scraped, &paused), metric(&scraped, &failed));
                say(
                    out,
                    &format!("  /metrics: {paused} {seen_paused:?}; {failed} {seen_failed:?}"),
                )?;
                if seen_paused != Some(1.0) || seen_failed != Some(args.failing as f64) {
                    broken.push(format!(
                        "/metrics during the pause: {paused} {seen_paused:?}, {failed} {seen_failed:?}"
                    ));
                }
                let undelivered = fleet.operator(&["campaign", "vehicles", CAMPAIGN]);
                let waiting = undelivered.as_array().map_or(0, |a| {
                    a.iter().filter(|v| v["outcome"] == "waiting").count()
                });
                say(
                    out,
                    &format!(
                        "  {waiting} vehicles of the wave wait; the operator looks at the failures and resumes"
                    ),
                )?;
                fleet.operator(&["campaign", "resume", CAMPAIGN]);
                resumed = true;
            }
            "completed" => break Some(shown),
            "aborted" => {
                broken.push("the campaign was aborted".into());
                break Some(shown);
            }
            _ => {}
        }
        // The next look once something could have changed: a vehicle's poll or the
        // Director's campaign step, each about a second.
        let before = shown["updated_at"].clone();
        let progress = shown["progress"].clone();
        wait_until(Duration::from_secs(3), || {
            let now = fleet.operator(&["campaign", "show", CAMPAIGN]);
            now["updated_at"] != before || now["progress"] != progress
        });
    };
    let Some(shown) = finished else {
        return Err(std::io::Error::other(format!(
            "the campaign did not finish within {} s",
            RUN_LIMIT.as_secs()
        )));
    };
    say(out, "The campaign completed.")?;

    let waves: Vec<WaveRow> = shown["progress"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|w| WaveRow {
            wave: w["wave"].as_u64().unwrap_or(0),
            plan: w["plan"].as_str().unwrap_or_default().to_string(),
            vehicles: w["vehicles"].as_u64().unwrap_or(0),
            installed: w["installed"].as_u64().unwrap_or(0),
            failed: w["failed"].as_u64().unwrap_or(0),
            cancelled: w["cancelled"].as_u64().unwrap_or(0),
        })
        .collect();

    // What must hold, from the Director's records and the vehicles' own.
    if !paused_because.contains(&format!("wave {FAILING_WAVE}:")) {
        broken.push(format!(
            "expected a pause in wave {FAILING_WAVE}, saw {paused_because:?}"
        ));
    }
    let total: u64 = waves.iter().map(|w| w.vehicles).sum();
    if total != args.vehicles as u64 {
        broken.push(format!(
            "the waves picked {total} of {} vehicles",
            args.vehicles
        ));
    }
    for w in &waves {
        let want_failed = if w.wave == FAILING_WAVE {
            args.failing as u64
        } else {
            0
        };
        if w.failed != want_failed || w.installed + w.failed != w.vehicles {
            broken.push(format!(
                "wave {}: {} installed, {} failed of {} (expected {want_failed} failed, the rest installed)",
                w.wave, w.installed, w.failed, w.vehicles
            ));
        }
    }
    for vehicle in &vehicles {
        let serial = &vehicle.secondaries[0].serial;
        let installed = fleet
            .installed(&vehicle.vin)
            .into_iter()
            .find(|(s, _)| s == serial)
            .and_then(|(_, image)| image)
            .unwrap_or_default();
        let failing = failing_vins.contains(&vehicle.vin);
        if failing == (installed == IMAGE) {
            broken.push(format!(
                "{}: the Secondary runs {installed} (its trial boot {})",
                vehicle.vin,
                if failing {
                    "was to fail"
                } else {
                    "was to pass"
                }
            ));
        }
    }
    let events = fleet.operator(&["events", "--limit", "1000"]);
    let kinds: Vec<&str> = events
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    for kind in [
        "campaign_started",
        "campaign_paused",
        "campaign_resumed",
        "campaign_completed",
    ] {
        if !kinds.contains(&kind) {
            broken.push(format!("no {kind} event"));
        }
    }
    if kinds
        .iter()
        .filter(|k| **k == "campaign_wave_started")
        .count()
        != 3
    {
        broken.push("expected three campaign_wave_started events".into());
    }

    for vehicle in &mut vehicles {
        vehicle.stop_primary();
    }
    broken.extend(metrics_agree(out, &fleet, &waves)?);

    writeln!(out)?;
    writeln!(
        out,
        "{}",
        service_runtime::cli::table(
            &[
                "WAVE",
                "PLAN",
                "VEHICLES",
                "INSTALLED",
                "FAILED (ROLLED BACK)",
                "CANCELLED"
            ],
            waves
                .iter()
                .map(|w| {
                    vec![
                        w.wave.to_string(),
                        w.plan.clone(),
                        w.vehicles.to_string(),
                        w.installed.to_string(),
                        w.failed.to_string(),
                        w.cancelled.to_string(),
                    ]
                })
                .collect(),
        )
    )?;
    Ok(CampaignReport {
        waves,
        paused_because,
        broken,
    })
}

/// Scrapes both servers' metrics once every vehicle has stopped and compares them with the
/// Director's records: what disagrees.
fn metrics_agree(
    out: &mut dyn Write,
    fleet: &Fleet,
    waves: &[WaveRow],
) -> std::io::Result<Vec<String>> {
    let director = fleet.director_metrics();
    let image_repo = fleet.image_repo_metrics();
    let db = fleet.director_db();
    let manifests = db
        .call_blocking(|conn| conn.value::<i64>("SELECT COUNT(*) FROM manifests", &[]))
        .unwrap_or(-1) as f64;
    let installed: u64 = waves.iter().map(|w| w.installed).sum();
    let failed: u64 = waves.iter().map(|w| w.failed).sum();
    let checks: Vec<(String, f64)> = vec![
        (
            r#"director_manifests_total{outcome="accepted",reason=""}"#.into(),
            manifests,
        ),
        (
            "director_vehicles".into(),
            waves.iter().map(|w| w.vehicles).sum::<u64>() as f64,
        ),
        (
            r#"director_assignment_entries{status="installed"}"#.into(),
            installed as f64,
        ),
        (
            r#"director_assignment_entries{status="failed"}"#.into(),
            failed as f64,
        ),
        (r#"director_campaigns{state="completed"}"#.into(), 1.0),
        (r#"director_campaigns{state="running"}"#.into(), 0.0),
    ];
    let mut broken = Vec::new();
    if director.contains(&format!("campaign=\"{CAMPAIGN}\"")) {
        broken.push("a completed campaign is still exported with its name".into());
    }
    writeln!(
        out,
        "Metrics against the Director's records (manifests stored: {manifests}):"
    )?;
    for (sample, want) in checks {
        let seen = metric(&director, &sample);
        writeln!(out, "  {sample} {seen:?} (records: {want})")?;
        if seen != Some(want) {
            broken.push(format!(
                "/metrics {sample} is {seen:?}, the records say {want}"
            ));
        }
    }
    // The request histogram counts answered requests: a Primary stopped while its manifest
    // was in flight has it recorded (and counted above) but never answered, at most one each.
    let answered = r#"director_http_request_duration_seconds_count{route="/vehicles/{vin}/manifest",method="POST",status="200"}"#;
    let vehicles = waves.iter().map(|w| w.vehicles).sum::<u64>() as f64;
    let seen = metric(&director, answered);
    writeln!(
        out,
        "  {answered} {seen:?} (records: {manifests}, less at most one per stopped vehicle)"
    )?;
    if !seen.is_some_and(|n| n <= manifests && n >= manifests - vehicles) {
        broken.push(format!(
            "/metrics {answered} is {seen:?}, the records say {manifests} ({vehicles} vehicles stopped)"
        ));
    }
    let served = r#"image_repo_http_request_duration_seconds_count{route="/metadata/{file}",method="GET",status="200"}"#;
    match metric(&image_repo, served) {
        Some(n) if n > 0.0 => writeln!(out, "  {served} {n}")?,
        other => broken.push(format!(
            "/metrics of the Image repository: {served} is {other:?}"
        )),
    }
    if metric(
        &image_repo,
        r#"image_repo_metadata_version{role="targets"}"#,
    )
    .is_none_or(|v| v < 2.0)
    {
        broken.push("/metrics of the Image repository has no targets version 2".into());
    }
    Ok(broken)
}
