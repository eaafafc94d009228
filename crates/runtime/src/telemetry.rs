//! Logging set-up shared by every subcommand: text for people, JSON for log pipelines, and
//! never terminal colour codes in a file or a pipe.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written (`--log-format`, chart value `logFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per event (timestamp, level, target, fields), for log pipelines.
    Json,
}

/// Installs a `tracing` subscriber writing to stderr in `format`, filtered by `RUST_LOG`
/// (default `info`). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colour(std::io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Colour codes only for a terminal: in a file or a pipe they are noise (`NO_COLOR`, the
/// common convention, turns them off on a terminal too).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
