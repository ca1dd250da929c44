//! The terminal's input: one reader of the terminal for the whole client,
//! the keys the app reads in raw mode, and the client's own escapes there.
//!
//! In raw mode the terminal sends no signals: Ctrl-C and Ctrl-\ are keys
//! like any other. A server that put the terminal in raw mode and never
//! read a key (or kept a byte read waiting, whose reader took every key)
//! left the user no way out but killing the client from elsewhere. So one
//! thread is the only reader of the terminal: while the terminal is raw it
//! reads all the terminal sends, and in cooked mode one line for each read
//! of stdin the app makes (the rest stays in the terminal for whoever reads
//! next: a pager, the shell), into one bounded buffer. The app's byte and
//! line reads ([`TtyStdin`], one line at a time) and its key reads
//! ([`KeyPump::next_key`], decoded here) take from that buffer, in the
//! order typed, across mode changes. In raw mode the client
//! keeps escapes of its own that the server cannot hold off, as ssh does
//! ([`Escapes`]): `~.` right after Enter (or as the first keys) disconnects,
//! `~?` lists the escapes, `~~` sends one `~`; in a resumable session
//! Ctrl-\ detaches. The thread stops reading at once while the client's own
//! prompt is on screen (it reads `/dev/tty` itself), and its buffer is
//! emptied then, as the prompt flushes what was typed ahead.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use terminalwire_protocol::frame::Key;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;

use crate::last_resort;

/// Bytes kept for the app while it does not read them; later ones are
/// dropped (a terminal's own input queue holds 4 KiB).
pub const MAX_BUFFERED: usize = 1 << 20;

/// How long a lone ESC waits for the rest of a key's sequence before it is
/// the Esc key.
pub const ESC_WAIT: Duration = Duration::from_millis(50);

/// How long the end of raw mode, or a prompt of the client's own, waits for
/// the reading thread to stop (it wakes at once; this bounds a stuck one).
const STOP_WAIT: Duration = Duration::from_millis(200);

/// The text `~?` shows (raw mode: `\r\n` line ends).
pub const ESCAPE_HELP: &str = "\r\nterminalwire escapes (after Enter):\r\n\
    \x20 ~.  disconnect\r\n\
    \x20 ~?  this list\r\n\
    \x20 ~~  send ~\r\n";

/// Ctrl-\ as the terminal sends it.
const CTRL_BACKSLASH: u8 = 0x1c;
const ESC: u8 = 0x1b;
/// Longest terminal sequence (a reply to a query, say) kept whole.
const MAX_SEQUENCE: usize = 4096;

/// An escape of the client's own, typed in raw mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `~.`: the user wants out of the session now.
    Disconnect,
    /// Ctrl-\ in a resumable session: detach.
    Detach,
    /// `~?`: show the escapes.
    Help,
}

/// Where the escape recogniser is in a terminal sequence (`ESC ...`, or an
/// 8-bit C1 introducer). The bytes of a sequence (a key such as an arrow,
/// a mouse report, or the terminal's reply to a query the server sent) pass
/// through and change nothing: a server cannot break the user's `Enter ~ .`
/// by making the terminal answer. A line end always ends a sequence (no
/// reply has one): Esc then `P`, typed, must not hide the next escape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sequence {
    None,
    /// After ESC.
    Esc,
    /// `ESC [` parameters, up to a final byte.
    Csi,
    /// `ESC ]` or `ESC P` (a string), up to BEL or ST.
    Text,
    /// ESC inside a string: `\` ends it.
    TextEsc,
    /// `ESC O`: one more byte.
    Ss3,
    /// An X10 mouse report (`ESC [ M`): this many raw bytes more.
    Mouse(u8),
}

/// 8-bit introducers: SS3, DCS, CSI, OSC.
const C1_SS3: u8 = 0x8f;
const C1_DCS: u8 = 0x90;
const C1_CSI: u8 = 0x9b;
const C1_OSC: u8 = 0x9d;
/// 8-bit string terminator.
const C1_ST: u8 = 0x9c;

/// Recognises the escapes in the bytes typed in raw mode.
#[derive(Debug, Clone)]
pub struct Escapes {
    /// The last key was Enter, or none was typed yet.
    at_line_start: bool,
    /// A `~` at a line's start, and the terminal sequences after it, held
    /// until the next key says what the `~` is.
    held: Vec<u8>,
    sequence: Sequence,
    /// No parameter in the CSI sequence so far (`ESC [ M` is a mouse report).
    csi_empty: bool,
    /// The first bytes of a UTF-8 character not complete yet.
    pending: Vec<u8>,
    /// Continuation bytes left in the current UTF-8 character, and its
    /// first byte: an 8-bit control is one on its own or as `C2 xx`, never
    /// a byte inside another character.
    utf8_left: u8,
    utf8_lead: u8,
    /// The parameters of the CSI sequence so far (its first few bytes).
    csi_params: Vec<u8>,
    /// Inside a bracketed paste (`CSI 200 ~` .. `CSI 201 ~`, which only
    /// the terminal writes): pasted text is the app's, a line in it that
    /// starts with `~.` included. Bytes left before the paste is taken for
    /// ended, should the terminal never say so.
    paste_left: usize,
}

/// Longest bracketed paste whose end is waited for.
const MAX_PASTE: usize = 16 << 20;

impl Default for Escapes {
    fn default() -> Self {
        Escapes {
            at_line_start: true,
            held: Vec::new(),
            sequence: Sequence::None,
            csi_empty: false,
            pending: Vec::new(),
            utf8_left: 0,
            utf8_lead: 0,
            csi_params: Vec::new(),
            paste_left: 0,
        }
    }
}

impl Escapes {
    /// Filters `bytes`: what is for the app goes to `out`; the escapes
    /// typed are returned in order. `detach_key`: Ctrl-\ detaches.
    pub fn feed(&mut self, bytes: &[u8], detach_key: bool, out: &mut Vec<u8>) -> Vec<Escape> {
        let mut escapes = Vec::new();
        for &byte in bytes {
            if let Some(escape) = self.feed_byte(byte, detach_key, out) {
                escapes.push(escape);
            }
        }
        // Terminals write whole characters: a lead byte left at the end of
        // a read is a byte of another encoding (Latin-1, 8-bit Meta), for
        // the app now. A lone `C2` may still be an 8-bit introducer.
        if !self.pending.is_empty() && self.pending != [0xc2] {
            self.flush_pending(out);
            self.utf8_left = 0;
        }
        escapes
    }

