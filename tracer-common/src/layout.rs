//! Where the fields of a tracepoint record are, as read from its tracefs format file.
//!
//! Userspace fills one [`TpLayout`] per tracepoint at start-up and hands it to the kernel program
//! as a read-only global. Frozen `.rodata` reads are constants to the verifier, so the program can
//! index its stack copy of the record with these offsets and absent fields are pruned as dead code.

/// Location of one field in a tracepoint record. `size == 0` means the kernel lacks the field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldLoc {
    pub offset: u16,
    pub size: u16,
}

impl FieldLoc {
    pub const ABSENT: Self = Self { offset: 0, size: 0 };

    pub const fn is_present(&self) -> bool {
        self.size != 0
    }

    /// One past the last byte of the field.
    pub const fn end(&self) -> usize {
        self.offset as usize + self.size as usize
    }
}

/// Largest record the kernel programs copy; layouts whose fields end beyond it are rejected.
pub const MAX_RECORD: usize = 128;

/// The fields the tracer reads from any of its socket tracepoints. A tracepoint that lacks a
/// field leaves it absent; userspace validates sizes before handing a layout over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TpLayout {
    /// Bytes to copy from the start of the record (covers every present field).
    pub copy_len: u16,
    pub _pad: u16,
    pub skaddr: FieldLoc,
    /// `skbaddr` of retransmit tracepoints.
    pub skbaddr: FieldLoc,
    pub oldstate: FieldLoc,
    pub newstate: FieldLoc,
    /// `state` of retransmit tracepoints.
    pub state: FieldLoc,
    pub sport: FieldLoc,
    pub dport: FieldLoc,
    pub family: FieldLoc,
    pub protocol: FieldLoc,
    pub saddr: FieldLoc,
    pub daddr: FieldLoc,
    pub saddr_v6: FieldLoc,
    pub daddr_v6: FieldLoc,
    /// `err` of `tcp_retransmit_skb` (newer kernels only).
    pub err: FieldLoc,
    /// `ret` of `sock_send_length` / `sock_recv_length` (bytes, or a negative errno).
    pub ret: FieldLoc,
    /// `flags` of `sock_recv_length` (`MSG_PEEK` reads move no bytes).
    pub flags: FieldLoc,
}

impl TpLayout {
    pub const EMPTY: Self = Self {
        copy_len: 0,
        _pad: 0,
        skaddr: FieldLoc::ABSENT,
        skbaddr: FieldLoc::ABSENT,
        oldstate: FieldLoc::ABSENT,
        newstate: FieldLoc::ABSENT,
        state: FieldLoc::ABSENT,
        sport: FieldLoc::ABSENT,
        dport: FieldLoc::ABSENT,
        family: FieldLoc::ABSENT,
        protocol: FieldLoc::ABSENT,
        saddr: FieldLoc::ABSENT,
        daddr: FieldLoc::ABSENT,
        saddr_v6: FieldLoc::ABSENT,
        daddr_v6: FieldLoc::ABSENT,
        err: FieldLoc::ABSENT,
        ret: FieldLoc::ABSENT,
        flags: FieldLoc::ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<FieldLoc>() == 4);
const _: () = assert!(core::mem::size_of::<TpLayout>() == 68);

#[cfg(feature = "user")]
unsafe impl aya::Pod for TpLayout {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FieldLoc {}
