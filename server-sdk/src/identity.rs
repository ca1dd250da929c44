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
                write_new_private(path, identity.0.to_file_text().as_bytes())?;
                Ok(identity)
            }
            Err(error) => Err(error),
        }
    }

    /// `SHA256:...` of the public key: what clients pin and show.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
}

fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // Never overwrite a key another process created meanwhile.
        std::fs::hard_link(&temp, path)?;
        std::fs::remove_file(&temp)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
