//! Launchers: an app installed as a command of its own.
//!
//! `terminalwire install URL --name notes` writes `~/.terminalwire/bin/notes`
//! (mode 0755):
//!
//! ```text
//! #!/usr/bin/env terminalwire-exec
//! # terminalwire launcher: `notes ARGS` runs the app at the URL below.
//! url = "ws://127.0.0.1:3000/terminal"
//! ```
//!
//! The kernel runs it as `terminalwire-exec ~/.terminalwire/bin/notes ARGS`;
//! the client reads the URL and runs the app with the launcher's name as the
//! program name, so the app's help says `Usage: notes ...`.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use terminalwire_policy::{Home, HomeError};

use crate::error::exit_code;

/// The interpreter line every launcher starts with.
pub const SHEBANG: &str = "#!/usr/bin/env terminalwire-exec";
/// The name of the program that runs launchers.
pub const EXEC_NAME: &str = "terminalwire-exec";
/// The name of the client's main program.
pub const CLIENT_NAME: &str = "terminalwire";

/// The client's own programs, which no grant reaches: the running one, the
/// two beside it, and the two names in every folder of `PATH`, there or
/// not (a launcher's `#!/usr/bin/env terminalwire-exec` runs the first it
/// finds, so a new one early on `PATH` would do). A server allowed to write
/// one would run its own code, unchecked, the next time the user does.
pub fn client_binaries() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = Vec::new();
    if let Ok(running) = std::env::current_exe() {
        folders.extend(running.parent().map(Path::to_path_buf));
        found.push(running);
    }
    if let Some(path) = std::env::var_os("PATH") {
        folders.extend(std::env::split_paths(&path).filter(|dir| dir.is_absolute()));
    }
    for folder in folders {
        for name in [CLIENT_NAME, EXEC_NAME] {
            let program = folder.join(name);
            if !found.contains(&program) {
                found.push(program);
            }
        }
    }
    found
}

/// Largest launcher file read.
const MAX_LAUNCHER_LEN: u64 = 64 * 1024;

/// An installed app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// Its command name (the file name).
    pub name: String,
    /// The app's URL.
    pub url: String,
}

/// Why a launcher file cannot be used; always names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LauncherError {
    /// The file cannot be read.
    #[error("cannot read launcher {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not a valid launcher.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A valid command name: a letter or digit, then letters, digits, `.`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The launcher file's text.
pub fn render(url: &str) -> String {
    format!(
        "{SHEBANG}\n# terminalwire launcher: run the app at the URL below with `terminalwire-exec`.\n\
         # Remove it with `terminalwire uninstall NAME`.\nurl = {}\n",
        quote(url)
    )
}

fn quote(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Parses a launcher file's text; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Launcher, LauncherError> {
    let invalid = |line: usize, reason: &str| LauncherError::Invalid {
        path: path.to_path_buf(),
        line,
        reason: reason.to_owned(),
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, first)) if first.trim_end() == SHEBANG => {}
        _ => return Err(invalid(1, &format!("a launcher starts with `{SHEBANG}`"))),
    }
    let mut url = None;
    for (index, line) in lines {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(invalid(number, "expected `url = \"...\"`"));
        };
        let value = unquote(value.trim())
            .ok_or_else(|| invalid(number, "the value must be a quoted string"))?;
        match key.trim() {
            "url" if url.is_none() => url = Some(value),
            "url" => return Err(invalid(number, "`url` is given twice")),
            other => return Err(invalid(number, &format!("unknown key `{other}`"))),
        }
    }
    let url = url.ok_or_else(|| invalid(text.lines().count().max(1), "no `url = \"...\"` line"))?;
    crate::connect::Target::parse(&url).map_err(|error| {
        invalid(
            1 + text
                .lines()
                .position(|l| l.trim_start().starts_with("url"))
                .unwrap_or(0),
            &error.to_string(),
        )
    })?;
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("app")
        .to_owned();
    Ok(Launcher { name, url })
}

