//! `sentinel certs init DIR`: a private CA, a server certificate and a client certificate
//! (rcgen, ECDSA P-256), so that TLS and mutual TLS can be tried in a minute without an
//! existing PKI. Keys are written with mode 0600; existing files are never overwritten. It
//! ends by printing what to give `serve` and `client`.
//!
//! For production the CA key belongs offline: this command is for trying, and for sites that
//! want a private CA of their own for the protocol's client certificates.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a private CA, a server certificate and a client certificate into DIR.
    Init(InitArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// Directory to write into (created if needed); files already there are not overwritten.
    dir: PathBuf,
    /// More names of the server certificate (DNS names or IP addresses), besides
    /// localhost, 127.0.0.1 and ::1; repeat or separate with commas.
    #[arg(long = "name", value_delimiter = ',')]
    names: Vec<String>,
    /// Common name of the client certificate: the client's identity on the server
    /// (recorded with its verdicts, key of its limits).
    #[arg(long, default_value = "sentinel-client")]
    client_name: String,
    /// Validity of the server and client certificates, in days (the CA's is ten times longer).
    #[arg(long, default_value_t = 397)]
    days: i64,
}

impl Command {
    pub fn run(self, _config: &Config) -> anyhow::Result<()> {
        match self {
            Command::Init(args) => init(&args),
        }
    }
}

/// The files `init` writes, in `dir`.
const FILES: [&str; 6] = ["ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"];

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let server_names = write_certificates(&args.dir, &args.names, &args.client_name, args.days)?;
    print_usage(&args.dir, &server_names, &args.client_name);
    Ok(())
}

/// Writes the CA, server and client certificates and keys into `dir` (for `init`, and for
/// `sentinel bench server --tls`); returns the server certificate's names.
pub(crate) fn write_certificates(
    dir: &Path,
    extra_names: &[String],
    client_name: &str,
    days: i64,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(days > 0, "--days must be at least 1");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(existing) = FILES.iter().map(|name| dir.join(name)).find(|path| path.exists()) {
        anyhow::bail!(
            "{} already exists: choose an empty directory (nothing was written)",
            existing.display()
        );
    }
    let now = OffsetDateTime::now_utc();
    // A little slack back in time, for clocks slightly behind.
    let not_before = now - Duration::hours(1);

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("Sentinel private CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (ca_params.not_before, ca_params.not_after) = (not_before, now + Duration::days(days * 10));
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca_certificate = ca_params.self_signed(&ca_key).context("cannot sign the CA certificate")?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    server_names
        .extend(extra_names.iter().map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()));
    let mut server_params = CertificateParams::new(server_names.clone())
        .context("a --name is neither a DNS name nor an IP address")?;
    server_params.distinguished_name = name("sentinel-server");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = leaf(server_params, &issuer, not_before, now + Duration::days(days))?;

    let mut client_params = CertificateParams::default();
    client_params.distinguished_name = name(client_name);
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = leaf(client_params, &issuer, not_before, now + Duration::days(days))?;

    write(dir, "ca.pem", &ca_certificate.pem(), false)?;
    write(dir, "ca.key", &ca_key_pem, true)?;
    write(dir, "server.pem", &server.0, false)?;
    write(dir, "server.key", &server.1, true)?;
    write(dir, "client.pem", &client.0, false)?;
    write(dir, "client.key", &client.1, true)?;
    Ok(server_names)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Signs an end-entity certificate; returns its PEM and its key's PEM.
fn leaf(
    mut params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = (not_before, not_after);
    let key = KeyPair::generate().context("cannot generate a key")?;
    let certificate = params.signed_by(&key, issuer).context("cannot sign a certificate")?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// Writes a new file; keys get mode 0600 from their creation, never readable by others.
fn write(dir: &Path, file: &str, contents: &str, secret: bool) -> anyhow::Result<()> {
    let path = dir.join(file);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(if secret { 0o600 } else { 0o644 });
    let mut out = options.open(&path).with_context(|| format!("cannot create {}", path.display()))?;
    out.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn print_usage(dir: &Path, server_names: &[String], client_name: &str) {
    let at = |file: &str| dir.join(file).display().to_string();
    println!("wrote in {}:", dir.display());
    println!("  ca.pem, ca.key          private CA (keep ca.key offline in production)");
    println!("  server.pem, server.key  server certificate for {}", server_names.join(", "));
    println!("  client.pem, client.key  client certificate, subject CN={client_name}");
    println!();
    println!("Serve the protocol over TLS 1.3, requiring client certificates:");
    println!(
        "  sentinel serve --tcp-tls-listen 127.0.0.1:9443 --tcp-tls-cert {} --tcp-tls-key {} --tcp-client-ca {}",
        at("server.pem"),
        at("server.key"),
        at("ca.pem")
    );
    println!("Send a request with the client certificate:");
    println!(
        "  sentinel client --server 127.0.0.1:9443 --tls --ca {} --cert {} --key {} FILE",
        at("ca.pem"),
        at("client.pem"),
        at("client.key")
    );
}
