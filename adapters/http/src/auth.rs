//! Who a request is: the [`AuthMode`] of the API, the key cache, and the
//! signed links an `<img src>` can use without a header.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
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
    /// When it came with a signed link: the link's expiry (seconds since
    /// the Unix epoch). Links made for it expire no later, and its event
    /// stream ends then.
    pub link_expires: Option<i64>,
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
    warned_proxy: Arc<AtomicBool>,
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
            warned_proxy: Arc::default(),
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

    /// Whether upload bytes are counted (a byte rate is set).
    pub(crate) fn meters_bytes(&self) -> bool {
        self.rates.meters_bytes()
    }

    /// The mode.
    pub fn mode(&self) -> &AuthMode {
        &self.mode
    }

    /// A link to `path` for the caller's tenant: signed with an expiry
    /// when auth is on (no later than the link the caller came with), the
    /// bare path when it is off.
    pub(crate) fn link(&self, path: String, caller: &Caller) -> String {
        match (&self.mode, &self.links) {
            (AuthMode::None, _) | (_, None) => path,
            (_, Some(signer)) => {
                let ttl = i64::try_from(self.link_ttl.as_secs()).unwrap_or(i64::MAX);
                let mut expires = (now_ms() / 1000).saturating_add(ttl);
                if let Some(limit) = caller.link_expires {
                    expires = expires.min(limit);
                }
                let tenant = &caller.tenant;
                let sig = signer.sign(&path, tenant, expires);
                format!("{path}?tenant={tenant}&expires={expires}&sig={sig}")
            }
        }
    }

    /// When an event stream opened by `caller` must end: at its link's
    /// expiry, and at the latest after the link time to live, so that a
    /// revoked key or an expired link does not keep a stream for ever
    /// (`EventSource` reconnects, and authenticates again).
    pub(crate) fn stream_deadline(&self, caller: &Caller) -> Duration {
        let ttl = self.link_ttl;
        match caller.link_expires {
            Some(at) => {
                let left = at.saturating_sub(now_ms() / 1000).max(0);
                ttl.min(Duration::from_secs(left.unsigned_abs()))
            }
            None => ttl,
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

    /// With auth off, requests that came through a proxy (it added a
    /// forwarding header) may come from anywhere: say so once.
    fn warn_if_proxied(&self, headers: &HeaderMap) {
        if (headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded"))
            && !self.warned_proxy.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "auth is off (PIPELINE_AUTH=none) and requests arrive through a proxy (X-Forwarded-For/Forwarded): anyone who reaches the proxy can read and write every tenant's images; set PIPELINE_AUTH=keys or trusted-header"
            );
        }
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
                link_expires: Some(link.expires),
            }),
            LinkCheck::Expired => refused("link_expired", "this link has expired"),
            LinkCheck::Invalid => refused("invalid_link", "this link's signature is not valid"),
        }
    }

    async fn header_caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        match &self.mode {
            AuthMode::None => {
                self.warn_if_proxied(headers);
                Ok(Caller {
                    tenant: tenant_header(headers, "x-tenant")?
                        .unwrap_or_else(|| DEFAULT_TENANT.to_string()),
                    scopes: Scopes::ALL,
                    link_expires: None,
                })
            }
            AuthMode::TrustedHeader(name) => {
                let tenant = tenant_header(headers, name.as_str())?.ok_or_else(|| {
                    unauthorized(
                        "missing_tenant",
                        format!("the {name} header is required (set by the authenticating proxy)"),
                    )
                })?;
                let scopes = match single(headers, SCOPES_HEADER)? {
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
                Ok(Caller {
                    tenant,
                    scopes,
                    link_expires: None,
                })
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
            link_expires: None,
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

/// The tenant in header `name`, if present; a 400 if malformed or given
/// twice (a proxy that appends its value instead of replacing the
/// client's must not let the client's through).
fn tenant_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = single(headers, name)? else {
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

/// The one value of header `name`, if any; a 400 when it comes twice.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "duplicate_header",
            format!("{name} must be sent once"),
        ));
    }
    Ok(first)
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
    let mut repeated = false;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if fields.insert(k, v).is_some() && matches!(k, "tenant" | "expires" | "sig") {
            repeated = true;
        }
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
        if repeated {
            return None;
        }
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
/// reaches this process within the time to live. Unknown ids are kept
/// apart, so that a flood of made-up keys cannot push real ones out.
#[derive(Debug)]
struct KeyCache {
    ttl: Duration,
    found: Mutex<HashMap<String, (ApiKey, Instant)>>,
    unknown: Mutex<HashMap<String, Instant>>,
}

/// Most entries of each map; beyond, the expired ones go, then the map
/// is emptied (real keys are few; made-up ones are not worth keeping).
const CACHE_MAX: usize = 10_000;

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

fn make_room<V>(map: &mut HashMap<String, V>, ttl: Duration, at: impl Fn(&V) -> Instant) {
    if map.len() >= CACHE_MAX {
        map.retain(|_, v| at(v).elapsed() < ttl);
        if map.len() >= CACHE_MAX {
            map.clear();
        }
    }
}

impl KeyCache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            found: Mutex::default(),
            unknown: Mutex::default(),
        }
    }

    fn get(&self, id: &str) -> Option<Option<ApiKey>> {
        let found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, at)) = found.get(id)
            && at.elapsed() < self.ttl
        {
            return Some(Some(key.clone()));
        }
        drop(found);
        let unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        match unknown.get(id) {
            Some(at) if at.elapsed() < self.ttl => Some(None),
            _ => None,
        }
    }

    fn put(&self, id: &str, key: Option<ApiKey>) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        match key {
            Some(key) => {
                let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
                make_room(&mut found, self.ttl, |(_, at)| *at);
                found.insert(id.to_string(), (key, now));
            }
            None => {
                let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
                make_room(&mut unknown, self.ttl, |at| *at);
                unknown.insert(id.to_string(), now);
            }
        }
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
