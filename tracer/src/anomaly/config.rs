//! Detector thresholds: a TOML file (`--config`), `--anomaly KEY=VALUE` overrides on top, then
//! validation. Every error names the key and the problem.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The defaults, as `tracer config --print-default` prints them. A unit test checks that this
/// text parses to exactly [`Config::default`].
pub const DEFAULT_TOML: &str = r#"# tracer anomaly detection. Every key is optional; this file shows the defaults.
# Override single keys on the command line with --anomaly KEY=VALUE (e.g. syn_flood.min_rate=50).

# Detection on or off as a whole.
enabled = true
# An active anomaly clears once its measure has stayed below clear_ratio x its threshold for
# clear_after_secs (hysteresis: no flapping around the threshold).
clear_ratio = 0.5
clear_after_secs = 30

[close_wait_leak]
# A process holding at least min_sockets sockets in CLOSE_WAIT for longer than min_age_secs
# (the peer closed, the application never did).
enabled = true
min_sockets = 20
min_age_secs = 60

[syn_flood]
# A listener receiving at least min_rate never-completing handshakes per second, averaged over
# window_secs (SYN-ACK retransmits of new handshakes, plus SYN cookies sent but not answered and
# SYNs dropped for a full request queue).
enabled = true
min_rate = 100
window_secs = 5

[time_wait_pileup]
# At least min_sockets sockets in TIME_WAIT. The default sits above what full-rate healthy
# loopback churn keeps under a 131072 tcp_max_tw_buckets; lower it where TIME_WAIT matters.
enabled = true
min_sockets = 200000

[retransmit_storm]
# At least min_rate retransmitted segments per second to one peer over window_secs.
enabled = true
min_rate = 100
window_secs = 10

[reset_storm]
# At least min_rate resets per second sent to or received from one peer over window_secs
# (a port scan answered with RSTs, or a peer rejecting connections).
enabled = true
min_rate = 100
window_secs = 10

[peer_flood]
# At least min_connections concurrent connections with one remote address.
enabled = true
min_connections = 5000

[connect_failures]
# At least min_rate failed connects per second (refused, timed out, unreachable) to one
# destination over window_secs.
enabled = true
min_rate = 10
window_secs = 10

