//! `[http]`: where the HTTP side listens and the token that guards it. The checks live here
//! because a token policy that is only enforced at bind time would let `validate` pass a
//! configuration that cannot start. [`HttpSettings`] is what the HTTP side gets of the rest
//! of the configuration: it never sees the whole `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// A `[http]` value that is not acceptable; `config` reports it as its own error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("configuration key `{key}`: {message}")]
pub struct InvalidSetting {
    /// Dotted key, e.g. `http.token`.
    pub key: &'static str,
    /// What is wrong and what would be right.
    pub message: String,
}

/// What the HTTP side reads of the node's configuration.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// `[http]`.
    pub http: HttpConfig,
    /// `node.ae_title`, shown on the page.
    pub ae_title: String,
    /// `node.min_free_mb`, the readiness watermark.
    pub min_free_mb: u64,
    /// `delivery.deadline_seconds`, for a delivery queued again by Retry.
    pub delivery_deadline_seconds: f64,
}

/// `[http]`: the status page, health and metrics endpoints (see [`crate::http`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port` to listen on; empty disables the HTTP side. Anything but a loopback
    /// address requires `token` or `token_file`.
    pub listen: String,
    /// The token of state-changing requests (and of every request beyond loopback).
    pub token: Secret,
    /// A file holding the token (surrounding white space trimmed), so that it need not sit in
    /// the configuration file or the environment.
    pub token_file: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            token: Secret::default(),
            token_file: PathBuf::new(),
        }
    }
}

/// Shortest accepted token: a guessable token on a network-facing page is worse than none.
pub const MIN_TOKEN_LEN: usize = 16;

impl HttpConfig {
    /// The listen address, `None` when the HTTP side is disabled.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, InvalidSetting> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| InvalidSetting {
            key: "http.listen",
            message: format!("`{listen}` is not an IP address and port (e.g. 127.0.0.1:8080)"),
        })
    }

    /// The token from `token` or `token_file`, checked; `None` when neither is set.
    pub fn token(&self) -> Result<Option<Secret>, InvalidSetting> {
        let invalid = |key: &'static str, message: String| InvalidSetting { key, message };
        let has_file = !self.token_file.as_os_str().is_empty();
        let (key, token) = match (self.token.is_empty(), has_file) {
            (true, false) => return Ok(None),
            (false, true) => {
                return Err(invalid(
                    "http.token_file",
                    "set either http.token or http.token_file, not both".into(),
                ));
            }
            (false, false) => ("http.token", self.token.0.trim().to_string()),
            (true, true) => {
                let text = std::fs::read_to_string(&self.token_file).map_err(|e| {
                    invalid(
                        "http.token_file",
                        format!("cannot read {}: {e}", self.token_file.display()),
                    )
                })?;
                ("http.token_file", text.trim().to_string())
            }
        };
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(invalid(
                key,
                format!("the token is shorter than {MIN_TOKEN_LEN} characters"),
            ));
        }
        if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(
                key,
                "the token must not contain spaces or control characters (it travels in an \
                 HTTP header)"
                    .into(),
            ));
        }
        Ok(Some(Secret(token)))
    }

    /// The checks of [`Config::validate`] for this section: the address parses, the token
    /// is usable, and an address beyond loopback has one.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let token = self.token()?;
        if let Some(addr) = self.listen_addr()?
            && !addr.ip().is_loopback()
            && token.is_none()
        {
            return Err(InvalidSetting {
                key: "http.token",
                message: format!(
                    "http.listen = \"{addr}\" is reachable beyond this machine: set http.token \
                     or http.token_file (at least {MIN_TOKEN_LEN} characters), or listen on \
                     127.0.0.1"
                ),
            });
        }
        Ok(())
    }
}

/// A secret string: `Debug` does not print it, so configuration dumps and logs cannot leak it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is unset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}
