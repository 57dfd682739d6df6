//! `sentinel lists`: the safelist and the badlist of a data directory (docs/storage.md). A hash
//! on the safelist is answered y = 0, one on the badlist y = 1, at once and without analysis, by
//! the protocol and the HTTP API alike (docs/malware-api.md). A running server on the same data
//! directory sees a change from its next request on: it reads the lists from the store for
//! every request. Each change is recorded in the audit table under `cli:USER`.

use std::path::PathBuf;

use anyhow::Context;
use sentinel_store::{
    HashList, ListEntry, ListQuery, NewAuditEvent, NewListEntry, Store, local_user_principal,
};

use crate::commands::datasets::{self, DataDir};
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
    /// Put a hash on a list (moving it from the other list if it is there).
    Add {
        /// `safe` or `bad`.
        list: HashList,
        /// The file's SHA-256 (64 hex digits).
        #[arg(long)]
        sha256: String,
        /// Why it is listed (1 to 1024 bytes): shown in the answers it gets.
        #[arg(long)]
        reason: String,
        /// Where the decision comes from: a ticket, a feed, an analyst.
        #[arg(long, default_value = "cli")]
        source: String,
    },
    /// Take a hash off a list.
    Remove {
        /// `safe` or `bad`.
        list: HashList,
        #[arg(long)]
        sha256: String,
    },
    /// Print a list: SHA256 REASON SOURCE ADDED ADDED_BY, ordered by hash.
    List {
        /// `safe` or `bad`.
        list: HashList,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import entries from CSV (`sha256,reason,source`; an empty source becomes `import`).
    Import {
        /// `safe` or `bad`.
        list: HashList,
        file: PathBuf,
    },
    /// Export a list as CSV (`sha256,reason,source`).
    Export {
        /// `safe` or `bad`.
        list: HashList,
        file: PathBuf,
    },
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let store = args.data_dir.open_store(config)?;
    let principal = local_user_principal();
    match args.command {
        Command::Add { list, sha256, reason, source } => {
            let entry = NewListEntry {
                sha256: &sha256,
                list,
                reason: &reason,
                source: &source,
                added_by: &principal,
            };
            let added = store.add_list_entry(&entry);
            let event = audit_event(&principal, "list.add", list, &sha256, added.is_ok())
                .with_detail("reason", reason.as_str())
                .with_detail("source", source.as_str());
            let event = match &added {
                Ok(Some(replaced)) => event.with_detail("replaced_list", replaced.list.as_str()),
                _ => event,
            };
            record(&store, event)?;
            let replaced = added.with_context(|| format!("cannot add {sha256} to the {list} list"))?;
            let sha256 = sha256.to_ascii_lowercase();
            match replaced {
                Some(previous) if previous.list != list => {
                    println!("{sha256} moved from the {} list to the {list} list", previous.list);
                }
                Some(_) => println!("{sha256} updated on the {list} list"),
                None => println!("{sha256} added to the {list} list"),
            }
            Ok(())
        }
        Command::Remove { list, sha256 } => {
            let removed = store.remove_list_entry(list, &sha256);
            let done = matches!(removed, Ok(Some(_)));
            record(&store, audit_event(&principal, "list.remove", list, &sha256, done))?;
            match removed.with_context(|| format!("cannot remove {sha256} from the {list} list"))? {
                Some(entry) => {
                    println!("{} removed from the {list} list", entry.sha256);
                    Ok(())
                }
                None => anyhow::bail!("{} is not on the {list} list", sha256.to_ascii_lowercase()),
            }
        }
        Command::List { list, json } => {
            let entries = store.list_entries(&ListQuery { list, after: None, limit: None })?;
            print_entries(&entries, json);
            Ok(())
        }
        Command::Import { list, file } => {
            let imported = datasets::import(&file, |input| store.import_list_csv(list, input, &principal));
            let event = NewAuditEvent::new(
                principal.as_str(),
                "list.import",
                Some(list.as_str().to_owned()),
                if imported.is_ok() { "ok" } else { "failed" },
                None,
            )
            .with_detail("file", file.display().to_string());
            record(&store, event)?;
            imported
        }
        Command::Export { list, file } => {
            datasets::export(&file, "entries", |output| store.export_list_csv(list, output))
        }
    }
}

/// A change of `list` about `sha256` by the local user, for the audit table.
fn audit_event(principal: &str, action: &str, list: HashList, sha256: &str, done: bool) -> NewAuditEvent {
    let outcome = if done { "ok" } else { "failed" };
    let target = format!("{list}:{}", sha256.to_ascii_lowercase());
    NewAuditEvent::new(principal, action, Some(target), outcome, None)
}

fn record(store: &Store, event: NewAuditEvent) -> anyhow::Result<()> {
    store.record_audit_event(event).context("cannot record the command in the audit table")?;
    Ok(())
}

fn print_entries(entries: &[ListEntry], json: bool) {
    if json {
        for entry in entries {
            let line = serde_json::json!({
                "sha256": entry.sha256,
                "list": entry.list.as_str(),
                "reason": entry.reason,
                "source": entry.source,
                "added_at": entry.added_at,
                "added_by": entry.added_by,
            });
            println!("{line}");
        }
        return;
    }
    let mut rows = table::new(Style::Columns, &["SHA256", "REASON", "SOURCE", "ADDED", "ADDED BY"], &[]);
    for entry in entries {
        let added = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(entry.added_at).unwrap_or(0));
        rows.add_row([
            entry.sha256.clone(),
            entry.reason.clone(),
            entry.source.clone(),
            humantime::format_rfc3339_seconds(added).to_string(),
            entry.added_by.clone(),
        ]);
    }
    println!("{rows}");
}
