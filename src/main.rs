//! The `auth-service` binary: flags and environment into a `Config`, then run.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use auth_service::config::{self, Command, Config};

fn main() -> ExitCode {
    let command = match Config::parse(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("auth-service: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => print!("{}", config::help()),
        Command::Version => println!("auth-service {}", env!("CARGO_PKG_VERSION")),
        Command::Run(config) => {
            if let Err(e) = auth_service::server::run(*config) {
                eprintln!("auth-service: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
