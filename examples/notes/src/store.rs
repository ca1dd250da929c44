//! The app's data: notes and account passphrases in one SQLite file.
//!
//! [`Store`] is synchronous (rusqlite); the app calls it from
//! `tokio::task::spawn_blocking` ([`crate::App::db`]), one short
//! transaction at a time behind a mutex (a `Connection` is `Send`, not
//! `Sync`).
//!
//! When a passphrase is set, changed or removed, the sessions its owner
//! logged in to before are over: [`Store::passphrase_changed`] says when
//! that last happened, from memory (the session check is synchronous).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// One note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Its number (unique in the app).
    pub id: i64,
    /// The title: one line.
    pub title: String,
    /// The text, possibly empty.
    #[serde(default)]
    pub body: String,
    /// When it was made, `YYYY-MM-DD HH:MM:SS` UTC.
    pub created: String,
}

/// A note to add (what an import reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NewNote {
    /// The title.
    pub title: String,
    /// The text.
    #[serde(default)]
    pub body: String,
}

/// The SQLite database.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    /// Owner → when their passphrase last changed (the `updated` column),
    /// seconds since the Unix epoch.
    changed: Mutex<HashMap<String, u64>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notes (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    owner   TEXT NOT NULL,
    title   TEXT NOT NULL,
    body    TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE INDEX IF NOT EXISTS notes_owner ON notes (owner, id);
-- A removed passphrase keeps its row, with an empty hash: `updated` still
-- ends the sessions from before the removal after a restart.
CREATE TABLE IF NOT EXISTS passphrases (
    owner   TEXT PRIMARY KEY,
    hint    TEXT NOT NULL DEFAULT '',
    hash    TEXT NOT NULL,
    updated INTEGER NOT NULL DEFAULT (unixepoch())
);
";

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Returns once the clock's whole seconds have passed `changed`: a session
/// issued from then on (its times are whole seconds) is told apart from
/// the sessions a change at `changed` ends.
fn wait_past(changed: u64) {
    loop {
        let now = unix_now();
        if now.as_secs() > changed {
            return;
        }
        std::thread::sleep(Duration::from_nanos(u64::from(
            1_000_000_000 - now.subsec_nanos(),
        )));
    }
}

const NOTE_COLUMNS: &str = "id, title, body, datetime(created, 'unixepoch')";

fn note(row: &rusqlite::Row<'_>) -> rusqlite::Result<Note> {
    Ok(Note {
        id: row.get(0)?,
        title: row.get(1)?,
        body: row.get(2)?,
        created: row.get(3)?,
    })
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(SCHEMA)?;
        Store::with(conn)
    }

    /// A database in memory (for tests).
    pub fn in_memory() -> rusqlite::Result<Store> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Store::with(conn)
    }

    fn with(conn: Connection) -> rusqlite::Result<Store> {
        let changed = conn
            .prepare("SELECT owner, updated FROM passphrases")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Store {
            conn: Mutex::new(conn),
            changed: Mutex::new(changed),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds notes for `owner` in one transaction; returns their ids.
    pub fn add(&self, owner: &str, notes: &[NewNote]) -> rusqlite::Result<Vec<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut ids = Vec::with_capacity(notes.len());
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO notes (owner, title, body) VALUES (?1, ?2, ?3)")?;
            for note in notes {
                insert.execute(params![owner, note.title, note.body])?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// `owner`'s notes, oldest first.
    pub fn list(&self, owner: &str) -> rusqlite::Result<Vec<Note>> {
        let conn = self.conn();
        let mut query = conn.prepare_cached(&format!(
            "SELECT {NOTE_COLUMNS} FROM notes WHERE owner = ?1 ORDER BY id"
        ))?;
        query.query_map([owner], note)?.collect()
    }

    /// One of `owner`'s notes.
    pub fn get(&self, owner: &str, id: i64) -> rusqlite::Result<Option<Note>> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {NOTE_COLUMNS} FROM notes WHERE owner = ?1 AND id = ?2"),
            params![owner, id],
            note,
        )
        .optional()
    }

    /// Deletes one of `owner`'s notes; false if there is none with `id`.
    pub fn delete(&self, owner: &str, id: i64) -> rusqlite::Result<bool> {
        let conn = self.conn();
        let deleted = conn.execute(
            "DELETE FROM notes WHERE owner = ?1 AND id = ?2",
            params![owner, id],
        )?;
        Ok(deleted > 0)
    }

    /// The newest `limit` notes of everyone, with their owners, grouped by
    /// owner (for the web page).
    pub fn recent(&self, limit: u32) -> rusqlite::Result<Vec<(String, Note)>> {
        let conn = self.conn();
        let mut query = conn.prepare_cached(&format!(
            "SELECT owner, {NOTE_COLUMNS} FROM (SELECT * FROM notes ORDER BY id DESC LIMIT ?1) \
             ORDER BY owner, id"
        ))?;
        query
            .query_map([limit], |row| {
                Ok((
                    row.get(0)?,
                    Note {
                        id: row.get(1)?,
                        title: row.get(2)?,
                        body: row.get(3)?,
                        created: row.get(4)?,
                    },
                ))
            })?
            .collect()
    }

    /// Sets `owner`'s passphrase (its hash, see [`crate::secret`]) and hint,
    /// which ends their earlier sessions ([`Store::passphrase_changed`]).
    /// Returns once a session issued now would outlive the change (up to a
    /// second later).
    pub fn set_passphrase(&self, owner: &str, hint: &str, hash: &str) -> rusqlite::Result<()> {
        let changed = {
            let conn = self.conn();
            let changed = unix_now().as_secs();
            conn.execute(
                "INSERT INTO passphrases (owner, hint, hash, updated) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (owner) DO UPDATE SET hint = ?2, hash = ?3, updated = ?4",
                params![owner, hint, hash, changed],
            )?;
            self.note_change(owner, changed);
            changed
        };
        wait_past(changed);
        Ok(())
    }

    /// Removes `owner`'s passphrase, which ends their earlier sessions as
    /// [`Store::set_passphrase`] does; false if there was none.
    pub fn remove_passphrase(&self, owner: &str) -> rusqlite::Result<bool> {
        let changed = {
            let conn = self.conn();
            let changed = unix_now().as_secs();
            let removed = conn.execute(
                "UPDATE passphrases SET hash = '', hint = '', updated = ?2 \
                 WHERE owner = ?1 AND hash != ''",
                params![owner, changed],
            )?;
            if removed == 0 {
                return Ok(false);
            }
            self.note_change(owner, changed);
            changed
        };
        wait_past(changed);
        Ok(true)
    }

    fn note_change(&self, owner: &str, changed: u64) {
        self.changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(owner.to_owned(), changed);
    }

    /// When `owner`'s passphrase was last set, changed or removed (seconds
    /// since the Unix epoch), if ever: their sessions logged in to at or
    /// before then are over. From memory: cheap enough for every session
    /// check.
    pub fn passphrase_changed(&self, owner: &str) -> Option<u64> {
        self.changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(owner)
            .copied()
    }

    /// `owner`'s passphrase hash and hint, if they set one.
    pub fn passphrase(&self, owner: &str) -> rusqlite::Result<Option<(String, String)>> {
        self.conn()
            .query_row(
                "SELECT hash, hint FROM passphrases WHERE owner = ?1 AND hash != ''",
                [owner],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(title: &str, body: &str) -> NewNote {
        NewNote {
            title: title.into(),
            body: body.into(),
        }
    }

    #[test]
    fn notes_belong_to_their_owner() -> rusqlite::Result<()> {
        let store = Store::in_memory()?;
        let ids = store.add("ada", &[new("one", "first"), new("two", "")])?;
        let [eve] = store.add("eve", &[new("secret", "")])?[..] else {
            panic!("one id expected");
        };
        let ada = store.list("ada")?;
        assert_eq!(ada.len(), 2);
        assert_eq!(ada[0].id, ids[0]);
        assert_eq!(
            (ada[0].title.as_str(), ada[0].body.as_str()),
            ("one", "first")
        );
        assert_eq!(ada[0].created.len(), "2025-01-01 00:00:00".len());
        assert_eq!(store.get("ada", eve)?, None, "eve's note is not ada's");
        assert!(!store.delete("ada", eve)?);
        assert!(store.delete("eve", eve)?);
        assert!(store.list("eve")?.is_empty());
        assert_eq!(store.recent(10)?.len(), 2);
        Ok(())
    }

    #[test]
    fn passphrases_are_set_replaced_and_removed() -> rusqlite::Result<()> {
        let store = Store::in_memory()?;
        assert_eq!(store.passphrase("ada")?, None);
        store.set_passphrase("ada", "pet", "h1")?;
        store.set_passphrase("ada", "cat", "h2")?;
        assert_eq!(store.passphrase("ada")?, Some(("h2".into(), "cat".into())));
        assert!(store.remove_passphrase("ada")?);
        assert_eq!(store.passphrase("ada")?, None);
        assert!(!store.remove_passphrase("ada")?);
        store.set_passphrase("ada", "", "h3")?;
        assert_eq!(store.passphrase("ada")?, Some(("h3".into(), "".into())));
        Ok(())
    }

    #[test]
    fn passphrase_changes_are_remembered_across_reopening() -> rusqlite::Result<()> {
        let dir = tempfile::tempdir().map_err(|_| rusqlite::Error::InvalidQuery)?;
        let path = dir.path().join("notes.sqlite3");
        let store = Store::open(&path)?;
        assert_eq!(store.passphrase_changed("ada"), None);
        let before = unix_now().as_secs();
        store.set_passphrase("ada", "", "h1")?;
        let set = store.passphrase_changed("ada").unwrap_or(0);
        assert!(set >= before, "{set} < {before}");
        // It returns once the clock is past the change.
        assert!(unix_now().as_secs() > set);
        assert_eq!(Store::open(&path)?.passphrase_changed("ada"), Some(set));
        assert!(store.remove_passphrase("ada")?);
        let removed = store.passphrase_changed("ada").unwrap_or(0);
        assert!(removed > set, "{removed} <= {set}");
        // A removal is remembered too.
        let reopened = Store::open(&path)?;
        assert_eq!(reopened.passphrase_changed("ada"), Some(removed));
        assert_eq!(reopened.passphrase("ada")?, None);
        assert_eq!(reopened.passphrase_changed("bob"), None);
        Ok(())
    }

    #[test]
    fn the_database_survives_reopening() -> rusqlite::Result<()> {
        let dir = tempfile::tempdir().map_err(|_| rusqlite::Error::InvalidQuery)?;
        let path = dir.path().join("notes.sqlite3");
        Store::open(&path)?.add("ada", &[new("kept", "")])?;
        assert_eq!(Store::open(&path)?.list("ada")?[0].title, "kept");
        Ok(())
    }
}
