//! Key bindings. In raw mode Ctrl-C arrives as a key, not as SIGINT, so it is bound here.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::Action;

/// The action of a key press; `None` for keys without one and for releases and repeats.
pub fn action(key: KeyEvent) -> Option<Action> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return matches!(key.code, KeyCode::Char('c' | 'C')).then_some(Action::Quit);
    }
    Some(match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('s' | 'S') => Action::ToggleSort,
        KeyCode::Char('p' | 'P' | ' ') => Action::TogglePause,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Top,
        KeyCode::End | KeyCode::Char('G') => Action::Bottom,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use crossterm::event::KeyEventState;

    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn bindings() {
        let none = KeyModifiers::NONE;
        assert_eq!(action(key(KeyCode::Char('q'), none)), Some(Action::Quit));
        assert_eq!(action(key(KeyCode::Esc, none)), Some(Action::Quit));
        assert_eq!(
            action(key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(action(key(KeyCode::Char('c'), none)), None);
        assert_eq!(
            action(key(KeyCode::Char('s'), KeyModifiers::CONTROL)),
            None,
            "control chords other than Ctrl-C do nothing"
        );
        assert_eq!(
            action(key(KeyCode::Char('s'), none)),
            Some(Action::ToggleSort)
        );
        assert_eq!(
            action(key(KeyCode::Char('p'), none)),
            Some(Action::TogglePause)
        );
        assert_eq!(action(key(KeyCode::Down, none)), Some(Action::Down));
        assert_eq!(action(key(KeyCode::PageUp, none)), Some(Action::PageUp));
        assert_eq!(action(key(KeyCode::Char('x'), none)), None);
    }

    #[test]
    fn releases_are_ignored() {
        let release = KeyEvent {
            code: KeyCode::Char('q'),
            modifiers: KeyModifiers::NONE,
            kind: KeyEventKind::Release,
            state: KeyEventState::NONE,
        };
        assert_eq!(action(release), None);
    }
}
