//! Detached sessions: what the client keeps on disk to re-attach later.
//!
//! When the user detaches (Ctrl-\), the command goes on running on the
//! server and the client saves a [`SessionRecord`] in
//! `<home>/authorities/<authority>/sessions/<id>.json` (mode 0600: it holds
//! the session's resume token, which only works with this device's key
//! anyway). `terminalwire sessions` lists the records; `terminalwire attach
//! ID` resumes one, and deletes it once the server has taken it back. Ids
//! are the servers': when two authorities have a session of the same id,
//! `terminalwire attach AUTHORITY/ID` names the one meant (an id alone is
//! then an error, never a guess).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use terminalwire_policy::{Authority, Home};

/// Largest session record accepted from disk: room for the most a client
/// keeps unacknowledged (`session::MAX_UNACKED`), in base64.
const MAX_RECORD_LEN: u64 = 96 * 1024 * 1024;

/// Bytes kept in a record as one base64 string (compact, unlike a JSON
/// array of numbers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes64(pub Vec<u8>);

impl From<Vec<u8>> for Bytes64 {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes64(bytes)
    }
}

impl Serialize for Bytes64 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes64)
            .map_err(serde::de::Error::custom)
    }
}

/// Everything needed to continue a detached session in a new process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The server's session id.
    pub session_id: String,
    /// The URL the session was opened with.
    pub url: String,
    /// The authority (for listing).
    pub authority: String,
    /// The command the user ran (program name and arguments), for listing.
    pub command: Vec<String>,
    /// The resume token the server gave with `detached`.
    pub token: Bytes64,
    /// Sequenced server frames the client processed.
    pub received: u64,
    /// Sequenced frames the client sent.
    pub sent: u64,
    /// The last of those the server has not acknowledged, oldest first.
    pub unacked: Vec<Bytes64>,
    /// The client's window for the server's streams.
    pub window: u32,
    /// Largest data chunk the client accepts.
    pub max_chunk: u32,
    /// Seconds the server keeps the session after a dropped connection.
    pub grace_secs: u32,
    /// Seconds the server keeps a detached session.
    pub detach_secs: u32,
    /// When the client detached (seconds since the Unix epoch).
    pub detached_at: u64,
}

impl SessionRecord {
    /// When the server forgets the session (seconds since the Unix epoch).
    pub fn expires_at(&self) -> u64 {
        // A damaged record must not overflow (a panic in a debug build, a
        // record taken for expired and deleted in a release one).
        self.detached_at.saturating_add(u64::from(self.detach_secs))
    }

    /// Whether the server has forgotten the session by now.
    pub fn is_expired(&self) -> bool {
        now() >= self.expires_at()
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A problem with the saved sessions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The home folder is unusable.
    #[error("{0}")]
    Home(String),
    /// No saved session has this id; the one whose id starts with it, if
    /// just one does.
    #[error(
        "no detached session `{0}`{meant}",
        meant = match .1 {
            Some(meant) => format!("; did you mean `terminalwire attach {meant}`?"),
            None => " (see `terminalwire sessions`)".to_owned(),
        }
    )]
    NotFound(String, Option<String>),
    /// The id cannot name a session file.
    #[error("`{0}` is not a session id")]
    BadId(String),
    /// Sessions of this id are saved for more than one authority (ids are
    /// chosen by servers): which one is meant must be said.
    #[error(
        "more than one app has a detached session `{id}`: {}; say which with `terminalwire attach AUTHORITY/{id}`",
        .authorities.iter().map(|a| format!("`{a}/{id}`")).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous {
        /// The id.
        id: String,
        /// The authorities that have a session of that id, sorted.
        authorities: Vec<Authority>,
    },
    /// A record file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record file is not a session record.
    #[error("{path}: not a valid session record: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The folder of an authority's detached sessions.
pub fn sessions_dir(home: &Home, authority: &Authority) -> PathBuf {
    home.authority_dir(authority).join("sessions")
}

