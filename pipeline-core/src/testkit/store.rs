//! Cases every [`ImageStore`] + [`ActivityLog`] (+ [`KeyStore`]) passes.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use super::unique;
use crate::auth::{ApiKey, KeyStore, Scopes};
use crate::error::Error;
use crate::store::{
    ActivityEntry, ActivityLog, ArchiveRecord, Blob, ImageStore, JobFailure, JobInfo, JobState,
    MediaInfo, sha256_hex,
};

fn media(data: &[u8], w: u32) -> MediaInfo {
    MediaInfo {
        format: "png".into(),
        content_type: "image/png".into(),
        width: w,
        height: w / 2,
        size: data.len() as u64,
        sha256: sha256_hex(data),
    }
}

/// A finished job of `tenant` whose original is `original`.
pub fn record(tenant: &str, original: &[u8], result: &[u8]) -> ArchiveRecord {
    ArchiveRecord {
        job_id: Uuid::now_v7(),
        tenant: tenant.to_string(),
        state: JobState::Done,
        spec: "resize:10x10,grayscale".into(),
        original: Some(Blob {
            content_type: "image/png".into(),
            data: Bytes::copy_from_slice(original),
        }),
        result: Some(Blob {
            content_type: "image/jpeg".into(),
            data: Bytes::copy_from_slice(result),
        }),
        info: JobInfo {
            original: Some(media(original, 800)),
            result: Some(MediaInfo {
                content_type: "image/jpeg".into(),
                format: "jpeg".into(),
                ..media(result, 10)
            }),
            decode_ms: 1.5,
            transform_ms: 2.25,
            encode_ms: 3.0,
            worker: "worker-1".into(),
        },
        error: None,
        submitted_at_ms: 1_700_000_000_000,
        finished_at_ms: 1_700_000_000_123,
    }
}

fn bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = seed.as_bytes().to_vec();
    out.resize(len, 0xAB);
    out
}

/// What was saved is what is read back.
pub async fn save_and_read_back(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let tenant = unique("tenant");
    let r = record(
        &tenant,
        &bytes(&unique("o"), 5000),
        &bytes(&unique("r"), 700),
    );
    store.save(std::slice::from_ref(&r)).await.expect("save");
    let got = store.get(r.job_id).await.expect("get").expect("record");
    assert_eq!(got.job_id, r.job_id);
    assert_eq!(got.tenant, tenant);
    assert_eq!(got.state, JobState::Done);
    assert_eq!(got.spec, r.spec);
    assert_eq!(got.original, r.info.original);
    assert_eq!(got.result, r.info.result);
    assert_eq!(got.worker, "worker-1");
    assert_eq!(got.submitted_at_ms, r.submitted_at_ms);
    assert_eq!(got.finished_at_ms, r.finished_at_ms);
    assert!(got.archived_at_ms > 0);
    assert_eq!(
        store.original(r.job_id).await.expect("original"),
        r.original
    );
    assert_eq!(store.result(r.job_id).await.expect("result"), r.result);
}

/// An unknown id is `None`, not an error.
pub async fn unknown_job_is_none(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let id = Uuid::now_v7();
    assert!(store.get(id).await.expect("get").is_none());
    assert!(store.original(id).await.expect("original").is_none());
    assert!(store.result(id).await.expect("result").is_none());
}

/// Saving the same job twice keeps the first write and one row.
pub async fn save_is_idempotent_under_double_delivery(
    store: Arc<dyn ImageStore>,
    _: Arc<dyn ActivityLog>,
) {
    let tenant = unique("tenant");
    let first = record(&tenant, &bytes("a", 100), &bytes("b", 50));
    let mut second = first.clone();
    second.result = Some(Blob {
        content_type: "image/jpeg".into(),
        data: Bytes::from(bytes("different", 60)),
    });
    second.info.worker = "worker-2".into();
    store
        .save(std::slice::from_ref(&first))
        .await
        .expect("save");
    store
        .save(std::slice::from_ref(&second))
        .await
        .expect("second save is a success");
    // And within one batch.
    store
        .save(&[first.clone(), first.clone()])
        .await
        .expect("batch with a duplicate");
    let got = store.get(first.job_id).await.expect("get").expect("record");
    assert_eq!(got.worker, "worker-1");
    assert_eq!(
        store.result(first.job_id).await.expect("result"),
        first.result
    );
    let page = store.list(&tenant, None, 10).await.expect("list");
    assert_eq!(page.items.len(), 1);
}

