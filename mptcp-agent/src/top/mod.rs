//! `mptcp-agent top`: a live terminal view of the tracked connections and their subflows, with
//! rates from successive reads of the tables and the congestion state the sock_ops program
//! records. The model is pure; the view draws it; this file reads, draws and takes keys.

pub mod model;
mod view;

use std::{
    io,
    time::{Duration, Instant},
};

use ratatui::crossterm::{
    cursor::Show,
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute,
};

use crate::{
    bpf::Instance,
    cc::{self, CongestionError},
    dataplane::tables::{Snapshot, TableError, Tables},
};
use model::{Action, Key, Top};

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("reading the tables")]
    Tables(#[from] TableError),
    #[error("reading the congestion state")]
    Congestion(#[from] CongestionError),
    #[error("terminal")]
    Terminal(#[from] io::Error),
}

/// Leaves the terminal as it was (raw mode off, main screen, cursor shown) when `run` returns,
/// fails or panics; ratatui's panic hook does the same before the message is printed.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
        if let Err(error) = execute!(io::stdout(), Show) {
            eprintln!("showing the cursor: {error}");
        }
    }
}

/// Reads the tables every `interval` and draws them until `q` or Ctrl-C.
pub fn run(tables: &Tables, instance: &Instance, interval: Duration) -> Result<(), TopError> {
    // Before the terminal is set up, so that a setup failing half-way is undone too.
    let _restore = Restore;
    let mut terminal = ratatui::try_init()?;
    let title = view::Title { instance: &instance.name, interval_ms: interval.as_millis() as u64 };
    let mut top = Top::default();
    let mut next_read = Instant::now();
    loop {
        if Instant::now() >= next_read {
            let snapshot = Snapshot::read(tables)?;
            let congestion = cc::snapshot(instance)?;
            top.update(&snapshot, &congestion, cc::monotonic_ns());
            next_read = Instant::now() + interval;
        }
        terminal.draw(|frame| view::draw(frame, &top, &title))?;
        // Keys (and resizes) redraw at once; otherwise the next read does.
        if event::poll(next_read.saturating_duration_since(Instant::now()))?
            && let Event::Key(press) = event::read()?
            && let Some(key) = key(press)
            && top.handle(key) == Action::Quit
        {
            return Ok(());
        }
    }
}

fn key(event: KeyEvent) -> Option<Key> {
    if event.kind != KeyEventKind::Press {
        return None;
    }
    Some(match event.code {
        KeyCode::Char('c') if event.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_c_interrupts_and_only_presses_count() {
        let press = |code, modifiers| KeyEvent::new(code, modifiers);
        assert_eq!(key(press(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Key::Interrupt));
        assert_eq!(key(press(KeyCode::Char('c'), KeyModifiers::NONE)), Some(Key::Char('c')));
        assert_eq!(key(press(KeyCode::Esc, KeyModifiers::NONE)), Some(Key::Esc));
        let mut release = press(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(key(release), None);
        assert_eq!(key(press(KeyCode::F(1), KeyModifiers::NONE)), None);
    }
}
