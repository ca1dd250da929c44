//! Argument parsing: `terminalwire [OPTIONS] URL [ARGS...]`.
//!
//! Everything after the URL belongs to the app, so `terminalwire URL --help`
//! is the app's help: the arguments are split at the URL before clap sees the
//! client's own options.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::exit_code;

/// Options of the client itself (before the URL).
#[derive(Debug, Parser)]
#[command(
    name = "terminalwire",
    version,
    about = "Run a web app's command-line interface on your terminal.",
    long_about = "Run a web app's command-line interface on your terminal.\n\n\
        Connects to the app's terminal endpoint (ws://, or wss:// over TLS; http:// and https:// \
        are mapped to them), runs the command given by ARGS on the server and shows its output here. \
        Everything after the URL is passed to the app: `terminalwire URL --help` shows the app's help.\n\n\
        Over TLS the server's certificate must be issued by a certificate authority this system \
        trusts (or, on a system without any, one of the Mozilla roots built into the client), \
        or by one in the --ca-cert file.",
    after_help = "URLs: ws://, wss:// (TLS), http:// and https:// (mapped to them), and \
        unix:/path/to/app.sock for a per-user server on this machine.\n\n\
        Commands of the client itself (each has --help):\n  \
        entitlement list|grant|revoke|quota   what each server may do here\n  \
        authority list|forget|trust           the servers met, their pinned identities\n  \
        install URL [--name NAME]             install an app as a command of its own\n  \
        uninstall NAME, apps                  remove, list installed apps\n  \
        audit [AUTHORITY] [--since 1h]        what servers asked for, allowed or denied\n  \
        sessions, attach ID                   list, re-attach sessions (Ctrl-\\ detaches, exit 0)\n\n\
        Exit status: the remote command's status; 1 the app's command failed, or a command of \
        the client failed; 2 bad arguments; 65 unusable terminalwire home, policy or --ca-cert \
        file; 69 cannot connect (also: no answer within the connection time-out, TLS certificate \
        not trusted or not for this host); 70 internal error; 74 writing the output failed; \
        75 connection lost (and not resumed within the server's grace period), handshake timed \
        out or server shut down; 76 protocol error; \
        77 the server's identity is not the pinned one; 78 incompatible server; \
        129/143 SIGHUP/SIGTERM; 130 Ctrl-C; 141 stdout closed.\n\n\
        A session survives a dropped connection: the client reconnects and resumes it."
)]
struct Options {
    #[command(flatten)]
    client: ClientOptions,
    /// The app's terminal endpoint, e.g. ws://127.0.0.1:3000/terminal.
    url: String,
    /// Arguments for the app.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Options of the client for any session (new or re-attached).
#[derive(Debug, clap::Args)]
struct ClientOptions {
    /// Seconds to wait for the connection and the server's answer (default
    /// 10, at most 86400, a day; also TERMINALWIRE_CONNECT_TIMEOUT).
    // The variable is read apart (`connect_timeout_from_env`) so that its
    // errors name it, not this option.
    #[arg(long, value_name = "SECS", value_parser = parse_connect_timeout)]
    connect_timeout: Option<Duration>,
    /// Also trust the certificate authorities in this PEM file (one or more
    /// certificates), e.g. a private CA or a self-signed development
    /// certificate. Used for wss:// and https:// only.
    #[arg(long, value_name = "FILE", env = "TERMINALWIRE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Never ask about requests that are not granted: deny them (also
    /// TERMINALWIRE_NO_PROMPT=1).
    #[arg(long)]
    no_prompt: bool,
    /// Seconds a question on the terminal about a request not granted waits
    /// for your answer before it denies (default 300, five minutes, at most
    /// 86400, a day; 0 waits as long as it takes; also
    /// TERMINALWIRE_PROMPT_TIMEOUT).
    // Read apart from the variable, as --connect-timeout is: Duration::ZERO
    // for 0 (a value parser cannot give clap an `Option` to keep).
    #[arg(long, value_name = "SECS", value_parser = parse_prompt_timeout)]
    prompt_timeout: Option<Duration>,
    /// Log the client's own activity on stderr (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The connection time-out when none is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest time-out: a day.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a time-out was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadTimeout {
    /// Not a number, or not above zero.
    NotPositive,
    /// Above [`MAX_CONNECT_TIMEOUT`].
    TooLong,
}

/// A time-out of `text` seconds: more than 0, at most
/// [`MAX_CONNECT_TIMEOUT`].
fn timeout_of(text: &str) -> Result<Duration, BadTimeout> {
    let seconds: f64 = text.trim().parse().map_err(|_| BadTimeout::NotPositive)?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(BadTimeout::NotPositive);
    }
    if seconds > MAX_CONNECT_TIMEOUT.as_secs_f64() {
        return Err(BadTimeout::TooLong);
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|timeout| !timeout.is_zero())
        .ok_or(BadTimeout::NotPositive)
}

