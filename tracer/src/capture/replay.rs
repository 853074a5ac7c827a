//! `tracer replay FILE...`: the stream exactly as the recorder printed it (same printer, same
//! clock offset, same filters and record selection), or `tracer stats` reports from the same
//! aggregation, started from the captured snapshots.

use std::io::{self, BufWriter, Write};

use tracer_common::{Filter, RawEvent};

use super::{
    format::FileHeader,
    raw,
    records::Item,
    state,
    walk::{Visit, WalkError, WalkReport, walk},
};
use crate::{
    aggregate::Aggregator,
    clock::Clock,
    event::{Event, decode},
    loss::{LossCause, LossTotals},
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

/// Prints one item as the live stream printed it.
pub fn print_item<W: Write>(
    out: &mut W,
    h: &FileHeader,
    format: Format,
    filter: &Filter,
    view: View,
    item: Item,
    report: &mut WalkReport,
) -> io::Result<()> {
    let mut p = Printer::new(out, format, Clock::with_offset(h.clock_offset_ns));
    match item {
        Item::Kernel(r) => match filtered(filter, &r) {
            Some(Ok(ev)) => stream::print_event(&mut p, ev, view_of(h, view))?,
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
            let line = if format == Format::Json { json } else { human };
            let out = p.into_inner();
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        Item::Unknown { .. } => report.unknown += 1,
        Item::Snapshot(_) | Item::Refresh(_) => {}
    }
    Ok(())
}

/// Aggregation over replayed items, started from the first snapshot (and restarted from the
/// next one after a gap).
struct StatsReplay {
    agg: Option<Aggregator>,
    losses: LossTotals,
    filter: Filter,
    /// A gap was found: the next snapshot replaces the state.
    resync: bool,
    netns: Option<u32>,
}

impl StatsReplay {
    fn agg(&mut self) -> &mut Aggregator {
        let netns = self.netns;
        self.agg
            .get_or_insert_with(|| Aggregator::new(1 << 20, netns))
    }

    fn apply(&mut self, item: Item, report: &mut WalkReport) {
        match item {
            Item::Snapshot(s) => {
                if self.agg.is_none() || self.resync {
                    let mut losses = LossTotals::default();
                    self.agg = Some(state::restore(
                        &s,
                        self.netns,
                        Some(&self.filter),
                        &mut losses,
                    ));
                    self.losses = losses;
                    self.resync = false;
                }
            }
            Item::Refresh(r) => {
                let agg = self
                    .agg
                    .get_or_insert_with(|| Aggregator::new(1 << 20, None));
                state::apply_refresh(agg, &mut self.losses, &r);
            }
            Item::Kernel(r) => match filtered(&self.filter, &r) {
                Some(Ok(ev)) => self.agg().apply(&ev),
                Some(Err(())) => report.unknown += 1,
                None => {}
            },
            Item::Lost { cause, count, .. } => match LossCause::from_name(&cause) {
                Some(c) => self.losses.add(c, count),
                None => report.unknown += 1,
            },
            Item::Printed { .. } => {}
            Item::Unknown { .. } => report.unknown += 1,
        }
    }
}

fn stats_text(
    s: &mut StatsReplay,
    clock: Clock,
    args: &crate::cli::ReplayArgs,
    at_ns: u64,
) -> String {
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

pub fn run(args: &crate::cli::ReplayArgs) -> Result<WalkReport, WalkError> {
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let filter = args.filter.to_filter();
    let format = if args.json {
        Format::Json
    } else {
        Format::Human
    };
    let view = View::of(&args.filter);
    let report = if args.stats {
        let mut s = StatsReplay {
            agg: None,
            losses: LossTotals::default(),
            filter,
            resync: false,
            netns: None,
        };
        let mut clock = Clock::with_offset(0);
        let interval = args.interval.map(|d| d.as_nanos() as u64);
        let mut next_report: Option<u64> = None;
        let report = walk(&args.files, |v, report| {
            match v {
                Visit::File(h) => {
                    clock = Clock::with_offset(h.clock_offset_ns);
                    s.netns = h.netns;
                }
                Visit::Gap => s.resync = true,
                Visit::Item(_, item) => {
                    if let (Some(every), Item::Kernel(r)) = (interval, &item) {
                        let due = *next_report.get_or_insert(r.ts_ns.saturating_add(every));
                        if r.ts_ns >= due {
                            out.write_all(stats_text(&mut s, clock, args, due).as_bytes())?;
                            next_report = Some(due.saturating_add(every));
                        }
                    }
                    s.apply(item, report);
                }
            }
            Ok(())
        })?;
        let end = s.agg().now_ns;
        out.write_all(stats_text(&mut s, clock, args, end).as_bytes())
            .map_err(WalkError::Output)?;
        report
    } else {
        if format == Format::Human {
            writeln!(out, "{HUMAN_HEADER}").map_err(WalkError::Output)?;
        }
        walk(&args.files, |v, report| match v {
            Visit::Item(h, item) => print_item(&mut out, h, format, &filter, view, item, report),
            Visit::File(_) | Visit::Gap => Ok(()),
        })?
    };
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(WalkError::Output(e)),
        _ => {}
    }
    eprintln!("{}", report.summary());
    report.check(args.strict)?;
    Ok(report)
}
