//! What the hello reports: this client, this machine and its terminal.

use std::os::fd::{AsFd, BorrowedFd};

use terminalwire_protocol::frame::{
    ColorLevel, Hello, Program, Software, StreamFacts, StreamKind, TerminalFacts, TerminalSize,
};
use terminalwire_protocol::{DEFAULT_MAX_CHUNK, DEFAULT_WINDOW, SUPPORTED_VERSIONS};

use crate::connect::Target;
use crate::error::ClientError;

/// Capabilities this client implements (see `PROTOCOL.md`).
pub const CLIENT_CAPABILITIES: &[&str] = &[
    "stdout",
    "stderr",
    "exit",
    "stdin.line",
    terminalwire_protocol::frame::CANCEL_CAPABILITY,
];

/// The hello for a session with `target`.
pub fn hello(
    target: &Target,
    program_name: String,
    args: Vec<String>,
) -> Result<Hello, ClientError> {
    let env = |name: &str| std::env::var(name).ok();
    Ok(Hello {
        versions: SUPPORTED_VERSIONS,
        client: Software {
            name: "terminalwire".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        os: std::env::consts::OS.into(),
        os_version: os_version(),
        arch: std::env::consts::ARCH.into(),
        authority: target.authority.clone(),
        storage: None,
        origin: match target.unix {
            Some(_) => None,
            None => terminalwire_policy::authority::origin(&target.url).ok(),
        },
        program: Program {
            name: program_name,
            args,
        },
        terminal: TerminalFacts {
            stdin: stream_facts(std::io::stdin().as_fd(), &env),
            stdout: stream_facts(std::io::stdout().as_fd(), &env),
            stderr: stream_facts(std::io::stderr().as_fd(), &env),
            term: env("TERM"),
        },
        capabilities: CLIENT_CAPABILITIES.iter().map(|&c| c.to_owned()).collect(),
        window: DEFAULT_WINDOW,
        max_chunk: DEFAULT_MAX_CHUNK,
    })
}

fn os_version() -> Option<String> {
    // The kernel release on Linux; elsewhere unknown for now.
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Probes one standard stream.
pub fn stream_facts(fd: BorrowedFd<'_>, env: &dyn Fn(&str) -> Option<String>) -> StreamFacts {
    let kind = stream_kind(fd);
    let size = if kind == StreamKind::Tty {
        rustix::termios::tcgetwinsize(fd)
            .ok()
            .filter(|size| size.ws_col > 0 && size.ws_row > 0)
            .map(|size| TerminalSize {
                cols: size.ws_col,
                rows: size.ws_row,
            })
    } else {
        None
    };
    StreamFacts {
        kind,
        size,
        color: color_level(kind == StreamKind::Tty, env),
    }
}

/// The size of the client's terminal (stdout's, else stdin's, else stderr's).
pub fn terminal_size() -> Option<TerminalSize> {
    let env = |_: &str| None;
    [
        std::io::stdout().as_fd(),
        std::io::stdin().as_fd(),
        std::io::stderr().as_fd(),
    ]
    .into_iter()
    .find_map(|fd| stream_facts(fd, &env).size)
}

fn stream_kind(fd: BorrowedFd<'_>) -> StreamKind {
    use rustix::fs::FileType;
    let Ok(stat) = rustix::fs::fstat(fd) else {
        // A closed descriptor.
        return StreamKind::Null;
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Fifo | FileType::Socket => StreamKind::Pipe,
        FileType::RegularFile => StreamKind::File,
        FileType::CharacterDevice if rustix::termios::isatty(fd) => StreamKind::Tty,
        FileType::CharacterDevice => {
            let is_null =
                rustix::fs::stat("/dev/null").is_ok_and(|null| null.st_rdev == stat.st_rdev);
            if is_null {
                StreamKind::Null
            } else {
                StreamKind::Other
            }
        }
        _ => StreamKind::Other,
    }
}

/// Colour support of a stream, honouring `NO_COLOR` (wins), `CLICOLOR_FORCE`,
/// `TERM=dumb`, `COLORTERM` and `TERM`.
pub fn color_level(is_tty: bool, env: &dyn Fn(&str) -> Option<String>) -> ColorLevel {
    let set = |name: &str| env(name).is_some_and(|value| !value.is_empty());
    if set("NO_COLOR") {
        return ColorLevel::None;
    }
    let forced = env("CLICOLOR_FORCE").is_some_and(|value| !value.is_empty() && value != "0");
    let term = env("TERM").unwrap_or_default();
    // No TERM says no more than `dumb` of what the terminal knows.
    if !forced && (!is_tty || term.is_empty() || term == "dumb") {
        return ColorLevel::None;
    }
    let colorterm = env("COLORTERM").unwrap_or_default();
    if colorterm == "truecolor" || colorterm == "24bit" {
        ColorLevel::Truecolor
    } else if term.contains("256color") {
        ColorLevel::Ansi256
    } else {
        ColorLevel::Ansi16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn colour_follows_terminal_and_conventions() {
        assert_eq!(
            color_level(true, &env_of(&[("TERM", "xterm-256color")])),
            ColorLevel::Ansi256
        );
        assert_eq!(
            color_level(
                true,
                &env_of(&[("TERM", "xterm"), ("COLORTERM", "truecolor")])
            ),
            ColorLevel::Truecolor
        );
        assert_eq!(
            color_level(true, &env_of(&[("TERM", "xterm")])),
            ColorLevel::Ansi16
        );
        assert_eq!(
            color_level(false, &env_of(&[("TERM", "xterm-256color")])),
            ColorLevel::None
        );
        assert_eq!(
            color_level(true, &env_of(&[("TERM", "dumb")])),
            ColorLevel::None
        );
        assert_eq!(color_level(true, &env_of(&[])), ColorLevel::None);
        assert_eq!(
            color_level(false, &env_of(&[("CLICOLOR_FORCE", "1")])),
            ColorLevel::Ansi16
        );
        assert_eq!(
            color_level(false, &env_of(&[("CLICOLOR_FORCE", "0")])),
            ColorLevel::None
        );
        assert_eq!(
            color_level(
                true,
                &env_of(&[
                    ("TERM", "xterm"),
                    ("NO_COLOR", "1"),
                    ("CLICOLOR_FORCE", "1")
                ])
            ),
            ColorLevel::None
        );
    }

    #[test]
    fn the_hello_names_the_web_origin_the_client_reached() {
        let origin = |url: &str| {
            let target = crate::connect::Target::parse(url).unwrap();
            hello(&target, "app".into(), Vec::new()).unwrap().origin
        };
        assert_eq!(
            origin("wss://example.com/terminal").as_deref(),
            Some("https://example.com")
        );
        assert_eq!(
            origin("https://example.com:8443/t").as_deref(),
            Some("https://example.com:8443")
        );
        assert_eq!(
            origin("ws://127.0.0.1:3000/terminal").as_deref(),
            Some("http://127.0.0.1:3000")
        );
        assert_eq!(origin("unix:/tmp/app.sock"), None);
    }

    #[test]
    fn probes_pipes_files_and_null() {
        let (reader, _writer) = std::io::pipe().unwrap();
        assert_eq!(stream_kind(reader.as_fd()), StreamKind::Pipe);
        let file = tempfile_in_target();
        assert_eq!(stream_kind(file.as_fd()), StreamKind::File);
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(stream_kind(null.as_fd()), StreamKind::Null);
    }

    fn tempfile_in_target() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("terminalwire-facts-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        file
    }
}
