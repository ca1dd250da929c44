//! The `terminalwire` binary: parses arguments and runs the client library.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(terminalwire_client::main_with_args(std::env::args_os()))
}
