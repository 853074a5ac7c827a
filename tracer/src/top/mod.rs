//! `tracer top`: a live terminal dashboard over the aggregates (states, processes, listeners,
//! peers, retransmits, closes, losses), redrawn every --interval. Keys are read from a stream
//! polled alongside the event loop, so input never stalls event processing.

mod app;
mod input;
mod terminal;
mod ui;

use std::io::{self, IsTerminal};

use crossterm::event::{Event, EventStream};
use futures_util::StreamExt;
use tokio::time::Instant;

use app::{Action, App};

use crate::{
    cli::TopArgs,
    live::{Live, LiveError},
};
use terminal::DashboardTerminal;

/// Process rows kept per snapshot: enough to scroll through, and to have a previous byte count
/// for the rates of everything likely to be looked at.
const PROCESS_ROWS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(
        "`tracer top` needs a terminal on stdout; use `tracer stats` (or `tracer stats --json`) \
         for reports that can be piped or redirected"
    )]
    NotATerminal,
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("terminal: {0}")]
    Terminal(io::Error),
    #[error("reading keys: {0}")]
    Input(io::Error),
    #[error("the terminal's input closed")]
    InputClosed,
}

pub async fn run(args: &TopArgs) -> Result<(), TopError> {
    if !io::stdout().is_terminal() {
        return Err(TopError::NotATerminal);
    }
    // Attach before taking over the screen, so start-up messages and errors stay readable.
    let mut live =
        Live::start(&args.live.options(None, crate::cli::live::AGGREGATING_RING)).await?;
    let shown = match DashboardTerminal::enter().map_err(TopError::Terminal) {
        Ok(mut term) => drive(&mut live, &mut term, args).await,
        Err(e) => Err(e),
    };
    // The terminal is restored here (guard dropped), before anything else is printed.
    let stopped = live.stop().await;
    shown?;
    stopped?;
    Ok(())
}

async fn drive(
    live: &mut Live,
    term: &mut DashboardTerminal,
    args: &TopArgs,
) -> Result<(), TopError> {
    let mut app = App::new(args.sort, args.interval, PROCESS_ROWS);
    let mut keys = EventStream::new();
    live.refresh().await?;
    app.update(
        live.stats(app.rows, app.sort),
        live.events,
        std::time::Instant::now(),
    );
    let mut next = Instant::now() + args.interval;
    loop {
        draw(term, &app)?;
        tokio::select! {
            // Cancel-safe: a key that wins the race only interrupts the wait between batches.
            running = live.run_until(next) => {
                if !running {
                    return Ok(());
                }
                // After a stall (a slow dump), tick from now rather than catching up in a burst.
                next = (next + args.interval).max(Instant::now());
                if !app.paused {
                    live.refresh().await?;
                    let stats = live.stats(app.rows, app.sort);
                    app.update(stats, live.events, std::time::Instant::now());
                }
            }
            key = keys.next() => match key {
                Some(Ok(Event::Key(k))) => {
                    let Some(action) = input::action(k) else { continue };
                    if !app.handle(action) {
                        return Ok(());
                    }
                    if action == Action::ToggleSort && !app.paused {
                        // Re-rank from the aggregator: the rows on screen are only the top ones
                        // by the old order.
                        app.show(live.stats(app.rows, app.sort), live.events);
                    }
                }
                // Resizes and anything else: redraw at the new size.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(TopError::Input(e)),
                None => return Err(TopError::InputClosed),
            },
        }
    }
}

fn draw(term: &mut DashboardTerminal, app: &App) -> Result<(), TopError> {
    term.terminal
        .draw(|f| {
            let area = f.area();
            ui::render(app, area, f.buffer_mut());
        })
        .map(drop)
        .map_err(TopError::Terminal)
}
