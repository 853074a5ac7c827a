//! Tracepoint format files (`events/<category>/<name>/format`) and the layouts built from them.
//!
//! Layouts differ between kernel versions (fields are added, moved or renamed), so every offset
//! the kernel programs use comes from here, validated, at start-up.

use tracer_common::{FieldLoc, TpLayout, layout::MAX_RECORD};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("line {line}: cannot parse field description `{text}`")]
    Syntax { line: usize, text: String },
    #[error("no `format:` section")]
    NoFields,
    #[error("tracepoint {tracepoint}: required field `{field}` is missing")]
    MissingField {
        tracepoint: &'static str,
        field: &'static str,
    },
    #[error("tracepoint {tracepoint}: field `{field}` has {problem}")]
    BadField {
        tracepoint: &'static str,
        field: &'static str,
        problem: String,
    },
}

/// One `field:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration, e.g. `__u8 saddr[4]`.
    pub decl: String,
    pub offset: u16,
    pub size: u16,
    pub signed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: Option<u32>,
    pub fields: Vec<Field>,
}

impl Format {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Parses the text of a format file.
pub fn parse(text: &str) -> Result<Format, FormatError> {
    let mut name = String::new();
    let mut id = None;
    let mut fields = Vec::new();
    let mut in_format = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("name:") {
            name = rest.trim().to_owned();
        } else if let Some(rest) = trimmed.strip_prefix("ID:") {
            id = rest.trim().parse().ok();
        } else if trimmed == "format:" {
            in_format = true;
        } else if trimmed.starts_with("print fmt:") {
            break;
        } else if in_format && trimmed.starts_with("field:") {
            fields.push(parse_field(trimmed).ok_or_else(|| FormatError::Syntax {
                line: i + 1,
                text: trimmed.to_owned(),
            })?);
        }
    }
    if fields.is_empty() {
        return Err(FormatError::NoFields);
    }
    Ok(Format { name, id, fields })
}

/// `field:__u8 saddr[4];<TAB>offset:32;<TAB>size:4;<TAB>signed:0;`
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':')?;
        match key.trim() {
            "field" => decl = Some(value.trim().to_owned()),
            "offset" => offset = value.trim().parse().ok(),
            "size" => size = value.trim().parse().ok(),
            "signed" => signed = value.trim() == "1",
            _ => {}
        }
    }
    let decl = decl?;
    // The name is the last identifier, before any array suffix: `const void * skaddr`,
    // `__u8 saddr_v6[16]`, `__data_loc char[] name`.
    let base = decl.split('[').next()?.trim_end();
    let name = base
        .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .filter(|n| !n.is_empty())?
        .to_owned();
    Some(Field {
        name,
        decl,
        offset: offset?,
        size: size?,
        signed,
    })
}

/// The tracepoints the kernel programs attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tracepoint {
    InetSockSetState,
    TcpRetransmitSkb,
    SockSendLength,
    SockRecvLength,
    /// The anomaly signals: optional, attached only when detection runs.
    TcpSendReset,
    TcpReceiveReset,
    TcpRetransmitSynack,
}

impl Tracepoint {
    pub const ALL: [Tracepoint; 7] = [
        Self::InetSockSetState,
        Self::TcpRetransmitSkb,
        Self::SockSendLength,
        Self::SockRecvLength,
        Self::TcpSendReset,
        Self::TcpReceiveReset,
        Self::TcpRetransmitSynack,
    ];

    /// Whether this tracepoint only feeds anomaly detection.
    pub const fn is_signal(self) -> bool {
        matches!(
            self,
            Self::TcpSendReset | Self::TcpReceiveReset | Self::TcpRetransmitSynack
        )
    }