    /// Gives up a held `~` and a partial character (raw mode ended).
    pub fn release(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        out.append(&mut self.pending);
        self.paste_left = 0;
    }

    /// A line was typed in cooked mode: the next key starts a line.
    pub fn line_ended(&mut self) {
        self.at_line_start = true;
        self.paste_left = 0;
        self.sequence = Sequence::None;
        self.pending.clear();
        self.utf8_left = 0;
    }

    /// Drops a held `~` (what was typed ahead is flushed).
    pub fn forget_held(&mut self) {
        self.held.clear();
        self.pending.clear();
    }

    /// Where a byte of a sequence goes: behind a held `~`, or out.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.held.is_empty() {
            out.extend_from_slice(bytes);
        } else {
            self.held.extend_from_slice(bytes);
            if self.held.len() > MAX_SEQUENCE {
                out.append(&mut self.held);
            }
        }
    }

    fn feed_byte(&mut self, byte: u8, detach_key: bool, out: &mut Vec<u8>) -> Option<Escape> {
        self.paste_left = self.paste_left.saturating_sub(1);
        let continuation = self.utf8_left > 0 && (0x80..=0xbf).contains(&byte);
        let c1 = (0x80..=0x9f).contains(&byte) && (!continuation || self.utf8_lead == 0xc2);
        if continuation {
            self.utf8_left -= 1;
        } else {
            self.utf8_lead = byte;
            self.utf8_left = u8::try_from(utf8_len(byte) - 1).unwrap_or(0);
        }
        // Keys no reply holds end whatever looked like a sequence: Esc
        // then `P` (vim's paste), typed, must not hide the next escape.
        if matches!(byte, b'\r' | b'\n' | CTRL_BACKSLASH) {
            self.sequence = Sequence::None;
        }
        if detach_key && byte == CTRL_BACKSLASH && self.paste_left == 0 {
            // What waited goes to the app first: a detach may be refused,
            // and a `~` held over it would start an escape later.
            self.flush_pending(out);
            out.append(&mut self.held);
            self.at_line_start = false;
            return Some(Escape::Detach);
        }
        if self.sequence != Sequence::None {
            if matches!(self.sequence, Sequence::Mouse(_)) {
                // A report's raw bytes are no characters.
                self.utf8_left = 0;
            }
            if self.sequence == Sequence::Csi {
                self.bracket_paste(byte);
            }
            self.sequence = self.next_in_sequence(byte, c1);
            self.emit(&[byte], out);
            return None;
        }
        if byte == ESC || (c1 && matches!(byte, C1_SS3 | C1_DCS | C1_CSI | C1_OSC)) {
            if continuation {
                // A UTF-8 encoded introducer: its pending `C2` goes first.
                let pending = std::mem::take(&mut self.pending);
                self.emit(&pending, out);
            } else {
                self.flush_pending(out);
            }
            self.sequence = match byte {
                ESC => Sequence::Esc,
                C1_CSI => {
                    self.csi_empty = true;
                    self.csi_params.clear();
                    Sequence::Csi
                }
                C1_SS3 => Sequence::Ss3,
                _ => Sequence::Text,
            };
            self.emit(&[byte], out);
            return None;
        }
        if !continuation {
            self.flush_pending(out);
        }
        self.pending.push(byte);
        if self.utf8_left > 0 {
            return None;
        }
        let typed = std::mem::take(&mut self.pending);
        self.typed(&typed, out)
    }

    /// A character cut short (or a lone byte of another encoding): its
    /// bytes are typed as they are. They are never `.`, `?` or `~`.
    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            let cut = std::mem::take(&mut self.pending);
            self.typed(&cut, out);
        }
    }

    /// A whole character (or a stray byte) typed.
    fn typed(&mut self, typed: &[u8], out: &mut Vec<u8>) -> Option<Escape> {
        if !self.held.is_empty() {
            match typed {
                b"." => {
                    self.held.clear();
                    return Some(Escape::Disconnect);
                }
                b"?" => {
                    // Another escape may follow at once.
                    self.held.clear();
                    self.at_line_start = true;
                    return Some(Escape::Help);
                }
                b"~" => {
                    // `~~` is one `~`.
                    out.append(&mut self.held);
                    self.at_line_start = false;
                    return None;
                }
                _ => out.append(&mut self.held),
            }
        }
        if self.at_line_start && typed == b"~" && self.paste_left == 0 {
            self.held.extend_from_slice(typed);
            return None;
        }
        self.at_line_start = typed == b"\r" || typed == b"\n";
        out.extend_from_slice(typed);
        None
    }

    /// Follows a CSI sequence's bytes for the marks of a bracketed paste.
    fn bracket_paste(&mut self, byte: u8) {
        if (0x20..=0x3f).contains(&byte) {
            if self.csi_params.len() < 8 {
                self.csi_params.push(byte);
            }
            return;
        }
        match (byte, self.csi_params.as_slice()) {
            (b'~', b"200") => self.paste_left = MAX_PASTE,
            (b'~', b"201") => self.paste_left = 0,
            _ => {}
        }
        self.csi_params.clear();
    }

    fn next_in_sequence(&mut self, byte: u8, c1: bool) -> Sequence {
        match (self.sequence, byte) {
            (Sequence::Esc, b'[') => {
                self.csi_empty = true;
                self.csi_params.clear();
                Sequence::Csi
            }
            (Sequence::Esc, b']' | b'P') => Sequence::Text,
            (Sequence::Esc, b'O') => Sequence::Ss3,
            // ESC ESC: the second may start a sequence of its own.
            (Sequence::Esc, ESC) => Sequence::Esc,
            // Alt and a key.
            (Sequence::Esc, _) => Sequence::None,
            (Sequence::Csi, b'M') if self.csi_empty => Sequence::Mouse(3),
            (Sequence::Csi, 0x20..=0x3f) => {
                self.csi_empty = false;
                Sequence::Csi
            }
            (Sequence::Csi, _) => Sequence::None,
            (Sequence::Mouse(left), _) if left > 1 => Sequence::Mouse(left - 1),
            (Sequence::Mouse(_), _) => Sequence::None,
            (Sequence::Text, 0x07) => Sequence::None,
            (Sequence::Text, C1_ST) if c1 => Sequence::None,
            (Sequence::Text, ESC) => Sequence::TextEsc,
            (Sequence::Text, _) => Sequence::Text,
            (Sequence::TextEsc, b'\\') => Sequence::None,
            (Sequence::TextEsc, _) => Sequence::Text,
            (Sequence::Ss3 | Sequence::None, _) => Sequence::None,
        }
    }
}

