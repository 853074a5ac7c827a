//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find where
//! the members of a struct are, walking through anonymous structs and unions, so nothing about a
//! kernel structure's layout is hard-coded.

use std::collections::HashMap;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("not BTF data: {0}")]
    Format(&'static str),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error("`{0}` is a bitfield; byte offsets are required")]
    Bitfield(String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Size for ints, structs, unions, enums; referenced type for modifiers and typedefs.
    size_or_type: u32,
    members: Vec<Member>,
    /// ARRAY: (element type, count).
    array: Option<(u32, u32)>,
}

/// Parsed type and string sections. Type ids start at 1 (0 is void).
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

/// Byte offset and size of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|e| BtfError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(BtfError::Format("bad magic (or big-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4).ok_or(BtfError::Format("short header"))? as usize;
        let field = |i: usize| u32_at(data, 8 + 4 * i).map(|v| v as usize);
        let (type_off, type_len, str_off, str_len) = (
            field(0).ok_or(BtfError::Format("short header"))?,
            field(1).ok_or(BtfError::Format("short header"))?,
            field(2).ok_or(BtfError::Format("short header"))?,
            field(3).ok_or(BtfError::Format("short header"))?,
        );
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Format("section out of range"))
        };
        let tsec = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: vec![],
            array: None,
        }];
        let mut pos = 0;
        let short = BtfError::Format("truncated type");
        while pos < tsec.len() {
            let name = u32_at(tsec, pos).ok_or(short.clone())?;
            let info = u32_at(tsec, pos + 4).ok_or(short.clone())?;
            let size_or_type = u32_at(tsec, pos + 8).ok_or(short.clone())?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut t = Type {
                name,
                kind,
                size_or_type,
                members: Vec::new(),
                array: None,
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => pos += 4,
                KIND_ARRAY => {
                    let elem = u32_at(tsec, pos).ok_or(short.clone())?;
                    let n = u32_at(tsec, pos + 8).ok_or(short.clone())?;
                    t.array = Some((elem, n));
                    pos += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = pos + 12 * i;
                        let off = u32_at(tsec, m + 8).ok_or(short.clone())?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (off & 0xff_ffff, off >> 24 != 0)
                        } else {
                            (off, false)
                        };
                        t.members.push(Member {
                            name: u32_at(tsec, m).ok_or(short.clone())?,
                            ty: u32_at(tsec, m + 4).ok_or(short.clone())?,
                            bit_offset,
                            bitfield,
                        });
                    }
                    pos += 12 * vlen;
                }
                KIND_ENUM => {
                    // Enumerators are kept as members: name and value (as `ty`).
                    for i in 0..vlen {
                        let m = pos + 8 * i;
                        t.members.push(Member {
                            name: u32_at(tsec, m).ok_or(short.clone())?,
                            ty: u32_at(tsec, m + 4).ok_or(short.clone())?,
                            bit_offset: 0,
                            bitfield: false,
                        });
                    }
                    pos += 8 * vlen;
                }
                KIND_FUNC_PROTO => pos += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => pos += 12 * vlen,
                _ => {}
            }
            types.push(t);
        }
        let mut btf = Self {
            types,
            strings,
            structs: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let name = btf.string(t.name).to_owned();
                btf.structs.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    /// The value of a (32-bit) enumerator such as `SOCK_DONE`.
    pub fn enumerator(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_ENUM)
            .flat_map(|t| &t.members)
            .find(|m| self.string(m.name) == name)
            .map(|m| m.ty)
    }

    fn string(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let t = self.resolve(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Some(t.size_or_type),
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let (elem, n) = t.array?;
                self.size_of(elem)?.checked_mul(n)
            }
            _ => None,
        }
    }

    /// Finds `name` among the members of `t`, descending into anonymous struct/union members.
    /// Returns the member and its bit offset from the start of `t`.
    fn find(&self, t: &Type, name: &str) -> Option<(Member, u32)> {
        for m in &t.members {
            if m.name != 0 {
                if self.string(m.name) == name {
                    return Some((m.clone(), m.bit_offset));
                }
            } else if let Some(inner) = self.resolve(m.ty)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some((found, off)) = self.find(inner, name)
            {
                return Some((found, m.bit_offset + off));
            }
        }
        None
    }

    /// Byte offset and size of `path` (members, each inside the previous one) in struct `strukt`.
    pub fn field(&self, strukt: &str, path: &[&str]) -> Result<Field, BtfError> {
        let id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let mut t = &self.types[id as usize];
        let mut bits = 0u32;
        let mut member = None;
        let mut owner = strukt.to_owned();
        for name in path {
            let (m, off) = self.find(t, name).ok_or_else(|| BtfError::NoMember {
                strukt: owner.clone(),
                member: (*name).into(),
            })?;
            if m.bitfield || off % 8 != 0 {
                return Err(BtfError::Bitfield((*name).into()));
            }
            bits += off;
            t = self
                .resolve(m.ty)
                .ok_or(BtfError::Format("dangling type id"))?;
            owner = (*name).into();
            member = Some(m);
        }
        let m = member.ok_or(BtfError::Format("empty member path"))?;
        let size = self
            .size_of(m.ty)
            .ok_or(BtfError::Format("member of unknown size"))?;
        Ok(Field {
            offset: bits / 8,
            size,
        })
    }
}