fn unquote(value: &str) -> Option<String> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Refuses a launcher another user could change (the file, or a folder
/// above it within the terminalwire home): they would choose the server it
/// runs the user's command against.
fn check_private(path: &Path) -> Result<(), HomeError> {
    let home = match Home::from_env() {
        Ok(home) => home,
        // No home to check folders within: the file alone.
        Err(_) => Home::at(path),
    };
    home.check_private(path, terminalwire_policy::Privacy::OwnerWrites)
}

/// Reads and parses a launcher file.
pub fn load(path: &Path) -> Result<Launcher, LauncherError> {
    let read = |source| LauncherError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text = terminalwire_policy::read_own_file(path, MAX_LAUNCHER_LEN)
        .map_err(read)?
        .ok_or_else(|| {
            read(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "there is no such file",
            ))
        })?;
    parse(&text, path)
}

/// A default command name for a URL: the last path segment unless it is
/// `terminal` (for a `unix:` socket, its file name without `.sock`), else
/// the host's first label (none for an IP address: `127` names nothing).
pub fn default_name(url: &str) -> Option<String> {
    let checked = |name: &str| refuse_name(name).is_none().then(|| name.to_owned());
    if let Some(socket) = url.strip_prefix("unix:") {
        let file = Path::new(socket).file_name()?.to_str()?;
        return checked(file.strip_suffix(".sock").unwrap_or(file));
    }
    let parsed = url::Url::parse(url).ok()?;
    let segment = parsed
        .path_segments()
        .and_then(|mut segments| segments.next_back().map(str::to_owned))
        .filter(|segment| !segment.is_empty() && segment != "terminal");
    let name = segment.or_else(|| match parsed.host()? {
        url::Host::Domain(domain) => domain.split('.').next().map(str::to_owned),
        url::Host::Ipv4(_) | url::Host::Ipv6(_) => None,
    })?;
    checked(&name)
}

/// Why `name` cannot be a launcher's name, if it cannot: what is wrong
/// with it, not only what a name may hold.
pub fn refuse_name(name: &str) -> Option<String> {
    if !valid_name(name) {
        let wrong = |what: String| Some(format!("{name:?} is not a valid command name: {what}"));
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        return match name.chars().next() {
            None => Some("a command name may not be empty".to_owned()),
            Some(first) if allowed(first) && !first.is_ascii_alphanumeric() => wrong(format!(
                "it may not start with `{first}` (it starts with a letter or digit)"
            )),
            _ => match name.chars().find(|&c| !allowed(c)) {
                Some(c) => wrong(format!(
                    "{c:?} is not allowed (letters, digits, `.`, `_`, `-`)"
                )),
                None => wrong("it is longer than 64 characters".to_owned()),
            },
        };
    }
    // `terminalwire-exec` would run itself as its own interpreter forever;
    // `terminalwire` would hide the client from the user.
    [CLIENT_NAME, EXEC_NAME]
        .contains(&name)
        .then(|| format!("{name:?} is the name of the client's own program: pick another --name"))
}

/// Why `url` and `name` cannot make a launcher, looking at nothing on disk:
/// a name that is no command name or is the client's own, a URL with a
/// control character or that does not parse.
pub fn check_arguments(url: &str, name: &str) -> anyhow::Result<()> {
    if let Some(reason) = refuse_name(name) {
        anyhow::bail!(reason);
    }
    // The URL parser drops tabs and line breaks that the launcher would
    // keep, and a `unix:` path is not parsed at all.
    if let Some(c) = url.chars().find(|c| c.is_control()) {
        anyhow::bail!(
            "the URL {} contains the control character {}: it cannot be installed",
            crate::inert::inert(url),
            c.escape_default()
        );
    }
    crate::connect::Target::parse(url).map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(())
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// A new launcher was written.
    New(PathBuf),
    /// The same launcher was already there.
    Unchanged(PathBuf),
    /// A launcher of another URL (or a broken one) was replaced.
    Replaced {
        /// The launcher.
        path: PathBuf,
        /// The URL it had, if it could be read.
        previous: Option<String>,
    },
}

