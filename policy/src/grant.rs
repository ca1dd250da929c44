//! The things a user can grant an authority, each validated when it is built
//! (so a loaded policy holds only valid grants): path patterns with an access
//! and an optional mode ceiling, environment variable names, and browser
//! targets (a scheme or an http(s) origin).

use std::fmt;
use std::path::Path;

use globset::{Glob, GlobBuilder};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::path::{MAX_PATH_LEN, resolve_absolute};

/// What a path grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read files, list directories, check existence.
    Read,
    /// Create, write, append, delete, change modes.
    Write,
    /// Both.
    ReadWrite,
}

/// What a server asks to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read a file, list a directory, check existence.
    Read,
    /// Create, write, append, delete, change a mode.
    Write,
}

impl Access {
    /// True when this access covers `action`.
    pub fn allows(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Access::ReadWrite, _) | (Access::Read, Action::Read) | (Access::Write, Action::Write)
        )
    }

    /// The access covering both `self` and `other`.
    pub fn union(self, other: Access) -> Access {
        if self == other {
            self
        } else {
            Access::ReadWrite
        }
    }

    /// What is left of `self` once `other` is taken away (`None`: nothing).
    pub fn without(self, other: Access) -> Option<Access> {
        match (self, other) {
            (_, Access::ReadWrite) => None,
            (Access::ReadWrite, Access::Read) => Some(Access::Write),
            (Access::ReadWrite, Access::Write) => Some(Access::Read),
            (a, b) if a == b => None,
            (a, _) => Some(a),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read-write",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Read => "read",
            Action::Write => "write",
        })
    }
}

/// Why a grant given by a user (or read from a policy file) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// A path pattern is invalid.
    #[error("invalid path pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A mode is not an octal permission mode of at most 0777.
    #[error("invalid mode {mode:?}: expected octal permission bits such as 0644 (at most 0777)")]
    Mode {
        /// The mode as given.
        mode: String,
    },
    /// An environment variable name is invalid.
    #[error("invalid environment variable name {name:?}")]
    EnvName {
        /// The name as given.
        name: String,
    },
    /// A browser target is neither a scheme nor an http(s) origin.
    #[error("invalid browser target {target:?}: {reason}")]
    BrowserTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Permission bits (at most `0o777` for a ceiling), written in octal as `0644`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mode(u32);

impl Mode {
    /// The default ceiling for files created under a path grant.
    pub const DEFAULT_FILE: Mode = Mode(0o644);
    /// The default ceiling for directories created under a path grant.
    pub const DEFAULT_DIR: Mode = Mode(0o755);
    /// The ceiling for files in an authority's storage.
    pub const STORAGE_FILE: Mode = Mode(0o600);
    /// The ceiling for directories in an authority's storage.
    pub const STORAGE_DIR: Mode = Mode(0o700);

    /// A mode from its bits; `None` above `0o777`.
    pub fn new(bits: u32) -> Option<Mode> {
        (bits <= 0o777).then_some(Mode(bits))
    }

    /// Parse `0644`, `644` or `0o644`.
    pub fn parse(text: &str) -> Result<Mode, GrantError> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        let bad = || GrantError::Mode {
            mode: text.to_owned(),
        };
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(bad());
        }
        u32::from_str_radix(digits, 8)
            .ok()
            .and_then(Mode::new)
            .ok_or_else(bad)
    }

    /// The permission bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The directory ceiling matching a file ceiling: search (`x`) wherever
    /// read is allowed, so 0644 gives 0755 and 0600 gives 0700.
    pub fn for_dirs(self) -> Mode {
        Mode(self.0 | ((self.0 & 0o444) >> 2))
    }

    /// True when `requested` has no bit outside this ceiling and no
    /// setuid, setgid or sticky bit.
    pub fn permits(self, requested: u32) -> bool {
        requested & !self.0 == 0
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl TryFrom<String> for Mode {
    type Error = GrantError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Mode::parse(&s)
    }
}

impl From<Mode> for String {
    fn from(m: Mode) -> String {
        m.to_string()
    }
}

/// A validated glob over absolute paths, as the user wrote it (e.g. `~/reports/**`).
///
/// It must be `~`, start with `~/` or `/`, hold no NUL and no `.` or `..`
/// component, and compile as a glob. `*` and `?` do not match `/`; `**` does.
/// A pattern ending in `/**` also matches the folder itself, so that
/// `~/reports/**` allows listing `~/reports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPattern(String);

