//! `pipeline admin queues|dead|replay|purge`: the pipeline's queues from a
//! shell, straight from the broker (no API process needed).

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use pipeline_core::services::admin::{self, DeadLetter};
use pipeline_core::{Broker, Error};

/// The broker an operator's command talks to.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker (as for `serve`; the in-memory broker lives inside its
    /// process: use the API's `/v1/admin` routes for it).
    #[arg(
        long,
        global = true,
        env = "PIPELINE_BROKER_URL",
        hide_env_values = true
    )]
    pub broker_url: Option<String>,
    /// Namespace (queue prefix).
    #[arg(
        long,
        global = true,
        env = "PIPELINE_NAMESPACE",
        default_value = "pipeline"
    )]
    pub namespace: String,
}

impl BrokerArgs {
    /// Connect as `pipeline-<what>-<pid>`.
    pub(crate) async fn connect(&self, what: &str) -> Result<Arc<dyn Broker>, Error> {
        let Some(url) = self.broker_url.as_deref() else {
            return Err(Error::Config(
                "no broker: set PIPELINE_BROKER_URL or --broker-url".into(),
            ));
        };
        if pipeline_core::urls::scheme_of(url).as_deref() == Some("memory") {
            return Err(Error::Config(
                "the in-memory broker lives inside its process: there is nothing to reach from here (use the API's /v1/admin routes)"
                    .into(),
            ));
        }
        let mut options = pipeline_core::connect::ConnectOptions::new(self.namespace.clone());
        options.client_name = format!("{}-{what}-{}", self.namespace, std::process::id());
        options.drain_timeout = Duration::from_secs(5);
        crate::backends::compiled()
            .connect_broker(url, &options)
            .await
    }
}

/// Options of `pipeline admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
    /// Where the queues are.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Print JSON (the API's bodies) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The `pipeline admin` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Every queue: messages, consumers, dead letters.
    Queues,
    /// A queue's dead letters with their reason, left in place.
    Dead {
        /// transform, api.results, save2db or activity.
        queue: String,
        /// Most dead letters shown, oldest first (1-1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Publish a queue's dead letters again (all, or one job's).
    Replay {
        /// transform, api.results, save2db or activity.
        queue: String,
        /// Only this job's dead letters.
        #[arg(long)]
        job: Option<uuid::Uuid>,
        /// Replay at most this many.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
        /// Stop once no dead letter came for this long.
        #[arg(long, default_value_t = 2000)]
        idle_ms: u64,
    },
    /// Remove a queue's dead letters for good.
    Purge {
        /// transform, api.results, save2db or activity.
        queue: String,
        /// Confirm: the messages cannot be recovered.
        #[arg(long)]
        yes: bool,
    },
}

/// Run one admin command and print its answer.
pub(crate) async fn admin(args: AdminArgs) -> Result<(), Error> {
    if let AdminCommand::Purge { yes: false, queue } = &args.command {
        return Err(Error::Config(format!(
            "purging removes the dead letters of {queue} for good: add --yes"
        )));
    }
    let broker = args.broker.connect("admin").await?;
    let out = run(broker.as_ref(), &args).await;
    broker.close().await?;
    println!("{}", out?);
    Ok(())
}

async fn run(broker: &dyn Broker, args: &AdminArgs) -> Result<String, Error> {
    let json = |v: serde_json::Value| v.to_string();
    Ok(match &args.command {
        AdminCommand::Queues => {
            let queues = admin::overview(broker).await?;
            if args.json {
                json(serde_json::json!({ "queues": queues }))
            } else {
                let mut out = format!(
                    "{:<12} {:>10} {:>10} {:>13}",
                    "queue", "messages", "consumers", "dead_letters"
                );
                for q in queues {
                    let consumers = q.consumers.map_or("-".to_string(), |c| c.to_string());
                    out += &format!(
                        "\n{:<12} {:>10} {:>10} {:>13}",
                        q.queue, q.messages, consumers, q.dead_letters
                    );
                }
                out
            }
        }
        AdminCommand::Dead { queue, limit } => {
            if !(1..=admin::MAX_PEEK).contains(limit) {
                return Err(Error::Config(format!(
                    "--limit must be 1-{}",
                    admin::MAX_PEEK
                )));
            }
            let dead = admin::peek_dead(broker, queue, *limit).await?;
            if args.json {
                json(serde_json::json!({ "queue": queue, "dead_letters": dead }))
            } else if dead.is_empty() {
                format!("{queue}.dead is empty")
            } else {
                dead.iter().map(describe).collect::<Vec<_>>().join("\n")
            }
        }
        AdminCommand::Replay {
            queue,
            job,
            limit,
            idle_ms,
        } => {
            let queue = admin::pipeline_queue(queue)?;
            let idle = Duration::from_millis((*idle_ms).max(1));
            let r = match job {
                Some(id) => {
                    pipeline_core::services::replay_dead_job(broker, queue, *id, idle).await?
                }
                None => pipeline_core::services::replay_dead(broker, queue, *limit, idle).await?,
            };
            if args.json {
                json(serde_json::json!({ "queue": queue, "replayed": r.replayed, "kept": r.kept }))
            } else {
                format!("{queue}.dead: {} replayed, {} kept", r.replayed, r.kept)
            }
        }
        AdminCommand::Purge { queue, .. } => {
            let n = admin::purge_dead(broker, queue).await?;
            if args.json {
                json(serde_json::json!({ "queue": queue, "purged": n }))
            } else {
                format!("{queue}.dead: {n} purged")
            }
        }
    })
}

/// One line per dead letter: when, which job, why.
fn describe(d: &DeadLetter) -> String {
    let at = d.dead_at_ms.map_or("-".into(), super::keys::time);
    let bytes: u64 = d.parts.iter().map(|p| p.bytes).sum();
    format!(
        "{at} job {} {} tenant {} cause {} after {} attempts, {} bytes: {}",
        d.job_id,
        d.event,
        d.tenant,
        d.cause.as_deref().unwrap_or("-"),
        d.attempts.map_or("-".into(), |a| a.to_string()),
        bytes,
        d.reason.as_deref().unwrap_or("-"),
    )
}
