//! Finding (and if needed mounting) tracefs, and reading tracepoint format files from it.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// Where the tracer mounts tracefs when the machine has not.
pub const DEFAULT_MOUNT: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it on {path} failed: {source} \
         (mount it by hand: `mount -t tracefs nodev {path}`; inside a container, bind-mount the \
         host's /sys/kernel/tracing)"
    )]
    Mount { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
    /// Whether this process mounted it.
    pub mounted_by_us: bool,
}

impl Tracefs {
    /// Finds a mounted tracefs (the usual mount point, the debugfs one, or any tracefs mount
    /// listed in /proc/self/mounts), mounting it on [`DEFAULT_MOUNT`] when there is none.
    pub fn ensure() -> Result<Self, TracefsError> {
        if let Some(root) = Self::find() {
            return Ok(Self {
                root,
                mounted_by_us: false,
            });
        }
        let path = PathBuf::from(DEFAULT_MOUNT);
        mount_tracefs(&path).map_err(|source| TracefsError::Mount {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            root: path,
            mounted_by_us: true,
        })
    }

    /// A tracefs rooted elsewhere (tests point this at fixtures).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            mounted_by_us: false,
        }
    }

    fn find() -> Option<PathBuf> {
        let candidates = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
        if let Some(p) = candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").is_dir())
        {
            return Some(p);
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        mounts.lines().find_map(|line| {
            let mut parts = line.split_whitespace();
            let (_dev, dir, fstype) = (parts.next()?, parts.next()?, parts.next()?);
            let dir = PathBuf::from(dir);
            (fstype == "tracefs" && dir.join("events").is_dir()).then_some(dir)
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The format file of a tracepoint, or `None` when this kernel does not have it.
    pub fn format(&self, category: &str, name: &str) -> Result<Option<String>, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TracefsError::Read { path, source }),
        }
    }
}

fn mount_tracefs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fstype = c"tracefs";
    let source = c"nodev";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_formats_and_reports_missing_tracepoints() {
        let dir = std::env::temp_dir().join(format!("tracer-tracefs-{}", std::process::id()));
        let ev = dir.join("events/sock/inet_sock_set_state");
        std::fs::create_dir_all(&ev).unwrap();
        std::fs::write(ev.join("format"), "name: inet_sock_set_state\n").unwrap();
        let t = Tracefs::at(&dir);
        assert_eq!(
            t.format("sock", "inet_sock_set_state").unwrap().as_deref(),
            Some("name: inet_sock_set_state\n")
        );
        assert!(t.format("tcp", "tcp_nonexistent").unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
