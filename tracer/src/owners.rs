//! Owners of sockets that existed before the tracer started, found in /proc as `ss -p` finds
//! them: socket inodes from /proc/net/tcp{,6}, matched against every process's open fds.
//!
//! Listeners matter most: passively opened sockets inherit their listener's owner until their
//! own process touches them, so a server started before the tracer must be known by port.

use std::collections::HashMap;

use tracer_common::COMM_LEN;

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

impl ListenerOwner {
    /// The command name as the kernel stores one: at most 15 bytes, NUL-padded.
    pub fn comm_bytes(&self) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        let n = self.comm.len().min(COMM_LEN - 1);
        c[..n].copy_from_slice(&self.comm.as_bytes()[..n]);
        c
    }
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

/// Every process with its socket inodes: (tgid, comm, inodes). Processes that vanish during
/// the scan, or whose fds cannot be read, are skipped: /proc changes under any scan.
fn process_sockets() -> impl Iterator<Item = (u32, String, Vec<u64>)> {
    all_processes()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|p| {
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
        })
}

/// Owners of the listening sockets that exist now. Processes that vanish during the scan, or
/// whose fds cannot be read, are skipped.
pub fn listening_owners() -> Vec<ListenerOwner> {
    let wanted = listening_inodes();
    if wanted.is_empty() {
        return Vec::new();
    }
    match_owners(wanted, process_sockets())
}

/// Indexes sockets by inode. A socket shared by several processes (inherited over fork, passed
/// over a unix socket) goes to the first one `procs` yields, which for /proc is the lowest pid:
/// usually the parent that created it.
pub fn index_owners(
    procs: impl IntoIterator<Item = (u32, String, Vec<u64>)>,
) -> HashMap<u64, (u32, String)> {
    let mut out = HashMap::new();
    for (pid, comm, inodes) in procs {
        for ino in inodes {
            out.entry(ino).or_insert_with(|| (pid, comm.clone()));
        }
    }
    out
}

/// Every socket inode held by a process of this system, with its holder: inode -> (tgid, comm),
/// scanned from /proc/*/fd as `ss -p` does. Sockets of every family are included; match them
/// against [`crate::snapshot::DiagSocket::inode`].
pub fn socket_owners() -> HashMap<u64, (u32, String)> {
    index_owners(process_sockets())
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

    #[test]
    fn first_holder_of_a_shared_socket_wins() {
        let procs = vec![
            (10, "parent".to_owned(), vec![100, 101]),
            (11, "child".to_owned(), vec![100, 102]),
        ];
        let owners = index_owners(procs);
        assert_eq!(owners.len(), 3);
        assert_eq!(owners[&100], (10, "parent".to_owned()));
        assert_eq!(owners[&102], (11, "child".to_owned()));
    }

    #[test]
    fn finds_a_socket_of_this_process() {
        use std::os::unix::fs::MetadataExt;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let owners = socket_owners();
        assert_eq!(owners.get(&ino).map(|o| o.0), Some(std::process::id()));
    }
}
