//! Keys from the terminal while it is raw, and the client's own escapes.
//!
//! In raw mode the terminal sends no signals: Ctrl-C and Ctrl-\ are keys
//! like any other. If the app's keys were read only while the app asked for
//! one, a server that put the terminal in raw mode and never read a key
//! would leave the user no way out but killing the client from elsewhere.
//! So while the terminal is raw, one thread reads every key: the app's go
//! to a bounded queue that `read_key` takes from, and the client keeps an
//! escape of its own that the server cannot hold off, as ssh does: `~.`
//! right after Enter (or as the first keys of raw mode) disconnects, `~?`
//! lists the escapes, `~~` sends one `~`. In a resumable session Ctrl-\
//! detaches. When raw mode ends, keys not read yet are dropped, as the
//! terminal itself would drop them on a mode change with a flush.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use terminalwire_protocol::frame::Key;
use tokio::sync::Notify;

/// Keys kept for the app while it does not read them; later ones are
/// dropped (the terminal's own input queue is of this order).
pub const MAX_QUEUED_KEYS: usize = 1024;

/// The text `~?` shows (raw mode: `\r\n` line ends).
pub const ESCAPE_HELP: &str = "\r\nterminalwire escapes (after Enter):\r\n\
    \x20 ~.  disconnect\r\n\
    \x20 ~?  this list\r\n\
    \x20 ~~  send ~\r\n";

/// What a key typed in raw mode does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A key for the app.
    Key(Key),
    /// `~.`: the user wants out of the session now.
    Disconnect,
    /// Ctrl-\ in a resumable session: detach.
    Detach,
    /// `~?`: show the escapes.
    Help,
}

/// Recognizes the escapes in the keys typed in raw mode.
#[derive(Debug, Clone)]
pub struct Escapes {
    /// The last key was Enter, or none was typed yet.
    at_line_start: bool,
    /// A `~` at a line's start, held until the next key says what it is.
    tilde_held: bool,
}

impl Default for Escapes {
    fn default() -> Self {
        Escapes {
            at_line_start: true,
            tilde_held: false,
        }
    }
}

fn plain(key: &Key, text: &str) -> bool {
    key.key == text && !key.ctrl && !key.alt
}

/// Ctrl-\, the key that detaches from a session (terminals send byte 0x1c,
/// which some report as Ctrl-4).
pub fn is_detach_key(key: &Key) -> bool {
    key.ctrl && (key.key == "\\" || key.key == "4")
}

impl Escapes {
    /// What `key` does; `detach_key` says whether Ctrl-\ detaches.
    pub fn feed(&mut self, key: Key, detach_key: bool) -> Vec<Action> {
        let mut actions = Vec::with_capacity(2);
        if std::mem::take(&mut self.tilde_held) {
            if plain(&key, ".") {
                return vec![Action::Disconnect];
            }
            if plain(&key, "?") {
                // Another escape may follow at once.
                self.at_line_start = true;
                return vec![Action::Help];
            }
            actions.push(Action::Key(tilde()));
            if plain(&key, "~") {
                self.at_line_start = false;
                return actions;
            }
        }
        if detach_key && is_detach_key(&key) {
            actions.push(Action::Detach);
        } else if self.at_line_start && plain(&key, "~") {
            self.tilde_held = true;
        } else {
            self.at_line_start = key.key == "enter" && !key.ctrl && !key.alt;
            actions.push(Action::Key(key));
        }
        actions
    }
}

fn tilde() -> Key {
    Key {
        key: "~".to_owned(),
        ctrl: false,
        alt: false,
        shift: false,
    }
}

/// The keys read while the terminal is raw, shared by the reading thread
/// and the session.
pub struct KeyPump {
    state: Mutex<State>,
    /// The reading thread waits here while the terminal is not raw.
    raw_began: Condvar,
    /// The reading thread stopped reading (raw mode ended, or it failed).
    stopped: Condvar,
    /// Wakes the reading thread from its wait for the terminal when raw
    /// mode ends, so that it stops reading at once: input typed after that
    /// is for a line read or a prompt, not for it.
    wake: Option<(OwnedFd, OwnedFd)>,
    /// A key was queued, or reading failed.
    queued: Notify,
    disconnect: Notify,
    detach: Notify,
}

#[derive(Default)]
struct State {
    raw: bool,
    /// Counts raw periods, so keys read in one are not given in the next.
    period: u64,
    queue: VecDeque<Key>,
    /// Ctrl-\ detaches instead of going to the app.
    detach_key: bool,
    /// Why reading keys failed (the terminal went away); later reads fail.
    failed: Option<String>,
    thread: bool,
    /// The reading thread is reading (or waiting for) the terminal.
    reading: bool,
}

/// How long the end of raw mode waits for the reading thread to stop (it
/// wakes at once; this only bounds a thread stuck writing `~?`'s list).
const STOP_WAIT: Duration = Duration::from_millis(200);

static PUMP: OnceLock<KeyPump> = OnceLock::new();

