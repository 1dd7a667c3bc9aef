//! Who a request is and what it may do: API keys (stored hashed by a
//! [`KeyStore`]), their [`Scopes`], and signed links ([`LinkSigner`]) that
//! let an `<img src>` or a shared URL read one image without a header.
//!
//! A key reads `pk_<id>_<secret>`: the 16 hex characters of `<id>` name
//! the key (listed and revoked by it), the 64 hex characters of `<secret>`
//! are 256 random bits. Only the SHA-256 of the whole key is stored; a
//! slow password hash would add nothing against 256 random bits.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Send images, delete them.
    Upload,
    /// Read statuses, results, originals, lists and events.
    Read,
    /// Readiness details and operations on the deployment.
    Admin,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 3] = [Scope::Upload, Scope::Read, Scope::Admin];

    /// The scope's name: `upload`, `read` or `admin`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Upload => 1,
            Self::Read => 2,
            Self::Admin => 4,
        }
    }
}

/// A set of [`Scope`]s, written `upload,read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope.
    pub const NONE: Scopes = Scopes(0);
    /// Every scope.
    pub const ALL: Scopes = Scopes(7);
    /// `upload,read`: what a client application needs.
    pub const CLIENT: Scopes = Scopes(3);
    /// `read`: what a signed link grants.
    pub const READ: Scopes = Scopes(2);

    /// Whether `scope` is in the set.
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The set with `scope` added.
    pub fn with(self, scope: Scope) -> Self {
        Self(self.0 | scope.bit())
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .iter()
            .filter(|s| self.allows(**s))
            .map(|s| s.name())
            .collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Scopes {
    type Err = Error;

    /// A comma-separated list of `upload`, `read`, `admin`; at least one.
    fn from_str(s: &str) -> Result<Self> {
        let mut scopes = Scopes::NONE;
        for word in s.split(',').map(str::trim) {
            let scope = Scope::ALL
                .into_iter()
                .find(|sc| sc.name() == word)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unknown scope {word:?}: the scopes are upload, read and admin"
                    ))
                })?;
            scopes = scopes.with(scope);
        }
        Ok(scopes)
    }
}

/// Whether `tenant` is a valid tenant name: 1-128 characters of A-Z, a-z,
/// 0-9, `-`, `_`, `.`.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 128
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Length of a key id, in hex characters.
const ID_HEX: usize = 16;
/// Length of a key's secret, in hex characters.
const SECRET_HEX: usize = 64;
/// Longest label of a key.
pub const MAX_LABEL: usize = 200;

/// An API key as stored: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Public id (16 hex characters), the middle of the key.
    pub id: String,
    /// The tenant the key acts as.
    pub tenant: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// A note for people (`ci uploader`), at most [`MAX_LABEL`] bytes.
    pub label: String,
    /// When it was made, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// When it stops working, if ever.
    pub expires_at_ms: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
}

