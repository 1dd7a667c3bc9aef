//! A chaos run across hosts. Network namespaces on this machine make a
//! load-balancer host (nginx with `deploy/nginx/pipeline.conf`), two API
//! hosts, two transformer hosts and a save2db + activity host, linked by
//! veth to a bridge; the broker, the result store (Redis) and the archive
//! (PostgreSQL) are the machine's servers, reached over the links through
//! the bridge's address. While 2,000 images are uploaded through nginx,
//! a random role process is SIGKILLed every few seconds and started again,
//! one host's link is cut for several seconds (a transformer host, then an
//! API host), and the transformers go from 1 to 4 and back to 1.
//!
//! Every upload must end with its correct result or a clear error (clients
//! retry with the same `Idempotency-Key`, as a real one would), and the
//! archive must hold exactly one row per accepted job. The figures are
//! printed. Run on RabbitMQ and on Redis; needs root, iproute2 and nginx
//! (`scripts/test-setup.sh` installs nginx).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hosts::{Host, Net};
use pipeline_core::ImageStore;
use serde_json::Value;
use uuid::Uuid;

const UPLOADS: usize = 2000;
const CLIENTS: usize = 16;
/// Longest the whole run may take before the test fails.
const RUN_WITHIN: Duration = Duration::from_secs(480);
const TENANT: &str = "default";

/// A role process running in a host's namespace.
struct Role {
    name: String,
    bin: &'static str,
    host: Host,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Role {
    fn start(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.ns, self.bin])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(
                "RUST_LOG",
                std::env::var("PIPELINE_E2E_LOG").unwrap_or_else(|_| "error".into()),
            );
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        pipeline_core::testkit::process::first_line(
            &mut child,
            &self.name,
            Duration::from_secs(60),
        );
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the drain.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(70);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What happened during the run.
#[derive(Default)]
struct Figures {
    kills: BTreeMap<String, usize>,
    cuts: Vec<String>,
    scale: Vec<usize>,
}

/// How one upload ended.
enum Ended {
    Done { id: Uuid, tries: usize },
    Refused { status: u16, code: String },
}

async fn upload_one(http: &reqwest::Client, base: &str, n: usize) -> Ended {
    let key = Uuid::now_v7();
    let png = common::image_bytes(image::ImageFormat::Png, 64, 48, (n % 251) as u8);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut tries = 0;
    let id = loop {
        tries += 1;
        let r = http
            .post(format!("{base}/v1/images?transform=resize:32x24"))
            .header("content-type", "image/png")
            .header("idempotency-key", key.to_string())
            .body(png.clone())
            .send()
            .await;
        let retry = match r {
            Ok(r) if r.status() == 202 || r.status() == 200 => {
                let body: Value = r.json().await.unwrap();
                let id: Uuid = body["images"][0]["id"].as_str().unwrap().parse().unwrap();
                assert_eq!(id, pipeline_core::services::keyed_job_id(TENANT, key));
                break id;
            }
            Ok(r) if [502, 503, 504].contains(&r.status().as_u16()) => {
                // A clear, retryable error: JSON with a code.
                let status = r.status().as_u16();
                let body: Value = r
                    .json()
                    .await
                    .unwrap_or_else(|e| panic!("a {status} without a JSON error body: {e}"));
                assert!(body["error"]["code"].is_string(), "{body}");
                true
            }
            // The connection died with a role or a link.
            Err(_) => true,
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or_default();
                let code = body["error"]["code"].as_str().unwrap_or_default();
                assert!(
                    !code.is_empty(),
                    "upload {n}: {status} without an error code"
                );
                return Ended::Refused {
                    status,
                    code: code.to_string(),
                };
            }
        };
        assert!(retry);
        if Instant::now() > deadline {
            return Ended::Refused {
                status: 0,
                code: "gave_up_retrying".into(),
            };
        }
        tokio::time::sleep(Duration::from_millis(100 * tries.min(20) as u64)).await;
    };
    // The result, however long the chaos lasts.
    loop {
        let r = http
            .get(format!("{base}/v1/images/{id}/result?wait=20"))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {
                let bytes = r.bytes().await.unwrap();
                let img = image::load_from_memory(&bytes).expect("the result decodes");
                assert_eq!((img.width(), img.height()), (32, 24), "job {id}");
                return Ended::Done { id, tries };
            }
            Ok(r) if r.status() == 202 => {}
            Ok(r) if [502, 503, 504].contains(&r.status().as_u16()) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(r) => panic!(
                "job {id}: result answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(120),
            "job {id}: no result"
        );
    }
}