    pub const fn category(self) -> &'static str {
        match self {
            Self::InetSockSetState | Self::SockSendLength | Self::SockRecvLength => "sock",
            Self::TcpRetransmitSkb
            | Self::TcpSendReset
            | Self::TcpReceiveReset
            | Self::TcpRetransmitSynack => "tcp",
        }
    }

    /// Name of the tracepoint, which is also the name of its program in the object file.
    pub const fn name(self) -> &'static str {
        match self {
            Self::InetSockSetState => "inet_sock_set_state",
            Self::TcpRetransmitSkb => "tcp_retransmit_skb",
            Self::SockSendLength => "sock_send_length",
            Self::SockRecvLength => "sock_recv_length",
            Self::TcpSendReset => "tcp_send_reset",
            Self::TcpReceiveReset => "tcp_receive_reset",
            Self::TcpRetransmitSynack => "tcp_retransmit_synack",
        }
    }

    /// The global in the object file that receives this tracepoint's layout.
    pub const fn layout_global(self) -> &'static str {
        match self {
            Self::InetSockSetState => "SET_STATE_LAYOUT",
            Self::TcpRetransmitSkb => "RETRANSMIT_LAYOUT",
            Self::SockSendLength => "SEND_LAYOUT",
            Self::SockRecvLength => "RECV_LAYOUT",
            Self::TcpSendReset => "SEND_RESET_LAYOUT",
            Self::TcpReceiveReset => "RECEIVE_RESET_LAYOUT",
            Self::TcpRetransmitSynack => "SYNACK_LAYOUT",
        }
    }

    /// (field in the layout, names the kernel has used for it, expected sizes, required).
    fn fields(self) -> &'static [Spec] {
        use Slot::*;
        const SET_STATE: &[Spec] = &[
            spec(Skaddr, &["skaddr"], &[8], true),
            spec(Oldstate, &["oldstate"], INT, true),
            spec(Newstate, &["newstate"], INT, true),
            spec(Sport, &["sport"], &[2], true),
            spec(Dport, &["dport"], &[2], true),
            spec(Family, &["family"], &[2], true),
            spec(Protocol, &["protocol"], &[2], true),
            spec(Saddr, &["saddr"], &[4], true),
            spec(Daddr, &["daddr"], &[4], true),
            spec(SaddrV6, &["saddr_v6"], &[16], true),
            spec(DaddrV6, &["daddr_v6"], &[16], true),
        ];
        const RETRANSMIT: &[Spec] = &[
            spec(Skaddr, &["skaddr"], &[8], true),
            spec(Skbaddr, &["skbaddr"], &[8], true),
            spec(State, &["state"], INT, true),
            spec(Sport, &["sport"], &[2], true),
            spec(Dport, &["dport"], &[2], true),
            // Before 5.13 absent: the IPv6 fields (v4-mapped for IPv4) tell the family.
            spec(Family, &["family"], &[2], false),
            spec(Saddr, &["saddr"], &[4], true),
            spec(Daddr, &["daddr"], &[4], true),
            spec(SaddrV6, &["saddr_v6"], &[16], true),
            spec(DaddrV6, &["daddr_v6"], &[16], true),
            spec(Err, &["err"], &[4], false),
        ];
        const LENGTH: &[Spec] = &[
            spec(Skaddr, &["sk", "skaddr"], &[8], true),
            spec(Family, &["family"], &[2], true),
            spec(Protocol, &["protocol"], &[2], true),
            spec(Ret, &["ret"], &[4], true),
            spec(Flags, &["flags"], &[4], false),
        ];
        // Both endpoints and the socket; `tcp_receive_reset` and `tcp_retransmit_synack`.
        const TUPLE: &[Spec] = &[
            spec(Skaddr, &["skaddr"], &[8], true),
            spec(Sport, &["sport"], &[2], true),
            spec(Dport, &["dport"], &[2], true),
            // Before 5.13 absent: the IPv6 fields (v4-mapped for IPv4) tell the family.
            spec(Family, &["family"], &[2], false),
            spec(Saddr, &["saddr"], &[4], true),
            spec(Daddr, &["daddr"], &[4], true),
            spec(SaddrV6, &["saddr_v6"], &[16], true),
            spec(DaddrV6, &["daddr_v6"], &[16], true),
        ];
        // Since 6.10 the endpoints are 28-byte sockaddrs (family, port and address inside);
        // before, the same fields as `tcp_receive_reset`. `check_endpoints` requires one form.
        const SEND_RESET: &[Spec] = &[
            spec(Skaddr, &["skaddr"], &[8], true),
            // A reset answering a segment no socket owns (a port scan) has no `skaddr`: its
            // network namespace comes from the packet's device.
            spec(Skbaddr, &["skbaddr"], &[8], false),
            spec(State, &["state"], INT, false),
            spec(Saddr, &["saddr"], &[4, SOCKADDR], true),
            spec(Daddr, &["daddr"], &[4, SOCKADDR], true),
            spec(Sport, &["sport"], &[2], false),
            spec(Dport, &["dport"], &[2], false),
            spec(Family, &["family"], &[2], false),
            spec(SaddrV6, &["saddr_v6"], &[16], false),
            spec(DaddrV6, &["daddr_v6"], &[16], false),
        ];
        match self {
            Self::InetSockSetState => SET_STATE,
            Self::TcpRetransmitSkb => RETRANSMIT,
            Self::SockSendLength | Self::SockRecvLength => LENGTH,
            Self::TcpSendReset => SEND_RESET,
            Self::TcpReceiveReset | Self::TcpRetransmitSynack => TUPLE,
        }
    }
}

