//! Text the server chose, made inert for the client's own messages.
//!
//! The consent prompt, the client's errors and `terminalwire audit` show
//! strings a server controls (paths, URLs, messages). Written raw, an
//! escape sequence in one could move the cursor and redraw the prompt, a
//! carriage return could overwrite it, an OSC sequence could change the
//! colours, and a bidi control could reorder what the user reads. Here
//! every such character is written out visibly instead, the way
//! [`char::escape_debug`] writes it (`\u{1b}`, `\r`, `\u{202e}`).
//!
//! The app's own output (stdout, stderr, prompts for input) is not touched:
//! it is the app's to draw.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control (C0, DEL, C1), format (bidi and other
/// invisible `Cf`) and line or paragraph separator character escaped.
pub fn inert(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// [`inert`], but newlines are kept: for a whole message of the client's
/// that may span lines and quotes server text in it.
pub fn inert_lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_unsafe(c) && !(keep_newlines && c == '\n');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// Whether `c` could change what a terminal shows rather than be shown.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// Unicode's format characters (general category `Cf`, as of Unicode 16:
/// bidi embeddings, overrides and isolates, zero-width characters, the
/// soft hyphen, tags) and the line and paragraph separators, which break
/// a line on some terminals.
fn is_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "~/reports/été 2024/**, https://example.com/a?b=c";
        assert!(matches!(inert(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn controls_and_bidi_characters_are_written_out() {
        let hostile = "/home/u/\x1b[2K\r\x1b]11;#000000\x07x\u{9b}31m\u{7f}\u{202e}txt.exe\u{2066}\u{200b}\u{feff}\u{61c}\u{2028}\u{e0041}";
        let shown = inert(hostile);
        assert_eq!(
            shown,
            "/home/u/\\u{1b}[2K\\r\\u{1b}]11;#000000\\u{7}x\\u{9b}31m\\u{7f}\\u{202e}txt.exe\\u{2066}\\u{200b}\\u{feff}\\u{61c}\\u{2028}\\u{e0041}"
        );
        assert!(!shown.chars().any(is_unsafe), "{shown}");
    }

    #[test]
    fn only_the_lines_variant_keeps_newlines() {
        assert_eq!(inert("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(inert_lines("a\nb\tc\x1b"), "a\nb\\tc\\u{1b}");
    }
}