/// What [`decode_key`] found at the start of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A key, and how many bytes it took.
    Key(Key, usize),
    /// Bytes that are no key the protocol names (an unknown sequence, a
    /// terminal's reply): skip them.
    Skip(usize),
    /// The start of a key whose rest has not come yet.
    Incomplete,
}

fn key(name: &str, ctrl: bool, alt: bool, shift: bool) -> Key {
    Key {
        key: name.to_owned(),
        ctrl,
        alt,
        shift,
    }
}

/// Decodes the key at the start of `input` (not empty). With `complete`,
/// nothing more is coming soon: a lone ESC is the Esc key.
pub fn decode_key(input: &[u8], complete: bool) -> Decoded {
    let Some(&first) = input.first() else {
        return Decoded::Incomplete;
    };
    let esc = || Decoded::Key(key("esc", false, false, false), 1);
    match first {
        C1_CSI => return decode_csi(input, 1, complete).unwrap_or(Decoded::Skip(1)),
        C1_OSC | C1_DCS => return skip_text(input, 1, complete).unwrap_or(Decoded::Skip(1)),
        C1_SS3 => {
            return match input.get(1) {
                Some(&last) => {
                    decode_ss3(last).map_or(Decoded::Skip(1), |key| Decoded::Key(key, 2))
                }
                None if complete => Decoded::Skip(1),
                None => Decoded::Incomplete,
            };
        }
        _ => {}
    }
    if first != ESC {
        return match decode_plain(input) {
            Some((key, len)) => Decoded::Key(key, len),
            None if input.len() < utf8_len(first) && !complete => Decoded::Incomplete,
            None => Decoded::Skip(1),
        };
    }
    let Some(&second) = input.get(1) else {
        return if complete {
            Decoded::Key(key("esc", false, false, false), 1)
        } else {
            Decoded::Incomplete
        };
    };
    // A sequence that turns out not to be one (a line end inside it, no
    // end in sight): Esc was typed, and what follows are keys of their own.
    match second {
        b'[' => decode_csi(input, 2, complete).unwrap_or_else(esc),
        b'O' => match input.get(2) {
            None if complete => Decoded::Key(key("O", false, true, true), 2),
            None => Decoded::Incomplete,
            // Or Alt-O, then a key of its own.
            Some(&third) => match decode_ss3(third) {
                Some(key) => Decoded::Key(key, 3),
                None => Decoded::Key(key("O", false, true, true), 2),
            },
        },
        b']' | b'P' => skip_text(input, 2, complete).unwrap_or_else(esc),
        // ESC ESC: Esc, then whatever the second starts.
        ESC => esc(),
        _ => match decode_plain(&input[1..]) {
            Some((mut key, len)) => {
                key.alt = true;
                Decoded::Key(key, len + 1)
            }
            None if input.len() - 1 < utf8_len(second) && !complete => Decoded::Incomplete,
            None => Decoded::Skip(2),
        },
    }
}

/// The key an SS3 sequence (`ESC O x`) ending in `last` is.
fn decode_ss3(last: u8) -> Option<Key> {
    lettered_key(last).map(|name| key(name, false, false, false))
}

/// The key a letter ends an SS3 or CSI sequence with: arrows, Home, End,
/// F1–F4.
fn lettered_key(last: u8) -> Option<&'static str> {
    Some(match last {
        b'P' => "f1",
        b'Q' => "f2",
        b'R' => "f3",
        b'S' => "f4",
        b'A' => "up",
        b'B' => "down",
        b'C' => "right",
        b'D' => "left",
        b'H' => "home",
        b'F' => "end",
        _ => return None,
    })
}

/// A key that is not a sequence: a control byte or a character.
fn decode_plain(input: &[u8]) -> Option<(Key, usize)> {
    let first = *input.first()?;
    let control = |name: &str| Some((key(name, false, false, false), 1));
    match first {
        b'\r' | b'\n' => control("enter"),
        b'\t' => control("tab"),
        0x7f | 0x08 => control("backspace"),
        0x00 => Some((key(" ", true, false, false), 1)),
        0x01..=0x1a => Some((
            key(
                &char::from(b'a' + first - 1).to_string(),
                true,
                false,
                false,
            ),
            1,
        )),
        CTRL_BACKSLASH => Some((key("\\", true, false, false), 1)),
        0x1d => Some((key("]", true, false, false), 1)),
        0x1e => Some((key("^", true, false, false), 1)),
        0x1f => Some((key("_", true, false, false), 1)),
        _ => {
            let len = utf8_len(first);
            let text = std::str::from_utf8(input.get(..len)?).ok()?;
            let shift = text.chars().all(char::is_uppercase);
            Some((key(text, false, false, shift), len))
        }
    }
}

