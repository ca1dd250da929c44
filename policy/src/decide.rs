//! Decisions: may this authority read or write this path, read this
//! environment variable, open this URL in the browser, set this mode?
//!
//! [`Entitlements`] is built once per session from the server URL, the
//! [`Home`], the loaded [`Policy`] and the user's home; it resolves the
//! protected areas and compiles the grants, then answers each request with an
//! allow or a [`Denial`] that tells the user what to run to allow it.
//!
//! Order of the path rules (first match wins):
//! 1. the client binary (and anything under it) is never granted;
//! 2. the authority's own `storage/` is always granted (modes ≤ 0600 / 0700);
//! 3. everything else under the home root is never granted: policy files,
//!    `bin/`, other authorities' folders, this authority's folder, other
//!    control files;
//! 4. writing to a folder that contains the home root or the client binary
//!    is never granted (it could delete or replace them);
//! 5. path grants, matched against the resolved path.

use std::fmt;
use std::path::{Path, PathBuf};

use globset::{GlobSet, GlobSetBuilder};
use url::Url;

use crate::authority::{self, Authority, AuthorityError};
use crate::grant::{Access, Action, BrowserTarget, EnvName, Mode, escape_glob};
use crate::home::{HOME_ENV, Home, POLICY_FILE_NAME};
use crate::path::{PathError, ResolvedPath, Sighting, resolve, resolve_absolute};
use crate::policy::Policy;

/// URL schemes that are never suggested for a grant (they run code or read
/// local files); they can still be granted by hand, by scheme.
pub const DANGEROUS_SCHEMES: [&str; 6] =
    ["javascript", "vbscript", "file", "data", "blob", "about"];

/// The kind of resource a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A file or directory.
    Path,
    /// An environment variable.
    Env,
    /// A URL opened in the browser.
    Browser,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Path => "path",
            Resource::Env => "env",
            Resource::Browser => "browser",
        })
    }
}

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Read a path or a variable.
    Read,
    /// Write a path.
    Write,
    /// Create or chmod with this mode.
    SetMode(u32),
    /// Open in the browser.
    Launch,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Read => f.write_str("read"),
            Operation::Write => f.write_str("write"),
            Operation::SetMode(m) => write!(f, "set mode {m:04o} on"),
            Operation::Launch => f.write_str("launch"),
        }
    }
}

impl From<Action> for Operation {
    fn from(a: Action) -> Operation {
        match a {
            Action::Read => Operation::Read,
            Action::Write => Operation::Write,
        }
    }
}

/// A place that no policy can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControlArea {
    /// The terminalwire client program.
    ClientBinary,
    /// A `policy.toml` file.
    PolicyFile,
    /// The launchers folder `bin/`.
    Launchers,
    /// Another authority's folder.
    OtherAuthority,
    /// This authority's own folder outside `storage/`.
    AuthorityFolder,
    /// Any other file of the terminalwire home, or the home itself.
    HomeRoot,
    /// A folder containing the terminalwire home or the client (write only).
    Ancestor,
    /// The authority's storage folder itself (write only: what is in it is
    /// the app's, the folder is the client's). Deleted, replaced by a file
    /// or made unreadable, it would hide what the app stored from the
    /// client's quota.
    StorageFolder,
}

impl fmt::Display for ControlArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlArea::ClientBinary => "it is the terminalwire client itself",
            ControlArea::PolicyFile => "it is a terminalwire policy file",
            ControlArea::Launchers => "it is in the terminalwire launchers folder",
            ControlArea::OtherAuthority => "it belongs to another authority",
            ControlArea::AuthorityFolder => "it is outside this authority's storage folder",
            ControlArea::HomeRoot => "it is a terminalwire control file",
            ControlArea::Ancestor => "it contains terminalwire's own files",
            ControlArea::StorageFolder => {
                "it is the storage folder itself (what is in it is the app's to change)"
            }
        })
    }
}

/// Why a request was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenialReason {
    /// Nothing in the policy allows it.
    NotGranted,
    /// It touches a place no policy can open.
    NeverGrantable(ControlArea),
    /// The mode has bits outside the ceiling.
    ModeTooWide {
        /// The mode asked for.
        requested: u32,
        /// The widest mode allowed there.
        ceiling: Mode,
    },
    /// The mode has a setuid, setgid or sticky bit.
    SpecialModeBits {
        /// The mode asked for.
        requested: u32,
    },
    /// The mode would take a storage folder's read, write or search
    /// permission from its owner: the client must always be able to look
    /// into storage (its quota measures what is there).
    StorageFolderLocked {
        /// The mode asked for.
        requested: u32,
    },
    /// A scheme that runs code or reads local files.
    DangerousScheme {
        /// The scheme.
        scheme: String,
    },
    /// The target cannot be understood.
    InvalidTarget {
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenialReason::NotGranted => f.write_str("it has not been granted"),
            DenialReason::NeverGrantable(area) => write!(f, "{area}"),
            DenialReason::ModeTooWide { requested, ceiling } => {
                write!(
                    f,
                    "mode {requested:04o} is wider than the allowed {ceiling}"
                )
            }
            DenialReason::SpecialModeBits { requested } => {
                write!(f, "mode {requested:04o} has setuid, setgid or sticky bits")
            }
            DenialReason::StorageFolderLocked { requested } => write!(
                f,
                "mode {requested:04o} would lock the client out of a storage folder \
                 (its owner keeps rwx)"
            ),
            DenialReason::DangerousScheme { scheme } => {
                write!(f, "the {scheme}: scheme can run code or read local files")
            }
            DenialReason::InvalidTarget { reason } => f.write_str(reason),
        }
    }
}

/// A refused request, with what the user can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Who asked.
    pub authority: Authority,
    /// What kind of resource.
    pub resource: Resource,
    /// What was asked.
    pub action: Operation,
    /// The path (resolved), variable name or URL.
    pub target: String,
    /// Why it was refused.
    pub reason: DenialReason,
    /// The command that would allow it; `None` when it can never be granted
    /// (or is not worth suggesting, such as a `javascript:` URL).
    pub command: Option<String>,
}

impl Denial {
    /// True when no grant can ever allow this.
    pub fn is_never_grantable(&self) -> bool {
        matches!(
            self.reason,
            DenialReason::NeverGrantable(_)
                | DenialReason::SpecialModeBits { .. }
                | DenialReason::StorageFolderLocked { .. }
        )
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} may not {} {} {}: {}",
            self.authority, self.action, self.resource, self.target, self.reason
        )?;
        match (&self.command, self.is_never_grantable()) {
            (Some(command), _) => write!(f, ". To allow it, run: {command}"),
            (None, true) => f.write_str(". This can never be granted."),
            (None, false) => Ok(()),
        }
    }
}

impl std::error::Error for Denial {}

/// An allowed path request and the widest modes allowed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Ceiling for files created or chmodded.
    pub file_mode: Mode,
    /// Ceiling for directories created or chmodded.
    pub dir_mode: Mode,
    /// True when the path is in the authority's storage folder.
    pub in_storage: bool,
}

/// Why [`Entitlements`] cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The server URL has no usable authority.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The home root or the client binary cannot be resolved.
    #[error("cannot resolve {what}: {source}")]
    Path {
        /// Which path.
        what: &'static str,
        /// Why.
        source: PathError,
    },
}

/// The compiled entitlements of one authority for one session.
#[derive(Debug, Clone)]
pub struct Entitlements {
    authority: Authority,
    server_origin: String,
    user_home: PathBuf,
    resolved_user_home: PathBuf,
    home_root: PathBuf,
    /// The home as named, when it resolves elsewhere (see `new`).
    home_named: Vec<PathBuf>,
    authorities_dir: PathBuf,
    authority_dir: PathBuf,
    bin_dir: PathBuf,
    storage: Option<PathBuf>,
    storage_quota: u64,
    /// The client's own programs (resolved).
    client_binaries: Vec<PathBuf>,
    globs: GlobSet,
    /// The grants' patterns as written (with `~` as the user's home, named
    /// and resolved): which paths a server names may be granted once
    /// resolved ([`Entitlements::resolve_request`]).
    written_globs: GlobSet,
    /// The storage folder as the client names it (and with the user's home
    /// resolved), when it is storage.
    storage_named: Vec<PathBuf>,
    /// For each glob in `globs`: the access and file ceiling of its grant.
    glob_grants: Vec<(Access, Mode)>,
    env: Vec<EnvName>,
    browser: Vec<BrowserTarget>,
}

