//! The terminalwire home folder and its layout.
//!
//! ```text
//! <root>/                          $TERMINALWIRE_HOME, else ~/.terminalwire
//!   bin/                           launchers of installed apps
//!   authorities/<authority>/
//!     policy.toml                  the grants of that authority
//!     policy.toml.lock             locked while a client changes them
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
    /// The user's home directory is missing or not a folder, so
    /// `~/.terminalwire` is not made in it (making it would make the home).
    #[error(
        "your home folder {path} {problem}, so terminalwire has nowhere to keep its files; \
         set TERMINALWIRE_HOME to a folder of your own"
    )]
    NoHomeFolder {
        /// The user's home directory (`$HOME`).
        path: PathBuf,
        /// "does not exist", "is not a folder".
        problem: &'static str,
    },
    /// `TERMINALWIRE_HOME` is set to a relative path.
    #[error("TERMINALWIRE_HOME must be an absolute path, not {path:?}")]
    NotAbsolute {
        /// The value of the variable.
        path: PathBuf,
    },
    /// The home is something other than a folder.
    #[error(
        "the terminalwire home {path} is not a folder; move it out of the way, or set TERMINALWIRE_HOME to a folder"
    )]
    NotAFolder {
        /// The home's path.
        path: PathBuf,
    },
    /// A folder or file of the home could not be made, changed or looked
    /// at (a file where a folder belongs, no room left, no permission).
    #[error("cannot {action} {path}: {source}")]
    Unusable {
        /// What could not be done: "create", "write", "remove", "look at".
        action: &'static str,
        /// The folder or file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another user could change one of the client's own files (or read
    /// its device key), so it is not used.
    #[error(
        "{path} {problem}, so terminalwire will not use it; if that is not on purpose, run: {fix}"
    )]
    NotPrivate {
        /// The file or the folder above it.
        path: PathBuf,
        /// What is wrong ("can be changed by other users").
        problem: String,
        /// The command that makes it private again.
        fix: String,
    },
    /// The home, or a folder or file of it, belongs to another user and
    /// this one may not use it (a command run with `sudo` made it, say).
    #[error(
        "{path} belongs to another user ({owner}), so terminalwire cannot use it as uid {user}; \
         if it should be yours, run: {fix}; or set TERMINALWIRE_HOME to a folder of your own"
    )]
    NotYours {
        /// The home, or the folder or file of it that is another user's.
        path: PathBuf,
        /// Whose it is: "root", or "uid 1001".
        owner: String,
        /// This user's id.
        user: u32,
        /// The command that gives it to this user.
        fix: String,
    },
    /// The home, or a folder or file of it, is this user's, but its mode
    /// does not let its owner use it (a `chmod 000`, say).
    #[error(
        "{path} is yours, but its mode ({mode:04o}) does not let you use it, so terminalwire \
         cannot; run: {fix}"
    )]
    ShutOut {
        /// The home, or the folder or file of it.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The command that gives its owner back what the client needs.
        fix: String,
    },
    /// One of the client's own files is something else (a folder, a FIFO,
    /// a device), so it is not used.
    #[error(
        "{path} is {kind}, not a file, so terminalwire will not use it; move it out of the way"
    )]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead ("a folder").
        kind: &'static str,
    },
}

/// How private a file of the home must be ([`Home::check_private`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privacy {
    /// Only its owner (or root) may change it or a folder above it: a
    /// policy file, a pinned server identity.
    OwnerWrites,
    /// Nobody else may read it either: a device key.
    Secret,
}

impl Home {
    /// `$TERMINALWIRE_HOME` when set and not empty, else `~/.terminalwire`.
    pub fn from_env() -> Result<Home, HomeError> {
        match std::env::var_os(HOME_ENV) {
            Some(value) if !value.is_empty() => {
                let path = PathBuf::from(value);
                if path.is_absolute() {
                    Home::located(path)
                } else {
                    Err(HomeError::NotAbsolute { path })
                }
            }
            _ => Home::in_user_home(&user_home()?),
        }
    }

