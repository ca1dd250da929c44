//! Progress bars for the transfers the client performs for the server.
//!
//! A bar appears on stderr only when stderr is a terminal and a transfer has
//! run for more than about a second; pipes and quick transfers never see one.
//! The bars of transfers at once share the screen through one
//! [`MultiProgress`], one line each: a bar drawing on its own would clear
//! the line another drew last, and leave its own behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// How long a transfer runs before its bar is shown.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Most transfers tracked at once. A server chooses the paths: a read that
/// stops before the end of its file is never finished, and each would
/// otherwise be kept (with its path) until the session ends. Far more than
/// the requests a server can have in flight.
pub const MAX_TRANSFERS: usize = 64;

/// A transfer not updated for this long is forgotten (its bar taken off the
/// screen) when a new one begins: it stopped, or it will begin again.
pub const FORGET_AFTER: Duration = Duration::from_secs(10);

/// How many columns the terminal has now.
type Columns = Arc<dyn Fn() -> usize + Send + Sync>;

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
    /// Where every bar draws, each on a line of its own: stderr, or a
    /// recorder in tests.
    bars: MultiProgress,
    columns: Columns,
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
    updated: Instant,
    total: Option<u64>,
    bar: Option<ProgressBar>,
}

/// Most columns of a path a bar shows (its end), however wide the terminal.
const LABEL_COLUMNS: usize = 48;

/// Fewest columns of a path worth a layout: below this the next, narrower
/// layout is taken.
const MIN_LABEL_COLUMNS: usize = 12;

/// Columns assumed when the terminal does not say.
const DEFAULT_COLUMNS: usize = 80;

/// One way to draw a bar: its template and the columns it takes besides
/// the message (`verb path`), at their widest (`1023.99 MiB` for a size,
/// `1023.99 MiB/s` for a speed, 5 for a time left, 10 for the bar itself).
struct Layout {
    template: &'static str,
    columns: usize,
}

/// Layouts for a transfer of known size, widest first.
const SIZED_LAYOUTS: [Layout; 3] = [
    Layout {
        template: "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        columns: 2 + 10 + 2 + 11 + 1 + 11 + 1 + 13 + 1 + 5,
    },
    Layout {
        template: "{msg} {bytes}/{total_bytes} {bytes_per_sec}",
        columns: 1 + 11 + 1 + 11 + 1 + 13,
    },
    Layout {
        template: "{msg} {percent}%",
        columns: 1 + 3 + 1,
    },
];

/// Layouts for a transfer whose size is not known, widest first.
const UNSIZED_LAYOUTS: [Layout; 2] = [
    Layout {
        template: "{msg} {bytes} {bytes_per_sec}",
        columns: 1 + 11 + 1 + 13,
    },
    Layout {
        template: "{msg} {bytes}",
        columns: 1 + 11,
    },
];

/// The widest layout that fits `columns` with room for a useful part of
/// the path, and how many columns that part may take. A bar keeps to one
/// line, so that a redraw rubs out only itself; a layout's bar fills what
/// the rest leaves, and one column is kept as slack for the numbers.
fn layout(layouts: &[Layout], columns: usize, verb: &str) -> (&'static str, usize) {
    let usable = columns.saturating_sub(1);
    let label_room = |layout: &Layout| usable.saturating_sub(layout.columns + verb.len() + 1);
    let chosen = layouts
        .iter()
        .find(|layout| label_room(layout) >= MIN_LABEL_COLUMNS)
        .unwrap_or(&layouts[layouts.len() - 1]);
    (chosen.template, label_room(chosen).min(LABEL_COLUMNS))
}

/// The terminal's width, as stderr's terminal reports it.
fn terminal_columns() -> usize {
    match crossterm::terminal::size() {
        Ok((columns, _)) if columns > 0 => usize::from(columns),
        _ => DEFAULT_COLUMNS,
    }
}

