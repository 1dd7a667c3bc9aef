//! Backend URLs: parsing with percent-decoding, adapter options taken out
//! of the query string, and redaction for logs and error messages.
//!
//! Every adapter reads its URL through [`BackendUrl`], so a password with
//! reserved characters, an option's value and the redacted form mean the
//! same everywhere.

use std::fmt;
use std::str::FromStr;

use url::Url;

use crate::error::{Error, Result};

/// Query parameters whose values are always hidden by [`redact`], matched
/// as whole lower-case names.
const SECRET_NAMES: &[&str] = &[
    "pass",
    "pwd",
    "key",
    "apikey",
    "api_key",
    "access_key",
    "access_key_id",
    "aws_access_key_id",
    "sig",
    "auth",
    "authorization",
    "sslkey",
];

/// Parts of names that mark a query parameter as secret.
const SECRET_PARTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "signature",
    "private",
];

/// Whether the query parameter `name` looks like it carries a secret.
pub fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAMES.contains(&name.as_str()) || SECRET_PARTS.iter().any(|p| name.contains(p))
}

/// `url` with its password and every secret-looking query value replaced
/// by `***`, for logs and error messages.
///
/// A URL that cannot be parsed unambiguously (a raw `/`, `?` or `#` in a
/// password makes the host and the password impossible to tell apart) is
/// reduced to its scheme: nothing of it is shown.
///
/// ```
/// use pipeline_core::urls::redact;
/// assert_eq!(redact("postgres://u:secret@db:5432/app"), "postgres://u:***@db:5432/app");
/// assert_eq!(redact("s3://bucket/p?token=abc&region=eu"), "s3://bucket/p?token=***&region=eu");
/// assert_eq!(redact("amqp://u:pa/ss@host/vhost"), "amqp://***");
/// ```
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL: a bare word such as `archive`, or an `sqlite:` path.
        return if url.contains('@') || url.contains('?') {
            "***".to_string()
        } else {
            url.to_string()
        };
    };
    let opaque = || format!("{scheme}://***");
    // Comma-separated host lists (`amqp://u:p@h1:5672,h2:5672/v`) are not
    // URLs to the parser: redact with the first host standing for all.
    let (single, others) = match first_host_only(url) {
        Some(split) => split,
        None => return opaque(),
    };
    let Ok(mut parsed) = Url::parse(&single) else {
        return opaque();
    };
    // An '@' while the parser found no user information means a password
    // with a raw '/', '?' or '#' was read as a host and port: show nothing.
    if rest.contains('@') && parsed.username().is_empty() && parsed.password().is_none() {
        return opaque();
    }
    if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
        return opaque();
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(Some("***"));
    }
    let shown = parsed.to_string().replace("%2A%2A%2A", "***");
    match others {
        None => shown,
        Some(hosts) => reinsert_hosts(&shown, &hosts).unwrap_or_else(opaque),
    }
}

/// The authority of the part after `://`: up to the first `/`, `?` or `#`.
fn authority_of(rest: &str) -> &str {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// For `scheme://user@h1,h2/path`, the URL with `h1` only and the other
/// hosts (`",h2"`); `None` when the authority is not well formed.
fn first_host_only(url: &str) -> Option<(String, Option<String>)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = authority_of(rest);
    let hosts_start = authority.rfind('@').map_or(0, |i| i + 1);
    let hosts = &authority[hosts_start..];
    match hosts.find(',') {
        None => Some((url.to_string(), None)),
        Some(i) => {
            let first = &hosts[..i];
            if first.is_empty() {
                return None;
            }
            let others = hosts[i..].to_string();
            let tail = &rest[authority.len()..];
            Some((
                format!("{scheme}://{}{first}{tail}", &authority[..hosts_start]),
                Some(others),
            ))
        }
    }
}

/// Put `others` back after the first host of a serialized URL.
fn reinsert_hosts(shown: &str, others: &str) -> Option<String> {
    let (scheme, rest) = shown.split_once("://")?;
    let authority = authority_of(rest);
    Some(format!(
        "{scheme}://{authority}{others}{}",
        &rest[authority.len()..]
    ))
}

/// A backend URL, parsed: scheme, credentials (percent-decoded), hosts,
/// path and query. Adapters take their own options out of the query with
/// [`take`](Self::take) and hand the rest to their client library.
///
/// `Debug` and `Display` show the redacted form.
///
/// ```
/// use pipeline_core::urls::BackendUrl;
/// let mut url = BackendUrl::parse("redis://:p%2Fss@cache:6379/0?claim_idle_ms=5000")?;
/// assert_eq!(url.scheme(), "redis");
/// assert_eq!(url.password().as_deref(), Some("p/ss"));
/// assert_eq!(url.take_parsed::<u64>("claim_idle_ms")?, Some(5000));
/// assert_eq!(url.as_str(), "redis://:p%2Fss@cache:6379/0");
/// assert_eq!(url.to_string(), "redis://:***@cache:6379/0");
/// # Ok::<(), pipeline_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl {
    url: Url,
    /// Hosts after the first one (`amqp://h1,h2`), each with its port.
    more_hosts: Vec<String>,
}

