//! What every command line of the workspace does the same way: one table of exit statuses,
//! errors as a sentence with the cause on a second line, output that ends quietly when the
//! reader goes away (`director events | head`), and colour only on a terminal.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// The version a server's `--version` prints: the package's, and, for a build with the cargo
/// feature `fault-injection` (crash points, stalls and the test clock, read from
/// environment variables), ` (test build: fault injection)` after it, so that an operator
/// can tell a test build from one to deploy, and the tests' harness can tell a build that
/// would ignore the variables it sets. Expanded in the server's own crate, whose feature
/// it reads.
#[macro_export]
macro_rules! program_version {
    () => {
        if cfg!(feature = "fault-injection") {
            concat!(env!("CARGO_PKG_VERSION"), " (test build: fault injection)")
        } else {
            env!("CARGO_PKG_VERSION")
        }
    };
}

/// The exit statuses of every program (`docs/CLI.md`, "Exit status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: failed for a reason none of the others names (a local file could not be written).
    Failed,
    /// 2: verification failed: metadata or an image was refused (an attack, a bad signature).
    Verification,
    /// 3: not finished: an ECU failed or work is pending (`primary-ecu once`).
    Incomplete,
    /// 4: a server, the Director or a Secondary could not be reached.
    Unreachable,
    /// 5: a server answered and refused the request.
    Refused,
    /// 6: bad configuration: a flag, file or directory is missing or wrong.
    Config,
    /// 64: the command line itself is wrong (sysexits' `EX_USAGE`).
    Usage,
}

impl Exit {
    /// Its number.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Verification => 2,
            Exit::Incomplete => 3,
            Exit::Unreachable => 4,
            Exit::Refused => 5,
            Exit::Config => 6,
            Exit::Usage => 64,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// An error that says what the user should do, and which exit status it ends with. Put it
/// anywhere in an `anyhow` chain: the outermost one decides the status.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub exit: Exit,
    /// One or two plain sentences: what failed and what to do.
    pub message: String,
    /// What caused it, printed on the second line.
    pub cause: Option<anyhow::Error>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_ref().map(|c| {
            let e: &(dyn std::error::Error + Send + Sync + 'static) = c.as_ref();
            e as &(dyn std::error::Error + 'static)
        })
    }
}

/// Wraps an error in a [`Failure`]: what the user reads first, and the exit status.
pub trait Fail<T> {
    /// The error becomes the cause of `message`, which ends the program with `exit`.
    fn fail(self, exit: Exit, message: impl Into<String>) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Fail<T> for Result<T, E> {
    fn fail(self, exit: Exit, message: impl Into<String>) -> anyhow::Result<T> {
        self.map_err(|e| {
            anyhow::Error::new(Failure {
                exit,
                message: message.into(),
                cause: Some(e.into()),
            })
        })
    }
}

/// A [`Failure`] with no cause, as an error.
pub fn failure(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        exit,
        message: message.into(),
        cause: None,
    })
}

/// The exit status an error ends with: that of the outermost [`Failure`] in its chain, else
/// [`Exit::Failed`].
pub fn exit_of(error: &anyhow::Error) -> Exit {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(Exit::Failed, |f| f.exit)
}

/// The error as the user reads it: its outermost message on the first line, the causes
/// (each once) on the second.
pub fn render(error: &anyhow::Error) -> String {
    let mut chain = error.chain();
    let first = chain.next().map(ToString::to_string).unwrap_or_default();
    let mut causes: Vec<String> = Vec::new();
    for cause in chain {
        let text = cause.to_string();
        if !first.contains(&text) && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
    }
    if causes.is_empty() {
        format!("error: {first}")
    } else {
        format!("error: {first}\n  cause: {}", causes.join(": "))
    }
}

/// Parses the command line: help and version print and exit 0; a wrong command line prints
/// clap's message and exits [`Exit::Usage`] (64, apart from the statuses a run can end with).
pub fn parse<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            let usage = e.use_stderr();
            // Printing help to a closed pipe is not an error worth a message.
            let _ = e.print();
            std::process::exit(if usage { Exit::Usage.code().into() } else { 0 })
        }
    }
}

/// The exit status of a run, after printing its error (see [`render`]) on stderr.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{}", render(&e));
            exit_of(&e).into()
        }
    }
}

/// Writes a line to stdout; when the reader has gone (a closed pipe), the program ends with
/// status 0 at once, as `head` expects, instead of panicking as `println!` does.
pub fn write_stdout(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    match written.and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        // Nothing sensible is left to do with output that cannot be written.
        Err(_) => std::process::exit(Exit::Failed.code().into()),
    }
}