impl Entitlements {
    /// Compile the entitlements of the server at `server_url`.
    /// `user_home` is what `~` means; `client_binaries` (the running
    /// program and the others of the client a user runs) are never
    /// granted, nor a folder holding one written.
    pub fn new(
        server_url: &Url,
        home: &Home,
        policy: &Policy,
        user_home: &Path,
        client_binaries: &[PathBuf],
    ) -> Result<Entitlements, SetupError> {
        let authority = Authority::from_url(server_url)?;
        let server_origin = authority::origin(server_url)?;
        let resolve_own = |what, path: &Path| {
            resolve_absolute(path)
                .map(|r| r.as_path().to_path_buf())
                .map_err(|source| SetupError::Path { what, source })
        };
        let home_root = resolve_own("the terminalwire home", home.root())?;
        let authorities_dir = home_root.join("authorities");
        let authority_dir = authorities_dir.join(authority.as_str());
        // Storage counts only if it really is `<authority>/storage`, not a
        // symlink to somewhere else.
        let storage = resolve_own("the storage folder", &home.storage_dir(&authority))
            .ok()
            .filter(|s| *s == authority_dir.join("storage"));
        // As named and as resolved (a symlink, or its target, may be
        // replaced); one that cannot be resolved (a dangling link) is still
        // protected as named, and never stops the client.
        let mut protected_binaries = Vec::new();
        for named in client_binaries.iter().filter(|p| p.is_absolute()) {
            protected_binaries.push(named.clone());
            if let Ok(resolved) = resolve_own("a client binary", named)
                && resolved != *named
            {
                protected_binaries.push(resolved);
            }
        }
        let client_binaries = protected_binaries;
        let resolved_user_home = resolve_own("the user's home", user_home)?;

        let mut builder = GlobSetBuilder::new();
        let mut glob_grants = Vec::new();
        for grant in &policy.paths {
            let ceiling = grant.mode.unwrap_or(Mode::DEFAULT_FILE);
            for glob in grant.pattern.globs(user_home) {
                builder.add(glob);
                glob_grants.push((grant.access, ceiling));
            }
        }
        // Each glob compiled on its own already; should the set still fail,
        // matching nothing is the safe answer.
        let globs = builder.build().unwrap_or_else(|_| GlobSet::empty());
        let mut written = GlobSetBuilder::new();
        for grant in &policy.paths {
            for home in [user_home, &resolved_user_home] {
                for glob in grant.pattern.written_globs(home) {
                    written.add(glob);
                }
            }
        }
        let written_globs = written.build().unwrap_or_else(|_| GlobSet::empty());
        // The home as named, when that is not where it resolves (it is a
        // symlink, or under one): the link is not in the home as resolved,
        // and a server that deleted or replaced it would hand the next
        // session a home of its making (no pins, its own policy files).
        let home_named: Vec<PathBuf> = {
            let named = crate::path::normalized(&home.root().to_string_lossy(), user_home)
                .unwrap_or_else(|_| home.root().to_path_buf());
            let mapped = named
                .strip_prefix(user_home)
                .map(|rest| resolved_user_home.join(rest))
                .ok();
            let mut spellings: Vec<PathBuf> = Vec::new();
            for spelling in std::iter::once(named).chain(mapped) {
                if spelling.is_absolute() && spelling != home_root && !spellings.contains(&spelling)
                {
                    spellings.push(spelling);
                }
            }
            spellings
        };
        let storage_named = match &storage {
            Some(_) => {
                let named = home.storage_dir(&authority);
                // As the server will name it: `.` and `..` taken out.
                let named =
                    crate::path::normalized(&named.to_string_lossy(), user_home).unwrap_or(named);
                let mapped = named
                    .strip_prefix(user_home)
                    .map(|rest| resolved_user_home.join(rest))
                    .ok();
                std::iter::once(named).chain(mapped).collect()
            }
            None => Vec::new(),
        };

        Ok(Entitlements {
            bin_dir: home_root.join("bin"),
            authority,
            server_origin,
            user_home: user_home.to_path_buf(),
            resolved_user_home,
            home_root,
            home_named,
            authorities_dir,
            authority_dir,
            storage,
            storage_quota: policy.storage_quota_bytes(),
            client_binaries,
            globs,
            written_globs,
            storage_named,
            glob_grants,
            env: policy.env.iter().map(|g| g.name.clone()).collect(),
            browser: policy.browser.iter().map(|g| g.target.clone()).collect(),
        })
    }

    /// The authority these entitlements belong to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The authority's storage folder, resolved; `None` when it is not a
    /// plain folder (a symlink is not storage).
    pub fn storage_dir(&self) -> Option<&Path> {
        self.storage.as_deref()
    }

    /// What the storage folder may hold, in bytes (its policy's
    /// `storage_quota_mib`).
    pub fn storage_quota(&self) -> u64 {
        self.storage_quota
    }

    /// The server's http(s) origin, which the browser may always open.
    pub fn server_origin(&self) -> &str {
        &self.server_origin
    }

    /// [`resolve`] a path sent by the server, with `~`
    /// meaning the user's home.
    pub fn resolve(&self, raw: &str) -> Result<ResolvedPath, PathError> {
        resolve(raw, &self.user_home)
    }

    /// [`resolve_seen`](crate::resolve_seen) a path sent by the server: also
    /// what the resolution saw there, when it looked without following any
    /// symlink.
    pub fn resolve_seen(&self, raw: &str) -> Result<(ResolvedPath, Option<Sighting>), PathError> {
        crate::path::resolve_seen(raw, &self.user_home)
    }

    /// [`resolve_seen`](Self::resolve_seen) a path sent by the server, when
    /// it may be granted once resolved: when it names (with no symlink
    /// followed but the user's home) a path in the storage folder or under
    /// a grant, as resolved or as written. Else the path as named, without
    /// looking at the disk, which [`check_path`](Self::check_path) refuses:
    /// a server must not make the client walk a path it may not use (an
    /// automounted `/net/host/...` reaches another machine; a hung network
    /// mount blocks the walk). A path named through a symlink outside the
    /// grants is refused even where it leads into one.
    pub fn resolve_request(
        &self,
        raw: &str,
    ) -> Result<(ResolvedPath, Option<Sighting>), PathError> {
        // A malformed path: resolving says why.
        let Ok(named) = crate::path::normalized(raw, &self.user_home) else {
            return self.resolve_seen(raw);
        };
        // Normalized once, for the gate and the walk (every request comes
        // here: figure 3 of the benchmarks).
        if self.may_be_granted_as(&named) {
            return crate::path::resolve_normalized(&named);
        }
        let mapped = self.home_resolved(&named);
        if mapped != named && self.may_be_granted_as(&mapped) {
            return crate::path::resolve_normalized(&named);
        }
        Ok((
            ResolvedPath {
                path: mapped,
                is_dir: false,
            },
            None,
        ))
    }

    /// Whether a path named `named` (`mapped`: with the user's home
    /// resolved) may be in the storage folder or granted once resolved.
    fn may_be_granted(&self, named: &Path, mapped: &Path) -> bool {
        self.may_be_granted_as(named) || self.may_be_granted_as(mapped)
    }

    /// Whether `path`, spelled so, is in the storage folder or matches a
    /// grant (as written or resolved).
    fn may_be_granted_as(&self, path: &Path) -> bool {
        self.storage.as_ref().is_some_and(|s| within(path, s))
            || self.storage_named.iter().any(|s| within(path, s))
            || self.globs.is_match(path)
            || self.written_globs.is_match(path)
    }

