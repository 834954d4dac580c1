//! Test harness for real-process tests: finding the workspace's binaries, starting them on
//! `127.0.0.1:0` and waiting for their `listening on ADDR` line, killing them on drop, and a
//! Python virtual environment with python-tuf for interoperability tests.
//!
//! [`sim`] builds a fleet of the real programs on it; [`demo`] and [`hil`] are `fleet-sim`'s
//! commands; [`proxy`] stands for a network link that can be cut or stalled.

pub mod attacks;
pub mod campaign;
pub mod dashboard;
pub mod demo;
pub mod flood;
pub mod forge;
pub mod hil;
pub mod load;
pub mod mitm;
pub mod nginx;
pub mod parked;
pub mod pg_mitm;
pub mod postgres;
pub mod proxy;
pub mod sim;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut dir = exe
        .parent()
        .expect("a binary lives in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Builds the workspace's binaries next to the running one (release or debug), through the
/// cargo that launched it. For `cargo run --bin fleet-sim`, which builds only its own package:
/// the programs it starts must be as fresh as it is. With `faults`, the servers are built with
/// their test hooks (the `fault-injection` feature: crash points and the test clock), which
/// the HIL matrix and the attack suite need; a later `cargo build` without it rebuilds them.
pub fn build_workspace_binaries(faults: bool) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--workspace", "--bins"]);
    if faults {
        build.args(["--features", TEST_FEATURES]);
    }
    if bin_dir().ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().unwrap_or_else(|e| {
        panic!(
            "cannot run cargo to build the workspace's binaries ({e}): build them with `cargo \
             build --workspace --bins --features {TEST_FEATURES}`"
        )
    });
    assert!(status.success(), "building the workspace's binaries failed");
}

/// The programs built with test hooks under the cargo feature `fault-injection`.
const HOOKED: [&str; 2] = ["director", "image-repo"];

/// The cargo features that build [`HOOKED`] with their test hooks.
const TEST_FEATURES: &str = "director/fault-injection,image-repo/fault-injection";

/// When `command` starts one of [`HOOKED`] with a fault-injection variable set
/// (`DIRECTOR_FAULT_*`, `IMAGE_REPO_FAULT_*`, `UPTANE_FAULT_CLOCK_OFFSET_SECS`), makes sure the
/// program reads it: a plain `cargo build` leaves the hooks out, and such a build ignores the
/// variables (a crash point never reached, a stall never held, the clock not moved), which a
/// test would misread as a failure of what it checks. Rebuilds the workspace's binaries with
/// the hooks once if not, and fails with the command to run if that did not help.
fn ensure_test_build(command: &Command) {
    let program = Path::new(command.get_program());
    let hooked = program
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| HOOKED.contains(&name));
    let sets_fault = command
        .get_envs()
        .any(|(key, value)| value.is_some() && key.to_string_lossy().contains("_FAULT_"));
    if hooked && sets_fault {
        ensure_hooks(program);
    }
}

/// Makes sure `program` is a test build: if not, rebuilds the workspace's binaries with the
/// hooks (once per process: a failed build is tried again by the next caller, which then
/// fails the same way), and fails with the command to run if that did not help.
fn ensure_hooks(program: &Path) {
    // Asked once per binary: a test that moves the clock starts a hooked program for nearly
    // every command it runs.
    static KNOWN: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());
    let mut known = KNOWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if known.contains(program) || is_test_build(program) {
        known.insert(program.to_path_buf());
        return;
    }
    drop(known);
    static REBUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut rebuilt = REBUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*rebuilt {
        build_workspace_binaries(true);
        *rebuilt = true;
    }
    assert!(
        is_test_build(program),
        "{} is not a test build (its --version does not end in {TEST_BUILD:?}): run `cargo \
         build --workspace --bins --features {TEST_FEATURES}`",
        program.display()
    );
    KNOWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(program.to_path_buf());
}

/// Path of workspace binary `name` (one of the programs with test hooks), made sure to be a
/// test build as [`ensure_test_build`] would before starting it with a fault variable.
pub fn test_build_bin(name: &str) -> PathBuf {
    let path = bin(name);
    ensure_hooks(&path);
    path
}

/// What a server's `--version` ends in when it has its test hooks
/// (`service_runtime::program_version!`).
const TEST_BUILD: &str = "(test build: fault injection)";

fn is_test_build(program: &Path) -> bool {
    let (status, stdout, _) = run(
        Command::new(program).arg("--version"),
        Duration::from_secs(30),
    );
    status.success() && stdout.trim_end().ends_with(TEST_BUILD)
}

