//! The terminal in dashboard mode (raw input, alternate screen, hidden cursor) and its
//! restoration: on drop, so every return path restores it, and from a panic hook, because a
//! panic message printed on the alternate screen in raw mode would be lost and leave the shell
//! unusable.

use std::{
    io::{self, Stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

use crossterm::{
    cursor::{Hide, Show},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Terminal, backend::CrosstermBackend};

/// Whether the terminal is in dashboard mode, so the panic hook restores only when needed.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

pub struct DashboardTerminal {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl DashboardTerminal {
    pub fn enter() -> io::Result<Self> {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on a failure still restores: the caller gets the error after `restore`.
        let setup = enable_raw_mode()
            .and_then(|()| execute!(io::stdout(), EnterAlternateScreen, Hide))
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match setup {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for DashboardTerminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves dashboard mode if it is active. Errors are ignored: this runs on the way out.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}
