//! The role services. They hold all the logic; a binary only builds the
//! backends, hands them over as `Arc<dyn ...>`, and runs the services until
//! a shutdown signal.
//!
//! ```text
//! api --image.submitted--> [transform] --> Transformer
//! Transformer --image.transformed / image.failed--> [api.results] --> ResultsConsumer --> ResultStore
//! Transformer --image.archived / image.failed--> [save2db] --> Save2Db --> ImageStore
//! every event --> [activity] --> ActivityRecorder --> ActivityLog + tracing
//! ```

mod activity;
pub mod admin;
mod consume;
mod replay;
mod results;
mod save2db;
#[cfg(feature = "image")]
mod submit;
#[cfg(feature = "image")]
mod transformer;

pub use activity::ActivityRecorder;
pub use replay::{ReplayReport, replay_dead, replay_dead_job};
pub use results::{RETRIES_EXHAUSTED, ResultsConsumer};
pub use save2db::Save2Db;
#[cfg(feature = "image")]
pub use submit::{
    Accepted, InFlight, SubmitConfig, Submitter, Upload, Validation, default_presets, keyed_job_id,
};
#[cfg(feature = "image")]
pub use transformer::{Transformer, TransformerConfig};

use crate::broker::QueueSpec;
use crate::envelope::events;

/// How each role reads a received message, for the fuzz targets.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::broker::{Acker, Delivery};
    use crate::envelope::Envelope;
    use crate::error::Result;

    struct Unsettled;

    #[async_trait::async_trait]
    impl Acker for Unsettled {
        async fn ack(self: Box<Self>) -> Result<()> {
            Ok(())
        }
        async fn nack(self: Box<Self>, _: std::time::Duration, _: String) -> Result<()> {
            Ok(())
        }
        async fn dead_letter(self: Box<Self>, _: String) -> Result<()> {
            Ok(())
        }
    }

    /// Read `envelope` as the archive writer, the activity log and the
    /// results consumer do: each either understands it or says why not.
    pub fn read_as_every_role(envelope: &Envelope) {
        let delivery = Delivery::new(envelope.clone(), Box::new(Unsettled));
        let _ = super::save2db::record_of(&delivery);
        let _ = super::activity::entry_of(&delivery);
        let _ = super::results::status_of(envelope);
    }
}

/// Queue names of the standard topology (the backend adds the namespace).
pub mod queues {
    /// Submitted images, consumed by transformers.
    pub const TRANSFORM: &str = "transform";
    /// Results and failures, consumed by the API's results consumer.
    pub const API_RESULTS: &str = "api.results";
    /// Finished jobs, consumed by save2db.
    pub const SAVE2DB: &str = "save2db";
    /// Every event, consumed by the activity log.
    pub const ACTIVITY: &str = "activity";
}

/// The queues and bindings of the pipeline; every process declares them at start.
pub fn topology(max_attempts: u32) -> Vec<QueueSpec> {
    vec![
        QueueSpec::new(queues::TRANSFORM, &[events::SUBMITTED], max_attempts),
        QueueSpec::new(
            queues::API_RESULTS,
            &[events::TRANSFORMED, events::FAILED],
            max_attempts,
        ),
        QueueSpec::new(
            queues::SAVE2DB,
            &[events::ARCHIVED, events::FAILED],
            max_attempts,
        ),
        // The log records sizes, not images: no parts.
        QueueSpec::new(queues::ACTIVITY, &["#"], max_attempts).without_parts(),
    ]
}

/// An id for this process in one role: `role-xxxxxxxx`, random, so that
/// nothing about the machine reaches the clients who see it (a job's
/// `worker`). [`worker_id_with_host`] names the host and process.
pub fn worker_id(role: &str) -> String {
    format!("{role}-{:08x}", fastrand::u32(..))
}

/// An id that finds the process: `role-host-pid-xxxx` (for operators who
/// opt in: clients see it in a job's `worker`).
pub fn worker_id_with_host(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_string());
    format!(
        "{role}-{host}-{}-{:04x}",
        std::process::id(),
        fastrand::u16(..)
    )
}
