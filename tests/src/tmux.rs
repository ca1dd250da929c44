//! The real client in a real terminal: a tmux pane on a private tmux server,
//! driven with `send-keys` and read with `capture-pane`.
//!
//! The pane runs a small shell wrapper that records `stty -g` before the
//! client starts, then the client's exit status and `stty -g` again after it
//! ends, so a test can check that the terminal is left as it was found.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client_binary;

/// How long a test waits for text to appear or the client to end.
pub const PANE_DEADLINE: Duration = Duration::from_secs(20);
/// How often the pane is polled meanwhile.
const POLL: Duration = Duration::from_millis(50);
/// How long after the client's exit [`TmuxPane::wait_for`] still looks for
/// its last output on the screen.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// The tmux session's name (each test has its own tmux server).
const SESSION: &str = "tw";

/// The session id in the `attach ID` hint a detaching client prints on
/// `screen`; fails the test when there is none.
pub fn session_id_on(screen: &str) -> String {
    screen
        .split_whitespace()
        .skip_while(|word| *word != "attach")
        .nth(1)
        .unwrap_or_else(|| panic!("no session id on screen:\n{screen}"))
        .to_owned()
}

/// Fails the test unless tmux can be run.
pub fn require_tmux() {
    let found = std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "tmux is not installed: the real-terminal tests drive the client through tmux \
         (install it, e.g. `apt-get install tmux`; `.ci/run` does so when it is missing)"
    );
}

/// How the client run in a pane ended.
#[derive(Debug)]
pub struct PaneExit {
    /// The client's exit status.
    pub status: i32,
    /// `stty -g` of the pane before the client started.
    pub stty_before: String,
    /// `stty -g` of the pane after the client ended.
    pub stty_after: String,
    /// The pane's text at the end.
    pub screen: String,
}

