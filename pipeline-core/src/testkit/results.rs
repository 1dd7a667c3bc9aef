//! Cases every [`ResultStore`] passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use uuid::Uuid;

use crate::envelope::now_ms;
use crate::results::{JobStatus, ResultStore};
use crate::store::{Blob, JobFailure, JobState};

const TTL: Duration = Duration::from_secs(60);

fn pending(tenant: &str) -> JobStatus {
    JobStatus::pending(Uuid::now_v7(), tenant, "stamp", now_ms())
}

fn done(p: &JobStatus, bytes: &[u8]) -> JobStatus {
    JobStatus {
        state: JobState::Done,
        result: Some(Blob {
            content_type: "image/png".into(),
            data: Bytes::copy_from_slice(bytes),
        }),
        updated_at_ms: now_ms(),
        ..p.clone()
    }
}

/// A status reads back as it was put, bytes and all.
pub async fn put_and_get(store: Arc<dyn ResultStore>) {
    let p = pending("t");
    store.put(p.clone(), TTL).await.expect("put");
    assert_eq!(store.get(p.job_id).await.expect("get"), Some(p.clone()));
    let d = done(&p, &[1, 2, 3, 0, 255]);
    store.put(d.clone(), TTL).await.expect("put done");
    assert_eq!(store.get(p.job_id).await.expect("get"), Some(d));
    assert_eq!(store.get(Uuid::now_v7()).await.expect("unknown"), None);
}

/// `summary` is the status without its bytes, for pending, done and unknown
/// jobs alike.
pub async fn summary_leaves_the_bytes_out(store: Arc<dyn ResultStore>) {
    let p = pending("t");
    store.put(p.clone(), TTL).await.expect("put");
    assert_eq!(
        store.summary(p.job_id).await.expect("summary"),
        Some(p.summary())
    );
    let d = JobStatus {
        info: Some(crate::store::JobInfo {
            original: None,
            result: None,
            decode_ms: 1.5,
            transform_ms: 0.25,
            encode_ms: 2.0,
            worker: "w1".into(),
        }),
        ..done(&p, &[7; 4096])
    };
    store.put(d.clone(), TTL).await.expect("put done");
    let s = store.summary(p.job_id).await.expect("summary");
    assert_eq!(s, Some(d.summary()));
    assert_eq!(s.map(|s| s.status), Some(JobState::Done));
    assert_eq!(store.summary(Uuid::now_v7()).await.expect("unknown"), None);
    store.delete(p.job_id).await.expect("delete");
    assert_eq!(store.summary(p.job_id).await.expect("deleted"), None);
}

/// A terminal status is never replaced, by pending or by a second result.
pub async fn terminal_states_are_final(store: Arc<dyn ResultStore>) {
    let p = pending("t");
    let first = done(&p, b"first");
    store.put(first.clone(), TTL).await.expect("put");
    store.put(p.clone(), TTL).await.expect("late pending");
    store
        .put(done(&p, b"second"), TTL)
        .await
        .expect("second result");
    let failed = JobStatus {
        state: JobState::Failed,
        error: Some(JobFailure {
            code: "x".into(),
            message: "y".into(),
        }),
        ..p.clone()
    };
    store.put(failed, TTL).await.expect("late failure");
    assert_eq!(store.get(p.job_id).await.expect("get"), Some(first));
}

/// After the TTL the status is gone.
pub async fn statuses_expire(store: Arc<dyn ResultStore>) {
    let p = pending("t");
    store
        .put(p.clone(), Duration::from_millis(1200))
        .await
        .expect("put");
    assert!(store.get(p.job_id).await.expect("get").is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.get(p.job_id).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "still there long after its TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `wait` returns as soon as the job finishes, well before its timeout.
pub async fn wait_is_woken_by_the_result(store: Arc<dyn ResultStore>) {
    let p = pending("t");
    store.put(p.clone(), TTL).await.expect("put");
    let waiter = {
        let store = Arc::clone(&store);
        let id = p.job_id;
        tokio::spawn(async move {
            let started = Instant::now();
            let s = store.wait(id, Duration::from_secs(20)).await.expect("wait");
            (s, started.elapsed())
        })
    };
    // Give the waiter time to start waiting (were it late, `wait` would
    // find the job done at once: the bound below holds either way).
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.put(done(&p, b"ok"), TTL).await.expect("put done");
    let put_at = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait not woken")
        .expect("task");
    let after_put = put_at.elapsed();
    assert_eq!(status.expect("status").state, JobState::Done);
    // Woken by the put itself, not by polling now and then.
    assert!(
        after_put < Duration::from_millis(500),
        "woken {after_put:?} after the put"
    );
}

/// `wait` on a pending job gives the pending status at the timeout; on an
/// unknown job, `None` at once.
pub async fn wait_times_out_with_the_current_status(store: Arc<dyn ResultStore>) {
    let p = pending("t");
    store.put(p.clone(), TTL).await.expect("put");
    let started = Instant::now();
    let s = store
        .wait(p.job_id, Duration::from_millis(400))
        .await
        .expect("wait");
    assert_eq!(s.map(|s| s.state), Some(JobState::Pending));
    assert!(started.elapsed() >= Duration::from_millis(400));
    let started = Instant::now();
    assert_eq!(
        store
            .wait(Uuid::now_v7(), Duration::from_secs(5))
            .await
            .expect("wait"),
        None
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// `completions` yields the terminal statuses put after it was called.
pub async fn completions_stream_finished_jobs(store: Arc<dyn ResultStore>) {
    let mut stream = store.completions().await.expect("completions");
    let p = pending("t");
    store.put(p.clone(), TTL).await.expect("put");
    store.put(done(&p, b"z"), TTL).await.expect("put done");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("no completion")
            .expect("stream ended");
        if s.id == p.job_id {
            assert_eq!(s.status, JobState::Done);
            break;
        }
    }
}

/// A deleted job is forgotten; deleting an unknown one is not an error.
pub async fn delete_forgets_a_job(store: Arc<dyn ResultStore>) {
    let p = pending("t");
    let d = done(&p, b"bytes");
    store.put(d, TTL).await.expect("put");
    let other = pending("t");
    store.put(other.clone(), TTL).await.expect("put other");
    store.delete(p.job_id).await.expect("delete");
    assert_eq!(store.get(p.job_id).await.expect("get"), None);
    assert_eq!(
        store
            .wait(p.job_id, Duration::from_millis(10))
            .await
            .expect("wait"),
        None
    );
    assert_eq!(store.get(other.job_id).await.expect("other"), Some(other));
    store.delete(p.job_id).await.expect("delete again");
    store.delete(Uuid::now_v7()).await.expect("delete unknown");
}
