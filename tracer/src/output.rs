//! Rendering events as human columns or JSON lines.

use std::{
    io::{self, Write},
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tracer_common::OwnerSource;

use crate::{
    clock::Clock,
    close::errno_name,
    event::{Detail, Event},
    loss::LossCause,
};

/// What the stream prints: kernel events and in-band loss reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Event(Event),
    /// The close record of an event that ended a connection (`event.close` is set).
    Close(Event),
    Lost {
        ts_ns: u64,
        cause: LossCause,
        count: u64,
    },
    /// An anomaly raised or cleared (see `crate::anomaly`).
    Anomaly(crate::anomaly::Anomaly),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

impl Format {
    /// `--json` or not.
    pub fn json_if(json: bool) -> Self {
        if json { Self::Json } else { Self::Human }
    }
}

/// JSON `type` of the anomaly signals (printed only when a consumer asks for them).
pub fn signal_name(k: crate::event::SignalKind) -> &'static str {
    use crate::event::SignalKind;
    match k {
        SignalKind::ResetSent => "reset_sent",
        SignalKind::ResetReceived => "reset_received",
        SignalKind::SynackRetransmit => "synack_retransmit",
    }
}

pub fn owner_source_name(s: OwnerSource) -> &'static str {
    match s {
        OwnerSource::Unknown => "unknown",
        OwnerSource::Process => "process",
        OwnerSource::Listener => "listener",
        OwnerSource::Snapshot => "snapshot",
    }
}

/// Serializes through `Display` straight into the output, without an intermediate String.
struct Text<T: std::fmt::Display>(T);

impl<T: std::fmt::Display> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

struct Hex(u64);

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The fields every event-based record starts with: what, when, which socket and whose.
#[derive(Serialize)]
struct JsonIdent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: Text<humantime::Rfc3339Timestamp>,
    sk: Text<Hex>,
    pid: Option<u32>,
    comm: Option<&'a str>,
    owner: &'static str,
    family: u8,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    #[serde(flatten)]
    ident: JsonIdent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    err: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
}

#[derive(Serialize)]
struct JsonClose<'a> {
    #[serde(flatten)]
    ident: JsonIdent<'a>,
    /// The state the connection closed from.
    state: &'static str,
    end: &'static str,
    error: Option<&'static str>,
    lifespan_ms: Option<f64>,
    bytes_sent: u64,
    bytes_received: u64,
    retransmits: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
}

#[derive(Serialize)]
struct JsonLost {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    cause: &'static str,
    count: u64,
}

pub const HUMAN_HEADER: &str = "TIME(UTC)        PID     COMM             LOCAL                   REMOTE                  EVENT                          MS";