impl Installed {
    /// The launcher's path.
    pub fn path(&self) -> &Path {
        match self {
            Installed::New(path)
            | Installed::Unchanged(path)
            | Installed::Replaced { path, .. } => path,
        }
    }
}

/// Writes a launcher for `url` as `name` in `home`'s bin folder
/// (atomically, 0755). A launcher of that name for another URL is replaced
/// only when `replace` is set; a file there that is not a launcher never is.
pub fn install(home: &Home, url: &str, name: &str, replace: bool) -> anyhow::Result<Installed> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    check_arguments(url, name)?;
    let dir = home.bin_dir();
    // The user's alone, whatever the umask: the client refuses a home that
    // other users could change, and `terminalwire-exec` a launcher.
    crate::create_private_dirs(&dir)
        .map_err(|error| crate::home_error(home, "create", &dir, error))?;
    let path = dir.join(name);
    let previous = match std::fs::symlink_metadata(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(crate::home_error(home, "look at", &path, error).into()),
        Ok(meta) if !meta.is_file() => anyhow::bail!(
            "{} is there and is not a launcher: remove it or pick another --name",
            path.display()
        ),
        Ok(_) => match load(&path) {
            Ok(old) if same_app(&old.url, url) && is_executable(&path) => {
                return Ok(Installed::Unchanged(path));
            }
            Ok(old) if same_app(&old.url, url) => Some(Some(old.url)),
            Ok(old) if !replace => anyhow::bail!(
                "{name} is already installed, for {}: add --force to replace it, or pick another --name",
                old.url
            ),
            Ok(old) => Some(Some(old.url)),
            // A broken launcher (ours, by its first line) may be replaced.
            Err(LauncherError::Invalid { .. }) if replace && starts_as_launcher(&path) => {
                Some(None)
            }
            Err(error) if starts_as_launcher(&path) => anyhow::bail!(
                "{name} is a broken launcher ({error}): add --force to replace it, or pick another --name"
            ),
            Err(error) => anyhow::bail!(
                "{} is there and is not a launcher ({error}): remove it or pick another --name",
                path.display()
            ),
        },
    };
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&temp)?;
        file.write_all(render(url).as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(|error| crate::home_error(home, "write", &path, error))?;
    Ok(match previous {
        None => Installed::New(path),
        Some(previous) => Installed::Replaced { path, previous },
    })
}

/// Whether two launcher URLs name the same app (`http://` is `ws://`).
pub fn same_app(old: &str, new: &str) -> bool {
    let normal = |url: &str| crate::connect::Target::parse(url).map(|target| target.url);
    old == new || matches!((normal(old), normal(new)), (Ok(a), Ok(b)) if a == b)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o111 == 0o111)
}

