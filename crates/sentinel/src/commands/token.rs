//! `sentinel token`: the API tokens of the HTTP API in a data directory (docs/security.md,
//! "Tokens"). `create` prints the new token alone on stdout — the only time it is shown; the
//! store keeps its hash. `list` shows names, scopes and dates, never a token; `revoke` refuses
//! a token from the next request on, in a running server too. `create` and `revoke` are
//! recorded in the audit table under the OS user who ran them (`cli:USER`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sentinel_auth::{Scopes, issue_api_token};
use sentinel_store::{ApiTokenRecord, NewAuditEvent, Store, local_user_principal};

use crate::commands::datasets::DataDir;
use crate::commands::table::{self, Style};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data_dir: DataDir,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Make a token and print it alone on stdout (it is not shown again).
    Create {
        /// Its name, unique in the data directory (what `list` and `revoke` call it).
        #[arg(long)]
        name: String,
        /// Its scopes, comma-separated: malware:scan, malware:read, network:read,
        /// network:analyze, network:ingest, network:train, network:feedback, network:pii, metrics:read,
        /// alerts:read, alerts:write, admin.
        #[arg(long, value_parser = parse_scopes)]
        scope: Scopes,
        /// Refused after this long (`90d`, `12h`); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// Every token: name, scopes, created, expires, last used (to the minute), revoked.
    List {
        /// One JSON object per token instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Refuse the token named NAME from the next request on.
    Revoke { name: String },
}

fn parse_scopes(list: &str) -> Result<Scopes, String> {
    let scopes = Scopes::parse_list(list).map_err(|error| error.to_string())?;
    if scopes.is_empty() {
        return Err("no scope given".to_owned());
    }
    Ok(scopes)
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let store = args.data_dir.open_store(config)?;
    match args.command {
        Command::Create { name, scope, expires } => {
            let issued = issue_api_token(&store, &name, scope, expires);
            let mut event = audit_event("token.create", &name, issued.is_ok())
                .with_detail("scopes", scope.to_string())
                .with_detail("expires_in_s", expires.map(|expires| expires.as_secs()));
            if let Err(error) = &issued {
                event = event.with_detail("error", error.to_string());
            }
            record(&store, event)?;
            let (secret, _) = issued.with_context(|| format!("cannot create the token {name:?}"))?;
            println!("{}", secret.expose());
        }
        Command::List { json } => {
            let tokens = store.api_tokens().context("cannot read the tokens")?;
            if json {
                for token in &tokens {
                    println!("{}", token_json(token));
                }
            } else {
                print_table(&tokens);
            }
        }
        Command::Revoke { name } => {
            let revoked = store.revoke_api_token(&name).context("cannot revoke the token")?;
            record(&store, audit_event("token.revoke", &name, revoked))?;
            if !revoked {
                anyhow::bail!("no token named {name:?} that is not revoked already");
            }
            eprintln!("token {name:?} revoked");
        }
    }
    Ok(())
}

/// A token command on `name` by the local user, for the audit table.
fn audit_event(action: &str, name: &str, done: bool) -> NewAuditEvent {
    let outcome = if done { "ok" } else { "failed" };
    NewAuditEvent::new(local_user_principal(), action, Some(name.to_owned()), outcome, None)
}

fn record(store: &Store, event: NewAuditEvent) -> anyhow::Result<()> {
    store.record_audit_event(event).context("cannot record the command in the audit table")?;
    Ok(())
}

fn token_json(token: &ApiTokenRecord) -> serde_json::Value {
    serde_json::json!({
        "name": token.name,
        "scopes": token.scopes.split_whitespace().collect::<Vec<_>>(),
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used": token.last_used,
        "revoked_at": token.revoked_at,
    })
}

fn print_table(tokens: &[ApiTokenRecord]) {
    let mut table =
        table::new(Style::Columns, &["NAME", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "REVOKED"], &[]);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs() as i64);
    for token in tokens {
        let expires = match token.expires_at {
            Some(at) if at <= now => format!("{} (expired)", time(Some(at))),
            at => time(at),
        };
        table.add_row([
            token.name.clone(),
            token.scopes.replace(' ', ","),
            time(Some(token.created_at)),
            expires,
            time(token.last_used),
            time(token.revoked_at),
        ]);
    }
    println!("{table}");
}

/// Unix seconds as an RFC 3339 UTC time to the second; `-` for none.
fn time(seconds: Option<i64>) -> String {
    seconds.and_then(|seconds| u64::try_from(seconds).ok()).map_or_else(
        || "-".to_owned(),
        |seconds| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string(),
    )
}