/// The length of the UTF-8 character `first` starts (1 for a stray byte).
fn utf8_len(first: u8) -> usize {
    match first {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// `ESC [ parameters final` (`start`: where the parameters begin, after
/// `ESC [` or 8-bit CSI): arrows, Home and End, Insert, Delete, page keys,
/// F1–F12 and Shift-Tab, with their modifiers; mouse reports are skipped.
/// `None` when it is no sequence after all.
fn decode_csi(input: &[u8], start: usize, complete: bool) -> Option<Decoded> {
    let Some(end) = input[start..]
        .iter()
        .position(|byte| !(0x20..=0x3f).contains(byte))
        .map(|at| at + start)
    else {
        return if complete || input.len() > MAX_SEQUENCE {
            None
        } else {
            Some(Decoded::Incomplete)
        };
    };
    if !(0x40..=0x7e).contains(&input[end]) {
        return None;
    }
    let len = end + 1;
    if input[end] == b'M' && end == start {
        // An X10 mouse report: three raw bytes follow.
        return Some(if input.len() >= len + 3 {
            Decoded::Skip(len + 3)
        } else if complete {
            Decoded::Skip(input.len())
        } else {
            Decoded::Incomplete
        });
    }
    let Ok(parameters) = std::str::from_utf8(&input[start..end]) else {
        return Some(Decoded::Skip(len));
    };
    let mut numbers = parameters.split(';').map(|n| n.parse::<u32>().unwrap_or(1));
    let first = numbers.next().unwrap_or(1);
    // xterm's modifier parameter: 1 + (shift 1, alt 2, ctrl 4).
    let modifiers = numbers.next().unwrap_or(1).saturating_sub(1);
    let name = match input[end] {
        b'Z' => return Some(Decoded::Key(key("tab", false, false, true), len)),
        b'~' => match first {
            1 | 7 => "home",
            4 | 8 => "end",
            2 => "insert",
            3 => "delete",
            5 => "page_up",
            6 => "page_down",
            11 => "f1",
            12 => "f2",
            13 => "f3",
            14 => "f4",
            15 => "f5",
            17 => "f6",
            18 => "f7",
            19 => "f8",
            20 => "f9",
            21 => "f10",
            23 => "f11",
            24 => "f12",
            _ => return Some(Decoded::Skip(len)),
        },
        last => match lettered_key(last) {
            Some(name) => name,
            None => return Some(Decoded::Skip(len)),
        },
    };
    Some(Decoded::Key(
        key(
            name,
            modifiers & 4 != 0,
            modifiers & 2 != 0,
            modifiers & 1 != 0,
        ),
        len,
    ))
}

/// An `ESC ]` or `ESC P` string (or 8-bit OSC or DCS; `start`: after the
/// introducer) ended by BEL or ST, skipped whole; `None` when it is no
/// string after all (a line end in it, or no end in sight).
fn skip_text(input: &[u8], start: usize, complete: bool) -> Option<Decoded> {
    let mut at = start;
    while at < input.len() {
        match input[at] {
            0x07 | C1_ST => return Some(Decoded::Skip(at + 1)),
            ESC if input.get(at + 1) == Some(&b'\\') => return Some(Decoded::Skip(at + 2)),
            b'\r' | b'\n' => return None,
            _ => at += 1,
        }
    }
    if input.len() > MAX_SEQUENCE && start == 1 {
        // An 8-bit reply too long to be typed: dropped, not turned into
        // keys. (After ESC it may be Alt-P and a paste: Esc, then keys.)
        Some(Decoded::Skip(input.len()))
    } else if complete || input.len() > MAX_SEQUENCE {
        None
    } else {
        Some(Decoded::Incomplete)
    }
}

/// The terminal's reader, shared by its thread and the session.
pub struct KeyPump {
    state: Mutex<State>,
    /// The reading thread waits here while nothing is to be read.
    wanted: Condvar,
    /// The reading thread is not reading (for raw mode's end, a prompt).
    stopped: Condvar,
    /// Wakes the reading thread from its wait for the terminal.
    wake: Option<(OwnedFd, OwnedFd)>,
    /// Input arrived, or reading failed.
    arrived: Notify,
    disconnect: Notify,
    /// `~.` typed so far, for watchers apart from the session's loop (which
    /// cannot hear `disconnect` while a send holds it up).
    disconnects: tokio::sync::watch::Sender<u64>,
    /// The session saw the disconnect (see [`KeyPump::disconnect_seen`]).
    disconnect_seen: std::sync::atomic::AtomicBool,
    detach: Notify,
}

#[derive(Default)]
struct State {
    /// The terminal is raw: what is read is filtered for the escapes.
    raw: bool,
    /// A read of the app's stdin waits: in cooked mode, the terminal is
    /// read only then (what is typed meanwhile is for whoever reads next:
    /// a pager, the shell after the client).
    bytes_wanted: bool,
    /// The client's own prompt is on screen: nothing is read.
    paused: bool,
    input: VecDeque<u8>,
    /// Where in `input` the terminal's ends of file (Ctrl-D in cooked
    /// mode) are, in order.
    eofs: VecDeque<usize>,
    /// Input was dropped for want of room (said once).
    overflowed: bool,
    /// The byte reader waiting for input.
    byte_waker: Option<Waker>,
    escapes: Escapes,
    /// Ctrl-\ detaches instead of going to the app.
    detach_key: bool,
    /// Why reading failed (the terminal went away): reads end.
    failed: Option<String>,
    thread: bool,
    /// The reading thread is reading (or waiting for) the terminal.
    reading: bool,
    /// Raw periods begun: a read that failed in an earlier one does not
    /// fail this one.
    raw_periods: u64,
}

impl State {
    fn wants_input(&self) -> bool {
        (self.raw || self.bytes_wanted) && !self.paused && self.failed.is_none()
    }

    /// Keeps what came from the terminal (filtered in raw mode).
    fn keep(&mut self, bytes: &[u8]) -> Vec<Escape> {
        let mut kept = Vec::with_capacity(bytes.len());
        let escapes = if self.raw {
            let detach_key = self.detach_key;
            self.escapes.feed(bytes, detach_key, &mut kept)
        } else {
            kept.extend_from_slice(bytes);
            if bytes.ends_with(b"\n") {
                self.escapes.line_ended();
            }
            Vec::new()
        };
        self.push(&kept);
        escapes
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_BUFFERED.saturating_sub(self.input.len());
        if bytes.len() > room && !self.overflowed {
            self.overflowed = true;
            tracing::warn!("more than {MAX_BUFFERED} bytes typed ahead: the rest is dropped");
        }
        self.input.extend(&bytes[..bytes.len().min(room)]);
    }

    /// Drops `n` bytes from the front of the input.
    fn consume(&mut self, n: usize) {
        self.input.drain(..n);
        for eof in &mut self.eofs {
            *eof = eof.saturating_sub(n);
        }
    }

    /// Drops everything typed ahead, a held `~` too.
    fn flush(&mut self) {
        self.input.clear();
        self.eofs.clear();
        self.escapes.forget_held();
    }

    /// Takes up to `max` bytes for the app, at most one line (so that
    /// nothing typed after it waits in the session's buffer, out of reach
    /// of a flush or a key read); `None` at the terminal's end of file.
    fn take(&mut self, max: usize) -> Option<Vec<u8>> {
        if self.eofs.front() == Some(&0) {
            self.eofs.pop_front();
            return None;
        }
        // Enter is `\r` in raw mode.
        let line = self
            .input
            .iter()
            .position(|byte| matches!(byte, b'\n' | b'\r'))
            .map_or(usize::MAX, |at| at + 1);
        let n = max
            .min(self.input.len())
            .min(line)
            .min(self.eofs.front().copied().unwrap_or(usize::MAX));
        let taken = self.input.iter().take(n).copied().collect();
        self.consume(n);
        Some(taken)
    }

    /// Nothing for the app's stdin yet.
    fn nothing_to_take(&self) -> bool {
        self.input.is_empty() && self.eofs.front() != Some(&0)
    }

    fn wake_readers(&mut self, arrived: &Notify) {
        arrived.notify_one();
        if let Some(waker) = self.byte_waker.take() {
            waker.wake();
        }
    }
}

static PUMP: OnceLock<KeyPump> = OnceLock::new();

/// The process's terminal reader (there is one terminal).
pub fn pump() -> &'static KeyPump {
    PUMP.get_or_init(|| KeyPump {
        state: Mutex::new(State::default()),
        wanted: Condvar::new(),
        stopped: Condvar::new(),
        wake: wake_pipe().ok(),
        arrived: Notify::new(),
        disconnect: Notify::new(),
        disconnects: tokio::sync::watch::Sender::new(0),
        disconnect_seen: std::sync::atomic::AtomicBool::new(false),
        detach: Notify::new(),
    })
}

/// A pipe whose write end wakes the reading thread; not inherited by
/// programs the client starts (a browser opener).
fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::io::{FdFlags, fcntl_setfd, ioctl_fionbio};
    let (read, write) = rustix::pipe::pipe()?;
    for end in [&read, &write] {
        ioctl_fionbio(end, true)?;
        fcntl_setfd(end, FdFlags::CLOEXEC)?;
    }
    Ok((read, write))
}

