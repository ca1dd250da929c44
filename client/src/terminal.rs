//! The client's own terminal: turning echo off for password reads, and
//! always turning it back on.

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