/// Concurrent saves of the same batch succeed and leave one row per job.
pub async fn concurrent_double_saves(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let tenant = unique("tenant");
    let batch: Vec<ArchiveRecord> = (0..10)
        .map(|i| {
            record(
                &tenant,
                &bytes(&format!("o{i}{tenant}"), 300),
                &bytes(&format!("r{i}"), 30),
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = Arc::clone(&store);
        let b = batch.clone();
        tasks.push(tokio::spawn(async move { s.save(&b).await }));
    }
    for t in tasks {
        t.await.expect("task").expect("concurrent save");
    }
    let page = store.list(&tenant, None, 100).await.expect("list");
    assert_eq!(page.items.len(), 10);
}

/// Jobs with identical bytes read back correctly (stored once: backends
/// check the row count in their own tests).
pub async fn identical_blobs_are_shared(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let tenant = unique("tenant");
    let original = bytes(&unique("same"), 2048);
    let a = record(&tenant, &original, &bytes("ra", 10));
    let b = record(&tenant, &original, &bytes("rb", 10));
    store.save(&[a.clone(), b.clone()]).await.expect("save");
    assert_eq!(store.original(a.job_id).await.expect("a"), a.original);
    assert_eq!(store.original(b.job_id).await.expect("b"), b.original);
    assert_eq!(store.result(b.job_id).await.expect("b"), b.result);
}

/// A failed job keeps its original and reason, and has no result.
pub async fn failed_jobs_are_kept(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let tenant = unique("tenant");
    let mut r = record(&tenant, &bytes("broken", 99), &[]);
    r.state = JobState::Failed;
    r.result = None;
    r.info.original = None;
    r.info.result = None;
    r.error = Some(JobFailure {
        code: "corrupt_image".into(),
        message: "the png data is corrupt: ü".into(),
    });
    store.save(std::slice::from_ref(&r)).await.expect("save");
    let got = store.get(r.job_id).await.expect("get").expect("record");
    assert_eq!(got.state, JobState::Failed);
    assert_eq!(got.error, r.error);
    assert_eq!(got.original, None);
    assert_eq!(
        store.original(r.job_id).await.expect("original"),
        r.original
    );
    assert_eq!(store.result(r.job_id).await.expect("result"), None);
}

/// Listing is per tenant, newest first, and the cursor visits each job once.
pub async fn list_by_tenant_with_cursor(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let a = unique("tenant");
    let b = unique("tenant");
    let mut ids = Vec::new();
    for i in 0..25 {
        let r = record(&a, &bytes(&format!("{a}{i}"), 64), &bytes("x", 8));
        ids.push(r.job_id);
        store.save(&[r]).await.expect("save");
    }
    for i in 0..5 {
        store
            .save(&[record(&b, &bytes(&format!("{b}{i}"), 64), &bytes("y", 8))])
            .await
            .expect("save");
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list(&a, cursor, 10).await.expect("list");
        assert!(page.items.len() <= 10);
        assert!(page.items.iter().all(|r| r.tenant == a));
        seen.extend(page.items.iter().map(|r| r.job_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let unique_seen: HashSet<_> = seen.iter().collect();
    assert_eq!(unique_seen.len(), 25);
    assert!(
        store
            .list(&unique("nobody"), None, 10)
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

/// Blobs of several megabytes round-trip.
pub async fn large_blobs(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let big: Vec<u8> = (0..6 * 1024 * 1024)
        .map(|i: usize| (i % 253) as u8)
        .collect();
    let r = record(&unique("tenant"), &big, &bytes(&unique("r"), 1024 * 1024));
    store.save(std::slice::from_ref(&r)).await.expect("save");
    assert_eq!(
        store.original(r.job_id).await.expect("original"),
        r.original
    );
}

/// The activity log records a redelivered event once.
pub async fn activity_is_idempotent(_: Arc<dyn ImageStore>, log: Arc<dyn ActivityLog>) {
    let job = Uuid::now_v7();
    let entry = |event: &str, at: i64, error: Option<&str>| ActivityEntry {
        message_id: Uuid::now_v7(),
        at_ms: at,
        event: event.into(),
        job_id: job,
        tenant: "t".into(),
        worker: Some("w".into()),
        size: 1234,
        duration_ms: Some(12.5),
        error: error.map(str::to_string),
        attempt: Some(2),
    };
    let a = entry("image.submitted", 1000, None);
    let b = entry("image.failed", 2000, Some("bad"));
    log.append(&[a.clone(), b.clone()]).await.expect("append");
    log.append(std::slice::from_ref(&a))
        .await
        .expect("append again");
    log.append(&[b.clone(), b.clone()])
        .await
        .expect("append duplicate batch");
    assert_eq!(log.for_job(job).await.expect("for_job"), vec![a, b]);
    assert!(log.for_job(Uuid::now_v7()).await.expect("none").is_empty());
}

/// Parts saved as claim-check references stay references: reading them back
/// gives the reference (or, from a store that also holds the bytes, the
/// bytes), and `referenced` reports their keys.
pub async fn references_are_kept_and_reported(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    use crate::blob::BlobRef;
    let big = bytes(&unique("big"), 3000);
    let mut r = record(&unique("tenant"), &big, b"small result");
    let reference = BlobRef {
        key: crate::store::sha256_hex(&big),
        content_type: "image/png".into(),
        size: big.len() as u64,
    };
    r.original = Some(reference.to_blob());
    store.save(std::slice::from_ref(&r)).await.unwrap();
    let back = store.original(r.job_id).await.unwrap().expect("original");
    match BlobRef::of_blob(&back).unwrap() {
        Some(got) => assert_eq!(got, reference),
        None => assert_eq!(back.data, big),
    }
    let result = store.result(r.job_id).await.unwrap().expect("result");
    assert_eq!(&result.data[..], b"small result");
    let unknown = crate::store::sha256_hex(b"never stored");
    let used = store
        .referenced(&[reference.key.clone(), unknown.clone()])
        .await
        .unwrap();
    assert!(used.contains(&reference.key), "{used:?}");
    assert!(!used.contains(&unknown));
    let result_key = crate::store::sha256_hex(b"small result");
    assert!(
        store
            .referenced(std::slice::from_ref(&result_key))
            .await
            .unwrap()
            .contains(&result_key)
    );
    // A failed job has no media info; its reference must survive anyway.
    let mut failed = record(&unique("tenant"), &big, b"unused");
    failed.state = JobState::Failed;
    failed.result = None;
    failed.info.original = None;
    failed.info.result = None;
    failed.error = Some(crate::store::JobFailure {
        code: "transform_failed".into(),
        message: "crop outside the image".into(),
    });
    failed.original = Some(reference.to_blob());
    store.save(std::slice::from_ref(&failed)).await.unwrap();
    let back = store
        .original(failed.job_id)
        .await
        .unwrap()
        .expect("original");
    match BlobRef::of_blob(&back).unwrap() {
        Some(got) => assert_eq!(got, reference),
        None => assert_eq!(back.data, big),
    }
}

/// A batch with a record the archive refuses stores nothing, with a
/// permanent error; the good records saved alone are then stored.
pub async fn a_batch_is_all_or_nothing(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let tenant = unique("tenant");
    let good_a = record(
        &tenant,
        &bytes(&unique("a"), 900),
        &bytes(&unique("ra"), 90),
    );
    let good_b = record(
        &tenant,
        &bytes(&unique("b"), 900),
        &bytes(&unique("rb"), 90),
    );
    let mut bad = record(
        &tenant,
        &bytes(&unique("c"), 900),
        &bytes(&unique("rc"), 90),
    );
    bad.tenant = "t".repeat(crate::store::MAX_TENANT_LEN + 1);
    let err = store
        .save(&[good_a.clone(), bad.clone(), good_b.clone()])
        .await
        .expect_err("a batch holding a refused record must fail");
    assert!(!err.is_retryable(), "a refused record is permanent: {err}");
    for r in [&good_a, &bad, &good_b] {
        assert_eq!(store.get(r.job_id).await.expect("get"), None, "{err}");
    }
    let keys: Vec<String> = [&good_a, &good_b]
        .iter()
        .flat_map(|r| {
            let (o, res) = r.blob_keys();
            [o, res]
        })
        .flatten()
        .collect();
    assert!(
        store
            .referenced(&keys)
            .await
            .expect("referenced")
            .is_empty(),
        "no job of the failed batch is referenced"
    );
    store
        .save(&[good_a.clone(), good_b.clone()])
        .await
        .expect("the good records alone");
    for r in [&good_a, &good_b] {
        assert!(store.get(r.job_id).await.expect("get").is_some());
    }
}

/// Deleting a job removes it for every reader, releases its blobs but
/// those another job shares, is idempotent and tenant-scoped, and a late
/// duplicate save does not bring it back.
pub async fn delete_releases_blobs_but_shared_ones(
    store: Arc<dyn ImageStore>,
    _: Arc<dyn ActivityLog>,
) {
    let tenant = unique("tenant");
    let shared = bytes(&unique("shared"), 4000);
    let a = record(&tenant, &shared, &bytes(&unique("ra"), 300));
    let b = record(&tenant, &shared, &bytes(&unique("rb"), 300));
    store.save(&[a.clone(), b.clone()]).await.expect("save");
    let (shared_key, a_result) = a.blob_keys();
    let (shared_key, a_result) = (shared_key.expect("key"), a_result.expect("key"));

    let other = store
        .delete(a.job_id, "someone-else")
        .await
        .expect("delete");
    assert_eq!(other, crate::store::Deletion::default(), "another tenant's");
    assert!(store.get(a.job_id).await.expect("get").is_some());

    let first = store.delete(a.job_id, &tenant).await.expect("delete");
    assert!(first.found);
    assert_eq!(
        first.released,
        vec![a_result.clone()],
        "only its own result"
    );
    assert_eq!(store.get(a.job_id).await.expect("get"), None);
    assert_eq!(store.original(a.job_id).await.expect("original"), None);
    assert_eq!(store.result(a.job_id).await.expect("result"), None);
    let page = store.list(&tenant, None, 10).await.expect("list");
    assert_eq!(
        page.items.iter().map(|r| r.job_id).collect::<Vec<_>>(),
        vec![b.job_id]
    );
    let used = store
        .referenced(&[shared_key.clone(), a_result.clone()])
        .await
        .expect("referenced");
    assert!(
        used.contains(&shared_key) && !used.contains(&a_result),
        "{used:?}"
    );
    assert_eq!(store.original(b.job_id).await.expect("b"), b.original);

    let again = store.delete(a.job_id, &tenant).await.expect("again");
    assert!(again.found, "deleting twice finds the deleted job");
    assert!(again.released.is_empty());
    store
        .save(std::slice::from_ref(&a))
        .await
        .expect("late duplicate");
    assert_eq!(store.get(a.job_id).await.expect("get"), None, "not revived");

    let last = store.delete(b.job_id, &tenant).await.expect("delete b");
    assert!(last.found);
    let mut released = last.released;
    released.sort();
    let (_, b_result) = b.blob_keys();
    let mut want = vec![shared_key.clone(), b_result.expect("key")];
    want.sort();
    assert_eq!(released, want);
    assert!(
        store
            .referenced(&[shared_key])
            .await
            .expect("referenced")
            .is_empty()
    );
    let unknown = store
        .delete(Uuid::now_v7(), &tenant)
        .await
        .expect("unknown");
    assert!(!unknown.found);
}

/// `expire` removes jobs finished before the cutoff, keeps newer ones and
/// the blobs they share, and works in bounded steps.
pub async fn expire_removes_old_jobs_only(store: Arc<dyn ImageStore>, _: Arc<dyn ActivityLog>) {
    let tenant = unique("tenant");
    let shared = bytes(&unique("shared"), 2000);
    let mut old: Vec<ArchiveRecord> = (0..3)
        .map(|i| record(&tenant, &shared, &bytes(&unique(&format!("old{i}")), 100)))
        .collect();
    for (i, r) in old.iter_mut().enumerate() {
        r.finished_at_ms = 1_000 + i as i64;
    }
    let mut new = record(&tenant, &shared, &bytes(&unique("new"), 100));
    new.finished_at_ms = 5_000;
    let mut all = old.clone();
    all.push(new.clone());
    store.save(&all).await.expect("save");

    let first = store.expire(2_000, 2).await.expect("expire");
    assert_eq!(first.jobs, 2, "at most the limit");
    let rest = store.expire(2_000, 100).await.expect("expire");
    assert_eq!(rest.jobs, 1);
    assert_eq!(store.expire(2_000, 100).await.expect("again").jobs, 0);
    for r in &old {
        assert_eq!(store.get(r.job_id).await.expect("get"), None);
    }
    let mut released: Vec<String> = first.released.into_iter().chain(rest.released).collect();
    released.sort();
    let mut want: Vec<String> = old.iter().filter_map(|r| r.blob_keys().1).collect();
    want.sort();
    assert_eq!(released, want, "the old results, not the shared original");
    assert!(store.get(new.job_id).await.expect("get").is_some());
    assert_eq!(
        store.original(new.job_id).await.expect("original"),
        new.original
    );
}

/// Deleting a job while another job sharing its original is saved never
/// leaves the saved job without its bytes, whichever commits first.
pub async fn delete_races_a_save_of_a_shared_blob(
    store: Arc<dyn ImageStore>,
    _: Arc<dyn ActivityLog>,
) {
    let tenant = unique("tenant");
    for round in 0..20 {
        let shared = bytes(&unique(&format!("race{round}")), 3000);
        let first = record(&tenant, &shared, &bytes(&unique("ra"), 100));
        let second = record(&tenant, &shared, &bytes(&unique("rb"), 100));
        store
            .save(std::slice::from_ref(&first))
            .await
            .expect("save");
        let (deleted, saved) = tokio::join!(
            store.delete(first.job_id, &tenant),
            store.save(std::slice::from_ref(&second)),
        );
        assert!(deleted.expect("delete").found);
        saved.expect("save");
        assert_eq!(
            store.original(second.job_id).await.expect("original"),
            second.original,
            "round {round}: the saved job lost the shared original"
        );
    }
}

fn new_key(tenant: &str, scopes: Scopes, expires_at_ms: Option<i64>, now: i64) -> ApiKey {
    ApiKey::generate(tenant, scopes, "conformance", expires_at_ms, now)
        .expect("generate a key")
        .1
}

/// Keys read back whole, by id and by tenant in creation order.
pub async fn keys_are_stored_found_and_listed(store: Arc<dyn KeyStore>) {
    let (a, b) = (unique("tenant-a"), unique("tenant-b"));
    let k1 = new_key(&a, Scopes::CLIENT, Some(9_000_000_000_000), 1_000);
    let k2 = new_key(&a, Scopes::ALL, None, 2_000);
    let k3 = new_key(&b, Scopes::READ, None, 1_500);
    for k in [&k2, &k1, &k3] {
        store.create_key(k).await.expect("create");
    }
    assert_eq!(store.key(&k1.id).await.expect("key"), Some(k1.clone()));
    assert_eq!(store.key(&k2.id).await.expect("key"), Some(k2.clone()));
    assert_eq!(store.key("0000000000000000").await.expect("key"), None);
    let of_a = store.keys(Some(&a)).await.expect("keys");
    assert_eq!(of_a, vec![k1.clone(), k2.clone()]);
    let all = store.keys(None).await.expect("keys");
    for k in [&k1, &k2, &k3] {
        assert!(all.contains(k), "{} missing from the whole list", k.id);
    }
}

/// A second key with a taken id is refused, and the first one stays.
pub async fn a_taken_key_id_is_refused(store: Arc<dyn KeyStore>) {
    let first = new_key(&unique("tenant"), Scopes::READ, None, 1);
    store.create_key(&first).await.expect("create");
    let mut second = new_key(&unique("tenant"), Scopes::ALL, None, 2);
    second.id = first.id.clone();
    let err = store.create_key(&second).await.expect_err("a taken id");
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    assert_eq!(store.key(&first.id).await.expect("key"), Some(first));
}

/// Revoking marks the key once; unknown keys say so.
pub async fn a_revocation_keeps_its_first_time(store: Arc<dyn KeyStore>) {
    let key = new_key(&unique("tenant"), Scopes::CLIENT, None, 1);
    store.create_key(&key).await.expect("create");
    assert!(store.revoke_key(&key.id, 100).await.expect("revoke"));
    assert!(store.revoke_key(&key.id, 200).await.expect("revoke again"));
    let stored = store
        .key(&key.id)
        .await
        .expect("key")
        .expect("still listed");
    assert_eq!(stored.revoked_at_ms, Some(100));
    assert_eq!(stored.state(300), crate::auth::KeyState::Revoked);
    assert!(
        !store
            .revoke_key("ffffffffffffffff", 100)
            .await
            .expect("revoke")
    );
}
