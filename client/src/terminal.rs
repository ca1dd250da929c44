//! The client's own terminal: echo off for password reads, raw mode and key
//! reading for the app, and always turning them back off.

use std::io;

use rustix::termios::{self, LocalModes, OptionalActions, Termios};

/// Echo is off on stdin's terminal while this lives; dropping it restores
/// the previous settings.
#[derive(Debug)]
pub struct EchoOff {
    saved: Termios,
}

impl EchoOff {
    /// Turns echo off on the process's stdin terminal.
    pub fn stdin() -> io::Result<EchoOff> {
        let fd = rustix::stdio::stdin();
        let saved = termios::tcgetattr(fd)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        // Keep echoing the newline so the cursor moves on as usual.
        quiet.local_modes.insert(LocalModes::ECHONL);
        termios::tcsetattr(fd, OptionalActions::Flush, &quiet)?;
        Ok(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// Whether this client has put the terminal in raw mode; restored on every
/// exit path (end of session, signals, panics).
static RAW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Puts the terminal in raw mode (every key to the app, Ctrl-C included).
pub fn enter_raw_mode() -> io::Result<()> {
    crossterm::terminal::enable_raw_mode()?;
    RAW.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// Back to the cooked mode the terminal had before.
pub fn leave_raw_mode() -> io::Result<()> {
    if RAW.swap(false, std::sync::atomic::Ordering::SeqCst) {
        crossterm::terminal::disable_raw_mode()?;
    }
    Ok(())
}

/// True while raw mode is on.
pub fn is_raw() -> bool {
    RAW.load(std::sync::atomic::Ordering::SeqCst)
}

/// Restores the terminal if a panic unwinds through the client.
pub fn restore_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = leave_raw_mode();
        previous(info);
    }));
}

/// Waits for one key press (the terminal must be in raw mode).
pub fn read_key_blocking() -> io::Result<terminalwire_protocol::frame::Key> {
    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
    loop {
        let Event::Key(event) = crossterm::event::read()? else {
            continue;
        };
        if event.kind == KeyEventKind::Release {
            continue;
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
        };
        let Some(key) = key else { continue };
        return Ok(terminalwire_protocol::frame::Key {
            key,
            ctrl: event.modifiers.contains(KeyModifiers::CONTROL),
            alt: event.modifiers.contains(KeyModifiers::ALT),
            shift: event.modifiers.contains(KeyModifiers::SHIFT) || event.code == KeyCode::BackTab,
        });
    }
}

/// Ctrl-\, the key that detaches from a session (terminals send byte 0x1c,
/// which some report as Ctrl-4).
pub fn is_detach_key(key: &terminalwire_protocol::frame::Key) -> bool {
    key.ctrl && (key.key == "\\" || key.key == "4")
}
