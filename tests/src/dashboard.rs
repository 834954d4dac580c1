//! `fleet-sim dashboard`: the operator dashboard (`/ui`) in Debian's Chromium against a real
//! Director and a fleet of real vehicles. The browser side is `tests/browser/dashboard.mjs`
//! (playwright-core from npm; `npm ci --prefix tests/browser` installs it); this side starts
//! the fleet, runs it, and checks what the operator did in the browser with the `director`
//! command: the campaign made in the form is paused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::sim::{Fleet, SimVehicle, VehicleSpec};

/// What the run needs.
#[derive(Debug, Clone)]
pub struct DashboardArgs {
    /// Where the screenshots go.
    pub out: PathBuf,
    /// Vehicles in the fleet.
    pub vehicles: usize,
    /// The browser.
    pub chromium: PathBuf,
}

/// What the run saw.
#[derive(Debug)]
pub struct DashboardReport {
    /// The browser script's summary (pages shot, the progress bar's values).
    pub browser: String,
    /// The screenshots written.
    pub screenshots: Vec<PathBuf>,
    /// Expectations that did not hold (empty: the run passed).
    pub broken: Vec<String>,
}

const CAMPAIGN: &str = "dash-door-2";
const IMAGE: &str = "door-2.bin";
/// An attribute value that would run script if the page put it in as markup.
const MARKUP: &str = "<img src=x onerror=alert(document.domain)>";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Runs the browser against a fresh fleet, narrating to `out`.
pub fn run(out: &mut dyn Write, args: &DashboardArgs) -> std::io::Result<DashboardReport> {
    let script = browser_dir().join("dashboard.mjs");
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Err(std::io::Error::other(format!(
            "playwright-core is not installed: run `npm ci --prefix {}`",
            browser_dir().display()
        )));
    }
    if !args.chromium.exists() {
        return Err(std::io::Error::other(format!(
            "no browser at {} (Debian: apt-get install chromium)",
            args.chromium.display()
        )));
    }
    let fleet = Fleet::start();
    writeln!(out, "Provisioning {} vehicles.", args.vehicles)?;
    let mut vehicles: Vec<SimVehicle> = (0..args.vehicles)
        .map(|i| SimVehicle::provision(&fleet, &VehicleSpec::standard(&format!("DASH{i:03}"), 1)))
        .collect();
    for vehicle in &mut vehicles {
        vehicle.start_primary();
    }
    fleet.publish(IMAGE, "hw-ecu-1", 2, &[7u8; 64 * 1024]);
    fleet.operator(&["group", "create", "doors", "--hardware-id", "hw-ecu-1"]);
    fleet.operator(&[
        "vehicle",
        "set-attribute",
        "DASH000",
        "region=eu",
        "timezone=Europe/Berlin",
        &format!("note={MARKUP}"),
    ]);
    // Something for the security events page: a vehicle credential that is not one.
    let refused = crate::blocking(async {
        fleet
            .https_client()
            .get(format!(
                "{}/vehicles/DASH000/metadata/timestamp.json",
                fleet.director_url
            ))
            .bearer_auth("dvc_not_a_credential")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    writeln!(
        out,
        "A request with a forged vehicle credential: {refused:?}"
    )?;

    writeln!(
        out,
        "Driving {} with {}.",
        script.display(),
        args.chromium.display()
    )?;
    let (status, stdout, stderr) = crate::run(
        Command::new("node")
            .arg(&script)
            .env("DIRECTOR_URL", &fleet.director_url)
            .env("DIRECTOR_TOKEN", &fleet.token)
            .env("OUT", &args.out)
            .env("CAMPAIGN", CAMPAIGN)
            .env("IMAGE", IMAGE)
            .env("GROUP", "doors")
            .env("VEHICLES", args.vehicles.to_string())
            .env("SEARCH", "ASH00")
            .env("MARKUP", MARKUP)
            .env("MARKUP_VIN", "DASH000")
            .env("CHROMIUM", &args.chromium),
        Duration::from_secs(600),
    );
    let mut broken = Vec::new();
    if !status.success() {
        broken.push(format!("the browser run failed: {}", stderr.trim()));
    }
    let shown = fleet
        .operator_at(&fleet.director_url, &["campaign", "show", CAMPAIGN])
        .unwrap_or_else(|e| serde_json::json!({"state": e}));
    writeln!(
        out,
        "director campaign show {CAMPAIGN}: {} ({})",
        shown["state"], shown["reason"]
    )?;
    if shown["state"] != "paused" || shown["reason"] != "pause from the dashboard" {
        broken.push(format!(
            "the CLI does not see the dashboard's pause: {} {}",
            shown["state"], shown["reason"]
        ));
    }
    let mut screenshots = Vec::new();
    for entry in std::fs::read_dir(&args.out)?.flatten() {
        let path = entry.path();
        let png = std::fs::read(&path).unwrap_or_default();
        if png.starts_with(b"\x89PNG") && png.len() > 1000 {
            screenshots.push(path);
        }
    }
    screenshots.sort();
    if screenshots.len() < 12 {
        broken.push(format!("{} screenshots, expected 12", screenshots.len()));
    }
    for vehicle in &mut vehicles {
        vehicle.stop_primary();
    }
    Ok(DashboardReport {
        browser: stdout.trim().to_string(),
        screenshots,
        broken,
    })
}
