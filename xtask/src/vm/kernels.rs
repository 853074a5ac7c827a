//! Debian kernel images for the matrix: resolved and downloaded with a private apt
//! configuration (the machine's own apt state is never touched), unpacked once into a cache.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::json;

/// A Debian kernel series: the suites whose `linux-image-cloud-amd64` names it.
pub struct Series {
    pub name: &'static str,
    suites: &'static [(&'static str, &'static str)],
}

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        suites: &[(DEBIAN, "bullseye"), (SECURITY, "bullseye-security")],
    },
    Series {
        name: "6.1",
        suites: &[(DEBIAN, "bookworm"), (SECURITY, "bookworm-security")],
    },
    Series {
        name: "6.12",
        suites: &[(DEBIAN, "trixie"), (SECURITY, "trixie-security")],
    },
];

/// The module trees the guest needs: netfilter (nft drops packets in the retransmit tests), veth
/// and netem, and what they depend on. The whole tree would triple the initramfs.
const MODULE_TREES: &[&str] = &[
    "kernel/net",
    "kernel/lib",
    "kernel/crypto",
    "kernel/drivers/net",
];

/// An unpacked kernel: `vmlinuz` and `modules/lib/modules/<release>/` with a `depmod` index.
pub struct Kernel {
    /// `uname -r`, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// A root directory holding `lib/modules/<release>`.
    pub modules: PathBuf,
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("tracer-vm")
}

pub fn series(name: &str) -> Result<&'static Series> {
    SERIES.iter().find(|s| s.name == name).with_context(|| {
        let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
        format!(
            "unknown kernel `{name}`: known are {} and host",
            known.join(", ")
        )
    })
}

/// The cached kernel of `series`, downloading it first when it is missing (or `refresh`).
pub fn get(series: &Series, refresh: bool) -> Result<Kernel> {
    let dir = cache_dir().join(series.name);
    let meta = dir.join("kernel.json");
    if !refresh && let Some(k) = load(&dir, &meta) {
        return Ok(k);
    }
    eprintln!("xtask: vm: fetching the Debian {} kernel", series.name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let fetched = fetch(series, &dir).with_context(|| {
        format!(
            "fetching the Debian {} kernel into {}",
            series.name,
            dir.display()
        )
    });
    if fetched.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    let (release, version) = fetched?;
    fs::write(
        &meta,
        serde_json::to_string_pretty(&json!({"release": release, "version": version}))?,
    )?;
    load(&dir, &meta).context("the unpacked kernel is incomplete")
}

fn load(dir: &Path, meta: &Path) -> Option<Kernel> {
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(meta).ok()?).ok()?;
    let release = v["release"].as_str()?.to_string();
    let k = Kernel {
        version: v["version"].as_str()?.to_string(),
        vmlinuz: dir.join("vmlinuz"),
        modules: dir.join("modules"),
        release,
    };
    let index = k
        .modules
        .join("lib/modules")
        .join(&k.release)
        .join("modules.dep");
    (k.vmlinuz.is_file() && index.is_file()).then_some(k)
}