impl Progress {
    /// Bars on stderr when `enabled` (stderr is a terminal).
    pub fn new(enabled: bool) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            enabled,
            transfers: Arc::new(Mutex::new(HashMap::new())),
            screen: None,
            bars: MultiProgress::with_draw_target(target),
            columns: Arc::new(terminal_columns),
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
        self.update_at(verb, path, done, total, finished, Instant::now());
    }

    fn update_at(
        &self,
        verb: &'static str,
        path: &Path,
        done: u64,
        total: Option<u64>,
        finished: bool,
        now: Instant,
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
            if let Some(transfer) = transfers.remove(path) {
                transfer.put_away(&self.bars, may_draw);
            }
            return;
        }
        if !transfers.contains_key(path) {
            make_room(&mut transfers, &self.bars, now, may_draw);
        }
        let transfer = transfers
            .entry(path.to_path_buf())
            .or_insert_with(|| Transfer {
                verb,
                started: now,
                updated: now,
                total,
                bar: None,
            });
        transfer.updated = now;
        if !may_draw {
            return;
        }
        if transfer.bar.is_none() && now.saturating_duration_since(transfer.started) >= SHOW_AFTER {
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
                    self.bars.remove(&bar);
                }
            }
        }
        // The lines the bars took, rubbed out at once.
        let _ = self.bars.clear();
    }

    /// Clears every bar (the session is over).
    pub fn clear(&self) {
        if let Ok(mut transfers) = self.transfers.lock() {
            for (_, transfer) in transfers.drain() {
                if let Some(bar) = transfer.bar {
                    self.bars.remove(&bar);
                }
            }
        }
        let _ = self.bars.clear();
    }

    /// A bar on a line of its own under the others'. It joins them before
    /// it draws anything (a bar that drew before would be a line the others
    /// do not know of).
    fn new_bar(&self, verb: &str, path: &Path, total: Option<u64>) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::with_draw_target(
            total,
            ProgressDrawTarget::hidden(),
        ));
        let layouts: &[Layout] = if total.is_some() {
            &SIZED_LAYOUTS
        } else {
            &UNSIZED_LAYOUTS
        };
        let (template, label_columns) = layout(layouts, (self.columns)(), verb);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("{verb} {}", label(path, label_columns)));
        bar
    }
}

impl Transfer {
    /// Takes its bar off the screen (the others' lines close up over its
    /// line), or drops it without a draw when a prompt holds the screen.
    fn put_away(self, bars: &MultiProgress, may_draw: bool) {
        if let Some(bar) = self.bar {
            if may_draw {
                bar.finish_and_clear();
            }
            bars.remove(&bar);
        }
    }
}

/// Room for one more transfer: forgets those not updated for
/// [`FORGET_AFTER`], then, at [`MAX_TRANSFERS`], the one updated longest ago.
fn make_room(
    transfers: &mut HashMap<PathBuf, Transfer>,
    bars: &MultiProgress,
    now: Instant,
    may_draw: bool,
) {
    let stale: Vec<PathBuf> = transfers
        .iter()
        .filter(|(_, transfer)| now.saturating_duration_since(transfer.updated) >= FORGET_AFTER)
        .map(|(path, _)| path.clone())
        .collect();
    let mut forget = |path: &PathBuf| {
        if let Some(transfer) = transfers.remove(path) {
            transfer.put_away(bars, may_draw);
        }
    };
    stale.iter().for_each(&mut forget);
    while transfers.len() >= MAX_TRANSFERS {
        let Some(oldest) = transfers
            .iter()
            .min_by_key(|(_, transfer)| transfer.updated)
            .map(|(path, _)| path.clone())
        else {
            break;
        };
        if let Some(transfer) = transfers.remove(&oldest) {
            transfer.put_away(bars, may_draw);
        }
    }
}

