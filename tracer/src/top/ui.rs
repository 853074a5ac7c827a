//! Drawing: a pure function from the dashboard state to a buffer, so it can be tested without a
//! terminal. Panels are dropped from the bottom up when the screen is too short, and columns
//! shrink when it is too narrow.

use std::time::Duration;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, StatefulWidget, Table, TableState, Widget},
};
use tracer_common::state;

use super::app::App;
use crate::{
    aggregate::view::{ProcessRow, Stats},
    stats::human_bytes,
};

/// Width of one state in the state grid: name, count and a gap.
const STATE_CELL: u16 = 19;
/// The bottom panels (listeners, peers): borders, a header and four rows.
const BOTTOM_HEIGHT: u16 = 7;
/// The process table never gets fewer lines than this (borders, header, three rows).
const MIN_PROCESS_HEIGHT: u16 = 6;
/// Retransmits, closes and losses.
const FOOTER_HEIGHT: u16 = 2;

pub fn render(app: &App, area: Rect, buf: &mut Buffer) {
    let [header, body] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    header_line(app).render(header, buf);
    let Some(stats) = &app.stats else {
        Paragraph::new("reading the first snapshot…").render(body, buf);
        return;
    };
    let cells = state_cells(stats);
    let columns = (area.width.saturating_sub(2) / STATE_CELL).max(1);
    let grid_rows = u16::try_from(cells.len().div_ceil(usize::from(columns))).unwrap_or(u16::MAX);
    // Panels in order of importance: the process table first, then states, then the bottom row.
    let mut spare = body
        .height
        .saturating_sub(FOOTER_HEIGHT + MIN_PROCESS_HEIGHT);
    let mut take = |h: u16| {
        let fits = spare >= h;
        if fits {
            spare -= h;
        }
        if fits { h } else { 0 }
    };
    let states_height = take(grid_rows.saturating_add(2));
    let bottom_height = take(BOTTOM_HEIGHT);
    let [states, processes, bottom, footer] = Layout::vertical([
        Constraint::Length(states_height),
        Constraint::Fill(1),
        Constraint::Length(bottom_height),
        Constraint::Length(FOOTER_HEIGHT),
    ])
    .areas(body);
    if states_height > 0 {
        state_grid(stats, &cells, columns, states, buf);
    }
    process_table(app, stats, processes, buf);
    if bottom_height > 0 {
        let [listeners, peers] =
            Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)])
                .areas(bottom);
        listener_table(stats, listeners, buf);
        peer_table(stats, peers, buf);
    }
    Paragraph::new(footer_lines(stats)).render(footer, buf);
}

fn header_line(app: &App) -> Line<'static> {
    let mut spans = vec![
        Span::styled(" tracer top ", Style::new().reversed().bold()),
        Span::raw(format!(" every {}", interval_text(app.interval))),
        Span::raw(" │ sort: "),
        Span::styled(app.sort.name(), Style::new().bold()),
        Span::raw(format!(" │ {} events", app.events)),
    ];
    if app.paused {
        spans.push(Span::raw(" │ "));
        spans.push(Span::styled(
            " PAUSED ",
            Style::new().fg(Color::Black).bg(Color::Yellow).bold(),
        ));
    }
    Line::from(spans)
}

fn interval_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Every state `ss` can show, in the kernel's order, with its count.
fn state_cells(stats: &Stats) -> Vec<(&'static str, u64)> {
    (1..=state::MAX_STATE)
        .filter_map(state::name)
        .filter_map(|name| Some((name, *stats.states.get(name)?)))
        .collect()
}

