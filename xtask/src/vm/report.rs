//! The per-kernel table: printed, kept in `target/vm/matrix.md`, and with `--update` written
//! into README.md together with each kernel's tracepoint format files as unit-test fixtures.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{Context, Result};

use super::{
    guest::{Outcome, Report},
    qemu::Ended,
};
use crate::root;

pub struct Row {
    pub kernel: String,
    pub release: String,
    pub package: Option<String>,
    pub accel: String,
    pub seconds: u64,
    pub ended: Ended,
    pub report: Report,
    pub log: std::path::PathBuf,
}

const BEGIN: &str = "<!-- kernel-matrix:begin (cargo xtask vm-test --update) -->";
const END: &str = "<!-- kernel-matrix:end -->";

impl Row {
    pub fn ok(&self) -> bool {
        matches!(self.ended, Ended::Exited) && self.report.ok()
    }

    fn tests(&self) -> String {
        let r = &self.report;
        let mut s = format!(
            "{} passed, {} failed",
            r.count(Outcome::Passed),
            r.count(Outcome::Failed)
        );
        let ignored = r.count(Outcome::Ignored);
        if ignored > 0 {
            s += &format!(", {ignored} ignored");
        }
        match self.ended {
            Ended::NoBoot => s = "did not boot".into(),
            Ended::TimedOut => s += ", TIMED OUT",
            Ended::Exited if !r.done => s += ", did not finish",
            Ended::Exited => {}
        }
        s
    }

    fn degraded(&self) -> String {
        if !self.report.probed() {
            return format!("PROBE FAILED: {}", self.report.probe.join("<br>"));
        }
        let d = self.report.degraded();
        if d.is_empty() {
            "none".into()
        } else {
            d.join("<br>")
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} ({}): {} in {} s [{}]{}",
            self.kernel,
            self.release,
            self.tests(),
            self.seconds,
            self.accel,
            if self.ok() { "" } else { " FAILED" }
        )
    }

    /// Features this run reports degraded that README's row for the kernel does not list
    /// (`recorded`, from [`recorded_degradations`]): a change made a feature unavailable on that
    /// kernel, a program its verifier now rejects for instance, which the tests alone may not
    /// show. Nothing when README has no row for the kernel or the probe failed (which fails the
    /// row anyway).
    pub fn new_degradations(&self, recorded: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
        match recorded.get(&self.kernel) {
            Some(known) if self.report.probed() => new_features(&self.report.degraded(), known),
            _ => Vec::new(),
        }
    }

    /// What failed, for the console.
    fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .report
            .binaries
            .iter()
            .flat_map(|(bin, b)| {
                b.cases
                    .iter()
                    .filter(|(_, o)| **o == Outcome::Failed)
                    .map(move |(case, _)| format!("{bin}::{case}"))
            })
            .collect();
        out.extend(self.report.broken_binaries());
        out
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| Kernel | Release | Real-kernel tests | Degraded features (as the tracer reports them) |\n\
         |---|---|---|---|\n",
    );
    for r in rows {
        let release = match &r.package {
            Some(v) => format!("`{}` ({v})", r.release),
            None => format!("`{}`", r.release),
        };
        s += &format!(
            "| {} | {release} | {} ({}, {} s) | {} |\n",
            r.kernel,
            r.tests(),
            r.accel,
            r.seconds,
            r.degraded()
        );
    }
    s
}

pub fn write(rows: &[Row], dir: &Path, update: bool) -> Result<()> {
    let table = table(rows);
    println!("\n{table}");
    for r in rows.iter().filter(|r| !r.ok()) {
        println!("{} failed: {}", r.kernel, r.failures().join(", "));
        println!("  console log: {}", r.log.display());
    }
    fs::write(dir.join("matrix.md"), &table)?;
    for r in rows {
        let series = series_of(&r.release);
        let formats = dir.join("formats").join(&series);
        fs::create_dir_all(&formats)?;
        for (name, text) in &r.report.formats {
            let file = name.rsplit('/').next().unwrap_or(name);
            fs::write(formats.join(format!("{file}.format")), text)?;
        }
        if update && !r.report.formats.is_empty() {
            let fixtures = root().join("tracer/tests/fixtures/formats").join(&series);
            let _ = fs::remove_dir_all(&fixtures);
            fs::create_dir_all(&fixtures)?;
            for (name, text) in &r.report.formats {
                let file = name.rsplit('/').next().unwrap_or(name);
                fs::write(fixtures.join(format!("{file}.format")), text)?;
            }
        }
    }
    if update {
        let readme = root().join("README.md");
        let text = fs::read_to_string(&readme)?;
        let (head, rest) = text
            .split_once(BEGIN)
            .with_context(|| format!("README.md has no `{BEGIN}` marker"))?;
        let (_, tail) = rest
            .split_once(END)
            .with_context(|| format!("README.md has no `{END}` marker"))?;
        fs::write(&readme, format!("{head}{BEGIN}\n{table}{END}{tail}"))?;
        eprintln!("xtask: vm: README.md table and format fixtures updated");
    }
    Ok(())
}

