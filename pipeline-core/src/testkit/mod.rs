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
//! server with other runs. A backend on a shared server passes a cleanup,
//! run after each case whether it passed or panicked:
//!
//! ```text
//! pipeline_core::broker_conformance!(connect(), cleanup = |b: Arc<MyBroker>| async move {
//!     let _ = b.delete_all().await;
//! });
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod blobs;
pub mod broker;
pub mod process;
pub mod results;
#[cfg(feature = "image")]
pub mod servers;
pub mod store;
pub mod transform;

/// Prefix of every name [`unique`] makes: whatever a killed test run
/// left behind on a shared server (tables, queues, keys) starts with it,
/// and `scripts/clean-test-leftovers.sh` removes it by this prefix.
pub const TEST_PREFIX: &str = "pt_";

/// A name that does not collide between runs: [`TEST_PREFIX`], `prefix`,
/// `_` and a random lower-case suffix (valid as a namespace everywhere).
pub fn unique(prefix: &str) -> String {
    let s: String = (0..10).map(|_| fastrand::lowercase()).collect();
    format!("{TEST_PREFIX}{prefix}_{s}")
}

/// Run `program` with `args` (in `dir` when given), fail the test unless it
/// succeeds, and return its standard output.
pub fn command(program: &str, args: &[&str], dir: Option<&std::path::Path>) -> String {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run the shell commands `servers` in the background for the rest of this
/// test process: a watcher kills them, then runs `cleanup`, once the
/// process is gone (statics are never dropped, so a test binary cannot stop
/// a shared server itself).
pub fn run_while_this_process_lives(servers: &[String], cleanup: &str) {
    let started: String = servers
        .iter()
        .map(|cmd| format!("{cmd} & pids=\"$pids $!\"; "))
        .collect();
    let script = format!(
        "{started}while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $pids; {cleanup}",
        pid = std::process::id()
    );
    // The watcher ends with this process; it is never waited for.
    #[allow(clippy::zombie_processes)]
    std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a background server");
}

/// Run `case` on the backend `made`, then `cleanup` on it even when the
/// case panicked (the panic is then resumed); each is bounded by
/// [`CASE_TIMEOUT`].
pub async fn run_case<T, C, CF, K, KF>(made: T, case: C, cleanup: K)
where
    T: Clone,
    C: FnOnce(T) -> CF,
    CF: std::future::Future<Output = ()>,
    K: FnOnce(T) -> KF,
    KF: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let bounded = tokio::time::timeout(CASE_TIMEOUT, case(made.clone()));
    let outcome = std::panic::AssertUnwindSafe(bounded).catch_unwind().await;
    let cleaned = tokio::time::timeout(CASE_TIMEOUT, cleanup(made)).await;
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Err(_)) => panic!("the case did not finish within {CASE_TIMEOUT:?}"),
        Ok(Ok(())) => {}
    }
    assert!(
        cleaned.is_ok(),
        "the cleanup did not finish within {CASE_TIMEOUT:?}"
    );
}

/// Longest a conformance case (or its cleanup) may run: a hung case fails
/// with its name instead of holding the whole run.
pub const CASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// Expand the broker suite into tests; `$make` is an expression giving a
/// future of `Arc<T>` with `T: Broker`; `cleanup = f` (optional) gets that
/// `Arc<T>` after each case.
#[macro_export]
macro_rules! broker_conformance {
    ($make:expr) => {
        $crate::broker_conformance!($make, cleanup = |_| async {});
    };
    ($make:expr, cleanup = $cleanup:expr) => {
        $crate::broker_conformance!(@cases $make; $cleanup;
            publish_receive_intact,
            routing_patterns_and_isolation,
            queue_without_parts_gets_metadata_and_size,
            unroutable_publish_is_an_error,
            competing_consumers_share_without_duplicates,
            nack_redelivers_with_higher_attempt,
            nack_delay_is_honoured,
            dropped_delivery_is_redelivered,
            dead_letter_after_max_attempts_keeps_reason,
            explicit_dead_letter_keeps_reason,
            dropped_at_max_attempts_is_dead_lettered,
            prefetch_bounds_unsettled_deliveries,
            close_drains_and_refuses_publishes,
            concurrent_publishers,
            large_payload_20mb,
            dead_letters_can_be_replayed,
            dead_letters_can_be_inspected_replayed_and_purged,
            declare_is_idempotent,
            a_subscription_ends_and_resumes,
            several_queues_consumed_at_once,
            ordered_when_declared,
            deliveries_settle_after_close,
            ready_until_closed,
            stress_nothing_lost_or_doubled,
            out_of_order_settling_settles_each_once
        );
    };
    (@cases $make:expr; $cleanup:expr; $($case:ident),* $(,)?) => {
        $crate::__dyn_cases!($make; $cleanup; broker; Broker; $($case),*);
    };
}