/// Whether a `tcp_send_reset` layout is the 6.10+ form (sockaddr endpoints). Only that form
/// fires for resets sent without a socket (answers to segments for closed ports).
pub fn send_reset_without_socket(l: &TpLayout) -> bool {
    l.saddr.size == SOCKADDR
}

const INT: &[u16] = &[1, 2, 4];
/// Size of a `sockaddr_in6`-sized endpoint field.
const SOCKADDR: u16 = 28;

#[derive(Clone, Copy)]
enum Slot {
    Skaddr,
    Skbaddr,
    Oldstate,
    Newstate,
    State,
    Sport,
    Dport,
    Family,
    Protocol,
    Saddr,
    Daddr,
    SaddrV6,
    DaddrV6,
    Err,
    Ret,
    Flags,
}

struct Spec {
    slot: Slot,
    names: &'static [&'static str],
    sizes: &'static [u16],
    required: bool,
}

const fn spec(
    slot: Slot,
    names: &'static [&'static str],
    sizes: &'static [u16],
    required: bool,
) -> Spec {
    Spec {
        slot,
        names,
        sizes,
        required,
    }
}

fn slot_mut(l: &mut TpLayout, slot: Slot) -> &mut FieldLoc {
    match slot {
        Slot::Skaddr => &mut l.skaddr,
        Slot::Skbaddr => &mut l.skbaddr,
        Slot::Oldstate => &mut l.oldstate,
        Slot::Newstate => &mut l.newstate,
        Slot::State => &mut l.state,
        Slot::Sport => &mut l.sport,
        Slot::Dport => &mut l.dport,
        Slot::Family => &mut l.family,
        Slot::Protocol => &mut l.protocol,
        Slot::Saddr => &mut l.saddr,
        Slot::Daddr => &mut l.daddr,
        Slot::SaddrV6 => &mut l.saddr_v6,
        Slot::DaddrV6 => &mut l.daddr_v6,
        Slot::Err => &mut l.err,
        Slot::Ret => &mut l.ret,
        Slot::Flags => &mut l.flags,
    }
}