/// Session ids are the server's; only plain names make file names.
fn check_id(id: &str) -> Result<(), RecordError> {
    if terminalwire_protocol::frame::valid_session_id(id) {
        Ok(())
    } else {
        Err(RecordError::BadId(id.to_owned()))
    }
}

/// Saves `record` atomically, readable by the user only.
pub fn save(
    home: &Home,
    authority: &Authority,
    record: &SessionRecord,
) -> Result<PathBuf, RecordError> {
    check_id(&record.session_id)?;
    let dir = sessions_dir(home, authority);
    let path = dir.join(format!("{}.json", record.session_id));
    let io = |source| RecordError::Io {
        path: path.clone(),
        source,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
    }
    let json =
        serde_json::to_vec_pretty(record).map_err(|error| io(std::io::Error::other(error)))?;
    terminalwire_policy::write_private_atomically(&path, &json).map_err(io)?;
    Ok(path)
}

/// A saved session and the file it came from.
#[derive(Debug)]
pub struct Saved {
    /// The record.
    pub record: SessionRecord,
    /// Its file.
    pub path: PathBuf,
    /// The authority whose folder holds it.
    pub authority: Authority,
}

fn load(path: &Path) -> Result<SessionRecord, RecordError> {
    let corrupt = |reason: String| RecordError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let text = match terminalwire_policy::read_own_file(path, MAX_RECORD_LEN) {
        Ok(Some(text)) => text,
        Ok(None) => {
            return Err(RecordError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "there is no such file"),
            });
        }
        // Not a file, too large, not text: what is there is not a record.
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            return Err(corrupt(error.to_string()));
        }
        Err(source) => {
            return Err(RecordError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let record: SessionRecord =
        serde_json::from_str(&text).map_err(|error| corrupt(error.to_string()))?;
    // The unacknowledged frames are the last ones sent: more of them than
    // were sent would be replayed under numbers they never had.
    if record.unacked.len() as u64 > record.sent {
        return Err(corrupt(format!(
            "it holds {} unacknowledged frames of {} sent",
            record.unacked.len(),
            record.sent
        )));
    }
    Ok(record)
}

/// Every saved session of every authority, oldest first. Unreadable
/// records are reported next to the good ones, not hidden.
pub fn list(home: &Home) -> Result<(Vec<Saved>, Vec<RecordError>), RecordError> {
    let authorities = home
        .list_authorities()
        .map_err(|error| RecordError::Home(error.to_string()))?;
    let mut saved = Vec::new();
    let mut problems = Vec::new();
    for authority in authorities {
        let dir = sessions_dir(home, &authority);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                problems.push(RecordError::Io { path: dir, source });
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match load(&path) {
                Ok(record) => saved.push(Saved {
                    record,
                    path,
                    authority: authority.clone(),
                }),
                Err(error) => problems.push(error),
            }
        }
    }
    saved.sort_by_key(|saved| (saved.record.detached_at, saved.record.session_id.clone()));
    Ok((saved, problems))
}

/// The saved session `wanted`: `ID`, or `AUTHORITY/ID` (an authority has
/// no `/`, nor has an id). An `ID` saved for more than one authority is
/// [`RecordError::Ambiguous`]: servers choose ids, so two apps' may be the
/// same, by chance or by one copying the other's.
pub fn find(home: &Home, wanted: &str) -> Result<Saved, RecordError> {
    let (authority, id) = match wanted.rsplit_once('/') {
        Some((authority, id)) => {
            // Typed as `terminalwire sessions` shows it, not as a URL.
            let authority = Some(authority)
                .filter(|typed| !typed.contains('/'))
                .and_then(|typed| Authority::parse(typed).ok())
                .ok_or_else(|| RecordError::BadId(wanted.to_owned()))?;
            (Some(authority), id)
        }
        None => (None, wanted),
    };
    check_id(id).map_err(|_| RecordError::BadId(wanted.to_owned()))?;
    let (saved, _) = list(home)?;
    let (mut found, others): (Vec<Saved>, Vec<Saved>) = saved
        .into_iter()
        .filter(|saved| authority.as_ref().is_none_or(|a| *a == saved.authority))
        .partition(|saved| saved.record.session_id == id);
    match found.len() {
        0 => {
            // The start of an id, typed short as one types a commit's.
            let mut starting = others
                .iter()
                .filter(|saved| saved.record.session_id.starts_with(id));
            let meant = match (starting.next(), starting.next()) {
                (Some(only), None) => Some(match &authority {
                    Some(authority) => format!("{authority}/{}", only.record.session_id),
                    None => only.record.session_id.clone(),
                }),
                _ => None,
            };
            Err(RecordError::NotFound(wanted.to_owned(), meant))
        }
        1 => Ok(found.remove(0)),
        _ => {
            let mut authorities: Vec<_> = found.into_iter().map(|saved| saved.authority).collect();
            authorities.sort();
            authorities.dedup();
            Err(RecordError::Ambiguous {
                id: id.to_owned(),
                authorities,
            })
        }
    }
}