    /// `named` with the user's home as resolved.
    fn home_resolved(&self, named: &Path) -> PathBuf {
        match named.strip_prefix(&self.user_home) {
            Ok(rest) => self.resolved_user_home.join(rest),
            Err(_) => named.to_path_buf(),
        }
    }

    /// `raw` normalized, and also with the user's home resolved.
    fn as_named_both(&self, raw: &str) -> Option<(PathBuf, PathBuf)> {
        let named = crate::path::normalized(raw, &self.user_home).ok()?;
        let mapped = self.home_resolved(&named);
        Some((named, mapped))
    }

    /// The path `raw` (sent by the server) names, with no symlink followed
    /// but the one the user's home may be (so that it compares with
    /// resolved paths); `None` when `raw` is malformed.
    fn as_named(&self, raw: &str) -> Option<PathBuf> {
        self.as_named_both(raw).map(|(_, mapped)| mapped)
    }

    /// Whether `resolved` is the path `raw` (sent by the server) names, or a
    /// path inside it, with no symlink followed but the one the user's home
    /// may be: then a denial of `resolved` tells the server nothing about
    /// where its path leads.
    pub fn resolves_as_named(&self, raw: &str, resolved: &Path) -> bool {
        self.as_named(raw)
            .is_some_and(|named| resolved.starts_with(named))
    }

    /// Whether `raw` (sent by the server) is a well-formed path: one that
    /// [`normalized`](crate::path::normalized) takes, without the disk.
    pub fn normalized_ok(&self, raw: &str) -> bool {
        self.as_named(raw).is_some()
    }

    /// Whether `raw` (sent by the server) names, with no symlink followed, a
    /// path in the authority's storage or under one of its grants. For a
    /// path that could not be resolved: only then may the server hear why.
    pub fn names_a_granted_path(&self, raw: &str) -> bool {
        self.as_named_both(raw)
            .is_some_and(|(named, mapped)| self.may_be_granted(&named, &mapped))
    }

    /// May the authority do `action` on `path`?
    pub fn check_path(&self, path: &ResolvedPath, action: Action) -> Result<Allowed, Denial> {
        let p = path.as_path();
        let never = |area| {
            Err(self.path_denial(
                path,
                action.into(),
                DenialReason::NeverGrantable(area),
                None,
            ))
        };
        if self
            .client_binaries
            .iter()
            .any(|bin| starts_with_any_case(p, bin))
        {
            return never(ControlArea::ClientBinary);
        }
        if let Some(storage) = &self.storage
            && within(p, storage)
        {
            if action == Action::Write && p == storage {
                return never(ControlArea::StorageFolder);
            }
            return Ok(Allowed {
                file_mode: Mode::STORAGE_FILE,
                dir_mode: Mode::STORAGE_DIR,
                in_storage: true,
            });
        }
        if starts_with_any_case(p, &self.home_root) {
            return never(self.control_area(p));
        }
        if self
            .home_named
            .iter()
            .any(|named| starts_with_any_case(p, named))
        {
            return never(ControlArea::HomeRoot);
        }
        if action == Action::Write
            && (starts_with_any_case(&self.home_root, p)
                || self
                    .home_named
                    .iter()
                    .any(|named| starts_with_any_case(named, p))
                || self
                    .client_binaries
                    .iter()
                    .any(|b| starts_with_any_case(b, p)))
        {
            return never(ControlArea::Ancestor);
        }
        let ceiling = self
            .globs
            .matches(p)
            .into_iter()
            .filter_map(|i| self.glob_grants.get(i))
            .filter(|(access, _)| access.allows(action))
            .map(|&(_, mode)| mode.bits())
            .reduce(|a, b| a | b);
        match ceiling.and_then(Mode::new) {
            Some(file_mode) => Ok(Allowed {
                file_mode,
                dir_mode: file_mode.for_dirs(),
                in_storage: false,
            }),
            None => {
                let command = self.grant_path_command(path, action, None);
                Err(self.path_denial(path, action.into(), DenialReason::NotGranted, command))
            }
        }
    }

    /// May a file (`is_dir` false) or directory at an allowed `path` be
    /// created or chmodded with `mode`? Denied when `mode` has a bit outside
    /// the ceiling, or a setuid, setgid or sticky bit.
    pub fn check_mode(
        &self,
        path: &ResolvedPath,
        allowed: &Allowed,
        is_dir: bool,
        mode: u32,
    ) -> Result<(), Denial> {
        let ceiling = if is_dir {
            allowed.dir_mode
        } else {
            allowed.file_mode
        };
        let op = Operation::SetMode(mode);
        if mode & !0o777 != 0 {
            let reason = DenialReason::SpecialModeBits { requested: mode };
            return Err(self.path_denial(path, op, reason, None));
        }
        if allowed.in_storage && is_dir && mode & 0o700 != 0o700 {
            let reason = DenialReason::StorageFolderLocked { requested: mode };
            return Err(self.path_denial(path, op, reason, None));
        }
        if ceiling.permits(mode) {
            return Ok(());
        }
        let reason = DenialReason::ModeTooWide {
            requested: mode,
            ceiling,
        };
        // Storage modes are fixed; elsewhere a grant with a wider mode helps.
        let command = (!allowed.in_storage)
            .then(|| {
                let file_mode = if is_dir {
                    (mode & 0o666) | ((mode & 0o111) << 2)
                } else {
                    mode
                };
                self.grant_path_command(path, Action::Write, Mode::new(file_mode))
            })
            .flatten();
        Err(self.path_denial(path, op, reason, command))
    }

    /// May the authority read the environment variable `name`?
    /// `TERMINALWIRE_HOME` always may be read.
    pub fn check_env(&self, name: &str) -> Result<(), Denial> {
        let denial = |reason, command| Denial {
            authority: self.authority.clone(),
            resource: Resource::Env,
            action: Operation::Read,
            target: name.to_owned(),
            reason,
            command,
        };
        let parsed = EnvName::parse(name).map_err(|e| {
            denial(
                DenialReason::InvalidTarget {
                    reason: e.to_string(),
                },
                None,
            )
        })?;
        if name == HOME_ENV || self.env.contains(&parsed) {
            return Ok(());
        }
        let command = format!(
            "terminalwire entitlement grant {} env {}",
            shell_word(self.authority.as_str()),
            shell_word(name)
        );
        Err(denial(DenialReason::NotGranted, Some(command)))
    }

    /// May the authority open `url` in the browser? The server's own http(s)
    /// origin always may; other targets need a scheme or origin grant.
    pub fn check_browser(&self, url: &str) -> Result<(), Denial> {
        let denial = |reason, command| Denial {
            authority: self.authority.clone(),
            resource: Resource::Browser,
            action: Operation::Launch,
            target: url.to_owned(),
            reason,
            command,
        };
        let parsed = Url::parse(url).map_err(|e| {
            denial(
                DenialReason::InvalidTarget {
                    reason: format!("not a URL: {e}"),
                },
                None,
            )
        })?;
        let scheme = parsed.scheme();
        if self
            .browser
            .iter()
            .any(|t| matches!(t, BrowserTarget::Scheme(s) if s == scheme))
        {
            return Ok(());
        }
        let grant_command = |target: &str| {
            format!(
                "terminalwire entitlement grant {} browser {}",
                shell_word(self.authority.as_str()),
                shell_word(target)
            )
        };
        if matches!(scheme, "http" | "https") {
            if parsed.host().is_none() {
                let reason = DenialReason::InvalidTarget {
                    reason: "the URL has no host".into(),
                };
                return Err(denial(reason, None));
            }
            let origin = parsed.origin().ascii_serialization();
            if origin == self.server_origin
                || self
                    .browser
                    .iter()
                    .any(|t| matches!(t, BrowserTarget::Origin(o) if *o == origin))
            {
                return Ok(());
            }
            return Err(denial(
                DenialReason::NotGranted,
                Some(grant_command(&origin)),
            ));
        }
        if DANGEROUS_SCHEMES.contains(&scheme) {
            let reason = DenialReason::DangerousScheme {
                scheme: scheme.to_owned(),
            };
            return Err(denial(reason, None));
        }
        // `com.example.app:`, so that it is not taken for a host name
        // typed as a scheme.
        let target = if scheme.contains('.') {
            format!("{scheme}:")
        } else {
            scheme.to_owned()
        };
        Err(denial(
            DenialReason::NotGranted,
            Some(grant_command(&target)),
        ))
    }