/// A consent prompt's time-out of `text` seconds: as [`timeout_of`], or 0
/// for none (`None`: the prompt waits as long as it takes, as sudo's
/// `passwd_timeout` of 0 does).
fn prompt_timeout_of(text: &str) -> Result<Option<Duration>, BadTimeout> {
    match text.trim().parse::<f64>() {
        Ok(0.0) => Ok(None),
        _ => timeout_of(text).map(Some),
    }
}

/// `--connect-timeout`'s value parser (clap says which option and value).
fn parse_connect_timeout(text: &str) -> Result<Duration, String> {
    timeout_of(text).map_err(|bad| match bad {
        BadTimeout::NotPositive => "not a positive number of seconds".to_owned(),
        BadTimeout::TooLong => more_than_a_day(),
    })
}

/// What a time-out option's value too long is told.
fn more_than_a_day() -> String {
    format!(
        "more than the maximum, {} seconds (a day)",
        MAX_CONNECT_TIMEOUT.as_secs()
    )
}

/// `--prompt-timeout`'s value parser: the time-out, or [`Duration::ZERO`]
/// for 0 (no time-out).
fn parse_prompt_timeout(text: &str) -> Result<Duration, String> {
    match prompt_timeout_of(text) {
        Ok(timeout) => Ok(timeout.unwrap_or(Duration::ZERO)),
        Err(BadTimeout::NotPositive) => {
            Err("not a positive number of seconds (or 0, to wait as long as it takes)".to_owned())
        }
        Err(BadTimeout::TooLong) => Err(more_than_a_day()),
    }
}

/// The time-out `value` of the environment variable `name`, parsed by
/// `parse`; `None` when it is unset or empty. Its errors name the variable;
/// `zero` is added to the one for a value that is not positive, to say
/// what 0 means when it means something.
fn timeout_in_env<T>(
    name: &str,
    value: Option<OsString>,
    parse: impl FnOnce(&str) -> Result<T, BadTimeout>,
    zero: &str,
) -> Result<Option<T>, String> {
    // Empty is unset.
    let Some(value) = value.filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok_or(BadTimeout::NotPositive)
        .and_then(parse)
        .map(Some)
        .map_err(|bad| match bad {
            BadTimeout::NotPositive => {
                format!("{name}={value:?} is not a positive number of seconds{zero}")
            }
            BadTimeout::TooLong => format!(
                "{name}={value:?} is more than the maximum, {} seconds (a day)",
                MAX_CONNECT_TIMEOUT.as_secs()
            ),
        })
}

