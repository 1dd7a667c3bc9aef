//! Routing on the publisher's side, for brokers that keep one stream per
//! queue (Redis Streams, NATS JetStream): which queues a routing key goes
//! to, from the bindings this process declared or read back from the
//! server.

use std::sync::RwLock;

use super::topic_matches;
use crate::error::Error;

/// One queue's binding: its name, topic patterns and `max_attempts`.
pub type Binding = (String, Vec<String>, u32);

/// The bindings a publisher knows, shared by its tasks.
#[derive(Debug, Default)]
pub struct Bindings {
    queues: RwLock<Vec<Binding>>,
}

impl Bindings {
    /// None known.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Binding>> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember `queue` bound to `patterns`, dead-lettering after
    /// `max_attempts` (replacing what was known of it).
    pub fn set(&self, queue: &str, patterns: &[String], max_attempts: u32) {
        let mut b = self.queues.write().unwrap_or_else(|e| e.into_inner());
        b.retain(|(q, _, _)| q != queue);
        b.push((queue.to_string(), patterns.to_vec(), max_attempts));
    }

    /// The queues bound to routing key `key`.
    pub fn targets(&self, key: &str) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(_, patterns, _)| patterns.iter().any(|p| topic_matches(p, key)))
            .map(|(q, _, _)| q.clone())
            .collect()
    }

    /// The `max_attempts` of `queue`, if it is known.
    pub fn max_attempts(&self, queue: &str) -> Option<u32> {
        self.read()
            .iter()
            .find(|(q, _, _)| q == queue)
            .map(|(_, _, m)| *m)
    }

    /// Every binding known.
    pub fn all(&self) -> Vec<Binding> {
        self.read().clone()
    }
}

/// The error of a publish whose routing key no queue is bound to.
pub fn unroutable(key: &str) -> Error {
    Error::NotFound(format!("no queue is bound to routing key {key:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_pattern_and_replaces_a_queue() {
        let b = Bindings::new();
        b.set("a", &["image.*".into()], 3);
        b.set("b", &["#".into()], 5);
        assert_eq!(b.targets("image.done"), vec!["a", "b"]);
        assert_eq!(b.targets("other"), vec!["b"]);
        b.set("a", &["x".into()], 7);
        assert_eq!(b.targets("image.done"), vec!["b"]);
        assert_eq!(b.max_attempts("a"), Some(7));
        assert_eq!(b.max_attempts("c"), None);
        assert_eq!(b.all().len(), 2);
    }
}
