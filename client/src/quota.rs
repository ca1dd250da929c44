//! The storage quota: what a server may put in its authority's `storage/`.
//!
//! Storage needs no grant, so without a bound a server could fill the
//! user's disk through it. Every write there is charged before it is made:
//! what it adds to the files' sizes (a streamed write, what it extends its
//! file past the furthest byte written so far, so that writes far past the
//! end are charged for the whole size), plus [`ENTRY_COST`] for each file or
//! folder it may create, so that a flood of empty files counts too. Sizes
//! are apparent sizes: a sparse file counts as if full. The charges are an
//! upper bound of what the folder grows by (a delete is not credited), so
//! they only err towards refusing. When a write would go over the quota,
//! the folder is measured again and the write is refused only if it still
//! would. A charge holds its bytes until its write has landed ([`Charge`]):
//! a measurement adds those still in flight to what it finds, so that the
//! chunks of a streamed write charged while earlier ones are being written
//! are not forgotten by it. Each session keeps its own count; once it has written an eighth
//! of the quota since it last measured, it measures again, so sessions
//! running at once see each other's writes (together they can overshoot by
//! about an eighth of the quota each, plus a write). Measuring a large
//! folder takes a while, so refusals spend at most a tenth of the time
//! measuring ([`MEASURING_SHARE`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What each file or folder counts for beyond its bytes (a block of most
/// file systems: a folder or a small file takes one).
pub const ENTRY_COST: u64 = 4096;

/// A write refused on the running count measures the folder again once
/// this many times the last measurement's duration has passed since it.
pub const MEASURING_SHARE: u32 = 10;

/// Entries a measurement looks at, at most; beyond that the folder counts
/// as full (a 16 GiB quota is met by their entry costs alone).
const MAX_MEASURED_ENTRIES: u64 = 4_000_000;

/// The share of the quota a session writes before it measures again.
const CHARGED_BEFORE_MEASURING: u64 = 8;

/// The quota of one storage folder, shared by a session's requests.
#[derive(Debug)]
pub struct StorageQuota {
    root: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What the folder holds, as last measured plus the charges since.
    used: Option<u64>,
    /// What the last measurement found.
    measured: u64,
    measured_at: Option<Instant>,
    /// How long the last measurement took.
    took: Duration,
    /// Charged bytes whose writes have not landed yet: a measurement does
    /// not see them.
    in_flight: u64,
}

/// A charge made to a [`StorageQuota`]: its bytes count as in flight until
/// it is dropped, which is done once its write has landed or failed.
#[derive(Debug)]
#[must_use = "a charge counts as in flight only while it is held: hold it until the write is done"]
pub struct Charge<'quota> {
    quota: &'quota StorageQuota,
    bytes: u64,
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        let mut state = self
            .quota
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.in_flight = state.in_flight.saturating_sub(self.bytes);
    }
}

/// A write the quota refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the storage folder is full: it holds {used} bytes of its {limit}-byte quota, \
     and this write needs {needed} more"
)]
pub struct QuotaExceeded {
    /// What the folder holds: as last measured, plus what was charged
    /// since.
    pub used: u64,
    /// The quota.
    pub limit: u64,
    /// What the refused write would add.
    pub needed: u64,
}

impl StorageQuota {
    /// The quota of `root`, `limit` bytes.
    pub fn new(root: PathBuf, limit: u64) -> StorageQuota {
        StorageQuota {
            root,
            limit,
            state: Mutex::default(),
        }
    }

    /// The folder it bounds.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Charges a write of `bytes` bytes that may create `entries` files or
    /// folders; refused when the folder would go over the quota. Hold the
    /// charge until the write is done.
    pub fn charge(&self, bytes: u64, entries: u64) -> Result<Charge<'_>, QuotaExceeded> {
        let needed = bytes.saturating_add(entries.saturating_mul(ENTRY_COST));
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let used = match state.used {
            Some(used) => used,
            None => self.measure(&mut state),
        };
        let fits = |used: u64| used.saturating_add(needed) <= self.limit;
        let took = state.took;
        let recent = state
            .measured_at
            .is_some_and(|at| at.elapsed() < took * MEASURING_SHARE);
        // Other sessions write too: once this one has written an eighth of
        // the quota since it last looked, it looks, however long looking
        // takes (that happens once per eighth written, not per refusal).
        let stale = used.saturating_sub(state.measured) > self.limit / CHARGED_BEFORE_MEASURING;
        if fits(used) && !stale {
            return Ok(self.charged(&mut state, used, needed));
        }
        // The running count only grows: look again before refusing.
        let used = if recent && !stale {
            used
        } else {
            self.measure(&mut state)
        };
        if fits(used) {
            Ok(self.charged(&mut state, used, needed))
        } else {
            Err(QuotaExceeded {
                used,
                limit: self.limit,
                needed,
            })
        }
    }

    fn charged(&self, state: &mut State, used: u64, needed: u64) -> Charge<'_> {
        state.used = Some(used.saturating_add(needed));
        state.in_flight = state.in_flight.saturating_add(needed);
        Charge {
            quota: self,
            bytes: needed,
        }
    }

    fn measure(&self, state: &mut State) -> u64 {
        let start = Instant::now();
        let used = measure(&self.root).saturating_add(state.in_flight);
        state.used = Some(used);
        state.measured = used;
        state.measured_at = Some(Instant::now());
        state.took = start.elapsed();
        used
    }
}