/// The degraded features README's table lists for each kernel, by the kernel's name. A feature
/// is what a `tracer: degraded:` line names before its first `: `. Rows whose probe failed are
/// left out.
pub fn recorded_degradations(readme: &str) -> BTreeMap<String, BTreeSet<String>> {
    let Some((_, rest)) = readme.split_once(BEGIN) else {
        return BTreeMap::new();
    };
    let table = rest.split_once(END).map_or(rest, |(t, _)| t);
    table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").collect();
            let [kernel, _, _, degraded] = cells[..] else {
                return None;
            };
            let (kernel, degraded) = (kernel.trim(), degraded.trim());
            if kernel == "Kernel" || degraded.starts_with("PROBE FAILED") {
                return None;
            }
            let features = if degraded == "none" {
                BTreeSet::new()
            } else {
                degraded
                    .split("<br>")
                    .map(|d| feature(d).to_owned())
                    .collect()
            };
            Some((kernel.to_owned(), features))
        })
        .collect()
}

/// The feature a degraded line names.
fn feature(degraded: &str) -> &str {
    degraded
        .split_once(": ")
        .map_or(degraded, |(f, _)| f)
        .trim()
}

/// The features of `degraded` lines that `known` does not hold.
fn new_features(degraded: &[&str], known: &BTreeSet<String>) -> Vec<String> {
    degraded
        .iter()
        .map(|d| feature(d))
        .filter(|f| !known.contains(*f))
        .map(str::to_owned)
        .collect()
}

/// `6.1.0-56-cloud-amd64` → `6.1`; `6.18.44` → `6.18`.
fn series_of(release: &str) -> String {
    release
        .split(['.', '-'])
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_degradations_come_from_the_readme_table() {
        let readme = format!(
            "intro\n{BEGIN}\n\
             | Kernel | Release | Real-kernel tests | Degraded features (as the tracer reports them) |\n\
             |---|---|---|---|\n\
             | Debian 6.1 | `6.1.0` (6.1.1) | 3 passed, 0 failed (TCG, 9 s) | owner learning from send/recv: sock:sock_send_length not present<br>live byte counts: bytes are read: exact |\n\
             | Debian 7.0 | `7.0.0` (7.0.1) | 0 passed, 3 failed (TCG, 9 s) | PROBE FAILED: no |\n\
             | host | `6.18.44` | 3 passed, 0 failed (native, 2 s) | none |\n\
             {END}\ntail | a | b | c |\n"
        );
        let r = recorded_degradations(&readme);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r["Debian 6.1"],
            BTreeSet::from([
                "owner learning from send/recv".to_owned(),
                "live byte counts".to_owned()
            ])
        );
        assert!(r["host"].is_empty());
        assert!(recorded_degradations("no table").is_empty());
    }

    #[test]
    fn only_features_missing_from_the_record_are_new() {
        let known = BTreeSet::from(["live byte counts".to_owned()]);
        let degraded = [
            "live byte counts: bytes are read from each socket when it closes",
            "recovery of transitions skipped by recursion: raw tracepoint unavailable (x: y)",
        ];
        assert_eq!(
            new_features(&degraded, &known),
            ["recovery of transitions skipped by recursion"]
        );
        assert!(new_features(&degraded[..1], &known).is_empty());
    }

    #[test]
    fn series_of_releases() {
        assert_eq!(series_of("6.1.0-56-cloud-amd64"), "6.1");
        assert_eq!(series_of("6.12.107+deb13-cloud-amd64"), "6.12");
        assert_eq!(series_of("5.10.0-46-cloud-amd64"), "5.10");
        assert_eq!(series_of("6.18.44"), "6.18");
    }
}
