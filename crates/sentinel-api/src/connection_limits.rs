//! The limits each connection of the HTTP listener lives under, read from `[http]`: how many may
//! be open (in all and per client address) and how long a client may stay silent. The global
//! cap is lowered to half the process's descriptor limit: the other half stays for the
//! protocol listener, the stores, the collector and the sockets the services open, which an
//! HTTP flood must not starve.

use std::time::Duration;

use sentinel_transport::GateLimits;

use crate::settings::HttpSettings;

/// What `[http]` says about connections, once checked against the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    pub gate: GateLimits,
    pub header_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

impl ConnectionLimits {
    pub fn from_settings(settings: &HttpSettings) -> ConnectionLimits {
        ConnectionLimits::within(settings, descriptor_limit())
    }

    /// The limits of `settings` with the global cap at most half of `descriptors`.
    fn within(settings: &HttpSettings, descriptors: Option<u64>) -> ConnectionLimits {
        let mut max_connections = settings.max_connections;
        if let Some(descriptors) = descriptors {
            let ceiling = usize::try_from(descriptors / 2).unwrap_or(usize::MAX).max(1);
            if max_connections > ceiling {
                tracing::warn!(
                    configured = max_connections,
                    used = ceiling,
                    descriptor_limit = descriptors,
                    "[http] max_connections lowered to half the process's descriptor limit (RLIMIT_NOFILE)"
                );
                max_connections = ceiling;
            }
        }
        ConnectionLimits {
            gate: GateLimits {
                max_connections,
                max_per_client: settings.max_connections_per_client.min(max_connections),
            },
            header_timeout: settings.header_timeout,
            tls_handshake_timeout: settings.tls_handshake_timeout,
        }
    }
}

/// The soft limit on open descriptors, where there is one.
#[cfg(unix)]
fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given and has no other effect.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (status == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn descriptor_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_cap_stays_below_half_the_descriptors_and_bounds_the_per_client_cap() {
        let settings = HttpSettings { max_connections: 1024, ..HttpSettings::default() };
        assert_eq!(ConnectionLimits::within(&settings, Some(20_000)).gate.max_connections, 1024);
        assert_eq!(ConnectionLimits::within(&settings, None).gate.max_connections, 1024);
        let lowered = ConnectionLimits::within(&settings, Some(1024)).gate;
        assert_eq!((lowered.max_connections, lowered.max_per_client), (512, 64));
        let tiny = ConnectionLimits::within(&settings, Some(40)).gate;
        assert_eq!((tiny.max_connections, tiny.max_per_client), (20, 20));
        assert!(descriptor_limit().is_some_and(|limit| limit > 0));
    }
}