/// Builds and validates the layout the kernel program for `tp` needs from the running kernel's
/// format: every required field present, with a size the program can read, naturally aligned,
/// and inside the record copy.
pub fn layout(tp: Tracepoint, format: &Format) -> Result<TpLayout, FormatError> {
    let mut out = TpLayout::EMPTY;
    let mut end = 0usize;
    for spec in tp.fields() {
        let field_name = spec.names[0];
        let Some(field) = spec.names.iter().find_map(|n| format.field(n)) else {
            if spec.required {
                return Err(FormatError::MissingField {
                    tracepoint: tp.name(),
                    field: field_name,
                });
            }
            continue;
        };
        let bad = |problem: String| FormatError::BadField {
            tracepoint: tp.name(),
            field: field_name,
            problem,
        };
        if !spec.sizes.contains(&field.size) {
            return Err(bad(format!(
                "size {} (expected one of {:?})",
                field.size, spec.sizes
            )));
        }
        let is_array = field.decl.contains('[');
        if !is_array && field.offset % field.size != 0 {
            return Err(bad(format!(
                "misaligned offset {} for size {}",
                field.offset, field.size
            )));
        }
        let loc = FieldLoc {
            offset: field.offset,
            size: field.size,
        };
        if loc.end() > MAX_RECORD {
            return Err(bad(format!(
                "end {} beyond the {MAX_RECORD}-byte record copy",
                loc.end()
            )));
        }
        end = end.max(loc.end());
        *slot_mut(&mut out, spec.slot) = loc;
    }
    out.copy_len = end as u16;
    check_endpoints(tp, &out)?;
    Ok(out)
}

