//! The `auth-service` binary: the command line into a `cli::Command` (serve, or an operator's
//! command), then run it.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use auth_service::cli;

fn main() -> ExitCode {
    let args = std::env::args().skip(1);
    match cli::parse(args, |name| std::env::var(name).ok()) {
        Ok(command) => cli::run(command),
        Err(e) => {
            eprintln!("auth-service: {e}");
            ExitCode::from(2)
        }
    }
}