[exposed_listener]
# A new listener on a wildcard address (0.0.0.0 or ::) on one of these ports.
enabled = true
ports = [21, 23, 25, 111, 135, 139, 445, 1433, 1521, 2049, 2375, 3306, 3389, 5432, 5900, 6379, 9200, 11211, 27017]
"#;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: String },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("override `{text}`: {problem}")]
    Override { text: String, problem: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    pub clear_ratio: f64,
    pub clear_after_secs: u64,
    pub close_wait_leak: CloseWait,
    pub syn_flood: RateDetector,
    pub time_wait_pileup: Count,
    pub retransmit_storm: RateDetector,
    pub reset_storm: RateDetector,
    pub peer_flood: PeerFlood,
    pub connect_failures: RateDetector,
    pub exposed_listener: Exposed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloseWait {
    pub enabled: bool,
    pub min_sockets: u64,
    pub min_age_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateDetector {
    pub enabled: bool,
    /// Events per second.
    pub min_rate: f64,
    pub window_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Count {
    pub enabled: bool,
    pub min_sockets: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerFlood {
    pub enabled: bool,
    pub min_connections: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exposed {
    pub enabled: bool,
    pub ports: Vec<u16>,
}

const fn rate(min_rate: f64, window_secs: u64) -> RateDetector {
    RateDetector {
        enabled: true,
        min_rate,
        window_secs,
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            clear_ratio: 0.5,
            clear_after_secs: 30,
            close_wait_leak: CloseWait::default(),
            syn_flood: rate(100.0, 5),
            time_wait_pileup: Count::default(),
            retransmit_storm: rate(100.0, 10),
            reset_storm: rate(100.0, 10),
            peer_flood: PeerFlood::default(),
            connect_failures: rate(10.0, 10),
            exposed_listener: Exposed::default(),
        }
    }
}

impl Default for CloseWait {
    fn default() -> Self {
        Self {
            enabled: true,
            min_sockets: 20,
            min_age_secs: 60,
        }
    }
}

impl Default for RateDetector {
    fn default() -> Self {
        rate(100.0, 10)
    }
}

impl Default for Count {
    fn default() -> Self {
        Self {
            enabled: true,
            min_sockets: 200_000,
        }
    }
}

impl Default for PeerFlood {
    fn default() -> Self {
        Self {
            enabled: true,
            min_connections: 5000,
        }
    }
}

impl Default for Exposed {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: vec![
                21, 23, 25, 111, 135, 139, 445, 1433, 1521, 2049, 2375, 3306, 3389, 5432, 5900,
                6379, 9200, 11211, 27017,
            ],
        }
    }
}

/// Longest window or age accepted (a day): longer ones are surely a unit mistake.
const MAX_SECS: u64 = 86_400;

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

fn check_secs(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 || v > MAX_SECS {
        return Err(invalid(
            key,
            format!("{v} must be between 1 and {MAX_SECS} seconds"),
        ));
    }
    Ok(())
}

fn check_rate(key: &str, d: &RateDetector) -> Result<(), ConfigError> {
    if !(d.min_rate.is_finite() && d.min_rate > 0.0) {
        return Err(invalid(
            &format!("{key}.min_rate"),
            format!(
                "{} must be a positive number of events per second",
                d.min_rate
            ),
        ));
    }
    check_secs(&format!("{key}.window_secs"), d.window_secs)
}

fn check_count(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(())
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.clear_ratio > 0.0 && self.clear_ratio <= 1.0) {
            return Err(invalid(
                "clear_ratio",
                format!("{} must be in (0, 1]", self.clear_ratio),
            ));
        }
        if self.clear_after_secs > MAX_SECS {
            return Err(invalid(
                "clear_after_secs",
                format!(
                    "{} must be at most {MAX_SECS} seconds",
                    self.clear_after_secs
                ),
            ));
        }
        check_count(
            "close_wait_leak.min_sockets",
            self.close_wait_leak.min_sockets,
        )?;
        check_secs(
            "close_wait_leak.min_age_secs",
            self.close_wait_leak.min_age_secs,
        )?;
        check_rate("syn_flood", &self.syn_flood)?;
        check_count(
            "time_wait_pileup.min_sockets",
            self.time_wait_pileup.min_sockets,
        )?;
        check_rate("retransmit_storm", &self.retransmit_storm)?;
        check_rate("reset_storm", &self.reset_storm)?;
        check_count(
            "peer_flood.min_connections",
            self.peer_flood.min_connections,
        )?;
        check_rate("connect_failures", &self.connect_failures)?;
        if let Some(i) = self.exposed_listener.ports.iter().position(|&p| p == 0) {
            return Err(invalid(
                &format!("exposed_listener.ports[{i}]"),
                "port 0 is not a port",
            ));
        }
        Ok(())
    }

    /// Reads `path` (if any), applies `overrides` (`a.b=value`, the value in TOML syntax; a bare
    /// word is taken as a string), and validates.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.display().to_string(),
                    error: e.to_string(),
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), String::new()),
        };
        Self::from_parts(&text, &origin, overrides)
    }

    pub fn from_parts(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let user: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: origin.to_owned(),
                message: e.to_string().trim_end().replace('\n', " "),
            })?;
        // Missing keys take their detector's own default (sections share types, not defaults).
        let mut table =
            toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
                origin: "defaults".to_owned(),
                message: e.to_string(),
            })?;
        merge(&mut table, user);
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: if overrides.is_empty() {
                    origin.to_owned()
                } else {
                    format!("{origin} with overrides")
                },
                message: e.to_string().trim_end().replace('\n', " "),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn apply_override(table: &mut toml::Table, text: &str) -> Result<(), ConfigError> {
    let bad = |problem: &str| ConfigError::Override {
        text: text.to_owned(),
        problem: problem.to_owned(),
    };
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. syn_flood.min_rate=50"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key"));
    }
    let value = value.trim();
    let parsed: toml::Value = match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").ok_or_else(|| bad("no value"))?,
        Err(_) => toml::Value::String(value.to_owned()),
    };
    let (last, parents) = path.split_last().ok_or_else(|| bad("empty key"))?;
    let mut cur = table;
    for p in parents {
        let next = cur
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = next
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{p}` is not a section")))?;
    }
    cur.insert((*last).to_owned(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_parts(text, "test.toml", &[])
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn printed_default_is_the_default() {
        assert_eq!(parse(DEFAULT_TOML).unwrap(), Config::default());
        assert_eq!(parse("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn partial_files_keep_other_defaults() {
        let c = parse("[syn_flood]\nmin_rate = 5\n").unwrap();
        assert_eq!(c.syn_flood.min_rate, 5.0);
        assert_eq!(c.syn_flood.window_secs, 5);
        assert_eq!(c.close_wait_leak, CloseWait::default());
    }

    #[test]
    fn mistakes_name_the_key_and_the_problem() {
        let e = err("[syn_flood]\nmin_rat = 5\n");
        assert!(e.contains("min_rat") && e.contains("unknown field"), "{e}");
        let e = err("[sin_flood]\n");
        assert!(e.contains("sin_flood"), "{e}");
        let e = err("[close_wait_leak]\nmin_sockets = \"many\"\n");
        assert!(e.contains("close_wait_leak.min_sockets"), "{e}");
        let e = err("[syn_flood\n");
        assert!(e.contains("line 1"), "{e}");
        let e = err("[close_wait_leak]\nmin_sockets = 0\n");
        assert_eq!(
            e,
            "config key `close_wait_leak.min_sockets`: must be at least 1"
        );
        let e = err("[reset_storm]\nmin_rate = -1\n");
        assert!(e.starts_with("config key `reset_storm.min_rate`"), "{e}");
        let e = err("[connect_failures]\nwindow_secs = 0\n");
        assert!(
            e.starts_with("config key `connect_failures.window_secs`"),
            "{e}"
        );
        let e = err("clear_ratio = 1.5\n");
        assert!(e.starts_with("config key `clear_ratio`"), "{e}");
        let e = err("[exposed_listener]\nports = [22, 0]\n");
        assert!(
            e.starts_with("config key `exposed_listener.ports[1]`"),
            "{e}"
        );
        let e = err("[exposed_listener]\nports = [70000]\n");
        assert!(e.contains("ports"), "{e}");
        let e = err("enabled = yes\n");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn overrides_apply_on_top_of_the_file() {
        let c = Config::from_parts(
            "[syn_flood]\nmin_rate = 5\n",
            "f",
            &[
                "syn_flood.min_rate=7.5".into(),
                "close_wait_leak.min_age_secs = 3".into(),
                "exposed_listener.ports=[8080]".into(),
                "enabled=false".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.syn_flood.min_rate, 7.5);
        assert_eq!(c.close_wait_leak.min_age_secs, 3);
        assert_eq!(c.exposed_listener.ports, vec![8080]);
        assert!(!c.enabled);
        for (o, needle) in [
            ("syn_flood", "KEY=VALUE"),
            ("syn_flood.=3", "empty key"),
            ("enabled.x=3", "not a section"),
            ("syn_flood.bogus=3", "bogus"),
            ("syn_flood.min_rate=abc", "min_rate"),
        ] {
            let e = Config::from_parts("", "f", &[o.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{o}: {e}");
        }
    }
}