/// The process's key pump (there is one terminal).
pub fn pump() -> &'static KeyPump {
    PUMP.get_or_init(|| KeyPump {
        state: Mutex::new(State::default()),
        raw_began: Condvar::new(),
        stopped: Condvar::new(),
        wake: wake_pipe().ok(),
        queued: Notify::new(),
        disconnect: Notify::new(),
        detach: Notify::new(),
    })
}

fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe()?;
    rustix::io::ioctl_fionbio(&read, true)?;
    rustix::io::ioctl_fionbio(&write, true)?;
    Ok((read, write))
}

impl KeyPump {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The terminal went raw (`true`) or back (`false`); called by the
    /// terminal's owner with each change. The reading thread starts with
    /// the first raw mode; when raw mode ends, this returns once it stopped
    /// reading.
    pub(crate) fn set_raw(&'static self, on: bool) {
        let mut state = self.state();
        if state.raw == on {
            return;
        }
        state.raw = on;
        state.period += 1;
        if !on {
            state.queue.clear();
            if let Some((_, write)) = &self.wake {
                // A full pipe wakes the thread as well.
                let _ = rustix::io::write(write, &[0]);
            }
            let (_state, _) = self
                .stopped
                .wait_timeout_while(state, STOP_WAIT, |state| state.reading)
                .unwrap_or_else(PoisonError::into_inner);
            return;
        }
        self.raw_began.notify_all();
        if state.thread {
            return;
        }
        let Some((wake, _)) = &self.wake else {
            state.failed = Some("cannot read keys: no wake-up pipe".to_owned());
            self.queued.notify_one();
            return;
        };
        let started = std::thread::Builder::new()
            .name("terminalwire-keys".to_owned())
            .spawn(move || self.read_keys(wake.as_fd()));
        match started {
            Ok(_) => state.thread = true,
            Err(error) => {
                state.failed = Some(format!("cannot start reading keys: {error}"));
                self.queued.notify_one();
            }
        }
    }

    /// Whether Ctrl-\ detaches (a resumable session) or goes to the app.
    pub fn set_detach_key(&self, on: bool) {
        self.state().detach_key = on;
    }

    /// The next key for the app, in the order typed.
    pub async fn next_key(&self) -> io::Result<Key> {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(key) = state.queue.pop_front() {
                    return Ok(key);
                }
                if let Some(failed) = &state.failed {
                    return Err(io::Error::other(failed.clone()));
                }
            }
            queued.await;
        }
    }

    /// Completes when the user typed `~.`.
    pub async fn disconnect_typed(&self) {
        self.disconnect.notified().await;
    }

    /// Completes when the user typed Ctrl-\ in a resumable session.
    pub async fn detach_typed(&self) {
        self.detach.notified().await;
    }

    /// The reading thread: reads keys while the terminal is raw, and waits
    /// while it is not.
    fn read_keys(&self, wake: BorrowedFd<'_>) {
        loop {
            let period = {
                let mut state = self.state();
                while !state.raw {
                    state = self
                        .raw_began
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                state.reading = true;
                state.period
            };
            let read = self.read_period(period, wake);
            let mut state = self.state();
            state.reading = false;
            self.stopped.notify_all();
            if let Err(error) = read {
                state.failed = Some(format!("cannot read keys: {error}"));
                self.queued.notify_one();
                return;
            }
        }
    }

    /// Reads keys until the raw period `period` ends.
    fn read_period(&self, period: u64, wake: BorrowedFd<'_>) -> io::Result<()> {
        use rustix::event::{PollFd, PollFlags};
        let mut escapes = Escapes::default();
        let still_raw = |state: &State| state.raw && state.period == period;
        let stdin = rustix::stdio::stdin();
        loop {
            let mut fds = [
                PollFd::new(&stdin, PollFlags::IN),
                PollFd::from_borrowed_fd(wake, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(error) => return Err(error.into()),
            }
            let terminal = fds[0].revents();
            // Drain the wake-ups; what they say is in the state.
            let mut drained = [0u8; 64];
            while matches!(rustix::io::read(wake, &mut drained), Ok(n) if n > 0) {}
            if !still_raw(&self.state()) {
                return Ok(());
            }
            if terminal.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                return Err(io::Error::other("the terminal was closed"));
            }
            if terminal.is_empty() {
                continue;
            }
            // crossterm reads what the terminal has and may keep parsed
            // events of it: take them all before waiting again.
            while crossterm::event::poll(Duration::ZERO)? {
                let event = crossterm::event::read()?;
                let Some(key) = key_of(&event) else { continue };
                let mut state = self.state();
                if !still_raw(&state) {
                    // Typed as raw mode ended: dropped with the others.
                    return Ok(());
                }
                for action in escapes.feed(key, state.detach_key) {
                    match action {
                        Action::Key(key) => {
                            if state.queue.len() < MAX_QUEUED_KEYS {
                                state.queue.push_back(key);
                                self.queued.notify_one();
                            }
                        }
                        Action::Disconnect => self.disconnect.notify_one(),
                        Action::Detach => self.detach.notify_one(),
                        Action::Help => {
                            let mut stderr = io::stderr().lock();
                            let _ = stderr.write_all(ESCAPE_HELP.as_bytes());
                            let _ = stderr.flush();
                        }
                    }
                }
            }
        }
    }
}

