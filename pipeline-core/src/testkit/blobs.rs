//! Cases every [`BlobStore`] passes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::blob::BlobStore;
use crate::envelope::now_ms;
use crate::store::sha256_hex;

fn random(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    fastrand::fill(&mut v);
    Bytes::from(v)
}

/// Wait until the clock is in the second after the one holding `t`: some
/// stores keep times to the second only (S3's `Last-Modified`).
async fn pass(t: i64) {
    let next_second = (t / 1000 + 1) * 1000;
    while now_ms() <= next_second {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bytes and media type come back as stored.
pub async fn put_get_round_trip(store: Arc<dyn BlobStore>) {
    let data = random(70_000);
    let key = sha256_hex(&data);
    store.put(&key, "image/png", data.clone()).await.unwrap();
    let blob = store.get(&key).await.unwrap().expect("stored blob");
    assert_eq!(blob.data, data);
    assert_eq!(blob.content_type, "image/png");
    store.ready().await.unwrap();
}

/// Unknown keys read as `None`; deleting twice is fine; a deleted blob is gone.
pub async fn unknown_and_deleted_keys(store: Arc<dyn BlobStore>) {
    let data = random(1000);
    let key = sha256_hex(&data);
    assert!(store.get(&key).await.unwrap().is_none());
    store.delete(&key).await.unwrap();
    store.put(&key, "image/jpeg", data).await.unwrap();
    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    assert!(store.get(&key).await.unwrap().is_none());
}

/// A second `put` of a key keeps the bytes and refreshes its age.
pub async fn put_again_refreshes(store: Arc<dyn BlobStore>) {
    let data = random(5000);
    let key = sha256_hex(&data);
    store.put(&key, "image/png", data.clone()).await.unwrap();
    let mid = now_ms();
    pass(mid).await;
    let old = store.stored_before(mid + 1).await.unwrap();
    assert!(
        old.iter().any(|m| m.key == key && m.size == 5000),
        "{old:?}"
    );
    store.put(&key, "image/png", data.clone()).await.unwrap();
    let old = store.stored_before(mid + 1).await.unwrap();
    assert!(
        !old.iter().any(|m| m.key == key),
        "a blob stored again must not look old: {old:?}"
    );
    assert_eq!(store.get(&key).await.unwrap().unwrap().data, data);
    store.delete(&key).await.unwrap();
}

/// `stored_before` lists old blobs and not new ones.
pub async fn stored_before_lists_only_older(store: Arc<dyn BlobStore>) {
    let (a, b) = (random(100), random(200));
    let (ka, kb) = (sha256_hex(&a), sha256_hex(&b));
    store.put(&ka, "image/png", a).await.unwrap();
    let mid = now_ms();
    pass(mid).await;
    store.put(&kb, "image/png", b).await.unwrap();
    let old: Vec<String> = store
        .stored_before(mid + 1)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(old.contains(&ka));
    assert!(!old.contains(&kb));
    store.delete(&ka).await.unwrap();
    store.delete(&kb).await.unwrap();
}

/// Many writers of the same key at once all succeed, with one copy kept.
pub async fn concurrent_puts_of_one_key(store: Arc<dyn BlobStore>) {
    let data = random(300_000);
    let key = sha256_hex(&data);
    let puts = (0..8).map(|_| {
        let (store, key, data) = (store.clone(), key.clone(), data.clone());
        async move { store.put(&key, "image/png", data).await }
    });
    for r in futures::future::join_all(puts).await {
        r.unwrap();
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().data, data);
    store.delete(&key).await.unwrap();
}

/// A 50 MB blob round-trips intact (backends with packet limits chunk it).
pub async fn large_blob_50mb(store: Arc<dyn BlobStore>) {
    let data = random(50 * 1024 * 1024 + 123);
    let key = sha256_hex(&data);
    store.put(&key, "image/png", data.clone()).await.unwrap();
    let back = store.get(&key).await.unwrap().expect("stored blob");
    assert_eq!(back.data.len(), data.len());
    assert!(back.data == data, "50 MB blob came back different");
    store.delete(&key).await.unwrap();
    assert!(store.get(&key).await.unwrap().is_none());
}

/// Keys that are not a hex SHA-256 are refused, never used as paths or SQL.
pub async fn bad_keys_are_refused(store: Arc<dyn BlobStore>) {
    for key in ["../../etc/passwd", "", "zz", &"g".repeat(64)] {
        assert!(
            store
                .put(key, "image/png", Bytes::from_static(b"x"))
                .await
                .is_err(),
            "key {key:?} accepted"
        );
    }
}

/// `delete_if_stored_before` removes an old blob, not a refreshed one.
pub async fn conditional_delete(store: Arc<dyn BlobStore>) {
    let (a, b) = (random(64), random(65));
    let (ka, kb) = (sha256_hex(&a), sha256_hex(&b));
    store.put(&ka, "image/png", a).await.unwrap();
    store.put(&kb, "image/png", b.clone()).await.unwrap();
    let mid = now_ms();
    pass(mid).await;
    store.put(&kb, "image/png", b).await.unwrap();
    assert!(store.delete_if_stored_before(&ka, mid + 1).await.unwrap());
    assert!(!store.delete_if_stored_before(&kb, mid + 1).await.unwrap());
    assert!(store.get(&ka).await.unwrap().is_none());
    assert!(store.get(&kb).await.unwrap().is_some());
    assert!(!store.delete_if_stored_before(&ka, mid + 1).await.unwrap());
    store.delete(&kb).await.unwrap();
}