impl KeyPump {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The terminal's mode changed: raw or not, and whether the client's
    /// own prompt is on screen. Called by the terminal's owner before the
    /// terminal leaves raw mode or the prompt shows, and after it enters
    /// raw mode; returns once the reading thread stopped reading if it must.
    pub(crate) fn set_mode(&'static self, raw: bool, paused: bool) {
        let mut state = self.state();
        if state.raw == raw && state.paused == paused {
            return;
        }
        if paused && !state.paused {
            // The prompt flushes what was typed ahead; so is this.
            state.flush();
        }
        if !raw && state.raw {
            // A `~` held at the end of raw mode is just a `~`.
            let mut held = Vec::new();
            state.escapes.release(&mut held);
            state.push(&held);
        }
        if raw && !state.raw {
            // A new raw period tries the terminal again.
            state.failed = None;
            state.raw_periods += 1;
        }
        state.raw = raw;
        state.paused = paused;
        self.wanted_changed(state);
    }

    /// Whether Ctrl-\ detaches (a resumable session) or goes to the app.
    pub fn set_detach_key(&self, on: bool) {
        self.state().detach_key = on;
    }

    /// Starts or stops the reading thread for what is now wanted.
    fn wanted_changed(&'static self, mut state: MutexGuard<'_, State>) {
        if state.wants_input() {
            self.start_reading(&mut state);
            return;
        }
        self.wake_reader();
        let _ = self
            .stopped
            .wait_timeout_while(state, STOP_WAIT, |state| state.reading)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Wakes the reading thread from its wait for the terminal, to look at
    /// what is wanted now.
    fn wake_reader(&self) {
        if let Some((_, write)) = &self.wake {
            // A full pipe wakes the thread as well.
            let _ = rustix::io::write(write, &[0]);
        }
    }

    /// Drops what was typed ahead (a password read begins: the terminal
    /// flushes its own input too).
    pub(crate) fn flush_input(&self) {
        self.state().flush();
    }

    /// The session is over: nothing is read for it any more.
    pub(crate) fn end_session(&'static self) {
        self.end_session_of(self.state());
    }

    /// [`end_session`](KeyPump::end_session) unless the pump's lock is
    /// held (a panic hook on a thread that may hold it).
    pub(crate) fn try_end_session(&'static self) {
        match self.state.try_lock() {
            Ok(state) => self.end_session_of(state),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                self.end_session_of(poisoned.into_inner());
            }
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }

    /// Holds the pump's lock while `then` runs, as key parsing does.
    #[cfg(test)]
    pub(crate) fn hold_for_test(&self, then: impl FnOnce()) {
        let _held = self.state();
        then();
    }

    fn end_session_of(&'static self, mut state: MutexGuard<'_, State>) {
        state.bytes_wanted = false;
        state.byte_waker = None;
        state.raw = false;
        state.paused = false;
        self.wanted_changed(state);
    }

    /// The session saw `~.` and is ending: the watchdog gives it longer.
    pub fn disconnect_seen(&self) {
        self.disconnect_seen
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Wakes the reading thread from its wait for something to read, or
    /// starts it.
    fn start_reading(&'static self, state: &mut State) {
        self.wanted.notify_all();
        if state.thread {
            return;
        }
        let Some((wake, _)) = &self.wake else {
            state.failed = Some("no wake-up pipe".to_owned());
            state.wake_readers(&self.arrived);
            return;
        };
        let started = std::thread::Builder::new()
            .name("terminalwire-tty".to_owned())
            .spawn(move || self.read_terminal(wake.as_fd()));
        match started {
            Ok(_) => state.thread = true,
            Err(error) => {
                state.failed = Some(format!("cannot start reading the terminal: {error}"));
                state.wake_readers(&self.arrived);
            }
        }
    }

    /// Puts `bytes` taken from the input (and not used: what a byte read
    /// left in the session's buffer) back in front of it, for the next key
    /// or byte read.
    pub fn unread(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut state = self.state();
        for &byte in bytes.iter().rev() {
            state.input.push_front(byte);
        }
        for eof in &mut state.eofs {
            *eof += bytes.len();
        }
        state.wake_readers(&self.arrived);
    }

    /// The next key for the app, in the order typed.
    pub async fn next_key(&self) -> io::Result<Key> {
        let mut complete = false;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let partial = match self.take_key(complete)? {
                Ok(key) => return Ok(key),
                Err(partial) => partial,
            };
            if partial {
                // Its rest comes at once, or it was the Esc key on its own.
                complete = tokio::time::timeout(ESC_WAIT, arrived).await.is_err();
            } else {
                complete = false;
                arrived.await;
            }
        }
    }

    /// A key from the input if there is one; else whether the input holds
    /// the start of one.
    fn take_key(&self, complete: bool) -> io::Result<Result<Key, bool>> {
        let mut state = self.state();
        while !state.input.is_empty() {
            let input = state.input.make_contiguous();
            let (key, len) = match decode_key(input, complete) {
                Decoded::Key(key, len) => (Some(key), len),
                Decoded::Skip(len) => (None, len),
                Decoded::Incomplete => break,
            };
            state.consume(len);
            if let Some(key) = key {
                return Ok(Ok(key));
            }
        }
        if let Some(failed) = &state.failed {
            return Err(io::Error::other(format!(
                "cannot read the terminal: {failed}"
            )));
        }
        Ok(Err(!state.input.is_empty()))
    }

    /// Completes when the user typed `~.`.
    pub async fn disconnect_typed(&self) {
        self.disconnect.notified().await;
    }

    /// Changes each time the user types `~.` from now on.
    pub fn watch_disconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.disconnects.subscribe()
    }

