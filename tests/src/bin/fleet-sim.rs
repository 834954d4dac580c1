//! `fleet-sim`: the whole system on 127.0.0.1, for a first look (`demo`), hardware-in-loop
//! style fault runs (`hil`), the attack suite (`attacks`), a load test (`load`), and
//! throwaway certificates for trying the programs by hand (`pki`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use uptane_tests::{attacks, demo, hil, kill_all_children};

#[derive(Debug, Parser)]
#[command(name = "fleet-sim", version, about = "The Uptane fleet on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Starts a Director, an Image repository and a vehicle, publishes and assigns an image
    /// per ECU, and follows the update to the end.
    Demo {
        /// Leave everything running afterwards, until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
        /// Where the Director keeps its state: sqlite, postgres (a throwaway cluster from
        /// Debian's PostgreSQL, or the server DIRECTOR_TEST_POSTGRES names), or
        /// postgres://… (a new database on that server).
        #[arg(long, default_value = "sqlite")]
        database: String,
    },
    /// Runs a four-wave campaign over a fleet of real vehicles, some of which fail their
    /// trial boot in the third wave: the campaign pauses itself, the operator resumes it;
    /// exit 0 only when every wave ends as expected.
    Campaign {
        /// Vehicles (a Primary and a Secondary each).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(20..=200))]
        vehicles: u64,
        /// Secondaries of the third wave that fail their trial boot.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..=4))]
        failing: u64,
    },
    /// Drives the operator dashboard (/ui) in headless Chromium against a real Director and
    /// fleet: log in, search, create and start a campaign, watch it, pause it; writes a
    /// screenshot of each page. Needs `npm ci --prefix tests/browser` and Debian's chromium.
    Dashboard {
        /// Where the screenshots go.
        #[arg(long, default_value = "target/dashboard")]
        out: std::path::PathBuf,
        /// Vehicles (a Primary and a Secondary each).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=50))]
        vehicles: u64,
        /// The browser.
        #[arg(long, default_value = "/usr/bin/chromium")]
        chromium: std::path::PathBuf,
    },
    /// Runs the HIL fault matrix; exit 0 only when every row holds.
    Hil {
        /// Vehicles per row.
        #[arg(long, default_value_t = 2)]
        vehicles: usize,
        /// Secondaries per vehicle.
        #[arg(long, default_value_t = 2)]
        secondaries: usize,
        /// Only the rows whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Runs the attack suite against real processes; exit 0 only when every attack ends as
    /// expected.
    Attacks {
        /// Only the attacks whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Load test: simulated vehicles (real keys, signed manifests, HTTPS) poll a real
    /// Director and Image repository; a campaign assigns an update to a share of the fleet
    /// over one poll interval. Prints requests/s and latency percentiles per route, errors
    /// by kind, and the servers' CPU and peak memory; exit 0 only without errors.
    Load {
        /// Simulated vehicles (a Primary and two Secondaries each).
        #[arg(long, default_value_t = 1000)]
        vehicles: usize,
        /// Seconds between two cycles of a vehicle.
        #[arg(long, default_value_t = 60)]
        poll_secs: u64,
        /// Seconds of polling to measure (after registration and the warm-up).
        #[arg(long = "duration", default_value_t = 60)]
        duration_secs: u64,
        /// Seconds of polling before the measurement starts (its latency is printed apart):
        /// one poll interval lets every vehicle make its first poll, which signs its metadata
        /// for the first time and reads its credential into the Director's cache, so that
        /// what is measured is the fleet's steady state.
        #[arg(long = "warmup", default_value_t = 0)]
        warmup_secs: u64,
        /// Percent of the fleet the campaign assigns an update to.
        #[arg(long, default_value_t = 10)]
        campaign_percent: u32,
        /// Requests in flight at most: HTTP/2 connections to each server of 8 requests
        /// each, every vehicle on one of them. A fleet has no such bound: each vehicle sends
        /// when its cycle is due. The generator needs one, and a request that waits for a
        /// place counts in its latency, so the bound must not be what is measured: at 5,000
        /// requests a second (100,000 vehicles every 60 s), 256 places bind once the mean
        /// answer takes about 51 ms, past the target; 64 bound at 12.8 ms (a slow answer
        /// holds one of its connection's 8, so a little before those means).
        #[arg(long, default_value_t = 256)]
        connections: usize,
        /// Where the Director keeps its state: sqlite, postgres (a throwaway cluster from
        /// Debian's PostgreSQL, or the server DIRECTOR_TEST_POSTGRES names), or
        /// postgres://… (a new database on that server).
        #[arg(long, default_value = "sqlite")]
        database: String,
        /// Director processes (replicas, PostgreSQL only); vehicles are spread over them.
        #[arg(long, default_value_t = 1)]
        directors: usize,
        /// Fail the run when the p99 latency of all vehicle requests (the table's last row)
        /// is above this many milliseconds.
        #[arg(long, value_parser = positive_ms)]
        max_p99_ms: Option<f64>,
    },
    /// Writes a throwaway CA certificate and certificates issued by it, for trying the
    /// programs by hand: `ca.pem`, `director/` and `image-repo/` (server certificates for
    /// `--name`), `supplier/` (a client certificate for uploads). The CA's key is not kept:
    /// nothing more can be issued, and a fleet uses its own PKI.
    Pki {
        /// The directory to write into (created; existing files are replaced).
        #[arg(long)]
        out: std::path::PathBuf,
        /// A name the servers answer to (repeat; host names or IP addresses).
        #[arg(long = "name", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        names: Vec<String>,
    },
}

/// A latency bound in milliseconds: a finite number above zero.
fn positive_ms(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms > 0.0 => Ok(ms),
        _ => Err(format!("{text:?} is not a number of milliseconds above 0")),
    }
}

