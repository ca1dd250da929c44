//! clap integration: define the remote CLI with clap; help, version and usage
//! errors reach the client exactly as a local clap program would print them.

use clap::ColorChoice;

use crate::context::{ColorLevel, Context};
use crate::outcome::Exit;

impl Context {
    /// Parses the client's arguments with clap.
    ///
    /// On `--help`, `--version` or a usage error, prints clap's text on the
    /// client (help and version on stdout, errors on stderr; coloured as the
    /// command's `color` setting says, by default when that client stream
    /// supports colour) and returns [`Exit`] with clap's status
    /// (0 or 2), which a command propagates with `?`.
    ///
    /// Help is wrapped to the client's terminal width, or at 100 columns
    /// without a terminal (`terminalwire URL --help | less`), as a local clap
    /// program wraps it; never at the width of the server's own terminal or
    /// its `COLUMNS`. A `term_width` or `max_term_width` the app's command
    /// sets itself is not seen: clap offers no way to read it back.
    pub async fn parse_args<C: clap::Parser>(&self) -> Result<C, Exit> {
        let mut command = C::command()
            .bin_name(self.program_name().to_owned())
            .term_width(self.help_width());
        let argv =
            std::iter::once(self.program_name().to_owned()).chain(self.args().iter().cloned());
        let error = match command.try_get_matches_from_mut(argv) {
            Ok(mut matches) => match C::from_arg_matches_mut(&mut matches) {
                Ok(parsed) => return Ok(parsed),
                Err(error) => error.with_cmd(&command),
            },
            Err(error) => error,
        };
        let output = if error.use_stderr() {
            self.stderr()
        } else {
            self.stdout()
        };
        let styled = error.render();
        // As a local clap program: the app's choice, else what the client's
        // stream supports (its terminal, `NO_COLOR`, `CLICOLOR_FORCE`).
        let coloured = match command.get_color() {
            ColorChoice::Never => false,
            ColorChoice::Always => true,
            ColorChoice::Auto => output.info().color != ColorLevel::None,
        };
        let text = if coloured {
            styled.ansi().to_string()
        } else {
            styled.to_string()
        };
        // If the client is gone there is nobody to tell.
        let _ = output.write_all(text.as_bytes()).await;
        Err(Exit(u8::try_from(error.exit_code()).unwrap_or(2)))
    }

    /// The width clap wraps help to, as a local program's clap finds it on
    /// the client: the client's terminal (stdout's, else stdin's, else
    /// stderr's), else clap's own default for no terminal. Always set: left
    /// to itself, clap would measure the *server's* terminal, or read the
    /// server's `COLUMNS`.
    fn help_width(&self) -> usize {
        self.shared
            .signals()
            .size
            .or(self.terminal().stderr.size)
            .map_or(NO_TERMINAL_WIDTH, |(columns, _)| usize::from(columns))
    }
}

/// The width clap wraps help to when there is no terminal (`wrap_help`).
const NO_TERMINAL_WIDTH: usize = 100;
