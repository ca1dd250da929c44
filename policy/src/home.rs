//! The terminalwire home folder and its layout.
//!
//! ```text
//! <root>/                          $TERMINALWIRE_HOME, else ~/.terminalwire
//!   bin/                           launchers of installed apps
//!   authorities/<authority>/
//!     policy.toml                  the grants of that authority
//!     storage/                     the authority's own files (always granted)
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::authority::Authority;

/// The environment variable that overrides the home root.
pub const HOME_ENV: &str = "TERMINALWIRE_HOME";

/// The name of each authority's policy file.
pub const POLICY_FILE_NAME: &str = "policy.toml";

/// Where the terminalwire client keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

/// Why the home folder cannot be located or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// No user home directory could be found (and `TERMINALWIRE_HOME` is unset).
    #[error("cannot find the user's home directory")]
    NoUserHome,
    /// `TERMINALWIRE_HOME` is set to a relative path.
    #[error("TERMINALWIRE_HOME must be an absolute path, not {path:?}")]
    NotAbsolute {
        /// The value of the variable.
        path: PathBuf,
    },
    /// A directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl Home {
    /// `$TERMINALWIRE_HOME` when set and not empty, else `~/.terminalwire`.
    pub fn from_env() -> Result<Home, HomeError> {
        match std::env::var_os(HOME_ENV) {
            Some(value) if !value.is_empty() => {
                let path = PathBuf::from(value);
                if path.is_absolute() {
                    Ok(Home::at(path))
                } else {
                    Err(HomeError::NotAbsolute { path })
                }
            }
            _ => Ok(Home::at(user_home()?.join(".terminalwire"))),
        }
    }

    /// A home rooted at `root` (tests, or an explicit `--home`).
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/authorities`.
    pub fn authorities_dir(&self) -> PathBuf {
        self.root.join("authorities")
    }

    /// `<root>/authorities/<authority>`.
    pub fn authority_dir(&self, authority: &Authority) -> PathBuf {
        self.authorities_dir().join(authority.as_str())
    }

    /// `<root>/authorities/<authority>/storage`, always granted to that authority.
    pub fn storage_dir(&self, authority: &Authority) -> PathBuf {
        self.authority_dir(authority).join("storage")
    }

    /// `<root>/authorities/<authority>/policy.toml`.
    pub fn policy_file(&self, authority: &Authority) -> PathBuf {
        self.authority_dir(authority).join(POLICY_FILE_NAME)
    }

    /// `<root>/authorities/<authority>/device.key`: this client's device key
    /// for that authority (0600).
    pub fn device_key_file(&self, authority: &Authority) -> PathBuf {
        self.authority_dir(authority).join("device.key")
    }

    /// `<root>/authorities/<authority>/server.pin`: the server identity
    /// pinned on first contact.
    pub fn server_pin_file(&self, authority: &Authority) -> PathBuf {
        self.authority_dir(authority).join("server.pin")
    }

    /// `<root>/bin`, where app launchers are installed.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The authorities that have a folder, sorted. Entries whose names are
    /// not valid authorities, or that are not directories, are ignored; a
    /// missing `authorities` folder means none.
    pub fn list_authorities(&self) -> Result<Vec<Authority>, HomeError> {
        let dir = self.authorities_dir();
        let io_err = |source| HomeError::Io {
            path: dir.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err)?;
            if !entry.file_type().map_err(io_err)?.is_dir() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Only canonical names: a folder `Example.com` is not `example.com`.
            if let Ok(authority) = Authority::parse(&name)
                && authority.as_str() == name
            {
                found.push(authority);
            }
        }
        found.sort();
        Ok(found)
    }
}

/// The user's home directory, which `~` expands to.
pub fn user_home() -> Result<PathBuf, HomeError> {
    directories::BaseDirs::new()
        .map(|dirs| dirs.home_dir().to_path_buf())
        .ok_or(HomeError::NoUserHome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let home = Home::at("/h/.terminalwire");
        let a = Authority::parse("example.com:3000").unwrap();
        assert_eq!(home.root(), Path::new("/h/.terminalwire"));
        assert_eq!(home.bin_dir(), Path::new("/h/.terminalwire/bin"));
        assert_eq!(
            home.storage_dir(&a),
            Path::new("/h/.terminalwire/authorities/example.com:3000/storage")
        );
        assert_eq!(
            home.policy_file(&a),
            Path::new("/h/.terminalwire/authorities/example.com:3000/policy.toml")
        );
    }

    #[test]
    fn list_authorities_ignores_junk() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        assert!(home.list_authorities().unwrap().is_empty());
        let dir = home.authorities_dir();
        for name in [
            "b.example",
            "a.example:3000",
            ".hidden",
            "Upper.example",
            "x y",
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        std::fs::write(dir.join("c.example"), "a file").unwrap();
        let names: Vec<String> = home
            .list_authorities()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["a.example:3000", "b.example"]);
    }
}
