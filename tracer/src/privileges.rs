//! Checking for the privileges the tracer needs before trying to use them.

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "tracer needs root, or CAP_BPF and CAP_PERFMON (plus CAP_SYS_ADMIN if tracefs must be \
     mounted); missing: {missing}. Run it with sudo."
)]
pub struct PrivilegeError {
    pub missing: String,
}

/// Effective capability set of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Whether the capability set allows loading and attaching tracepoint programs.
pub fn check_caps(caps: u64) -> Result<(), PrivilegeError> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| *n)
        .collect();
    Err(PrivilegeError {
        missing: missing.join(", "),
    })
}

pub fn check() -> Result<(), PrivilegeError> {
    match effective_caps() {
        Some(caps) => check_caps(caps),
        // Cannot tell (no procfs): let the kernel decide and report its error.
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        assert!(check_caps(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        let e = check_caps(1 << CAP_BPF).unwrap_err();
        assert_eq!(e.missing, "CAP_PERFMON");
        let e = check_caps(0).unwrap_err();
        assert_eq!(e.missing, "CAP_BPF, CAP_PERFMON");
        assert!(e.to_string().contains("needs root"));
    }
}