/// `tcp_send_reset` has either sockaddr endpoints (both 28 bytes) or the older separate fields
/// (4-byte addresses plus ports, family and IPv6 addresses), never a mix.
fn check_endpoints(tp: Tracepoint, l: &TpLayout) -> Result<(), FormatError> {
    if tp != Tracepoint::TcpSendReset {
        return Ok(());
    }
    if l.saddr.size != l.daddr.size {
        return Err(FormatError::BadField {
            tracepoint: tp.name(),
            field: "daddr",
            problem: format!("size {} but saddr has {}", l.daddr.size, l.saddr.size),
        });
    }
    if l.saddr.size == SOCKADDR {
        return Ok(());
    }
    let needed = [
        ("sport", l.sport),
        ("dport", l.dport),
        ("saddr_v6", l.saddr_v6),
        ("daddr_v6", l.daddr_v6),
    ];
    match needed.iter().find(|(_, f)| !f.is_present()) {
        Some((field, _)) => Err(FormatError::MissingField {
            tracepoint: tp.name(),
            field,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Format {
        let full = format!(
            "{}/tests/fixtures/formats/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
        parse(&text).unwrap()
    }

    #[test]
    fn parses_real_set_state_format() {
        let f = fixture("6.18/inet_sock_set_state.format");
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.id, Some(2287));
        let saddr = f.field("saddr_v6").unwrap();
        assert_eq!((saddr.offset, saddr.size, saddr.signed), (40, 16, false));
        assert_eq!(f.field("skaddr").unwrap().decl, "const void * skaddr");
        assert!(f.field("oldstate").unwrap().signed);
        let l = layout(Tracepoint::InetSockSetState, &f).unwrap();
        assert_eq!(l.skaddr, FieldLoc { offset: 8, size: 8 });
        assert_eq!(
            l.oldstate,
            FieldLoc {
                offset: 16,
                size: 4
            }
        );
        assert_eq!(
            l.newstate,
            FieldLoc {
                offset: 20,
                size: 4
            }
        );
        assert_eq!(
            l.sport,
            FieldLoc {
                offset: 24,
                size: 2
            }
        );
        assert_eq!(
            l.protocol,
            FieldLoc {
                offset: 30,
                size: 2
            }
        );
        assert_eq!(
            l.daddr,
            FieldLoc {
                offset: 36,
                size: 4
            }
        );
        assert_eq!(
            l.daddr_v6,
            FieldLoc {
                offset: 56,
                size: 16
            }
        );
        assert_eq!(l.copy_len, 72);
        assert!(!l.err.is_present());
    }

    #[test]
    fn shifted_layout_moves_every_offset() {
        let l = layout(
            Tracepoint::InetSockSetState,
            &fixture("variants/inet_sock_set_state-shifted.format"),
        )
        .unwrap();
        assert_eq!(l.skaddr.offset, 16);
        assert_eq!(l.oldstate.offset, 24);
        assert_eq!(l.daddr_v6.offset, 64);
        assert_eq!(l.copy_len, 80);
    }

    #[test]
    fn retransmit_with_and_without_err() {
        let with = layout(
            Tracepoint::TcpRetransmitSkb,
            &fixture("6.18/tcp_retransmit_skb.format"),
        )
        .unwrap();
        assert_eq!(
            with.err,
            FieldLoc {
                offset: 76,
                size: 4
            }
        );
        assert_eq!(with.skbaddr, FieldLoc { offset: 8, size: 8 });
        assert_eq!(
            with.state,
            FieldLoc {
                offset: 24,
                size: 4
            }
        );
        assert_eq!(
            with.saddr,
            FieldLoc {
                offset: 34,
                size: 4
            }
        );
        assert_eq!(with.copy_len, 80);
        let without = layout(
            Tracepoint::TcpRetransmitSkb,
            &fixture("variants/tcp_retransmit_skb-no-err.format"),
        )
        .unwrap();
        assert!(!without.err.is_present());
        assert_eq!(without.copy_len, 74);
        assert_eq!(without.daddr_v6, with.daddr_v6);
    }

    #[test]
    fn send_and_recv_length_use_sk_name() {
        for (tp, file) in [
            (Tracepoint::SockSendLength, "6.18/sock_send_length.format"),
            (Tracepoint::SockRecvLength, "6.18/sock_recv_length.format"),
        ] {
            let l = layout(tp, &fixture(file)).unwrap();
            assert_eq!(l.skaddr, FieldLoc { offset: 8, size: 8 });
            assert_eq!(
                l.ret,
                FieldLoc {
                    offset: 20,
                    size: 4
                }
            );
            assert_eq!(
                l.flags,
                FieldLoc {
                    offset: 24,
                    size: 4
                }
            );
            assert_eq!(l.copy_len, 28);
        }
    }

    #[test]
    fn send_reset_with_sockaddr_and_with_separate_fields() {
        let new = layout(
            Tracepoint::TcpSendReset,
            &fixture("6.18/tcp_send_reset.format"),
        )
        .unwrap();
        assert_eq!(
            (new.saddr, new.daddr),
            (
                FieldLoc {
                    offset: 32,
                    size: 28
                },
                FieldLoc {
                    offset: 60,
                    size: 28
                }
            )
        );
        assert!(!new.sport.is_present() && !new.family.is_present());
        assert_eq!(new.copy_len, 88);
        let old = layout(
            Tracepoint::TcpSendReset,
            &fixture("variants/tcp_send_reset-6.1.format"),
        )
        .unwrap();
        assert_eq!(old.saddr.size, 4);
        assert_eq!(
            old.family,
            FieldLoc {
                offset: 32,
                size: 2
            }
        );
        assert_eq!(old.daddr_v6.offset, 58);
        // Before 5.13 the old form has no family field: the IPv6 fields tell it.
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/formats/variants/tcp_send_reset-6.1.format",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let no_family: String = text
            .lines()
            .filter(|l| !l.contains(" family;"))
            .collect::<Vec<_>>()
            .join("\n");
        let l = layout(Tracepoint::TcpSendReset, &parse(&no_family).unwrap()).unwrap();
        assert!(!l.family.is_present() && l.saddr_v6.is_present());
        // Without the IPv6 fields it is unusable.
        let no_v6: String = text
            .lines()
            .filter(|l| !l.contains(" saddr_v6["))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            layout(Tracepoint::TcpSendReset, &parse(&no_v6).unwrap()),
            Err(FormatError::MissingField {
                tracepoint: "tcp_send_reset",
                field: "saddr_v6"
            })
        );
        for (tp, file) in [
            (Tracepoint::TcpReceiveReset, "6.18/tcp_receive_reset.format"),
            (
                Tracepoint::TcpRetransmitSynack,
                "6.18/tcp_retransmit_synack.format",
            ),
        ] {
            let l = layout(tp, &fixture(file)).unwrap();
            assert_eq!(l.skaddr, FieldLoc { offset: 8, size: 8 });
            assert!(l.saddr_v6.is_present() && l.sport.is_present());
        }
    }

    #[test]
    fn every_real_fixture_parses() {
        let dir = format!("{}/tests/fixtures/formats/6.18", env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let f = parse(&text).unwrap();
            assert!(
                f.fields.iter().any(|f| f.name == "common_type"),
                "{}",
                f.name
            );
            n += 1;
        }
        assert!(n >= 8);
    }

    /// The format files `cargo xtask vm-test --update` collected on each kernel of the matrix.
    const MATRIX: [&str; 4] = ["5.10", "6.1", "6.12", "6.18"];

    #[test]
    fn every_kernel_of_the_matrix_gives_usable_layouts() {
        let root = format!("{}/tests/fixtures/formats", env!("CARGO_MANIFEST_DIR"));
        for series in MATRIX {
            for tp in Tracepoint::ALL {
                let path = format!("{root}/{series}/{}.format", tp.name());
                let Ok(text) = std::fs::read_to_string(&path) else {
                    assert!(tp != Tracepoint::InetSockSetState, "{path} missing");
                    continue;
                };
                let l =
                    layout(tp, &parse(&text).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"));
                assert!(l.copy_len > 0, "{path}");
            }
        }
        // What differs between them, each handled by the layouts above.
        let family = |series: &str| {
            let f = fixture(&format!("{series}/tcp_retransmit_skb.format"));
            let l = layout(Tracepoint::TcpRetransmitSkb, &f).unwrap();
            (l.family.is_present(), l.saddr_v6.is_present())
        };
        assert_eq!(
            MATRIX.map(family)[0],
            (false, true),
            "5.10: no family field"
        );
        assert!(MATRIX[1..].iter().all(|s| family(s) == (true, true)));
        let has_length = |series: &str| {
            std::path::Path::new(&format!("{root}/{series}/sock_send_length.format")).exists()
        };
        assert_eq!(MATRIX.map(has_length), [false, false, true, true]);
        let reset_endpoint = |series: &str| {
            let f = fixture(&format!("{series}/tcp_send_reset.format"));
            layout(Tracepoint::TcpSendReset, &f).unwrap().saddr.size
        };
        assert_eq!(MATRIX.map(reset_endpoint), [4, 4, SOCKADDR, SOCKADDR]);
    }

    #[test]
    fn rejects_missing_and_malformed_fields() {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/formats/6.18/inet_sock_set_state.format",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let no_proto: String = text
            .lines()
            .filter(|l| !l.contains("protocol;"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            layout(Tracepoint::InetSockSetState, &parse(&no_proto).unwrap()),
            Err(FormatError::MissingField {
                tracepoint: "inet_sock_set_state",
                field: "protocol"
            })
        );
        let wide = text.replace(
            "__u16 sport;\toffset:24;\tsize:2;",
            "__u32 sport;\toffset:24;\tsize:4;",
        );
        assert!(matches!(
            layout(Tracepoint::InetSockSetState, &parse(&wide).unwrap()),
            Err(FormatError::BadField { field: "sport", .. })
        ));
        let odd = text.replace("offset:24;\tsize:2;", "offset:25;\tsize:2;");
        assert!(matches!(
            layout(Tracepoint::InetSockSetState, &parse(&odd).unwrap()),
            Err(FormatError::BadField { field: "sport", .. })
        ));
        let far = text.replace("offset:56;\tsize:16;", "offset:120;\tsize:16;");
        assert!(matches!(
            layout(Tracepoint::InetSockSetState, &parse(&far).unwrap()),
            Err(FormatError::BadField {
                field: "daddr_v6",
                ..
            })
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse(""), Err(FormatError::NoFields));
        assert_eq!(parse("name: x\nformat:\n"), Err(FormatError::NoFields));
        assert!(matches!(
            parse("format:\n\tfield:int x;\toffset:abc;\tsize:4;\n"),
            Err(FormatError::Syntax { line: 2, .. })
        ));
        assert!(matches!(
            parse("format:\n\tfield:;\toffset:1;\tsize:4;\n"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(parse("\u{0}\u{ff}garbage\nformat:\nfield:").is_err());
    }
}
