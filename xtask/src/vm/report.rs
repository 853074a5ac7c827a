//! The per-kernel table: printed, kept in `target/vm/matrix.md`, and with `--update` written
//! into README.md together with each kernel's tracepoint format files as unit-test fixtures.

use std::{fs, path::Path};

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
    #[test]
    fn series_of_releases() {
        assert_eq!(super::series_of("6.1.0-56-cloud-amd64"), "6.1");
        assert_eq!(super::series_of("6.12.107+deb13-cloud-amd64"), "6.12");
        assert_eq!(super::series_of("5.10.0-46-cloud-amd64"), "5.10");
        assert_eq!(super::series_of("6.18.44"), "6.18");
    }
}