/// Whether a stored key may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl ApiKey {
    /// A new key for `tenant`: the key to hand out (shown once, never
    /// stored) and its record.
    pub fn generate(
        tenant: &str,
        scopes: Scopes,
        label: &str,
        expires_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(String, ApiKey)> {
        if !valid_tenant(tenant) {
            return Err(Error::invalid(format!(
                "tenant {tenant:?} must be 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.'"
            )));
        }
        if scopes == Scopes::NONE {
            return Err(Error::invalid("a key needs at least one scope"));
        }
        if label.len() > MAX_LABEL || label.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "a label is at most {MAX_LABEL} bytes, without control characters"
            )));
        }
        if expires_at_ms.is_some_and(|e| e <= now_ms) {
            return Err(Error::invalid("the expiry is in the past"));
        }
        let mut random = [0u8; ID_HEX / 2 + SECRET_HEX / 2];
        getrandom::fill(&mut random)
            .map_err(|e| Error::Config(format!("no random numbers from the system: {e}")))?;
        let id = hex::encode(&random[..ID_HEX / 2]);
        let key = format!("pk_{id}_{}", hex::encode(&random[ID_HEX / 2..]));
        let record = ApiKey {
            id,
            tenant: tenant.to_string(),
            scopes,
            label: label.to_string(),
            created_at_ms: now_ms,
            expires_at_ms,
            revoked_at_ms: None,
            hash: hash_key(&key),
        };
        Ok((key, record))
    }

    /// Whether `key` is this key (compared in constant time).
    pub fn matches(&self, key: &str) -> bool {
        hash_key(key).as_bytes().ct_eq(self.hash.as_bytes()).into()
    }

    /// Whether the key may be used at `now_ms`.
    pub fn state(&self, now_ms: i64) -> KeyState {
        if self.revoked_at_ms.is_some() {
            KeyState::Revoked
        } else if self.expires_at_ms.is_some_and(|e| e <= now_ms) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// The id of a well-formed key (`pk_<16 hex>_<64 hex>`), or `None`.
pub fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("pk_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_HEX) && hex(secret, SECRET_HEX)).then_some(id)
}

fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Where API keys are kept: the archive database (`{namespace}_api_keys`)
/// or memory.
#[async_trait]
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// Store a new key; [`Error::AlreadyExists`] if its id is taken.
    async fn create_key(&self, key: &ApiKey) -> Result<()>;

    /// The key with this id, revoked and expired ones included.
    async fn key(&self, id: &str) -> Result<Option<ApiKey>>;

    /// Every key, or those of `tenant`, oldest first.
    async fn keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>>;

    /// Revoke a key from `at_ms` on; `false` if there is no such key. A
    /// key revoked already keeps its first revocation time.
    async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<bool>;
}

/// Shortest secret accepted for signing links, in bytes.
pub const MIN_SECRET: usize = 32;

/// Signs and checks links: HMAC-SHA256 of the path, the tenant and the
/// expiry, keyed by a current secret; links signed with the previous
/// secret still pass (rotation).
#[derive(Clone)]
pub struct LinkSigner {
    current: Hmac<Sha256>,
    previous: Option<Hmac<Sha256>>,
}

impl fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSigner")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// What checking a signed link found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCheck {
    /// Signed by a known secret and not expired.
    Valid,
    /// Well signed, but past its expiry.
    Expired,
    /// Not signed by any known secret (tampered, or made elsewhere).
    Invalid,
}

impl LinkSigner {
    /// A signer with `current`, also accepting `previous`. Each secret
    /// must be at least [`MIN_SECRET`] bytes.
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Result<Self> {
        let mac = |secret: &[u8]| {
            if secret.len() < MIN_SECRET {
                return Err(Error::Config(format!(
                    "a link secret must be at least {MIN_SECRET} bytes (for example `openssl rand -hex 32`)"
                )));
            }
            <Hmac<Sha256> as Mac>::new_from_slice(secret)
                .map_err(|e| Error::Config(format!("link secret: {e}")))
        };
        Ok(Self {
            current: mac(current)?,
            previous: previous.map(mac).transpose()?,
        })
    }

    /// A signer with a random secret: its links pass only in this process.
    pub fn random() -> Result<Self> {
        let mut secret = [0u8; MIN_SECRET];
        getrandom::fill(&mut secret)
            .map_err(|e| Error::Config(format!("no random numbers from the system: {e}")))?;
        Self::new(&secret, None)
    }

    fn mac(keyed: &Hmac<Sha256>, path: &str, tenant: &str, expires_s: i64) -> Hmac<Sha256> {
        let mut mac = keyed.clone();
        // Fields cannot run into each other: none holds a newline.
        mac.update(format!("pipeline-link-v1\n{path}\n{tenant}\n{expires_s}").as_bytes());
        mac
    }

    /// The signature (hex) of a link to `path` for `tenant`, valid until
    /// `expires_s` (seconds since the Unix epoch).
    pub fn sign(&self, path: &str, tenant: &str, expires_s: i64) -> String {
        hex::encode(
            Self::mac(&self.current, path, tenant, expires_s)
                .finalize()
                .into_bytes(),
        )
    }

