//! clap integration: define the remote CLI with clap; help, version and usage
//! errors reach the client exactly as a local clap program would print them.

use crate::context::{ColorLevel, Context};
use crate::outcome::Exit;

impl Context {
    /// Parses the client's arguments with clap.
    ///
    /// On `--help`, `--version` or a usage error, prints clap's text on the
    /// client (help and version on stdout, errors on stderr, coloured when that
    /// client stream supports colour, wrapped to the client's terminal width)
    /// and returns [`Exit`] with clap's status (0 or 2), which a command
    /// propagates with `?`.
    pub async fn parse_args<C: clap::Parser>(&self) -> Result<C, Exit> {
        let mut command = C::command().bin_name(self.program_name().to_owned());
        if let Some((cols, _)) = self.terminal().stdout.size {
            command = command.term_width(usize::from(cols));
        }
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
        let text = if output.info().color == ColorLevel::None {
            styled.to_string()
        } else {
            styled.ansi().to_string()
        };
        // If the client is gone there is nobody to tell.
        let _ = output.write_all(text.as_bytes()).await;
        Err(Exit(u8::try_from(error.exit_code()).unwrap_or(2)))
    }
}
