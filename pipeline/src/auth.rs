//! How the API authenticates ([`AuthSettings`]), resolved against the
//! address it listens on.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pipeline_core::Error;
use pipeline_core::auth::{KeyStore, LinkSigner};
use pipeline_http::{Auth, RateLimits};

/// The authentication mode asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthChoice {
    /// `none` when the API listens on a loopback address only, `keys`
    /// otherwise.
    #[default]
    Auto,
    /// No authentication, wherever the API listens (asked explicitly).
    None,
    /// A proxy in front authenticates and names the tenant in this header.
    TrustedHeader(String),
    /// API keys (`pipeline keys create`).
    Keys,
}

/// Authentication settings of the API.
#[derive(Clone)]
pub struct AuthSettings {
    /// The mode.
    pub mode: AuthChoice,
    /// Secret signing result and original links (at least 32 bytes); the
    /// same on every API process. Unset: a random one per process.
    pub url_secret: Option<String>,
    /// The secret before the last rotation: links it signed still pass.
    pub url_secret_previous: Option<String>,
    /// How long a signed link stays valid.
    pub link_ttl: Duration,
    /// How long a key looked up stays trusted (the longest a revocation
    /// takes to reach a running API process).
    pub key_cache: Duration,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("url_secret", &self.url_secret.as_ref().map(|_| "<set>"))
            .field(
                "url_secret_previous",
                &self.url_secret_previous.as_ref().map(|_| "<set>"),
            )
            .field("link_ttl", &self.link_ttl)
            .field("key_cache", &self.key_cache)
            .finish()
    }
}

impl Default for AuthSettings {
    /// Auto mode, links valid for an hour, keys cached for 5 s.
    fn default() -> Self {
        Self {
            mode: AuthChoice::Auto,
            url_secret: None,
            url_secret_previous: None,
            link_ttl: Duration::from_secs(3600),
            key_cache: Duration::from_secs(5),
        }
    }
}

/// The API's [`Auth`] for a listener bound to `bound`, with the keys of
/// the archive.
pub(crate) fn resolve(
    settings: &AuthSettings,
    rates: RateLimits,
    bound: SocketAddr,
    keys: Option<Arc<dyn KeyStore>>,
) -> Result<Auth, Error> {
    let loopback = bound.ip().is_loopback();
    let mode = match &settings.mode {
        AuthChoice::Auto if loopback => AuthChoice::None,
        AuthChoice::Auto => AuthChoice::Keys,
        other => other.clone(),
    };
    let signer = || -> Result<LinkSigner, Error> {
        match &settings.url_secret {
            Some(secret) => LinkSigner::new(
                secret.as_bytes(),
                settings.url_secret_previous.as_deref().map(str::as_bytes),
            )
            .map_err(|e| Error::Config(format!("PIPELINE_URL_SECRET: {e}"))),
            None => {
                tracing::warn!(
                    "PIPELINE_URL_SECRET is not set: signed links use a random secret, so they work only on this API process and until it restarts"
                );
                LinkSigner::random()
            }
        }
    };
    let auth = match mode {
        AuthChoice::None | AuthChoice::Auto => {
            if loopback {
                tracing::info!(addr = %bound, "auth is off (PIPELINE_AUTH=none): the API listens on a loopback address only");
            } else {
                tracing::warn!(addr = %bound, "auth is off (PIPELINE_AUTH=none): anyone who reaches this address can read and write every tenant's images");
            }
            Auth::none()
        }
        AuthChoice::TrustedHeader(name) => {
            let header = axum_header(&name)?;
            Auth::trusted_header(header, signer()?)
        }
        AuthChoice::Keys => {
            let keys = keys.ok_or_else(|| {
                Error::Config(
                    "PIPELINE_AUTH=keys needs the archive database, where keys are kept".into(),
                )
            })?;
            Auth::keys(keys, signer()?)
        }
    };
    Ok(auth
        .with_link_ttl(settings.link_ttl)
        .with_key_cache(settings.key_cache)
        .with_rates(rates))
}

fn axum_header(name: &str) -> Result<pipeline_http::HeaderName, Error> {
    pipeline_http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        Error::Config(format!(
            "PIPELINE_TRUSTED_HEADER: {name:?} is not a header name"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn auto_is_off_on_loopback_only() {
        let store: Arc<dyn KeyStore> = Arc::new(pipeline_core::memory::MemoryArchive::new());
        let s = AuthSettings::default();
        let on = |a: &str| {
            resolve(&s, RateLimits::default(), addr(a), Some(store.clone()))
                .unwrap()
                .mode()
                .name()
        };
        assert_eq!(on("127.0.0.1:4555"), "none");
        assert_eq!(on("[::1]:4555"), "none");
        assert_eq!(on("0.0.0.0:4555"), "keys");
        assert_eq!(on("192.168.1.5:4555"), "keys");
        // Keys need a store.
        assert!(resolve(&s, RateLimits::default(), addr("0.0.0.0:1"), None).is_err());
        // `none` anywhere when asked.
        let none = AuthSettings {
            mode: AuthChoice::None,
            ..AuthSettings::default()
        };
        assert_eq!(
            resolve(&none, RateLimits::default(), addr("0.0.0.0:1"), None)
                .unwrap()
                .mode()
                .name(),
            "none"
        );
    }

    #[test]
    fn a_short_url_secret_is_refused() {
        let s = AuthSettings {
            mode: AuthChoice::TrustedHeader("x-user-tenant".into()),
            url_secret: Some("too short".into()),
            ..AuthSettings::default()
        };
        let err = resolve(&s, RateLimits::default(), addr("0.0.0.0:1"), None).unwrap_err();
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        let bad_header = AuthSettings {
            mode: AuthChoice::TrustedHeader("not a header".into()),
            ..AuthSettings::default()
        };
        assert!(resolve(&bad_header, RateLimits::default(), addr("0.0.0.0:1"), None).is_err());
    }
}