    /// Check a link's signature (hex) at `now_s`.
    pub fn check(
        &self,
        path: &str,
        tenant: &str,
        expires_s: i64,
        signature: &str,
        now_s: i64,
    ) -> LinkCheck {
        let Ok(sig) = hex::decode(signature) else {
            return LinkCheck::Invalid;
        };
        let signed = std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|secret| {
                Self::mac(secret, path, tenant, expires_s)
                    .verify_slice(&sig)
                    .is_ok()
            });
        if !signed {
            LinkCheck::Invalid
        } else if expires_s <= now_s {
            LinkCheck::Expired
        } else {
            LinkCheck::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        let s: Scopes = "upload, read".parse().unwrap();
        assert!(s.allows(Scope::Upload) && s.allows(Scope::Read) && !s.allows(Scope::Admin));
        assert_eq!(s.to_string(), "upload,read");
        assert_eq!(Scopes::ALL.to_string(), "upload,read,admin");
        assert!("upload,write".parse::<Scopes>().is_err());
        assert!("".parse::<Scopes>().is_err());
    }

    #[test]
    fn a_generated_key_matches_itself_only() {
        let (key, record) = ApiKey::generate("acme", Scopes::CLIENT, "ci", None, 1000).unwrap();
        assert_eq!(key_id(&key), Some(record.id.as_str()));
        assert!(record.matches(&key));
        assert!(!key.contains(&record.hash) && record.hash.len() == 64);
        let mut other = key.clone();
        other.pop();
        other.push(if key.ends_with('0') { '1' } else { '0' });
        assert!(!record.matches(&other));
        let (key2, record2) = ApiKey::generate("acme", Scopes::CLIENT, "", None, 1000).unwrap();
        assert_ne!(key, key2);
        assert_ne!(record.id, record2.id);
    }

    #[test]
    fn key_states() {
        let (_, mut k) = ApiKey::generate("t", Scopes::READ, "", Some(2000), 1000).unwrap();
        assert_eq!(k.state(1999), KeyState::Active);
        assert_eq!(k.state(2000), KeyState::Expired);
        k.revoked_at_ms = Some(1500);
        assert_eq!(k.state(1600), KeyState::Revoked);
    }

    #[test]
    fn bad_keys_and_requests_are_refused() {
        assert!(ApiKey::generate("a b", Scopes::READ, "", None, 0).is_err());
        assert!(ApiKey::generate("a", Scopes::NONE, "", None, 0).is_err());
        assert!(ApiKey::generate("a", Scopes::READ, "x\ny", None, 0).is_err());
        assert!(ApiKey::generate("a", Scopes::READ, "", Some(5), 10).is_err());
        for bad in [
            "",
            "pk_",
            "pk_0123456789abcdef",
            "pk_0123456789abcdef_00",
            "sk_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
            "pk_0123456789abcdeg_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn links_are_checked_for_tampering_expiry_and_rotation() {
        let old = LinkSigner::new(&[1; 32], None).unwrap();
        let new = LinkSigner::new(&[2; 32], Some(&[1; 32])).unwrap();
        let path = "/v1/images/x/result";
        let sig = old.sign(path, "acme", 100);
        assert_eq!(old.check(path, "acme", 100, &sig, 50), LinkCheck::Valid);
        assert_eq!(old.check(path, "acme", 100, &sig, 100), LinkCheck::Expired);
        // Any field changed: invalid.
        assert_eq!(old.check(path, "acme", 101, &sig, 50), LinkCheck::Invalid);
        assert_eq!(old.check(path, "other", 100, &sig, 50), LinkCheck::Invalid);
        assert_eq!(
            old.check("/v1/images/x/original", "acme", 100, &sig, 50),
            LinkCheck::Invalid
        );
        assert_eq!(old.check(path, "acme", 100, "zz", 50), LinkCheck::Invalid);
        // Rotated: the old signature still passes, new ones use the new secret.
        assert_eq!(new.check(path, "acme", 100, &sig, 50), LinkCheck::Valid);
        let sig2 = new.sign(path, "acme", 100);
        assert_ne!(sig, sig2);
        assert_eq!(old.check(path, "acme", 100, &sig2, 50), LinkCheck::Invalid);
        // Short secrets are refused.
        assert!(LinkSigner::new(b"short", None).is_err());
        assert!(LinkSigner::new(&[1; 32], Some(b"short")).is_err());
    }
}