/// Expand the archive suite into tests; `$make` is an expression giving a
/// future of `Arc<T>` where `T: ImageStore + ActivityLog`; `cleanup = f`
/// (optional) gets that `Arc<T>` after each case.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!($make, cleanup = |_| async {});
    };
    ($make:expr, cleanup = $cleanup:expr) => {
        $crate::store_conformance!(@cases $make; $cleanup;
            save_and_read_back,
            unknown_job_is_none,
            save_is_idempotent_under_double_delivery,
            concurrent_double_saves,
            identical_blobs_are_shared,
            failed_jobs_are_kept,
            list_by_tenant_with_cursor,
            large_blobs,
            activity_is_idempotent,
            references_are_kept_and_reported,
            a_batch_is_all_or_nothing,
            delete_releases_blobs_but_shared_ones,
            delete_races_a_save_of_a_shared_blob,
            expire_removes_old_jobs_only
        );
        $crate::store_conformance!(@keys $make; $cleanup;
            keys_are_stored_found_and_listed,
            a_taken_key_id_is_refused,
            a_revocation_keeps_its_first_time
        );
    };
    (@keys $make:expr; $cleanup:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::testkit::run_case(
                    $make.await,
                    |store| async move {
                        $crate::testkit::store::$case(store).await;
                    },
                    $cleanup,
                )
                .await;
            }
        )*
    };
    (@cases $make:expr; $cleanup:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::testkit::run_case(
                    $make.await,
                    |store| async move {
                        $crate::testkit::store::$case(store.clone(), store).await;
                    },
                    $cleanup,
                )
                .await;
            }
        )*
    };
}

/// Expand the result-store suite into tests; `$make` is an expression giving
/// a future of `Arc<T>` with `T: ResultStore`; `cleanup = f` (optional) gets
/// that `Arc<T>` after each case.
#[macro_export]
macro_rules! results_conformance {
    ($make:expr) => {
        $crate::results_conformance!($make, cleanup = |_| async {});
    };
    ($make:expr, cleanup = $cleanup:expr) => {
        $crate::results_conformance!(@cases $make; $cleanup;
            put_and_get,
            summary_leaves_the_bytes_out,
            terminal_states_are_final,
            statuses_expire,
            wait_is_woken_by_the_result,
            wait_times_out_with_the_current_status,
            completions_stream_finished_jobs,
            delete_forgets_a_job
        );
    };
    (@cases $make:expr; $cleanup:expr; $($case:ident),* $(,)?) => {
        $crate::__dyn_cases!($make; $cleanup; results; ResultStore; $($case),*);
    };
}

/// Expand the blob-store suite into tests; `$make` is an expression giving
/// a future of `Arc<T>` with `T: BlobStore`; `cleanup = f` (optional) gets
/// that `Arc<T>` after each case.
#[macro_export]
macro_rules! blob_conformance {
    ($make:expr) => {
        $crate::blob_conformance!($make, cleanup = |_| async {});
    };
    ($make:expr, cleanup = $cleanup:expr) => {
        $crate::blob_conformance!(@cases $make; $cleanup;
            put_get_round_trip,
            unknown_and_deleted_keys,
            put_again_refreshes,
            stored_before_lists_only_older,
            concurrent_puts_of_one_key,
            large_blob_50mb,
            bad_keys_are_refused,
            conditional_delete
        );
    };
    (@cases $make:expr; $cleanup:expr; $($case:ident),* $(,)?) => {
        $crate::__dyn_cases!($make; $cleanup; blobs; BlobStore; $($case),*);
    };
}

/// One test per case of `$kit`, on `$make` seen as `Arc<dyn $tr>`, with
/// `$cleanup` after each (the expansion shared by the suites above).
#[doc(hidden)]
#[macro_export]
macro_rules! __dyn_cases {
    ($make:expr; $cleanup:expr; $kit:ident; $tr:ident; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::testkit::run_case(
                    $make.await,
                    |made| async move {
                        let backend: ::std::sync::Arc<dyn $crate::$tr> = made;
                        $crate::testkit::$kit::$case(backend).await;
                    },
                    $cleanup,
                )
                .await;
            }
        )*
    };
}
