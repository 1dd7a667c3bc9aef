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
    /// Storage version of classic queues (`?queue_version=1|2`; RabbitMQ
    /// 3.10 and later; the server's default when absent).
    pub queue_version: Option<u8>,
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
            .field("queue_version", &self.queue_version)
            .finish()
    }
}

use pipeline_core::urls::BackendUrl;
pub use pipeline_core::urls::redact;

impl RabbitConfig {
    /// Parse `amqp[s]://user:pass@host1[:port][,host2[:port]...]/vhost?options`.
    ///
    /// Adapter options: `queue_type=classic|quorum`, `queue_version=1|2`
    /// (classic queues), `expires_ms=N`, `publish_timeout_ms=N`,
    /// `publish_channels=N`; every other query
    /// parameter (`heartbeat`, `connection_timeout`, `frame_max`...) goes
    /// to the AMQP client. A heartbeat of 10 s is set unless given.
    pub fn parse(url: &str) -> Result<Self> {
        let mut u = BackendUrl::parse(url)?;
        let bad = |u: &BackendUrl, why: String| Error::Config(format!("RabbitMQ URL {u}: {why}"));
        if u.scheme() != "amqp" && u.scheme() != "amqps" {
            return Err(bad(
                &u,
                format!("scheme {:?} is not amqp or amqps", u.scheme()),
            ));
        }
        if u.host().is_none_or(str::is_empty) {
            return Err(bad(&u, "no host".into()));
        }
        let queue_type = match u.take("queue_type").as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(bad(
                    &u,
                    format!("queue_type {other:?} is not classic or quorum"),
                ));
            }
        };
        let queue_version = match u.take("queue_version").as_deref() {
            None => None,
            Some("1") => Some(1),
            Some("2") => Some(2),
            Some(other) => {
                return Err(bad(&u, format!("queue_version {other:?} is not 1 or 2")));
            }
        };
        if queue_version.is_some() && queue_type == QueueType::Quorum {
            return Err(bad(
                &u,
                "queue_version applies to classic queues, not quorum ones".into(),
            ));
        }
        let expires: Option<u64> = u.take_parsed("expires_ms")?;
        let publish_timeout: Option<u64> = u.take_parsed("publish_timeout_ms")?;
        let channels: Option<u64> = u.take_parsed("publish_channels")?;
        u.set_default("heartbeat", "10");
        Ok(Self {
            uris: u.per_host(),
            queue_type,
            queue_expiry: expires.map(|ms| Duration::from_millis(ms.max(1000))),
            publish_timeout: Duration::from_millis(publish_timeout.unwrap_or(30_000)),
            publish_channels: channels.unwrap_or(4).clamp(1, 64) as usize,
            queue_version,
        })
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
        let e = RabbitConfig::parse("amqp://u:se/krit@h/v")
            .unwrap_err()
            .to_string();
        assert!(e.contains("percent-encode") && !e.contains("krit"), "{e}");
        let c = RabbitConfig::parse("amqp://u:pa%2Fss@h/%2f").unwrap();
        assert_eq!(c.uris, vec!["amqp://u:pa%2Fss@h/%2f?heartbeat=10"]);
        assert_eq!(d.queue_type, QueueType::Classic);
        assert_eq!(d.queue_version, None);
        let v = RabbitConfig::parse("amqp://h?queue_version=2").unwrap();
        assert_eq!(
            (v.queue_version, v.uris[0].contains("queue_version")),
            (Some(2), false)
        );
        for bad in [
            "amqp://h?queue_version=3",
            "amqp://h?queue_type=quorum&queue_version=2",
        ] {
            let e = RabbitConfig::parse(bad).unwrap_err().to_string();
            assert!(e.contains("queue_version"), "{bad}: {e}");
        }
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