/// What the folder at `root` holds: the bytes of its files plus
/// [`ENTRY_COST`] per entry, without following symlinks. Entries that
/// vanish or cannot be read while it looks count for their entry cost.
pub fn measure(root: &Path) -> u64 {
    let mut used = 0u64;
    let mut entries = 0u64;
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(listing) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in listing.flatten() {
            entries += 1;
            if entries > MAX_MEASURED_ENTRIES {
                return u64::MAX;
            }
            used = used.saturating_add(ENTRY_COST);
            // `DirEntry::metadata` does not follow a symlink.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                folders.push(entry.path());
            } else if meta.is_file() {
                used = used.saturating_add(meta.len());
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_counts_its_bytes_and_entries_and_not_what_links_point_to() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0; 5000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0; 100]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![0; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        // a, sub, sub/b, link: four entries.
        assert_eq!(measure(dir.path()), 5000 + 100 + 4 * ENTRY_COST);
    }

    #[test]
    fn a_write_over_the_quota_is_refused_after_measuring_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![0; 8 * ENTRY_COST as usize]).unwrap();
        let quota = StorageQuota::new(dir.path().to_path_buf(), 10 * ENTRY_COST);
        // 9 of 10 held: one more entry's worth fits, then nothing.
        drop(quota.charge(ENTRY_COST, 0).unwrap());
        // As if measuring took long: the refusal trusts the count.
        quota.state.lock().unwrap().took = Duration::from_secs(3600);
        let refused = quota.charge(1, 0).unwrap_err();
        assert_eq!(
            refused,
            QuotaExceeded {
                used: 10 * ENTRY_COST,
                limit: 10 * ENTRY_COST,
                needed: 1
            }
        );
        assert!(refused.to_string().contains("storage folder is full"));
        // Measured again (the charge was made: the folder is full).
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        quota.state.lock().unwrap().measured_at = None;
        assert_eq!(quota.charge(1, 0).unwrap_err().used, 10 * ENTRY_COST);
    }

    #[test]
    fn a_session_sees_what_others_wrote_after_an_eighth_of_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 16 * ENTRY_COST;
        let (first, second) = (
            StorageQuota::new(dir.path().to_path_buf(), limit),
            StorageQuota::new(dir.path().to_path_buf(), limit),
        );
        let write = |quota: &StorageQuota, name: &str| {
            let _charge = quota.charge(6 * ENTRY_COST, 1)?;
            std::fs::write(dir.path().join(name), vec![0; 6 * ENTRY_COST as usize]).unwrap();
            Ok::<_, QuotaExceeded>(())
        };
        // Each measures an empty folder, then writes 7 of 16.
        drop(second.charge(0, 0).unwrap());
        write(&first, "a").unwrap();
        write(&second, "b").unwrap();
        // By its own count the second has 9 left; it looks (its last
        // measurement long ago), finds 2.
        second.state.lock().unwrap().measured_at = None;
        let refused = write(&second, "c").unwrap_err();
        assert_eq!(refused.used, 14 * ENTRY_COST);
    }

    #[test]
    fn refusals_of_a_write_too_big_do_not_measure_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let quota = StorageQuota::new(dir.path().to_path_buf(), 10 * ENTRY_COST);
        drop(quota.charge(0, 0).unwrap());
        // As if measuring took long.
        quota.state.lock().unwrap().took = Duration::from_secs(3600);
        let measured_at = quota.state.lock().unwrap().measured_at;
        for _ in 0..3 {
            assert!(quota.charge(1 << 40, 0).is_err());
        }
        assert_eq!(quota.state.lock().unwrap().measured_at, measured_at);
    }

    #[test]
    fn overwrites_charged_in_full_are_credited_by_the_next_measurement() {
        let e = ENTRY_COST;
        let dir = tempfile::tempdir().unwrap();
        // 71 of 80 held.
        std::fs::write(dir.path().join("big"), vec![0; 70 * e as usize]).unwrap();
        let quota = StorageQuota::new(dir.path().to_path_buf(), 80 * e);
        let file = dir.path().join("f");
        for _ in 0..4 {
            let _charge = quota.charge(e, 1).unwrap();
            std::fs::write(&file, vec![0; e as usize]).unwrap();
        }
        // Counted 79; the folder holds 73. Refused on the count alone while
        // the last measurement is recent (as if it took long).
        quota.state.lock().unwrap().took = Duration::from_secs(3600);
        assert_eq!(quota.charge(2 * e, 0).unwrap_err().used, 79 * e);
        quota.state.lock().unwrap().measured_at = None;
        drop(quota.charge(2 * e, 0).unwrap());
    }

    #[test]
    fn bytes_charged_but_not_yet_written_are_not_forgotten_by_a_measurement() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 16 * ENTRY_COST;
        let quota = StorageQuota::new(dir.path().to_path_buf(), limit);
        // A chunk of 10 charged, its write still in flight: the folder is
        // still empty when the next chunk's charge measures it.
        let in_flight = quota.charge(10 * ENTRY_COST, 0).unwrap();
        quota.state.lock().unwrap().measured_at = None;
        let refused = quota.charge(10 * ENTRY_COST, 0).unwrap_err();
        assert_eq!(refused.used, 10 * ENTRY_COST);
        // Once written, the bytes are found on disk instead.
        std::fs::write(dir.path().join("a"), vec![0; 10 * ENTRY_COST as usize]).unwrap();
        drop(in_flight);
        quota.state.lock().unwrap().measured_at = None;
        assert_eq!(
            quota.charge(10 * ENTRY_COST, 0).unwrap_err().used,
            11 * ENTRY_COST
        );
        assert_eq!(quota.state.lock().unwrap().in_flight, 0);
    }
}