/// Runs apt with lists, cache and sources of its own under `dir/apt`.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(series: &Series, dir: &Path) -> Result<Self> {
        let apt = dir.join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(apt.join(d))?;
        }
        let sources: String = series
            .suites
            .iter()
            .map(|(url, suite)| {
                format!(
                    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {url} {suite} main\n"
                )
            })
            .collect();
        let list = apt.join("sources.list");
        fs::write(&list, sources)?;
        let p = |p: &Path| p.display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", p(&list)),
            "Dir::Etc::SourceParts=/dev/null".into(),
            format!("Dir::State::Lists={}", p(&apt.join("lists"))),
            format!("Dir::Cache={}", p(&apt.join("cache"))),
            "Debug::NoLocking=1".into(),
            // Downloads land in a directory the `_apt` user cannot write.
            "APT::Sandbox::User=root".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(Self { options })
    }

    /// The versions of `package` the suites offer, newest first.
    fn versions(&self, package: &str, cwd: &Path) -> Result<Vec<String>> {
        let out = Command::new("apt-cache")
            .args(&self.options)
            .args(["madison", package])
            .current_dir(cwd)
            .output()
            .context("cannot run apt-cache")?;
        let mut versions: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string()))
            .collect();
        versions.dedup();
        if versions.is_empty() {
            bail!("the suites offer no {package}");
        }
        Ok(versions)
    }

    fn run(&self, args: &[&str], cwd: &Path) -> Result<()> {
        let out = Command::new("apt-get")
            .args(&self.options)
            .args(["-q", "-q"])
            .args(args)
            .current_dir(cwd)
            .output()
            .context("cannot run apt-get (run `cargo xtask setup`)")?;
        if !out.status.success() {
            bail!(
                "`apt-get {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

fn only_file(dir: &Path, prefix: &str) -> Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

fn dpkg_field(deb: &Path, field: &str) -> Result<String> {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .context("cannot run dpkg-deb")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Downloads one version of the cloud meta-package and the image package it names. Returns
/// (image package name, its .deb).
fn download_image(apt: &Apt, debs: &Path, version: &str) -> Result<(String, PathBuf)> {
    for f in fs::read_dir(debs)? {
        fs::remove_file(f?.path())?;
    }
    apt.run(
        &["download", &format!("linux-image-cloud-amd64={version}")],
        debs,
    )?;
    let meta = only_file(debs, "linux-image-cloud-amd64")?;
    let depends = dpkg_field(&meta, "Depends")?;
    let image = depends
        .split([',', ' ', '('])
        .find(|w| w.starts_with("linux-image-"))
        .with_context(|| format!("linux-image-cloud-amd64 depends on `{depends}`"))?
        .to_string();
    apt.run(&["download", &image], debs)?;
    let deb = only_file(debs, &format!("{image}_"))?;
    Ok((image, deb))
}

/// Downloads the newest cloud kernel of the series and unpacks what the guest needs. Returns
/// (release, package version).
fn fetch(series: &Series, dir: &Path) -> Result<(String, String)> {
    let apt = Apt::new(series, dir)?;
    apt.run(&["update"], dir)?;
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    // Newest first; an index can name a file the mirror no longer serves (seen with
    // bullseye-security), so an older version is the fallback.
    let mut errors = Vec::new();
    let mut found = None;
    for version in apt.versions("linux-image-cloud-amd64", dir)? {
        match download_image(&apt, &debs, &version) {
            Ok(x) => {
                found = Some(x);
                break;
            }
            Err(e) => errors.push(format!("{version}: {e:#}")),
        }
    }
    let (image, deb) = found.with_context(|| {
        format!(
            "no linux-image-cloud-amd64 could be downloaded: {}",
            errors.join("; ")
        )
    })?;
    let version = dpkg_field(&deb, "Version")?;
    let unpacked = dir.join("unpacked");
    crate::cmd::run(
        "dpkg-deb",
        &["-x", &deb.to_string_lossy(), &unpacked.to_string_lossy()],
        &[],
    )?;
    let release = image
        .strip_prefix("linux-image-")
        .unwrap_or(&image)
        .to_string();
    fs::rename(
        unpacked.join(format!("boot/vmlinuz-{release}")),
        dir.join("vmlinuz"),
    )
    .context("the package has no boot/vmlinuz")?;
    // Trixie's packages ship merged-/usr paths.
    let from = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(&release))
        .find(|d| d.is_dir())
        .context("the package has no lib/modules")?;
    let to = dir.join("modules/lib/modules").join(&release);
    copy_modules(&from, &to)?;
    crate::cmd::run(
        "depmod",
        &["-b", &dir.join("modules").to_string_lossy(), &release],
        &[],
    )?;
    fs::remove_dir_all(&unpacked)?;
    fs::remove_dir_all(&debs)?;
    fs::remove_dir_all(dir.join("apt"))?;
    Ok((release, version))
}

/// Copies the module trees the guest needs, decompressed: busybox `modprobe` reads plain `.ko`.
fn copy_modules(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for f in fs::read_dir(from)? {
        let f = f?.path();
        if f.is_file() {
            fs::copy(&f, to.join(f.file_name().unwrap_or_default()))?;
        }
    }
    for tree in MODULE_TREES {
        copy_tree(&from.join(tree), &to.join(tree))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    fs::create_dir_all(to)?;
    for e in entries {
        let path = e?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name))?;
        } else if let Some(stem) = name.strip_suffix(".xz") {
            decompress("xz", &path, &to.join(stem))?;
        } else if let Some(stem) = name.strip_suffix(".zst") {
            decompress("zstd", &path, &to.join(stem))?;
        } else {
            fs::copy(&path, to.join(&name))?;
        }
    }
    Ok(())
}

fn decompress(tool: &str, from: &Path, to: &Path) -> Result<()> {
    let out = Command::new(tool)
        .args(["-d", "-c", "-q"])
        .arg(from)
        .output()
        .with_context(|| format!("cannot run {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -d {}: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(to, out.stdout)?;
    Ok(())
}
