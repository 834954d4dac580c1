//! The Director's key lifecycle under attack: the fleet follows a scheduled rotation of the
//! Director's root keys, and rotating its online keys after they were stolen stops the
//! thief's metadata at the vehicles' next cycle.

use std::time::Duration;

use super::{Scenario, World, image, refused, scenario};
use crate::{bin, run};

/// The attacks of this module, in the order run.
pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        scenario(
            "a scheduled rotation of the Director's root keys",
            "nothing: the operator replaces the root keys, then renews the root",
            "the car walks the new root versions (Primary and Secondaries) and updates normally",
            scheduled_root_rotation,
        ),
        scenario(
            "stolen Director online keys, then rotated",
            "the Director's targets, snapshot and timestamp keys, and the network",
            "accepted while valid (repository_mismatch stops the image); after rotate-online refused (arbitrary_software); then updates",
            stolen_online_keys_rotated,
        ),
    ]
}

/// `director ARGS` on the fleet's Director directory, with its offline keys.
fn director(w: &World, args: &[&str]) -> Result<String, String> {
    match w.fleet.director_local(args, &w.fleet.path("director-keys")) {
        (true, out, _) => Ok(out.trim().to_string()),
        (false, _, err) => Err(format!("director {args:?}: {err}")),
    }
}

/// The Director root version the car's Primary trusts (from `primary-ecu status`).
fn trusted_director_root(w: &World) -> Result<u64, String> {
    let (status, out, err) = run(
        std::process::Command::new(bin("primary-ecu")).args([
            "status",
            "--dir",
            &w.car.primary_dir.display().to_string(),
        ]),
        Duration::from_secs(30),
    );
    if !status.success() {
        return Err(format!("primary-ecu status: {err}"));
    }
    out.lines()
        .find(|l| l.starts_with("director"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.trim_start_matches('v').parse().ok())
        .ok_or_else(|| format!("no Director root version in: {out}"))
}

fn scheduled_root_rotation(w: &mut World) -> Result<String, String> {
    let before = trusted_director_root(w)?;
    // New root keys (2-of-3), then the same keys with a later expiry, as a yearly renewal.
    let first = director(w, &["rotate-root", "--keys", "3", "--threshold", "2"])?;
    let second = director(w, &["rotate-root", "--root-lifetime-days", "730"])?;
    let recovered = w.recover()?;
    let after = trusted_director_root(w)?;
    if after != before + 2 {
        return Err(format!(
            "the car trusts Director root v{after}, expected v{} ({first}; {second})",
            before + 2
        ));
    }
    Ok(format!(
        "the car walked Director root v{before} -> v{after}; every ECU (full and partial) {recovered}"
    ))
}

fn stolen_online_keys_rotated(w: &mut World) -> Result<String, String> {
    let stolen = w.director_keys();
    // With the stolen keys the thief's Director metadata verifies; only the Image
    // repository's backing stops its image.
    let before = w.installed();
    let since = w.last_event();
    w.assign_to_brake_with(&stolen, "brake-thief.bin", &image(777, 1, 25_000), 98);
    let (code, summary) = w.cycle();
    refused(w, &before, since, "attack_reported:repository_mismatch")
        .map_err(|e| format!("with the stolen keys: {e} (cycle {code}: {summary})"))?;
    w.director.clear();

    // The operator rotates every online key; the thief keeps serving what it signs.
    let rotated = director(w, &["rotate-online"])?;
    let since = w.last_event();
    w.assign_to_brake_with(&stolen, "brake-thief.bin", &image(777, 1, 25_000), 98);
    let (code, summary) = w.cycle();
    refused(w, &before, since, "attack_reported:arbitrary_software")
        .map_err(|e| format!("after rotate-online ({rotated}): {e} (cycle {code}: {summary})"))?;
    Ok(format!(
        "stolen keys' metadata refused after the rotation (arbitrary_software); {}",
        w.recover()?
    ))
}
