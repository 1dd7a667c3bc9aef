//! The backends this build serves, by the Cargo features it was built with.

use pipeline_core::connect::{Backends, Kind};

/// Schemes of every adapter, with the feature of this crate that brings it.
const ALL: &[(Kind, &str, &str)] = &[
    (Kind::Broker, "amqp", "rabbitmq"),
    (Kind::Broker, "amqps", "rabbitmq"),
    (Kind::Broker, "redis", "redis"),
    (Kind::Broker, "rediss", "redis"),
    (Kind::Broker, "redis-cluster", "redis"),
    (Kind::Broker, "redis-sentinel", "redis"),
    (Kind::Broker, "nats", "nats"),
    (Kind::Broker, "tls", "nats"),
    (Kind::Results, "redis", "redis"),
    (Kind::Results, "rediss", "redis"),
    (Kind::Results, "redis-cluster", "redis"),
    (Kind::Results, "redis-sentinel", "redis"),
    (Kind::Results, "nats", "nats"),
    (Kind::Results, "tls", "nats"),
    (Kind::Archive, "sqlite", "sqlite"),
    (Kind::Archive, "postgres", "postgres"),
    (Kind::Archive, "postgresql", "postgres"),
    (Kind::Archive, "mysql", "mysql"),
    (Kind::Archive, "mariadb", "mysql"),
    (Kind::Blobs, "s3", "s3"),
    (Kind::Blobs, "nats", "nats"),
    (Kind::Blobs, "tls", "nats"),
];

/// `memory://`, `file://` and every adapter compiled in; a URL of an
/// adapter left out is refused with the feature that brings it.
pub fn compiled() -> Backends {
    let mut b = Backends::with_memory();
    for (kind, scheme, feature) in ALL {
        b.absent(
            *kind,
            scheme,
            &format!("the `{feature}` feature of the `pipeline` crate"),
        );
    }
    #[cfg(feature = "rabbitmq")]
    pipeline_rabbitmq::register(&mut b);
    #[cfg(feature = "redis")]
    pipeline_redis::register(&mut b);
    #[cfg(feature = "nats")]
    pipeline_nats::register(&mut b);
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    pipeline_sql::register(&mut b);
    #[cfg(feature = "s3")]
    pipeline_object_store::register(&mut b);
    b
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_adapter_scheme_is_known() {
        let b = compiled();
        for (kind, scheme, _) in ALL {
            let served = b.schemes(*kind).contains(scheme);
            let feature_on = match *scheme {
                "amqp" | "amqps" => cfg!(feature = "rabbitmq"),
                "sqlite" => cfg!(feature = "sqlite"),
                "postgres" | "postgresql" => cfg!(feature = "postgres"),
                "mysql" | "mariadb" => cfg!(feature = "mysql"),
                "s3" => cfg!(feature = "s3"),
                "nats" | "tls" => cfg!(feature = "nats"),
                _ => cfg!(feature = "redis"),
            };
            assert_eq!(served, feature_on, "{kind:?} {scheme}");
        }
    }
}
