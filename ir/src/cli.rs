//! What both command-line tools do around their work: one-line errors, exit codes, and a stdout that may fail.
//!
//! - a bad flag prints clap's first error line and exits with 2; `--help` and `--version` print and exit 0;
//! - an error prints `TOOL: error: ...` on one line (the causes joined) and exits with 1;
//! - a panic prints `TOOL: internal error: ...` on one line instead of a backtrace;
//! - stdout closed by its reader (`| head -1`) ends the program quietly with 0, as a pipeline expects; any other
//!   stdout failure (`> /dev/full`) is an error like the others.

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

/// Parse the command line as `C` and run it; see the module documentation for what is printed and returned.
pub fn main<C: clap::Parser>(tool: &'static str, run: impl FnOnce(C) -> anyhow::Result<()>) -> ExitCode {
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .map(String::from)
            .or_else(|| info.payload().downcast_ref::<String>().cloned());
        eprintln!("{tool}: internal error: {}", msg.unwrap_or_else(|| "panic".into()));
    }));
    let cli = match C::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            return match e.print() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{tool}: error: stdout: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            let text = e.render().to_string();
            let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            eprintln!("{tool}: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Write `text` to stdout and flush, as an error (not a panic, as `print!` would) when stdout fails.
pub fn print(text: impl Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    write!(out, "{text}").and_then(|()| out.flush()).map_err(|e| anyhow::Error::new(e).context("stdout"))
}