fn state_grid(
    stats: &Stats,
    cells: &[(&'static str, u64)],
    columns: u16,
    area: Rect,
    buf: &mut Buffer,
) {
    let t = &stats.totals;
    let title = format!(
        " TCP {} (estab {}, listen {}, timewait {}, synrecv {}, closing {}) ",
        t.total, t.established, t.listening, t.time_wait, t.syn_recv, t.closing
    );
    let rows = cells.len().div_ceil(usize::from(columns)).max(1);
    // Column-major, so the states read top to bottom like a list.
    let lines: Vec<Line> = (0..rows)
        .map(|r| {
            Line::from(
                cells
                    .iter()
                    .skip(r)
                    .step_by(rows)
                    .map(|&(name, n)| {
                        let style = match (name, n) {
                            (_, 0) => Style::new().dim(),
                            ("CLOSE_WAIT", _) => Style::new().fg(Color::Yellow).bold(),
                            _ => Style::new().bold(),
                        };
                        Span::styled(format!("{name:<11}{n:>7} "), style)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    Paragraph::new(lines)
        .block(Block::bordered().title(title))
        .render(area, buf);
}

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

fn header_row(names: &[&'static str], right_from: usize) -> Row<'static> {
    Row::new(names.iter().enumerate().map(|(i, &n)| {
        if i >= right_from {
            right(n.to_owned())
        } else {
            Cell::from(n)
        }
    }))
    .style(Style::new().bold().underlined())
}

/// Columns of the process table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProcColumn {
    Pid,
    Comm,
    Conns,
    CloseWait,
    Sent,
    Received,
    Rate,
}

impl ProcColumn {
    /// In display order; the first two are text, the others numbers.
    const ALL: [Self; 7] = [
        Self::Pid,
        Self::Comm,
        Self::Conns,
        Self::CloseWait,
        Self::Sent,
        Self::Received,
        Self::Rate,
    ];
    /// Which columns go first when the table is too narrow for all of them.
    const DROP_ORDER: [Self; 4] = [Self::Received, Self::Sent, Self::Rate, Self::CloseWait];

    fn header(self) -> &'static str {
        match self {
            Self::Pid => "PID",
            Self::Comm => "COMM",
            Self::Conns => "CONNS",
            Self::CloseWait => "CLOSE_WAIT",
            Self::Sent => "SENT",
            Self::Received => "RECEIVED",
            Self::Rate => "RATE",
        }
    }

    /// Minimum width for the command (it takes what is left), exact width for the others.
    fn width(self) -> u16 {
        match self {
            Self::Pid => 7,
            Self::Comm => 12,
            Self::Conns => 6,
            Self::CloseWait | Self::Sent | Self::Received => 10,
            Self::Rate => 12,
        }
    }

    fn cell(self, app: &App, p: &ProcessRow) -> Cell<'static> {
        match self {
            Self::Pid => Cell::from(p.pid.map_or_else(|| "-".to_owned(), |p| p.to_string())),
            Self::Comm if p.comm.is_empty() => Cell::from("-"),
            Self::Comm => Cell::from(p.comm.clone()),
            Self::Conns => right(p.connections.to_string()),
            Self::CloseWait if p.close_wait > 0 => right(p.close_wait.to_string())
                .style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)),
            Self::CloseWait => right(p.close_wait.to_string()),
            Self::Sent => right(human_bytes(p.bytes_sent)),
            Self::Received => right(human_bytes(p.bytes_received)),
            Self::Rate => right(app.rate(p).map_or_else(|| "-".to_owned(), rate_text)),
        }
    }

    /// The columns that fit `width`, dropping the least important ones rather than clipping
    /// every column.
    fn fitting(width: u16) -> Vec<Self> {
        let need = |cols: &[Self]| -> usize {
            cols.iter().map(|c| usize::from(c.width())).sum::<usize>() + cols.len() - 1
        };
        let mut cols = Self::ALL.to_vec();
        for drop in Self::DROP_ORDER {
            if need(&cols) <= usize::from(width) {
                break;
            }
            cols.retain(|&c| c != drop);
        }
        cols
    }
}

fn process_table(app: &App, stats: &Stats, area: Rect, buf: &mut Buffer) {
    let columns = ProcColumn::fitting(area.width.saturating_sub(2));
    let rows = stats
        .processes
        .iter()
        .map(|p| Row::new(columns.iter().map(|c| c.cell(app, p))));
    let widths = columns.iter().map(|&c| match c {
        ProcColumn::Comm => Constraint::Min(c.width()),
        _ => Constraint::Length(c.width()),
    });
    let headers: Vec<&'static str> = columns.iter().map(|c| c.header()).collect();
    let count = stats.processes.len();
    let position = if count == 0 {
        "none".to_owned()
    } else {
        format!("{}/{count}", app.cursor + 1)
    };
    let block = Block::bordered()
        .title(format!(" Processes by {} ({position}) ", app.sort.name()))
        .title_bottom(" ↑↓ select  s sort  p pause  q quit ");
    let table = Table::new(rows, widths)
        .header(header_row(&headers, 2))
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected((count > 0).then_some(app.cursor));
    StatefulWidget::render(table, area, buf, &mut state);
}

fn rate_text(bytes_per_sec: f64) -> String {
    // Rates are shown to the byte: fractions of a byte per second carry no information.
    format!("{}/s", human_bytes(bytes_per_sec.round() as u64))
}

fn listener_table(stats: &Stats, area: Rect, buf: &mut Buffer) {
    let mut listeners: Vec<_> = stats.listeners.iter().collect();
    // Filling accept queues first: they are what a reader of this panel looks for.
    listeners.sort_by_key(|l| std::cmp::Reverse(l.accept_queue));
    let rows = listeners.iter().map(|l| {
        let owner = match (l.pid, &l.comm) {
            (Some(pid), Some(comm)) => format!("{pid} {comm}"),
            (Some(pid), None) => pid.to_string(),
            (None, Some(comm)) => comm.clone(),
            (None, None) => "-".to_owned(),
        };
        let style = if l.backlog > 0 && l.accept_queue >= l.backlog {
            Style::new().fg(Color::Red).bold()
        } else if l.accept_queue > 0 {
            Style::new().fg(Color::Yellow)
        } else {
            Style::new()
        };
        Row::new([
            Cell::from(l.local.to_string()),
            Cell::from(owner),
            right(format!("{}/{}", l.accept_queue, l.backlog)),
        ])
        .style(style)
    });
    // Owner: a pid and most of a 15-byte command name; queue: up to `65535/65535`.
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(20),
        Constraint::Length(11),
    ];
    let table = Table::new(rows, widths)
        .header(header_row(&["LOCAL", "OWNER", "QUEUE"], 2))
        .block(Block::bordered().title(format!(" Listeners ({}) ", stats.listeners.len())));
    Widget::render(table, area, buf);
}

fn peer_table(stats: &Stats, area: Rect, buf: &mut Buffer) {
    let rows = stats.peers.iter().map(|p| {
        Row::new([
            Cell::from(p.addr.to_string()),
            right(p.connections.to_string()),
        ])
    });
    let table = Table::new(rows, [Constraint::Fill(1), Constraint::Length(7)])
        .header(header_row(&["PEER", "CONNS"], 1))
        .block(Block::bordered().title(" Top peers "));
    Widget::render(table, area, buf);
}

fn nonzero(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn footer_lines(stats: &Stats) -> Vec<Line<'static>> {
    let closes: u64 = stats.closes.values().sum();
    let mut first = vec![
        Span::raw(" Retransmits "),
        Span::styled(
            stats.retransmits.to_string(),
            if stats.retransmits > 0 {
                Style::new().fg(Color::Yellow).bold()
            } else {
                Style::new().bold()
            },
        ),
        Span::raw(" │ Closes "),
        Span::styled(closes.to_string(), Style::new().bold()),
    ];
    if closes > 0 {
        first.push(Span::raw(format!(": {}", nonzero(&stats.closes))));
    }
    let lost: u64 = stats.lost.values().sum();
    let mut second = if lost == 0 {
        vec![
            Span::raw(" Lost events "),
            Span::styled("0", Style::new().fg(Color::Green).bold()),
        ]
    } else {
        vec![
            Span::raw(" "),
            Span::styled(
                format!(" LOST EVENTS {lost}: {} ", nonzero(&stats.lost)),
                Style::new().fg(Color::White).bg(Color::Red).bold(),
            ),
        ]
    };
    // Tracking last: on a narrow screen it is the part that gets cut off.
    let t = &stats.tracking;
    if t.refused > 0 {
        second.push(Span::raw(" │ "));
        second.push(Span::styled(
            format!("table full: {} untracked", t.refused),
            Style::new().fg(Color::Red).bold(),
        ));
    }
    // Bytes of evicted processes are gone from their rows: say so beside the byte columns.
    if t.proc_map_evictions > 0 {
        second.push(Span::raw(" │ "));
        second.push(Span::styled(
            format!("byte map: {} processes evicted", t.proc_map_evictions),
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    second.push(Span::raw(format!(
        " │ tracked {}/{}",
        t.sockets, t.capacity
    )));
    vec![Line::from(first), Line::from(second)]
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Instant};

    use super::*;
    use crate::{
        aggregate::view::{ListenerRow, PeerRow, ProcSort},
        top::app::{
            Action,
            tests::{proc_row, stats},
        },
    };

    fn text(buf: &Buffer) -> Vec<String> {
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    fn draw(app: &App, width: u16, height: u16) -> (Buffer, Vec<String>) {
        let area = Rect::new(0, 0, width, height);
        let mut buf = Buffer::empty(area);
        render(app, area, &mut buf);
        let lines = text(&buf);
        (buf, lines)
    }

    fn find(lines: &[String], needle: &str) -> Option<(usize, usize)> {
        lines
            .iter()
            .enumerate()
            .find_map(|(y, l)| l.find(needle).map(|b| (l[..b].chars().count(), y)))
    }

    fn busy_stats() -> Stats {
        let mut s = stats(
            (0..30)
                .map(|i| {
                    proc_row(
                        1000 + i,
                        &format!("worker-{i}"),
                        30 - u64::from(i),
                        u64::from(i) * 4096,
                    )
                })
                .collect(),
        );
        s.processes.sort_by_key(|p| std::cmp::Reverse(p.bytes_sent));
        s.processes[0].close_wait = 3;
        for st in 1..=state::MAX_STATE {
            if st != state::CLOSE && st != state::NEW_SYN_RECV {
                s.states
                    .insert(state::display(st).to_owned(), u64::from(st) * 10);
            }
        }
        s.totals.total = 123_456;
        s.totals.established = 10;
        s.listeners = (0..6)
            .map(|i| ListenerRow {
                local: SocketAddr::from(([127, 0, 0, 1], 8000 + i)),
                pid: Some(77),
                comm: Some("nginx".to_owned()),
                accept_queue: if i == 4 { 9 } else { 0 },
                backlog: 128,
            })
            .collect();
        s.peers = vec![PeerRow {
            addr: [10, 1, 2, 3].into(),
            connections: 42,
        }];
        s.retransmits = 17;
        s.closes.insert("orderly".to_owned(), 30);
        s.closes.insert("reset".to_owned(), 2);
        s.closes.insert("timeout".to_owned(), 0);
        s.lost.insert("ringbuf_full".to_owned(), 0);
        s
    }

    fn app_with(s: Stats) -> App {
        let mut app = App::new(ProcSort::Bytes, Duration::from_millis(500), 100);
        app.update(s, 999, Instant::now());
        app
    }

    #[test]
    fn full_dashboard_fits_80x24() {
        let (_, lines) = draw(&app_with(busy_stats()), 80, 24);
        let screen = lines.join("\n");
        for want in [
            "tracer top",
            "every 500ms",
            "sort: bytes",
            "999 events",
            "TCP 123456 (estab 10,",
            "Processes by bytes (1/30)",
            "CLOSE_WAIT",
            "RATE",
            "worker-29",
            "Listeners (6)",
            "127.0.0.1:8004",
            "77 nginx",
            "9/128",
            "Top peers",
            "10.1.2.3",
            "Retransmits 17",
            "Closes 32: orderly 30, reset 2",
            "Lost events 0",
            "q quit",
        ] {
            assert!(screen.contains(want), "missing {want:?} in\n{screen}");
        }
        // Every state, in kernel order, column-major.
        for (name, n) in [("ESTABLISHED", 10), ("LISTEN", 100), ("CLOSING", 110)] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&format!("{name:<11}{n:>7}"))),
                "{name} {n}\n{screen}"
            );
        }
        assert!(!screen.contains("NEW_SYN_RECV") && !screen.contains("CLOSE     "));
        let (_, est) = find(&lines, "ESTABLISHED").unwrap();
        let (_, syn) = find(&lines, "SYN_SENT").unwrap();
        assert_eq!(syn, est + 1, "states read down the column");
        // The busiest process is first and highlighted; its close_wait is shown.
        let (x, y) = find(&lines, "worker-29").unwrap();
        assert!(lines[y].contains("116.0 KiB"), "{}", lines[y]);
        let (buf, _) = draw(&app_with(busy_stats()), 80, 24);
        assert!(
            buf[(x as u16, y as u16)]
                .modifier
                .contains(Modifier::REVERSED)
        );
        // The filling accept queue is listed first.
        let (_, first_listener) = find(&lines, "127.0.0.1:").unwrap();
        assert!(lines[first_listener].contains("127.0.0.1:8004"));
    }

    #[test]
    fn rates_appear_after_two_refreshes() {
        let t0 = Instant::now();
        let mut app = App::new(ProcSort::Bytes, Duration::from_secs(1), 100);
        app.update(stats(vec![proc_row(5, "curl", 1, 0)]), 0, t0);
        let (_, lines) = draw(&app, 80, 24);
        let (_, y) = find(&lines, "curl").unwrap();
        let row = lines[y].trim_end().trim_end_matches('│').trim_end();
        assert!(row.ends_with(" -"), "no rate yet: {}", lines[y]);
        app.update(
            stats(vec![proc_row(5, "curl", 1, 2048)]),
            0,
            t0 + Duration::from_secs(2),
        );
        let (_, lines) = draw(&app, 80, 24);
        assert!(lines.iter().any(|l| l.contains("1.0 KiB/s")), "{lines:#?}");
    }

    #[test]
    fn sort_and_pause_are_labelled() {
        let mut app = app_with(busy_stats());
        app.handle(Action::ToggleSort);
        app.handle(Action::TogglePause);
        let (_, lines) = draw(&app, 80, 24);
        let screen = lines.join("\n");
        assert!(screen.contains("sort: connections"), "{screen}");
        assert!(screen.contains("Processes by connections"), "{screen}");
        assert!(screen.contains("PAUSED"), "{screen}");
        let (_, y) = find(&lines, "PID").unwrap();
        assert!(
            lines[y + 1].contains("worker-0"),
            "most connections first\n{screen}"
        );
    }

    #[test]
    fn cursor_scrolls_the_process_list() {
        let mut app = app_with(busy_stats());
        app.handle(Action::Bottom);
        let (_, lines) = draw(&app, 80, 24);
        let screen = lines.join("\n");
        assert!(screen.contains("(30/30)"), "{screen}");
        assert!(screen.contains("worker-0 "), "last row visible\n{screen}");
        assert!(
            !screen.contains("worker-29"),
            "first row scrolled away\n{screen}"
        );
    }

    #[test]
    fn losses_are_highlighted() {
        let mut s = busy_stats();
        s.lost.insert("ringbuf_full".to_owned(), 12);
        s.lost.insert("decode_error".to_owned(), 1);
        s.tracking.refused = 4;
        s.tracking.proc_map_evictions = 2;
        let (buf, lines) = draw(&app_with(s), 120, 24);
        let screen = lines.join("\n");
        assert!(
            screen.contains("LOST EVENTS 13: decode_error 1, ringbuf_full 12"),
            "{screen}"
        );
        assert!(screen.contains("table full: 4 untracked"), "{screen}");
        assert!(screen.contains("byte map: 2 processes evicted"), "{screen}");
        let (x, y) = find(&lines, "LOST EVENTS").unwrap();
        assert_eq!(buf[(x as u16, y as u16)].bg, Color::Red);
    }

    #[test]
    fn small_screens_drop_panels_but_keep_processes_and_losses() {
        let (_, lines) = draw(&app_with(busy_stats()), 80, 14);
        let screen = lines.join("\n");
        assert!(screen.contains("Processes by bytes"), "{screen}");
        assert!(screen.contains("Lost events 0"), "{screen}");
        assert!(!screen.contains("Listeners"), "{screen}");
        let (_, lines) = draw(&app_with(busy_stats()), 40, 10);
        let screen = lines.join("\n");
        assert!(screen.contains("Processes"), "{screen}");
        assert!(screen.contains("worker-29"), "{screen}");
        let (_, y) = find(&lines, "PID").unwrap();
        assert!(
            lines[y].contains("CONNS") && lines[y].contains("CLOSE_WAIT"),
            "whole columns are dropped, the rest stay legible: {}",
            lines[y]
        );
        assert!(!lines[y].contains("RECEIVED"), "{}", lines[y]);
        // Degenerate sizes must not panic.
        for (w, h) in [(0, 0), (1, 1), (5, 3), (80, 2), (200, 60)] {
            draw(&app_with(busy_stats()), w, h);
        }
    }

    #[test]
    fn before_the_first_snapshot() {
        let app = App::new(ProcSort::Connections, Duration::from_secs(2), 100);
        let (_, lines) = draw(&app, 80, 24);
        assert!(lines[0].contains("every 2s"), "{}", lines[0]);
        assert!(
            lines[1].contains("reading the first snapshot"),
            "{}",
            lines[1]
        );
    }
}
