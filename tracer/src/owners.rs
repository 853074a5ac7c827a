//! Owners of sockets that existed before the tracer started, found in /proc as `ss -p` finds
//! them: socket inodes from /proc/net/tcp{,6}, matched against every process's open fds.
//!
//! Listeners matter most: passively opened sockets inherit their listener's owner until their
//! own process touches them, so a server started before the tracer must be known by port.

use std::collections::HashMap;

use procfs::{
    net::TcpState,
    process::{FDTarget, all_processes},
};

/// A listening port and the process holding its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerOwner {
    pub port: u16,
    pub pid: u32,
    pub comm: String,
}

/// Listening sockets of this network namespace: inode -> local port.
fn listening_inodes() -> HashMap<u64, u16> {
    let v4 = procfs::net::tcp().unwrap_or_default();
    let v6 = procfs::net::tcp6().unwrap_or_default();
    v4.into_iter()
        .chain(v6)
        .filter(|e| e.state == TcpState::Listen && e.inode != 0)
        .map(|e| (e.inode, e.local_address.port()))
        .collect()
}

/// Matches socket inodes to processes. `procs` yields (pid, comm, socket inodes it holds).
pub fn match_owners(
    mut wanted: HashMap<u64, u16>,
    procs: impl IntoIterator<Item = (u32, String, Vec<u64>)>,
) -> Vec<ListenerOwner> {
    let mut out = Vec::new();
    for (pid, comm, inodes) in procs {
        if wanted.is_empty() {
            break;
        }
        for ino in inodes {
            if let Some(port) = wanted.remove(&ino) {
                out.push(ListenerOwner {
                    port,
                    pid,
                    comm: comm.clone(),
                });
            }
        }
    }
    out.sort_by_key(|o| (o.port, o.pid));
    out
}

/// Owners of the listening sockets that exist now. Processes that vanish during the scan, or
/// whose fds cannot be read, are skipped.
pub fn listening_owners() -> Vec<ListenerOwner> {
    let wanted = listening_inodes();
    if wanted.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = all_processes() else {
        return Vec::new();
    };
    let procs = procs.filter_map(Result::ok).filter_map(|p| {
        let comm = p.stat().ok()?.comm;
        let inodes = p
            .fd()
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|fd| match fd.target {
                FDTarget::Socket(ino) => Some(ino),
                _ => None,
            })
            .collect();
        Some((u32::try_from(p.pid).ok()?, comm, inodes))
    });
    match_owners(wanted, procs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_inodes_to_processes() {
        let wanted = HashMap::from([(100, 80), (200, 443), (300, 22)]);
        let procs = vec![
            (1, "init".to_owned(), vec![5, 6]),
            (77, "nginx".to_owned(), vec![7, 100, 200]),
            (90, "sshd".to_owned(), vec![300]),
            (91, "late".to_owned(), vec![100]),
        ];
        assert_eq!(
            match_owners(wanted, procs),
            vec![
                ListenerOwner {
                    port: 22,
                    pid: 90,
                    comm: "sshd".into()
                },
                ListenerOwner {
                    port: 80,
                    pid: 77,
                    comm: "nginx".into()
                },
                ListenerOwner {
                    port: 443,
                    pid: 77,
                    comm: "nginx".into()
                },
            ]
        );
    }

    #[test]
    fn finds_a_real_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let owners = listening_owners();
        let me = owners
            .iter()
            .find(|o| o.port == port)
            .expect("own listener found");
        assert_eq!(me.pid, std::process::id());
    }
}
