//! Routing on the publisher's side, for brokers that keep one stream per
//! queue (Redis Streams, NATS JetStream): which queues a routing key goes
//! to, from the bindings this process declared or read back from the
//! server.

use std::future::Future;
use std::sync::RwLock;

use bytes::Bytes;

use super::{QueueSpec, topic_matches};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::wire;

/// The bindings a publisher knows, shared by its tasks: one [`QueueSpec`]
/// per queue.
#[derive(Debug, Default)]
pub struct Bindings {
    queues: RwLock<Vec<QueueSpec>>,
}

impl Bindings {
    /// None known.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<QueueSpec>> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember `spec` (replacing what was known of its queue).
    pub fn set(&self, spec: &QueueSpec) {
        let mut b = self.queues.write().unwrap_or_else(|e| e.into_inner());
        b.retain(|q| q.name != spec.name);
        b.push(spec.clone());
    }

    /// The queues bound to routing key `key`, each with whether it takes
    /// the messages' parts ([`QueueSpec::parts`]).
    pub fn targets(&self, key: &str) -> Vec<(String, bool)> {
        self.read()
            .iter()
            .filter(|q| q.patterns.iter().any(|p| topic_matches(p, key)))
            .map(|q| (q.name.clone(), q.parts))
            .collect()
    }

    /// The `max_attempts` of `queue`, if it is known.
    pub fn max_attempts(&self, queue: &str) -> Option<u32> {
        self.read()
            .iter()
            .find(|q| q.name == queue)
            .map(|q| q.max_attempts)
    }

    /// Every binding known.
    pub fn all(&self) -> Vec<QueueSpec> {
        self.read().clone()
    }
}

/// Frames of one message for the queues it is routed to: the whole message
/// for those that read parts, a copy without parts for the others; each
/// encoded once, when first asked for.
#[derive(Debug)]
pub struct Frames<'a> {
    envelope: &'a Envelope,
    whole: Option<Bytes>,
    bare: Option<Bytes>,
}

impl<'a> Frames<'a> {
    /// Frames of `envelope`.
    pub fn new(envelope: &'a Envelope) -> Self {
        Self {
            envelope,
            whole: None,
            bare: None,
        }
    }

    /// The frame for a queue that takes parts (`parts`) or not.
    pub fn get(&mut self, parts: bool) -> Result<Bytes> {
        let whole = parts || self.envelope.parts.is_empty();
        let slot = if whole {
            &mut self.whole
        } else {
            &mut self.bare
        };
        if let Some(frame) = slot {
            return Ok(frame.clone());
        }
        let frame = if whole {
            wire::encode(self.envelope)?
        } else {
            wire::encode(&self.envelope.without_parts())?
        };
        *slot = Some(frame.clone());
        Ok(frame)
    }
}

/// Send `envelope` to every queue of `targets` at once with `send` (the
/// whole frame to queues that take parts, the one without to the others);
/// an error if any send fails. Not atomic: the caller retries, and
/// consumers are idempotent.
pub async fn fan_out<F, Fut>(
    envelope: &Envelope,
    targets: Vec<(String, bool)>,
    send: F,
) -> Result<()>
where
    F: Fn(String, Bytes) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut frames = Frames::new(envelope);
    let mut sends = Vec::with_capacity(targets.len());
    for (queue, parts) in targets {
        sends.push(send(queue, frames.get(parts)?));
    }
    futures::future::try_join_all(sends).await?;
    Ok(())
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
        b.set(&QueueSpec::new("a", &["image.*"], 3));
        b.set(&QueueSpec::new("b", &["#"], 5).without_parts());
        let names = |key: &str| -> Vec<(String, bool)> { b.targets(key) };
        assert_eq!(
            names("image.done"),
            vec![("a".to_string(), true), ("b".to_string(), false)]
        );
        assert_eq!(names("other"), vec![("b".to_string(), false)]);
        b.set(&QueueSpec::new("a", &["x"], 7));
        assert_eq!(names("image.done"), vec![("b".to_string(), false)]);
        assert_eq!(b.max_attempts("a"), Some(7));
        assert_eq!(b.max_attempts("c"), None);
        assert_eq!(b.all().len(), 2);
    }

    #[test]
    fn frames_are_whole_or_without_parts_and_encoded_once() {
        let env = Envelope::new("image.done", uuid::Uuid::now_v7(), "t").with_part(
            crate::envelope::Part::new("original", "image/png", Bytes::from(vec![7u8; 100])),
        );
        let mut frames = Frames::new(&env);
        let whole = frames.get(true).unwrap();
        let bare = frames.get(false).unwrap();
        assert_eq!(wire::decode(whole.clone()).unwrap(), env);
        let back = wire::decode(bare.clone()).unwrap();
        assert!(back.parts.is_empty());
        assert_eq!(back.payload_size(), 100);
        assert_eq!(back.id, env.id);
        // The same bytes the second time (no second encoding).
        assert_eq!(frames.get(true).unwrap().as_ptr(), whole.as_ptr());
        assert_eq!(frames.get(false).unwrap().as_ptr(), bare.as_ptr());
    }
}