/// Where the nested-event catchers find a TCP socket's identity in `struct sock`.
pub struct SockLayout {
    /// The copied prefix: family, ports, addresses.
    pub layout: tracer_common::TpLayout,
    /// `skc_state`, inside the prefix.
    pub state: tracer_common::FieldLoc,
    /// `sk_protocol`, read separately.
    pub protocol: tracer_common::FieldLoc,
    /// `inet_sock.inet_sport` and `inet_sock.inet_saddr`, read separately: the local side as the
    /// tracepoints report it.
    pub inet_sport: tracer_common::FieldLoc,
    pub inet_saddr: tracer_common::FieldLoc,
    /// `sk_err`, read when a socket closes.
    pub sk_err: tracer_common::FieldLoc,
    /// `skc_net.net` and `net.ns.inum`: the network namespace of a socket.
    pub net: tracer_common::FieldLoc,
    pub net_inum: tracer_common::FieldLoc,
    /// `sk_buff.dev` and `net_device.nd_net.net`: the namespace of a packet without a socket.
    /// Absent (size 0) when the kernel's BTF lacks them; such packets then have no namespace.
    pub skb_dev: tracer_common::FieldLoc,
    pub dev_net: tracer_common::FieldLoc,
    /// Absent when the kernel's BTF lacks one of them; bytes then need `sock_send_length`.
    pub close_bytes: Result<CloseBytes, String>,
    /// `skc_portpair`, and `tcp_sock.data_segs_in` / `data_segs_out`: with userspace
    /// attribution, whether a byte entry is this connection's and whether a closing socket
    /// has one at all. Absent (size 0) when the kernel's BTF lacks them.
    pub portpair: tracer_common::FieldLoc,
    pub data_segs_in: tracer_common::FieldLoc,
    pub data_segs_out: tracer_common::FieldLoc,
}