    /// `~/.terminalwire` in the user's home `user_home`, which must be a
    /// folder: the home is made when first needed, but not the user's home
    /// above it (`HOME=/nonexistent`, the home of system users such as
    /// `nobody`, made the client create `/nonexistent`).
    fn in_user_home(user_home: &Path) -> Result<Home, HomeError> {
        let problem = match std::fs::metadata(user_home) {
            Ok(metadata) if metadata.is_dir() => None,
            Ok(_) => Some("is not a folder"),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Some("does not exist"),
            // Not ours to judge (no permission to look, say): met, and
            // named, when the home is used.
            Err(_) => None,
        };
        match problem {
            Some(problem) => Err(HomeError::NoHomeFolder {
                path: user_home.to_path_buf(),
                problem,
            }),
            None => Home::located(user_home.join(".terminalwire")),
        }
    }

    /// The home at `root`, which is a folder or not there yet (it is made
    /// when first needed): a file there made every command fail with a
    /// bare "Not a directory".
    /// A home of another user's that this one may not read and change
    /// stops here, named, rather than at a bare "Permission denied" from
    /// whatever command meets it first.
    fn located(root: PathBuf) -> Result<Home, HomeError> {
        match std::fs::metadata(&root) {
            Ok(metadata) if !metadata.is_dir() => Err(HomeError::NotAFolder { path: root }),
            Ok(_) => {
                let home = Home::at(root);
                let usable = rustix::fs::access(
                    &home.root,
                    rustix::fs::Access::READ_OK
                        | rustix::fs::Access::WRITE_OK
                        | rustix::fs::Access::EXEC_OK,
                );
                // A home of the user's own that they made read-only still
                // serves what only reads; a write names the `chmod` when it
                // fails.
                let refused = usable
                    .err()
                    .and_then(|_| home.why_denied(&home.root))
                    .filter(|why| {
                        !matches!(why, HomeError::ShutOut { mode, .. } if mode & 0o500 == 0o500)
                    });
                match refused {
                    Some(error) => Err(error),
                    None => Ok(home),
                }
            }
            Err(_) => Ok(Home::at(root)),
        }
    }