/// One tmux server with one window running `terminalwire ARGS...`; the
/// server is killed when this is dropped.
#[derive(Debug)]
pub struct TmuxPane {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    home: PathBuf,
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl TmuxPane {
    /// The pane's terminalwire home (`TERMINALWIRE_HOME` of the client).
    pub fn home(&self) -> PathBuf {
        self.home.clone()
    }

    /// Starts the client in a `cols`×`rows` pane with its own empty
    /// terminalwire home.
    pub fn start(args: &[&str], cols: u16, rows: u16) -> TmuxPane {
        TmuxPane::start_with_home(args, cols, rows, None)
    }

    /// [`start`](TmuxPane::start) with the terminalwire home `home` (say,
    /// another pane's), when given.
    pub fn start_with_home(args: &[&str], cols: u16, rows: u16, home: Option<&Path>) -> TmuxPane {
        TmuxPane::launch(args, cols, rows, home, None, false, false, &[], false)
    }

    /// [`start`](TmuxPane::start) under a shell with job control (`set -m`,
    /// as an interactive shell has): the client runs as a job of its own in
    /// the foreground, so Ctrl-Z stops it (the pane's wrapper shell alone is
    /// an orphaned process group, for which the kernel discards Ctrl-Z).
    /// Once the job stops, the shell records the terminal's settings as it
    /// finds them ([`stty_while_stopped`](TmuxPane::stty_while_stopped)) and
    /// continues it with `fg`, once.
    pub fn start_with_job_control(args: &[&str], cols: u16, rows: u16) -> TmuxPane {
        TmuxPane::launch(args, cols, rows, None, None, false, false, &[], true)
    }

    /// [`start`](TmuxPane::start), keeping every byte written to the pane
    /// from before the client starts ([`wait_for_output`](TmuxPane::wait_for_output)).
    pub fn start_capturing(args: &[&str], cols: u16, rows: u16) -> TmuxPane {
        TmuxPane::launch(args, cols, rows, None, None, false, true, &[], false)
    }

    /// [`start_with_home`](TmuxPane::start_with_home) with the client's
    /// stdout sent to a new file at `stdout` (`> stdout`); stdin and stderr
    /// stay the pane's terminal.
    pub fn start_with_stdout(
        args: &[&str],
        cols: u16,
        rows: u16,
        home: Option<&Path>,
        stdout: &Path,
    ) -> TmuxPane {
        TmuxPane::launch(
            args,
            cols,
            rows,
            home,
            Some(stdout),
            false,
            false,
            &[],
            false,
        )
    }

    /// Like [`TmuxPane::start`]; after the client exits, what was typed and
    /// left unread in the terminal is shown as `leftover=[...]`.
    pub fn start_showing_leftover(args: &[&str], cols: u16, rows: u16) -> TmuxPane {
        TmuxPane::launch(args, cols, rows, None, None, true, false, &[], false)
    }

    /// Like [`TmuxPane::start`], with the environment variables `env` set
    /// for the client (the debug builds' hooks, say).
    pub fn start_with_env(args: &[&str], cols: u16, rows: u16, env: &[(&str, &str)]) -> TmuxPane {
        TmuxPane::launch(args, cols, rows, None, None, false, false, env, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        args: &[&str],
        cols: u16,
        rows: u16,
        home: Option<&Path>,
        stdout: Option<&Path>,
        show_leftover: bool,
        capture: bool,
        env: &[(&str, &str)],
        job_control: bool,
    ) -> TmuxPane {
        require_tmux();
        let binary = client_binary();
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let home = match home {
            Some(home) => home.to_path_buf(),
            None => {
                let home = base.join("home");
                std::fs::create_dir(&home).unwrap();
                home
            }
        };
        let mut quoted_args: Vec<String> = std::iter::once(binary.to_string_lossy().into_owned())
            .chain(args.iter().map(|arg| (*arg).to_owned()))
            .map(|word| shell_quote(&word))
            .collect();
        if let Some(stdout) = stdout {
            quoted_args.push(format!("> {}", shell_quote(&stdout.to_string_lossy())));
        }
        let out = |name: &str| shell_quote(&base.join(name).to_string_lossy());
        let exports: String = env
            .iter()
            .map(|(key, value)| format!("export {key}={}\n", shell_quote(value)))
            .collect();
        // Reads what is left in the terminal's input for a tenth of a
        // second, without waiting for a line.
        let leftover = if show_leftover {
            "stty -icanon min 0 time 1\n\
             printf 'leftover=['; head -c 256 | tr '\\n' '|'; printf ']\\n'\n"
        } else {
            ""
        };
        // Run in the pane, before the client starts, so that nothing it
        // writes is missed.
        let capture = if capture {
            format!(
                "tmux pipe-pane -o {}\n",
                shell_quote(&format!("cat > {}", out("output")))
            )
        } else {
            String::new()
        };
        // With job control, the command is a job: stopped (status 147 or
        // 148: SIGSTOP or SIGTSTP; the client stops itself with the first),
        // the shell notes the terminal as it finds it, then continues it in
        // the foreground.
        let (job_control, run) = if job_control {
            (
                "set -m\n".to_owned(),
                format!(
                    "{command}\n\
                     status=$?\n\
                     if [ \"$status\" -eq 147 ] || [ \"$status\" -eq 148 ]; then stty -a > {stopped}.partial; mv {stopped}.partial {stopped}; fg; status=$?; fi\n\
                     echo $status > {partial}\n",
                    command = quoted_args.join(" "),
                    stopped = out("stty.stopped"),
                    partial = out("status.partial"),
                ),
            )
        } else {
            (
                String::new(),
                format!(
                    "{}\necho $? > {}\n",
                    quoted_args.join(" "),
                    out("status.partial")
                ),
            )
        };
        // Catching SIGINT and SIGQUIT (not ignoring them: an ignored signal would stay
        // ignored in the client) keeps the wrapper alive through Ctrl-C to
        // record the client's status; the client gets the default handling.
        let script = format!(
            "trap 'true' INT QUIT\n\
             unset CLICOLOR_FORCE TERMINALWIRE_LOG NO_COLOR\n\
             export TERMINALWIRE_HOME={home}\n\
             {exports}\
             stty -g > {before}\n\
             {capture}\
             {job_control}\
             {run}\
             stty -g > {after}\n\
             {leftover}\
             mv {partial} {status}\n\
             exec sleep 3600\n",
            home = shell_quote(&home.to_string_lossy()),
            before = out("stty.before"),
            partial = out("status.partial"),
            after = out("stty.after"),
            status = out("status"),
        );
        let script_path = base.join("run.sh");
        std::fs::write(&script_path, script).unwrap();
        let socket = base.join("tmux.sock");
        let pane = TmuxPane {
            _dir: dir,
            socket,
            home,
        };
        let (cols, rows) = (cols.to_string(), rows.to_string());
        let command = format!("sh {}", shell_quote(&script_path.to_string_lossy()));
        pane.tmux_sync(&[
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &cols,
            "-y",
            &rows,
            &command,
        ]);
        pane.tmux_sync(&["set-option", "-w", "-t", SESSION, "window-size", "manual"]);
        pane
    }

    fn base(&self) -> &Path {
        self.socket.parent().unwrap()
    }

    fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new("tmux");
        command
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .env_remove("TMUX");
        command
    }

    fn tmux_sync(&self, args: &[&str]) -> String {
        let output = self.command().args(args).output().unwrap();
        assert!(
            output.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn tmux(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::from(self.command())
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The pane's modes, as `name=value` words: `alternate_on`,
    /// `mouse_any_flag`, `keypad_cursor_flag`, `cursor_flag`, `insert_flag`,
    /// `wrap_flag`.
    pub async fn modes(&self) -> String {
        let format = [
            "alternate_on",
            "mouse_any_flag",
            "keypad_cursor_flag",
            "cursor_flag",
            "insert_flag",
            "wrap_flag",
        ]
        .map(|name| format!("{name}=#{{{name}}}"))
        .join(" ");
        let modes = self
            .tmux(&["display-message", "-p", "-t", SESSION, &format])
            .await;
        modes.trim().to_owned()
    }

    /// Waits until the bytes written to a pane started with
    /// [`start_capturing`](TmuxPane::start_capturing) contain `wanted`;
    /// returns them all. Fails the test after [`PANE_DEADLINE`].
    pub async fn wait_for_output(&self, wanted: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + PANE_DEADLINE;
        loop {
            let output = std::fs::read(self.base().join("output")).unwrap_or_default();
            if output.windows(wanted.len()).any(|window| window == wanted) {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} was not written within {PANE_DEADLINE:?}; written:\n{:?}",
                String::from_utf8_lossy(wanted),
                String::from_utf8_lossy(&output)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The pane's visible text.
    pub async fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", SESSION]).await
    }

    /// Waits until the pane shows `text`; returns the screen. Fails the test
    /// after [`PANE_DEADLINE`].
    pub async fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + PANE_DEADLINE;
        // When the client was first seen to have exited.
        let mut exited_at = None;
        loop {
            // The exit first: what the client wrote before it exited may
            // reach tmux's screen after the status file appears, so the
            // screen is only judged a while after the exit.
            let status = self.status();
            let screen = self.screen().await;
            if screen.contains(text) {
                return screen;
            }
            if let Some(status) = status {
                let since: Instant = *exited_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= EXIT_GRACE {
                    panic!(
                        "the client exited ({status}) without showing {text:?}; screen:\n{screen}"
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} did not appear within {PANE_DEADLINE:?}; screen:\n{screen}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends tmux key names (`a`, `Enter`, `C-c`, `Up`, ...).
    pub async fn send_keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend_from_slice(keys);
        self.tmux(&args).await;
    }

    /// Types `text` literally.
    pub async fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", SESSION, "-l", text]).await;
    }

    /// Resizes the window (and so the pane) to `cols`×`rows`.
    pub async fn resize(&self, cols: u16, rows: u16) {
        let (cols, rows) = (cols.to_string(), rows.to_string());
        self.tmux(&["resize-window", "-t", SESSION, "-x", &cols, "-y", &rows])
            .await;
    }

    /// The pane's terminal device (`/dev/pts/N`).
    pub async fn tty(&self) -> PathBuf {
        let tty = self
            .tmux(&["display-message", "-p", "-t", SESSION, "#{pane_tty}"])
            .await;
        PathBuf::from(tty.trim())
    }

    /// The client's process id: the one child of the pane's shell wrapper
    /// while the client runs. Fails the test when there is none.
    pub async fn client_pid(&self) -> rustix::process::Pid {
        let shell = self
            .tmux(&["display-message", "-p", "-t", SESSION, "#{pane_pid}"])
            .await;
        let shell = shell.trim();
        let children =
            std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        let child: i32 = children
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("the pane's shell ({shell}) runs no client"))
            .parse()
            .unwrap();
        rustix::process::Pid::from_raw(child).unwrap()
    }

    /// The terminal's settings (`stty -a`) as the shell found them once
    /// the client stopped, under [`start_with_job_control`](TmuxPane::start_with_job_control);
    /// `None` until then.
    pub fn stty_while_stopped(&self) -> Option<String> {
        std::fs::read_to_string(self.base().join("stty.stopped")).ok()
    }

    fn status(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.base().join("status")).ok()?;
        Some(text.trim().parse().unwrap())
    }

    /// Waits until the client has exited; fails the test after
    /// [`PANE_DEADLINE`].
    pub async fn wait_exit(&self) -> PaneExit {
        match self.try_wait_exit(PANE_DEADLINE).await {
            Some(exit) => exit,
            None => panic!(
                "the client did not exit within {PANE_DEADLINE:?}; screen:\n{}",
                self.screen().await
            ),
        }
    }

    /// Waits up to `timeout` for the client to exit; `None` if it has not.
    pub async fn try_wait_exit(&self, timeout: Duration) -> Option<PaneExit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status() {
                let read = |name: &str| {
                    std::fs::read_to_string(self.base().join(name))
                        .unwrap()
                        .trim()
                        .to_owned()
                };
                return Some(PaneExit {
                    status,
                    stty_before: read("stty.before"),
                    stty_after: read("stty.after"),
                    screen: self.screen().await,
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for TmuxPane {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
