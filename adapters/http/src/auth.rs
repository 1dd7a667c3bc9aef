//! Who a request is: the [`AuthMode`] of the API, the key cache, and the
//! signed links an `<img src>` can use without a header.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, StatusCode, Uri, header};
use pipeline_core::auth::{
    ApiKey, KeyState, KeyStore, LinkCheck, LinkSigner, Scope, Scopes, key_id, valid_tenant,
};
use pipeline_core::envelope::now_ms;

use crate::error::ApiError;
use crate::quota::{Limiter, RateLimits};

/// Tenant of requests without an `X-Tenant` header when auth is off.
pub(crate) const DEFAULT_TENANT: &str = "default";

/// Scopes a trusted proxy may grant in this header (`upload,read` when
/// absent).
pub const SCOPES_HEADER: &str = "x-pipeline-scopes";

/// How requests say who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication: the tenant is `X-Tenant` (or `default`) and
    /// every scope is granted. For loopback listeners and trusted networks.
    None,
    /// A proxy in front authenticates: it sets the tenant in this header
    /// (required, never defaulted) and may set [`SCOPES_HEADER`].
    TrustedHeader(HeaderName),
    /// `Authorization: Bearer <key>`: the tenant and scopes come from the
    /// key (see [`pipeline_core::auth`]).
    Keys,
}

impl AuthMode {
    /// `none`, `trusted-header` or `keys`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::TrustedHeader(_) => "trusted-header",
            Self::Keys => "keys",
        }
    }
}

/// The caller of a request, once authenticated.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The tenant it acts as.
    pub tenant: String,
    /// What it may do.
    pub scopes: Scopes,
}

/// Authentication of the API: the mode, the keys, the link signer.
#[derive(Debug, Clone)]
pub struct Auth {
    mode: AuthMode,
    keys: Option<Arc<dyn KeyStore>>,
    links: Option<LinkSigner>,
    link_ttl: Duration,
    cache: Arc<KeyCache>,
    rates: Arc<Limiter>,
}

impl Default for Auth {
    /// [`Auth::none`].
    fn default() -> Self {
        Self::none()
    }
}

impl Auth {
    /// No authentication (see [`AuthMode::None`]); links are not signed.
    pub fn none() -> Self {
        Self {
            mode: AuthMode::None,
            keys: None,
            links: None,
            link_ttl: Duration::from_secs(3600),
            cache: Arc::default(),
            rates: Arc::default(),
        }
    }

    /// API keys from `keys`; links signed by `links`.
    pub fn keys(keys: Arc<dyn KeyStore>, links: LinkSigner) -> Self {
        Self {
            mode: AuthMode::Keys,
            keys: Some(keys),
            links: Some(links),
            ..Self::none()
        }
    }

    /// The tenant from `header`, set by an authenticating proxy; links
    /// signed by `links`.
    pub fn trusted_header(header: HeaderName, links: LinkSigner) -> Self {
        Self {
            mode: AuthMode::TrustedHeader(header),
            links: Some(links),
            ..Self::none()
        }
    }

    /// How long signed links stay valid (1 hour by default).
    pub fn with_link_ttl(mut self, ttl: Duration) -> Self {
        self.link_ttl = ttl;
        self
    }

    /// How long a looked-up key is trusted before it is read again: the
    /// longest a revocation takes to reach this process (5 s by default).
    pub fn with_key_cache(mut self, ttl: Duration) -> Self {
        self.cache = Arc::new(KeyCache::new(ttl));
        self
    }

    /// Per-tenant request and byte rates (none by default).
    pub fn with_rates(mut self, limits: RateLimits) -> Self {
        self.rates = Arc::new(Limiter::new(limits));
        self
    }

    /// Count `bytes` of upload against the caller's byte rate.
    pub(crate) fn charge_bytes(&self, caller: &Caller, bytes: u64) -> Result<(), ApiError> {
        self.rates.bytes(&caller.tenant, bytes)
    }

    /// The mode.
    pub fn mode(&self) -> &AuthMode {
        &self.mode
    }

    /// A link to `path` for `tenant`: signed with an expiry when auth is
    /// on, the bare path when it is off.
    pub(crate) fn link(&self, path: String, tenant: &str) -> String {
        match (&self.mode, &self.links) {
            (AuthMode::None, _) | (_, None) => path,
            (_, Some(signer)) => {
                let expires = now_ms() / 1000 + self.link_ttl.as_secs() as i64;
                let sig = signer.sign(&path, tenant, expires);
                format!("{path}?tenant={tenant}&expires={expires}&sig={sig}")
            }
        }
    }

