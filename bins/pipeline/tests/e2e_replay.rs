//! `pipeline replay-dead` against the real RabbitMQ: a dead-lettered
//! archive record is published again and reaches save2db's queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use pipeline_core::broker::{Subscription, dead_letter_queue};
use pipeline_core::envelope::events;
use pipeline_core::services::{queues, topology};
use pipeline_core::{Broker, Envelope};
use pipeline_rabbitmq::RabbitBroker;

fn replay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("replay-dead")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_go_back_to_their_queue() {
    let amqp = std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let url = format!("{amqp}?expires_ms=600000");
    let ns = pipeline_core::testkit::unique("replay").replace('-', "_");
    let broker = RabbitBroker::connect(&url, &ns, "replay-test")
        .await
        .unwrap();
    broker.declare(&topology(3)).await.unwrap();
    let record = Envelope::new(events::ARCHIVED, uuid::Uuid::now_v7(), "t");
    broker.publish(record.clone()).await.unwrap();
    let wait = Duration::from_secs(10);
    let mut save = broker
        .subscribe(Subscription::new(queues::SAVE2DB, 1))
        .await
        .unwrap();
    let d = tokio::time::timeout(wait, save.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    d.dead_letter("the database refused it").await.unwrap();

    let (ok, out, err) = replay(&[
        "--broker-url",
        &url,
        "--namespace",
        &ns,
        "--queue",
        "save2db",
        "--idle-ms",
        "1000",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "save2db.dead: 1 replayed, 0 kept");
    let d = tokio::time::timeout(wait, save.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().id, record.id);
    assert_eq!(d.attempt(), 1);
    d.ack().await.unwrap();
    let mut dead = broker
        .subscribe(Subscription::new(dead_letter_queue(queues::SAVE2DB), 1))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), dead.next())
            .await
            .is_err(),
        "the dead-letter queue is not empty"
    );
    broker.close().await.unwrap();

    let (ok, _, err) = replay(&["--broker-url", &url, "--queue", "nope"]);
    assert!(!ok && err.contains("unknown queue \"nope\""), "{err}");
    let (ok, _, err) = replay(&["--broker-url", "memory://", "--queue", "save2db"]);
    assert!(!ok && err.contains("nothing to reach from here"), "{err}");
}
