//! `terminalwire-exec LAUNCHER ARGS...`: the interpreter of launchers
//! (`#!/usr/bin/env terminalwire-exec`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Whatever name it was called by, this binary runs launchers.
    if let Some(argv0) = args.first_mut() {
        *argv0 = terminalwire_client::launcher::EXEC_NAME.into();
    }
    ExitCode::from(terminalwire_client::main_with_args(args))
}
