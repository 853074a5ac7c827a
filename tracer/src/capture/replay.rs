//! `tracer replay FILE...`: the stream exactly as the recorder printed it (same printer, same
//! clock offset, same filters and record selection), or `tracer stats` reports from the same
//! aggregation, started from the captured snapshots.

use std::io::{self, BufWriter, Write};

use tracer_common::{Filter, RawEvent};

use super::{
    anomalies::{self, Redetect},
    format::FileHeader,
    raw,
    records::Item,
    timeline::Timeline,
    walk::{Visit, WalkError, WalkReport, walk},
};
use crate::{
    anomaly::Config,
    cli::{EventType, ReplayArgs},
    clock::Clock,
    event::{Detail, Event, decode},
    loss::LossCause,
    output::{Format, HUMAN_HEADER, Printer, Record},
    stats,
    stream::{self, View},
};

/// Decodes a kernel record that passes `filter`. `Err` means it does not decode.
pub fn filtered(filter: &Filter, r: &RawEvent) -> Option<Result<Event, ()>> {
    filter
        .matches(r)
        .then(|| decode(&raw::to_bytes(r)).map_err(drop))
}

/// What the recorder's stream showed, narrowed by this command's own `--type`.
pub fn view_of(h: &FileHeader, mine: View) -> View {
    View {
        states: mine.states && h.print_states,
        closes: mine.closes && h.print_closes,
    }
}

/// Which recorded records print: the recorder's view narrowed by the replay's own flags.
#[derive(Debug, Clone, Copy)]
pub struct Shown {
    pub view: View,
    /// Anomaly records stored by the recorder (off when replay detects them itself).
    pub recorded_anomalies: bool,
}

/// Prints one item as the live stream printed it.
pub fn print_item<W: Write>(
    out: &mut W,
    h: &FileHeader,
    format: Format,
    filter: &Filter,
    shown: Shown,
    item: Item,
    report: &mut WalkReport,
) -> io::Result<()> {
    let mut p = Printer::new(out, format, Clock::with_offset(h.clock_offset_ns));
    match item {
        Item::Kernel(r) => match filtered(filter, &r) {
            Some(Ok(ev)) => {
                // Signals feed the detectors only; a detecting recorder may have hidden
                // retransmits it still stored for them.
                let hidden = match ev.detail {
                    Detail::Signal { .. } => true,
                    Detail::Retransmit { .. } => !h.print_retransmits,
                    Detail::State { .. } => false,
                };
                if !hidden {
                    stream::print_event(&mut p, ev, view_of(h, shown.view))?;
                }
            }
            Some(Err(())) => report.unknown += 1,
            None => {}
        },
        Item::Lost {
            ts_ns,
            cause,
            count,
        } => match LossCause::from_name(&cause) {
            Some(cause) => p.print(&Record::Lost {
                ts_ns,
                cause,
                count,
            })?,
            None => report.unknown += 1,
        },
        Item::Printed { json, human, .. } => {
            if shown.recorded_anomalies || !anomalies::is_anomaly(&json) {
                let line = if format == Format::Json { json } else { human };
                let out = p.into_inner();
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
        Item::Unknown { .. } => report.unknown += 1,
        Item::Snapshot(_) | Item::Refresh(_) | Item::Tick(_) => {}
    }
    Ok(())
}

fn stats_text(s: &mut Timeline, clock: Clock, args: &ReplayArgs, at_ns: u64) -> String {
    let top = usize::try_from(args.top).unwrap_or(usize::MAX);
    let losses = s.losses.clone();
    let stats = s.agg().stats(at_ns, top, args.sort, &losses);
    let at = clock.wall(at_ns);
    if args.json {
        stats::json_line(&stats, at) + "\n"
    } else {
        stats::render_human(&stats, at, args.sort) + "\n"
    }
}

pub fn run(args: &ReplayArgs, detection: Option<Config>) -> Result<WalkReport, WalkError> {
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let filter = args.filter.to_filter();
    let report = if args.stats {
        stats(args, filter, &mut out)?
    } else {
        records(args, &filter, detection, &mut out)?
    };
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(WalkError::Output(e)),
        _ => {}
    }
    eprintln!("{}", report.summary());
    report.check(args.strict)?;
    Ok(report)
}

/// `tracer stats` reports from the replayed aggregation.
fn stats<W: Write>(
    args: &ReplayArgs,
    filter: Filter,
    out: &mut W,
) -> Result<WalkReport, WalkError> {
    let mut s = Timeline::new(filter);
    let mut clock = Clock::with_offset(0);
    let interval = args.interval.map(|d| d.as_nanos() as u64);
    let mut next_report: Option<u64> = None;
    let report = walk(&args.files, |v, report| {
        match v {
            Visit::File(h) => {
                clock = Clock::with_offset(h.clock_offset_ns);
                s.netns = h.netns;
            }
            Visit::Gap => s.gap(),
            Visit::Item(_, item) => {
                if let (Some(every), Item::Kernel(r)) = (interval, &item) {
                    let due = *next_report.get_or_insert(r.ts_ns.saturating_add(every));
                    if r.ts_ns >= due {
                        out.write_all(stats_text(&mut s, clock, args, due).as_bytes())?;
                        next_report = Some(due.saturating_add(every));
                    }
                }
                s.apply(&item, report);
            }
        }
        Ok(())
    })?;
    let end = s.agg().now_ns;
    out.write_all(stats_text(&mut s, clock, args, end).as_bytes())
        .map_err(WalkError::Output)?;
    Ok(report)
}

/// The stream's records; with `detection`, anomalies detected anew in place of the recorded
/// ones.
pub(super) fn records<W: Write>(
    args: &ReplayArgs,
    filter: &Filter,
    detection: Option<Config>,
    out: &mut W,
) -> Result<WalkReport, WalkError> {
    let format = Format::json_if(args.json);
    let print_anomalies = args.filter.wants(EventType::Anomaly);
    let shown = Shown {
        view: View::of(&args.filter),
        recorded_anomalies: print_anomalies && detection.is_none(),
    };
    let mut redetect = detection.map(|cfg| Redetect::new(cfg, filter));
    if format == Format::Human {
        writeln!(out, "{HUMAN_HEADER}").map_err(WalkError::Output)?;
    }
    let mut files = args.files.iter();
    walk(&args.files, |v, report| {
        match v {
            Visit::Item(h, item) => {
                let Some(r) = &mut redetect else {
                    return print_item(out, h, format, filter, shown, item, report);
                };
                let (due, found) = (r.due(&item), r.apply(&item));
                if print_anomalies {
                    anomalies::print(out, h, format, due)?;
                }
                print_item(out, h, format, filter, shown, item, report)?;
                if print_anomalies {
                    anomalies::print(out, h, format, found)?;
                }
            }
            Visit::File(h) => {
                let name = files.next().map(|p| p.display().to_string());
                if let Some(note) = redetect
                    .as_mut()
                    .and_then(|r| r.file(h, name.as_deref().unwrap_or_default()))
                {
                    eprintln!("{note}");
                }
            }
            Visit::Gap => {
                if let Some(r) = &mut redetect {
                    r.gap();
                }
            }
        }
        Ok(())
    })
}