/// Path of workspace binary `name`, building the workspace's binaries first if it is missing
/// (as when one test crate is run alone).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.exists() {
        build_workspace_binaries(true);
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Every child process started here and not yet killed, for [`kill_all_children`].
static LIVE: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Kills every child process started by this harness that is still alive (from a signal
/// handler: Ctrl-C must not leave servers behind).
pub fn kill_all_children() {
    let pids: Vec<u32> = LIVE
        .lock()
        .map(|l| l.iter().copied().collect())
        .unwrap_or_default();
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    /// What the process wrote to stderr, collected in the background.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ChildGuard {
    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process at once, as a power cut would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut live) = LIVE.lock() {
            live.remove(&self.child.id());
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(limit)
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `command` in the background (killed when the guard drops), collecting its
/// stderr; its stdout goes to the returned reader.
pub fn start(mut command: Command) -> (ChildGuard, std::process::ChildStdout) {
    ensure_test_build(&command);
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = command.spawn().expect("the program starts");
    if let Ok(mut live) = LIVE.lock() {
        live.insert(child.id());
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let collected = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&collected);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    (
        ChildGuard {
            child,
            stderr: collected,
        },
        stdout,
    )
}

/// Starts `command` in the background (killed when the guard drops); its stdout is
/// discarded.
pub fn spawn(command: Command) -> ChildGuard {
    let (guard, stdout) = start(command);
    std::thread::spawn(move || std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink()));
    guard
}

/// Starts `command` and waits up to `limit` for a `listening on ADDR` line on its stdout.
pub fn spawn_listening(command: Command, limit: Duration) -> (ChildGuard, String) {
    let (guard, listening) = spawn_listening_with_metrics(command, limit);
    (guard, listening.addr)
}

/// Where a started server listens.
#[derive(Debug, Clone)]
pub struct Listening {
    /// Its `listening on` address.
    pub addr: String,
    /// Its `metrics on` address, when it printed one first (`--metrics-listen`).
    pub metrics: Option<String>,
}

/// [`spawn_listening`], keeping the `metrics on ADDR` line a server prints before it.
pub fn spawn_listening_with_metrics(command: Command, limit: Duration) -> (ChildGuard, Listening) {
    let (guard, stdout) = start(command);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut metrics = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("metrics on ") {
                metrics = Some(addr.trim().to_string());
            }
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(Listening {
                    addr: addr.trim().to_string(),
                    metrics: metrics.take(),
                });
            }
        }
    });
    match rx.recv_timeout(limit) {
        Ok(listening) => (guard, listening),
        Err(_) => panic!(
            "no 'listening on' line within {limit:?}; stderr:\n{}",
            guard.stderr()
        ),
    }
}

/// Runs `future` to completion on a runtime of its own (the harness is synchronous).
pub fn blocking<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// Runs a command to completion (bounded by `limit`), returning its status and output.
pub fn run(command: &mut Command, limit: Duration) -> (ExitStatus, String, String) {
    ensure_test_build(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("the program starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(output)) => (
            output.status,
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        ),
        Ok(Err(e)) => panic!("waiting for {command:?}: {e}"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{command:?} did not finish within {limit:?}");
        }
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(command: &mut Command, limit: Duration) -> String {
    let description = format!("{command:?}");
    let (status, stdout, stderr) = run(command, limit);
    assert!(
        status.success(),
        "{description} failed ({status}):\n{stdout}\n{stderr}"
    );
    stdout
}

/// A Python virtual environment with python-tuf 7.0.0 from PyPI, created once under the
/// target directory and reused.
pub fn python_tuf_venv() -> PathBuf {
    let venv = bin_dir().join("python-tuf-venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join(".tuf-7.0.0-installed");
    let lock_path = bin_dir().join(".python-tuf-venv.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("lock file opens");
    lock.lock().expect("venv lock");
    if !marker.exists() {
        run_ok(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            Duration::from_secs(120),
        );
        run_ok(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "tuf==7.0.0",
                "securesystemslib==1.4.0",
            ]),
            Duration::from_secs(300),
        );
        std::fs::write(&marker, b"").expect("marker writes");
    }
    python
}

/// A process's peak resident memory (VmHWM) in KiB, while it runs (Linux).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds (user + system, all threads) process `pid` has used so far, to 10 ms.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(&format!("/proc/{pid}/stat"), 11)
}

/// CPU seconds (user + system) of this process's children that have ended and been waited
/// for (a load generator run to its end, say), to 10 ms.
pub fn children_cpu_seconds() -> Option<f64> {
    stat_seconds("/proc/self/stat", 13)
}

/// The sum of the two clock-tick fields of `/proc/.../stat` at `path` from `first` (counted
/// after the command name), in seconds.
fn stat_seconds(path: &str, first: usize) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 =
        fields.get(first)?.parse::<u64>().ok()? + fields.get(first + 1)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks as f64 / 100.0)
}

/// Copies `src` to `dst` (a file).
pub fn copy(src: &Path, dst: &Path) {
    std::fs::copy(src, dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
}

#[cfg(test)]
mod tests {
    /// A child's CPU counts once it has ended and been waited for (and the fields read are
    /// the children's, not this process's own).
    #[test]
    fn a_child_waited_for_adds_its_cpu() {
        let before = super::children_cpu_seconds().expect("/proc/self/stat reads");
        // A few hundred milliseconds of the shell's CPU, far above the 10 ms resolution.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let after = super::children_cpu_seconds().expect("/proc/self/stat reads");
        assert!(after >= before + 0.05, "{before} s then {after} s");
    }
}