impl BackendUrl {
    /// Parse `raw`. A comma-separated host list is accepted
    /// (`amqp://u:p@h1:5672,h2:5672/vhost`); reserved characters in the
    /// user name or password must be percent-encoded (`/` as `%2F`, `?`
    /// as `%3F`, `@` as `%40`, `#` as `%23`, `%` as `%25`).
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("URL {}: {why}", redact(raw)));
        if !raw.contains("://") {
            return Err(bad(
                "expected scheme://[user:password@]host[:port][/path][?options]",
            ));
        }
        let (single, others) = first_host_only(raw).ok_or_else(|| bad("no host"))?;
        let url = Url::parse(&single).map_err(|e| {
            bad(&format!(
                "{e} (percent-encode reserved characters of a user name or password: / as %2F, ? as %3F, @ as %40, # as %23)"
            ))
        })?;
        let rest = raw.split_once("://").map_or("", |(_, r)| r);
        let before_query = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
        if before_query.contains('@') && url.username().is_empty() && url.password().is_none() {
            return Err(bad(
                "the user information is ambiguous (percent-encode / ? @ # in a password)",
            ));
        }
        let more_hosts = others
            .map(|o| {
                o.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { url, more_hosts })
    }

    /// The scheme, lower case.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The user name, percent-decoded; empty for none.
    pub fn username(&self) -> String {
        decode(self.url.username())
    }

    /// The password, percent-decoded.
    pub fn password(&self) -> Option<String> {
        self.url.password().map(decode)
    }

    /// The first host, if any.
    pub fn host(&self) -> Option<&str> {
        self.url.host_str()
    }

    /// The port, if given.
    pub fn port(&self) -> Option<u16> {
        self.url.port()
    }

    /// The path, percent-decoded (`/vhost`, `/bucket/prefix`, `/0`).
    pub fn path(&self) -> String {
        decode(self.url.path())
    }

    /// The path as written (percent-encoded).
    pub fn raw_path(&self) -> &str {
        self.url.path()
    }

    /// The parsed URL (first host only).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL once per host, for clients that take one host at a time
    /// (options already taken out are gone from each).
    pub fn per_host(&self) -> Vec<String> {
        let mut all = vec![self.as_str().to_string()];
        for host in &self.more_hosts {
            let mut u = self.url.clone();
            let (name, port) = match host.rsplit_once(':') {
                Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) => (n, p.parse().ok()),
                _ => (host.as_str(), None),
            };
            if u.set_host(Some(name)).is_ok() && u.set_port(port).is_ok() {
                all.push(u.to_string());
            }
        }
        all
    }

    /// The URL as it stands (first host; options taken out are gone).
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// Query parameters left, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// Whether the query holds `key`.
    pub fn has(&self, key: &str) -> bool {
        self.url.query_pairs().any(|(k, _)| k == key)
    }

    /// Remove `key` from the query and return its (last) value, decoded.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let pairs = self.query_pairs();
        let found = pairs.iter().rev().find(|(k, _)| k == key)?.1.clone();
        let rest: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != key).collect();
        if rest.is_empty() {
            self.url.set_query(None);
        } else {
            self.url.query_pairs_mut().clear().extend_pairs(rest);
        }
        Some(found)
    }

    /// [`take`](Self::take) and parse; a value that does not parse is a
    /// configuration error naming the option.
    pub fn take_parsed<T: FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                let shown = if is_secret_param(key) { "***" } else { &v };
                Error::Config(format!(
                    "URL {self}: option {key}={shown:?} is not a valid {}",
                    short_type_name::<T>()
                ))
            }),
        }
    }

    /// Fail when the query still holds an option (a typo, or an option of
    /// another backend); `known` lists the accepted ones for the message.
    pub fn reject_remaining(&self, known: &[&str]) -> Result<()> {
        match self.url.query_pairs().next() {
            None => Ok(()),
            Some((k, _)) => Err(Error::Config(format!(
                "URL {self}: unknown option {k:?} (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }

    /// Add `key=value` to the query unless it is there already.
    pub fn set_default(&mut self, key: &str, value: &str) {
        if !self.has(key) {
            self.url.query_pairs_mut().append_pair(key, value);
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut full = self.url.to_string();
        if !self.more_hosts.is_empty()
            && let Some(with_hosts) =
                reinsert_hosts(&full, &format!(",{}", self.more_hosts.join(",")))
        {
            full = with_hosts;
        }
        f.write_str(&redact(&full))
    }
}

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendUrl({self})")
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The scheme of `url` (before `://`), lower case; `None` without one.
pub fn scheme_of(url: &str) -> Option<String> {
    url.split_once("://").map(|(s, _)| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("amqps://u:secret@a,b/v?x=1"),
            "amqps://u:***@a,b/v?x=1"
        );
        assert_eq!(
            redact("amqp://u:secret@a:5672,b:5673/%2f"),
            "amqp://u:***@a:5672,b:5673/%2f"
        );
        assert_eq!(redact("redis://:secret@h?x=1"), "redis://:***@h?x=1");
        assert_eq!(
            redact("mysql://root@localhost/test"),
            "mysql://root@localhost/test"
        );
        assert_eq!(redact("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
        assert_eq!(redact("archive"), "archive");
    }

    #[test]
    fn reserved_characters_in_passwords_never_leak() {
        for raw in [
            "amqp://u:se/krit@host/vhost",
            "amqp://u:se?krit@host/vhost",
            "amqp://u:12/krit@host/vhost",
            "redis://:se#krit@host:6379",
            "postgres://u:s?e/k@krit@db/x",
        ] {
            let shown = redact(raw);
            assert!(!shown.contains("krit"), "{raw} -> {shown}");
            let err = BackendUrl::parse(raw).unwrap_err().to_string();
            assert!(!err.contains("krit"), "{raw} -> {err}");
        }
        // '@' after a '?': parsed, but never shown.
        assert_eq!(redact("amqp://u:12?krit@host"), "amqp://***");
        // A raw '@' is unambiguous (the last one ends the user information).
        let shown = redact("postgres://u:p@ss@db/x");
        assert_eq!(shown, "postgres://u:***@db/x");
        let url = BackendUrl::parse("postgres://u:p@ss@db/x").unwrap();
        assert_eq!(url.password().as_deref(), Some("p@ss"));
        // Percent-encoded reserved characters decode.
        let url = BackendUrl::parse("amqp://u:p%2F%3Fss%40@h/v").unwrap();
        assert_eq!(url.password().as_deref(), Some("p/?ss@"));
        assert_eq!(url.to_string(), "amqp://u:***@h/v");
    }

    #[test]
    fn secret_query_values_are_hidden() {
        let shown = redact(
            "s3://b/p?aws_secret_access_key=S&region=eu&token=T&key=K&key_ttl_s=5&sslpassword=X",
        );
        assert_eq!(
            shown,
            "s3://b/p?aws_secret_access_key=***&region=eu&token=***&key=***&key_ttl_s=5&sslpassword=***"
        );
        assert!(is_secret_param("AWS_SESSION_TOKEN"));
        assert!(!is_secret_param("claim_idle_ms"));
    }

    #[test]
    fn options_are_taken_out_decoded() {
        let mut url = BackendUrl::parse(
            "rediss://u:pw@h:6380/0?ca_file=%2Fetc%2Fca.pem&claim_idle_ms=2000&x=1",
        )
        .unwrap();
        assert_eq!(url.take("ca_file").as_deref(), Some("/etc/ca.pem"));
        assert_eq!(url.take_parsed::<u64>("claim_idle_ms").unwrap(), Some(2000));
        assert_eq!(url.as_str(), "rediss://u:pw@h:6380/0?x=1");
        assert!(url.reject_remaining(&["ca_file"]).is_err());
        assert!(url.take("x").is_some());
        assert_eq!(url.as_str(), "rediss://u:pw@h:6380/0");
        url.reject_remaining(&[]).unwrap();

        let mut bad = BackendUrl::parse("redis://h?claim_idle_ms=soon").unwrap();
        let e = bad.take_parsed::<u64>("claim_idle_ms").unwrap_err();
        assert!(e.to_string().contains("claim_idle_ms"), "{e}");
    }

    #[test]
    fn host_lists_expand_per_host() {
        let url = BackendUrl::parse("amqp://u:p%2Fw@a:5672,b:5673,c/%2f?heartbeat=5").unwrap();
        assert_eq!(
            url.per_host(),
            vec![
                "amqp://u:p%2Fw@a:5672/%2f?heartbeat=5",
                "amqp://u:p%2Fw@b:5673/%2f?heartbeat=5",
                "amqp://u:p%2Fw@c/%2f?heartbeat=5",
            ]
        );
        assert_eq!(
            url.to_string(),
            "amqp://u:***@a:5672,b:5673,c/%2f?heartbeat=5"
        );
    }
}
