//! The one rustls crypto provider of the process: aws-lc-rs, the one reqwest's rustls already
//! brings. rustls panics at the first handshake when no process-level provider is installed
//! and more than one is compiled in, so the binary installs it once at start-up; this crate's
//! own configurations name it explicitly and so never depend on that.

use std::sync::Arc;

use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};

/// Installs aws-lc-rs as the process-level provider. Idempotent: a second call, or a provider
/// installed before, leaves the installed one in place.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Lost race with another thread installing one: theirs stays, which is what we want.
        let _ = aws_lc_rs::default_provider().install_default();
    }
}

/// The provider every configuration of this crate is built with.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_keeps_one_provider() {
        install_crypto_provider();
        let first = Arc::clone(CryptoProvider::get_default().expect("installed"));
        install_crypto_provider();
        let second = CryptoProvider::get_default().expect("still installed");
        assert!(Arc::ptr_eq(&first, second));
    }
}