pub fn sock_layout(btf: &Btf) -> Result<SockLayout, String> {
    use tracer_common::{FieldLoc, TpLayout, layout::MAX_RECORD};
    let loc_in = |strukt: &str, path: &[&str], size: u32| -> Result<FieldLoc, String> {
        let f = btf.field(strukt, path).map_err(|e| e.to_string())?;
        let name = path.last().copied().unwrap_or_default();
        if f.size != size {
            return Err(format!("sock.{name} has size {} (expected {size})", f.size));
        }
        if size <= 8 && f.offset % size != 0 {
            return Err(format!("sock.{name} is misaligned"));
        }
        let offset =
            u16::try_from(f.offset).map_err(|_| format!("sock.{name} offset too large"))?;
        Ok(FieldLoc {
            offset,
            size: size as u16,
        })
    };
    let loc = |path: &[&str], size: u32| loc_in("sock", path, size);
    let common = |member: &'static str, size| loc(&["__sk_common", member], size);
    let mut l = TpLayout::EMPTY;
    l.family = common("skc_family", 2)?;
    l.dport = common("skc_dport", 2)?;
    l.saddr = common("skc_rcv_saddr", 4)?;
    l.daddr = common("skc_daddr", 4)?;
    l.saddr_v6 = common("skc_v6_rcv_saddr", 16)?;
    l.daddr_v6 = common("skc_v6_daddr", 16)?;
    let state = common("skc_state", 1)?;
    let end = [
        l.family, l.dport, l.saddr, l.daddr, l.saddr_v6, l.daddr_v6, state,
    ]
    .iter()
    .map(FieldLoc::end)
    .max()
    .unwrap_or(0);
    if end > MAX_RECORD {
        return Err(format!(
            "socket identity ends at byte {end}, beyond the {MAX_RECORD}-byte copy"
        ));
    }
    l.copy_len = end as u16;
    let protocol = loc(&["sk_protocol"], 2)?;
    let inet_sport = loc_in("inet_sock", &["inet_sport"], 2)?;
    let inet_saddr = loc_in("inet_sock", &["inet_saddr"], 4)?;
    Ok(SockLayout {
        layout: l,
        state,
        protocol,
        inet_sport,
        inet_saddr,
        sk_err: loc(&["sk_err"], 4)?,
        net: loc(&["__sk_common", "skc_net", "net"], 8)?,
        net_inum: loc_in("net", &["ns", "inum"], 4)?,
        skb_dev: loc_in("sk_buff", &["dev"], 8).unwrap_or(FieldLoc::ABSENT),
        dev_net: loc_in("net_device", &["nd_net", "net"], 8).unwrap_or(FieldLoc::ABSENT),
        close_bytes: close_bytes(btf, &loc_in),
        portpair: common("skc_portpair", 4).unwrap_or(FieldLoc::ABSENT),
        data_segs_in: loc_in("tcp_sock", &["data_segs_in"], 4).unwrap_or(FieldLoc::ABSENT),
        data_segs_out: loc_in("tcp_sock", &["data_segs_out"], 4).unwrap_or(FieldLoc::ABSENT),
    })
}

/// What a socket says about its bytes at close, for kernels without `sock_send_length`.
#[derive(Debug, Clone, Copy, Default)]
#[allow(clippy::struct_field_names)]
pub struct CloseBytes {
    /// `tcp_sock.bytes_sent` (payload transmitted, retransmissions included) and
    /// `bytes_retrans`: their difference is the payload sent.
    pub bytes_sent: tracer_common::FieldLoc,
    pub bytes_retrans: tracer_common::FieldLoc,
    /// `tcp_sock.bytes_received`: advances of `rcv_nxt`, the peer's FIN included.
    pub bytes_received: tracer_common::FieldLoc,
    /// `sock.sk_flags` and the bit of `SOCK_DONE`, set when the peer's FIN arrived.
    pub sk_flags: tracer_common::FieldLoc,
    pub sock_done_bit: u32,
}

/// Finds a member's location: (struct, path, expected size).
type Locate<'a> = &'a dyn Fn(&str, &[&str], u32) -> Result<tracer_common::FieldLoc, String>;

