//! Local per-user mode: serve the terminal on a Unix domain socket that only
//! its owner can reach, with no TCP port at all.
//!
//! The socket's folder is created owner-only (0700) — or, if it exists, must
//! already be owned by this user and not reachable by others — the socket
//! itself is 0600, and every connection's peer user id is checked
//! (`SO_PEERCRED`): another local user is refused even if permissions were
//! loosened. Clients connect with `terminalwire unix:/path/to/app.sock ARGS`.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// Where an app's socket goes by default: `$XDG_RUNTIME_DIR/terminalwire/APP.sock`,
/// else `/tmp/terminalwire-UID/APP.sock`.
pub fn default_socket_path(app: &str) -> PathBuf {
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("terminalwire"),
        _ => std::env::temp_dir().join(format!("terminalwire-{}", current_uid())),
    };
    base.join(format!("{app}.sock"))
}

fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A Unix socket listener that accepts only its owner's connections; use it
/// with `axum::serve` like a `TcpListener`.
#[derive(Debug)]
pub struct LocalListener {
    listener: UnixListener,
    path: PathBuf,
    uid: u32,
    /// The socket file's device and inode: only that file is removed on
    /// drop, never one another server put at the path since.
    file_id: (u64, u64),
}

impl LocalListener {
    /// Binds `path`: makes the folder owner-only, replaces a stale socket,
    /// and makes the socket 0600.
    pub fn bind(path: &Path) -> io::Result<LocalListener> {
        let uid = current_uid();
        let dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "the socket path has no folder")
            })?;
        // Made if missing (the last folder on its own, owner-only), then
        // checked whoever made it: a folder another user put there between
        // a check and the making was taken as it was.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => return Err(error),
            _ => {}
        }
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} must be a folder owned by you and not writable by others",
                    dir.display()
                ),
            ));
        }
        // Two servers starting at once on a stale socket must not both
        // replace it: the look, the removal and the bind are made under a
        // lock beside the socket (released when the file closes).
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_path(path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
        // A socket left by a previous run: replace it (never anything else,
        // nor a socket a running server still answers on).
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() && meta.uid() == uid {
                if answers(path)? {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("a server is already listening on {}", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket of yours", path.display()),
                ));
            }
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::symlink_metadata(path)?;
        drop(lock);
        Ok(LocalListener {
            listener,
            path: path.to_path_buf(),
            uid,
            file_id: (meta.dev(), meta.ino()),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.file_id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The lock file of the socket at `path`.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Whether a server answers on the socket at `path`. The connection is
/// made without waiting: a live server whose queue of connections is full
/// makes it fail with `EAGAIN`, which still means "in use", not a hang.
/// Only a refusal means nobody listens.
fn answers(path: &Path) -> io::Result<bool> {
    use rustix::io::Errno;
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let address = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&socket, &address) {
        Ok(()) | Err(Errno::AGAIN | Errno::INPROGRESS) => Ok(true),
        Err(Errno::CONNREFUSED) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

impl axum::serve::Listener for LocalListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == self.uid => return (stream, addr),
                    Ok(cred) => {
                        tracing::warn!(
                            peer_uid = cred.uid(),
                            "refused a local connection from another user"
                        );
                    }
                    Err(error) => tracing::warn!(%error, "cannot check a local peer; refused"),
                },
                Err(error) => {
                    tracing::warn!(%error, "accept failed on the local socket");
                    // Out of descriptors and the like: don't spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder others may write that appears while the server makes its
    /// own (a local user racing it in `/tmp`) is refused like one that was
    /// there before: it was taken as made. Each round races a rename of a
    /// 0777 folder into place (it succeeds only if the folder is not there
    /// yet) against the bind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_folder_others_may_write_is_refused_even_when_it_appears_in_a_race() {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let root = tempfile::tempdir().unwrap();
        for round in 0..1000u32 {
            let dir = root.path().join(format!("run{round}"));
            let staging = root.path().join(format!("staging{round}"));
            std::fs::create_dir(&staging).unwrap();
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o777)).unwrap();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let racer = {
                let (dir, staging, barrier) = (dir.clone(), staging.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..(round % 200) * 20 {
                        std::hint::spin_loop();
                    }
                    let _ = renameat_with(CWD, &staging, CWD, &dir, RenameFlags::NOREPLACE);
                })
            };
            barrier.wait();
            let bound = LocalListener::bind(&dir.join("app.sock"));
            racer.join().unwrap();
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            if let Ok(listener) = bound {
                assert_eq!(
                    mode & 0o022,
                    0,
                    "round {round}: bound in a folder of mode {mode:o}"
                );
                drop(listener);
            }
        }
    }

    #[tokio::test]
    async fn the_socket_is_private_and_its_folder_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/app.sock");
        let listener = LocalListener::bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        drop(listener);
        assert!(!path.exists(), "the socket is removed on drop");

        // A socket a server still listens on is kept, and keeps working.
        let live = LocalListener::bind(&path).unwrap();
        let refused = LocalListener::bind(&path).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse, "{refused}");
        assert!(
            refused.to_string().contains("already listening"),
            "{refused}"
        );
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(live);
        // A stale socket (its server gone, the file left) is replaced; a
        // regular file is not.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let first = LocalListener::bind(&path).unwrap();
        // Its socket removed by hand and another server at the path: the
        // first one, dropped, leaves the other's socket alone.
        std::fs::remove_file(&path).unwrap();
        let second = LocalListener::bind(&path).unwrap();
        drop(first);
        assert!(path.exists(), "the second server's socket is kept");
        drop(second);
        assert!(!path.exists());
        let file = dir.path().join("run/not-a-socket");
        std::fs::write(&file, "x").unwrap();
        assert!(LocalListener::bind(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

        // A folder others can write to is refused.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(LocalListener::bind(&open.join("app.sock")).is_err());
    }
}