    /// Which control area `p` (under the home root) is in.
    fn control_area(&self, p: &Path) -> ControlArea {
        if p.starts_with(&self.bin_dir) {
            ControlArea::Launchers
        } else if p.starts_with(&self.authorities_dir)
            && p.file_name().is_some_and(|n| n == POLICY_FILE_NAME)
        {
            ControlArea::PolicyFile
        } else if p.starts_with(&self.authority_dir) {
            ControlArea::AuthorityFolder
        } else if p.starts_with(&self.authorities_dir) && p != self.authorities_dir {
            ControlArea::OtherAuthority
        } else {
            ControlArea::HomeRoot
        }
    }

    fn path_denial(
        &self,
        path: &ResolvedPath,
        action: Operation,
        reason: DenialReason,
        command: Option<String>,
    ) -> Denial {
        Denial {
            authority: self.authority.clone(),
            resource: Resource::Path,
            action,
            target: path.as_path().to_string_lossy().into_owned(),
            reason,
            command,
        }
    }

    /// `terminalwire entitlement grant <authority> path '<folder>/**' --<action> [--mode M]`,
    /// where the folder is the path itself when it is taken as a folder
    /// ([`ResolvedPath::is_dir`]: on disk, or by the request), else its parent.
    /// When that folder is the user's home or above it, the grant names the
    /// path alone: one keypress about `~/notes.txt` must not give the
    /// server `~/.bashrc`. None for the kernel's magic links (`/proc/...`,
    /// `/dev/fd/...`, `/dev/stdin`): a path through them names the client
    /// process's own state (`/proc/self/cwd` is wherever the client runs),
    /// nothing a grant should hold; the user may still grant it by hand.
    fn grant_path_command(
        &self,
        path: &ResolvedPath,
        action: Action,
        mode: Option<Mode>,
    ) -> Option<String> {
        let p = path.as_path();
        let magic = p.starts_with("/proc")
            || p.starts_with("/dev/fd")
            || ["/dev/stdin", "/dev/stdout", "/dev/stderr"]
                .iter()
                .any(|link| p.starts_with(link));
        if magic {
            return None;
        }
        let folder = if path.is_dir() {
            p
        } else {
            p.parent().unwrap_or(p)
        };
        let shown = |path: &Path| match path.strip_prefix(&self.resolved_user_home) {
            Ok(rest) if rest.as_os_str().is_empty() => "~".to_owned(),
            Ok(rest) => format!("~/{}", escape_glob(&rest.to_string_lossy())),
            Err(_) => {
                let text = path.to_string_lossy();
                let trimmed = text.trim_end_matches('/');
                escape_glob(if trimmed.is_empty() { "/" } else { trimmed })
            }
        };
        let pattern = if self.resolved_user_home.starts_with(folder) {
            shown(p)
        } else {
            format!("{}/**", shown(folder))
        };
        let mut command = format!(
            "terminalwire entitlement grant {} path {} --{action}",
            shell_word(self.authority.as_str()),
            single_quote(&pattern),
        );
        if let Some(mode) = mode {
            command.push_str(&format!(" --mode {mode}"));
        }
        Some(command)
    }
}

/// `path.starts_with(prefix)`, answered from the bytes when the bytes of
/// `prefix` start those of `path` and are followed there by a separator or
/// by nothing: the common case of a request
/// into the storage folder, which comparing component by component made a
/// few percent of the client's time per request (figure 3 of the
/// benchmarks). Any other case is decided component by component, so the
/// answer is always `Path::starts_with`'s.
fn within(path: &Path, prefix: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (path_bytes, prefix_bytes) = (path.as_os_str().as_bytes(), prefix.as_os_str().as_bytes());
    let at_boundary = path_bytes.starts_with(prefix_bytes)
        && path_bytes
            .get(prefix_bytes.len())
            .is_none_or(|&next| next == b'/');
    at_boundary || path.starts_with(prefix)
}

/// Whether `path` is `prefix` or inside it, letters compared without
/// their case. On a case-insensitive file system (APFS, exFAT, CIFS, ext4
/// with casefold) `~/.TERMINALWIRE/...` is the terminalwire home, and the
/// path a server names is not put in the case it has on disk; on another,
/// refusing such a twin of a protected path costs nothing. Paths that are
/// all ASCII (the common case, on every request) are compared byte by
/// byte; others as [`folded`].
fn starts_with_any_case(path: &Path, prefix: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (path_bytes, prefix_bytes) = (path.as_os_str().as_bytes(), prefix.as_os_str().as_bytes());
    if !path_bytes.is_ascii() || !prefix_bytes.is_ascii() {
        return starts_with_folded(path, prefix);
    }
    let (path, prefix) = (path_bytes, prefix_bytes);
    let prefix = match prefix {
        [rest @ .., b'/'] if !rest.is_empty() => rest,
        _ => prefix,
    };
    path.len() >= prefix.len()
        && path[..prefix.len()].eq_ignore_ascii_case(prefix)
        && (path.len() == prefix.len() || path[prefix.len()] == b'/' || prefix == b"/")
}

/// [`starts_with_any_case`] for paths that are not all ASCII: component by
/// component, each [`folded`].
fn starts_with_folded(path: &Path, prefix: &Path) -> bool {
    let mut parts = path.components();
    prefix.components().all(|wanted| {
        parts
            .next()
            .is_some_and(|part| folded(part.as_os_str()) == folded(wanted.as_os_str()))
    })
}

/// A name as a case- and normalization-insensitive disk sees it: the
/// Unicode decomposition (APFS and ext4's casefold take `é` and `e` + a
/// combining accent for one name) of its letters upper-cased then
/// lower-cased, which joins the twins that lower-casing alone would keep
/// apart (`ſ` and `s`, the Kelvin sign and `k`). Over-inclusive where one
/// disk or another would tell two names apart (Turkish `ı` and `i`): it
/// only decides what is refused. A name that is not UTF-8 has only its
/// ASCII letters folded, as such a disk compares it byte by byte.
fn folded(name: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    use unicode_normalization::UnicodeNormalization;
    let round = |text: &str| {
        text.nfd()
            .flat_map(char::to_uppercase)
            .flat_map(char::to_lowercase)
            .nfd()
            .collect::<String>()
    };
    match name.to_str() {
        // Again until nothing changes: the capital sharp s lower-cases to
        // `ß`, which only the next round takes to `ss`, as full case
        // folding does.
        Some(text) => {
            let mut folded = round(text);
            for _ in 0..3 {
                let again = round(&folded);
                if again == folded {
                    break;
                }
                folded = again;
            }
            folded.into_bytes()
        }
        None => name.as_bytes().to_ascii_lowercase(),
    }
}

/// `text` as one shell word: unchanged when it only has safe characters,
/// else single-quoted.
pub fn shell_word(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@%+=,-".contains(c));
    if safe {
        text.to_owned()
    } else {
        single_quote(text)
    }
}

