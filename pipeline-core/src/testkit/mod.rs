//! Conformance suites: every backend of a trait passes the same cases.
//!
//! Each case is a `pub async fn` taking the backend; the macros
//! [`broker_conformance!`](crate::broker_conformance) and
//! [`store_conformance!`](crate::store_conformance) expand them into one
//! `#[tokio::test]` per case for a backend:
//!
//! ```text
//! pipeline_core::broker_conformance!(async { std::sync::Arc::new(MemoryBroker::new()) });
//! ```
//!
//! Cases use random queue names and routing keys, so they can share one
//! server with other runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod broker;
pub mod results;
pub mod store;

/// A random lower-case suffix for names that must not collide between runs.
pub fn unique(prefix: &str) -> String {
    let s: String = (0..10).map(|_| fastrand::lowercase()).collect();
    format!("{prefix}-{s}")
}

/// Expand the broker suite into tests; `$make` is an expression giving a
/// future of `Arc<dyn Broker>` (or a type coercible to it).
#[macro_export]
macro_rules! broker_conformance {
    ($make:expr) => {
        $crate::broker_conformance!(@cases $make;
            publish_receive_intact,
            routing_patterns_and_isolation,
            unroutable_publish_is_an_error,
            competing_consumers_share_without_duplicates,
            nack_redelivers_with_higher_attempt,
            nack_delay_is_honoured,
            dropped_delivery_is_redelivered,
            dead_letter_after_max_attempts_keeps_reason,
            explicit_dead_letter_keeps_reason,
            prefetch_bounds_unsettled_deliveries,
            close_drains_and_refuses_publishes,
            concurrent_publishers,
            large_payload_20mb
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let broker: ::std::sync::Arc<dyn $crate::Broker> = $make.await;
                $crate::testkit::broker::$case(broker).await;
            }
        )*
    };
}

/// Expand the archive suite into tests; `$make` is an expression giving a
/// future of `Arc<T>` where `T: ImageStore + ActivityLog`.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            save_and_read_back,
            unknown_job_is_none,
            save_is_idempotent_under_double_delivery,
            concurrent_double_saves,
            identical_blobs_are_shared,
            failed_jobs_are_kept,
            list_by_tenant_with_cursor,
            large_blobs,
            activity_is_idempotent
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::testkit::store::$case(store.clone(), store).await;
            }
        )*
    };
}

/// Expand the result-store suite into tests; `$make` is an expression giving
/// a future of `Arc<dyn ResultStore>` (or a type coercible to it).
#[macro_export]
macro_rules! results_conformance {
    ($make:expr) => {
        $crate::results_conformance!(@cases $make;
            put_and_get,
            terminal_states_are_final,
            statuses_expire,
            wait_is_woken_by_the_result,
            wait_times_out_with_the_current_status,
            completions_stream_finished_jobs
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: ::std::sync::Arc<dyn $crate::ResultStore> = $make.await;
                $crate::testkit::results::$case(store).await;
            }
        )*
    };
}