/// `println!` for command output: see [`write_stdout`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// Whether to colour what goes to stderr: only on a terminal, and never when `NO_COLOR` is
/// set to anything but the empty string (no-color.org).
pub fn colour_on_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// `text` cut to `max` characters (on a character boundary), with `…` when cut: for table
/// cells, whose full text `--json` prints.
pub fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some(_) => {
            let end = text
                .char_indices()
                .nth(max.saturating_sub(1))
                .map_or(0, |(i, _)| i);
            std::borrow::Cow::Owned(format!("{}…", &text[..end]))
        }
    }
}

/// The widest a table cell gets; `--json` prints every field whole.
const MAX_CELL: usize = 80;

/// `text` as a terminal may show it: control characters (newlines, escape sequences) and
/// invisible or bidirectional ones (`uptane_core::ids::invisible`, which could reorder what
/// follows) are replaced by `�`. For any text a caller, a server or an ECU chose.
pub fn visible(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || uptane_core::ids::invisible(c) {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// A cell as a table shows it: [`visible`], cut to [`MAX_CELL`] characters.
pub fn cell(text: &str) -> String {
    truncate(&visible(text), MAX_CELL).into_owned()
}

/// Rows under their headers, columns aligned, each cell as [`cell`] shows it.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.iter().map(|c| cell(c)).collect())
        .collect();
    let width = |c: &str| c.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(width(c)))))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let empty = rows.is_empty();
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    if empty {
        out.push("(none)".into());
    }
    out.join("\n")
}

/// The name an image is known by: `given`, else the file name of its path (what `primary-ecu
/// init` and `secondary-ecu init` call their factory image).
pub fn image_name(given: Option<String>, image: &std::path::Path) -> anyhow::Result<String> {
    match given {
        Some(name) => Ok(name),
        None => image
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow::anyhow!("--factory-name is required when the image path has no file name")
            }),
    }
}

/// The `completions` and `man` subcommands every program has (flattened into its command
/// enum), generated from its own clap definition so they cannot drift from it.
#[derive(Debug, clap::Subcommand)]
pub enum Docs {
    /// Prints a shell completion script on stdout (e.g. `director completions bash >
    /// /etc/bash_completion.d/director`).
    #[command(display_order = 1000)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Writes man pages, one for the program and one per subcommand, into a directory.
    #[command(display_order = 1001)]
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

impl Docs {
    /// Runs it for program `C`.
    pub fn run<C: clap::CommandFactory>(self) -> anyhow::Result<()> {
        let mut command = C::command();
        match self {
            Docs::Completions { shell } => {
                let name = command.get_name().to_string();
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut command, name, &mut script);
                crate::outln!("{}", String::from_utf8_lossy(&script).trim_end());
            }
            Docs::Man { out } => {
                std::fs::create_dir_all(&out)
                    .fail(Exit::Config, format!("could not create {}", out.display()))?;
                clap_mangen::generate_to(command, &out).fail(
                    Exit::Failed,
                    format!("could not write man pages to {}", out.display()),
                )?;
                let pages = std::fs::read_dir(&out)?
                    .filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
                    .count();
                crate::outln!("wrote {pages} man pages to {}", out.display());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outermost_failure_decides_the_status_and_causes_go_on_the_second_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e: anyhow::Error = Err::<(), _>(io)
            .fail(Exit::Config, "the Director directory is not initialized")
            .unwrap_err();
        assert_eq!(exit_of(&e), Exit::Config);
        assert_eq!(
            render(&e),
            "error: the Director directory is not initialized\n  cause: no such file"
        );
        let plain = anyhow::anyhow!("disk full");
        assert_eq!(exit_of(&plain), Exit::Failed);
        assert_eq!(render(&plain), "error: disk full");
    }

    #[test]
    fn nothing_in_a_cell_can_steer_the_terminal() {
        assert_eq!(cell("a\u{1b}[31mb\nc"), "a\u{fffd}[31mb\u{fffd}c");
        assert_eq!(cell("exe.\u{202E}nib"), "exe.\u{fffd}nib");
        assert_eq!(visible("zero\u{200B}width"), "zero\u{fffd}width");
        assert_eq!(visible("plain élan"), "plain élan");
        assert!(table(&["A"], Vec::new()).ends_with("(none)"));
    }

    #[test]
    fn long_cells_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("élan vital est", 5), "élan…");
        assert_eq!(truncate(&"x".repeat(1 << 20), 80).chars().count(), 80);
    }

    #[test]
    fn the_statuses_are_distinct() {
        let all = [
            Exit::Ok,
            Exit::Failed,
            Exit::Verification,
            Exit::Incomplete,
            Exit::Unreachable,
            Exit::Refused,
            Exit::Config,
            Exit::Usage,
        ];
        let codes: std::collections::BTreeSet<u8> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
    }
}
