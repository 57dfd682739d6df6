//! The subcommands of `sentinel`, one module each.

mod agent;
mod behaviour;
mod bench;
mod certs;
mod client;
mod datasets;
mod eval;
mod labels;
mod lists;
mod models;
mod privacy;
mod scan;
mod serve;
mod serve_alerts;
mod serve_auth;
mod store;
mod table;
mod token;
mod train;
mod vt_results;

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Run the server: the TCP malware-analysis protocol and the HTTP API.
    Serve(serve::Args),
    /// Run the network collectors and ship their records to a server.
    Agent(agent::Args),
    /// Offline static verdicts for files and directories.
    Scan(scan::Args),
    /// Send one protocol request to a running server.
    Client(client::Args),
    /// Certificates to try TLS and mutual TLS: a private CA, a server and a client certificate.
    #[command(subcommand)]
    Certs(certs::Command),
    /// Offline behaviour verdicts (and families) for CAPE reports or API-call lists.
    Behaviour(behaviour::Args),
    /// Train a model from data.
    #[command(subcommand)]
    Train(train::Command),
    /// Score a labelled data set with a model and print its evaluation.
    #[command(subcommand)]
    Eval(eval::Command),
    /// Measure speed and quality against the peers a user would otherwise pick.
    #[command(subcommand)]
    Bench(bench::Command),
    /// The labelled-samples dataset: set a label by hand, CSV import and export.
    Labels(labels::Args),
    /// The VirusTotal results dataset: CSV import and export.
    VtResults(vt_results::Args),
    /// The safelist and the badlist: hashes answered y = 0 or 1 at once, without analysis.
    Lists(lists::Args),
    /// The model registry: versions, decisions, activating a version (rollback).
    Models(models::Args),
    /// The HTTP API's tokens: create (printed once), list, revoke.
    Token(token::Args),
    /// Stored IP addresses: pseudonymise an address, reveal a prefix-preserving pseudonym.
    Privacy(privacy::Args),
    /// Encryption at rest: make a store key, encrypt a plain store, change the key.
    Store(store::Args),
}

impl Command {
    pub fn run(self, config: &Config) -> anyhow::Result<()> {
        match self {
            Command::Serve(args) => serve::run(args, config),
            Command::Agent(args) => agent::run(args, config),
            Command::Scan(args) => scan::run(args, config),
            Command::Client(args) => client::run(args, config),
            Command::Certs(command) => command.run(config),
            Command::Behaviour(args) => behaviour::run(args, config),
            Command::Train(command) => command.run(config),
            Command::Eval(command) => command.run(config),
            Command::Bench(command) => command.run(config),
            Command::Labels(args) => labels::run(args, config),
            Command::VtResults(args) => vt_results::run(args, config),
            Command::Lists(args) => lists::run(args, config),
            Command::Models(args) => models::run(args, config),
            Command::Token(args) => token::run(args, config),
            Command::Privacy(args) => privacy::run(args, config),
            Command::Store(args) => args.run(config),
        }
    }
}