    /// Authenticate a request, check it may do `scope`, and count it
    /// against its tenant's request rate.
    pub(crate) async fn caller(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        scope: Scope,
    ) -> Result<Caller, ApiError> {
        let caller = match link_params(uri) {
            Some(link) => self.link_caller(uri.path(), link?)?,
            None => self.header_caller(headers).await?,
        };
        if !caller.scopes.allows(scope) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this credential lacks the {} scope", scope.name()),
            ));
        }
        self.rates.request(&caller.tenant)?;
        Ok(caller)
    }

    /// The caller if the request is authenticated, whatever its scopes;
    /// `None` if it is not (for routes that answer everyone, with more
    /// for some).
    pub(crate) async fn optional_caller(&self, headers: &HeaderMap) -> Option<Caller> {
        self.header_caller(headers).await.ok()
    }

    fn link_caller(&self, path: &str, link: Link<'_>) -> Result<Caller, ApiError> {
        let refused = |code, message: &str| {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                code,
                message.to_string(),
            ))
        };
        let Some(signer) = &self.links else {
            return refused(
                "invalid_link",
                "this server does not sign links; send credentials instead",
            );
        };
        match signer.check(path, link.tenant, link.expires, link.sig, now_ms() / 1000) {
            LinkCheck::Valid => Ok(Caller {
                tenant: link.tenant.to_string(),
                scopes: Scopes::READ,
            }),
            LinkCheck::Expired => refused("link_expired", "this link has expired"),
            LinkCheck::Invalid => refused("invalid_link", "this link's signature is not valid"),
        }
    }

    async fn header_caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        match &self.mode {
            AuthMode::None => Ok(Caller {
                tenant: tenant_header(headers, "x-tenant")?
                    .unwrap_or_else(|| DEFAULT_TENANT.to_string()),
                scopes: Scopes::ALL,
            }),
            AuthMode::TrustedHeader(name) => {
                let tenant = tenant_header(headers, name.as_str())?.ok_or_else(|| {
                    unauthorized(
                        "missing_tenant",
                        format!("the {name} header is required (set by the authenticating proxy)"),
                    )
                })?;
                let scopes = match headers.get(SCOPES_HEADER) {
                    None => Scopes::CLIENT,
                    Some(v) => v
                        .to_str()
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_scopes",
                                format!("{SCOPES_HEADER} must list upload, read or admin"),
                            )
                        })?,
                };
                Ok(Caller { tenant, scopes })
            }
            AuthMode::Keys => self.key_caller(headers).await,
        }
    }

    async fn key_caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "missing_key",
                "send an API key: Authorization: Bearer <key>",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| {
                unauthorized(
                    "invalid_key",
                    "the Authorization header must be `Bearer <key>`",
                )
            })?;
        let invalid = || unauthorized("invalid_key", "this API key is not valid");
        let id = key_id(presented).ok_or_else(invalid)?;
        let key = self.lookup(id).await?.ok_or_else(invalid)?;
        if !key.matches(presented) {
            return Err(invalid());
        }
        match key.state(now_ms()) {
            KeyState::Active => {}
            KeyState::Expired => {
                return Err(unauthorized("key_expired", "this API key has expired"));
            }
            KeyState::Revoked => {
                return Err(unauthorized("key_revoked", "this API key was revoked"));
            }
        }
        // A key speaks for its own tenant only.
        if let Some(asked) = tenant_header(headers, "x-tenant")?
            && asked != key.tenant
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_tenant",
                "X-Tenant names another tenant than the key's",
            ));
        }
        Ok(Caller {
            tenant: key.tenant,
            scopes: key.scopes,
        })
    }

    async fn lookup(&self, id: &str) -> Result<Option<ApiKey>, ApiError> {
        if let Some(hit) = self.cache.get(id) {
            return Ok(hit);
        }
        let Some(store) = &self.keys else {
            return Ok(None);
        };
        let found = store.key(id).await.map_err(ApiError::from)?;
        self.cache.put(id, found.clone());
        Ok(found)
    }
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The tenant in header `name`, if present; a 400 if malformed.
fn tenant_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(t) if valid_tenant(t) => Ok(Some(t.to_string())),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            format!("{name} must be 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.'"),
        )),
    }
}

/// The signed-link fields of a query string.
struct Link<'a> {
    tenant: &'a str,
    expires: i64,
    sig: &'a str,
}

/// `Some` when the query carries `sig`: the link's fields, or a 403 when
/// they are incomplete or malformed.
fn link_params(uri: &Uri) -> Option<Result<Link<'_>, ApiError>> {
    let query = uri.query()?;
    let mut fields = HashMap::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        fields.insert(k, v);
    }
    let sig = *fields.get("sig")?;
    let bad = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_link",
            "a signed link needs tenant, expires and sig",
        )
    };
    let link = (|| {
        Some(Link {
            tenant: fields.get("tenant").filter(|t| valid_tenant(t))?,
            expires: fields.get("expires")?.parse().ok()?,
            sig,
        })
    })();
    Some(link.ok_or_else(bad))
}

/// Keys looked up lately, found or not, for a short time: a request
/// costs no database read while its key is cached, and a revocation
/// reaches this process within the time to live.
#[derive(Debug)]
struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Option<ApiKey>, Instant)>>,
}

/// Most keys cached; beyond, the cache is emptied.
const CACHE_MAX: usize = 10_000;

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl KeyCache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn get(&self, id: &str) -> Option<Option<ApiKey>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (key, at) = entries.get(id)?;
        (at.elapsed() < self.ttl).then(|| key.clone())
    }

    fn put(&self, id: &str, key: Option<ApiKey>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_MAX {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(id.to_string(), (key, Instant::now()));
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
