//! `sentinel`: the one binary of the project. It only parses the command line
//! and the configuration, then hands over to the crates that do the work.

mod commands;
mod config;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sentinel",
    version,
    about = "Security AI service: malware verdicts and network anomaly detection"
)]
struct Cli {
    /// Configuration file (TOML). `SENTINEL_…` environment variables override it.
    #[arg(long, global = true, env = "SENTINEL_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> std::process::ExitCode {
    // Before any TLS: the one rustls crypto provider of the process.
    sentinel_transport::install_crypto_provider();
    let cli = Cli::parse();
    let result = config::Config::load(cli.config.as_deref()).and_then(|config| cli.command.run(&config));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