    /// For an access to `path` (in this home) that was denied: the home's
    /// root or the folder or file on the way to `path` that belongs to
    /// another user, or that is this user's but whose mode shuts its owner
    /// out (a `chmod 000`), the first met from the root, if there is one.
    pub fn why_denied(&self, path: &Path) -> Option<HomeError> {
        use std::os::unix::fs::MetadataExt;
        let user = rustix::process::geteuid().as_raw();
        let mut chain: Vec<&Path> = path
            .ancestors()
            .take_while(|dir| dir.starts_with(&self.root))
            .collect();
        chain.reverse();
        for there in chain {
            // What cannot be seen is behind one already looked at.
            let meta = std::fs::symlink_metadata(there).ok()?;
            let quoted = || crate::decide::shell_word(&there.to_string_lossy());
            if meta.uid() != user {
                let owner = match meta.uid() {
                    0 => "root".to_owned(),
                    uid => format!("uid {uid}"),
                };
                let quoted = quoted();
                return Some(HomeError::NotYours {
                    path: there.to_path_buf(),
                    owner,
                    user,
                    fix: format!("sudo chown -R {user} {quoted}"),
                });
            }
            // What the client needs of its own: to go through, list and
            // change a folder; to read and replace a file.
            let (needed, symbolic) = match meta.is_dir() {
                true => (0o700, "u+rwx"),
                false => (0o600, "u+rw"),
            };
            let mode = meta.mode() & 0o7777;
            if mode & needed != needed {
                return Some(HomeError::ShutOut {
                    path: there.to_path_buf(),
                    mode,
                    fix: format!("chmod {symbolic} {}", quoted()),
                });
            }
        }
        None
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

    /// Refuses a file of this home that someone other than the user (or
    /// root) could have written, as `ssh` refuses a loose `authorized_keys`
    /// or private key: a group- or world-writable file or folder on the way
    /// from the home root, one owned by another user, or, for a
    /// [`Privacy::Secret`], a file others may read. Another local user could
    /// otherwise grant an app the user's files in `policy.toml`, pin a server
    /// identity of their choice, or copy the device key.
    ///
    /// Symlinks are followed (a home root may be one): what is checked is
    /// what the client would read. A missing file or folder passes (the
    /// client creates it, private); `file` outside the home root is checked
    /// on its own.
    pub fn check_private(&self, file: &Path, privacy: Privacy) -> Result<(), HomeError> {
        use std::os::unix::fs::MetadataExt;
        let user = rustix::process::geteuid().as_raw();
        let mut chain: Vec<&Path> = file
            .ancestors()
            .skip(1)
            .take_while(|dir| dir.starts_with(&self.root))
            .collect();
        chain.reverse();
        chain.push(file);
        for path in chain {
            let meta = match std::fs::metadata(path) {
                Ok(meta) => meta,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(self.why_denied(path).unwrap_or(HomeError::Io {
                        path: path.to_path_buf(),
                        source: error,
                    }));
                }
                Err(source) => {
                    return Err(HomeError::Io {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            };
            let not_private = |problem: String, fix: String| HomeError::NotPrivate {
                path: path.to_path_buf(),
                problem,
                fix,
            };
            if path == file && !meta.is_file() {
                let kind = if meta.is_dir() {
                    "a folder"
                } else {
                    "a FIFO, socket or device"
                };
                return Err(HomeError::NotAFile {
                    path: path.to_path_buf(),
                    kind,
                });
            }
            let quoted = crate::decide::shell_word(&path.to_string_lossy());
            if meta.uid() != user && meta.uid() != 0 {
                return Err(not_private(
                    format!("belongs to another user (uid {})", meta.uid()),
                    // Only root may give a file away.
                    format!("sudo chown {user} {quoted}"),
                ));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(not_private(
                    "can be changed by other users".into(),
                    format!("chmod go-w {quoted}"),
                ));
            }
            if privacy == Privacy::Secret && path == file && meta.mode() & 0o077 != 0 {
                return Err(not_private(
                    "can be read by other users".into(),
                    format!("chmod 600 {quoted}"),
                ));
            }
        }
        Ok(())
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
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(self.why_denied(&dir).unwrap_or_else(|| io_err(e)));
            }
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
    fn a_missing_user_home_is_named_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nonexistent");
        let error = Home::in_user_home(&missing).unwrap_err();
        assert!(
            matches!(&error, HomeError::NoHomeFolder { path, problem: "does not exist" } if *path == missing),
            "{error}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let error = Home::in_user_home(&file).unwrap_err();
        assert!(error.to_string().contains("is not a folder"), "{error}");
        assert_eq!(
            Home::in_user_home(dir.path()).unwrap().root(),
            dir.path().join(".terminalwire")
        );
    }

    #[test]
    fn a_home_that_is_a_file_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("home");
        std::fs::write(&file, "").unwrap();
        let error = Home::located(file.clone()).unwrap_err();
        assert!(
            matches!(&error, HomeError::NotAFolder { path } if *path == file),
            "{error}"
        );
        assert!(error.to_string().contains("is not a folder"), "{error}");
        // A folder, or nothing yet: the home.
        assert!(Home::located(dir.path().to_path_buf()).is_ok());
        assert!(Home::located(dir.path().join("later")).is_ok());
    }

    /// The first folder or file from the root that is another user's is
    /// named, with the command that gives it to this user. (Only root can
    /// give a file away: skipped otherwise.)
    #[test]
    fn the_folder_of_another_user_on_the_way_is_named() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: giving a folder to another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("tw"));
        let theirs = home.root().join("authorities/example.com");
        std::fs::create_dir_all(theirs.join("storage")).unwrap();
        assert!(home.why_denied(&theirs.join("storage/file")).is_none());
        std::os::unix::fs::chown(&theirs, Some(1001), None).unwrap();
        std::os::unix::fs::chown(theirs.join("storage"), Some(1002), None).unwrap();
        let error = home.why_denied(&theirs.join("storage/file")).unwrap();
        assert!(
            matches!(&error, HomeError::NotYours { path, owner, user: 0, .. }
                if *path == theirs && owner == "uid 1001"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("run: sudo chown -R 0 {}", theirs.display())),
            "{message}"
        );
        // Nothing is looked at outside the home.
        let own = Home::at(dir.path().join("own"));
        std::fs::create_dir(own.root()).unwrap();
        assert!(own.why_denied(&theirs).is_none());
    }