    /// Completes when the user typed Ctrl-\ in a resumable session.
    pub async fn detach_typed(&self) {
        self.detach.notified().await;
    }

    /// The reading thread: reads the terminal while input is wanted.
    fn read_terminal(&'static self, wake: BorrowedFd<'_>) {
        // A panic here must not leave a mode change waiting on `reading`.
        struct Stopped(&'static KeyPump);
        impl Drop for Stopped {
            fn drop(&mut self) {
                let mut state = self.0.state();
                state.reading = false;
                state.thread = false;
                if state.failed.is_none() && std::thread::panicking() {
                    state.failed = Some("the terminal reader failed".to_owned());
                }
                state.wake_readers(&self.0.arrived);
                self.0.stopped.notify_all();
                // Wanted again meanwhile (a new raw period cleared the
                // failure): a reader of its own.
                if state.wants_input() {
                    self.0.start_reading(&mut state);
                }
            }
        }
        let _stopped = Stopped(self);
        let mut buffer = vec![0u8; 4096];
        loop {
            let period = {
                let mut state = self.state();
                state.reading = false;
                self.stopped.notify_all();
                while !state.wants_input() {
                    if state.failed.is_some() {
                        return;
                    }
                    state = self
                        .wanted
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                state.reading = true;
                state.raw_periods
            };
            match self.read_once(wake, &mut buffer) {
                Ok(escapes) => self.act_on(&escapes),
                Err(error) => {
                    let mut state = self.state();
                    if state.raw_periods != period {
                        // A raw period begun meanwhile tries again.
                        continue;
                    }
                    state.failed = Some(error.to_string());
                    state.wake_readers(&self.arrived);
                    return;
                }
            }
        }
    }

    /// Waits for the terminal (or a wake-up) and keeps what it read.
    fn read_once(&self, wake: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<Vec<Escape>> {
        use rustix::event::{PollFd, PollFlags};
        let stdin = rustix::stdio::stdin();
        let mut fds = [
            PollFd::new(&stdin, PollFlags::IN),
            PollFd::from_borrowed_fd(wake, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
        let terminal = fds[0].revents();
        let mut drained = [0u8; 64];
        while matches!(rustix::io::read(wake, &mut drained), Ok(n) if n > 0) {}
        if !self.state().wants_input() {
            return Ok(Vec::new());
        }
        if terminal.intersects(PollFlags::ERR | PollFlags::NVAL) {
            return Err(io::Error::other("the terminal is gone"));
        }
        if terminal.is_empty() {
            return Ok(Vec::new());
        }
        // Readable: this thread is the terminal's only reader, so the
        // read returns at once.
        let n = match rustix::io::read(stdin, &mut *buffer) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut state = self.state();
        if n == 0 {
            if terminal.contains(PollFlags::HUP) {
                return Err(io::Error::other("the terminal hung up"));
            }
            // Ctrl-D in cooked mode: the end of this input.
            let at = state.input.len();
            state.eofs.push_back(at);
            state.bytes_wanted = false;
            state.wake_readers(&self.arrived);
            return Ok(Vec::new());
        }
        let escapes = state.keep(&buffer[..n]);
        if !state.raw {
            // One line per read the app makes: a paste of several lines
            // leaves the rest in the terminal for whoever reads next.
            state.bytes_wanted = false;
        }
        state.wake_readers(&self.arrived);
        Ok(escapes)
    }

    fn act_on(&'static self, escapes: &[Escape]) {
        for escape in escapes {
            match escape {
                Escape::Disconnect => {
                    self.disconnect.notify_one();
                    self.disconnects.send_modify(|typed| *typed += 1);
                    // The session ends the client; should it be held up,
                    // the escape still works.
                    let _ = std::thread::Builder::new()
                        .name("terminalwire-disconnect".to_owned())
                        .spawn(move || {
                            std::thread::sleep(last_resort::GRACE);
                            if self
                                .disconnect_seen
                                .load(std::sync::atomic::Ordering::SeqCst)
                            {
                                // Ending: its writes out are bounded; a
                                // last resort should they hang anyway.
                                std::thread::sleep(last_resort::ENDING);
                            }
                            last_resort::end_process(
                                &crate::error::ClientError::Disconnected,
                                "the session did not end when told",
                            );
                        });
                }
                Escape::Detach => self.detach.notify_one(),
                Escape::Help => {
                    // To the terminal (stderr may be a file), without
                    // waiting on it: not under the state's lock either.
                    use std::os::unix::fs::OpenOptionsExt;
                    if let Ok(mut tty) = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc_nonblock())
                        .open("/dev/tty")
                    {
                        let _ = tty.write_all(ESCAPE_HELP.as_bytes());
                    }
                }
            }
        }
    }
}

/// `O_NONBLOCK`, for opening the terminal to write without waiting.
fn libc_nonblock() -> i32 {
    rustix::fs::OFlags::NONBLOCK.bits() as i32
}

/// The app's stdin when it is the terminal: what [`KeyPump`] read.
#[derive(Debug, Default)]
pub struct TtyStdin;

impl AsyncRead for TtyStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let pump = pump();
        let mut state = pump.state();
        if state.nothing_to_take() {
            if state.failed.is_some() {
                // The terminal is gone: the end of input.
                return Poll::Ready(Ok(()));
            }
            state.byte_waker = Some(cx.waker().clone());
            if !state.bytes_wanted {
                state.bytes_wanted = true;
                if state.wants_input() {
                    pump.start_reading(&mut state);
                }
            }
            return Poll::Pending;
        }
        if let Some(bytes) = state.take(buf.remaining()) {
            buf.put_slice(&bytes);
        }
        // Read: in cooked mode, the terminal is left alone until the next.
        state.byte_waker = None;
        if std::mem::take(&mut state.bytes_wanted) && !state.wants_input() {
            pump.wake_reader();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Key {
        key(text, false, false, false)
    }

    /// The app's bytes and the escapes for `typed`, fed in pieces of
    /// `piece` bytes.
    fn filtered(typed: &[u8], detach_key: bool, piece: usize) -> (Vec<u8>, Vec<Escape>) {
        let mut escapes = Escapes::default();
        let mut out = Vec::new();
        let mut found = Vec::new();
        for chunk in typed.chunks(piece) {
            found.extend(escapes.feed(chunk, detach_key, &mut out));
        }
        (out, found)
    }

    /// `typed` reaches the app as it is, with no escape.
    fn assert_untouched(typed: &[u8], piece: usize) {
        assert_eq!(filtered(typed, false, piece), (typed.to_vec(), vec![]));
    }

    /// `typed` disconnects; the app gets `kept`.
    fn assert_disconnects(typed: &[u8], kept: &[u8], piece: usize) {
        assert_eq!(
            filtered(typed, false, piece),
            (kept.to_vec(), vec![Escape::Disconnect])
        );
    }

    /// A bracketed paste (the terminal's marks around pasted text) with a
    /// line that starts with `~.` is text for the app, and Ctrl-\ in it
    /// too; after the paste's end mark, the escapes work again.
    #[test]
    fn a_bracketed_paste_is_the_apps_text_escapes_and_all() {
        for piece in [1, 3, 64] {
            let paste = b"\x1b[200~first line\r~.config/app\r\x1c~?\x1b[201~";
            assert_untouched(paste, piece);
            assert_eq!(
                filtered(paste, true, piece),
                (paste.to_vec(), vec![]),
                "Ctrl-\\ in a paste, piece {piece}"
            );
            let mut then = paste.to_vec();
            then.extend_from_slice(b"\r~.");
            let mut kept = paste.to_vec();
            kept.push(b'\r');
            assert_disconnects(&then, &kept, piece);
            // The 8-bit CSI marks too.
            assert_untouched(b"\x9b200~\r~.\x9b201~", piece);
        }
    }

    #[test]
    fn tilde_dot_disconnects_at_the_start_and_after_enter_only() {
        for piece in [1, 64] {
            assert_eq!(
                filtered(b"~.", false, piece),
                (vec![], vec![Escape::Disconnect])
            );
            assert_eq!(filtered(b"a~.", false, piece), (b"a~.".to_vec(), vec![]));
            assert_eq!(
                filtered(b"a\r~.", false, piece),
                (b"a\r".to_vec(), vec![Escape::Disconnect])
            );
        }
    }

    #[test]
    fn a_held_tilde_goes_to_the_app_before_any_other_key() {
        assert_untouched(b"~x", 1);
        // `~~` is one `~`, and what follows is not at a line's start.
        assert_eq!(filtered(b"~~~.", false, 1), (b"~~.".to_vec(), vec![]));
        assert_disconnects(b"~\r~.", b"~\r", 1);
        // An arrow after a held tilde comes after it.
        assert_untouched(b"~\x1b[Ax", 1);
    }

    #[test]
    fn terminal_sequences_neither_start_nor_break_an_escape() {
        // A reply to a query (OSC 11) between Enter, `~` and `.`.
        let reply: &[u8] = b"\x1b]11;rgb:0000/0000/0000\x07";
        let typed = [b"ab\r", reply, b"~\x1b[I."].concat();
        let expected = [b"ab\r", reply].concat();
        assert_disconnects(&typed, &expected, 1);
        // A tilde inside a sequence is not the escape.
        assert_untouched(b"\x1b]~.\x07", 1);
    }

    #[test]
    fn mouse_reports_and_8_bit_replies_do_not_break_an_escape() {
        // X10 mouse reports carry three raw bytes (here `~` and `.`).
        let mouse: &[u8] = b"\x1b[M ~.";
        let typed = [b"\r", mouse, b"~", mouse, b"."].concat();
        let expected = [b"\r", mouse].concat();
        assert_disconnects(&typed, &expected, 1);
        // An 8-bit CSI reply, and an 8-bit OSC ended by 8-bit ST.
        assert_disconnects(b"\r\x9b1;2c~\x9d11;x\x9c.", b"\r\x9b1;2c", 1);
        // A UTF-8 character whose second byte is 0x9b is a character.
        assert_eq!(
            filtered("\r\u{db}~.".as_bytes(), false, 1),
            ("\r\u{db}~.".as_bytes().to_vec(), vec![])
        );
    }

    #[test]
    fn utf8_encoded_8_bit_replies_and_utf8_text_in_strings_do_not_break_an_escape() {
        // `C2 9B` is an 8-bit CSI in UTF-8.
        assert_disconnects(b"\r\xc2\x9b?64;1c~.", b"\r\xc2\x9b?64;1c", 1);
        // A title report with `\u{11c}` (C4 9C): 9C there is no terminator.
        let title = "\x1b]l\u{11c}x\x1b\\".as_bytes();
        let typed = [b"\r", title, b"~."].concat();
        let expected = [b"\r", title].concat();
        assert_disconnects(&typed, &expected, 1);
        // A character typed after a held tilde: both reach the app.
        assert_eq!(
            filtered("~\u{e9}".as_bytes(), false, 1),
            ("~\u{e9}".as_bytes().to_vec(), vec![])
        );
    }

    #[test]
    fn bytes_of_other_encodings_are_typed_at_once_and_in_order() {
        // Latin-1 `é`, then an arrow, then `~.`: no escape mid-line.
        assert_untouched(b"\r~\xe9\x1b[A.", 64);
        assert_untouched(b"\r\xe9\x1b[A~.", 64);
        // A read that ends in a lone lead byte hands it over at once.
        let mut escapes = Escapes::default();
        let mut out = Vec::new();
        escapes.feed(b"\xe1", false, &mut out);
        assert_eq!(out, b"\xe1");
    }

    #[test]
    fn a_detach_gives_a_held_tilde_to_the_app() {
        assert_eq!(
            filtered(b"\r~\x1c.", true, 1),
            (b"\r~.".to_vec(), vec![Escape::Detach])
        );
    }

    #[test]
    fn ctrl_backslash_detaches_even_after_a_typed_esc_p() {
        assert_eq!(
            filtered(b"\x1bPjk\x1c", true, 1),
            (b"\x1bPjk".to_vec(), vec![Escape::Detach])
        );
    }

    #[test]
    fn a_line_end_ends_what_looked_like_a_sequence() {
        // Esc then `P` (vim's paste), typed: Enter still starts a line.
        assert_disconnects(b"\x1bPx\r~.", b"\x1bPx\r", 1);
        assert_disconnects(b"\x1b[\r~.", b"\x1b[\r", 1);
        // The decoder: Esc, then the keys typed after it.
        assert_eq!(decode_key(b"\x1bPx\r", true), Decoded::Key(plain("esc"), 1));
        assert_eq!(decode_key(b"\x1b[\r", false), Decoded::Key(plain("esc"), 1));
        assert_eq!(
            decode_key(b"\x1bOx", false),
            Decoded::Key(key("O", false, true, true), 2)
        );
    }

    #[test]
    fn a_tilde_held_when_raw_mode_ends_is_a_tilde() {
        let mut escapes = Escapes::default();
        let mut out = Vec::new();
        assert!(escapes.feed(b"~", false, &mut out).is_empty());
        assert!(out.is_empty());
        escapes.release(&mut out);
        assert_eq!(out, b"~");
        assert!(escapes.feed(b".", false, &mut out).is_empty());
        assert_eq!(out, b"~.");
    }

    #[test]
    fn help_keeps_the_line_start_and_ctrl_backslash_detaches_when_it_can() {
        assert_eq!(
            filtered(b"~?~.", false, 1),
            (vec![], vec![Escape::Help, Escape::Disconnect])
        );
        assert_eq!(
            filtered(b"a\x1cb", true, 1),
            (b"ab".to_vec(), vec![Escape::Detach])
        );
        assert_untouched(b"a\x1cb", 1);
    }

    #[test]
    fn keys_decode_from_what_terminals_send() {
        let decoded = |bytes: &[u8]| match decode_key(bytes, true) {
            Decoded::Key(key, len) => {
                assert_eq!(len, bytes.len(), "{bytes:?}");
                key
            }
            other => panic!("{bytes:?}: {other:?}"),
        };
        assert_eq!(decoded(b"a"), plain("a"));
        assert_eq!(decoded(b"Z"), key("Z", false, false, true));
        assert_eq!(decoded("é".as_bytes()), plain("é"));
        assert_eq!(decoded(b"\r"), plain("enter"));
        assert_eq!(decoded(b"\t"), plain("tab"));
        assert_eq!(decoded(b"\x7f"), plain("backspace"));
        assert_eq!(decoded(b"\x03"), key("c", true, false, false));
        assert_eq!(decoded(b"\x1c"), key("\\", true, false, false));
        assert_eq!(decoded(b"\x1b"), plain("esc"));
        assert_eq!(decoded(b"\x1bx"), key("x", false, true, false));
        assert_eq!(decoded(b"\x1b[A"), plain("up"));
        assert_eq!(decoded(b"\x1bOD"), plain("left"));
        assert_eq!(decoded(b"\x1b[1;5C"), key("right", true, false, false));
        assert_eq!(decoded(b"\x1b[3~"), plain("delete"));
        assert_eq!(decoded(b"\x1b[15~"), plain("f5"));
        assert_eq!(decoded(b"\x1b[24;2~"), key("f12", false, false, true));
        assert_eq!(decoded(b"\x1bOP"), plain("f1"));
        assert_eq!(decoded(b"\x1b[Z"), key("tab", false, false, true));
    }

    #[test]
    fn partial_keys_wait_and_unknown_sequences_are_skipped() {
        for partial in [&b"\x1b"[..], b"\x1b[", b"\x1b[1;5", b"\xc3", b"\x1b]11;rgb"] {
            assert_eq!(
                decode_key(partial, false),
                Decoded::Incomplete,
                "{partial:?}"
            );
        }
        assert_eq!(
            decode_key(b"\x1b]11;rgb:0/0/0\x07x", false),
            Decoded::Skip(15)
        );
        assert_eq!(decode_key(b"\x1b[?1;2c", false), Decoded::Skip(7));
        assert_eq!(decode_key(b"\x1b[M !!x", false), Decoded::Skip(6));
        assert_eq!(decode_key(b"\x1b[M !", false), Decoded::Incomplete);
        assert_eq!(decode_key(b"\x9b1;2cx", false), Decoded::Skip(5));
        assert_eq!(decode_key(b"\x8fA", false), Decoded::Key(plain("up"), 2));
        // An 8-bit reply too long to be typed is dropped whole; after ESC
        // (Alt-] and a long paste) it is Esc, then keys.
        let mut long = b"\x9d52;c;".to_vec();
        long.extend(std::iter::repeat_n(b'A', MAX_SEQUENCE));
        assert_eq!(decode_key(&long, false), Decoded::Skip(long.len()));
        long.splice(..1, *b"\x1b]");
        assert_eq!(decode_key(&long, false), Decoded::Key(plain("esc"), 1));
        assert_eq!(decode_key(b"\xff", false), Decoded::Skip(1));
    }

    #[test]
    fn the_app_reads_up_to_the_end_of_file_then_past_it() {
        let mut state = State::default();
        state.keep(b"abc\n");
        state.eofs.push_back(state.input.len());
        state.keep(b"more\nand more\n");
        state.eofs.push_back(state.input.len());
        assert_eq!(state.take(2).unwrap(), b"ab");
        assert_eq!(state.take(100).unwrap(), b"c\n");
        assert_eq!(state.take(100), None);
        // One line at a time.
        assert_eq!(state.take(100).unwrap(), b"more\n");
        assert_eq!(state.take(100).unwrap(), b"and more\n");
        assert_eq!(state.take(100), None);
        assert!(state.nothing_to_take());
        // Raw mode's Enter is `\r`.
        state.keep(b"ab\rcd\r");
        assert_eq!(state.take(100).unwrap(), b"ab\r");
        // A flush drops what waits, a held `~` too.
        state.raw = true;
        state.keep(b"\r~");
        state.flush();
        state.raw = false;
        let mut released = Vec::new();
        state.escapes.release(&mut released);
        assert!(released.is_empty() && state.nothing_to_take());
    }
}
