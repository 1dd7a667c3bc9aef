//! W3C Trace Context across processes: the upload's `traceparent` (or a
//! new trace) travels in every message of the job (header
//! [`headers::TRACEPARENT`]); each role continues it with a span of its own
//! ([`job_span`]), so the logs of the API, the transformer, save2db and the
//! activity writer carry the same `trace_id` beside the `job_id`, and any
//! tracing backend that reads W3C trace context can join them.

use std::fmt;

use crate::envelope::{Envelope, headers};

/// A position in a trace: the trace, the current span, and whether the
/// caller asked for it to be sampled.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

impl TraceContext {
    /// A new trace (random ids, sampled).
    pub fn new_root() -> Self {
        let trace_id = loop {
            let v = fastrand::u128(..);
            if v != 0 {
                break v;
            }
        };
        Self {
            trace_id,
            span_id: nonzero_u64(),
            sampled: true,
        }
    }

    /// Read a `traceparent` header value: `VV-TRACEID-SPANID-FLAGS`, lowercase
    /// hex, ids not all zero, version `ff` refused. A later version may add
    /// fields after the four (they are ignored); version `00` has exactly
    /// four. `None` for anything else: the caller then starts a new trace.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut fields = value.split('-');
        let version = fields.next()?;
        let trace = fields.next()?;
        let span = fields.next()?;
        let flags = fields.next()?;
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        if version == "00" && fields.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace context `env` carries, if any (and valid).
    pub fn of(env: &Envelope) -> Option<Self> {
        env.header(headers::TRACEPARENT).and_then(Self::parse)
    }

    /// The span after `parent`: its child, or the root of a new trace.
    pub fn following(parent: Option<&Self>) -> Self {
        parent.map_or_else(Self::new_root, Self::child)
    }

    /// A new span of the same trace, child of this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            ..*self
        }
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id: 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Whether the trace is sampled (flag `01`).
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The `traceparent` header value (version `00`).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// Continue the trace `env` carries (a new one if it carries none) with a
/// span of `role` doing `stage`; `env`'s `traceparent` becomes that span,
/// so the messages it leads to ([`Envelope::follow_up`]) name it as their
/// parent. The returned span carries `role`, `stage`, `job_id`,
/// `trace_id`, `span_id` and `parent_span_id`: every log line inside it
/// shows them, and an OpenTelemetry exporter reads them.
pub fn job_span(role: &'static str, stage: &'static str, env: &mut Envelope) -> tracing::Span {
    let parent = TraceContext::of(env);
    let ctx = TraceContext::following(parent.as_ref());
    env.headers
        .insert(headers::TRACEPARENT.to_string(), ctx.traceparent());
    span_at(role, stage, env.job_id, &ctx, parent.as_ref())
}

/// The span of `role` doing `stage` for `env`, without changing it (for
/// readers that publish nothing: save2db, the activity log, the results
/// consumer).
pub fn reader_span(role: &'static str, stage: &'static str, env: &Envelope) -> tracing::Span {
    let parent = TraceContext::of(env);
    let ctx = TraceContext::following(parent.as_ref());
    span_at(role, stage, env.job_id, &ctx, parent.as_ref())
}

/// The span of `role` doing `stage` for job `job_id` at `ctx` (child of
/// `parent`).
pub fn span_at(
    role: &'static str,
    stage: &'static str,
    job_id: uuid::Uuid,
    ctx: &TraceContext,
    parent: Option<&TraceContext>,
) -> tracing::Span {
    tracing::info_span!(
        "job",
        role,
        stage,
        job_id = %job_id,
        trace_id = %ctx.trace_id(),
        span_id = %ctx.span_id(),
        parent_span_id = parent.map(|p| p.span_id()).unwrap_or_default(),
        error = tracing::field::Empty,
    )
}

/// Mark `span` (one of [`span_at`]'s or [`request_span`]'s) failed, with
/// `message`: its `error` field, which an OpenTelemetry exporter turns
/// into an error status.
pub fn failed(span: &tracing::Span, message: &dyn fmt::Display) {
    span.record("error", tracing::field::display(message));
}

/// The span of an HTTP request at `ctx` (child of the caller's `parent`),
/// for `stage` (`upload`): the parent of the spans of the jobs it submits.
pub fn request_span(
    stage: &'static str,
    ctx: &TraceContext,
    parent: Option<&TraceContext>,
) -> tracing::Span {
    tracing::info_span!(
        "request",
        role = "api",
        stage,
        trace_id = %ctx.trace_id(),
        span_id = %ctx.span_id(),
        parent_span_id = parent.map(|p| p.span_id()).unwrap_or_default(),
        error = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_w3c_form() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(v).unwrap();
        assert_eq!(ctx.traceparent(), v);
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id(), "00f067aa0ba902b7");
        assert!(ctx.sampled());
        let unsampled = TraceContext::parse(&v.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
        // A later version may carry more fields.
        assert!(TraceContext::parse(&format!("01{}-extra", &v[2..])).is_some());
        let child = ctx.child();
        assert_eq!(child.trace_id(), ctx.trace_id());
        assert_ne!(child.span_id(), ctx.span_id());
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_role_continues_the_trace_of_its_message() {
        let root = TraceContext::new_root();
        let mut env = Envelope::new("e", uuid::Uuid::now_v7(), "t")
            .with_header(headers::TRACEPARENT, root.traceparent());
        let _span = job_span("transformer", "transform", &mut env);
        let now = TraceContext::of(&env).unwrap();
        assert_eq!(now.trace_id(), root.trace_id());
        assert_ne!(now.span_id(), root.span_id());
        // Its follow-ups carry the role's span as their parent.
        let next = env.follow_up("f");
        assert_eq!(TraceContext::of(&next), Some(now));
        // No context: a new trace.
        let mut bare = Envelope::new("e", uuid::Uuid::now_v7(), "t");
        let _span = job_span("transformer", "transform", &mut bare);
        assert!(TraceContext::of(&bare).is_some());
    }
}