    /// A folder or file of the user's own whose mode shuts its owner out
    /// is named with the `chmod` that lets them back in, the first met from
    /// the root; modes that let the owner in are no reason.
    #[test]
    fn an_own_folder_or_file_the_owner_is_shut_out_of_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("tw"));
        let folder = home.root().join("authorities/example.com");
        std::fs::create_dir_all(&folder).unwrap();
        let policy = folder.join("policy.toml");
        std::fs::write(&policy, "").unwrap();
        mode(&policy, 0o600);
        mode(&folder, 0o700);
        assert!(home.why_denied(&policy).is_none());
        mode(&policy, 0o444);
        let error = home.why_denied(&policy).unwrap();
        assert!(
            matches!(&error, HomeError::ShutOut { path, mode: 0o444, fix }
                if *path == policy && *fix == format!("chmod u+rw {}", policy.display())),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("is yours, but its mode (0444)"),
            "{error}"
        );
        mode(&folder, 0o500);
        let error = home.why_denied(&policy).unwrap();
        assert!(
            matches!(&error, HomeError::ShutOut { path, fix, .. }
                if *path == folder && *fix == format!("chmod u+rwx {}", folder.display())),
            "{error:?}"
        );
        mode(&folder, 0o700);
    }

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
    fn files_another_user_could_change_or_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let set_mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("tw"));
        let a = Authority::parse("example.com").unwrap();
        let policy = home.policy_file(&a);
        let key = home.device_key_file(&a);
        // Nothing there yet: the client will create it, private.
        home.check_private(&policy, Privacy::OwnerWrites).unwrap();
        std::fs::create_dir_all(home.authority_dir(&a)).unwrap();
        for dir in [
            home.root().to_path_buf(),
            home.authorities_dir(),
            home.authority_dir(&a),
        ] {
            set_mode(&dir, 0o755);
        }
        std::fs::write(&policy, "").unwrap();
        std::fs::write(&key, "").unwrap();
        set_mode(&policy, 0o644);
        set_mode(&key, 0o600);
        home.check_private(&policy, Privacy::OwnerWrites).unwrap();
        home.check_private(&key, Privacy::Secret).unwrap();

        let refused = |file: &Path, privacy| match home.check_private(file, privacy) {
            Err(HomeError::NotPrivate { path, fix, .. }) => (path, fix),
            other => panic!("{} passed as {privacy:?}: {other:?}", file.display()),
        };
        // A key others may read; a policy others may write.
        set_mode(&key, 0o640);
        assert_eq!(
            refused(&key, Privacy::Secret),
            (key.clone(), format!("chmod 600 {}", key.display()))
        );
        home.check_private(&key, Privacy::OwnerWrites).unwrap();
        set_mode(&key, 0o600);
        set_mode(&policy, 0o664);
        assert_eq!(
            refused(&policy, Privacy::OwnerWrites).1,
            format!("chmod go-w {}", policy.display())
        );
        set_mode(&policy, 0o644);
        // A folder on the way that others may write: they could swap the file.
        for dir in [home.root().to_path_buf(), home.authority_dir(&a)] {
            set_mode(&dir, 0o777);
            assert_eq!(refused(&key, Privacy::Secret).0, dir);
            assert_eq!(refused(&policy, Privacy::OwnerWrites).0, dir);
            set_mode(&dir, 0o755);
        }
        // Above the home root is not the client's business.
        set_mode(tmp.path(), 0o777);
        home.check_private(&policy, Privacy::OwnerWrites).unwrap();
        set_mode(tmp.path(), 0o700);
        // A file of another user (only root can make one here).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&policy, Some(65534), None).unwrap();
            let error = home
                .check_private(&policy, Privacy::OwnerWrites)
                .unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("belongs to another user (uid 65534)"),
                "{error}"
            );
        }
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