/// The connection time-out of a launcher, which takes no options of its
/// own: `TERMINALWIRE_CONNECT_TIMEOUT` when set, else the default. Its
/// errors name the variable.
pub fn connect_timeout_from_env() -> Result<Duration, String> {
    const NAME: &str = "TERMINALWIRE_CONNECT_TIMEOUT";
    timeout_in_env(NAME, std::env::var_os(NAME), timeout_of, "")
        .map(|timeout| timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
}

/// How long a consent prompt waits for an answer before it denies:
/// `TERMINALWIRE_PROMPT_TIMEOUT` seconds when set (0: as long as it takes,
/// `None`), else [`DEFAULT_PROMPT_TIMEOUT`](crate::consent::DEFAULT_PROMPT_TIMEOUT).
/// Its errors name the variable.
pub fn prompt_timeout_from_env() -> Result<Option<Duration>, String> {
    const NAME: &str = "TERMINALWIRE_PROMPT_TIMEOUT";
    prompt_timeout_in_env(std::env::var_os(NAME))
}

/// [`prompt_timeout_from_env`] of the value `value`.
fn prompt_timeout_in_env(value: Option<OsString>) -> Result<Option<Duration>, String> {
    timeout_in_env(
        "TERMINALWIRE_PROMPT_TIMEOUT",
        value,
        prompt_timeout_of,
        " (or 0, to wait as long as it takes)",
    )
    .map(|timeout| timeout.unwrap_or(Some(crate::consent::DEFAULT_PROMPT_TIMEOUT)))
}

impl ClientOptions {
    /// The connection time-out: the option's, else the environment's,
    /// else the default.
    fn connect_timeout(&self) -> Result<Duration, ParseOutcome> {
        match self.connect_timeout {
            Some(timeout) => Ok(timeout),
            None => connect_timeout_from_env().map_err(|problem| {
                eprintln!("terminalwire: {problem}");
                ParseOutcome::Exit(exit_code::USAGE)
            }),
        }
    }

    /// How long a consent prompt waits (`None`: as long as it takes): the
    /// option's, else the environment's, else the default. The variable is
    /// checked even under `--no-prompt`: a mistyped value is found at once,
    /// not at a later session's first prompt.
    fn prompt_timeout(&self) -> Result<Option<Duration>, ParseOutcome> {
        match self.prompt_timeout {
            Some(timeout) => Ok((!timeout.is_zero()).then_some(timeout)),
            None => prompt_timeout_from_env().map_err(|problem| {
                eprintln!("terminalwire: {problem}");
                ParseOutcome::Exit(exit_code::USAGE)
            }),
        }
    }
}

/// Parses with clap; usage errors, help and version are printed.
fn parse_with<P: Parser>(args: Vec<OsString>) -> Result<P, ParseOutcome> {
    P::try_parse_from(args).map_err(|error| {
        let _ = error.print();
        ParseOutcome::Exit(u8::try_from(error.exit_code()).unwrap_or(exit_code::USAGE))
    })
}

/// Client options that take a value (so the URL split can skip their values).
const OPTIONS_WITH_VALUE: &[&str] = &["--connect-timeout", "--prompt-timeout", "--ca-cert"];

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The URL as typed.
    pub url: String,
    /// Program name reported to the app.
    pub program_name: String,
    /// Arguments for the app.
    pub args: Vec<String>,
    /// Connection and handshake time-out.
    pub connect_timeout: Duration,
    /// Extra trusted CA certificates (PEM) for TLS (`--ca-cert`).
    pub ca_cert: Option<PathBuf>,
    /// Deny ungranted requests without asking (`--no-prompt`).
    pub no_prompt: bool,
    /// How long a consent prompt waits for an answer (`None`: as long as
    /// it takes); `--prompt-timeout`, `TERMINALWIRE_PROMPT_TIMEOUT`.
    pub prompt_timeout: Option<Duration>,
    /// Log level of the client's own logs.
    pub verbose: u8,
}

/// Parsing ended the program (help, version or a usage error was printed).
#[derive(Debug)]
pub enum ParseOutcome {
    /// Exit with this status.
    Exit(u8),
}

/// Parses process arguments (including argv\[0\]).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, ParseOutcome> {
    let mut args = args.into_iter();
    let argv0 = args.next().unwrap_or_else(|| "terminalwire".into());
    let mut own = vec![argv0];
    let mut app_args = Vec::new();
    let mut expecting_value = false;
    let mut found_url = false;
    for arg in args.by_ref() {
        if found_url {
            app_args.push(arg);
            continue;
        }
        let text = arg.to_string_lossy();
        let is_option = text.starts_with('-') && text != "-";
        if expecting_value {
            expecting_value = false;
        } else if text == "--" {
            // `terminalwire -- URL ARGS`: the URL follows.
            continue;
        } else if is_option {
            expecting_value = OPTIONS_WITH_VALUE.contains(&text.as_ref());
        } else {
            found_url = true;
        }
        own.push(arg);
    }
    let options: Options = parse_with(own)?;
    if options.url == "help" {
        // `terminalwire help --help`, as git and cargo answer it: the
        // client's help.
        if let Some(first) = app_args
            .first()
            .filter(|first| *first != "--help" && *first != "-h")
        {
            // `terminalwire -v help audit`: that command's help.
            if client_commands().any(|command| first == command) {
                let mut asked = vec![OsString::from("terminalwire")];
                asked.extend(app_args.iter().cloned());
                asked.push("--help".into());
                return Err(ParseOutcome::Exit(crate::main_with_args(asked)));
            }
            let unknown = first;
            eprintln!(
                "terminalwire: `{}` is not a command of the client (see `terminalwire --help`)",
                unknown.to_string_lossy()
            );
            return Err(ParseOutcome::Exit(exit_code::USAGE));
        }
        let _ = <Options as clap::CommandFactory>::command().print_long_help();
        return Err(ParseOutcome::Exit(0));
    }
    if let Some(problem) = not_a_url(&options.url) {
        eprintln!("terminalwire: {problem}");
        return Err(ParseOutcome::Exit(exit_code::USAGE));
    }
    let mut args = Vec::with_capacity(app_args.len());
    for (index, arg) in app_args.into_iter().enumerate() {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!(
                    "terminalwire: argument {} ({arg:?}) is not valid UTF-8",
                    index + 1
                );
                return Err(ParseOutcome::Exit(exit_code::USAGE));
            }
        }
    }
    Ok(Invocation {
        program_name: format!("terminalwire {}", options.url),
        connect_timeout: options.client.connect_timeout()?,
        prompt_timeout: options.client.prompt_timeout()?,
        url: options.url,
        args,
        ca_cert: options.client.ca_cert,
        no_prompt: options.client.no_prompt,
        verbose: options.client.verbose,
    })
}