/// Whether two folders are the same one (a `PATH` entry may name the
/// launchers' folder through a symlink).
fn same_folder(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

fn starts_as_launcher(path: &Path) -> bool {
    terminalwire_policy::read_own_file(path, MAX_LAUNCHER_LEN)
        .ok()
        .flatten()
        .is_some_and(|text| text.lines().next().map(str::trim_end) == Some(SHEBANG))
}

/// Other programs named `name` on `PATH` (outside `bin_dir`): which one a
/// user's shell runs depends on the order of `PATH`.
pub fn shadowed(name: &str, bin_dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for folder in std::env::split_paths(&path) {
        if !folder.is_absolute() || same_folder(&folder, bin_dir) {
            continue;
        }
        let program = folder.join(name);
        let executable = std::fs::metadata(&program)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        // One program reached through two PATH entries is said once.
        let seen = found.iter().any(|other| same_folder(other, &program));
        if executable && !seen {
            found.push(program);
        }
    }
    found
}

/// An installed app: its launcher's name, and the launcher or why it
/// cannot be used.
pub type InstalledApp = (String, Result<Launcher, LauncherError>);

/// The installed launchers, sorted, each parsed or with its error. Files
/// that do not start as launchers ([`SHEBANG`]) are no launchers, broken
/// or not, and are left out.
pub fn list(home: &Home) -> Result<Vec<InstalledApp>, HomeError> {
    let dir = home.bin_dir();
    let read = |source: io::Error| {
        let denied = source.kind() == io::ErrorKind::PermissionDenied;
        denied
            .then(|| home.why_denied(&dir))
            .flatten()
            .unwrap_or_else(|| HomeError::Io {
                path: dir.clone(),
                source: crate::folder_error(&dir, &dir, source),
            })
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(read(error)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') || !entry.file_type().map_err(read)?.is_file() {
            continue;
        }
        if !first_line_is_shebang(&entry.path()).unwrap_or(true) {
            continue;
        }
        found.push((name, load(&entry.path())));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// What [`uninstall`] removed.
#[derive(Debug)]
pub struct Uninstalled {
    /// The launcher's path.
    pub path: PathBuf,
    /// Why it could not be used, when it was broken.
    pub broken: Option<LauncherError>,
}

/// Removes the launcher `name`: a regular file that starts as a launcher
/// (its first line is [`SHEBANG`]), even when the rest of it is broken.
/// Anything else there is left alone.
pub fn uninstall(home: &Home, name: &str) -> anyhow::Result<Uninstalled> {
    anyhow::ensure!(
        valid_name(name),
        "{} is not a valid command name, so no app is installed under it \
         (`terminalwire apps` lists the installed ones)",
        crate::inert::inert(&format!("{name:?}"))
    );
    let path = home.bin_dir().join(name);
    let not_a_launcher = |what: &str| {
        anyhow::anyhow!("`{name}` is not a terminalwire launcher ({what}); not removing it")
    };
    let meta = match std::fs::symlink_metadata(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => anyhow::bail!(
            "no app named {name} is installed ({} does not exist; `terminalwire apps` lists \
             the installed ones)",
            path.display()
        ),
        Err(error) => return Err(crate::home_error(home, "look at", &path, error).into()),
        Ok(meta) => meta,
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(not_a_launcher(&format!("{} is a folder", path.display())));
    }
    if kind.is_symlink() {
        return Err(not_a_launcher(&format!(
            "{} is a symbolic link",
            path.display()
        )));
    }
    if !kind.is_file() {
        return Err(not_a_launcher(&format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    match first_line_is_shebang(&path) {
        Ok(true) => {}
        Ok(false) => {
            return Err(not_a_launcher(&format!(
                "{} does not start with `{SHEBANG}`",
                path.display()
            )));
        }
        Err(error) => return Err(crate::home_error(home, "read", &path, error).into()),
    }
    let broken = load(&path).err();
    std::fs::remove_file(&path).map_err(|error| crate::home_error(home, "remove", &path, error))?;
    Ok(Uninstalled { path, broken })
}

/// Whether the regular file at `path` (not followed if a symbolic link)
/// starts with the launcher's [`SHEBANG`] line; only that line is read.
fn first_line_is_shebang(path: &Path) -> io::Result<bool> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(false);
    }
    let mut start = Vec::new();
    file.take(SHEBANG.len() as u64 + 64)
        .read_to_end(&mut start)?;
    let first = start
        .split(|&byte| byte == b'\n')
        .next()
        .unwrap_or_default();
    Ok(first.trim_ascii_end() == SHEBANG.as_bytes())
}

/// Whether `dir` is on `$PATH`.
pub fn on_path(dir: &Path) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|entry| entry.is_absolute() && same_folder(&entry, dir))
    })
}

