//! Progress bars for the transfers the client performs for the server.
//!
//! A bar appears on stderr only when stderr is a terminal and a transfer has
//! run for more than about a second; pipes and quick transfers never see one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a transfer runs before its bar is shown.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Transfers in progress, by path.
#[derive(Debug, Clone)]
pub struct Progress {
    enabled: bool,
    transfers: Arc<Mutex<HashMap<PathBuf, Transfer>>>,
}

#[derive(Debug)]
struct Transfer {
    verb: &'static str,
    started: Instant,
    total: Option<u64>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Bars on stderr when `enabled` (stderr is a terminal).
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            transfers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// No bars at all.
    pub fn disabled() -> Self {
        Progress::new(false)
    }

    /// `done` bytes of the transfer of `path` have happened (`total` when
    /// known); `finished` ends it.
    pub fn update(
        &self,
        verb: &'static str,
        path: &Path,
        done: u64,
        total: Option<u64>,
        finished: bool,
    ) {
        if !self.enabled {
            return;
        }
        let Ok(mut transfers) = self.transfers.lock() else {
            return;
        };
        if finished {
            if let Some(transfer) = transfers.remove(path)
                && let Some(bar) = transfer.bar
            {
                bar.finish_and_clear();
            }
            return;
        }
        let transfer = transfers
            .entry(path.to_path_buf())
            .or_insert_with(|| Transfer {
                verb,
                started: Instant::now(),
                total,
                bar: None,
            });
        if transfer.bar.is_none() && transfer.started.elapsed() >= SHOW_AFTER {
            transfer.bar = Some(new_bar(transfer.verb, path, transfer.total));
        }
        if let Some(bar) = &transfer.bar {
            bar.set_position(done);
        }
    }

    /// Clears every bar (the session is over).
    pub fn clear(&self) {
        if let Ok(mut transfers) = self.transfers.lock() {
            for (_, transfer) in transfers.drain() {
                if let Some(bar) = transfer.bar {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

fn new_bar(verb: &str, path: &Path, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    // The path is the server's: drawn inert next to the client's bar.
    bar.set_message(format!(
        "{verb} {}",
        crate::inert::inert(&path.to_string_lossy())
    ));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_progress_tracks_nothing() {
        let progress = Progress::disabled();
        progress.update("reading", Path::new("/x"), 1, Some(2), false);
        assert!(progress.transfers.lock().unwrap().is_empty());
    }

    #[test]
    fn transfers_are_tracked_until_finished() {
        let progress = Progress::new(true);
        progress.update("reading", Path::new("/x"), 1, Some(2), false);
        assert_eq!(progress.transfers.lock().unwrap().len(), 1);
        progress.update("reading", Path::new("/x"), 2, Some(2), true);
        assert!(progress.transfers.lock().unwrap().is_empty());
    }
}