/// `text` in single quotes, each `'` written as `'\''`.
fn single_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{Grant, PathGrant, PathPattern};

    proptest::proptest! {
        // The byte shortcut never changes the answer, whatever the
        // separators, dots and lengths.
        #[test]
        fn within_answers_as_path_starts_with(
            path in "[ab/.]{0,10}",
            prefix in "[ab/.]{0,8}",
        ) {
            let (path, prefix) = (Path::new(&path), Path::new(&prefix));
            proptest::prop_assert_eq!(within(path, prefix), path.starts_with(prefix));
        }
    }

    #[test]
    fn within_takes_whole_components_only() {
        let storage = Path::new("/home/u/.terminalwire/authorities/h/storage");
        assert!(within(
            Path::new("/home/u/.terminalwire/authorities/h/storage/f"),
            storage
        ));
        assert!(within(storage, storage));
        assert!(!within(
            Path::new("/home/u/.terminalwire/authorities/h/storage2/f"),
            storage
        ));
        assert!(!within(
            Path::new("/home/u/.terminalwire/authorities/h"),
            storage
        ));
        // The edges of the byte shortcut, as `Path::starts_with` answers them.
        for (path, prefix) in [
            ("./a", "."),
            ("//a", "/"),
            ("a//b", "a/"),
            ("/a", ""),
            ("a/./b", "a/."),
            ("a", "a/"),
            ("a/b/", "a/b"),
            ("a/..", "a"),
        ] {
            let (path, prefix) = (Path::new(path), Path::new(prefix));
            assert_eq!(
                within(path, prefix),
                path.starts_with(prefix),
                "{path:?} {prefix:?}"
            );
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        user_home: PathBuf,
        home: Home,
        policy: Policy,
        client: PathBuf,
    }

    const SERVER: &str = "ws://example.com:3000/terminal";

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let user_home = std::fs::canonicalize(tmp.path()).unwrap();
        let home = Home::at(user_home.join(".terminalwire"));
        let a = Authority::parse("example.com:3000").unwrap();
        let b = Authority::parse("other.example").unwrap();
        for dir in [home.storage_dir(&a), home.storage_dir(&b), home.bin_dir()] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(home.policy_file(&a), "").unwrap();
        std::fs::write(home.storage_dir(&b).join("token"), "secret").unwrap();
        let client = user_home.join("tools/terminalwire");
        std::fs::create_dir_all(client.parent().unwrap()).unwrap();
        std::fs::write(&client, "binary").unwrap();
        Fixture {
            _tmp: tmp,
            user_home,
            home,
            policy: Policy::default(),
            client,
        }
    }

    impl Fixture {
        fn grant(&mut self, pattern: &str, access: Access, mode: Option<u32>) {
            self.policy.grant(Grant::Path(PathGrant {
                pattern: PathPattern::parse(pattern).unwrap(),
                access,
                mode: mode.and_then(Mode::new),
            }));
        }

        fn entitlements(&self) -> Entitlements {
            Entitlements::new(
                &Url::parse(SERVER).unwrap(),
                &self.home,
                &self.policy,
                &self.user_home,
                &[
                    self.client.clone(),
                    self.client.with_file_name("terminalwire-exec"),
                ],
            )
            .unwrap()
        }

        fn check(&self, raw: &str, action: Action) -> Result<Allowed, Denial> {
            let e = self.entitlements();
            e.check_path(&e.resolve(raw).unwrap(), action)
        }
    }

    #[test]
    fn a_path_is_named_as_granted_by_its_storage_or_a_grant_without_the_disk() {
        let mut f = fixture();
        f.grant("~/docs/**", Access::Read, None);
        let e = f.entitlements();
        assert!(e.names_a_granted_path("~/docs/missing/file"));
        assert!(
            e.names_a_granted_path(
                &f.home
                    .storage_dir(&Authority::parse("example.com:3000").unwrap())
                    .join("x")
                    .display()
                    .to_string()
            )
        );
        assert!(!e.names_a_granted_path("~/private/file"));
        assert!(!e.names_a_granted_path("~/docs/../private"));
        assert!(!e.names_a_granted_path("~other/docs"));
    }

    #[test]
    fn a_path_resolves_as_named_unless_a_symlink_leads_elsewhere() {
        let f = fixture();
        let e = f.entitlements();
        let outside = tempfile::tempdir().unwrap();
        let outside = std::fs::canonicalize(outside.path()).unwrap();
        std::fs::create_dir(f.user_home.join("docs")).unwrap();
        std::os::unix::fs::symlink(&outside, f.user_home.join("docs/link")).unwrap();
        let as_named = |raw: &str| e.resolves_as_named(raw, e.resolve(raw).unwrap().as_path());
        assert!(as_named("~/docs/report.txt"));
        assert!(as_named("~/docs/sub/../report.txt"));
        assert!(as_named(&f.user_home.join("docs").display().to_string()));
        assert!(!as_named("~/docs/link"));
        assert!(!as_named("~/docs/link/secret.txt"));
        // A path inside the named one (what a recursive delete reports).
        assert!(e.resolves_as_named("~/docs", &f.user_home.join("docs/a/b")));
        assert!(!e.resolves_as_named("~/docs", &f.user_home.join("docs-other")));
        // A home that is itself a symlink does not count as leading elsewhere.
        let linked_home = outside.join("home-link");
        std::os::unix::fs::symlink(&f.user_home, &linked_home).unwrap();
        let e = Entitlements::new(
            &Url::parse(SERVER).unwrap(),
            &f.home,
            &f.policy,
            &linked_home,
            std::slice::from_ref(&f.client),
        )
        .unwrap();
        let resolved = e.resolve("~/docs/report.txt").unwrap();
        assert_eq!(resolved.as_path(), f.user_home.join("docs/report.txt"));
        assert!(e.resolves_as_named("~/docs/report.txt", resolved.as_path()));
        assert!(!e.resolves_as_named("~/docs/link", e.resolve("~/docs/link").unwrap().as_path()));
    }

    fn never(result: Result<Allowed, Denial>) -> ControlArea {
        match result {
            Err(Denial {
                reason: DenialReason::NeverGrantable(area),
                command: None,
                ..
            }) => area,
            other => panic!("expected a never-grantable denial, got {other:?}"),
        }
    }

    #[test]
    fn own_storage_is_always_allowed() {
        let f = fixture();
        let storage = "~/.terminalwire/authorities/example.com:3000/storage";
        for raw in [format!("{storage}/session.json"), format!("{storage}/a/b")] {
            let allowed = f.check(&raw, Action::Write).unwrap();
            assert_eq!(allowed.file_mode, Mode::STORAGE_FILE);
            assert_eq!(allowed.dir_mode, Mode::STORAGE_DIR);
            assert!(allowed.in_storage);
            f.check(&raw, Action::Read).unwrap();
        }
        // The folder itself may be listed, not deleted, replaced or chmodded.
        assert!(f.check(storage, Action::Read).unwrap().in_storage);
        assert_eq!(
            never(f.check(storage, Action::Write)),
            ControlArea::StorageFolder
        );
        assert_eq!(
            never(f.check(&format!("{storage}/"), Action::Write)),
            ControlArea::StorageFolder
        );
    }

    /// A client program that cannot be resolved (a dangling symlink where
    /// one was) does not stop the client, nor the others' protection.
    #[test]
    fn an_unresolvable_client_program_does_not_stop_the_client() {
        let f = fixture();
        let dangling = f.user_home.join("tools/terminalwire-exec");
        std::os::unix::fs::symlink(f.user_home.join("tools/gone"), &dangling).unwrap();
        let e = Entitlements::new(
            &Url::parse(SERVER).unwrap(),
            &f.home,
            &f.policy,
            &f.user_home,
            &[dangling, f.client.clone()],
        )
        .unwrap();
        let denial = e
            .check_path(&e.resolve("~/tools/terminalwire").unwrap(), Action::Write)
            .unwrap_err();
        assert_eq!(
            denial.reason,
            DenialReason::NeverGrantable(ControlArea::ClientBinary)
        );
    }

    #[test]
    fn prefixes_compare_without_ascii_case_on_whole_components() {
        let yes =
            |path: &str, prefix: &str| starts_with_any_case(Path::new(path), Path::new(prefix));
        assert!(yes("/h/.TerminalWire/x", "/h/.terminalwire"));
        assert!(yes("/h/.terminalwire", "/h/.terminalwire"));
        assert!(yes("/h/.terminalwire", "/h/.terminalwire/"));
        assert!(yes("/anything", "/"));
        assert!(!yes("/h/.terminalwire-other", "/h/.terminalwire"));
        assert!(!yes("/h", "/h/.terminalwire"));
    }

    #[test]
    fn a_path_that_may_not_be_granted_is_not_walked() {
        use std::os::unix::fs::symlink;
        let mut f = fixture();
        let h = f.user_home.clone();
        std::fs::create_dir_all(h.join("docs")).unwrap();
        std::fs::create_dir_all(h.join("data/proj")).unwrap();
        std::fs::create_dir_all(h.join("out")).unwrap();
        symlink(h.join("docs"), h.join("out/to-docs")).unwrap();
        symlink(h.join("out/loop"), h.join("out/loop")).unwrap();
        symlink(h.join("data/proj"), h.join("proj")).unwrap();
        f.grant("~/docs/**", Access::Read, None);
        f.grant("~/proj/**", Access::Read, None);
        let e = f.entitlements();
        let request = |raw: &str| e.resolve_request(raw).map(|(path, _)| path);
        // Outside every grant: the path as named, untouched; refused.
        for raw in ["~/out/to-docs/f", "~/out/loop/f", "/net/host.example/x"] {
            let named = request(raw).unwrap();
            let expected = crate::path::normalized(raw, &h).unwrap();
            assert_eq!(named.as_path(), expected, "{raw}");
            assert!(e.check_path(&named, Action::Read).is_err(), "{raw}");
        }
        // A grant is suggested for what was named, but none through the
        // kernel's links to the client's own state.
        let command = |raw: &str| {
            e.check_path(&request(raw).unwrap(), Action::Read)
                .unwrap_err()
                .command
        };
        assert!(command("~/out/to-docs/f").is_some());
        for raw in [
            "/proc/self/cwd/x",
            "/proc/1/environ",
            "/dev/fd/3",
            "/dev/stdin",
        ] {
            assert_eq!(command(raw), None, "{raw}");
        }
        // Walking them would have followed the link, or failed on the loop.
        assert_eq!(
            e.resolve("~/out/to-docs/f").unwrap().as_path(),
            h.join("docs/f")
        );
        assert!(e.resolve("~/out/loop/f").is_err());
        // Granted paths are resolved, named as the grant names them or as
        // resolved; so is the storage folder.
        for (raw, resolved) in [
            ("~/docs/f", h.join("docs/f")),
            ("~/proj/f", h.join("data/proj/f")),
            ("~/data/proj/f", h.join("data/proj/f")),
            ("~/proj", h.join("data/proj")),
        ] {
            let path = request(raw).unwrap();
            assert_eq!(path.as_path(), resolved, "{raw}");
            e.check_path(&path, Action::Read).unwrap();
        }
        let storage = e.storage_dir().unwrap().join("f");
        let path = request(&storage.to_string_lossy()).unwrap();
        assert!(e.check_path(&path, Action::Write).unwrap().in_storage);
        // A malformed path is still told as such.
        assert!(request("").is_err());
        // A granted path that fails to resolve is told why: it is granted
        // as the grant is written.
        assert!(e.names_a_granted_path("~/proj/dangling/x"));
        assert!(!e.names_a_granted_path("~/out/to-docs/f"));
    }

    #[test]
    fn the_storage_folder_is_reached_through_a_home_that_is_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(tmp.path()).unwrap().join("real");
        std::fs::create_dir(&real).unwrap();
        let user_home = real.with_file_name("home");
        std::os::unix::fs::symlink(&real, &user_home).unwrap();
        let home = Home::at(user_home.join(".terminalwire"));
        let a = Authority::parse("example.com:3000").unwrap();
        std::fs::create_dir_all(home.storage_dir(&a)).unwrap();
        let e = Entitlements::new(
            &Url::parse(SERVER).unwrap(),
            &home,
            &Policy::default(),
            &user_home,
            &[],
        )
        .unwrap();
        // As the client names it to the server (home not resolved), and via `~`.
        let named = home.storage_dir(&a).join("f");
        for raw in [
            named.to_string_lossy().into_owned(),
            "~/.terminalwire/authorities/example.com:3000/storage/f".to_owned(),
        ] {
            let (path, _) = e.resolve_request(&raw).unwrap();
            assert!(path.as_path().starts_with(&real), "{raw}: {path:?}");
            assert!(
                e.check_path(&path, Action::Write).unwrap().in_storage,
                "{raw}"
            );
        }
    }

    /// A home that is a symlink is protected as named too: the link, and
    /// whatever a server would put in its place, are never granted, even by
    /// a grant of the whole user's home.
    #[test]
    fn a_home_that_is_a_symlink_is_never_granted_as_named() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let user_home = base.join("home");
        let real = base.join("elsewhere/terminalwire");
        std::fs::create_dir_all(&user_home).unwrap();
        std::fs::create_dir_all(&real).unwrap();
        let link = user_home.join(".terminalwire");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let home = Home::at(&link);
        let a = Authority::parse("example.com:3000").unwrap();
        std::fs::create_dir_all(home.storage_dir(&a)).unwrap();
        let mut policy = Policy::default();
        policy.grant(Grant::Path(PathGrant {
            pattern: PathPattern::parse("~/**").unwrap(),
            access: Access::ReadWrite,
            mode: None,
        }));
        let e = Entitlements::new(
            &Url::parse(SERVER).unwrap(),
            &home,
            &policy,
            &user_home,
            &[],
        )
        .unwrap();
        let check = |raw: &str, action| e.check_path(&e.resolve(raw).unwrap(), action);
        let never = |result: Result<Allowed, Denial>| match result.unwrap_err().reason {
            DenialReason::NeverGrantable(area) => area,
            other => panic!("{other:?}"),
        };
        // The link itself: not deleted, renamed or read as a file.
        assert_eq!(
            never(check("~/.terminalwire", Action::Write)),
            ControlArea::HomeRoot
        );
        assert_eq!(
            never(check("~/.terminalwire", Action::Read)),
            ControlArea::HomeRoot
        );
        // Nor the folder holding it.
        assert_eq!(never(check("~", Action::Write)), ControlArea::Ancestor);
        // Through the link: the home as resolved, as before.
        assert_eq!(
            never(check(
                "~/.terminalwire/authorities/example.com:3000/policy.toml",
                Action::Write
            )),
            ControlArea::PolicyFile
        );
        assert!(
            check(
                "~/.terminalwire/authorities/example.com:3000/storage/f",
                Action::Write
            )
            .unwrap()
            .in_storage
        );
        // A folder a server put in the link's place is not its to fill.
        std::fs::remove_file(&link).unwrap();
        std::fs::create_dir_all(link.join("authorities/example.com:3000")).unwrap();
        assert_eq!(
            never(check(
                "~/.terminalwire/authorities/example.com:3000/policy.toml",
                Action::Write
            )),
            ControlArea::HomeRoot
        );
        // The rest of the user's home is granted.
        check("~/notes.txt", Action::Write).unwrap();
    }

    #[test]
    fn prefixes_compare_as_a_case_and_normalization_insensitive_disk_does() {
        let yes =
            |path: &str, prefix: &str| starts_with_any_case(Path::new(path), Path::new(prefix));
        let home = "/home/jos\u{e9}/.terminalwire";
        // Upper case, and the accent as a combining mark, name the same folder.
        assert!(yes("/home/JOS\u{c9}/.terminalwire/bin/app", home));
        assert!(yes("/home/jose\u{301}/.TerminalWire", home));
        assert!(yes("/home/jos\u{e9}/.terminalwire/", home));
        // Letters that only upper-casing joins to an ASCII one.
        assert!(yes(
            "/home/\u{212a}im/.terminalwire",
            "/home/kim/.terminalwire"
        ));
        assert!(yes("/home/kim/.\u{17f}sh", "/home/kim/.ssh"));
        assert!(yes("/h/.\u{17f}\u{17f}h/id", "/h/.SSH"));
        // The capital sharp s, the sharp s and "ss" are one name.
        assert!(yes(
            "/home/STRA\u{1e9e}E/.terminalwire/x",
            "/home/stra\u{df}e/.terminalwire"
        ));
        assert!(yes(
            "/home/strasse/.terminalwire",
            "/home/STRA\u{1e9e}E/.terminalwire"
        ));
        // Still whole components, and another letter is another name.
        assert!(!yes("/home/jose/.terminalwire", home));
        assert!(!yes("/home/jos\u{e9}/.terminalwire-other", home));
        assert!(!yes("/home/jos\u{e9}", home));
        // A name that is not UTF-8 has its ASCII letters folded.
        use std::os::unix::ffi::OsStrExt;
        let raw = Path::new(std::ffi::OsStr::from_bytes(b"/h/\xff/.TERMINALWIRE/x"));
        assert!(!starts_with_any_case(
            raw,
            Path::new("/h/\u{e9}/.terminalwire")
        ));
        let prefix = Path::new(std::ffi::OsStr::from_bytes(b"/h/\xff/.terminalwire"));
        assert!(starts_with_any_case(raw, prefix));
    }

    #[test]
    fn control_areas_are_never_granted_even_with_a_root_grant() {
        let mut f = fixture();
        f.grant("/**", Access::ReadWrite, Some(0o777));
        let auth = "~/.terminalwire/authorities";
        let cases = [
            (
                format!("{auth}/example.com:3000/policy.toml"),
                ControlArea::PolicyFile,
            ),
            (
                format!("{auth}/other.example/policy.toml"),
                ControlArea::PolicyFile,
            ),
            (
                format!("{auth}/example.com:3000"),
                ControlArea::AuthorityFolder,
            ),
            (
                format!("{auth}/example.com:3000/other"),
                ControlArea::AuthorityFolder,
            ),
            (
                format!("{auth}/other.example/storage/token"),
                ControlArea::OtherAuthority,
            ),
            (format!("{auth}/other.example"), ControlArea::OtherAuthority),
            (
                format!("{auth}/example.com:3000/storage/../policy.toml"),
                ControlArea::PolicyFile,
            ),
            ("~/.terminalwire/bin/app".to_owned(), ControlArea::Launchers),
            ("~/.terminalwire/bin".to_owned(), ControlArea::Launchers),
            ("~/.terminalwire".to_owned(), ControlArea::HomeRoot),
            ("~/.terminalwire/config".to_owned(), ControlArea::HomeRoot),
            (auth.to_owned(), ControlArea::HomeRoot),
            ("~/tools/terminalwire".to_owned(), ControlArea::ClientBinary),
            (
                "~/tools/terminalwire-exec".to_owned(),
                ControlArea::ClientBinary,
            ),
            // Their case twins: the same files on a case-insensitive disk.
            (
                "~/.TerminalWire/authorities/other.example/storage/token".to_owned(),
                ControlArea::HomeRoot,
            ),
            ("~/.TERMINALWIRE/bin/app".to_owned(), ControlArea::HomeRoot),
            ("~/Tools/TerminalWire".to_owned(), ControlArea::ClientBinary),
        ];
        for (raw, area) in cases {
            assert_eq!(never(f.check(&raw, Action::Read)), area, "{raw}");
            assert_eq!(never(f.check(&raw, Action::Write)), area, "{raw}");
        }
        // Writing a folder that holds them is refused; reading (listing) is fine.
        assert_eq!(never(f.check("~", Action::Write)), ControlArea::Ancestor);
        assert_eq!(
            never(f.check("~/tools", Action::Write)),
            ControlArea::Ancestor
        );
        f.check("~", Action::Read).unwrap();
        let no_client = Entitlements::new(
            &Url::parse(SERVER).unwrap(),
            &f.home,
            &f.policy,
            &f.user_home,
            &[],
        )
        .unwrap();
        let home_dir = no_client.resolve("~").unwrap();
        assert_eq!(
            never(no_client.check_path(&home_dir, Action::Write)),
            ControlArea::Ancestor
        );
        // Everything else is granted by `/**`.
        assert_eq!(
            f.check("/etc/hosts", Action::Read)
                .unwrap()
                .file_mode
                .bits(),
            0o777
        );
        f.check("~/.terminalwire2/x", Action::Write).unwrap();
    }

    #[test]
    fn denial_message_for_never_grantable() {
        let f = fixture();
        let d = f
            .check("~/.terminalwire/bin/app", Action::Write)
            .unwrap_err();
        assert!(d.is_never_grantable());
        assert!(d.to_string().ends_with("This can never be granted."), "{d}");
    }

    #[cfg(unix)]
    #[test]
    fn symlink_in_storage_pointing_outside_is_denied() {
        let f = fixture();
        let a = Authority::parse("example.com:3000").unwrap();
        std::fs::create_dir_all(f.user_home.join("secrets")).unwrap();
        std::fs::write(f.user_home.join("secrets/key"), "k").unwrap();
        std::os::unix::fs::symlink(
            f.user_home.join("secrets"),
            f.home.storage_dir(&a).join("link"),
        )
        .unwrap();
        let e = f.entitlements();
        let r = e
            .resolve("~/.terminalwire/authorities/example.com:3000/storage/link/key")
            .unwrap();
        assert_eq!(r.as_path(), f.user_home.join("secrets/key"));
        let d = e.check_path(&r, Action::Read).unwrap_err();
        assert_eq!(d.reason, DenialReason::NotGranted);
        // A link to another authority's storage is never granted.
        std::os::unix::fs::symlink(
            f.home
                .storage_dir(&Authority::parse("other.example").unwrap()),
            f.home.storage_dir(&a).join("other"),
        )
        .unwrap();
        let raw = "~/.terminalwire/authorities/example.com:3000/storage/other/token";
        assert_eq!(
            never(f.check(raw, Action::Read)),
            ControlArea::OtherAuthority
        );
    }

    #[cfg(unix)]
    #[test]
    fn storage_that_is_a_symlink_is_not_storage() {
        let f = fixture();
        let a = Authority::parse("example.com:3000").unwrap();
        let storage = f.home.storage_dir(&a);
        std::fs::remove_dir(&storage).unwrap();
        std::fs::create_dir_all(f.user_home.join(".ssh")).unwrap();
        std::os::unix::fs::symlink(f.user_home.join(".ssh"), &storage).unwrap();
        let raw = "~/.terminalwire/authorities/example.com:3000/storage/id_ed25519";
        let d = f.check(raw, Action::Read).unwrap_err();
        assert_eq!(d.reason, DenialReason::NotGranted);
    }

    #[test]
    fn grants_match_resolved_paths_with_access_and_modes() {
        let mut f = fixture();
        f.grant("~/reports/**", Access::Read, None);
        f.grant("~/out/*.txt", Access::Write, Some(0o600));
        assert!(f.check("~/reports/2024/q1.csv", Action::Read).is_ok());
        assert!(f.check("~/reports", Action::Read).is_ok());
        assert!(f.check("~/reports/x", Action::Write).is_err());
        assert!(f.check("~/reports/../.ssh/id", Action::Read).is_err());
        let allowed = f.check("~/out/a.txt", Action::Write).unwrap();
        assert_eq!(
            (allowed.file_mode.bits(), allowed.dir_mode.bits()),
            (0o600, 0o700)
        );
        assert!(f.check("~/out/sub/a.txt", Action::Write).is_err());
        assert!(f.check("out/a.txt", Action::Write).is_ok());
        let default = {
            f.grant("~/docs/**", Access::ReadWrite, None);
            f.check("~/docs/x", Action::Write).unwrap()
        };
        assert_eq!(
            (default.file_mode.bits(), default.dir_mode.bits()),
            (0o644, 0o755)
        );
    }

    #[test]
    fn glob_characters_in_paths_do_not_widen() {
        let mut f = fixture();
        f.grant("~/a/[*]", Access::Read, None);
        std::fs::create_dir_all(f.user_home.join("a")).unwrap();
        std::fs::write(f.user_home.join("a/*"), "star").unwrap();
        assert!(f.check("~/a/*", Action::Read).is_ok());
        assert!(f.check("~/a/b", Action::Read).is_err());
        // A file named `*` elsewhere is just a name.
        f.grant("~/r/**", Access::Read, None);
        assert!(f.check("~/*", Action::Read).is_err());
        assert!(f.check("~/r*/x", Action::Read).is_err());
        // And the suggested grant escapes it.
        let d = f.check("~/we[ir]d*/f", Action::Read).unwrap_err();
        assert_eq!(
            d.command.as_deref(),
            Some(
                "terminalwire entitlement grant example.com:3000 path '~/we[[]ir[]]d[*]/**' --read"
            )
        );
    }

    #[test]
    fn denial_commands_are_exact() {
        let f = fixture();
        let grant = "terminalwire entitlement grant example.com:3000 path";
        let cases = [
            ("~/reports/q1.csv", Action::Write, "'~/reports/**' --write"),
            ("~/tools", Action::Read, "'~/tools/**' --read"),
            ("/etc/passwd", Action::Read, "'/etc/**' --read"),
            ("~/it's/x", Action::Read, r"'~/it'\''s/**' --read"),
            // In the home itself or above it: the path alone, not everything.
            ("~/notes.txt", Action::Write, "'~/notes.txt' --write"),
            ("~", Action::Read, "'~' --read"),
            ("/x.txt", Action::Read, "'/x.txt' --read"),
        ];
        for (raw, action, suggested) in cases {
            let command = f.check(raw, action).unwrap_err().command.unwrap();
            assert_eq!(command, format!("{grant} {suggested}"), "{raw}");
        }
        // Granted as suggested, it allows that file and nothing beside it.
        let mut granted = fixture();
        granted.grant("~/notes.txt", Access::Write, None);
        granted.check("~/notes.txt", Action::Write).unwrap();
        granted.check("~/.bashrc", Action::Write).unwrap_err();
        let e = f.entitlements();
        assert_eq!(
            e.check_env("EDITOR").unwrap_err().command.unwrap(),
            "terminalwire entitlement grant example.com:3000 env EDITOR"
        );
        assert_eq!(
            e.check_browser("https://github.com/x")
                .unwrap_err()
                .command
                .unwrap(),
            "terminalwire entitlement grant example.com:3000 browser https://github.com"
        );
        assert_eq!(
            e.check_browser("mailto:a@b.example")
                .unwrap_err()
                .command
                .unwrap(),
            "terminalwire entitlement grant example.com:3000 browser mailto"
        );
        let d = e.check_env("EDITOR").unwrap_err();
        assert_eq!(
            d.to_string(),
            "example.com:3000 may not read env EDITOR: it has not been granted. \
             To allow it, run: terminalwire entitlement grant example.com:3000 env EDITOR"
        );
    }

    #[test]
    fn ipv6_authorities_are_quoted() {
        let f = fixture();
        let e = Entitlements::new(
            &Url::parse("ws://[::1]:8080/").unwrap(),
            &f.home,
            &f.policy,
            &f.user_home,
            &[],
        )
        .unwrap();
        assert_eq!(
            e.check_env("EDITOR").unwrap_err().command.unwrap(),
            "terminalwire entitlement grant '[::1]:8080' env EDITOR"
        );
    }

    #[test]
    fn modes() {
        let mut f = fixture();
        f.grant("~/out/**", Access::Write, Some(0o640));
        let e = f.entitlements();
        let r = e.resolve("~/out/f").unwrap();
        let allowed = e.check_path(&r, Action::Write).unwrap();
        let allowed_out = allowed;
        assert!(e.check_mode(&r, &allowed, false, 0o640).is_ok());
        assert!(e.check_mode(&r, &allowed, false, 0o600).is_ok());
        assert!(e.check_mode(&r, &allowed, true, 0o750).is_ok());
        let d = e.check_mode(&r, &allowed, false, 0o644).unwrap_err();
        assert!(matches!(
            d.reason,
            DenialReason::ModeTooWide {
                requested: 0o644,
                ..
            }
        ));
        assert_eq!(
            d.command.as_deref(),
            Some(
                "terminalwire entitlement grant example.com:3000 path '~/out/**' --write --mode 0644"
            )
        );
        let d = e.check_mode(&r, &allowed, false, 0o4640).unwrap_err();
        assert!(d.is_never_grantable() && d.command.is_none());
        assert!(e.check_mode(&r, &allowed, true, 0o1750).is_err());
        // Storage caps.
        let s = e
            .resolve("~/.terminalwire/authorities/example.com:3000/storage/f")
            .unwrap();
        let allowed = e.check_path(&s, Action::Write).unwrap();
        assert!(e.check_mode(&s, &allowed, false, 0o600).is_ok());
        assert!(e.check_mode(&s, &allowed, true, 0o700).is_ok());
        let d = e.check_mode(&s, &allowed, false, 0o644).unwrap_err();
        assert!(d.command.is_none());
        // A storage folder keeps rwx for its owner: one the client cannot
        // list would hide what is in it from the quota.
        for locked in [0o300, 0o600, 0o500, 0o000] {
            let d = e.check_mode(&s, &allowed, true, locked).unwrap_err();
            assert!(
                matches!(d.reason, DenialReason::StorageFolderLocked { requested } if requested == locked),
                "{locked:o}: {d}"
            );
            assert!(d.is_never_grantable() && d.command.is_none());
        }
        // A file may be any mode within 0600 (the quota only stats it).
        assert!(e.check_mode(&s, &allowed, false, 0o200).is_ok());
        // Elsewhere, a folder's mode is the grant's business.
        assert!(e.check_mode(&r, &allowed_out, true, 0o300).is_ok());
    }

    #[test]
    fn env_rules() {
        let mut f = fixture();
        f.policy
            .grant(Grant::Env(EnvName::parse("EDITOR").unwrap()));
        let e = f.entitlements();
        assert!(e.check_env("TERMINALWIRE_HOME").is_ok());
        assert!(e.check_env("EDITOR").is_ok());
        assert!(e.check_env("editor").is_err());
        assert!(e.check_env("AWS_SECRET_ACCESS_KEY").is_err());
        let d = e.check_env("A=B").unwrap_err();
        assert!(d.command.is_none());
    }

    #[test]
    fn browser_rules() {
        let mut f = fixture();
        let e = f.entitlements();
        assert_eq!(e.server_origin(), "http://example.com:3000");
        assert!(e.check_browser("http://example.com:3000/login?x=1").is_ok());
        assert!(e.check_browser("http://EXAMPLE.com:3000/").is_ok());
        for denied in [
            "https://example.com:3000/",
            "http://example.com/",
            "http://example.com:3001/",
            "http://example.com:30001/",
            "http://example.com:3000@evil.example/",
            "https://github.com/",
            "mailto:a@b.example",
        ] {
            assert_eq!(
                e.check_browser(denied).unwrap_err().reason,
                DenialReason::NotGranted,
                "{denied}"
            );
        }
        for dangerous in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "file:///etc/passwd",
            "data:text/html,x",
            "vbscript:x",
        ] {
            let d = e.check_browser(dangerous).unwrap_err();
            assert!(
                matches!(d.reason, DenialReason::DangerousScheme { .. }),
                "{dangerous}"
            );
            assert!(d.command.is_none());
        }
        assert!(e.check_browser("not a url").is_err());

        for target in ["mailto", "https://github.com", "javascript"] {
            f.policy
                .grant(Grant::Browser(BrowserTarget::parse(target).unwrap()));
        }
        let e = f.entitlements();
        assert!(e.check_browser("mailto:a@b.example").is_ok());
        assert!(e.check_browser("https://github.com/a/b").is_ok());
        assert!(e.check_browser("https://github.com:443/a/b").is_ok());
        assert!(e.check_browser("http://github.com/").is_err());
        assert!(e.check_browser("https://github.com:8443/").is_err());
        assert!(e.check_browser("https://gist.github.com/").is_err());
        assert!(e.check_browser("javascript:alert(1)").is_ok());
        // A scheme with a dot is suggested with its colon, so that it is not
        // taken for a host name typed as a scheme.
        assert_eq!(
            e.check_browser("com.example.app:/callback")
                .unwrap_err()
                .command
                .unwrap(),
            "terminalwire entitlement grant example.com:3000 browser com.example.app:"
        );
    }
}
