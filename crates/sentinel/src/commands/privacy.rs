//! `sentinel privacy`: the addresses of a data directory's store, from clear to stored form and
//! back, with its key (`[privacy]`, `SENTINEL_PRIVACY_KEY`): how an operator finds the rows of
//! a known address (`pseudonymise`) or answers "which client sent this sample" from a
//! verdict's pseudonymised `client` (`reveal`), without clear addresses in the store.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use sentinel_privacy::{IpStorage, PrivacyKey, PrivacySettings, Pseudonymiser};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Data directory whose key is used (as for `sentinel serve`). Default: the configuration's
    /// `data_dir`, else ./sentinel-data.
    #[arg(long, global = true, env = "SENTINEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print each address in its stored form (`[privacy] ip_storage`), as `ADDRESS FORM` lines.
    Pseudonymise {
        #[arg(required = true, value_name = "IP")]
        addresses: Vec<IpAddr>,
    },
    /// Print the address of each prefix-preserving pseudonym, as `PSEUDONYM ADDRESS` lines.
    Reveal {
        #[arg(required = true, value_name = "PSEUDONYM")]
        pseudonyms: Vec<IpAddr>,
    },
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let settings: PrivacySettings = config.section("privacy")?;
    let data_dir = config.resolve_data_dir(args.data_dir);
    let pseudonymiser = || -> anyhow::Result<Pseudonymiser> {
        // Never created here: a new key would match nothing stored.
        let key = match PrivacyKey::from_env()? {
            Some(key) => key,
            None => {
                let path = settings.key_path(&data_dir);
                PrivacyKey::load(&path).with_context(|| {
                    format!(
                        "no privacy key at {} (`sentinel serve` creates it on first start)",
                        path.display()
                    )
                })?
            }
        };
        Ok(Pseudonymiser::new(settings.ip_storage, &key)?)
    };
    match args.command {
        Command::Pseudonymise { addresses } => {
            let pseudonymiser = match settings.ip_storage {
                IpStorage::Clear => Pseudonymiser::clear(),
                _ => pseudonymiser()?,
            };
            for address in addresses {
                println!("{address} {}", pseudonymiser.display(address));
            }
        }
        Command::Reveal { pseudonyms } => {
            match settings.ip_storage {
                IpStorage::PrefixPreserving => {}
                IpStorage::Hmac => bail!(
                    "ip_storage = \"hmac\": its pseudonyms cannot be reversed; `sentinel privacy pseudonymise` candidate addresses and compare"
                ),
                IpStorage::Clear => bail!("ip_storage = \"clear\": addresses are stored as they are"),
            }
            let pseudonymiser = pseudonymiser()?;
            for pseudonym in pseudonyms {
                let address = pseudonymiser.reveal(pseudonym).context("no key")?;
                println!("{pseudonym} {address}");
            }
        }
    }
    Ok(())
}
