//! The delivery policy every broker applies: attempt counting, retries and
//! dead letters with their headers. Brokers only move bytes; what happens
//! to a message that was not acked is decided here, once.
//!
//! Dead letters carry these headers, identical on every backend:
//!
//! | header | value |
//! | --- | --- |
//! | `dead-letter-reason` | why, for a person |
//! | `dead-letter-cause` | `rejected`, `exhausted`, `abandoned` or `malformed` |
//! | `dead-letter-queue` | the queue it came from, without the namespace |
//! | `dead-letter-attempts` | deliveries made |
//! | `dead-letter-at-ms` | Unix milliseconds of the decision |

use std::time::Duration;

use bytes::Bytes;

use crate::envelope::{Envelope, Part, headers, now_ms};
use crate::error::Error;

/// Event name of the envelope that wraps a frame that could not be decoded.
pub const MALFORMED_EVENT: &str = "pipeline.malformed";

/// Why a message went to its dead-letter queue (`dead-letter-cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadCause {
    /// A consumer dead-lettered it on purpose (it can never succeed).
    Rejected,
    /// Nacked until its attempts ran out.
    Exhausted,
    /// Delivered until its attempts ran out without ever being settled
    /// (its consumers died or dropped it).
    Abandoned,
    /// The frame could not be decoded.
    Malformed,
}

impl DeadCause {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Exhausted => "exhausted",
            Self::Abandoned => "abandoned",
            Self::Malformed => "malformed",
        }
    }
}

/// What a broker does with a delivery that was not acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Deliver again after `delay`; the envelope's attempt is already one higher.
    Retry {
        /// The message to deliver again.
        envelope: Envelope,
        /// How long to wait first (zero: at once).
        delay: Duration,
    },
    /// Put it in the queue's dead-letter queue; the headers are set.
    DeadLetter {
        /// The message, marked.
        envelope: Envelope,
    },
}

/// A delivery of `queue` was nacked with `delay` and `reason`: retry it, or
/// dead-letter it once it has had `max_attempts` deliveries.
pub fn nacked(
    queue: &str,
    max_attempts: u32,
    envelope: Envelope,
    delay: Duration,
    reason: &str,
) -> Disposition {
    if envelope.attempt >= max_attempts {
        let reason = format!("gave up after {} attempts: {reason}", envelope.attempt);
        return Disposition::DeadLetter {
            envelope: dead_letter(queue, envelope, &reason, DeadCause::Exhausted),
        };
    }
    Disposition::Retry {
        envelope: next_attempt(envelope),
        delay,
    }
}

/// A delivery of `queue` came back without being settled (its consumer
/// dropped it, died, or lost its connection): deliver it again at once, or
/// dead-letter it once it has had `max_attempts` deliveries, so a message
/// that kills its consumers cannot loop for ever.
pub fn unsettled(queue: &str, max_attempts: u32, envelope: Envelope) -> Disposition {
    if envelope.attempt >= max_attempts {
        let reason = format!(
            "delivered {} times without being settled (its consumers died or dropped it)",
            envelope.attempt
        );
        return Disposition::DeadLetter {
            envelope: dead_letter(queue, envelope, &reason, DeadCause::Abandoned),
        };
    }
    Disposition::Retry {
        envelope: next_attempt(envelope),
        delay: Duration::ZERO,
    }
}

/// `envelope`, marked as dead-lettered from `queue` (its name without the
/// namespace) because of `reason`.
pub fn dead_letter(
    queue: &str,
    mut envelope: Envelope,
    reason: &str,
    cause: DeadCause,
) -> Envelope {
    let h = &mut envelope.headers;
    h.insert(headers::DEAD_LETTER_REASON.into(), reason.to_string());
    h.insert(headers::DEAD_LETTER_CAUSE.into(), cause.as_str().into());
    h.insert(headers::DEAD_LETTER_QUEUE.into(), queue.to_string());
    h.insert(
        headers::DEAD_LETTER_ATTEMPTS.into(),
        envelope.attempt.to_string(),
    );
    h.insert(headers::DEAD_LETTER_AT_MS.into(), now_ms().to_string());
    envelope
}

/// A frame of `queue` that cannot be decoded, wrapped so the dead-letter
/// queue stays readable: the raw bytes are its `frame` part.
pub fn malformed(queue: &str, frame: Bytes, error: &Error) -> Envelope {
    let env = Envelope::new(MALFORMED_EVENT, uuid::Uuid::nil(), "").with_part(Part::new(
        "frame",
        "application/octet-stream",
        frame,
    ));
    dead_letter(
        queue,
        env,
        &format!("cannot decode the message: {error}"),
        DeadCause::Malformed,
    )
}

/// `envelope` as published again from a dead-letter queue: attempt 1, the
/// dead-letter headers gone.
pub fn revived(mut envelope: Envelope) -> Envelope {
    envelope.attempt = 1;
    envelope
        .headers
        .retain(|k, _| !k.starts_with(headers::DEAD_LETTER_PREFIX));
    envelope
}

fn next_attempt(mut envelope: Envelope) -> Envelope {
    envelope.attempt = envelope.attempt.saturating_add(1);
    envelope
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn env(attempt: u32) -> Envelope {
        let mut e = Envelope::new("k", uuid::Uuid::now_v7(), "t");
        e.attempt = attempt;
        e
    }

    #[test]
    fn nacks_retry_until_the_last_attempt() {
        match nacked("q", 3, env(2), Duration::from_secs(1), "down") {
            Disposition::Retry { envelope, delay } => {
                assert_eq!(envelope.attempt, 3);
                assert_eq!(delay, Duration::from_secs(1));
                assert!(envelope.header(headers::DEAD_LETTER_REASON).is_none());
            }
            other => panic!("{other:?}"),
        }
        let Disposition::DeadLetter { envelope } = nacked("q", 3, env(3), Duration::ZERO, "down")
        else {
            panic!("not dead-lettered")
        };
        assert_eq!(
            envelope.header(headers::DEAD_LETTER_REASON),
            Some("gave up after 3 attempts: down")
        );
        assert_eq!(
            envelope.header(headers::DEAD_LETTER_CAUSE),
            Some("exhausted")
        );
        assert_eq!(envelope.header(headers::DEAD_LETTER_QUEUE), Some("q"));
        assert_eq!(envelope.header(headers::DEAD_LETTER_ATTEMPTS), Some("3"));
        assert!(envelope.header(headers::DEAD_LETTER_AT_MS).is_some());
    }

    #[test]
    fn unsettled_deliveries_are_counted() {
        assert!(matches!(
            unsettled("q", 2, env(1)),
            Disposition::Retry { delay, .. } if delay.is_zero()
        ));
        let Disposition::DeadLetter { envelope } = unsettled("q", 2, env(2)) else {
            panic!("not dead-lettered")
        };
        assert_eq!(
            envelope.header(headers::DEAD_LETTER_CAUSE),
            Some("abandoned")
        );
    }

    #[test]
    fn revived_messages_start_over() {
        let dead = dead_letter("q", env(4), "bad", DeadCause::Rejected);
        let back = revived(dead);
        assert_eq!(back.attempt, 1);
        assert!(back.headers.keys().all(|k| !k.starts_with("dead-letter-")));
        let m = malformed(
            "q",
            Bytes::from_static(b"xx"),
            &Error::MalformedFrame("x".into()),
        );
        assert_eq!(m.event, MALFORMED_EVENT);
        assert_eq!(m.header(headers::DEAD_LETTER_CAUSE), Some("malformed"));
    }
}
