//! [`KeyStore`] on the `{namespace}_api_keys` table.

use async_trait::async_trait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, QueryResult};

use pipeline_core::auth::{ApiKey, KeyStore};
use pipeline_core::{Error, Result};

use crate::SqlArchive;

const COLUMNS: [&str; 8] = [
    "id",
    "tenant",
    "scopes",
    "label",
    "created_at_ms",
    "expires_at_ms",
    "revoked_at_ms",
    "hash",
];

impl SqlArchive {
    fn key_of(&self, row: &QueryResult) -> Result<ApiKey> {
        let get_s = |c: &str| row.try_get::<String>("", c).map_err(|e| self.err(e));
        let get_i = |c: &str| row.try_get::<Option<i64>>("", c).map_err(|e| self.err(e));
        let scopes = get_s("scopes")?;
        Ok(ApiKey {
            id: get_s("id")?,
            tenant: get_s("tenant")?,
            scopes: scopes.parse().map_err(|_| {
                Error::backend(
                    self.backend,
                    format!("a stored key has unknown scopes {scopes:?}"),
                    false,
                )
            })?,
            label: get_s("label")?,
            created_at_ms: get_i("created_at_ms")?.unwrap_or_default(),
            expires_at_ms: get_i("expires_at_ms")?,
            revoked_at_ms: get_i("revoked_at_ms")?,
            hash: get_s("hash")?,
        })
    }
}

#[async_trait]
impl KeyStore for SqlArchive {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let mut insert = Query::insert();
        insert
            .into_table(Alias::new(&self.tables.keys))
            .columns(COLUMNS.map(Alias::new))
            .values([
                key.id.clone().into(),
                key.tenant.clone().into(),
                key.scopes.to_string().into(),
                key.label.clone().into(),
                key.created_at_ms.into(),
                key.expires_at_ms.into(),
                key.revoked_at_ms.into(),
                key.hash.clone().into(),
            ])
            .map_err(|e| Error::backend(self.backend, e.to_string(), false))?;
        match self.db.execute(&insert).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let m = e.to_string().to_ascii_lowercase();
                if m.contains("unique") || m.contains("duplicate") {
                    Err(Error::AlreadyExists(format!("key {}", key.id)))
                } else {
                    Err(self.err(e))
                }
            }
        }
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKey>> {
        let q = Query::select()
            .columns(COLUMNS.map(Alias::new))
            .from(Alias::new(&self.tables.keys))
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .to_owned();
        match self.db.query_one(&q).await.map_err(|e| self.err(e))? {
            Some(row) => self.key_of(&row).map(Some),
            None => Ok(None),
        }
    }

    async fn keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let mut q = Query::select();
        q.columns(COLUMNS.map(Alias::new))
            .from(Alias::new(&self.tables.keys))
            .order_by(Alias::new("created_at_ms"), Order::Asc)
            .order_by(Alias::new("id"), Order::Asc);
        if let Some(t) = tenant {
            q.and_where(Expr::col(Alias::new("tenant")).eq(t));
        }
        let rows = self.db.query_all(&q).await.map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.key_of(r)).collect()
    }

    async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<bool> {
        let update = Query::update()
            .table(Alias::new(&self.tables.keys))
            .value(Alias::new("revoked_at_ms"), at_ms)
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .and_where(Expr::col(Alias::new("revoked_at_ms")).is_null())
            .to_owned();
        let done = self.db.execute(&update).await.map_err(|e| self.err(e))?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        // Revoked already, or no such key.
        Ok(self.key(id).await?.is_some())
    }
}
