//! `fleet-sim demo`: the whole story on one machine. Both servers run their key
//! ceremonies, a vehicle (a Primary and two Secondaries, one in full and one in partial
//! verification) provisions itself, a release engineer publishes an image per ECU, an
//! operator assigns them, and the vehicle installs them while the narration says what was
//! signed, verified, sent and installed.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::sim::{Fleet, Mode, SimVehicle, VehicleSpec, wait_until};

/// One ECU's line in the closing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuRow {
    /// Serial.
    pub serial: String,
    /// Hardware id.
    pub hardware_id: String,
    /// Verification mode (`primary` for the Primary, which verifies fully).
    pub mode: String,
    /// Image before the update.
    pub before: String,
    /// Image after it, as the Director records it.
    pub after: String,
    /// The assignment's final status.
    pub result: String,
}

/// What the demo leaves running.
#[derive(Debug)]
pub struct Demo {
    /// The vehicle (first: its processes stop before the servers').
    pub vehicle: SimVehicle,
    /// The servers.
    pub fleet: Fleet,
    /// The closing table.
    pub rows: Vec<EcuRow>,
    /// The Director's database (last: a throwaway cluster stops after the servers).
    pub database: crate::postgres::ChosenDatabase,
}

impl Demo {
    /// Whether every ECU ended on its new image.
    pub fn all_updated(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.result == "installed" && r.after != r.before)
    }
}

/// The demo's VIN.
pub const VIN: &str = "WDEMO000000000001";

fn image(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(167) ^ seed)
        .collect()
}

