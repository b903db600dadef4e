//! The `email2fa` binary: parse the command line, load settings, start
//! telemetry, hand over to the library.

use clap::Parser;

/// mimalloc rather than the system's allocator: see `Cargo.toml`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = email2fa::cli::Cli::parse();
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    email2fa::telemetry::init(&settings);
    match cli.run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