/// The key a terminal event is, if it is a key press the protocol names.
pub fn key_of(event: &crossterm::event::Event) -> Option<Key> {
    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
    let Event::Key(event) = event else {
        return None;
    };
    if event.kind == KeyEventKind::Release {
        return None;
    }
    let named = |name: &str| Some(name.to_owned());
    let key = match event.code {
        KeyCode::Char(c) => Some(c.to_string()),
        KeyCode::Enter => named("enter"),
        KeyCode::Tab => named("tab"),
        KeyCode::BackTab => named("tab"),
        KeyCode::Backspace => named("backspace"),
        KeyCode::Esc => named("esc"),
        KeyCode::Up => named("up"),
        KeyCode::Down => named("down"),
        KeyCode::Left => named("left"),
        KeyCode::Right => named("right"),
        KeyCode::Home => named("home"),
        KeyCode::End => named("end"),
        KeyCode::PageUp => named("page_up"),
        KeyCode::PageDown => named("page_down"),
        KeyCode::Delete => named("delete"),
        KeyCode::Insert => named("insert"),
        KeyCode::F(n) => Some(format!("f{n}")),
        _ => None,
    }?;
    Some(Key {
        key,
        ctrl: event.modifiers.contains(KeyModifiers::CONTROL),
        alt: event.modifiers.contains(KeyModifiers::ALT),
        shift: event.modifiers.contains(KeyModifiers::SHIFT) || event.code == KeyCode::BackTab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Key {
        Key {
            key: text.to_owned(),
            ctrl: false,
            alt: false,
            shift: false,
        }
    }

    fn ctrl(text: &str) -> Key {
        Key {
            ctrl: true,
            ..key(text)
        }
    }

    /// Feeds `typed` and returns every action, in order.
    fn typed(escapes: &mut Escapes, typed: &[Key], detach_key: bool) -> Vec<Action> {
        typed
            .iter()
            .flat_map(|k| escapes.feed(k.clone(), detach_key))
            .collect()
    }

    #[test]
    fn tilde_dot_disconnects_at_the_start_and_after_enter_only() {
        let mut escapes = Escapes::default();
        assert_eq!(
            typed(&mut escapes, &[key("~"), key(".")], false),
            [Action::Disconnect]
        );
        let mut escapes = Escapes::default();
        assert_eq!(
            typed(&mut escapes, &[key("a"), key("~"), key(".")], false),
            [
                Action::Key(key("a")),
                Action::Key(key("~")),
                Action::Key(key("."))
            ]
        );
        assert_eq!(
            typed(&mut escapes, &[key("enter"), key("~"), key(".")], false),
            [Action::Key(key("enter")), Action::Disconnect]
        );
    }

    #[test]
    fn a_held_tilde_goes_to_the_app_before_any_other_key() {
        let mut escapes = Escapes::default();
        assert_eq!(
            typed(&mut escapes, &[key("~"), key("x")], false),
            [Action::Key(key("~")), Action::Key(key("x"))]
        );
        // `~~` is one `~`, and what follows is not at a line's start.
        let mut escapes = Escapes::default();
        assert_eq!(
            typed(
                &mut escapes,
                &[key("~"), key("~"), key("~"), key(".")],
                false
            ),
            [
                Action::Key(key("~")),
                Action::Key(key("~")),
                Action::Key(key("."))
            ]
        );
        // Enter after a held tilde: both go, and a new line starts.
        let mut escapes = Escapes::default();
        assert_eq!(
            typed(
                &mut escapes,
                &[key("~"), key("enter"), key("~"), key(".")],
                false
            ),
            [
                Action::Key(key("~")),
                Action::Key(key("enter")),
                Action::Disconnect
            ]
        );
        // Ctrl-. is not the escape.
        let mut escapes = Escapes::default();
        assert_eq!(
            typed(&mut escapes, &[key("~"), ctrl(".")], false),
            [Action::Key(key("~")), Action::Key(ctrl("."))]
        );
    }

    #[test]
    fn help_keeps_the_line_start_for_the_next_escape() {
        let mut escapes = Escapes::default();
        assert_eq!(
            typed(
                &mut escapes,
                &[key("~"), key("?"), key("~"), key(".")],
                false
            ),
            [Action::Help, Action::Disconnect]
        );
    }

    #[test]
    fn ctrl_backslash_detaches_only_when_the_session_can_detach() {
        let mut escapes = Escapes::default();
        assert_eq!(
            typed(&mut escapes, &[ctrl("\\"), ctrl("4")], true),
            [Action::Detach, Action::Detach]
        );
        assert_eq!(
            typed(&mut escapes, &[ctrl("\\")], false),
            [Action::Key(ctrl("\\"))]
        );
    }
}