/// Deletes a saved session's file.
pub fn forget(path: &Path) -> Result<(), RecordError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, detached_at: u64) -> SessionRecord {
        SessionRecord {
            session_id: id.into(),
            url: "ws://127.0.0.1:9/terminal".into(),
            authority: "127.0.0.1:9".into(),
            command: vec!["app".into(), "build".into()],
            token: Bytes64(vec![1; 32]),
            received: 7,
            sent: 3,
            unacked: vec![Bytes64(vec![0x81, 0xa1, b't'])],
            window: 1 << 20,
            max_chunk: 1 << 16,
            grace_secs: 120,
            detach_secs: 3600,
            detached_at,
        }
    }

    #[test]
    fn the_start_of_an_id_is_told_the_whole_one_when_just_one_starts_so() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority = Authority::parse("127.0.0.1:9").unwrap();
        save(&home, &authority, &record("f97821ce-62", now())).unwrap();
        let error = find(&home, "f97821ce").unwrap_err().to_string();
        assert!(
            error.contains("did you mean `terminalwire attach f97821ce-62`?"),
            "{error}"
        );
        let error = find(&home, "127.0.0.1:9/f97821ce").unwrap_err().to_string();
        assert!(
            error.contains("`terminalwire attach 127.0.0.1:9/f97821ce-62`"),
            "{error}"
        );
        // Two ids start so: which one is not guessed.
        save(&home, &authority, &record("f97821ce-63", now())).unwrap();
        let error = find(&home, "f97821ce").unwrap_err().to_string();
        assert!(error.contains("see `terminalwire sessions`"), "{error}");
    }

    #[test]
    fn a_record_with_more_unacknowledged_frames_than_sent_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority = Authority::parse("127.0.0.1:9").unwrap();
        let mut damaged = record("d-1", now());
        damaged.sent = 1;
        damaged.unacked = vec![Bytes64(vec![1]), Bytes64(vec![2])];
        let path = save(&home, &authority, &damaged).unwrap();
        match load(&path) {
            Err(RecordError::Corrupt { reason, .. }) => {
                assert!(
                    reason.contains("2 unacknowledged frames of 1 sent"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_round_trip_and_list_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority =
            Authority::from_url(&url::Url::parse("ws://127.0.0.1:9/").unwrap()).unwrap();
        std::fs::create_dir_all(home.authority_dir(&authority)).unwrap();
        let newer = record("a-2", 200);
        let older = record("a-1", 100);
        let path = save(&home, &authority, &newer).unwrap();
        save(&home, &authority, &older).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (saved, problems) = list(&home).unwrap();
        assert!(problems.is_empty());
        let ids: Vec<_> = saved.iter().map(|s| s.record.session_id.as_str()).collect();
        assert_eq!(ids, ["a-1", "a-2"]);
        assert_eq!(find(&home, "a-2").unwrap().record, newer);
        forget(&path).unwrap();
        assert!(matches!(find(&home, "a-2"), Err(RecordError::NotFound(..))));
    }

    #[test]
    fn one_session_id_at_two_authorities_is_not_resolved_silently() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let a = Authority::parse("a.example").unwrap();
        let b = Authority::parse("b.example").unwrap();
        let mut older = record("0000abcd-1", now() - 60);
        older.url = "ws://a.example/terminal".into();
        save(&home, &a, &older).unwrap();
        let mut newer = record("0000abcd-1", now());
        newer.url = "ws://b.example/terminal".into();
        save(&home, &b, &newer).unwrap();
        // The id alone: an error naming both, not the oldest.
        let error = find(&home, "0000abcd-1").unwrap_err();
        let RecordError::Ambiguous { id, authorities } = &error else {
            panic!("not ambiguous: {error:?}")
        };
        assert_eq!(id, "0000abcd-1");
        assert_eq!(authorities, &[a.clone(), b.clone()]);
        let text = error.to_string();
        for named in ["`a.example/0000abcd-1`", "`b.example/0000abcd-1`"] {
            assert!(text.contains(named), "{text}");
        }
        // AUTHORITY/ID finds each (an authority as typed is normalised).
        let found = find(&home, "a.example/0000abcd-1").unwrap();
        assert_eq!((found.record, found.authority), (older, a));
        let found = find(&home, "B.Example/0000abcd-1").unwrap();
        assert_eq!((found.record, found.authority), (newer, b.clone()));
        assert!(matches!(
            find(&home, "c.example/0000abcd-1"),
            Err(RecordError::NotFound(..))
        ));
        // Once one is gone, the id alone is enough again.
        forget(&find(&home, "a.example/0000abcd-1").unwrap().path).unwrap();
        assert_eq!(find(&home, "0000abcd-1").unwrap().authority, b);
    }

    #[test]
    fn authorities_with_ports_and_bad_qualified_ids() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        for typed in ["127.0.0.1:9", "[::1]:9"] {
            let authority = Authority::parse(typed).unwrap();
            save(&home, &authority, &record("s-1", now())).unwrap();
            let found = find(&home, &format!("{typed}/s-1")).unwrap();
            assert_eq!(found.authority, authority);
        }
        assert!(matches!(
            find(&home, "s-1"),
            Err(RecordError::Ambiguous { .. })
        ));
        for bad in [
            "/s-1",
            "127.0.0.1:9/",
            "a/b/s-1",
            "ws://127.0.0.1:9/s-1",
            "127.0.0.1:9/../s-1",
            "..//s-1",
        ] {
            assert!(
                matches!(find(&home, bad), Err(RecordError::BadId(_))),
                "{bad}: {:?}",
                find(&home, bad)
            );
        }
    }

    #[test]
    fn large_records_stay_compact_and_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority =
            Authority::from_url(&url::Url::parse("ws://127.0.0.1:9/").unwrap()).unwrap();
        let mut big = record("big-1", 1);
        // 64 answers of 1 MiB, the most a client keeps unacknowledged.
        big.unacked = vec![Bytes64(vec![0xab; 1 << 20]); 64];
        big.sent = 64;
        let path = save(&home, &authority, &big).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < MAX_RECORD_LEN, "{len} bytes");
        assert_eq!(find(&home, "big-1").unwrap().record, big);
    }

    #[test]
    fn bad_ids_and_corrupt_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let authority =
            Authority::from_url(&url::Url::parse("ws://127.0.0.1:9/").unwrap()).unwrap();
        assert!(matches!(find(&home, "../x"), Err(RecordError::BadId(_))));
        let mut bad = record("../../evil", 1);
        assert!(matches!(
            save(&home, &authority, &bad),
            Err(RecordError::BadId(_))
        ));
        bad.session_id = "ok".into();
        save(&home, &authority, &bad).unwrap();
        std::fs::write(sessions_dir(&home, &authority).join("broken.json"), b"{").unwrap();
        let (saved, problems) = list(&home).unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("broken.json"),
            "{}",
            problems[0]
        );
    }
}