impl PathPattern {
    /// Validate a pattern.
    pub fn parse(text: &str) -> Result<PathPattern, GrantError> {
        let bad = |reason: &str| GrantError::Pattern {
            pattern: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text.contains('\0') {
            return Err(bad("it contains a NUL byte"));
        }
        if text.len() > MAX_PATH_LEN {
            return Err(bad("it is too long"));
        }
        if !(text == "~" || text.starts_with("~/") || text.starts_with('/')) {
            return Err(bad(if text.starts_with('~') {
                "only `~` and `~/...` are allowed, not another user's home"
            } else {
                "it must be absolute (start with `/` or `~/`)"
            }));
        }
        if text.split('/').any(|part| part == "." || part == "..") {
            return Err(bad("`.` and `..` components are not allowed"));
        }
        build_glob(text).map_err(|e| bad(&e.kind().to_string()))?;
        Ok(PathPattern(text.to_owned()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pattern with `~` expanded to `user_home`.
    pub fn expand(&self, user_home: &Path) -> String {
        let home = user_home.to_string_lossy();
        let home = escape_glob(home.trim_end_matches('/'));
        match self.0.strip_prefix('~') {
            Some("") if home.is_empty() => "/".to_owned(),
            Some("") => home,
            Some(rest) => format!("{home}{rest}"),
            None => self.0.clone(),
        }
    }

    /// Whether the pattern matches `path` (resolved), with `~` as
    /// `user_home`.
    pub fn matches(&self, path: &Path, user_home: &Path) -> bool {
        self.globs(user_home)
            .iter()
            .any(|glob| glob.compile_matcher().is_match(path))
    }

    /// The globs that implement this pattern: `~` expanded, the literal
    /// leading folders resolved through symlinks (so they compare with
    /// resolved paths), plus the folder itself for a trailing `/**`.
    pub(crate) fn globs(&self, user_home: &Path) -> Vec<Glob> {
        Self::globs_of(resolve_literal_prefix(&self.expand(user_home)))
    }

    /// The globs of this pattern as written, `~` expanded to `user_home`
    /// and nothing resolved: what a path named through the same folders
    /// the grant names matches.
    pub(crate) fn written_globs(&self, user_home: &Path) -> Vec<Glob> {
        Self::globs_of(self.expand(user_home))
    }

    fn globs_of(expanded: String) -> Vec<Glob> {
        let mut texts = vec![expanded.clone()];
        if let Some(base) = expanded.strip_suffix("/**")
            && !base.is_empty()
        {
            texts.push(base.to_owned());
        }
        texts.iter().filter_map(|t| build_glob(t).ok()).collect()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PathPattern {
    type Error = GrantError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PathPattern::parse(&s)
    }
}

impl From<PathPattern> for String {
    fn from(p: PathPattern) -> String {
        p.0
    }
}

fn build_glob(text: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(text)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// Escape `text` so that a glob matches it literally.
pub(crate) fn escape_glob(text: &str) -> String {
    globset::escape(&text.replace('\\', "\\\\"))
}

fn is_literal(part: &str) -> bool {
    !part.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// Replace the literal leading folders of an absolute glob by their resolved
/// form (escaped again); unchanged if they cannot be resolved.
fn resolve_literal_prefix(pattern: &str) -> String {
    let parts: Vec<&str> = pattern.split('/').collect();
    let literal = parts.iter().take_while(|p| is_literal(p)).count();
    let prefix = parts[..literal].join("/");
    let prefix = if prefix.is_empty() { "/" } else { &prefix };
    let Ok(resolved) = resolve_absolute(Path::new(prefix)) else {
        return pattern.to_owned();
    };
    let Some(resolved) = resolved.as_path().to_str() else {
        return pattern.to_owned();
    };
    let mut out = escape_glob(resolved.trim_end_matches('/'));
    for part in &parts[literal..] {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A path grant: a pattern, an access and an optional mode ceiling for the
/// files it creates or chmods (directories get the same with `x` added where
/// `r` is, see [`Mode::for_dirs`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathGrant {
    /// Which paths.
    pub pattern: PathPattern,
    /// What may be done with them.
    pub access: Access,
    /// The widest mode for files created or chmodded (default 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

/// A validated environment variable name: not empty, no `=` nor NUL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvName(String);

impl EnvName {
    /// Validate a name.
    pub fn parse(name: &str) -> Result<EnvName, GrantError> {
        if name.is_empty() || name.contains(['=', '\0']) || name.chars().any(char::is_control) {
            return Err(GrantError::EnvName {
                name: name.to_owned(),
            });
        }
        Ok(EnvName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EnvName {
    type Error = GrantError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        EnvName::parse(&s)
    }
}

impl From<EnvName> for String {
    fn from(n: EnvName) -> String {
        n.0
    }
}

/// What the browser may be asked to open: every URL of a scheme, or the
/// http(s) URLs of one origin.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BrowserTarget {
    /// A lower-case scheme such as `mailto`.
    Scheme(String),
    /// An http(s) origin such as `https://github.com` (default port left out).
    Origin(String),
}

impl BrowserTarget {
    /// Parse `mailto` (or `mailto:`) as a scheme, `https://github.com` as an origin.
    pub fn parse(text: &str) -> Result<BrowserTarget, GrantError> {
        let bad = |reason: &str| GrantError::BrowserTarget {
            target: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.contains("://") {
            let url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad(
                    "only http and https origins can be granted; grant other schemes by name",
                ));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(bad("an origin has no user name or password"));
            }
            if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                return Err(bad("an origin has no path, query or fragment"));
            }
            return Ok(BrowserTarget::Origin(url.origin().ascii_serialization()));
        }
        let scheme = text.strip_suffix(':').unwrap_or(text);
        let mut chars = scheme.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            return Err(bad(
                "expected a scheme such as `mailto` or an origin such as `https://github.com`",
            ));
        }
        Ok(BrowserTarget::Scheme(scheme.to_ascii_lowercase()))
    }

    /// The target as text (`mailto`, `https://github.com`).
    pub fn as_str(&self) -> &str {
        match self {
            BrowserTarget::Scheme(s) | BrowserTarget::Origin(s) => s,
        }
    }
}

impl fmt::Display for BrowserTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for BrowserTarget {
    type Error = GrantError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        BrowserTarget::parse(&s)
    }
}

impl From<BrowserTarget> for String {
    fn from(t: BrowserTarget) -> String {
        match t {
            BrowserTarget::Scheme(s) | BrowserTarget::Origin(s) => s,
        }
    }
}

/// One grant, as given to [`Policy::grant`](crate::Policy::grant) and
/// [`Policy::revoke`](crate::Policy::revoke).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// Paths matching a pattern.
    Path(PathGrant),
    /// An environment variable.
    Env(EnvName),
    /// A browser target.
    Browser(BrowserTarget),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_algebra() {
        assert!(Access::ReadWrite.allows(Action::Write));
        assert!(!Access::Read.allows(Action::Write));
        assert!(!Access::Write.allows(Action::Read));
        assert_eq!(Access::Read.union(Access::Write), Access::ReadWrite);
        assert_eq!(Access::Read.union(Access::Read), Access::Read);
        assert_eq!(Access::ReadWrite.without(Access::Write), Some(Access::Read));
        assert_eq!(Access::Read.without(Access::Read), None);
        assert_eq!(Access::Read.without(Access::Write), Some(Access::Read));
    }

    #[test]
    fn modes() {
        assert_eq!(Mode::parse("0644").unwrap().bits(), 0o644);
        assert_eq!(Mode::parse("644").unwrap().bits(), 0o644);
        assert_eq!(Mode::parse("0o600").unwrap().to_string(), "0600");
        for bad in ["", "8", "0o", "4755", "07777", "-1", "0x1ff", "00644"] {
            assert!(Mode::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(Mode(0o644).for_dirs(), Mode(0o755));
        assert_eq!(Mode(0o600).for_dirs(), Mode(0o700));
        assert!(Mode(0o644).permits(0o600));
        assert!(!Mode(0o644).permits(0o664));
        assert!(!Mode(0o777).permits(0o4755));
        assert!(!Mode(0o777).permits(0o1777));
    }

    #[test]
    fn patterns_are_validated() {
        assert!(PathPattern::parse("~/reports/**").is_ok());
        assert!(PathPattern::parse("/tmp/*.txt").is_ok());
        assert!(PathPattern::parse("~").is_ok());
        for bad in [
            "",
            "reports/**",
            "~root/**",
            "/a\0b",
            "/a/../b",
            "/a/./b",
            "/a/[",
            "/a/{b",
            "*.txt",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn pattern_expansion() {
        let p = PathPattern::parse("~/r/**").unwrap();
        assert_eq!(p.expand(Path::new("/home/u")), "/home/u/r/**");
        assert_eq!(p.expand(Path::new("/home/u*")), "/home/u[*]/r/**");
        let home = PathPattern::parse("~").unwrap();
        assert_eq!(home.expand(Path::new("/home/u/")), "/home/u");
    }

    #[test]
    fn star_does_not_cross_separators() {
        let globs = PathPattern::parse("/nonexistent-tw/*")
            .unwrap()
            .globs(Path::new("/"));
        let m = globs[0].compile_matcher();
        assert!(m.is_match("/nonexistent-tw/a"));
        assert!(!m.is_match("/nonexistent-tw/a/b"));
        let globs = PathPattern::parse("/nonexistent-tw/**")
            .unwrap()
            .globs(Path::new("/"));
        let set: Vec<_> = globs.iter().map(Glob::compile_matcher).collect();
        let any = |p: &str| set.iter().any(|m| m.is_match(p));
        assert!(any("/nonexistent-tw/a/b"));
        assert!(any("/nonexistent-tw"));
        assert!(!any("/nonexistent-twx"));
    }

    #[test]
    fn env_names() {
        assert!(EnvName::parse("EDITOR").is_ok());
        for bad in ["", "A=B", "A\0", "A\n"] {
            assert!(EnvName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn browser_targets() {
        assert_eq!(
            BrowserTarget::parse("MailTo:").unwrap(),
            BrowserTarget::Scheme("mailto".into())
        );
        assert_eq!(
            BrowserTarget::parse("https://GitHub.com:443/").unwrap(),
            BrowserTarget::Origin("https://github.com".into())
        );
        assert_eq!(
            BrowserTarget::parse("http://localhost:3000")
                .unwrap()
                .as_str(),
            "http://localhost:3000"
        );
        for bad in [
            "",
            "1abc",
            "https://github.com/x",
            "https://u@github.com",
            "ftp://x.example",
            "https://github.com/?q",
            "java script",
        ] {
            assert!(BrowserTarget::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