/// The path as a bar shows it: the server's, so drawn inert, and as much
/// of its end as fits in `columns` (a wide character takes two).
fn label(path: &Path, columns: usize) -> String {
    let inert = crate::inert::inert(&path.to_string_lossy()).to_string();
    if inert.width() <= columns {
        return inert;
    }
    // Room for the ellipsis, then characters from the end while they fit.
    let mut room = columns.saturating_sub(1);
    let mut tail = Vec::new();
    for c in inert.chars().rev() {
        let width = c.width().unwrap_or(0);
        if width > room {
            break;
        }
        room -= width;
        tail.push(c);
    }
    let mut shown = String::from("…");
    shown.extend(tail.iter().rev());
    shown
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

    /// A terminal of `width` columns that records what was drawn on it,
    /// and what it shows after.
    #[derive(Debug, Clone)]
    struct Recorder {
        width: u16,
        draws: Arc<std::sync::atomic::AtomicUsize>,
        /// What was written, line by line.
        text: Arc<Mutex<Vec<String>>>,
        screen: Arc<Mutex<Screen>>,
    }

    /// What a terminal shows: rows of characters and a cursor, which
    /// wraps to the next row when a character is written past the last
    /// column (as a terminal does: a line of exactly the width leaves the
    /// cursor on it until the next character).
    #[derive(Debug)]
    struct Screen {
        width: usize,
        rows: Vec<Vec<char>>,
        row: usize,
        column: usize,
    }

    impl Screen {
        fn put(&mut self, c: char) {
            if self.column >= self.width {
                self.row += 1;
                self.column = 0;
            }
            let (width, column) = (self.width, self.column);
            let row = self.row_mut();
            row.resize(width, ' ');
            row[column] = c;
            self.column += 1;
        }

        fn row_mut(&mut self) -> &mut Vec<char> {
            if self.rows.len() <= self.row {
                self.rows.resize(self.row + 1, Vec::new());
            }
            &mut self.rows[self.row]
        }

        fn write(&mut self, text: &str) {
            let mut chars = text.chars();
            while let Some(c) = chars.next() {
                match c {
                    // An escape sequence (a style): shows nothing.
                    '\x1b' => {
                        for c in chars.by_ref() {
                            if c.is_ascii_alphabetic() {
                                break;
                            }
                        }
                    }
                    '\r' => self.column = 0,
                    '\n' => {
                        self.row += 1;
                        self.column = 0;
                    }
                    c => self.put(c),
                }
            }
        }

        /// Moves the cursor `rows` up (negative) or down, in its column.
        fn move_by(&mut self, rows: isize) {
            self.row = self.row.saturating_add_signed(rows);
            self.column = self.column.min(self.width - 1);
        }

        fn clear_line(&mut self) {
            self.row_mut().clear();
            self.column = 0;
        }

        /// The rows that show something, without their trailing blanks.
        fn shown(&self) -> Vec<String> {
            self.rows
                .iter()
                .map(|row| row.iter().collect::<String>().trim_end().to_string())
                .filter(|row| !row.is_empty())
                .collect()
        }
    }

    impl Recorder {
        fn new(width: u16) -> Self {
            Recorder {
                width,
                draws: Arc::default(),
                text: Arc::new(Mutex::new(vec![String::new()])),
                screen: Arc::new(Mutex::new(Screen {
                    width: usize::from(width),
                    rows: Vec::new(),
                    row: 0,
                    column: 0,
                })),
            }
        }

        /// What the terminal shows now, row by row.
        fn shown(&self) -> Vec<String> {
            self.screen.lock().unwrap().shown()
        }

        fn draws(&self) -> usize {
            self.draws.load(std::sync::atomic::Ordering::Relaxed)
        }

        fn drawn(&self) -> std::io::Result<()> {
            self.draws
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }

        fn write(&self, text: &str, line_ends: bool) -> std::io::Result<()> {
            let mut lines = self.text.lock().unwrap();
            lines.last_mut().unwrap().push_str(text);
            if line_ends {
                lines.push(String::new());
            }
            self.drawn()
        }

        /// Something done to the screen, recorded as a draw that ends a
        /// line of the record.
        fn on_screen(&self, change: impl FnOnce(&mut Screen)) -> std::io::Result<()> {
            change(&mut self.screen.lock().unwrap());
            self.write("", true)
        }

        /// Every non-empty line written.
        fn lines(&self) -> Vec<String> {
            let lines = self.text.lock().unwrap();
            lines
                .iter()
                .filter(|line| !line.is_empty())
                .cloned()
                .collect()
        }
    }

    impl indicatif::TermLike for Recorder {
        fn width(&self) -> u16 {
            self.width
        }
        // Moving the cursor or clearing a line starts a line of its own in
        // the record: what comes next is another draw.
        fn move_cursor_up(&self, rows: usize) -> std::io::Result<()> {
            self.on_screen(|screen| screen.move_by(-(rows as isize)))
        }
        fn move_cursor_down(&self, rows: usize) -> std::io::Result<()> {
            self.on_screen(|screen| screen.move_by(rows as isize))
        }
        fn move_cursor_right(&self, columns: usize) -> std::io::Result<()> {
            self.on_screen(|screen| {
                screen.column = (screen.column + columns).min(screen.width - 1);
            })
        }
        fn move_cursor_left(&self, columns: usize) -> std::io::Result<()> {
            self.on_screen(|screen| screen.column = screen.column.saturating_sub(columns))
        }
        fn write_line(&self, text: &str) -> std::io::Result<()> {
            self.screen.lock().unwrap().write(&format!("{text}\n"));
            self.write(text, true)
        }
        fn write_str(&self, text: &str) -> std::io::Result<()> {
            self.screen.lock().unwrap().write(text);
            self.write(text, false)
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.on_screen(Screen::clear_line)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Progress drawing on a recorder `width` columns wide, with a transfer
    /// of `path` (of `total` bytes) begun long enough ago to show a bar.
    fn recorded_at(
        screen: &Arc<tokio::sync::RwLock<()>>,
        path: &Path,
        width: u16,
        total: Option<u64>,
    ) -> (Progress, Recorder) {
        let recorder = Recorder::new(width);
        let mut progress = Progress::new(true).with_screen(Some(screen.clone()));
        progress
            .bars
            .set_draw_target(ProgressDrawTarget::term_like(Box::new(recorder.clone())));
        progress.columns = Arc::new(move || usize::from(width));
        begun_a_while_ago(&progress, path, total);
        (progress, recorder)
    }

    /// A transfer of `path` begun long enough ago to show a bar.
    fn begun_a_while_ago(progress: &Progress, path: &Path, total: Option<u64>) {
        progress.transfers.lock().unwrap().insert(
            path.to_path_buf(),
            Transfer {
                verb: "writing",
                started: Instant::now() - SHOW_AFTER * 2,
                updated: Instant::now(),
                total,
                bar: None,
            },
        );
    }

    fn recorded(screen: &Arc<tokio::sync::RwLock<()>>, path: &Path) -> (Progress, Recorder) {
        recorded_at(screen, path, 80, Some(100))
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

    /// Two transfers at once (a server reading two big files) show one
    /// bar each, one under the other, and leave nothing on the screen once
    /// both end: each bar redrawing on its own cleared the other's line
    /// and left its own behind.
    #[test]
    fn concurrent_transfers_share_the_screen_and_leave_nothing_behind() {
        let screen = Arc::new(tokio::sync::RwLock::new(()));
        let (one, two) = (Path::new("/storage/one"), Path::new("/storage/two"));
        let (progress, recorder) = recorded(&screen, one);
        begun_a_while_ago(&progress, two, Some(100));
        for done in [10, 20, 30] {
            progress.update("writing", one, done, Some(100), false);
            progress.update("writing", two, done, Some(100), false);
        }
        // Each bar as last updated, nothing else.
        let shown = recorder.shown();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        for (line, path) in shown.iter().zip(["/storage/one ", "/storage/two "]) {
            assert!(line.contains(path), "{shown:#?}");
            assert!(line.contains(" 30 B/100 B "), "{shown:#?}");
        }
        progress.update("writing", one, 100, Some(100), true);
        progress.update("writing", two, 40, Some(100), false);
        let shown = recorder.shown();
        assert_eq!(shown.len(), 1, "{shown:#?}");
        assert!(shown[0].contains("/storage/two"), "{shown:#?}");
        progress.update("writing", two, 100, Some(100), true);
        assert_eq!(recorder.shown(), Vec::<String>::new());
    }

    /// A prompt takes every bar off the screen at once, they come back
    /// one under the other after it, and bars forgotten for a new transfer
    /// leave no line behind.
    #[test]
    fn concurrent_bars_hidden_or_forgotten_leave_nothing_behind() {
        let screen = Arc::new(tokio::sync::RwLock::new(()));
        let (one, two) = (Path::new("/storage/one"), Path::new("/storage/two"));
        let (progress, recorder) = recorded(&screen, one);
        begun_a_while_ago(&progress, two, Some(100));
        progress.update("writing", one, 10, Some(100), false);
        progress.update("writing", two, 10, Some(100), false);
        assert_eq!(recorder.shown().len(), 2, "{:#?}", recorder.shown());
        let prompt = screen.try_write().unwrap();
        progress.hide();
        assert_eq!(recorder.shown(), Vec::<String>::new());
        progress.update("writing", one, 20, Some(100), false);
        assert_eq!(recorder.shown(), Vec::<String>::new());
        drop(prompt);
        progress.update("writing", one, 30, Some(100), false);
        progress.update("writing", two, 30, Some(100), false);
        let shown = recorder.shown();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        assert!(shown.iter().all(|line| line.contains(" 30 B/100 B ")));
        // Both stopped; a new transfer forgets them.
        let later = Instant::now() + FORGET_AFTER;
        let three = Path::new("/storage/three");
        progress.update_at("writing", three, 1, Some(100), false, later);
        assert_eq!(recorder.shown(), Vec::<String>::new());
        assert_eq!(progress.transfers.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_bar_names_the_end_of_a_long_path_on_one_line() {
        let long = format!("/storage/{}\n\x1b[2J/{}", "a".repeat(100), "end.txt");
        let shown = label(Path::new(&long), LABEL_COLUMNS);
        assert!(shown.width() <= LABEL_COLUMNS, "{shown}");
        assert!(
            shown.starts_with('…') && shown.ends_with("/end.txt"),
            "{shown}"
        );
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        // Wide characters take two columns each.
        let wide = label(Path::new(&format!("/{}", "表".repeat(40))), 21);
        assert_eq!(wide, format!("…{}", "表".repeat(10)));
    }

    #[test]
    fn a_bar_fits_the_terminal_it_is_drawn_on() {
        let screen = Arc::new(tokio::sync::RwLock::new(()));
        let long = format!("/storage/{}/end.txt", "a".repeat(100));
        let gib = 1 << 30;
        for width in [200, 120, 80, 60, 40, 30] {
            for total in [Some(gib), None] {
                let (progress, recorder) = recorded_at(&screen, Path::new(&long), width, total);
                // The widest numbers a bar shows.
                progress.update("writing", Path::new(&long), gib - 10, total, false);
                let lines = recorder.lines();
                assert!(!lines.is_empty(), "nothing drawn at {width} columns");
                for line in &lines {
                    let columns = console_width(line);
                    assert!(
                        columns <= usize::from(width),
                        "{columns} columns at {width}: {line:?}"
                    );
                    assert!(line.contains("end.txt"), "{line:?}");
                }
                progress.clear();
            }
        }
        // A wide terminal shows the bar itself and the longest label.
        let (progress, recorder) = recorded_at(&screen, Path::new(&long), 200, Some(gib));
        progress.update("writing", Path::new(&long), 1, Some(gib), false);
        let line = recorder.lines().concat();
        assert!(line.contains('[') && line.contains(']'), "{line:?}");
        assert!(
            line.contains(&label(Path::new(&long), LABEL_COLUMNS)),
            "{line:?}"
        );
    }

    /// Columns `text` takes on a terminal, escape sequences aside.
    fn console_width(text: &str) -> usize {
        let mut plain = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // CSI: up to its final byte.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain.width()
    }

    #[test]
    fn transfers_are_tracked_until_finished() {
        let progress = Progress::new(true);
        progress.update("reading", Path::new("/x"), 1, Some(2), false);
        assert_eq!(progress.transfers.lock().unwrap().len(), 1);
        progress.update("reading", Path::new("/x"), 2, Some(2), true);
        assert!(progress.transfers.lock().unwrap().is_empty());
    }

    /// A server's reads that stop before the end of their files never
    /// finish a transfer: the table keeps at most [`MAX_TRANSFERS`], the
    /// ones updated last, whatever the paths.
    #[test]
    fn unfinished_transfers_are_bounded() {
        let progress = Progress::new(true);
        let start = Instant::now();
        let tick = Duration::from_millis(1);
        let long = "x".repeat(4000);
        let path = |n: usize| PathBuf::from(format!("/storage/{long}{n}"));
        for n in 0..2000 {
            progress.update_at(
                "reading",
                &path(n),
                1,
                Some(2),
                false,
                start + tick * n as u32,
            );
            // One transfer goes on all along.
            progress.update_at(
                "reading",
                Path::new("/big"),
                n as u64,
                None,
                false,
                start + tick * n as u32,
            );
        }
        let transfers = progress.transfers.lock().unwrap();
        assert_eq!(transfers.len(), MAX_TRANSFERS);
        assert!(transfers.contains_key(Path::new("/big")));
        assert!(transfers.contains_key(&path(1999)));
        // The last ones begun, and no other.
        assert!(transfers.contains_key(&path(1999 - MAX_TRANSFERS + 2)));
        assert!(!transfers.contains_key(&path(1999 - MAX_TRANSFERS + 1)));
    }

    #[test]
    fn a_transfer_not_updated_for_a_while_is_forgotten_when_another_begins() {
        let progress = Progress::new(true);
        let start = Instant::now();
        progress.update_at("reading", Path::new("/stopped"), 1, Some(9), false, start);
        progress.update_at("reading", Path::new("/going"), 1, Some(9), false, start);
        let later = start + FORGET_AFTER;
        progress.update_at("reading", Path::new("/going"), 2, Some(9), false, later);
        // Only a new transfer makes room.
        assert_eq!(progress.transfers.lock().unwrap().len(), 2);
        progress.update_at("reading", Path::new("/new"), 1, Some(9), false, later);
        let transfers = progress.transfers.lock().unwrap();
        let mut kept: Vec<_> = transfers.keys().cloned().collect();
        kept.sort();
        assert_eq!(kept, [PathBuf::from("/going"), PathBuf::from("/new")]);
    }
}
