//! Authorities, the terminalwire home and the entitlements of the client.
//!
//! The terminalwire client executes what a server asks (read a file, list a
//! directory, read a variable, open a URL) only within the entitlements of
//! that server's [`Authority`]. This crate is the pure logic of that boundary:
//! where things live, what has been granted, and the decision for each
//! request. It does no networking; it touches the disk only to load and save
//! policy files and to resolve symlinks. The client still performs the final
//! open itself with `O_NOFOLLOW`.
//!
//! # Layout
//!
//! - [`authority`]: the [`Authority`] of a server URL (host plus non-default
//!   port, a safe directory name) and its http(s) [`origin`](authority::origin).
//! - [`home`]: the [`Home`] layout (`$TERMINALWIRE_HOME` or `~/.terminalwire`):
//!   `authorities/<authority>/{policy.toml,storage/}` and `bin/`.
//! - [`path`]: [`resolve`] a path sent by a server (`~`, `..`, symlinks) into
//!   the one real location it names.
//! - [`grant`]: the grantable things, each validated: [`PathPattern`] with
//!   [`Access`] and [`Mode`], [`EnvName`], [`BrowserTarget`].
//! - [`policy`]: the [`Policy`] file of one authority: strict loading with
//!   line numbers, atomic private saving, grant and revoke, and
//!   [`Policy::update`], a change made under the file's lock.
//! - [`decide`]: [`Entitlements`], which answers each request with an
//!   allow or a [`Denial`] carrying the command that would allow it.
//!
//! # Example
//!
//! ```
//! use terminalwire_policy::{Action, Entitlements, Home, Policy};
//!
//! let tmp = tempfile::tempdir().unwrap();
//! let user_home = std::fs::canonicalize(tmp.path()).unwrap();
//! let home = Home::at(user_home.join(".terminalwire"));
//! let url = url::Url::parse("wss://example.com/terminal").unwrap();
//! let e = Entitlements::new(&url, &home, &Policy::default(), &user_home, &[]).unwrap();
//!
//! let secret = e.resolve("~/.ssh/id_ed25519").unwrap();
//! let denial = e.check_path(&secret, Action::Read).unwrap_err();
//! assert_eq!(
//!     denial.command.as_deref(),
//!     Some("terminalwire entitlement grant example.com path '~/.ssh/**' --read"),
//! );
//! let cookie = e.resolve("~/.terminalwire/authorities/example.com/storage/session").unwrap();
//! assert_eq!(e.check_path(&cookie, Action::Write).unwrap().file_mode.bits(), 0o600);
//! ```

#![forbid(unsafe_code)]

pub mod authority;
pub mod decide;
pub mod grant;
pub mod home;
pub mod path;
pub mod policy;

pub use authority::{Authority, AuthorityError};
pub use decide::{
    Allowed, ControlArea, Denial, DenialReason, Entitlements, Operation, Resource, SetupError,
    shell_word,
};
pub use grant::{
    Access, Action, BrowserTarget, EnvName, Grant, GrantError, Mode, PathGrant, PathPattern,
};
pub use home::{Home, HomeError, Privacy};
pub use path::{PathError, ResolvedPath, Sighting, resolve, resolve_seen};
pub use policy::{
    GrantOutcome, MAX_POLICY_FILE, MAX_STORAGE_QUOTA_MIB, Policy, PolicyError, PolicyLock,
    read_own_file, read_own_file_bytes, write_private_atomically, write_private_new,
};
