//! `sentinel client`: sends one protocol request to a running server and
//! prints the answer — status, verdict `y`, each analysis's score, and with
//! `--error-detail` the reason of a `No` and, for a hash answered from the
//! safelist or badlist, which list and why. For operators checking a server and
//! for scripts (`--json`). With `--tls` it speaks to the TLS listener, trusting
//! the CA of `--ca` and presenting `--cert`/`--key` where the server requires
//! a client certificate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use sentinel_protocol::{Client, Command, Request, Response};
use sentinel_transport::TlsClientOptions;
use sentinel_transport::tokio_rustls::rustls::pki_types::ServerName;
use serde_json::json;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Server address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:9500")]
    server: String,
    /// Command: 1-6, or static, dynamic, vt, static-vt, dynamic-vt, all.
    #[arg(long, default_value = "static", value_parser = parse_command)]
    command: Command,
    /// The executable to analyse (may be omitted with `--command vt --sha256 …`).
    file: Option<PathBuf>,
    /// SHA-256 to send with the file (64 hex digits); the server checks it.
    #[arg(long)]
    sha256: Option<String>,
    /// VirusTotal API key, sent as field [2]. Prefer the environment variable:
    /// a command-line argument is visible to other users in the process list.
    #[arg(long, env = "SENTINEL_VT_KEY", hide_env_values = true)]
    vt_key: Option<String>,
    /// Behaviour report sent as field [3] for dynamic analysis (a CAPE v2 JSON
    /// report or a JSON list of API names): the server scores it instead of
    /// running its sandbox.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Ask the server for the reason of a failure, and which list answered a hash on its
    /// safelist or badlist (protocol extensions).
    #[arg(long)]
    error_detail: bool,
    /// Print the response as JSON.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the response.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How to reach a TLS protocol listener.
#[derive(clap::Args)]
pub struct TlsArgs {
    /// Speak TLS 1.3 (to the server's `--tcp-tls-listen` port).
    #[arg(long)]
    tls: bool,
    /// CA certificate(s), PEM, that the server's certificate must chain to (implies --tls).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate, PEM, for servers that require one (mutual TLS); with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The name the server's certificate must hold; default: the host of --server.
    #[arg(long)]
    server_name: Option<String>,
}

impl TlsArgs {
    /// Connects to `server`, in TLS when asked.
    pub async fn connect(&self, server: &str) -> anyhow::Result<Client> {
        if !self.tls && self.ca.is_none() && self.cert.is_none() {
            return Client::connect(server).await.with_context(|| format!("server {server}"));
        }
        let Some(ca) = &self.ca else {
            anyhow::bail!("--tls needs --ca FILE: the CA certificate the server's certificate must chain to");
        };
        let config = sentinel_transport::client_config(&TlsClientOptions {
            ca_file: ca.clone(),
            certificate_file: self.cert.clone(),
            key_file: self.key.clone(),
            alpn_protocols: Vec::new(),
        })?;
        let name = self.server_name.clone().unwrap_or_else(|| host_of(server).to_owned());
        let name =
            ServerName::try_from(name.clone()).with_context(|| format!("{name:?} is not a server name"))?;
        Client::connect_tls(server, name, config).await.with_context(|| format!("server {server}"))
    }
}

/// The host part of `HOST:PORT` or `[IPV6]:PORT`.
fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host)
}

