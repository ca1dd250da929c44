//! The server's long-term identity: the static key clients pin on first
//! contact and check on every later session.

use std::io;
use std::path::Path;
use std::sync::Arc;

use terminalwire_protocol::secure::StaticKey;

/// A server deployment's identity key. Keep it stable across restarts
/// ([`ServerIdentity::load_or_create`]): clients refuse a server whose key
/// changed.
#[derive(Clone)]
pub struct ServerIdentity(pub(crate) Arc<StaticKey>);

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ServerIdentity")
            .field(&self.fingerprint())
            .finish()
    }
}

impl ServerIdentity {
    /// A new random identity (tests, or a deliberately ephemeral server).
    pub fn generate() -> io::Result<ServerIdentity> {
        StaticKey::generate()
            .map(|key| ServerIdentity(Arc::new(key)))
            .map_err(io::Error::other)
    }

    /// Loads the key file at `path`, or creates it (mode 0600, atomically)
    /// when missing. A file that is not a key is an error, never replaced.
    pub fn load_or_create(path: &Path) -> io::Result<ServerIdentity> {
        match std::fs::read_to_string(path) {
            Ok(text) => StaticKey::from_file_text(&text)
                .map(|key| ServerIdentity(Arc::new(key)))
                .map_err(|error| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {error}", path.display()),
                    )
                }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let identity = ServerIdentity::generate()?;
                if crate::files::write_new(path, identity.0.to_file_text().as_bytes(), 0o600)? {
                    Ok(identity)
                } else {
                    // Another worker starting at the same moment made it:
                    // its key is the server's.
                    ServerIdentity::load_or_create(path)
                }
            }
            Err(error) => Err(error),
        }
    }

    /// `SHA256:...` of the public key: what clients pin and show.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers starting at once on a fresh deployment all get the one key
    /// (they failed: a shared temporary name, a link that lost the race).
    #[test]
    fn workers_starting_at_once_all_load_the_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let barrier = std::sync::Barrier::new(8);
        let fingerprints: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        ServerIdentity::load_or_create(&path).map(|id| id.fingerprint())
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap().unwrap())
                .collect()
        });
        let on_disk = ServerIdentity::load_or_create(&path).unwrap().fingerprint();
        assert!(
            fingerprints.iter().all(|f| *f == on_disk),
            "{fingerprints:?}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    }

    #[test]
    fn a_key_file_is_created_once_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/identity.key");
        let first = ServerIdentity::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = ServerIdentity::load_or_create(&path).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        std::fs::write(&path, "not a key").unwrap();
        assert!(ServerIdentity::load_or_create(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