/// Runs the demo, narrating to `out`, the Director on `database` (`--database`: sqlite,
/// postgres or postgres://…, [`crate::postgres::ChosenDatabase`]).
pub fn run(out: &mut dyn Write, database: &str) -> std::io::Result<Demo> {
    let chosen = crate::postgres::ChosenDatabase::from_arg(database)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let started = Instant::now();
    let say = |out: &mut dyn Write, text: &str| -> std::io::Result<()> {
        writeln!(out, "[{:>5.1}s] {text}", started.elapsed().as_secs_f64())
    };
    say(
        out,
        "Starting the Image repository and the Director. Each runs its key ceremony: offline root \
         (and, for the Image repository, targets) keys in their own directories, online snapshot \
         and timestamp keys for the servers.",
    )?;
    let fleet = Fleet::start_on_database(chosen.database.clone());
    say(
        out,
        &format!(
            "Image repository serving signed metadata and images at {}; Director at {} (on {}, \
             per-vehicle metadata signed on demand).",
            fleet.image_url,
            fleet.director_url,
            chosen.describe()
        ),
    )?;

    let spec = VehicleSpec {
        vin: VIN.into(),
        single_bank: Vec::new(),
        secondaries: vec![
            ("BRAKE".into(), "hw-brake".into(), Mode::Full),
            ("RADIO".into(), "hw-radio".into(), Mode::Partial),
        ],
    };
    say(
        out,
        &format!(
            "Vehicle {VIN}: two Secondaries on simulated A/B devices generate their ECU keys and pin \
             the Director's root (the full-verification one also pins the Image repository's); the \
             Primary asks each over gRPC who it is, then registers the vehicle with a provisioning \
             token."
        ),
    )?;
    let mut vehicle = SimVehicle::provision(&fleet, &spec);
    let mut table: BTreeMap<String, EcuRow> = BTreeMap::new();
    let modes: BTreeMap<String, (String, String)> = std::iter::once((
        vehicle.primary_serial.clone(),
        (
            vehicle.primary_hardware_id.clone(),
            "primary (full)".to_string(),
        ),
    ))
    .chain(vehicle.secondaries.iter().map(|s| {
        (
            s.serial.clone(),
            (s.hardware_id.clone(), s.mode.as_str().to_string()),
        )
    }))
    .collect();
    vehicle.start_primary();
    say(
        out,
        "The Primary runs: every second it collects a signed version report (with a fresh nonce) \
         from each Secondary, signs the vehicle version manifest and sends it to the Director.",
    )?;
    let registered = wait_until(Duration::from_secs(60), || {
        fleet
            .installed(VIN)
            .iter()
            .all(|(_, image)| image.is_some())
    });
    if !registered {
        say(
            out,
            "The Director never received the factory images; stopping.",
        )?;
        return Ok(Demo {
            fleet,
            vehicle,
            rows: Vec::new(),
            database: chosen,
        });
    }
    for (serial, image) in fleet.installed(VIN) {
        let (hardware_id, mode) = modes.get(&serial).cloned().unwrap_or_default();
        say(
            out,
            &format!(
                "  {serial} reports {} (verified signature, counter, nonce).",
                image.clone().unwrap_or_default()
            ),
        )?;
        table.insert(
            serial.clone(),
            EcuRow {
                serial,
                hardware_id,
                mode,
                before: image.unwrap_or_default(),
                after: String::new(),
                result: String::new(),
            },
        );
    }

    let releases = [
        ("gateway-2.0.bin", "hw-gateway", image(1, 3 << 20)),
        ("brake-2.0.bin", "hw-brake", image(2, 2 << 20)),
        ("radio-2.0.bin", "hw-radio", image(3, 1 << 20)),
    ];
    for (name, hardware_id, bytes) in &releases {
        fleet.publish(name, hardware_id, 2, bytes);
        say(
            out,
            &format!(
                "Release engineer publishes {name} ({} KiB, for {hardware_id}, release counter 2): \
                 targets signed with the offline key, snapshot and timestamp with the online keys.",
                bytes.len() / 1024
            ),
        )?;
    }
    for (name, _, _) in &releases {
        let assigned = fleet.assign(name, &[VIN]);
        say(
            out,
            &format!(
                "Operator assigns {name} to {VIN}: `director assign --image {name} --vin {VIN}` \
                 (assignment {}).",
                assigned["correlation_id"].as_str().unwrap_or("?")
            ),
        )?;
    }
    say(
        out,
        "The Director signs new per-vehicle targets naming each ECU, its hardware id and release \
         counter. The Primary verifies both repositories (root, timestamp, snapshot, targets), \
         checks every Director target against the Image repository, downloads each image once \
         while hashing it, and sends each Secondary its metadata and image over gRPC.",
    )?;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let finished = wait_until(Duration::from_secs(90), || {
        let entries = fleet.assignments(VIN);
        for entry in &entries {
            let serial = entry["ecu_serial"].as_str().unwrap_or_default().to_string();
            let status = entry["status"].as_str().unwrap_or_default().to_string();
            if seen.get(&serial) != Some(&status) {
                let what = match status.as_str() {
                    "pending" => "assigned, waiting for the vehicle".to_string(),
                    "delivered" => "the vehicle fetched its signed targets".to_string(),
                    "installed" => format!(
                        "installed {} and reported it in a signed manifest",
                        entry["filename"].as_str().unwrap_or_default()
                    ),
                    other => format!("{other}: {}", entry["detail"].as_str().unwrap_or_default()),
                };
                let _ = say(out, &format!("  {serial}: {what}"));
                seen.insert(serial, status);
            }
        }
        !entries.is_empty()
            && entries.iter().all(|e| {
                matches!(
                    e["status"].as_str(),
                    Some("installed" | "failed" | "cancelled")
                )
            })
    });
    if !finished {
        say(out, "The update did not finish within 90 s.")?;
    }
    let statuses: BTreeMap<String, String> = fleet
        .assignments(VIN)
        .iter()
        .map(|e| {
            (
                e["ecu_serial"].as_str().unwrap_or_default().to_string(),
                e["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (serial, image) in fleet.installed(VIN) {
        if let Some(row) = table.get_mut(&serial) {
            row.after = image.unwrap_or_default();
            row.result = statuses.get(&serial).cloned().unwrap_or_default();
        }
    }
    let rows: Vec<EcuRow> = table.into_values().collect();
    print_table(out, &rows)?;
    Ok(Demo {
        fleet,
        vehicle,
        rows,
        database: chosen,
    })
}

/// Prints rows as an aligned table.
pub fn print_rows(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    writeln!(out, "{}", line(&header))?;
    writeln!(
        out,
        "{}",
        line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>())
    )?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

fn print_table(out: &mut dyn Write, rows: &[EcuRow]) -> std::io::Result<()> {
    writeln!(out)?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.serial.clone(),
                r.hardware_id.clone(),
                r.mode.clone(),
                r.before.clone(),
                r.after.clone(),
                r.result.clone(),
            ]
        })
        .collect();
    print_rows(
        out,
        &[
            "ECU",
            "hardware id",
            "verification",
            "image before",
            "image after",
            "result",
        ],
        &cells,
    )
}
