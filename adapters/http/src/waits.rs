//! Open long polls (`?wait=`) and event streams per tenant, at most
//! [`crate::ApiConfig::max_waits_per_tenant`]: one tenant cannot hold every
//! connection and task of the API by waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use crate::error::ApiError;

/// The waits open per tenant.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    open: Mutex<HashMap<String, usize>>,
}

/// One open wait; closed when dropped.
#[derive(Debug)]
pub(crate) struct Wait {
    waits: Arc<Waits>,
    tenant: String,
}

impl Waits {
    /// Count a wait of `tenant` in, or refuse with 429 when it has `max`.
    pub(crate) fn enter(self: &Arc<Self>, tenant: &str, max: usize) -> Result<Wait, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(tenant.to_string()).or_insert(0);
        if *n >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_waits",
                format!(
                    "this tenant has {max} long polls and event streams open, the limit; close one or retry without ?wait"
                ),
            ));
        }
        *n += 1;
        Ok(Wait {
            waits: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        let mut open = self.waits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}
