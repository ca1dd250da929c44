//! The user's administration commands: `terminalwire entitlement ...` and
//! `terminalwire authority ...`.
//!
//! These edit the per-authority policy files under the terminalwire home
//! (`$TERMINALWIRE_HOME`, else `~/.terminalwire`). They never talk to a
//! server.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use terminalwire_policy::grant::{Access, BrowserTarget, EnvName, Mode, PathGrant, PathPattern};
use terminalwire_policy::{Authority, Grant, GrantOutcome, Home, Policy};
use terminalwire_protocol::report::chain_text;

use crate::error::exit_code;
use crate::inert::inert;

/// The first words that select an administration command instead of a URL.
pub const COMMANDS: &[&str] = &[
    "entitlement",
    "authority",
    "install",
    "uninstall",
    "apps",
    "audit",
    "sessions",
];

#[derive(Debug, Parser)]
#[command(
    name = "terminalwire",
    version,
    about = "Manage what web apps may do on this machine."
)]
struct Admin {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// List, grant and revoke what an authority (a server) may do here, and
    /// set its storage quota.
    #[command(subcommand)]
    Entitlement(EntitlementCommand),
    /// List, forget or trust again the authorities this client has met.
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Install an app as a command of its own (a launcher in
    /// ~/.terminalwire/bin).
    Install {
        /// The app's URL.
        url: String,
        /// The command name (default: from the URL).
        #[arg(long)]
        name: Option<String>,
        /// Replace a launcher of that name installed for another URL.
        #[arg(long)]
        force: bool,
    },
    /// Remove an installed app's launcher.
    Uninstall {
        /// The command name.
        name: String,
    },
    /// List the installed apps.
    Apps,
    /// List the sessions you detached from (Ctrl-\), oldest first;
    /// re-attach with `terminalwire attach ID` (`AUTHORITY/ID` when two
    /// authorities have a session of that id). Expired ones are removed.
    Sessions,
    /// Show what servers did on this machine (files, folders, environment,
    /// browser), allowed or denied. Lines of a log that are not entries are
    /// counted on stderr, per file, not shown.
    Audit {
        /// Only this authority (or a URL of it); default: all.
        authority: Option<String>,
        /// Only entries since then: a duration (`1h`, `30m`, `2days`), a
        /// time (`2026-11-26T09:00:00Z`) or a day (`2026-11-26`, from
        /// midnight UTC).
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EntitlementCommand {
    /// Show the grants of one authority, or of every authority.
    List {
        /// An authority (`example.com:3000`) or a URL of it.
        authority: Option<String>,
    },
    /// Allow an authority a path pattern, an environment variable or a browser target.
    Grant(GrantArgs),
    /// Take a grant away (same shapes as `grant`, without `--mode`).
    Revoke(RevokeArgs),
    /// Set what an authority's storage folder may hold (1024 MiB unless set).
    Quota {
        /// An authority (`example.com:3000`) or a URL of it.
        authority: String,
        /// The quota in MiB, or `default`.
        mib: String,
    },
}

#[derive(Debug, Args)]
struct GrantArgs {
    /// An authority (`example.com:3000`) or a URL of it.
    authority: String,
    #[command(subcommand)]
    what: GrantTarget,
}

#[derive(Debug, Subcommand)]
enum GrantTarget {
    /// Paths matching a glob, e.g. '~/reports/**' (quote it for your shell).
    /// Without an access flag, `grant` grants reading and `revoke` takes
    /// the whole grant away.
    Path {
        /// An absolute or `~/` glob pattern.
        pattern: String,
        /// Reading files, listing folders.
        #[arg(long, group = "access")]
        read: bool,
        /// Creating, writing, deleting, changing modes.
        #[arg(long, group = "access")]
        write: bool,
        /// Both.
        #[arg(long, group = "access")]
        read_write: bool,
        /// The widest mode (octal, e.g. 0644) for files the server creates or chmods.
        #[arg(long, value_name = "OCTAL")]
        mode: Option<String>,
    },
    /// An environment variable the server may read.
    Env {
        /// The variable's name.
        name: String,
    },
    /// A scheme (`mailto`) or origin (`https://github.com`) the server may open in your browser.
    Browser {
        /// The scheme or origin.
        target: String,
    },
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// An authority (`example.com:3000`) or a URL of it.
    authority: String,
    #[command(subcommand)]
    what: RevokeTarget,
}

#[derive(Debug, Subcommand)]
enum RevokeTarget {
    /// A path grant, by its pattern as granted (see `entitlement list`).
    /// Without an access flag the whole grant is taken away, whatever its
    /// mode.
    Path {
        /// The pattern, exactly as granted.
        pattern: String,
        /// Take reading away (writing stays, if granted).
        #[arg(long, group = "access")]
        read: bool,
        /// Take writing away (reading stays, if granted).
        #[arg(long, group = "access")]
        write: bool,
        /// Take both away: the whole grant.
        #[arg(long, group = "access")]
        read_write: bool,
    },
    /// An environment variable.
    Env {
        /// The variable's name.
        name: String,
    },
    /// A scheme or origin, as granted.
    Browser {
        /// The scheme or origin.
        target: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuthorityCommand {
    /// List the authorities that have a folder here.
    List,
    /// Pin the server identity an authority must present (after a
    /// deliberate key change), e.g. `--fingerprint SHA256:...`.
    Trust {
        /// An authority (`example.com:3000`) or a URL of it.
        authority: String,
        /// The fingerprint the server now presents, as the client showed it.
        #[arg(long)]
        fingerprint: String,
    },
    /// Delete an authority's folder: its storage, its grants, its pinned
    /// identity, this device's key for it, its audit log and its detached
    /// sessions.
    Forget {
        /// An authority (`example.com:3000`) or a URL of it.
        authority: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

/// Whether these arguments (after argv\[0\]) name an administration command.
/// A URL always has a scheme, so these words cannot be one.
pub fn is_admin(args: &[OsString]) -> bool {
    args.first()
        .is_some_and(|first| COMMANDS.iter().any(|command| first == *command))
}

/// Parses the words of an administration command; a usage error gets a
/// tip where clap's own words do not say what to type instead.
fn parse_admin(args: Vec<OsString>) -> Result<Admin, clap::Error> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let revoking = args.iter().any(|arg| arg == "revoke");
    Admin::try_parse_from(args).map_err(|mut error| {
        let named = |kind| match error.get(kind) {
            Some(ContextValue::String(one)) => vec![one.clone()],
            Some(ContextValue::Strings(many)) => many.clone(),
            _ => Vec::new(),
        };
        let mut flags = named(ContextKind::InvalidArg);
        flags.extend(named(ContextKind::PriorArg));
        let has = |flag: &str| flags.iter().any(|named| named == flag);
        let tip = match error.kind() {
            ErrorKind::ArgumentConflict if has("--read") && has("--write") => {
                Some("for both, use --read-write")
            }
            ErrorKind::UnknownArgument if revoking && has("--mode") => Some(
                "revoke takes a grant away whatever its mode; to change the mode, grant the \
                 pattern again with --mode",
            ),
            _ => None,
        };
        if let Some(tip) = tip {
            error.insert(
                ContextKind::Suggested,
                ContextValue::StyledStrs(vec![tip.into()]),
            );
        }
        error
    })
}

/// Runs an administration command; returns the exit status.
pub fn main(args: Vec<OsString>) -> u8 {
    let admin = match parse_admin(args) {
        Ok(admin) => admin,
        Err(error) => {
            let _ = error.print();
            return u8::try_from(error.exit_code()).unwrap_or(exit_code::USAGE);
        }
    };
    let home = match Home::from_env() {
        Ok(home) => home,
        Err(error) => {
            eprintln!("terminalwire: {error}");
            return exit_code::CONFIG;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(admin.command, &home, &mut out) {
        Ok(()) => 0,
        // `terminalwire audit | head`: the reader has all it wanted.
        Err(error) if is_broken_pipe(&error) => exit_code::BROKEN_PIPE,
        Err(error) => {
            let _ = out.flush();
            // A policy file or log may quote a server's path.
            eprintln!(
                "terminalwire: {}",
                crate::inert::inert_lines(&chain_text(error.as_ref()))
            );
            exit_code_of(&error)
        }
    }
}

/// 2 for an argument that does not parse, 65 when the home or a policy
/// file is unusable (as a session says it: damaged, or one that cannot be
/// written, such as on a read-only home), else 1.
fn exit_code_of(error: &anyhow::Error) -> u8 {
    if let Some(unlisted) = error.downcast_ref::<Unlisted>() {
        return unlisted.status;
    }
    if error.downcast_ref::<BadArgument>().is_some() {
        return exit_code::USAGE;
    }
    use terminalwire_policy::PolicyError;
    let unusable = error.chain().any(|cause| {
        cause
            .downcast_ref::<terminalwire_policy::HomeError>()
            .is_some()
            || match cause.downcast_ref::<PolicyError>() {
                Some(PolicyError::Read { .. } | PolicyError::Parse { .. }) => true,
                Some(PolicyError::Write { .. }) => true,
                // Another client held the lock too long: nothing is wrong
                // with the home, the command may simply be run again.
                Some(PolicyError::Lock { source, .. }) => {
                    source.kind() != std::io::ErrorKind::WouldBlock
                }
                _ => false,
            }
    });
    if unusable {
        exit_code::CONFIG
    } else {
        exit_code::FAILURE
    }
}

/// Width of the audit table's DECISION column: its longest decision,
/// "denied (unanswered)", so that BYTES and TARGET stay in line.
const DECISION_WIDTH: usize = "denied ()".len() + crate::audit::PROMPT_UNANSWERED.len();

/// An audit entry's decision as the table shows it: with what the consent
/// prompt made of it, when it asked ("denied (refused)").
fn shown_decision(entry: &crate::audit::Entry) -> String {
    match &entry.prompt {
        Some(prompt) => format!("{} ({prompt})", entry.decision),
        None => entry.decision.clone(),
    }
}

/// An argument of an administration command that does not parse (an
/// authority, a grant's value, a quota, a fingerprint, `--since`): a usage
/// error, as clap's own are, not a command that failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct BadArgument(Box<dyn std::error::Error + Send + Sync + 'static>);

/// Marks `error`, met parsing an argument, as a [`BadArgument`].
fn bad_argument(error: anyhow::Error) -> anyhow::Error {
    BadArgument(error.into()).into()
}

/// `entitlement list` of every authority, some of which could not be
/// listed (each said already): the status is the most specific of theirs,
/// 65 when one was unusable, as listing that authority alone exits.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} authorities could not be listed")]
struct Unlisted {
    failed: usize,
    total: usize,
    status: u8,
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(command: AdminCommand, home: &Home, out: &mut impl Write) -> anyhow::Result<()> {
    match command {
        AdminCommand::Sessions => sessions(home, out)?,
        AdminCommand::Entitlement(EntitlementCommand::List { authority }) => {
            let authorities = match authority {
                Some(authority) => vec![parse_authority(&authority)?],
                None => home.list_authorities()?,
            };
            if authorities.is_empty() {
                writeln!(
                    out,
                    "No authorities yet (none has been granted anything or connected)."
                )?;
            }
            // One unusable policy file does not hide the others.
            let mut unusable = 0;
            let mut status = exit_code::FAILURE;
            for (index, authority) in authorities.iter().enumerate() {
                if index > 0 {
                    writeln!(out)?;
                }
                if let Err(error) = list(home, authority, out) {
                    if is_broken_pipe(&error) || authorities.len() == 1 {
                        return Err(error);
                    }
                    out.flush()?;
                    eprintln!(
                        "terminalwire: {authority}: {}",
                        crate::inert::inert_lines(&chain_text(error.as_ref()))
                    );
                    unusable += 1;
                    if exit_code_of(&error) == exit_code::CONFIG {
                        status = exit_code::CONFIG;
                    }
                }
            }
            if unusable > 0 {
                return Err(Unlisted {
                    failed: unusable,
                    total: authorities.len(),
                    status,
                }
                .into());
            }
        }
        AdminCommand::Entitlement(EntitlementCommand::Grant(args)) => {
            let authority = parse_authority(&args.authority)?;
            let grant = parse_grant(args.what, Access::Read).map_err(bad_argument)?;
            let path = home.policy_file(&authority);
            let (policy, outcome) = update(home, &path, |policy| Ok(policy.grant(grant.clone())))?;
            let verb = match outcome {
                GrantOutcome::Added => "granted",
                GrantOutcome::Updated => "updated",
                GrantOutcome::Unchanged => "already granted",
            };
            // What holds now: a grant of write over read is read-write.
            let held = match &grant {
                Grant::Path(asked) => policy
                    .paths
                    .iter()
                    .find(|held| held.pattern == asked.pattern)
                    .map_or_else(|| grant.clone(), |held| Grant::Path(held.clone())),
                _ => grant.clone(),
            };
            writeln!(out, "{authority}: {verb} {}", describe(&held))?;
            let warnings = match &held {
                Grant::Path(path_grant) => {
                    let user_home = terminalwire_policy::home::user_home()?;
                    grant_warnings(path_grant, home.root(), &user_home)
                }
                Grant::Browser(target) => browser_warnings(target),
                Grant::Env(_) => Vec::new(),
            };
            for warning in warnings {
                eprintln!("terminalwire: warning: {warning}");
            }
        }
        AdminCommand::Entitlement(EntitlementCommand::Revoke(args)) => {
            let authority = parse_authority(&args.authority)?;
            let grant = parse_revoke(args.what).map_err(bad_argument)?;
            let path = home.policy_file(&authority);
            let (policy, ()) = update(home, &path, |policy| {
                if policy.revoke(&grant) {
                    return Ok(());
                }
                let what = match &grant {
                    // No grant of that pattern at all: its access is moot.
                    Grant::Path(gone)
                        if !policy.paths.iter().any(|held| held.pattern == gone.pattern) =>
                    {
                        format!("path {}", inert(gone.pattern.as_str()))
                    }
                    _ => describe(&grant),
                };
                bail!(
                    "{authority} has no grant of {what}; see `terminalwire entitlement list {authority}`"
                );
            })?;
            match &grant {
                Grant::Path(gone) => {
                    let pattern = inert(gone.pattern.as_str());
                    match policy
                        .paths
                        .iter()
                        .find(|held| held.pattern == gone.pattern)
                    {
                        Some(left) => writeln!(
                            out,
                            "{authority}: revoked {} of path {pattern}; {} is still granted",
                            gone.access, left.access
                        )?,
                        None => writeln!(out, "{authority}: revoked path {pattern}")?,
                    }
                }
                _ => writeln!(out, "{authority}: revoked {}", describe(&grant))?,
            }
        }
        AdminCommand::Entitlement(EntitlementCommand::Quota { authority, mib }) => {
            let authority = parse_authority(&authority)?;
            let quota = parse_quota(&mib).map_err(bad_argument)?;
            let path = home.policy_file(&authority);
            let (policy, ()) = update(home, &path, |policy| {
                policy.storage_quota_mib = quota;
                Ok(())
            })?;
            writeln!(
                out,
                "{authority}: storage may hold {} MiB",
                policy.storage_quota_bytes() >> 20
            )?;
        }
        AdminCommand::Install { url, name, force } => {
            let name = match name {
                Some(name) => name,
                None => crate::launcher::default_name(&url)
                    .with_context(|| {
                        format!("cannot derive a command name from {url}; use --name NAME")
                    })
                    .map_err(bad_argument)?,
            };
            crate::launcher::check_arguments(&url, &name).map_err(bad_argument)?;
            let installed = crate::launcher::install(home, &url, &name, force)?;
            let path = installed.path().display();
            match &installed {
                crate::launcher::Installed::New(_) => writeln!(out, "installed {name}: {path}")?,
                crate::launcher::Installed::Unchanged(_) => {
                    writeln!(out, "{name} is already installed: {path}")?;
                }
                crate::launcher::Installed::Replaced { previous, .. } => writeln!(
                    out,
                    "installed {name}: {path} ({})",
                    match previous {
                        Some(before) if crate::launcher::same_app(before, &url) => {
                            "made runnable again".to_owned()
                        }
                        Some(before) => format!("it ran {before} before"),
                        None => "it replaced a broken launcher".to_owned(),
                    }
                )?,
            }
            let dir = home.bin_dir();
            for other in crate::launcher::shadowed(&name, &dir) {
                // Said on stderr: it is a warning, whatever stdout is piped to.
                eprintln!(
                    "terminalwire: warning: {} is also a command on your PATH; \
                     `{name}` runs whichever comes first (pick another --name to avoid it)",
                    other.display()
                );
            }
            if !crate::launcher::on_path(&dir) {
                // Appended, so that a launcher never hides a system command.
                writeln!(
                    out,
                    "add its folder to your PATH to run `{name}`: export PATH=\"$PATH:{}\"",
                    dir.display()
                )?;
            }
        }
        AdminCommand::Uninstall { name } => {
            let removed = crate::launcher::uninstall(home, &name)?;
            // What broke it is in `terminalwire apps`; it is gone now.
            let broken = if removed.broken.is_some() {
                " (a broken launcher)"
            } else {
                ""
            };
            writeln!(
                out,
                "uninstalled {name}{broken}: removed {}",
                removed.path.display()
            )?;
        }
        AdminCommand::Audit {
            authority,
            since,
            json,
        } => {
            let since = since
                .as_deref()
                .map(parse_since)
                .transpose()
                .map_err(bad_argument)?;
            let authorities = match authority {
                Some(authority) => vec![parse_authority(&authority)?],
                None => home.list_authorities()?,
            };
            let mut any = false;
            let mut unreadable = Vec::new();
            for authority in authorities {
                let path = home.authority_dir(&authority).join("audit.log");
                let read = crate::audit::read_log(&path, since).map_err(|error| {
                    match error.kind() == std::io::ErrorKind::PermissionDenied {
                        true => home.why_denied(&path).map(anyhow::Error::from),
                        false => None,
                    }
                    .unwrap_or_else(|| anyhow::Error::from(error))
                    .context(format!("cannot read the audit log of {authority}"))
                })?;
                unreadable.extend(read.unreadable);
                for entry in read.entries {
                    if json {
                        let mut value = serde_json::to_value(&entry)?;
                        value["authority"] = serde_json::Value::from(authority.to_string());
                        writeln!(out, "{}", json_inert(&value.to_string()))?;
                    } else {
                        if !any {
                            writeln!(
                                out,
                                "{:<24} {:<22} {:<8} {:<20} {:<DECISION_WIDTH$} {:>10}  TARGET",
                                "TIME", "AUTHORITY", "RESOURCE", "ACTION", "DECISION", "BYTES"
                            )?;
                        }
                        // Targets are the server's paths and URLs, as sent.
                        writeln!(
                            out,
                            "{:<24} {:<22} {:<8} {:<20} {:<DECISION_WIDTH$} {:>10}  {}",
                            inert(&entry.time),
                            authority.as_str(),
                            inert(&entry.resource),
                            inert(&entry.action),
                            inert(&shown_decision(&entry)),
                            entry.bytes.map(|b| b.to_string()).unwrap_or_default(),
                            inert(&entry.target)
                        )?;
                    }
                    any = true;
                }
            }
            if !any && !json {
                writeln!(out, "Nothing recorded.")?;
            }
            // Said after the listing, on stderr (a `--json` reader's stdout
            // stays JSON): what the log lost is not silently hidden, and
            // what it kept is still shown.
            out.flush()?;
            for (file, lines) in unreadable {
                let lines = match lines {
                    1 => "1 line".to_owned(),
                    many => format!("{many} lines"),
                };
                eprintln!(
                    "terminalwire: warning: {lines} of {} could not be read (not audit \
                     entries) and are not shown",
                    inert(&file.display().to_string())
                );
            }
        }
        AdminCommand::Apps => {
            let apps = crate::launcher::list(home)?;
            if apps.is_empty() {
                writeln!(
                    out,
                    "No apps installed (see `terminalwire install --help`)."
                )?;
            }
            for (name, launcher) in apps {
                match launcher {
                    Ok(launcher) => writeln!(out, "{name}  {}", launcher.url)?,
                    Err(error) => writeln!(out, "{name}  (broken: {error})")?,
                }
            }
        }
        AdminCommand::Authority(AuthorityCommand::List) => {
            let authorities = home.list_authorities()?;
            if authorities.is_empty() {
                writeln!(out, "No authorities yet.")?;
            }
            for authority in authorities {
                match crate::secure::load_pin(&home.server_pin_file(&authority)) {
                    Ok(crate::secure::ServerPin::Pinned(fingerprint)) => {
                        writeln!(out, "{authority}  {fingerprint}")?
                    }
                    Ok(crate::secure::ServerPin::FirstContact) => writeln!(out, "{authority}")?,
                    // Not shown as unpinned: every session with it exits 65.
                    Err(error) => writeln!(
                        out,
                        "{authority}  (damaged: {})",
                        crate::inert::inert(&error.to_string())
                    )?,
                }
            }
        }
        AdminCommand::Authority(AuthorityCommand::Trust {
            authority,
            fingerprint,
        }) => {
            let authority = parse_authority(&authority)?;
            let valid = fingerprint.strip_prefix("SHA256:").is_some_and(|b64| {
                b64.len() == 43
                    && b64
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
            });
            if !valid {
                return Err(bad_argument(anyhow::anyhow!(
                    "{fingerprint:?} is not a fingerprint; expected SHA256: and 43 base64 characters, as the client printed it"
                )));
            }
            let path = home.server_pin_file(&authority);
            let before = crate::secure::load_pin(&path).ok();
            // A home that cannot be written (read-only, another user's) is
            // unusable, as `forget` and a policy change say it.
            crate::secure::save_pin(&path, &fingerprint)
                .map_err(|error| crate::home_error(home, "write", &path, error))?;
            match before {
                Some(crate::secure::ServerPin::Pinned(old)) if old != fingerprint => {
                    writeln!(out, "{authority}: now trusting {fingerprint} (was {old})")?
                }
                _ => writeln!(out, "{authority}: trusting {fingerprint}")?,
            }
        }
        AdminCommand::Authority(AuthorityCommand::Forget { authority, yes }) => {
            let authority = parse_authority(&authority)?;
            let folder = home.authority_dir(&authority);
            if !folder.exists() {
                bail!("{authority} has no folder at {}", folder.display());
            }
            if !yes
                && !confirm(&format!(
                    "Delete {} (the storage, grants, pinned identity, device key, audit log and \
                     detached sessions of {authority})? [y/N] ",
                    folder.display()
                ))?
            {
                bail!("not confirmed; nothing was deleted (use --yes to skip the question)");
            }
            std::fs::remove_dir_all(&folder)
                .map_err(|error| crate::home_error(home, "delete", &folder, error))?;
            writeln!(out, "forgot {authority}: deleted {}", folder.display())?;
        }
    }
    Ok(())
}

/// `1h`, `30m`, `2days` ago, an RFC 3339 time, or a day (from midnight
/// UTC, as the log's times are).
fn parse_since(text: &str) -> anyhow::Result<std::time::SystemTime> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(&format!("{text}T00:00:00Z")) {
        return Ok(time);
    }
    let Ok(ago) = humantime::parse_duration(text) else {
        anyhow::bail!(
            "--since {text:?}: expected a duration like 1h, a day like 2026-11-26 or a time \
             like 2026-11-26T09:00:00Z"
        );
    };
    std::time::SystemTime::now()
        .checked_sub(ago)
        .with_context(|| format!("--since {text} is further back than this clock goes"))
}

fn load(home: &Home, path: &Path) -> anyhow::Result<Policy> {
    // Checked as a session checks it: grants another user could have
    // written are neither shown as yours nor saved again as yours.
    home.check_private(path, terminalwire_policy::Privacy::OwnerWrites)?;
    // A corrupt file is reported with its line, never silently replaced.
    Policy::load(path).map_err(|error| crate::policy_error(home, error))
}

/// Changes the policy file at `path` under its lock ([`Policy::update`]):
/// a grant, revoke or quota made by other clients meanwhile (another
/// `terminalwire entitlement`, a session saving an "always" answer) is kept.
/// `change` may run twice.
fn update<T>(
    home: &Home,
    path: &Path,
    change: impl FnMut(&mut Policy) -> anyhow::Result<T>,
) -> anyhow::Result<(Policy, T)> {
    // As [`load`] checks it.
    home.check_private(path, terminalwire_policy::Privacy::OwnerWrites)?;
    Policy::update(path, change).map_err(|error| {
        match error.downcast::<terminalwire_policy::PolicyError>() {
            Ok(error) => crate::policy_error(home, error),
            Err(error) => error,
        }
    })
}

fn list(home: &Home, authority: &Authority, out: &mut impl Write) -> anyhow::Result<()> {
    let path = home.policy_file(authority);
    let policy = load(home, &path)?;
    writeln!(out, "{authority}   (grants in {})", path.display())?;
    let storage = home.storage_dir(authority);
    // As the quota counts it: bytes, plus a block per file or folder.
    let used = if storage.is_dir() {
        crate::quota::measure(&storage)
    } else {
        0
    };
    let used = if used == u64::MAX {
        "full: too many entries to count".to_owned()
    } else {
        format!("{:.1} MiB used", used as f64 / f64::from(1u32 << 20))
    };
    writeln!(
        out,
        "  storage  {}  read-write, always, up to {} MiB ({used})",
        storage.display(),
        policy.storage_quota_bytes() >> 20,
    )?;
    writeln!(out, "  browser  http(s) URLs of its own origin, always")?;
    for grant in &policy.paths {
        match grant.mode {
            Some(mode) => writeln!(
                out,
                "  path     {}  {}  mode {mode}",
                inert(grant.pattern.as_str()),
                grant.access
            )?,
            None => writeln!(
                out,
                "  path     {}  {}",
                inert(grant.pattern.as_str()),
                grant.access
            )?,
        }
    }
    for grant in &policy.env {
        writeln!(out, "  env      {}", inert(grant.name.as_str()))?;
    }
    for grant in &policy.browser {
        writeln!(out, "  browser  {}", inert(grant.target.as_str()))?;
    }
    Ok(())
}

/// The grant of a `terminalwire entitlement grant AUTHORITY ...` command
/// line (as a denial suggests it); `None` for anything else.
pub fn grant_from_words(words: &[String]) -> Option<Grant> {
    let admin = Admin::try_parse_from(words).ok()?;
    match admin.command {
        AdminCommand::Entitlement(EntitlementCommand::Grant(args)) => {
            parse_grant(args.what, Access::Read).ok()
        }
        _ => None,
    }
}

/// A quota as typed: a whole number of MiB within the bounds, or `default`
/// (`None`).
fn parse_quota(mib: &str) -> anyhow::Result<Option<u64>> {
    Ok(match mib {
        "default" => None,
        number => {
            use terminalwire_policy::MAX_STORAGE_QUOTA_MIB as MAX;
            let digits = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
            let parsed = number.parse::<u64>();
            // Past the most, or past what a u64 holds.
            let too_big = match &parsed {
                Ok(n) => *n > MAX,
                Err(_) => digits,
            };
            match parsed {
                Ok(n) if (1..=MAX).contains(&n) => Some(n),
                Ok(0) => bail!(
                    "invalid quota {mib:?}: it must be at least 1 MiB; give a whole \
                     number of MiB, or `default`"
                ),
                _ if too_big => bail!(
                    "quota {number} MiB is more than the most there can be, {MAX} MiB: \
                     give a smaller number, or `default`"
                ),
                _ => {
                    bail!("invalid quota {mib:?}: give a whole number of MiB, or `default`")
                }
            }
        }
    })
}

/// An authority typed as `host[:port]` or as a URL of it.
fn parse_authority(text: &str) -> anyhow::Result<Authority> {
    typed_authority(text).map_err(bad_argument)
}

fn typed_authority(text: &str) -> anyhow::Result<Authority> {
    if text.starts_with("unix:") {
        // A per-user server's socket: its authority is `local-` and a hash
        // of the path, which nobody types.
        let target =
            crate::connect::Target::parse(text).map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(Authority::parse(&target.authority)?)
    } else if text.contains("://") {
        if terminalwire_policy::authority::has_no_host(text) {
            bail!(terminalwire_policy::AuthorityError::NoHost {
                url: text.to_owned()
            });
        }
        let url = url::Url::parse(text).with_context(|| format!("invalid URL {text:?}"))?;
        Ok(Authority::from_url(&url)?)
    } else {
        Ok(Authority::parse(text)?)
    }
}

/// What a path grant does that its user may not expect: it reaches into
/// the terminalwire home, where no grant has any effect, or it gives the
/// whole machine or the whole home folder away.
fn grant_warnings(grant: &PathGrant, home_root: &Path, user_home: &Path) -> Vec<String> {
    let expanded = grant.pattern.expand(user_home);
    let literal: String = expanded
        .chars()
        .take_while(|c| !matches!(c, '*' | '?' | '[' | '{'))
        .collect();
    let wild = literal.len() < expanded.len();
    // The folder the pattern starts from: the literal part up to its last `/`.
    let base = match (wild, literal.rfind('/')) {
        (false, _) => Path::new(&literal).to_path_buf(),
        (true, Some(slash)) => Path::new(&literal[..slash.max(1)]).to_path_buf(),
        (true, None) => Path::new("/").to_path_buf(),
    };
    let mut warnings = Vec::new();
    if let (Some(mode), Access::Read) = (grant.mode, grant.access) {
        warnings.push(format!(
            "mode {mode} only limits files the server creates or changes the mode of, which \
             takes write access: this grant is read-only (grant --read-write to let it write)"
        ));
    }
    // `~/r/` names the folder, not what is in it; kept as typed (a grant
    // is never widened behind the user's back), and said. Not for `/`:
    // what is in it is everything.
    let typed = grant.pattern.as_str();
    if typed.len() > 1 && typed.ends_with('/') {
        warnings.push(format!(
            "`{}` matches the folder itself only; for what is in it grant {}",
            inert(typed),
            inert(&terminalwire_policy::shell_word(&format!("{typed}**")))
        ));
    }
    // Into the folder, by name (`~/.terminal*`) or by a pattern that
    // reaches what is in it (`~/**`); not `~/*`, which only lists it.
    let home_root_text = home_root.to_string_lossy();
    let named = home_root_text.starts_with(&literal)
        && home_root
            .parent()
            .is_some_and(|parent| literal.len() > parent.as_os_str().len() + 1);
    let reaches_home_root = base.starts_with(home_root)
        || named
        || grant.pattern.matches(
            &home_root.join("authorities/example.com/policy.toml"),
            user_home,
        );
    if reaches_home_root {
        warnings.push(format!(
            "{} is the client's own folder: grants, launchers and each server's folders there \
             stay refused whatever is granted (a server's storage/ needs no grant)",
            home_root.display()
        ));
    }
    // After the root or the home folder, a first folder that may be any
    // (`**`, `*`, a `{...}` set) and a `**` reach anything under it.
    let after_base = expanded
        .get(base.as_os_str().len()..)
        .unwrap_or("")
        .trim_start_matches('/');
    let first = after_base.split('/').next().unwrap_or("");
    let everything = wild
        && after_base.contains("**")
        && (first == "**" || first == "*" || first.starts_with('{'));
    if everything && base == Path::new("/") {
        warnings.push(format!(
            "this gives the server {} of up to every file you can reach on this machine",
            grant.access
        ));
    } else if everything && base == user_home {
        warnings.push(format!(
            "this gives the server {} of up to your whole home folder (your keys in ~/.ssh included)",
            grant.access
        ));
    } else if grant
        .pattern
        .matches(&user_home.join(".ssh/id_ed25519"), user_home)
    {
        // However it is spelled (`~/.*/**`, `~/[.]ssh/**`).
        warnings.push(format!(
            "this gives the server {} of your SSH keys (~/.ssh)",
            grant.access
        ));
    }
    warnings
}

/// The access the flags name; `unnamed` when none is given.
fn access_of(read: bool, write: bool, read_write: bool, unnamed: Access) -> Access {
    if read_write {
        Access::ReadWrite
    } else if write {
        Access::Write
    } else if read {
        Access::Read
    } else {
        unnamed
    }
}

/// The grant the words of a revoke name: a path's whole grant when no
/// access flag is given. A browser target is taken as a policy file holds
/// it (a scheme `github.com` granted before it was refused can go).
fn parse_revoke(target: RevokeTarget) -> anyhow::Result<Grant> {
    Ok(match target {
        RevokeTarget::Path {
            pattern,
            read,
            write,
            read_write,
        } => Grant::Path(PathGrant {
            pattern: PathPattern::parse(&pattern)?,
            access: access_of(read, write, read_write, Access::ReadWrite),
            mode: None,
        }),
        RevokeTarget::Env { name } => Grant::Env(EnvName::parse(&name)?),
        RevokeTarget::Browser { target } => Grant::Browser(BrowserTarget::parse(&target)?),
    })
}

/// The grant the words name; a path's access is `unnamed` when no access
/// flag is given.
fn parse_grant(target: GrantTarget, unnamed: Access) -> anyhow::Result<Grant> {
    Ok(match target {
        GrantTarget::Path {
            pattern,
            read,
            write,
            read_write,
            mode,
        } => {
            let access = access_of(read, write, read_write, unnamed);
            let mode = mode.as_deref().map(Mode::parse).transpose()?;
            Grant::Path(PathGrant {
                pattern: PathPattern::parse(&pattern)?,
                access,
                mode,
            })
        }
        GrantTarget::Env { name } => Grant::Env(EnvName::parse(&name)?),
        GrantTarget::Browser { target } => Grant::Browser(typed_browser_target(&target)?),
    })
}

/// A browser target as the user typed it: [`BrowserTarget::parse`], except
/// that a host typed as a scheme (`github.com`, `localhost:3000`), which
/// no URL would ever have, is refused with the origin it likely means. A
/// scheme with a dot in its name (`com.example.app`) is typed with its
/// colon (a policy file may hold it without).
fn typed_browser_target(text: &str) -> anyhow::Result<BrowserTarget> {
    if !text.contains("://") && !text.ends_with(':') && text.contains(['.', ':', '/']) {
        let host = text.split('/').next().unwrap_or(text);
        let a_scheme = text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        let colon = if a_scheme {
            format!(
                " (if it really is a URL scheme, type it with its colon: `{}:`)",
                inert(text)
            )
        } else {
            String::new()
        };
        bail!(
            "`{}` is not a scheme: for a website grant its origin, `https://{}`{colon}",
            inert(text),
            inert(host)
        );
    }
    Ok(BrowserTarget::parse(text)?)
}

/// What a browser grant allows that its user may not expect: every website
/// (a scheme grant of http or https), or URLs that run code or read local
/// files.
fn browser_warnings(target: &BrowserTarget) -> Vec<String> {
    let BrowserTarget::Scheme(scheme) = target else {
        return Vec::new();
    };
    if matches!(scheme.as_str(), "http" | "https") {
        vec![format!(
            "this lets the server open any website ({scheme}://...) in your browser; to allow \
             one site, grant its origin instead, such as `https://github.com`"
        )]
    } else if terminalwire_policy::decide::DANGEROUS_SCHEMES.contains(&scheme.as_str()) {
        vec![format!(
            "{scheme}: URLs can run code or read local files: the server may now open any of \
             them in your browser"
        )]
    } else {
        Vec::new()
    }
}

fn describe(grant: &Grant) -> String {
    match grant {
        Grant::Path(path) => match path.mode {
            Some(mode) => format!(
                "path {} ({}, mode {mode})",
                inert(path.pattern.as_str()),
                path.access
            ),
            None => format!("path {} ({})", inert(path.pattern.as_str()), path.access),
        },
        Grant::Env(name) => format!("env {}", inert(name.as_str())),
        Grant::Browser(target) => format!("browser {}", inert(target.as_str())),
    }
}

/// JSON as `serde_json` writes it, with what it leaves raw and a terminal
/// would act on (DEL, C1 controls such as the one-byte CSI, bidi and other
/// format characters: they come from the server) written as `\uXXXX`.
/// Such characters occur only inside strings, so the JSON stays valid and
/// decodes to the same values.
fn json_inert(json: &str) -> String {
    use std::fmt::Write as _;
    let mut shown = String::with_capacity(json.len());
    for c in json.chars() {
        if crate::inert::is_unsafe(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(shown, "\\u{unit:04x}");
            }
        } else {
            shown.push(c);
        }
    }
    shown
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("refusing to delete without confirmation: stdin is not a terminal (use --yes)");
    }
    eprint!("{question}");
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `terminalwire sessions`: the detached sessions, oldest first.
fn sessions(home: &Home, out: &mut impl Write) -> anyhow::Result<()> {
    let (saved, problems) = crate::detached::list(home)?;
    let now = crate::detached::now();
    let mut shown = 0;
    for saved in &saved {
        let record = &saved.record;
        if record.is_expired() {
            // The server has forgotten it; so do we.
            crate::detached::forget(&saved.path)?;
            continue;
        }
        if shown == 0 {
            writeln!(out, "ID\tAUTHORITY\tDETACHED\tEXPIRES IN\tCOMMAND")?;
        }
        shown += 1;
        writeln!(
            out,
            "{}\t{}\t{} ago\t{}\t{}",
            record.session_id,
            // The folder's: what `terminalwire attach AUTHORITY/ID` names.
            saved.authority,
            humantime::format_duration(std::time::Duration::from_secs(
                now.saturating_sub(record.detached_at)
            )),
            humantime::format_duration(std::time::Duration::from_secs(
                record.expires_at().saturating_sub(now)
            )),
            record.command.join(" "),
        )?;
    }
    if shown == 0 {
        writeln!(
            out,
            "No detached sessions. Detach from a running command with Ctrl-\\."
        )?;
    }
    for problem in &problems {
        eprintln!("terminalwire: skipped {problem}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(home: &Home, args: &[&str]) -> anyhow::Result<String> {
        let parsed =
            Admin::try_parse_from(std::iter::once("terminalwire").chain(args.iter().copied()))?;
        let mut out = Vec::new();
        run(parsed.command, home, &mut out)?;
        Ok(String::from_utf8(out)?)
    }

    /// A home whose audit log of `example.com` has one denied read of
    /// `target`.
    fn audited(target: &str) -> (tempfile::TempDir, Home, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority = parse_authority("example.com").unwrap();
        std::fs::create_dir_all(home.authority_dir(&authority)).unwrap();
        crate::audit::AuditLog::new(home.authority_dir(&authority).join("audit.log")).record(
            "path",
            "file_read",
            target,
            "denied",
            None,
        );
        (dir, home, authority)
    }

    /// Characters a terminal acts on, but for line ends.
    fn unsafe_in(out: &str) -> Vec<char> {
        out.chars()
            .filter(|&c| c != '\n' && crate::inert::is_unsafe(c))
            .collect()
    }

    /// An env grant a server asked for (the user answered "always") is
    /// listed with its bidi and zero-width characters written out.
    #[test]
    fn an_env_grant_a_server_asked_for_is_listed_inert() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority = parse_authority("example.com").unwrap();
        let mut policy = Policy::default();
        policy.grant(Grant::Env(
            EnvName::parse("EDITOR\u{202e}\u{200b}txt.exe").unwrap(),
        ));
        policy.save(&home.policy_file(&authority)).unwrap();
        let out = admin(&home, &["entitlement", "list"]).unwrap();
        assert_eq!(unsafe_in(&out), Vec::<char>::new(), "{out}");
        assert!(out.contains("EDITOR"), "{out}");
    }

    /// The table's columns line up whatever the decision: "denied
    /// (unanswered)" (a request whose consent prompt got no answer) would
    /// overflow a DECISION column made for "allowed" and "denied", pushing
    /// BYTES and TARGET of its rows out of line with the others'. The
    /// prompt's part is shown in the table and kept apart in the JSON.
    #[test]
    fn audit_table_columns_line_up_for_every_decision() {
        let (_dir, home, authority) = audited("~/denied");
        let log = crate::audit::AuditLog::new(home.authority_dir(&authority).join("audit.log"));
        let records: Vec<crate::audit::Record> = [
            ("~/by-user", crate::audit::PROMPT_REFUSED),
            ("~/unanswered", crate::audit::PROMPT_UNANSWERED),
        ]
        .into_iter()
        .map(|(target, prompt)| crate::audit::Record {
            time: std::time::SystemTime::now(),
            resource: "path",
            action: "file_read",
            target: target.into(),
            decision: "denied".into(),
            bytes: None,
            significant: false,
            same_as: None,
            prompt: Some(prompt),
        })
        .collect();
        log.record_all(&records);
        let out = admin(&home, &["audit"]).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let column = lines[0].find("TARGET").unwrap();
        for (line, target) in lines[1..]
            .iter()
            .zip(["~/denied", "~/by-user", "~/unanswered"])
        {
            assert_eq!(line.find(target), Some(column), "{out}");
        }
        assert!(out.contains("denied (unanswered)"), "{out}");
        let json = admin(&home, &["audit", "--json"]).unwrap();
        let prompts: Vec<(String, Option<String>)> = json
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                (
                    value["decision"].as_str().unwrap().to_owned(),
                    value["prompt"].as_str().map(str::to_owned),
                )
            })
            .collect();
        assert_eq!(
            prompts,
            [
                ("denied".to_owned(), None),
                ("denied".to_owned(), Some("refused".to_owned())),
                ("denied".to_owned(), Some("unanswered".to_owned())),
            ]
        );
    }

    /// The audit log's JSON view writes what the server chose (here C1 CSI,
    /// DEL and a bidi override) as JSON escapes, and stays JSON that decodes
    /// to the same target.
    #[test]
    fn audit_json_shows_a_servers_escape_sequences_inert() {
        let hostile = "~/x\u{9b}2J\u{7f}\u{202e}gpj.exe\u{1f600}";
        let (_dir, home, _) = audited(hostile);
        let out = admin(&home, &["audit", "--json"]).unwrap();
        assert_eq!(unsafe_in(&out), Vec::<char>::new(), "{out}");
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!(
            line.to_string().contains(hostile),
            "the target decodes as it was: {line}"
        );
    }

    /// A damaged record (a time far in the future) is neither a panic nor
    /// taken for expired and deleted.
    #[test]
    fn a_session_record_with_a_far_future_time_is_not_a_panic() {
        use crate::detached::{self, SessionRecord};
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority = parse_authority("127.0.0.1:9").unwrap();
        std::fs::create_dir_all(home.authority_dir(&authority)).unwrap();
        let record = SessionRecord {
            session_id: "far-1".into(),
            url: "ws://127.0.0.1:9/terminal".into(),
            authority: "127.0.0.1:9".into(),
            command: vec!["app".into()],
            token: detached::Bytes64(vec![1; 32]),
            received: 0,
            sent: 0,
            unacked: Vec::new(),
            window: 1 << 20,
            max_chunk: 1 << 16,
            grace_secs: 120,
            detach_secs: 3600,
            detached_at: u64::MAX - 10,
        };
        let path = detached::save(&home, &authority, &record).unwrap();
        let listed = admin(&home, &["sessions"]).unwrap();
        assert!(listed.contains("far-1"), "{listed}");
        assert!(path.exists(), "a record not expired was deleted");
    }

    #[test]
    fn concurrent_grants_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let home = Home::at(&root);
                    for i in 0..10 {
                        let name = format!("VAR_{t}_{i}");
                        admin(
                            &home,
                            &["entitlement", "grant", "example.com", "env", &name],
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let home = Home::at(&root);
        let policy =
            Policy::load(&home.policy_file(&Authority::parse("example.com").unwrap())).unwrap();
        assert_eq!(
            policy.env.len(),
            80,
            "grants lost: only {} of 80 kept",
            policy.env.len()
        );
    }

    #[test]
    fn since_takes_a_day_a_time_or_a_duration_and_says_so() {
        let day = parse_since("2026-11-26").unwrap();
        assert_eq!(
            day,
            humantime::parse_rfc3339("2026-11-26T00:00:00Z").unwrap()
        );
        let time = parse_since("2026-11-26T09:00:00Z").unwrap();
        assert_eq!(time.duration_since(day).unwrap().as_secs(), 9 * 3600);
        assert!(parse_since("1h").is_ok());
        let error = parse_since("yesterday").unwrap_err().to_string();
        assert!(error.contains("a day like 2026-11-26"), "{error}");
        assert!(!error.contains("invalid character"), "{error}");
    }

    #[test]
    fn a_since_further_back_than_the_clock_goes_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let error = admin(&home, &["audit", "--since", "500000000000years"]).unwrap_err();
        assert!(error.to_string().contains("further back"), "{error:#}");
    }

    #[test]
    fn sessions_lists_live_records_and_forgets_expired_ones() {
        use crate::detached::{self, SessionRecord};
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority = parse_authority("127.0.0.1:9").unwrap();
        std::fs::create_dir_all(home.authority_dir(&authority)).unwrap();
        assert!(
            admin(&home, &["sessions"])
                .unwrap()
                .contains("No detached sessions")
        );
        let record = |id: &str, detached_at: u64| SessionRecord {
            session_id: id.into(),
            url: "ws://127.0.0.1:9/terminal".into(),
            authority: "127.0.0.1:9".into(),
            command: vec!["app".into(), "build".into()],
            token: detached::Bytes64(vec![1; 32]),
            received: 0,
            sent: 0,
            unacked: Vec::new(),
            window: 1 << 20,
            max_chunk: 1 << 16,
            grace_secs: 120,
            detach_secs: 3600,
            detached_at,
        };
        detached::save(&home, &authority, &record("live-1", detached::now())).unwrap();
        let stale = detached::save(&home, &authority, &record("old-1", 1000)).unwrap();
        let listing = admin(&home, &["sessions"]).unwrap();
        assert!(
            listing.contains("live-1") && listing.contains("app build"),
            "{listing}"
        );
        assert!(!listing.contains("old-1"), "{listing}");
        assert!(!stale.exists(), "the expired record is removed");
    }

    #[test]
    fn grants_into_the_clients_folder_or_of_everything_are_warned_about() {
        let warn = |pattern: &str| {
            let grant = PathGrant {
                pattern: PathPattern::parse(pattern).unwrap(),
                access: Access::Read,
                mode: None,
            };
            grant_warnings(
                &grant,
                Path::new("/home/u/.terminalwire"),
                Path::new("/home/u"),
            )
        };
        for pattern in [
            "~/.terminalwire/**",
            "~/.terminalwire/authorities/x/*.toml",
            "~/.terminal*",
            "~/.terminal*/**",
        ] {
            let warnings = warn(pattern);
            assert_eq!(warnings.len(), 1, "{pattern}: {warnings:?}");
            assert!(warnings[0].contains("client's own folder"), "{warnings:?}");
        }
        let assert_warns = |patterns: &[&str], said: &str| {
            for pattern in patterns {
                let warnings = warn(pattern);
                assert!(
                    warnings.iter().any(|w| w.contains(said)),
                    "{pattern}: {warnings:?}"
                );
            }
        };
        assert_warns(&["/**", "/**/*", "/*/**"], "read of up to every file");
        assert_warns(
            &["~/**", "~/**/*", "~/{docs,.ssh}/**"],
            "read of up to your whole home folder",
        );
        assert_warns(&["~/.*/**", "~/[.]ssh/**", "~/.s*/*"], "of your SSH keys");
        for quiet in [
            "~/docs/**",
            "/tmp/*.txt",
            "~/notes.txt",
            "/home/u/*",
            "~/*.md",
        ] {
            assert_eq!(warn(quiet), Vec::<String>::new(), "{quiet}");
        }
    }

    /// `~/r/` matches the folder `~/r` and nothing in it: the grant is
    /// kept as typed (it is not widened), with a warning that says so and
    /// the pattern that reaches what is in the folder.
    #[test]
    fn a_path_grant_ending_in_a_slash_is_warned_to_match_the_folder_only() {
        let user_home = tempfile::tempdir().unwrap();
        let user_home = std::fs::canonicalize(user_home.path()).unwrap();
        std::fs::create_dir(user_home.join("r")).unwrap();
        let grant = |pattern: &str| PathGrant {
            pattern: PathPattern::parse(pattern).unwrap(),
            access: Access::Read,
            mode: None,
        };
        let held = grant("~/r/");
        assert!(!held.pattern.matches(&user_home.join("r/a.txt"), &user_home));
        let warnings = grant_warnings(&held, Path::new("/nowhere/.terminalwire"), &user_home);
        assert_eq!(
            warnings,
            ["`~/r/` matches the folder itself only; for what is in it grant '~/r/**'"]
        );
        let warnings = grant_warnings(
            &grant("/srv/it's/"),
            Path::new("/nowhere/.terminalwire"),
            &user_home,
        );
        assert_eq!(
            warnings,
            [
                r"`/srv/it's/` matches the folder itself only; for what is in it grant '/srv/it'\''s/**'"
            ]
        );
        // The root alone is not told to grant everything.
        for quiet in ["/", "~/r", "~/r/**", "~/r/*"] {
            let warnings = grant_warnings(
                &grant(quiet),
                Path::new("/nowhere/.terminalwire"),
                &user_home,
            );
            assert!(
                !warnings.iter().any(|w| w.contains("folder itself only")),
                "{quiet}: {warnings:?}"
            );
        }
    }

    /// `browser github.com` recorded a scheme `github.com` that no URL a
    /// server opens has: refused, with the origin it meant. A scheme that
    /// does have a dot (`com.example.app`) is typed with its colon.
    #[test]
    fn a_host_typed_as_a_browser_scheme_is_refused_with_its_origin() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let grant = |target: &str| {
            admin(
                &home,
                &["entitlement", "grant", "example.com", "browser", target],
            )
        };
        for (typed, said) in [
            (
                "github.com",
                "`github.com` is not a scheme: for a website grant its origin, \
                 `https://github.com` (if it really is a URL scheme, type it with its colon: \
                 `github.com:`)",
            ),
            (
                "github.com/octo",
                "`github.com/octo` is not a scheme: for a website grant its origin, \
                 `https://github.com`",
            ),
            (
                "localhost:3000",
                "`localhost:3000` is not a scheme: for a website grant its origin, \
                 `https://localhost:3000`",
            ),
        ] {
            let error = grant(typed).unwrap_err().to_string();
            assert_eq!(error, said);
        }
        let policy = home.policy_file(&Authority::parse("example.com").unwrap());
        assert!(!policy.exists(), "a refused grant was written");
        let out = grant("com.example.app:").unwrap();
        assert_eq!(out, "example.com: granted browser com.example.app\n");
        assert!(grant("mailto").is_ok() && grant("https://github.com").is_ok());
        // What a denial suggests for such a scheme parses back ("always").
        let words: Vec<String> = "terminalwire entitlement grant h browser com.example.app:"
            .split(' ')
            .map(str::to_owned)
            .collect();
        assert!(grant_from_words(&words).is_some());
    }

    /// Scheme grants of every website, or of URLs that run code or read
    /// local files, are warned about; an origin or `mailto` is not.
    #[test]
    fn broad_or_dangerous_browser_schemes_are_warned_about() {
        let warn = |target: &str| browser_warnings(&BrowserTarget::parse(target).unwrap());
        for any_site in ["https", "http", "HTTPS:"] {
            let warnings = warn(any_site);
            assert_eq!(warnings.len(), 1, "{any_site}: {warnings:?}");
            assert!(
                warnings[0].contains("open any website")
                    && warnings[0].contains("grant its origin instead"),
                "{warnings:?}"
            );
        }
        for dangerous in ["javascript", "file", "data", "vbscript", "blob", "about"] {
            let warnings = warn(dangerous);
            assert_eq!(warnings.len(), 1, "{dangerous}: {warnings:?}");
            assert!(
                warnings[0].starts_with(&format!("{dangerous}: URLs can run code or read")),
                "{warnings:?}"
            );
        }
        for quiet in ["mailto", "https://github.com", "com.example.app:"] {
            assert_eq!(warn(quiet), Vec::<String>::new(), "{quiet}");
        }
    }

    /// The error and tips clap gives for `terminalwire ARGS`.
    fn usage_error(args: &[&str]) -> (clap::error::ErrorKind, String) {
        let args: Vec<OsString> = std::iter::once("terminalwire")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let error = parse_admin(args).unwrap_err();
        (error.kind(), error.render().to_string())
    }

    /// `revoke path P --mode 0644` was accepted, the mode ignored and the
    /// whole grant taken away; `revoke path --help` listed `--mode`.
    #[test]
    fn revoke_takes_no_mode_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        admin(
            &home,
            &["entitlement", "grant", "example.com", "path", "/tmp/x"],
        )
        .unwrap();
        let (kind, said) = usage_error(&[
            "entitlement",
            "revoke",
            "example.com",
            "path",
            "/tmp/x",
            "--mode",
            "0644",
        ]);
        assert_eq!(kind, clap::error::ErrorKind::UnknownArgument, "{said}");
        assert!(
            said.contains("tip: revoke takes a grant away whatever its mode"),
            "{said}"
        );
        let policy =
            Policy::load(&home.policy_file(&Authority::parse("example.com").unwrap())).unwrap();
        assert_eq!(policy.paths.len(), 1, "the grant was taken away");
        let (_, help) = usage_error(&["entitlement", "revoke", "example.com", "path", "--help"]);
        assert!(!help.contains("--mode"), "{help}");
        assert!(help.contains("--read-write"), "{help}");
    }

    /// `--read --write` is refused by clap (one access flag), with the one
    /// that means both.
    #[test]
    fn read_and_write_together_point_to_read_write() {
        for verb in ["grant", "revoke"] {
            let (kind, said) = usage_error(&[
                "entitlement",
                verb,
                "example.com",
                "path",
                "/tmp/x",
                "--read",
                "--write",
            ]);
            assert_eq!(kind, clap::error::ErrorKind::ArgumentConflict, "{said}");
            assert!(said.contains("tip: for both, use --read-write"), "{said}");
        }
        let (_, said) = usage_error(&[
            "entitlement",
            "grant",
            "example.com",
            "path",
            "/tmp/x",
            "--read",
            "--read-write",
        ]);
        assert!(!said.contains("tip:"), "{said}");
    }

    /// A mode ceiling limits what a server creates or chmods: a read-only
    /// grant has no use for it, and says so.
    #[test]
    fn a_mode_on_a_read_only_grant_is_warned_about() {
        let grant = |access, mode: Option<&str>| PathGrant {
            pattern: PathPattern::parse("/tmp/x/**").unwrap(),
            access,
            mode: mode.map(|mode| Mode::parse(mode).unwrap()),
        };
        let warn = |grant: PathGrant| {
            grant_warnings(
                &grant,
                Path::new("/home/u/.terminalwire"),
                Path::new("/home/u"),
            )
        };
        assert_eq!(
            warn(grant(Access::Read, Some("0777"))),
            [
                "mode 0777 only limits files the server creates or changes the mode of, which \
              takes write access: this grant is read-only (grant --read-write to let it write)"
            ]
        );
        assert_eq!(
            warn(grant(Access::ReadWrite, Some("0777"))),
            Vec::<String>::new()
        );
        assert_eq!(
            warn(grant(Access::Write, Some("0600"))),
            Vec::<String>::new()
        );
        assert_eq!(warn(grant(Access::Read, None)), Vec::<String>::new());
    }

    /// `quota A 99999999999999` became 17592186044415 MiB without a word:
    /// a quota above the most that can be counted is refused, naming it.
    #[test]
    fn a_quota_above_the_maximum_is_refused_naming_the_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let quota = |mib: &str| admin(&home, &["entitlement", "quota", "example.com", mib]);
        for too_much in [
            "99999999999999",
            "17592186044416",
            "99999999999999999999999",
        ] {
            let error = quota(too_much).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "quota {too_much} MiB is more than the most there can be, 17592186044415 MiB: \
                     give a smaller number, or `default`"
                )
            );
        }
        let policy = home.policy_file(&Authority::parse("example.com").unwrap());
        assert!(!policy.exists(), "a refused quota was written");
        assert_eq!(
            quota("17592186044415").unwrap(),
            "example.com: storage may hold 17592186044415 MiB\n"
        );
        for bad in ["0", "1.5", "lots", ""] {
            let error = quota(bad).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("invalid quota \"{bad}\"")),
                "{error}"
            );
        }
        // 0 is a whole number: said what is wrong with it, as a policy
        // file's 0 is (it was told to give a whole number of MiB).
        for zero in ["0", "000"] {
            let error = quota(zero).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "invalid quota \"{zero}\": it must be at least 1 MiB; give a whole number \
                     of MiB, or `default`"
                )
            );
        }
    }

    /// The exit statuses of the administration commands agree with the
    /// README's table: a home that cannot be written is unusable (65) for
    /// a grant as for `authority forget` (a grant exited 1); listing every
    /// authority exits as listing the unusable one alone (65, not 1); an
    /// argument that does not parse is a usage error (2, not 1).
    #[test]
    fn exit_statuses_follow_the_table() {
        use terminalwire_policy::PolicyError;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let status = |words: &[&str]| exit_code_of(&admin(&home, words).unwrap_err());
        admin(&home, &["entitlement", "grant", "a.example", "env", "LANG"]).unwrap();
        // The lock cannot be made (as on a read-only home; the tests may
        // run as root, whom modes do not stop).
        let policy = home.policy_file(&Authority::parse("a.example").unwrap());
        let lock = policy.with_file_name("policy.toml.lock");
        let _ = std::fs::remove_file(&lock);
        std::fs::create_dir(&lock).unwrap();
        for words in [
            &["entitlement", "grant", "a.example", "env", "TERM"][..],
            &["entitlement", "revoke", "a.example", "env", "LANG"],
            &["entitlement", "quota", "a.example", "5"],
        ] {
            assert_eq!(status(words), exit_code::CONFIG, "{words:?}");
        }
        std::fs::remove_dir(&lock).unwrap();
        let read_only = std::io::Error::from_raw_os_error(30); // EROFS
        let write = PolicyError::Write {
            path: policy.clone(),
            source: read_only,
        };
        assert_eq!(exit_code_of(&write.into()), exit_code::CONFIG);
        // Another client held the lock too long: run it again.
        let busy = PolicyError::Lock {
            path: policy.clone(),
            lock: lock.clone(),
            source: std::io::ErrorKind::WouldBlock.into(),
        };
        assert_eq!(exit_code_of(&busy.into()), exit_code::FAILURE);
        // `authority trust` on a pin it cannot write, as `forget` says it.
        let pin = home.server_pin_file(&Authority::parse("a.example").unwrap());
        std::fs::create_dir(&pin).unwrap();
        let fingerprint = format!("SHA256:{}", "A".repeat(43));
        assert_eq!(
            status(&[
                "authority",
                "trust",
                "a.example",
                "--fingerprint",
                &fingerprint
            ]),
            exit_code::CONFIG
        );
        std::fs::remove_dir(&pin).unwrap();

        admin(&home, &["entitlement", "grant", "b.example", "env", "TZ"]).unwrap();
        let b = home.policy_file(&Authority::parse("b.example").unwrap());
        std::fs::write(&b, "garbage = [").unwrap();
        assert_eq!(
            status(&["entitlement", "list", "b.example"]),
            exit_code::CONFIG
        );
        assert_eq!(status(&["entitlement", "list"]), exit_code::CONFIG);
        // A failure that is not the home's stays 1.
        assert_eq!(
            exit_code_of(
                &Unlisted {
                    failed: 1,
                    total: 2,
                    status: exit_code::FAILURE
                }
                .into()
            ),
            exit_code::FAILURE
        );

        for words in [
            &["audit", "--since", "foo"][..],
            &["audit", "not/an/authority"],
            &["entitlement", "list", "a/b"],
            &["entitlement", "grant", "example.com:0", "env", "A"],
            &["entitlement", "grant", "ws://example.com:0/t", "env", "A"],
            &["entitlement", "grant", "ws:///terminal", "env", "A"],
            &["entitlement", "grant", "a.example", "env", "A=B"],
            &["entitlement", "grant", "a.example", "path", "relative"],
            &[
                "entitlement",
                "grant",
                "a.example",
                "path",
                "~/x",
                "--mode",
                "999",
            ],
            &[
                "entitlement",
                "revoke",
                "a.example",
                "browser",
                "not a scheme",
            ],
            &["entitlement", "quota", "a.example", "0"],
            &[
                "authority",
                "trust",
                "a.example",
                "--fingerprint",
                "SHA256:nope",
            ],
        ] {
            assert_eq!(status(words), exit_code::USAGE, "{words:?}");
        }
        // Parsed, but nothing to do: the command failed.
        assert_eq!(
            status(&["entitlement", "revoke", "a.example", "env", "NOPE"]),
            exit_code::FAILURE
        );
        assert_eq!(
            status(&["authority", "forget", "nowhere.example", "--yes"]),
            exit_code::FAILURE
        );
    }

    #[test]
    fn a_policy_file_others_may_write_is_refused_as_a_session_refuses_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        admin(&home, &["entitlement", "grant", "a.example", "env", "LANG"]).unwrap();
        let file = home.policy_file(&Authority::parse("a.example").unwrap());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        // Listing them all shows the others, and fails.
        admin(&home, &["entitlement", "grant", "b.example", "env", "TZ"]).unwrap();
        let mut out = Vec::new();
        let all = Admin::try_parse_from(["terminalwire", "entitlement", "list"]).unwrap();
        let failed = run(all.command, &home, &mut out).unwrap_err().to_string();
        assert!(failed.contains("1 of 2 authorities"), "{failed}");
        assert!(String::from_utf8_lossy(&out).contains("env      TZ"));
        for words in [
            &["entitlement", "list", "a.example"][..],
            &["entitlement", "grant", "a.example", "env", "TERM"],
            &["entitlement", "revoke", "a.example", "env", "LANG"],
        ] {
            let refused = admin(&home, words).unwrap_err().to_string();
            assert!(refused.contains(&file.display().to_string()), "{refused}");
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("LANG") && !text.contains("TERM"), "{text}");
    }

    #[test]
    fn a_unix_socket_url_names_its_local_authority() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let out = admin(
            &home,
            &[
                "entitlement",
                "grant",
                "unix:/run/user/1/app.sock",
                "env",
                "LANG",
            ],
        )
        .unwrap();
        let authority = crate::connect::Target::parse("unix:/run/user/1/app.sock")
            .unwrap()
            .authority;
        assert!(authority.starts_with("local-"), "{authority}");
        assert_eq!(out, format!("{authority}: granted env LANG\n"));
        let listed = admin(&home, &["entitlement", "list", "unix:/run/user/1/app.sock"]).unwrap();
        assert!(listed.contains("env      LANG"), "{listed}");
        assert!(admin(&home, &["entitlement", "list", "unix:relative.sock"]).is_err());
    }

    #[test]
    fn grants_report_what_holds_and_a_bare_revoke_takes_the_whole_path_grant() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let run = |words: &str| admin(&home, &words.split(' ').collect::<Vec<_>>()).unwrap();
        assert_eq!(
            run("entitlement grant a.example path ~/docs/**"),
            "a.example: granted path ~/docs/** (read)\n"
        );
        // Write over read: read-write holds, and is what is said.
        assert_eq!(
            run("entitlement grant a.example path ~/docs/** --write"),
            "a.example: updated path ~/docs/** (read-write)\n"
        );
        assert_eq!(
            run("entitlement revoke a.example path ~/docs/** --read"),
            "a.example: revoked read of path ~/docs/**; write is still granted\n"
        );
        run("entitlement grant a.example path ~/docs/** --read");
        // No access named: all of it goes.
        assert_eq!(
            run("entitlement revoke a.example path ~/docs/**"),
            "a.example: revoked path ~/docs/**\n"
        );
        let listing = run("entitlement list a.example");
        assert!(!listing.contains("~/docs"), "{listing}");
    }

    #[test]
    fn grant_list_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let out = admin(
            &home,
            &[
                "entitlement",
                "grant",
                "http://Example.COM:3000/x",
                "path",
                "~/reports/**",
                "--read-write",
                "--mode",
                "0640",
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "example.com:3000: granted path ~/reports/** (read-write, mode 0640)\n"
        );
        admin(
            &home,
            &["entitlement", "grant", "example.com:3000", "env", "EDITOR"],
        )
        .unwrap();
        admin(
            &home,
            &[
                "entitlement",
                "grant",
                "example.com:3000",
                "browser",
                "mailto",
            ],
        )
        .unwrap();
        let again = admin(
            &home,
            &["entitlement", "grant", "example.com:3000", "env", "EDITOR"],
        )
        .unwrap();
        assert!(again.contains("already granted"), "{again}");

        let listing = admin(&home, &["entitlement", "list"]).unwrap();
        assert!(
            listing.contains("path     ~/reports/**  read-write  mode 0640"),
            "{listing}"
        );
        assert!(listing.contains("env      EDITOR"), "{listing}");
        assert!(listing.contains("browser  mailto"), "{listing}");

        admin(
            &home,
            &[
                "entitlement",
                "revoke",
                "example.com:3000",
                "path",
                "~/reports/**",
                "--write",
            ],
        )
        .unwrap();
        // Read-only: the mode ceiling of its writes went with them.
        let listing = admin(&home, &["entitlement", "list", "example.com:3000"]).unwrap();
        assert!(
            listing.contains("path     ~/reports/**  read\n") && !listing.contains("mode 0640"),
            "{listing}"
        );

        let never = admin(
            &home,
            &[
                "entitlement",
                "revoke",
                "example.com:3000",
                "path",
                "~/never/**",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            never.contains("has no grant of path ~/never/**;"),
            "{never}"
        );
        let missing = admin(
            &home,
            &["entitlement", "revoke", "example.com:3000", "env", "HOME"],
        );
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("has no grant of env HOME")
        );

        assert_eq!(
            admin(&home, &["authority", "list"]).unwrap(),
            "example.com:3000\n"
        );
        admin(&home, &["authority", "forget", "example.com:3000", "--yes"]).unwrap();
        assert_eq!(
            admin(&home, &["authority", "list"]).unwrap(),
            "No authorities yet.\n"
        );
    }

    /// A damaged pin is listed as such, with the command that pins the
    /// server again: it was listed as no pin at all, while every session
    /// with that server exits 65.
    #[test]
    fn authority_list_names_a_damaged_pin() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority = Authority::parse("example.com:3000").unwrap();
        std::fs::create_dir_all(home.authority_dir(&authority)).unwrap();
        terminalwire_policy::write_private_atomically(
            &home.server_pin_file(&authority),
            b"garbage\n",
        )
        .unwrap();
        let listed = admin(&home, &["authority", "list"]).unwrap();
        assert!(
            listed.starts_with("example.com:3000  (damaged: ")
                && listed.contains("server.pin: expected a SHA256:... fingerprint")
                && listed.contains(
                    "terminalwire authority trust example.com:3000 --fingerprint SHA256:..."
                ),
            "{listed}"
        );
    }

    /// A grant typed for `example.com:443` is `example.com`'s: the one
    /// folder `wss://example.com/` uses, listed and revoked as either.
    #[test]
    fn a_typed_default_port_is_the_same_authority() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let out = admin(
            &home,
            &["entitlement", "grant", "example.com:443", "env", "EDITOR"],
        )
        .unwrap();
        assert!(out.starts_with("example.com: "), "{out}");
        let policy = home.policy_file(&parse_authority("wss://example.com/t").unwrap());
        assert!(Policy::load(&policy).unwrap().env.len() == 1, "{out}");
        let listed = admin(&home, &["entitlement", "list", "example.com"]).unwrap();
        assert!(listed.contains("EDITOR"), "{listed}");
        let all = admin(&home, &["authority", "list"]).unwrap();
        assert!(!all.contains(":443"), "{all}");
        admin(
            &home,
            &["entitlement", "revoke", "example.com:80", "env", "EDITOR"],
        )
        .unwrap();
        assert!(Policy::load(&policy).unwrap().env.is_empty());
    }

    #[test]
    fn the_storage_quota_is_set_shown_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let out = admin(&home, &["entitlement", "quota", "example.com", "4096"]).unwrap();
        assert_eq!(out, "example.com: storage may hold 4096 MiB\n");
        let storage = home.storage_dir(&Authority::parse("example.com").unwrap());
        std::fs::create_dir_all(&storage).unwrap();
        std::fs::write(storage.join("a"), vec![0; 3 << 19]).unwrap();
        let listed = admin(&home, &["entitlement", "list", "example.com"]).unwrap();
        assert!(
            listed.contains("read-write, always, up to 4096 MiB (1.5 MiB used)"),
            "{listed}"
        );
        let out = admin(&home, &["entitlement", "quota", "example.com", "default"]).unwrap();
        assert_eq!(out, "example.com: storage may hold 1024 MiB\n");
        let policy = Policy::load(&home.policy_file(&Authority::parse("example.com").unwrap()));
        assert_eq!(policy.unwrap().storage_quota_mib, None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        for bad in [
            &["entitlement", "grant", "a/b", "env", "X"][..],
            &["entitlement", "grant", "example.com", "path", "reports/**"],
            &[
                "entitlement",
                "grant",
                "example.com",
                "path",
                "/x",
                "--mode",
                "4755",
            ],
            &["entitlement", "grant", "example.com", "env", "A=B"],
            &[
                "entitlement",
                "grant",
                "example.com",
                "browser",
                "https://x.com/path",
            ],
            &[
                "entitlement",
                "grant",
                "example.com",
                "path",
                "/x",
                "--read",
                "--write",
            ],
            &["entitlement", "quota", "example.com", "0"],
            &["entitlement", "quota", "example.com", "-5"],
            &["entitlement", "quota", "example.com", "1.5"],
            &["entitlement", "quota", "example.com", "1GiB"],
        ] {
            assert!(admin(&home, bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            !home
                .policy_file(&Authority::parse("example.com").unwrap())
                .exists(),
            "a refused command wrote a policy"
        );
        let authority = Authority::parse("example.com").unwrap();
        let policy = home.policy_file(&authority);
        std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
        std::fs::write(&policy, "[[env]]\nname = \"A\"\n[[bogus]]\n").unwrap();
        let error = admin(&home, &["entitlement", "grant", "example.com", "env", "B"]).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("policy.toml:3"), "{message}");
        // As a session says it: the configuration is unusable (65).
        assert_eq!(exit_code_of(&error), exit_code::CONFIG);
        let other = admin(
            &home,
            &["entitlement", "grant", "other.example", "env", "1=B"],
        )
        .unwrap_err();
        // An argument that does not parse is a usage error.
        assert_eq!(exit_code_of(&other), exit_code::USAGE, "{other:#}");
        assert_eq!(
            std::fs::read_to_string(&policy).unwrap(),
            "[[env]]\nname = \"A\"\n[[bogus]]\n",
            "a corrupt file is left alone"
        );
        // A file that is not text: its cause is shown once, not twice.
        std::fs::write(&policy, b"\xff\xfe").unwrap();
        let error = admin(&home, &["entitlement", "list", "example.com"]).unwrap_err();
        let message = chain_text(error.as_ref());
        assert_eq!(message.matches("UTF-8").count(), 1, "{message}");
        assert!(message.starts_with("cannot read policy file"), "{message}");
    }

    #[test]
    fn audit_and_grant_listings_show_a_servers_escape_sequences_inert() {
        // A path as a server sent it: clears the line and hides the rest.
        let hostile = "~/x\x1b[2K\r\x1b]11;#000\x07\u{202e}gpj.exe";
        let (_dir, home, authority) = audited(hostile);
        // "Always" writes a grant that quotes such a path.
        let mut policy = Policy::default();
        policy.grant(Grant::Path(PathGrant {
            pattern: PathPattern::parse("~/x\x1bc\u{202e}/**").unwrap(),
            access: Access::Read,
            mode: None,
        }));
        policy.save(&home.policy_file(&authority)).unwrap();
        for args in [&["audit"][..], &["entitlement", "list"]] {
            let out = admin(&home, args).unwrap();
            let raw: Vec<char> = out
                .chars()
                .filter(|&c| c != '\n' && crate::inert::is_unsafe(c))
                .collect();
            assert!(raw.is_empty(), "{args:?} printed {raw:?}:\n{out}");
        }
        let audit = admin(&home, &["audit"]).unwrap();
        assert!(
            audit.contains("~/x\\u{1b}[2K\\r\\u{1b}]11;#000\\u{7}\\u{202e}gpj.exe"),
            "{audit}"
        );
    }

    #[test]
    fn admin_commands_are_recognised_before_urls() {
        let os = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_admin(&os(&["entitlement", "list"])));
        assert!(is_admin(&os(&["authority", "list"])));
        assert!(!is_admin(&os(&["ws://h/t", "entitlement"])));
        assert!(!is_admin(&os(&[])));
    }
}