fn parse_command(text: &str) -> Result<Command, String> {
    let by_name = match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "static" | "static-analyse" => Some(Command::StaticAnalyse),
        "dynamic" | "dynamic-analyse" => Some(Command::DynamicAnalyse),
        "vt" | "vt-analyse" => Some(Command::VtAnalyse),
        "static-vt" | "static-analyse-with-vt" => Some(Command::StaticAnalyseWithVt),
        "dynamic-vt" | "dynamic-analyse-with-vt" => Some(Command::DynamicAnalyseWithVt),
        "all" | "all-analyse" => Some(Command::AllAnalyse),
        _ => None,
    };
    by_name
        .or_else(|| text.parse::<u32>().ok().and_then(Command::from_wire).filter(|c| *c != Command::Options))
        .ok_or_else(|| {
            format!("unknown command {text:?}: use 1-6 or static, dynamic, vt, static-vt, dynamic-vt, all")
        })
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let executable = match &args.file {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None if args.sha256.is_some() => Vec::new(),
        None => anyhow::bail!("give a FILE, or --sha256 for a VirusTotal lookup by hash"),
    };
    let mut fields = vec![Bytes::from(executable)];
    if args.sha256.is_some() || args.vt_key.is_some() || args.report.is_some() {
        fields.push(Bytes::from(args.sha256.clone().unwrap_or_default()));
    }
    if args.vt_key.is_some() || args.report.is_some() {
        fields.push(Bytes::from(args.vt_key.clone().unwrap_or_default()));
    }
    if let Some(path) = &args.report {
        let report = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        fields.push(Bytes::from(report));
    }
    let request = Request::new(args.command, fields);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (response, error_detail) = runtime.block_on(async {
        let mut client = args.tls.connect(&args.server).await?;
        client.set_response_timeout(Duration::from_secs(args.timeout));
        let error_detail = args.error_detail && client.enable_error_detail().await?;
        if args.error_detail && !error_detail {
            eprintln!("note: the server does not support error details");
        }
        // The same opt-in asks which list answered, if one did; a server that does not know
        // the option keeps its `Yes` plain.
        if error_detail {
            client.enable_list_detail().await?;
        }
        anyhow::Ok((client.request(&request).await?, error_detail))
    })?;
    print_response(args.command, &response, error_detail, args.json);
    Ok(())
}

fn print_response(command: Command, response: &Response, error_detail: bool, as_json: bool) {
    match response {
        Response::Yes(scores) | Response::Listed(scores, _) => {
            let y = scores.first().copied();
            let steps: Vec<(&str, f32)> = command
                .analyses()
                .iter()
                .map(|step| step.name())
                .zip(scores.iter().skip(1).copied())
                .collect();
            let listed = match response {
                Response::Listed(_, detail) => Some(detail),
                _ => None,
            };
            if as_json {
                let scores: serde_json::Map<String, serde_json::Value> =
                    steps.iter().map(|(name, score)| ((*name).to_owned(), json!(score))).collect();
                let list = listed.map(
                    |detail| json!({ "list": detail.list, "reason": detail.reason, "source": detail.source }),
                );
                println!("{}", json!({ "status": "yes", "y": y, "scores": scores, "list": list }));
            } else {
                println!("status: Yes");
                if let Some(y) = y {
                    println!("y: {y:.6}");
                }
                if let Some(detail) = listed {
                    println!(
                        "answered by the {}: {} (source: {})",
                        detail.list, detail.reason, detail.source
                    );
                    return;
                }
                for (name, score) in steps {
                    println!("{name}: {score:.6}");
                }
            }
        }
        Response::No(detail) => {
            if as_json {
                let reason = detail.as_ref().map(|detail| {
                    json!({ "code": detail.code(), "name": detail.name(), "step": detail.step(), "message": detail.message() })
                });
                println!("{}", json!({ "status": "no", "reason": reason }));
            } else {
                println!("status: No");
                match detail {
                    Some(detail) => println!("reason: {detail}"),
                    None if !error_detail => println!("reason: (not asked; use --error-detail)"),
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_or_numbered() {
        assert_eq!(parse_command("static"), Ok(Command::StaticAnalyse));
        assert_eq!(parse_command("Static_analyse_with_Vt"), Ok(Command::StaticAnalyseWithVt));
        assert_eq!(parse_command("6"), Ok(Command::AllAnalyse));
        assert!(parse_command("100").is_err(), "the options command is not a user command");
        assert!(parse_command("7").is_err());
        assert!(parse_command("fast").is_err());
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(host_of("127.0.0.1:9443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9443"), "::1");
        assert_eq!(host_of("sentinel.example:9443"), "sentinel.example");
    }
}
