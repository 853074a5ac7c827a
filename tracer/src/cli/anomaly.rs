//! Options of anomaly detection (`stream`, `agent`) and the `config` subcommand.

use std::path::PathBuf;

use clap::Args;

use crate::anomaly::{Config, ConfigError};

#[derive(Debug, Clone, Default, Args)]
pub struct AnomalyArgs {
    /// Anomaly detector thresholds, a TOML file (`tracer config --print-default` shows every
    /// key). With `stream`, implies --anomalies.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config key, e.g. `--anomaly syn_flood.min_rate=50` (repeatable). With
    /// `stream`, implies --anomalies.
    #[arg(long = "anomaly", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl AnomalyArgs {
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), &self.overrides)
    }

    /// Whether any option asks for detection.
    pub fn given(&self) -> bool {
        self.config.is_some() || !self.overrides.is_empty()
    }
}

#[derive(Debug, Clone, Args)]
#[command(arg_required_else_help = true)]
pub struct ConfigArgs {
    /// Print the default configuration (every key, documented) and exit.
    #[arg(long, conflicts_with = "check")]
    pub print_default: bool,
    /// Validate a config file (with any --anomaly overrides) and print the result.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
    /// Override one key before validating.
    #[arg(long = "anomaly", value_name = "KEY=VALUE", requires = "check")]
    pub overrides: Vec<String>,
}
