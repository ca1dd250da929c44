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

/// Where bars draw: stderr, or a recorder in tests.
type DrawTarget = Arc<dyn Fn() -> ProgressDrawTarget + Send + Sync>;

/// Transfers in progress, by path.
#[derive(Clone)]
pub struct Progress {
    enabled: bool,
    transfers: Arc<Mutex<HashMap<PathBuf, Transfer>>>,
    /// The lock a consent prompt holds while it is on screen: bars draw only
    /// while no prompt holds it. A redraw moves the cursor up over the lines
    /// the bar drew last and clears them, which would overwrite a prompt
    /// with the server's path.
    screen: Option<Arc<tokio::sync::RwLock<()>>>,
    target: DrawTarget,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Transfer {
    verb: &'static str,
    started: Instant,
    total: Option<u64>,
    bar: Option<ProgressBar>,
}

/// Most characters of a path a bar shows (its end): the bar keeps to one
/// line, so that it redraws only itself.
const LABEL_CHARS: usize = 48;

impl Progress {
    /// Bars on stderr when `enabled` (stderr is a terminal).
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            transfers: Arc::new(Mutex::new(HashMap::new())),
            screen: None,
            target: Arc::new(ProgressDrawTarget::stderr),
        }
    }

    /// No bars at all.
    pub fn disabled() -> Self {
        Progress::new(false)
    }

    /// Draws nothing while a consent prompt holds `screen`.
    pub fn with_screen(mut self, screen: Option<Arc<tokio::sync::RwLock<()>>>) -> Self {
        self.screen = screen;
        self
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
        // Held while drawing, so that no prompt appears meanwhile.
        let screen = self.screen.as_ref().map(|screen| screen.try_read());
        let may_draw = !matches!(screen, Some(Err(_)));
        if finished {
            if let Some(transfer) = transfers.remove(path)
                && let Some(bar) = transfer.bar
            {
                if may_draw {
                    bar.finish_and_clear();
                } else {
                    // Dropped without a last draw.
                    bar.set_draw_target(ProgressDrawTarget::hidden());
                }
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
        if !may_draw {
            return;
        }
        if transfer.bar.is_none() && transfer.started.elapsed() >= SHOW_AFTER {
            transfer.bar = Some(self.new_bar(transfer.verb, path, transfer.total));
        }
        if let Some(bar) = &transfer.bar {
            bar.set_position(done);
        }
    }

    /// Takes every bar off the screen, for a prompt that holds it now; they
    /// come back at their transfers' next update after it.
    pub fn hide(&self) {
        if let Ok(mut transfers) = self.transfers.lock() {
            for transfer in transfers.values_mut() {
                if let Some(bar) = transfer.bar.take() {
                    bar.finish_and_clear();
                }
            }
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

    fn new_bar(&self, verb: &str, path: &Path, total: Option<u64>) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(total, (self.target)());
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
        } else {
            "{msg} {bytes} {bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("{verb} {}", label(path)));
        bar
    }
}

/// The path as a bar shows it: the server's, so drawn inert, and its last
/// [`LABEL_CHARS`] characters at most.
fn label(path: &Path) -> String {
    let inert = crate::inert::inert(&path.to_string_lossy()).to_string();
    let chars = inert.chars().count();
    if chars <= LABEL_CHARS {
        return inert;
    }
    let tail: String = inert.chars().skip(chars - (LABEL_CHARS - 1)).collect();
    format!("…{tail}")
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

    /// A terminal that records how many times it was drawn on.
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<std::sync::atomic::AtomicUsize>);

    impl Recorder {
        fn draws(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }

        fn drawn(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }

    impl indicatif::TermLike for Recorder {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            self.drawn()
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            self.drawn()
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            self.drawn()
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            self.drawn()
        }
        fn write_line(&self, _: &str) -> std::io::Result<()> {
            self.drawn()
        }
        fn write_str(&self, _: &str) -> std::io::Result<()> {
            self.drawn()
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.drawn()
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Progress drawing on a recorder, with a transfer of `path` begun long
    /// enough ago to show a bar.
    fn recorded(screen: &Arc<tokio::sync::RwLock<()>>, path: &Path) -> (Progress, Recorder) {
        let recorder = Recorder::default();
        let mut progress = Progress::new(true).with_screen(Some(screen.clone()));
        progress.target = Arc::new({
            let recorder = recorder.clone();
            move || ProgressDrawTarget::term_like(Box::new(recorder.clone()))
        });
        progress.transfers.lock().unwrap().insert(
            path.to_path_buf(),
            Transfer {
                verb: "writing",
                started: Instant::now() - SHOW_AFTER * 2,
                total: Some(100),
                bar: None,
            },
        );
        (progress, recorder)
    }

    #[test]
    fn nothing_is_drawn_while_a_prompt_holds_the_screen() {
        let screen = Arc::new(tokio::sync::RwLock::new(()));
        let path = Path::new("/storage/big");
        let (progress, recorder) = recorded(&screen, path);
        let prompt = screen.try_write().unwrap();
        progress.update("writing", path, 10, Some(100), false);
        progress.update("writing", path, 20, Some(100), false);
        assert_eq!(recorder.draws(), 0, "a bar was drawn under the prompt");
        drop(prompt);
        progress.update("writing", path, 30, Some(100), false);
        assert!(recorder.draws() > 0, "no bar once the prompt was gone");
        // A prompt takes the bars off the screen; finishing under it draws
        // nothing more.
        let prompt = screen.try_write().unwrap();
        progress.hide();
        let after_hiding = recorder.draws();
        progress.update("writing", path, 40, Some(100), false);
        progress.update("writing", path, 100, Some(100), true);
        assert_eq!(recorder.draws(), after_hiding, "drawn under the prompt");
        drop(prompt);
    }

    #[test]
    fn a_bar_names_the_end_of_a_long_path_on_one_line() {
        let long = format!("/storage/{}\n\x1b[2J/{}", "a".repeat(100), "end.txt");
        let shown = label(Path::new(&long));
        assert!(shown.chars().count() <= LABEL_CHARS, "{shown}");
        assert!(
            shown.starts_with('…') && shown.ends_with("/end.txt"),
            "{shown}"
        );
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
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
