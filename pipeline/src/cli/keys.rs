//! `pipeline keys create|list|revoke`: API keys in the archive database.

use clap::{Args, Subcommand};
use pipeline_core::Error;
use pipeline_core::auth::{ApiKey, KeyState, Scopes};
use pipeline_core::envelope::now_ms;

use crate::settings::DEFAULT_DATABASE_URL;

/// Options of `pipeline keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
    /// Archive database (as for `serve`): where the keys are kept.
    #[arg(
        long,
        global = true,
        env = "PIPELINE_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Namespace (table prefix).
    #[arg(
        long,
        global = true,
        env = "PIPELINE_NAMESPACE",
        default_value = "pipeline"
    )]
    pub namespace: String,
}

/// The `pipeline keys` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print it on standard output; it is shown only this
    /// once (the database keeps its hash).
    Create {
        /// The tenant the key acts as.
        #[arg(long)]
        tenant: String,
        /// What it may do: a comma-separated list of upload, read, admin.
        #[arg(long, default_value = "upload,read")]
        scopes: String,
        /// A note for people (who holds it, what for).
        #[arg(long, default_value = "")]
        label: String,
        /// Days until it stops working (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List keys (ids, never the keys).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id (the 16 characters after `pk_`); running API
    /// processes refuse it within their key cache time (PIPELINE_KEY_CACHE).
    Revoke {
        /// The key's id.
        id: String,
    },
}

/// Run one `pipeline keys` subcommand.
pub(crate) async fn keys(args: KeysArgs) -> Result<(), Error> {
    let backends = crate::backends::compiled();
    let options = pipeline_core::connect::ConnectOptions::new(args.namespace.clone());
    let store = backends
        .connect_archive(&args.database_url, &options)
        .await?
        .keys;
    let now = now_ms();
    match args.command {
        KeysCommand::Create {
            tenant,
            scopes,
            label,
            expires_in_days,
        } => {
            let scopes: Scopes = scopes.parse()?;
            let expires = expires_in_days.map(|d| now + i64::from(d) * 86_400_000);
            let (key, record) = ApiKey::generate(&tenant, scopes, &label, expires, now)?;
            store.create_key(&record).await?;
            println!("{key}");
            eprintln!(
                "key {} for tenant {} ({}), expires {}; it is shown only now",
                record.id,
                record.tenant,
                record.scopes,
                expires.map_or("never".to_string(), time)
            );
        }
        KeysCommand::List { tenant } => {
            let keys = store.keys(tenant.as_deref()).await?;
            println!(
                "{:<16}  {:<20}  {:<17}  {:<8}  {:<20}  {:<20}  LABEL",
                "ID", "TENANT", "SCOPES", "STATE", "CREATED", "EXPIRES"
            );
            for k in keys {
                let state = match k.state(now) {
                    KeyState::Active => "active",
                    KeyState::Expired => "expired",
                    KeyState::Revoked => "revoked",
                };
                println!(
                    "{:<16}  {:<20}  {:<17}  {:<8}  {:<20}  {:<20}  {}",
                    k.id,
                    k.tenant,
                    k.scopes.to_string(),
                    state,
                    time(k.created_at_ms),
                    k.expires_at_ms.map_or("never".to_string(), time),
                    k.label
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let id = id.trim().trim_start_matches("pk_");
            let id = id.split('_').next().unwrap_or_default();
            if !store.revoke_key(id, now).await? {
                return Err(Error::NotFound(format!("no key with id {id:?}")));
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// `ms` as `2026-12-02T11:05:31Z`.
pub(crate) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}
