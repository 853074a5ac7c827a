//! The sock_diag conversation: one dump request per address family, replies read until
//! NLMSG_DONE.

use std::io;

use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ALIGNTO, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage,
};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::{
    Kinds, SnapshotError,
    decode::{Message, decode},
};

/// User buffer for one recv. The kernel sizes each dump datagram from the recv lengths it has
/// seen, capped at 32 KiB, so one always fits; recv() reports it if one ever did not. Dumps never
/// drop data (the kernel waits for the reader), so SO_RCVBUF needs no raising.
const RECV_BUF: usize = 64 * 1024;

/// Calls `each` for every socket of the selected kinds among those the idiag_states `mask`
/// selects, IPv4 first, then IPv6.
pub(super) fn for_each_socket(
    mask: u32,
    kinds: Kinds,
    mut each: impl FnMut(&Message),
) -> Result<(), SnapshotError> {
    if mask == 0 {
        return Ok(());
    }
    let mut conn = Conn::open()?;
    for (family, name) in [(AF_INET, "IPv4"), (AF_INET6, "IPv6")] {
        conn.dump(family, name, mask, &mut |msg| {
            if kinds.includes(msg.kind) {
                each(msg);
            }
        })?;
    }
    Ok(())
}

struct Conn {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Conn {
    fn open() -> Result<Self, SnapshotError> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(SnapshotError::Open)?;
        sock.bind_auto().map_err(SnapshotError::Open)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(SnapshotError::Open)?;
        Ok(Self {
            sock,
            buf: vec![0; RECV_BUF],
            seq: 0,
        })
    }

    fn dump(
        &mut self,
        family: u8,
        name: &'static str,
        states: u32,
        each: &mut dyn FnMut(&Message),
    ) -> Result<(), SnapshotError> {
        self.seq = self.seq.wrapping_add(1);
        let request = request(family, states, self.seq);
        send(&self.sock, &request).map_err(|error| SnapshotError::Send {
            family: name,
            error,
        })?;
        let bad = |reason: String| SnapshotError::Decode {
            family: name,
            reason,
        };
        loop {
            let len = recv(&self.sock, &mut self.buf).map_err(|error| SnapshotError::Receive {
                family: name,
                error,
            })?;
            if len > self.buf.len() {
                return Err(bad(format!(
                    "a {len}-byte datagram did not fit the {}-byte buffer",
                    self.buf.len()
                )));
            }
            if len == 0 {
                return Err(bad("the socket returned no data before NLMSG_DONE".into()));
            }
            let mut rest = &self.buf[..len];
            while !rest.is_empty() {
                let msg = NetlinkBuffer::new_checked(rest).map_err(|e| bad(e.to_string()))?;
                let msg_len = msg.length() as usize;
                // Replies to an earlier, abandoned request on this socket are not ours.
                if msg.sequence_number() == self.seq {
                    match msg.message_type() {
                        NLMSG_DONE => return done(msg.payload(), name),
                        NLMSG_ERROR => error(msg.payload(), name)?,
                        SOCK_DIAG_BY_FAMILY => each(&decode(msg.payload()).map_err(bad)?),
                        _ => {} // NLMSG_NOOP and anything new: nothing to learn.
                    }
                }
                let step = msg_len.next_multiple_of(usize::from(NLMSG_ALIGNTO));
                rest = rest.get(step..).unwrap_or_default();
            }
        }
    }
}

/// A SOCK_DIAG_BY_FAMILY dump request for TCP sockets of one family in the given states.
fn request(family: u8, states: u32, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // Retained as is: the crate's flags stop at CLOSING, request sockets are bit 12.
            states: StateFlags::from_bits_retain(states),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn send(sock: &Socket, buf: &[u8]) -> io::Result<()> {
    loop {
        match sock.send(buf, 0) {
            Ok(n) if n == buf.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!("sent {n} of {} bytes", buf.len())));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One datagram. MSG_TRUNC makes the kernel return its real length, so truncation is detected
/// instead of silently losing sockets.
fn recv(sock: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match sock.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// NLMSG_DONE carries the dump's final status: 0, or a negative errno.
fn done(payload: &[u8], family: &'static str) -> Result<(), SnapshotError> {
    // Old kernels sent an empty DONE; treat that as success.
    let code = DoneBuffer::new_checked(payload).map_or(0, |d| d.code());
    if code < 0 {
        return Err(kernel_error(family, -code));
    }
    Ok(())
}

/// NLMSG_ERROR with code 0 is an acknowledgement; anything else ends the dump.
fn error(payload: &[u8], family: &'static str) -> Result<(), SnapshotError> {
    let code = ErrorBuffer::new_checked(payload)
        .map_err(|e| SnapshotError::Decode {
            family,
            reason: e.to_string(),
        })?
        .code();
    match code {
        Some(c) => Err(kernel_error(family, c.get().saturating_neg())),
        None => Ok(()),
    }
}

fn kernel_error(family: &'static str, errno: i32) -> SnapshotError {
    SnapshotError::Kernel {
        family,
        errno,
        error: io::Error::from_raw_os_error(errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keeps_the_request_socket_bit() {
        let mask = Kinds::MINI.state_mask();
        let buf = request(AF_INET6, mask, 7);
        let msg = NetlinkBuffer::new_checked(&buf[..]).unwrap();
        assert_eq!(msg.message_type(), SOCK_DIAG_BY_FAMILY);
        assert_eq!(msg.sequence_number(), 7);
        assert_eq!(msg.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        let p = msg.payload();
        assert_eq!((p[0], p[1]), (AF_INET6, IPPROTO_TCP));
        let states = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(states, 1 << 5 | 1 << 6 | 1 << 12);
    }

    #[test]
    fn kernel_errors_are_reported_with_errno() {
        let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; 16]); // the echoed request header
        let err = error(&payload, "IPv4").unwrap_err();
        assert!(matches!(err, SnapshotError::Kernel { errno, .. } if errno == libc::EPERM));
        assert!(err.to_string().contains("IPv4"), "{err}");
        // An acknowledgement is not an error.
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&[0; 16]);
        assert!(error(&ack, "IPv4").is_ok());
        assert!(matches!(
            done(&(-libc::EINTR).to_ne_bytes(), "IPv6"),
            Err(SnapshotError::Kernel { errno, .. }) if errno == libc::EINTR
        ));
        assert!(done(&0i32.to_ne_bytes(), "IPv6").is_ok());
        assert!(done(&[], "IPv6").is_ok());
    }
}
