//! `amqp://` / `amqps://` URLs with the adapter's own options.

use std::time::Duration;

use pipeline_core::{Error, Result};

/// Which kind of queue to declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Durable classic queues (single node, or mirrored by policy).
    Classic,
    /// Replicated quorum queues for clusters, with a delivery limit.
    Quorum,
}

/// Connection settings parsed from a URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitConfig {
    /// One AMQP URI per host, tried in order (adapter options removed).
    pub uris: Vec<String>,
    /// Classic or quorum queues (`?queue_type=`).
    pub queue_type: QueueType,
    /// Unused queues are deleted by the server after this long
    /// (`?expires_ms=`; for tests and ephemeral environments).
    pub queue_expiry: Option<Duration>,
    /// How long a publish waits for a reconnecting broker (`?publish_timeout_ms=`).
    pub publish_timeout: Duration,
    /// Channels publishes are spread over (`?publish_channels=`).
    pub publish_channels: usize,
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field(
                "uris",
                &self.uris.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("queue_type", &self.queue_type)
            .field("queue_expiry", &self.queue_expiry)
            .field("publish_timeout", &self.publish_timeout)
            .field("publish_channels", &self.publish_channels)
            .finish()
    }
}

pub use pipeline_core::config::redact_url as redact;

impl RabbitConfig {
    /// Parse `amqp[s]://user:pass@host1[:port][,host2[:port]...]/vhost?options`.
    ///
    /// Adapter options: `queue_type=classic|quorum`, `expires_ms=N`,
    /// `publish_timeout_ms=N`, `publish_channels=N`; every other query
    /// parameter (`heartbeat`, `connection_timeout`, `frame_max`...) goes
    /// to the AMQP client. A heartbeat of 10 s is set unless given.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: String| Error::Config(format!("RabbitMQ URL {}: {why}", redact(url)));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected amqp://user:pass@host:5672/vhost".into()))?;
        if scheme != "amqp" && scheme != "amqps" {
            return Err(bad(format!("scheme {scheme:?} is not amqp or amqps")));
        }
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) =
            before_query.split_at(before_query.find('/').unwrap_or(before_query.len()));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let hosts: Vec<&str> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.is_empty() {
            return Err(bad("no host".into()));
        }
        let mut config = Self {
            uris: Vec::new(),
            queue_type: QueueType::Classic,
            queue_expiry: None,
            publish_timeout: Duration::from_secs(30),
            publish_channels: 4,
        };
        let mut passthrough = Vec::new();
        let mut heartbeat = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |what: &str| -> Result<u64> {
                v.parse()
                    .map_err(|_| bad(format!("{what} {v:?} is not a number")))
            };
            match k {
                "queue_type" => {
                    config.queue_type = match v {
                        "classic" => QueueType::Classic,
                        "quorum" => QueueType::Quorum,
                        other => {
                            return Err(bad(format!(
                                "queue_type {other:?} is not classic or quorum"
                            )));
                        }
                    }
                }
                "expires_ms" => {
                    config.queue_expiry =
                        Some(Duration::from_millis(number("expires_ms")?.max(1000)))
                }
                "publish_timeout_ms" => {
                    config.publish_timeout = Duration::from_millis(number("publish_timeout_ms")?)
                }
                "publish_channels" => {
                    config.publish_channels = number("publish_channels")?.clamp(1, 64) as usize
                }
                _ => {
                    heartbeat |= k == "heartbeat";
                    passthrough.push(pair.to_string());
                }
            }
        }
        if !heartbeat {
            passthrough.push("heartbeat=10".into());
        }
        let query = passthrough.join("&");
        for host in hosts {
            let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            config
                .uris
                .push(format!("{scheme}://{auth}{host}{path}?{query}"));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_options() {
        let c = RabbitConfig::parse(
            "amqp://u:p@h1:5672,h2/vh?queue_type=quorum&heartbeat=5&expires_ms=60000",
        )
        .unwrap();
        assert_eq!(
            c.uris,
            vec![
                "amqp://u:p@h1:5672/vh?heartbeat=5",
                "amqp://u:p@h2/vh?heartbeat=5"
            ]
        );
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(c.queue_expiry, Some(Duration::from_secs(60)));
        let d = RabbitConfig::parse("amqp://127.0.0.1").unwrap();
        assert_eq!(d.uris, vec!["amqp://127.0.0.1?heartbeat=10"]);
        assert_eq!(d.queue_type, QueueType::Classic);
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = RabbitConfig::parse("amqp://u:secret@h?queue_type=fast")
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_type") && !e.contains("secret"), "{e}");
        let e = RabbitConfig::parse("http://u:secret@h")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(
            !format!("{:?}", RabbitConfig::parse("amqp://u:secret@h").unwrap()).contains("secret")
        );
        assert_eq!(
            redact("amqps://u:secret@a,b/v?x=1"),
            "amqps://u:***@a,b/v?x=1"
        );
    }
}
