//! The agent's log lines: `tracing` events to stderr, as text or one JSON object per line.
//! `TRACER_LOG` (an `EnvFilter` directive such as `debug`) overrides the default `info` level.

use tracing_subscriber::EnvFilter;

use super::AgentError;
use crate::cli::LogFormat;

pub fn init(format: LogFormat) -> Result<(), AgentError> {
    let filter = EnvFilter::try_from_env("TRACER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| AgentError::Logging(e.to_string()))
}