/// `fleet-sim pki`.
fn write_pki(out: &std::path::Path, names: &[String]) -> Result<(), String> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    uptane_tests::sim::write_throwaway_pki(out, &names)?;
    println!(
        "wrote {0}/ca.pem, {0}/director/, {0}/image-repo/ and {0}/supplier/ (cert.pem, key.pem)",
        out.display()
    );
    Ok(())
}

/// On SIGINT or SIGTERM, every child process goes too.
fn stop_children_on_signal() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(service_runtime::shutdown_signal());
        kill_all_children();
        eprintln!("fleet-sim: stopped every process it started");
        std::process::exit(130);
    });
}

fn wait_for_signal() {
    if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        runtime.block_on(service_runtime::shutdown_signal());
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let needs_binaries = !matches!(cli.command, Command::Pki { .. });
    if needs_binaries && std::env::var_os("CARGO").is_some() {
        // Launched by `cargo run`, which built only this package.
        let faults = matches!(cli.command, Command::Hil { .. } | Command::Attacks { .. });
        uptane_tests::build_workspace_binaries(faults);
    }
    let mut out = std::io::stdout();
    match cli.command {
        Command::Demo {
            keep_running,
            database,
        } => {
            if !keep_running {
                stop_children_on_signal();
            }
            let demo = match demo::run(&mut out, &database) {
                Ok(demo) => demo,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let ok = demo.all_updated();
            println!();
            println!(
                "{}",
                if ok {
                    "Every ECU runs its new image, and the Director has recorded it."
                } else {
                    "Not every ECU was updated: see the table."
                }
            );
            if keep_running {
                let director = &demo.fleet.director_url;
                println!();
                println!("Still running (Ctrl-C stops everything):");
                println!("  Director          {director}");
                println!("  Image repository  {}", demo.fleet.image_url);
                println!("  files             {}", demo.fleet.root().display());
                println!();
                println!("Try next:");
                println!(
                    "  export DIRECTOR_URL={director} DIRECTOR_TOKEN={}",
                    demo.fleet.token
                );
                println!("  director vehicle show {}", demo::VIN);
                println!("  director events --vin {}", demo::VIN);
                println!("  director assignment list --vin {}", demo::VIN);
                println!(
                    "  primary-ecu status --dir {}",
                    demo.vehicle.primary_dir.display()
                );
                println!(
                    "  (binaries in target/release; publish with `image-repo add --repo {} --offline-keys {} ...`)",
                    demo.fleet.path("repo").display(),
                    demo.fleet.path("repo-keys").display()
                );
                wait_for_signal();
                drop(demo);
                println!("stopped");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Campaign { vehicles, failing } => {
            stop_children_on_signal();
            let args = uptane_tests::campaign::CampaignArgs {
                vehicles: vehicles as usize,
                failing: failing as usize,
            };
            match uptane_tests::campaign::run(&mut out, args) {
                Ok(report) if report.broken.is_empty() => {
                    println!("Every wave ended as expected.");
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    for broken in &report.broken {
                        println!("NOT AS EXPECTED: {broken}");
                    }
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dashboard {
            out: screenshots,
            vehicles,
            chromium,
        } => {
            stop_children_on_signal();
            let args = uptane_tests::dashboard::DashboardArgs {
                out: screenshots,
                vehicles: vehicles as usize,
                chromium,
            };
            match uptane_tests::dashboard::run(&mut out, &args) {
                Ok(report) => {
                    println!("browser: {}", report.browser);
                    for shot in &report.screenshots {
                        println!("screenshot {}", shot.display());
                    }
                    for broken in &report.broken {
                        println!("NOT AS EXPECTED: {broken}");
                    }
                    if report.broken.is_empty() {
                        println!("The dashboard did what the operator asked, and the CLI agrees.");
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Attacks { only } => {
            stop_children_on_signal();
            match attacks::run_all(&mut out, only.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Load {
            vehicles,
            poll_secs,
            duration_secs,
            warmup_secs,
            campaign_percent,
            connections,
            database,
            directors,
            max_p99_ms,
        } => {
            stop_children_on_signal();
            let args = uptane_tests::load::LoadArgs {
                vehicles,
                poll_secs,
                duration_secs,
                warmup_secs,
                campaign_percent: campaign_percent.min(100),
                connections,
                database,
                directors,
                max_p99_ms,
            };
            match uptane_tests::load::run(&args) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(report) => {
                    // A full report ends in a newline; a run refused before it began is
                    // one sentence without one.
                    print!("{report}");
                    if !report.ends_with('\n') {
                        println!();
                    }
                    eprintln!("error: the load test failed (the report above says why)");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Pki { out, names } => match write_pki(&out, &names) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Hil {
            vehicles,
            secondaries,
            only,
        } => {
            stop_children_on_signal();
            let rig = hil::Rig {
                vehicles: vehicles.max(1),
                secondaries: secondaries.max(1),
            };
            match hil::run(&mut out, rig, only.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