/// `terminalwire-exec LAUNCHER ARGS...`: runs the app a launcher names.
/// Returns the exit status.
pub fn exec_main(args: Vec<OsString>) -> u8 {
    let mut args = args.into_iter();
    let _argv0 = args.next();
    let usage = format!(
        "usage: {EXEC_NAME} LAUNCHER [ARGS...] (launchers start with `{SHEBANG}`; install one with `terminalwire install URL`)"
    );
    let Some(path) = args.next() else {
        eprintln!("{usage}");
        return exit_code::USAGE;
    };
    // Typed by a person (a launcher's kernel passes its absolute path).
    match path.to_str() {
        Some("-h" | "--help") => {
            let _ = writeln!(
                std::io::stdout().lock(),
                "Runs the app a launcher names: the kernel calls it for a file that starts with \
                 `{SHEBANG}`.\n\n{usage}"
            );
            return 0;
        }
        Some("-V" | "--version") => {
            let _ = writeln!(
                std::io::stdout().lock(),
                "{EXEC_NAME} {}",
                env!("CARGO_PKG_VERSION")
            );
            return 0;
        }
        _ => {}
    }
    if let Err(error) = check_private(Path::new(&path)) {
        eprintln!("{EXEC_NAME}: {error}");
        return exit_code::CONFIG;
    }
    let launcher = match load(Path::new(&path)) {
        Ok(launcher) => launcher,
        Err(error) => {
            eprintln!("{EXEC_NAME}: {error}");
            return exit_code::CONFIG;
        }
    };
    let mut app_args = Vec::new();
    for (index, arg) in args.enumerate() {
        match arg.into_string() {
            Ok(arg) => app_args.push(arg),
            Err(arg) => {
                eprintln!(
                    "{}: argument {} ({arg:?}) is not valid UTF-8",
                    launcher.name,
                    index + 1
                );
                return exit_code::USAGE;
            }
        }
    }
    let connect_timeout = match crate::cli::connect_timeout_from_env() {
        Ok(timeout) => timeout,
        Err(problem) => {
            eprintln!("{}: {problem}", launcher.name);
            return exit_code::USAGE;
        }
    };
    let prompt_timeout = match crate::cli::prompt_timeout_from_env() {
        Ok(timeout) => timeout,
        Err(problem) => {
            eprintln!("{}: {problem}", launcher.name);
            return exit_code::USAGE;
        }
    };
    let invocation = crate::cli::Invocation {
        program_name: launcher.name.clone(),
        url: launcher.url,
        args: app_args,
        connect_timeout,
        prompt_timeout,
        ca_cert: std::env::var_os("TERMINALWIRE_CA_CERT").map(PathBuf::from),
        no_prompt: false,
        verbose: 0,
    };
    crate::run_invocation(invocation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_launcher_parses_back() {
        let path = Path::new("/home/u/.terminalwire/bin/notes");
        let text = render("ws://127.0.0.1:3000/terminal?x=\"y\"");
        let launcher = parse(&text, path).unwrap();
        assert_eq!(launcher.name, "notes");
        assert_eq!(launcher.url, "ws://127.0.0.1:3000/terminal?x=\"y\"");
    }

    #[test]
    fn malformed_launchers_name_the_file_and_line() {
        let path = Path::new("/bin-dir/app");
        for (text, line) in [
            ("#!/bin/sh\nurl = \"ws://h/t\"\n", 1),
            (&format!("{SHEBANG}\nurl = ws://h/t\n"), 2),
            (&format!("{SHEBANG}\n# nothing\n"), 2),
            (&format!("{SHEBANG}\nurl = \"ftp://h/t\"\n"), 2),
            (
                &format!("{SHEBANG}\nurl = \"ws://h/t\"\nurl = \"ws://h/u\"\n"),
                3,
            ),
            (&format!("{SHEBANG}\ncolor = \"red\"\n"), 2),
        ] {
            match parse(text, path) {
                Err(LauncherError::Invalid {
                    line: got, path: p, ..
                }) => {
                    assert_eq!(got, line, "{text:?}");
                    assert_eq!(p, path);
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn names_are_checked_and_defaulted() {
        assert!(valid_name("notes"));
        assert!(valid_name("my-app.v2"));
        for bad in ["", "-x", ".hidden", "a/b", "a b", "../x"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(
            default_name("ws://notes.example.com/terminal").as_deref(),
            Some("notes")
        );
        assert_eq!(
            default_name("ws://127.0.0.1:3000/tasks").as_deref(),
            Some("tasks")
        );
        assert_eq!(
            default_name("unix:/run/user/1000/terminalwire/hello.sock").as_deref(),
            Some("hello")
        );
        // Nothing names these: the user is asked for --name.
        for unnamed in [
            "ws://127.0.0.1:3000/terminal",
            "ws://[::1]:3000/",
            "wss://example.com/terminalwire-exec",
            "unix:/tmp/terminalwire.sock",
        ] {
            assert_eq!(default_name(unnamed), None, "{unnamed}");
        }
        for reserved in ["terminalwire", "terminalwire-exec"] {
            assert!(refuse_name(reserved).is_some(), "{reserved}");
        }
    }

    /// Each refusal names what is wrong with the name: `.hidden` was told
    /// its characters are not allowed, though every one of them is.
    #[test]
    fn a_refused_name_says_what_is_wrong_with_it() {
        let long = "a".repeat(65);
        for (name, said) in [
            (
                ".hidden",
                "\".hidden\" is not a valid command name: it may not start with `.` (it starts \
                 with a letter or digit)",
            ),
            (
                "-x",
                "\"-x\" is not a valid command name: it may not start with `-` (it starts with \
                 a letter or digit)",
            ),
            (
                "a b",
                "\"a b\" is not a valid command name: ' ' is not allowed (letters, digits, `.`, \
                 `_`, `-`)",
            ),
            (
                "../x",
                "\"../x\" is not a valid command name: it may not start with `.` (it starts \
                 with a letter or digit)",
            ),
            (
                "a/b",
                "\"a/b\" is not a valid command name: '/' is not allowed (letters, digits, `.`, \
                 `_`, `-`)",
            ),
            ("", "a command name may not be empty"),
            (
                &long,
                &format!("\"{long}\" is not a valid command name: it is longer than 64 characters"),
            ),
        ] {
            assert_eq!(refuse_name(name).as_deref(), Some(said), "{name:?}");
        }
        assert_eq!(refuse_name("my-app.v2"), None);
    }

    #[test]
    fn install_list_and_uninstall() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let path = install(&home, "ws://127.0.0.1:9/terminal", "demo", false)
            .unwrap()
            .path()
            .to_path_buf();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(std::fs::read_to_string(&path).unwrap().starts_with(SHEBANG));
        std::fs::write(home.bin_dir().join("broken"), "#!/bin/sh\n").unwrap();
        std::fs::write(
            home.bin_dir().join("cracked"),
            format!("{SHEBANG}\nurl = \"ftp://x\"\n"),
        )
        .unwrap();
        let listed = list(&home).unwrap();
        let names: Vec<&str> = listed.iter().map(|(name, _)| name.as_str()).collect();
        // Another script is no launcher at all: not listed as a broken one.
        assert_eq!(names, ["cracked", "demo"]);
        assert!(listed[0].1.is_err(), "cracked is listed with its error");
        assert_eq!(
            listed[1].1.as_ref().unwrap().url,
            "ws://127.0.0.1:9/terminal"
        );
        std::fs::remove_file(home.bin_dir().join("cracked")).unwrap();
        assert!(install(&home, "ws://h/t", "../evil", false).is_err());
        assert!(
            uninstall(&home, "broken").is_err(),
            "only launchers are removed"
        );
        assert!(uninstall(&home, "demo").unwrap().broken.is_none());
        assert!(!path.exists());
        // Broken past its first line: still removed.
        let broken = home.bin_dir().join("half");
        std::fs::write(&broken, format!("{SHEBANG}  \r\nurl = \"ftp://x\"\n")).unwrap();
        assert!(uninstall(&home, "half").unwrap().broken.is_some());
        assert!(!broken.exists());
        // A symbolic link to a launcher is not one.
        install(&home, "ws://127.0.0.1:9/terminal", "demo", false).unwrap();
        std::os::unix::fs::symlink(&path, home.bin_dir().join("link")).unwrap();
        let error = uninstall(&home, "link").unwrap_err().to_string();
        assert!(
            error.ends_with("is a symbolic link); not removing it"),
            "{error}"
        );
        assert!(path.exists());
    }
}