/// How many arguments a client option at `arg` takes up (itself and its
/// value), if it is one of the options a session takes.
fn client_option_len(arg: &str) -> Option<usize> {
    match arg {
        "--no-prompt" | "--verbose" => Some(1),
        _ if OPTIONS_WITH_VALUE.contains(&arg) => Some(2),
        _ if OPTIONS_WITH_VALUE.iter().any(|option| {
            arg.strip_prefix(option)
                .is_some_and(|rest| rest.starts_with('='))
        }) =>
        {
            Some(1)
        }
        // `-v`, `-vv`, ...
        _ if arg.len() > 1 && arg.starts_with('-') && arg[1..].bytes().all(|byte| byte == b'v') => {
            Some(1)
        }
        _ => None,
    }
}

/// The client's own options among an app's arguments (up to a `--`),
/// without their values: `terminalwire URL --no-prompt cmd` gives the app
/// `--no-prompt`, and its usage error should be told where it belongs.
pub fn client_options_among(args: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut index = 0;
    while let Some(arg) = args.get(index) {
        if arg == "--" {
            break;
        }
        match client_option_len(arg) {
            Some(len) => {
                found.push(arg.clone());
                index += len;
            }
            None => index += 1,
        }
    }
    found
}

/// The client's options typed before one of its own commands:
/// `terminalwire -v --no-prompt attach ID` is `terminalwire attach -v
/// --no-prompt ID` (process arguments, argv\[0\] included, come back in
/// that order). The other commands never connect to an app, so they take
/// none of these options: that is a usage error that says what to run
/// instead. Any other command line comes back as it was.
pub fn options_before_command(args: Vec<OsString>) -> Result<Vec<OsString>, ParseOutcome> {
    let mut index = 1;
    while let Some(len) = args
        .get(index)
        .and_then(|arg| arg.to_str())
        .and_then(client_option_len)
    {
        index += len;
    }
    let is_command = args
        .get(index)
        .is_some_and(|word| client_commands().any(|command| word == command));
    if index == 1 || !is_command {
        return Ok(args);
    }
    let mut args = args;
    let rest = args.split_off(index);
    let options = args.split_off(1);
    if rest[0] == "attach" {
        args.push(rest[0].clone());
        args.extend(options);
        args.extend(rest.into_iter().skip(1));
        return Ok(args);
    }
    let shown = |words: &[OsString]| {
        words
            .iter()
            .map(|word| shell_word(&word.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let given: Vec<OsString> = options
        .iter()
        .filter(|option| option.to_string_lossy().starts_with('-'))
        .cloned()
        .collect();
    eprintln!(
        "terminalwire: `terminalwire {command}` does not take {given} (options for connecting \
         to an app): run `terminalwire {rest}`",
        command = rest[0].to_string_lossy(),
        given = given
            .iter()
            .map(|option| format!("`{}`", option.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(", "),
        rest = shown(&rest),
    );
    Err(ParseOutcome::Exit(exit_code::USAGE))
}

/// `word` as it would be typed in a shell (the policy's quoting, as in the
/// commands a denial suggests), control characters written out.
fn shell_word(word: &str) -> String {
    terminalwire_policy::shell_word(&crate::inert::inert(word))
}

/// The words that run one of the client's own commands instead of an app.
fn client_commands() -> impl Iterator<Item = &'static str> {
    crate::admin::COMMANDS.iter().copied().chain(["attach"])
}

/// Why a bare word given where the URL goes is neither a URL nor a
/// command (a mistyped command would otherwise be "an invalid URL").
fn not_a_url(word: &str) -> Option<String> {
    if word.trim().is_empty() {
        return Some(
            "the app's URL is empty: give one, e.g. `terminalwire ws://127.0.0.1:3000/terminal \
             ARGS` (see `terminalwire --help`)"
                .to_owned(),
        );
    }
    if word.contains([':', '/', '.']) {
        return None;
    }
    let shown = crate::inert::inert(word);
    if client_commands().any(|command| word == command) {
        // After `--`, which says a URL follows.
        return Some(format!(
            "`{shown}` is a command of the client, not an app's URL: run `terminalwire {shown} ...`"
        ));
    }
    if let Some((_, line)) = SUBCOMMANDS.iter().find(|(sub, _)| word == *sub) {
        return Some(format!(
            "`{shown}` is not a command of its own: did you mean `{line}`? (see \
             `terminalwire --help`)"
        ));
    }
    let hint = match nearest_command(word) {
        Some(suggestion) => format!("; did you mean `{suggestion}`?"),
        // A host name alone (`localhost`, `myserver`): the scheme is missing.
        None => format!("; for an app on host {shown}, add the scheme: https://{shown}/..."),
    };
    Some(format!(
        "`{shown}` is neither an app's URL (ws://, wss://, http://, https://, unix:) nor a command \
         of the client{hint} (see `terminalwire --help`)"
    ))
}

/// The words of the client's second-level commands, and the command
/// lines they belong to (`terminalwire grant` is `terminalwire
/// entitlement grant`).
const SUBCOMMANDS: &[(&str, &str)] = &[
    ("grant", "terminalwire entitlement grant"),
    ("revoke", "terminalwire entitlement revoke"),
    ("quota", "terminalwire entitlement quota"),
    (
        "list",
        "terminalwire entitlement list` or `terminalwire authority list",
    ),
    ("forget", "terminalwire authority forget"),
    ("trust", "terminalwire authority trust"),
    ("version", "terminalwire --version"),
];

/// The command line `word` was most likely meant to start: a command of
/// the client within two edits, else a second-level command's word
/// (within one edit for a word of five letters or more).
fn nearest_command(word: &str) -> Option<String> {
    let closest = client_commands()
        .map(|command| (strsim::damerau_levenshtein(word, command), command))
        .filter(|(distance, _)| *distance <= 2)
        .min();
    if let Some((_, command)) = closest {
        return Some(format!("terminalwire {command}"));
    }
    SUBCOMMANDS
        .iter()
        .map(|(sub, line)| (strsim::damerau_levenshtein(word, sub), sub, line))
        .filter(|(distance, sub, _)| *distance == 0 || (*distance == 1 && sub.len() >= 5))
        .min()
        .map(|(_, _, line)| (*line).to_owned())
}

/// `terminalwire attach ID`: re-attach to a detached session.
#[derive(Debug, Parser)]
#[command(
    name = "terminalwire attach",
    bin_name = "terminalwire attach",
    about = "Re-attach to a session you detached from (Ctrl-\\); `terminalwire sessions` lists them.",
    after_help = "Output the command wrote while detached is shown first. \
        Exit status: the command's, or 75 if the server no longer has the session."
)]
struct AttachOptions {
    /// The session id, as listed by `terminalwire sessions`; AUTHORITY/ID
    /// when apps at two authorities have a session of that id.
    id: String,
    #[command(flatten)]
    client: ClientOptions,
}

/// A parsed `terminalwire attach` command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Attach {
    /// The session to re-attach to: `ID` or `AUTHORITY/ID`.
    pub id: String,
    /// Connection and handshake time-out.
    pub connect_timeout: Duration,
    /// Extra trusted CA certificates (PEM).
    pub ca_cert: Option<PathBuf>,
    /// Deny ungranted requests without asking.
    pub no_prompt: bool,
    /// How long a consent prompt waits for an answer (`None`: as long as
    /// it takes).
    pub prompt_timeout: Option<Duration>,
    /// Log level of the client's own logs.
    pub verbose: u8,
}

/// Parses `terminalwire attach ...` (process arguments including argv\[0\]
/// and the word `attach`).
pub fn parse_attach(args: impl IntoIterator<Item = OsString>) -> Result<Attach, ParseOutcome> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    // clap sees `terminalwire-attach ID ...`.
    if args.len() >= 2 {
        args.remove(1);
    }
    let options: AttachOptions = parse_with(args)?;
    Ok(Attach {
        connect_timeout: options.client.connect_timeout()?,
        prompt_timeout: options.client.prompt_timeout()?,
        id: options.id,
        ca_cert: options.client.ca_cert,
        no_prompt: options.client.no_prompt,
        verbose: options.client.verbose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Invocation {
        parse(args.iter().map(OsString::from)).expect("parses")
    }

    #[test]
    fn everything_after_the_url_is_the_apps() {
        let invocation = parse_ok(&["terminalwire", "ws://h/t", "--help", "-v", "x"]);
        assert_eq!(invocation.url, "ws://h/t");
        assert_eq!(invocation.args, ["--help", "-v", "x"]);
        assert_eq!(invocation.verbose, 0);
        assert_eq!(invocation.program_name, "terminalwire ws://h/t");
    }

    #[test]
    fn client_options_come_before_the_url() {
        let invocation = parse_ok(&[
            "terminalwire",
            "-v",
            "--connect-timeout",
            "2.5",
            "ws://h/t",
            "hello",
        ]);
        assert_eq!(invocation.verbose, 1);
        assert_eq!(invocation.connect_timeout, Duration::from_millis(2500));
        assert_eq!(invocation.args, ["hello"]);
        assert_eq!(invocation.ca_cert, None);
    }

    /// `--prompt-timeout SECS` takes its value before the URL (the URL
    /// split skips it) and 0 is no time-out; after the URL it is the app's.
    #[test]
    fn prompt_timeout_takes_seconds_before_the_url_and_zero_is_none() {
        let invocation = parse_ok(&[
            "terminalwire",
            "--prompt-timeout",
            "2.5",
            "ws://h/t",
            "--prompt-timeout",
            "9",
        ]);
        assert_eq!(invocation.prompt_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(invocation.url, "ws://h/t");
        assert_eq!(invocation.args, ["--prompt-timeout", "9"]);
        let invocation = parse_ok(&["terminalwire", "--prompt-timeout=0", "ws://h/t"]);
        assert_eq!(invocation.prompt_timeout, None);
        assert_eq!(parse_prompt_timeout("86400"), Ok(MAX_CONNECT_TIMEOUT));
        assert_eq!(
            parse_prompt_timeout("-1").unwrap_err(),
            "not a positive number of seconds (or 0, to wait as long as it takes)"
        );
        assert_eq!(
            parse_prompt_timeout("86401").unwrap_err(),
            "more than the maximum, 86400 seconds (a day)"
        );
    }

    #[test]
    fn ca_cert_takes_a_value_before_the_url() {
        let invocation = parse_ok(&[
            "terminalwire",
            "--ca-cert",
            "ca.pem",
            "wss://h/t",
            "--ca-cert",
            "app.pem",
        ]);
        assert_eq!(invocation.ca_cert, Some(PathBuf::from("ca.pem")));
        assert_eq!(invocation.url, "wss://h/t");
        assert_eq!(invocation.args, ["--ca-cert", "app.pem"]);
        let invocation = parse_ok(&["terminalwire", "--ca-cert=ca.pem", "wss://h/t"]);
        assert_eq!(invocation.ca_cert, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn bad_timeout_and_missing_url_are_usage_errors() {
        assert!(matches!(
            parse(["terminalwire", "--connect-timeout", "-1", "ws://h/"].map(OsString::from)),
            Err(ParseOutcome::Exit(2))
        ));
        assert!(matches!(
            parse(["terminalwire"].map(OsString::from)),
            Err(ParseOutcome::Exit(2))
        ));
    }

    #[test]
    fn a_time_out_is_positive_and_at_most_a_day() {
        assert_eq!(timeout_of(" 2.5 "), Ok(Duration::from_millis(2500)));
        assert_eq!(timeout_of("86400"), Ok(MAX_CONNECT_TIMEOUT));
        for bad in ["0", "-1", "abc", "NaN", "", "1e-12"] {
            assert_eq!(timeout_of(bad), Err(BadTimeout::NotPositive), "{bad}");
        }
        for long in ["86400.5", "1e30", "inf"] {
            assert_eq!(timeout_of(long), Err(BadTimeout::TooLong), "{long}");
        }
        let said = parse_connect_timeout("1e30").unwrap_err();
        assert_eq!(said, "more than the maximum, 86400 seconds (a day)");
    }

    #[test]
    fn a_prompt_time_out_is_five_minutes_unless_set_and_zero_is_none() {
        let of = |value: Option<&str>| prompt_timeout_in_env(value.map(OsString::from));
        let five_minutes = Some(crate::consent::DEFAULT_PROMPT_TIMEOUT);
        assert_eq!(five_minutes, Some(Duration::from_secs(300)));
        assert_eq!(of(None), Ok(five_minutes));
        assert_eq!(of(Some("")), Ok(five_minutes), "empty is unset");
        assert_eq!(of(Some("0.5")), Ok(Some(Duration::from_millis(500))));
        assert_eq!(of(Some(" 60 ")), Ok(Some(Duration::from_secs(60))));
        for none in ["0", "0.0", " 0 "] {
            assert_eq!(of(Some(none)), Ok(None), "{none:?}");
        }
        assert_eq!(
            of(Some("-1")).unwrap_err(),
            "TERMINALWIRE_PROMPT_TIMEOUT=\"-1\" is not a positive number of seconds \
             (or 0, to wait as long as it takes)"
        );
        for bad in ["abc", "NaN", "1e-12", "5m"] {
            assert!(of(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            of(Some("86401")).unwrap_err(),
            "TERMINALWIRE_PROMPT_TIMEOUT=\"86401\" is more than the maximum, 86400 seconds (a day)"
        );
        // The connection's variable says what it always said.
        let connect = timeout_in_env(
            "TERMINALWIRE_CONNECT_TIMEOUT",
            Some("0".into()),
            timeout_of,
            "",
        );
        assert_eq!(
            connect.unwrap_err(),
            "TERMINALWIRE_CONNECT_TIMEOUT=\"0\" is not a positive number of seconds"
        );
    }

    #[test]
    fn attach_takes_an_id_and_client_options() {
        let attach = parse_attach(
            [
                "terminalwire",
                "attach",
                "-v",
                "--connect-timeout",
                "3",
                "abc-1",
            ]
            .map(OsString::from),
        )
        .expect("parses");
        assert_eq!(attach.id, "abc-1");
        assert_eq!(attach.verbose, 1);
        assert_eq!(attach.connect_timeout, Duration::from_secs(3));
        assert!(matches!(
            parse_attach(["terminalwire", "attach"].map(OsString::from)),
            Err(ParseOutcome::Exit(2))
        ));
    }

    fn words(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn client_options_before_attach_go_to_attach() {
        let moved = options_before_command(words(&[
            "terminalwire",
            "--no-prompt",
            "-vv",
            "--connect-timeout",
            "3",
            "--ca-cert=ca.pem",
            "attach",
            "abc-1",
        ]))
        .expect("accepted");
        assert_eq!(
            moved,
            words(&[
                "terminalwire",
                "attach",
                "--no-prompt",
                "-vv",
                "--connect-timeout",
                "3",
                "--ca-cert=ca.pem",
                "abc-1",
            ])
        );
        let attach = parse_attach(moved).expect("parses");
        assert_eq!(attach.id, "abc-1");
        assert!(attach.no_prompt);
        assert_eq!(attach.verbose, 2);
        assert_eq!(attach.connect_timeout, Duration::from_secs(3));
        assert_eq!(attach.ca_cert, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn client_options_before_a_command_that_takes_none_are_a_usage_error() {
        for args in [
            &["terminalwire", "-v", "entitlement", "list"][..],
            &["terminalwire", "--connect-timeout", "3", "sessions"],
            &["terminalwire", "--no-prompt", "--verbose", "audit"],
        ] {
            assert!(
                matches!(
                    options_before_command(words(args)),
                    Err(ParseOutcome::Exit(exit_code::USAGE))
                ),
                "{args:?}"
            );
        }
        // Anything else is left as it was.
        for args in [
            &["terminalwire", "-v", "ws://h/t", "attach"][..],
            &["terminalwire", "attach", "-v", "x"],
            &["terminalwire", "--", "attach", "x"],
            &["terminalwire", "--bogus", "attach", "x"],
            &["terminalwire", "--connect-timeout"],
            &["terminalwire", "entitlement", "list"],
        ] {
            assert_eq!(
                options_before_command(words(args)).expect("left alone"),
                words(args)
            );
        }
    }

    #[test]
    fn client_options_among_an_apps_arguments_are_found_up_to_a_double_dash() {
        let args = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            client_options_among(&args(&[
                "--no-prompt",
                "hello",
                "--connect-timeout",
                "-v",
                "--ca-cert=x",
                "--prompt-timeout",
                "-vv",
                "-vv",
                "--",
                "--verbose"
            ])),
            [
                "--no-prompt",
                "--connect-timeout",
                "--ca-cert=x",
                "--prompt-timeout",
                "-vv"
            ]
        );
        assert!(client_options_among(&args(&["hello", "-x", "--shout", "--no"])).is_empty());
    }

    #[test]
    fn a_suggested_command_line_is_quoted_for_a_shell() {
        assert_eq!(shell_word("~/reports/**"), "'~/reports/**'");
        assert_eq!(shell_word("example.com:3000"), "example.com:3000");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("a\u{1b}b"), "'a\\u{1b}b'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn a_word_that_is_no_url_is_a_usage_error_with_the_nearest_command() {
        for word in ["entitelment", "instal", "atach"] {
            let problem = not_a_url(word).unwrap();
            assert!(problem.contains("nor a command"), "{problem}");
            assert!(
                problem.contains("did you mean `terminalwire "),
                "{word}: {problem}"
            );
        }
        assert!(
            not_a_url("atach")
                .unwrap()
                .contains("`terminalwire attach`")
        );
        // Second-level commands' words, alone or mistyped.
        for (word, meant) in [
            ("grant", "`terminalwire entitlement grant`"),
            ("revoke", "`terminalwire entitlement revoke`"),
            ("quota", "`terminalwire entitlement quota`"),
            (
                "list",
                "`terminalwire entitlement list` or `terminalwire authority list`",
            ),
            ("forget", "`terminalwire authority forget`"),
            ("trust", "`terminalwire authority trust`"),
            ("version", "`terminalwire --version`"),
            ("grnat", "`terminalwire entitlement grant`"),
            ("forgte", "`terminalwire authority forget`"),
        ] {
            let said = not_a_url(word).unwrap();
            assert!(said.contains(&format!("did you mean {meant}?")), "{said}");
            assert!(!said.contains("host"), "{said}");
        }
        let said = not_a_url("").unwrap();
        assert!(said.starts_with("the app's URL is empty"), "{said}");
        let host = not_a_url("myserver").unwrap();
        assert!(!host.contains("did you mean"), "{host}");
        assert!(host.contains("add the scheme: https://myserver/"), "{host}");
        // Anything that could be a host or URL goes on to the URL parser,
        // which says which scheme to add.
        for url in ["localhost:3000", "example.com", "ws://h/t", "unix:/s"] {
            assert_eq!(not_a_url(url), None, "{url}");
        }
        assert!(matches!(
            parse(["terminalwire", "entitelment", "list"].map(OsString::from)),
            Err(ParseOutcome::Exit(exit_code::USAGE))
        ));
        assert!(matches!(
            parse(["terminalwire", "help"].map(OsString::from)),
            Err(ParseOutcome::Exit(0))
        ));
        assert!(matches!(
            parse(["terminalwire", "help", "nope"].map(OsString::from)),
            Err(ParseOutcome::Exit(exit_code::USAGE))
        ));
        // After the client's options too: that command's help.
        assert!(matches!(
            parse(["terminalwire", "-v", "help", "sessions"].map(OsString::from)),
            Err(ParseOutcome::Exit(0))
        ));
        // The help of `help` is the client's help (it said "`--help` is not
        // a command of the client", status 2).
        for asked in ["--help", "-h"] {
            assert!(matches!(
                parse(["terminalwire", "help", asked].map(OsString::from)),
                Err(ParseOutcome::Exit(0))
            ));
        }
    }
}