/// nginx on `lb` with the repository's configuration, in front of `apis`.
fn start_nginx(lb: &Host, apis: &[String], dir: &std::path::Path) -> Child {
    let site = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/nginx/pipeline.conf"
    ))
    .unwrap();
    let servers: String = apis
        .iter()
        .map(|a| format!("    server {a} max_fails=3 fail_timeout=10s;\n"))
        .collect();
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = 0;
    for line in site.lines() {
        if line.trim_start().starts_with("server 127.0.0.1:") {
            if replaced == 0 {
                lines.push(servers.trim_end().to_string());
            }
            replaced += 1;
        } else if line.trim() == "listen 80;" {
            lines.push(format!("    listen {}:8080;", lb.ip));
            replaced += 1;
        } else {
            lines.push(line.to_string());
        }
    }
    assert_eq!(replaced, 3, "deploy/nginx/pipeline.conf changed shape");
    std::fs::write(dir.join("pipeline.conf"), lines.join("\n")).unwrap();
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\ndaemon off;\n\
         events {{ worker_connections 2048; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/pipeline.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let conf = dir.join("nginx.conf");
    let check = Command::new("ip")
        .args(["netns", "exec", &lb.ns, "nginx", "-t", "-c"])
        .arg(&conf)
        .output()
        .expect("nginx is installed (scripts/test-setup.sh)");
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &lb.ns, "nginx", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    pipeline_core::testkit::process::kill_with_this_process(child.id());
    child
}

async fn chaos_run(broker: &str) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(Net::create());
    let gw = net.gateway();
    net.forward(5672, "127.0.0.1:5672").await;
    net.forward(6379, "127.0.0.1:6379").await;
    net.forward(5432, "127.0.0.1:5432").await;
    let lb = net.host("lb", 2);
    let api_hosts = [net.host("api1", 3), net.host("api2", 4)];
    let t_hosts = [net.host("tr1", 5), net.host("tr2", 6)];
    let store_host = net.host("store", 7);

    let ns = pipeline_core::testkit::unique("chaos").replace('-', "_");
    let broker_url = match broker {
        "rabbitmq" => {
            format!("amqp://guest:guest@{gw}:5672/%2f?expires_ms=900000&publish_timeout_ms=60000")
        }
        _ => format!("redis://{gw}:6379?key_ttl_s=1800&claim_idle_ms=3000"),
    };
    let db_url = format!("postgres://postgres@{gw}:5432/test");
    let env = |listen: String| {
        vec![
            ("PIPELINE_BROKER_URL".to_string(), broker_url.clone()),
            ("PIPELINE_RESULTS_URL".into(), format!("redis://{gw}:6379")),
            ("PIPELINE_DATABASE_URL".into(), db_url.clone()),
            ("PIPELINE_NAMESPACE".into(), ns.clone()),
            ("PIPELINE_AUTH".into(), "none".into()),
            ("PIPELINE_LISTEN".into(), listen.clone()),
            (
                "PIPELINE_HEALTH_LISTEN".into(),
                listen.replace(":4555", ":4570"),
            ),
            ("PIPELINE_CONCURRENCY".into(), "1".into()),
            ("PIPELINE_MAX_IN_FLIGHT".into(), "4096".into()),
            ("PIPELINE_DRAIN_TIMEOUT".into(), "10".into()),
        ]
    };
    let role = |name: String, bin: &'static str, host: &Host| Role {
        env: env(format!("{}:4555", host.ip)),
        name,
        bin,
        host: host.clone(),
        child: None,
    };
    let mut apis: Vec<Role> = api_hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            role(
                format!("api{}", i + 1),
                env!("CARGO_BIN_EXE_pipeline-api"),
                h,
            )
        })
        .collect();
    let mut others = [
        role(
            "save2db".into(),
            env!("CARGO_BIN_EXE_pipeline-save2db"),
            &store_host,
        ),
        role(
            "activity".into(),
            env!("CARGO_BIN_EXE_pipeline-activity"),
            &store_host,
        ),
    ];
    // The activity writer shares the host: another health port.
    others[1].env.retain(|(k, _)| k != "PIPELINE_HEALTH_LISTEN");
    let transformer = |i: usize| {
        let host = &t_hosts[i % 2];
        let mut r = role(
            format!("transformer{}", i + 1),
            env!("CARGO_BIN_EXE_pipeline-transformer"),
            host,
        );
        r.env.retain(|(k, _)| k != "PIPELINE_HEALTH_LISTEN");
        r
    };
    for r in apis.iter_mut().chain(others.iter_mut()) {
        r.start();
    }
    let mut transformers = vec![transformer(0)];
    transformers[0].start();
    let api_addrs: Vec<String> = api_hosts.iter().map(|h| format!("{}:4555", h.ip)).collect();
    let mut nginx = start_nginx(&lb, &api_addrs, dir.path());
    let base = format!("http://{}:8080", lb.ip);
    // nginx answers once it is up.
    let http = pipeline::cli::http_client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let up = Instant::now();
    while http
        .get(format!("{base}/nginx-health"))
        .send()
        .await
        .is_err()
    {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "nginx did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("chaos {broker}: {} hosts up in {:?}", 6, started.elapsed());

    // The uploads, 16 clients.
    let next = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(Mutex::new(Vec::with_capacity(UPLOADS)));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (next, ended, http, base) = (next.clone(), ended.clone(), http.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= UPLOADS {
                    break;
                }
                let e = upload_one(&http, &base, n).await;
                ended.lock().unwrap().push(e);
            }
        }));
    }

    // The chaos, until every upload has ended: at fixed points of the
    // progress the transformers go to 4 and back to 1 and two hosts lose
    // their link for 5 s; every 3 s a random role is SIGKILLed and started
    // again.
    let mut figures = Figures {
        scale: vec![1],
        ..Figures::default()
    };
    let chaos_started = Instant::now();
    let mut last_kill = Instant::now();
    // A cut link is restored by a task of its own: the loop may be busy
    // starting a role again on the very host that is cut off.
    let mut cut: Option<tokio::task::JoinHandle<()>> = None;
    let cut_off = |host: &Host, figures: &mut Figures| {
        figures.cuts.push(host.ns.clone());
        let (net, host) = (net.clone(), host.clone());
        tokio::spawn(async move {
            net.cut(&host);
            tokio::time::sleep(Duration::from_secs(5)).await;
            net.restore(&host);
        })
    };
    let mut step = 0;
    loop {
        let done = ended.lock().unwrap().len();
        if done >= UPLOADS {
            break;
        }
        assert!(
            started.elapsed() < RUN_WITHIN,
            "the run took over {RUN_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        if cut.as_ref().is_some_and(|c| c.is_finished()) {
            cut = None;
        }
        let progress = done * 100 / UPLOADS;
        match step {
            0 if progress >= 10 => {
                for i in 1..4 {
                    let mut t = transformer(i);
                    t.start();
                    transformers.push(t);
                }
                figures.scale.push(transformers.len());
                step += 1;
            }
            1 if progress >= 20 => {
                cut = Some(cut_off(&t_hosts[0], &mut figures));
                step += 1;
            }
            2 if progress >= 45 && cut.is_none() => {
                cut = Some(cut_off(&api_hosts[1], &mut figures));
                step += 1;
            }
            3 if progress >= 70 && cut.is_none() => {
                while transformers.len() > 1 {
                    transformers.pop().unwrap().stop();
                }
                figures.scale.push(transformers.len());
                step += 1;
            }
            _ => {}
        }
        if last_kill.elapsed() >= Duration::from_secs(3) {
            last_kill = Instant::now();
            let pick = fastrand::usize(..apis.len() + others.len() + transformers.len());
            let victim = if pick < apis.len() {
                &mut apis[pick]
            } else if pick < apis.len() + others.len() {
                &mut others[pick - apis.len()]
            } else {
                &mut transformers[pick - apis.len() - others.len()]
            };
            victim.kill();
            *figures.kills.entry(victim.name.clone()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            victim.start();
        }
    }
    if let Some(c) = cut.take() {
        c.await.unwrap();
    }
    assert_eq!(step, 4, "the run ended before every planned fault");
    for c in clients {
        c.await.unwrap();
    }
    let chaos_took = chaos_started.elapsed();

    // Every upload ended with its result or a clear error.
    let ended = std::mem::take(&mut *ended.lock().unwrap());
    let mut accepted = HashSet::new();
    let mut retried = 0;
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for e in &ended {
        match e {
            Ended::Done { id, tries } => {
                assert!(accepted.insert(*id), "job {id} answered twice");
                if *tries > 1 {
                    retried += 1;
                }
            }
            Ended::Refused { status, code } => {
                *refused.entry(format!("{status} {code}")).or_default() += 1;
            }
        }
    }
    assert_eq!(ended.len(), UPLOADS);

    // The archive: exactly one row per accepted job, nothing else.
    let archive = pipeline_sql::SqlArchive::connect("postgres://postgres@127.0.0.1:5432/test", &ns)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let rows = loop {
        let n = archive.image_count().await.unwrap();
        if n >= accepted.len() as u64 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut listed = HashSet::new();
    let mut cursor = None;
    loop {
        let page = archive.list(TENANT, cursor, 500).await.unwrap();
        for r in &page.items {
            assert!(listed.insert(r.job_id), "job {} archived twice", r.job_id);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let missing: Vec<&Uuid> = accepted.difference(&listed).collect();
    let extra: Vec<&Uuid> = listed.difference(&accepted).collect();

    // Stop everything before judging, so nothing is left running.
    for r in transformers
        .iter_mut()
        .chain(apis.iter_mut())
        .chain(others.iter_mut())
    {
        r.kill();
    }
    let _ = nginx.kill();
    let _ = nginx.wait();
    archive.drop_tables().await.unwrap();
    drop(net);

    eprintln!(
        "chaos {broker}: {UPLOADS} uploads through nginx in {:.1} s ({:.0}/s): {} done ({retried} after a retry), refused {refused:?}; \
         kills {:?} ({} in all); links cut {:?}; transformers {:?}; archive {rows} rows, {} missing, {} extra; whole run {:.1} s",
        chaos_took.as_secs_f64(),
        UPLOADS as f64 / chaos_took.as_secs_f64(),
        accepted.len(),
        figures.kills,
        figures.kills.values().sum::<usize>(),
        figures.cuts,
        figures.scale,
        missing.len(),
        extra.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        missing.is_empty(),
        "accepted jobs not archived: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "archived jobs nobody was told about: {extra:?}"
    );
    assert_eq!(rows, accepted.len() as u64);
    assert!(
        refused.keys().all(|k| !k.starts_with("0 ")),
        "uploads that never got an answer: {refused:?}"
    );
}

/// One run at a time: each loads both cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_across_hosts_on_rabbitmq() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos_run("rabbitmq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_across_hosts_on_redis() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos_run("redis").await;
}