pub struct Printer<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    /// Records printed so far (the header excluded).
    printed: u64,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn time_of_day(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Milliseconds with microsecond resolution.
fn ms(ns: u64) -> f64 {
    (ns / 1000) as f64 / 1000.0
}

fn ms_text(ns: u64) -> String {
    format!("{:.3}", ms(ns))
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format, clock: Clock) -> Self {
        Self {
            out,
            format,
            clock,
            printed: 0,
        }
    }

    /// Records printed so far; the output queue tells from it whether an event printed any.
    pub fn printed(&self) -> u64 {
        self.printed
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn header(&mut self) -> io::Result<()> {
        if self.format == Format::Human {
            writeln!(self.out, "{HUMAN_HEADER}")?;
        }
        Ok(())
    }

    pub fn print(&mut self, rec: &Record) -> io::Result<()> {
        self.render(rec)?;
        self.printed += 1;
        Ok(())
    }

    fn render(&mut self, rec: &Record) -> io::Result<()> {
        match (self.format, rec) {
            (Format::Json, Record::Event(ev)) => self.json_event(ev),
            (Format::Human, Record::Event(ev)) => self.human_event(ev),
            (Format::Json, Record::Close(ev)) => self.json_close(ev),
            (Format::Human, Record::Close(ev)) => self.human_close(ev),
            (Format::Json, Record::Anomaly(a)) => {
                let v = a.to_json(rfc3339(self.clock.wall(a.ts_ns)));
                serde_json::to_writer(&mut self.out, &v)?;
                self.out.write_all(b"\n")
            }
            (Format::Human, Record::Anomaly(a)) => writeln!(
                self.out,
                "{} {}",
                time_of_day(self.clock.wall(a.ts_ns)),
                a.human()
            ),
            (
                Format::Json,
                Record::Lost {
                    ts_ns,
                    cause,
                    count,
                },
            ) => {
                let rec = JsonLost {
                    kind: "lost",
                    time: rfc3339(self.clock.wall(*ts_ns)),
                    cause: cause.name(),
                    count: *count,
                };
                serde_json::to_writer(&mut self.out, &rec)?;
                self.out.write_all(b"\n")
            }
            (
                Format::Human,
                Record::Lost {
                    ts_ns,
                    cause,
                    count,
                },
            ) => writeln!(
                self.out,
                "{} LOST {count} events ({})",
                time_of_day(self.clock.wall(*ts_ns)),
                cause.describe()
            ),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn ident<'e>(&self, kind: &'static str, ev: &'e Event) -> JsonIdent<'e> {
        JsonIdent {
            kind,
            time: Text(humantime::format_rfc3339_micros(self.clock.wall(ev.ts_ns))),
            sk: Text(Hex(ev.sk)),
            pid: ev.owner.as_ref().map(|o| o.pid),
            comm: ev.owner.as_ref().map(|o| o.comm.as_str()),
            owner: owner_source_name(ev.owner.as_ref().map_or(OwnerSource::Unknown, |o| o.source)),
            family: ev.family(),
            saddr: ev.saddr,
            sport: ev.sport,
            daddr: ev.daddr,
            dport: ev.dport,
        }
    }

    fn json_event(&mut self, ev: &Event) -> io::Result<()> {
        let (mut old_state, mut new_state, mut duration_ms, mut state, mut err) =
            (None, None, None, None, None);
        let kind = match &ev.detail {
            Detail::State {
                old,
                new,
                duration_ns,
            } => {
                old_state = Some(old.name());
                new_state = Some(new.name());
                duration_ms = duration_ns.map(ms);
                "state"
            }
            Detail::Retransmit { state: s, err: e } => {
                state = Some(s.name());
                err = *e;
                "retransmit"
            }
            Detail::Signal { kind, state: s } => {
                state = s.map(|s| s.name());
                signal_name(*kind)
            }
        };
        let rec = JsonEvent {
            ident: self.ident(kind, ev),
            old_state,
            new_state,
            duration_ms,
            state,
            err,
            netns: (ev.netns != 0).then_some(ev.netns),
        };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")
    }

    fn json_close(&mut self, ev: &Event) -> io::Result<()> {
        let Some(c) = &ev.close else { return Ok(()) };
        let rec = JsonClose {
            ident: self.ident("close", ev),
            state: c.from.name(),
            end: c.end.name(),
            error: errno_name(c.err),
            lifespan_ms: c.lifespan_ns.map(ms),
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            retransmits: c.retransmits,
            netns: (ev.netns != 0).then_some(ev.netns),
        };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")
    }

    fn human_close(&mut self, ev: &Event) -> io::Result<()> {
        let Some(c) = &ev.close else { return Ok(()) };
        let what = format!(
            "CLOSED {} tx={} rx={} rtx={}",
            c.end.name(),
            c.bytes_sent,
            c.bytes_received,
            c.retransmits
        );
        self.human_line(
            ev,
            &what,
            &c.lifespan_ns.map_or_else(|| "-".to_owned(), ms_text),
        )
    }

    fn human_event(&mut self, ev: &Event) -> io::Result<()> {
        let (what, dur) = match &ev.detail {
            Detail::State {
                old,
                new,
                duration_ns,
            } => (
                format!("{old} -> {new}"),
                duration_ns.map_or_else(|| "-".to_owned(), ms_text),
            ),
            Detail::Retransmit { state, err } => (
                match err {
                    Some(e) => format!("RETRANSMIT {state} err={e}"),
                    None => format!("RETRANSMIT {state}"),
                },
                String::new(),
            ),
            Detail::Signal { kind, state } => (
                match state {
                    Some(s) => format!("{} {s}", signal_name(*kind).to_uppercase()),
                    None => signal_name(*kind).to_uppercase(),
                },
                String::new(),
            ),
        };
        self.human_line(ev, &what, &dur)
    }

    /// One column line: time, owner, endpoints, what happened and a duration in ms.
    fn human_line(&mut self, ev: &Event, what: &str, dur: &str) -> io::Result<()> {
        let (pid, comm) = match &ev.owner {
            Some(o) => (o.pid.to_string(), o.comm.as_str()),
            None => ("-".to_owned(), "-"),
        };
        writeln!(
            self.out,
            "{} {:<7} {:<16} {:<23} {:<23} {:<30} {}",
            time_of_day(self.clock.wall(ev.ts_ns)),
            pid,
            comm,
            endpoint(ev.saddr, ev.sport),
            endpoint(ev.daddr, ev.dport),
            what,
            dur
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        decode,
        tests::{encode, raw_v4},
    };

    /// 2023-11-14T12:00:00Z.
    const NOON: u64 = 1_699_963_200 * 1_000_000_000;

    fn render(format: Format, rec: &Record) -> String {
        let mut p = Printer::new(Vec::new(), format, Clock::with_offset(NOON - 123_456_789));
        p.print(rec).unwrap();
        String::from_utf8(p.into_inner()).unwrap()
    }

    #[test]
    fn json_state_event_has_the_documented_fields() {
        let ev = decode(&encode(&raw_v4())).unwrap();
        let line = render(Format::Json, &Record::Event(ev));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "state");
        assert_eq!(v["time"], "2023-11-14T12:00:00.000000Z");
        assert_eq!(v["sk"], "0xffff888100001000");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "nginx");
        assert_eq!(v["owner"], "process");
        assert_eq!(v["family"], 4);
        assert_eq!(v["saddr"], "127.0.0.1");
        assert_eq!(v["sport"], 40000);
        assert_eq!(v["daddr"], "127.0.0.2");
        assert_eq!(v["dport"], 8080);
        assert_eq!(v["old_state"], "SYN_SENT");
        assert_eq!(v["new_state"], "ESTABLISHED");
        assert_eq!(v["duration_ms"], 1.5);
        assert!(v.get("state").is_none());
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }

    #[test]
    fn json_retransmit_and_lost() {
        let mut raw = raw_v4();
        raw.kind = tracer_common::EventKind::Retransmit as u8;
        raw.old_state = tracer_common::state::ESTABLISHED;
        raw.pid = 0;
        raw.owner_src = 0;
        let v: serde_json::Value = serde_json::from_str(&render(
            Format::Json,
            &Record::Event(decode(&encode(&raw)).unwrap()),
        ))
        .unwrap();
        assert_eq!(v["type"], "retransmit");
        assert_eq!(v["state"], "ESTABLISHED");
        assert_eq!(v["pid"], serde_json::Value::Null);
        assert_eq!(v["owner"], "unknown");
        assert!(v.get("new_state").is_none() && v.get("err").is_none());
        let lost = Record::Lost {
            ts_ns: 123_456_789,
            cause: LossCause::RingbufFull,
            count: 7,
        };
        let v: serde_json::Value = serde_json::from_str(&render(Format::Json, &lost)).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["cause"].as_str(), v["count"].as_u64()),
            (Some("lost"), Some("ringbuf_full"), Some(7))
        );
    }

    #[test]
    fn json_close_record() {
        let mut raw = raw_v4();
        raw.old_state = tracer_common::state::LAST_ACK;
        raw.new_state = tracer_common::state::CLOSE;
        raw.bytes_sent = 1000;
        raw.bytes_received = 20;
        raw.lifespan_ns = 2_500_000;
        raw.retransmits = 1;
        let ev = decode(&encode(&raw)).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &Record::Close(ev.clone()))).unwrap();
        assert_eq!(v["type"], "close");
        assert_eq!(v["state"], "LAST_ACK");
        assert_eq!(v["end"], "orderly");
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(v["lifespan_ms"], 2.5);
        assert_eq!(
            (v["bytes_sent"].as_u64(), v["bytes_received"].as_u64()),
            (Some(1000), Some(20))
        );
        assert_eq!(v["retransmits"], 1);
        assert_eq!(v["pid"], 4242);
        let human = render(Format::Human, &Record::Close(ev));
        assert!(
            human.contains("CLOSED orderly tx=1000 rx=20 rtx=1"),
            "{human}"
        );
    }

    #[test]
    fn human_columns() {
        let line = render(
            Format::Human,
            &Record::Event(decode(&encode(&raw_v4())).unwrap()),
        );
        assert!(
            line.starts_with("12:00:00.000000 4242    nginx            127.0.0.1:40000"),
            "{line}"
        );
        assert!(line.contains("SYN_SENT -> ESTABLISHED"), "{line}");
        assert!(line.trim_end().ends_with("1.500"), "{line}");
    }
}