fn close_bytes(btf: &Btf, loc_in: Locate<'_>) -> Result<CloseBytes, String> {
    let bit = btf
        .enumerator("SOCK_DONE")
        .ok_or("BTF has no enumerator SOCK_DONE")?;
    if bit >= 64 {
        return Err(format!("SOCK_DONE is bit {bit}"));
    }
    Ok(CloseBytes {
        bytes_sent: loc_in("tcp_sock", &["bytes_sent"], 8)?,
        bytes_retrans: loc_in("tcp_sock", &["bytes_retrans"], 8)?,
        bytes_received: loc_in("tcp_sock", &["bytes_received"], 8)?,
        sk_flags: loc_in("sock", &["__sk_common", "skc_flags"], 8)?,
        sock_done_bit: bit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF for:
    ///   typedef unsigned short __u16;
    ///   struct inner { __u16 a; __u16 b; };
    ///   struct outer { int x; union { struct inner in; int y; }; __u16 z[3]; int bits:3; };
    fn sample() -> Vec<u8> {
        let mut strings = b"\0int\0__u16\0inner\0a\0b\0outer\0x\0in\0y\0z\0bits\0".to_vec();
        strings.push(0);
        let s = |name: &str| -> u32 {
            let pat = format!("\0{name}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| t.extend_from_slice(&w.to_le_bytes()))
        };
        let info =
            |kind: u32, vlen: u32, flag: bool| (kind << 24) | vlen | if flag { 1 << 31 } else { 0 };
        push(&[s("int"), info(KIND_INT, 0, false), 4, 32]); // 1: int
        push(&[0, info(KIND_INT, 0, false), 2, 16]); // 2: unsigned short
        push(&[s("__u16"), info(KIND_TYPEDEF, 0, false), 2]); // 3: __u16
        push(&[
            s("inner"),
            info(KIND_STRUCT, 2, false),
            4,
            s("a"),
            3,
            0,
            s("b"),
            3,
            16,
        ]); // 4
        push(&[
            0,
            info(KIND_UNION, 2, false),
            4,
            s("in"),
            4,
            0,
            s("y"),
            1,
            0,
        ]); // 5: anon union
        push(&[0, info(KIND_ARRAY, 0, false), 0, 3, 1, 3]); // 6: __u16[3]
        push(&[
            s("outer"),
            info(KIND_STRUCT, 4, true),
            20,
            s("x"),
            1,
            0,
            0,
            5,
            32,
            s("z"),
            6,
            64,
            s("bits"),
            1,
            (3 << 24) | 128,
        ]); // 7
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn resolves_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.field("outer", &["x"]), Ok(Field { offset: 0, size: 4 }));
        assert_eq!(
            btf.field("outer", &["in", "b"]),
            Ok(Field { offset: 6, size: 2 })
        );
        assert_eq!(btf.field("outer", &["y"]), Ok(Field { offset: 4, size: 4 }));
        assert_eq!(btf.field("outer", &["z"]), Ok(Field { offset: 8, size: 6 }));
        assert_eq!(
            btf.field("outer", &["bits"]),
            Err(BtfError::Bitfield("bits".into()))
        );
        assert!(matches!(
            btf.field("outer", &["nope"]),
            Err(BtfError::NoMember { .. })
        ));
        assert_eq!(
            btf.field("missing", &["x"]),
            Err(BtfError::NoStruct("missing".into()))
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut truncated = sample();
        truncated.truncate(60);
        assert!(Btf::parse(&truncated).is_err());
    }

    #[test]
    fn reads_the_running_kernel_when_it_has_btf() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("no /sys/kernel/btf/vmlinux: skipping the live BTF check");
            return;
        };
        let family = btf.field("sock", &["__sk_common", "skc_family"]).unwrap();
        assert_eq!(family.size, 2);
        let layout = sock_layout(&btf).unwrap();
        assert_eq!(layout.sk_err.size, 4);
        assert_eq!(layout.net.size, 8);
        assert_eq!(layout.net_inum.size, 4);
        assert_eq!((layout.skb_dev.size, layout.dev_net.size), (8, 8));
        // The port pair starts with the remote port (the kernel side's `portpair` relies on it).
        assert_eq!(layout.portpair.size, 4);
        assert_eq!(layout.portpair.offset, layout.layout.dport.offset);
        assert_eq!(
            (layout.data_segs_in.size, layout.data_segs_out.size),
            (4, 4)
        );
        assert_eq!(
            btf.field("sock", &["__sk_common", "skc_v6_daddr"])
                .unwrap()
                .size,
            16
        );
        assert_eq!(
            btf.field("sock", &["__sk_common", "skc_num"]).unwrap().size,
            2
        );
    }
}
