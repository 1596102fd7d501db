//! Configuration: one validated [`Config`] built once at start-up.
//!
//! Layers, later ones winning: the embedded defaults (the `Default` impls below, which
//! `conf/m3dnode.toml` documents key by key), an optional TOML file (`serve --config FILE`),
//! environment variables `M3DNODE__SECTION__KEY` (e.g. `M3DNODE__NODE__LISTEN`), then
//! command-line flags. Nothing else in the crate reads configuration ad hoc: modules receive
//! the typed sections they need, already checked, so a typo fails at start-up with the key's
//! name instead of surfacing as odd behaviour at 3 a.m.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration could not be loaded; every message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, the environment or a value did not parse or had the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `node.ae_title` or `peers[2].address`.
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// The whole node configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node: identity, listener, storage.
    pub node: NodeConfig,
    /// Known application entities (senders we accept, destinations we send to).
    pub peers: Vec<PeerConfig>,
}

/// What to do when an instance arrives whose SOP Instance UID is already stored with
/// different content. Identical re-sends are always acknowledged without rewriting.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnConflict {
    /// Keep the stored instance, answer success and log a warning: a sender that is refused
    /// tends to retry forever, and the first version is what downstream jobs already used.
    #[default]
    KeepFirst,
    /// Replace the stored instance with the new one (modality re-sends after correction).
    Replace,
    /// Refuse the new one (status 0xA900 with an Error Comment naming the UID).
    Reject,
}

/// `[node]`: this node's identity, listener and storage.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Our AE title; the called AE title of every association must equal it.
    pub ae_title: String,
    /// Listen address (`0.0.0.0:104` in production).
    pub listen: SocketAddr,
    /// Storage root: instances, `index.sqlite`, temp files. Relative paths are relative to
    /// the working directory.
    pub storage: PathBuf,
    /// Concurrent associations; one more is rejected with "local limit exceeded".
    pub max_associations: usize,
    /// Largest P-DATA PDU we accept, in bytes (advertised in A-ASSOCIATE-AC).
    pub max_pdu_length: u32,
    /// Reject calling AE titles that are not in `[[peers]]`.
    pub require_known_peers: bool,
    /// Seconds an association may stay silent before it is aborted.
    pub idle_timeout_seconds: u64,
    /// fsync every instance (file and directory) before answering success. `false` is for
    /// benchmarks only: an acknowledged instance may then be lost by a power cut.
    pub sync: bool,
    /// Refuse stores (0xA700) when the storage volume has less free space than this, in MB.
    pub min_free_mb: u64,
    /// A different instance under an already stored SOP Instance UID.
    pub on_conflict: OnConflict,
    /// Seconds that in-flight associations get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_seconds: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            ae_title: "M3DNODE".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 11112)),
            storage: PathBuf::from("var"),
            max_associations: 32,
            max_pdu_length: 262_144,
            require_known_peers: false,
            idle_timeout_seconds: 60,
            sync: true,
            min_free_mb: 1024,
            on_conflict: OnConflict::KeepFirst,
            shutdown_grace_seconds: 30,
        }
    }
}

/// `[[peers]]`: a known application entity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's AE title (as it calls us, and as we call it).
    pub ae_title: String,
    /// `host:port` where the peer listens (used when we send to it).
    pub address: String,
    /// Accept associations from this AE title only when they come from `address`'s host.
    #[serde(default)]
    pub check_host: bool,
}

/// Overrides given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--storage`
    pub storage: Option<PathBuf>,
    /// `--ae-title`
    pub ae_title: Option<String>,
}

impl Config {
    /// Builds the configuration from the layers described in the module docs and validates it.
    ///
    /// `env` is normally `None` (read the process environment); tests pass a map.
    pub fn load(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("M3DNODE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(env),
        );
        let mut cfg: Config = builder.build()?.try_deserialize()?;
        if let Some(listen) = overrides.listen {
            cfg.node.listen = listen;
        }
        if let Some(storage) = &overrides.storage {
            cfg.node.storage = storage.clone();
        }
        if let Some(ae) = &overrides.ae_title {
            cfg.node.ae_title = ae.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges, AE title syntax, duplicate peers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            message,
        };
        check_ae_title(&self.node.ae_title).map_err(|m| invalid("node.ae_title", m))?;
        if self.node.max_associations == 0 {
            return Err(invalid(
                "node.max_associations",
                "must be at least 1".into(),
            ));
        }
        if !(16_384..=16_777_216).contains(&self.node.max_pdu_length) {
            return Err(invalid(
                "node.max_pdu_length",
                format!(
                    "{} is outside 16384..=16777216 bytes",
                    self.node.max_pdu_length
                ),
            ));
        }
        if self.node.idle_timeout_seconds == 0 {
            return Err(invalid(
                "node.idle_timeout_seconds",
                "must be at least 1".into(),
            ));
        }
        if self.node.storage.as_os_str().is_empty() {
            return Err(invalid("node.storage", "must name a directory".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            check_ae_title(&peer.ae_title)
                .map_err(|m| invalid(&format!("peers[{i}].ae_title"), m))?;
            if !seen.insert(peer.ae_title.as_str()) {
                return Err(invalid(
                    &format!("peers[{i}].ae_title"),
                    format!("`{}` is listed twice", peer.ae_title),
                ));
            }
            parse_host_port(&peer.address)
                .map_err(|m| invalid(&format!("peers[{i}].address"), m))?;
        }
        Ok(())
    }

    /// The peer entry for an AE title, if any.
    pub fn peer(&self, ae_title: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.ae_title == ae_title)
    }
}

/// AE titles are 1-16 characters of the default character repertoire without backslash or
/// control characters, and not all spaces (PS3.5 6.2).
pub fn check_ae_title(ae: &str) -> Result<(), String> {
    if ae.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if ae.len() > 16 {
        return Err(format!("`{ae}` is longer than 16 characters"));
    }
    if ae
        .chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == '\\')
    {
        return Err(format!(
            "`{ae}` may hold only printable ASCII characters without backslash"
        ));
    }
    Ok(())
}

/// Splits `host:port`, checking the port.
pub fn parse_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{address}`: `{port}` is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("`{address}` is not host:port"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn shipped_file_equals_embedded_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/m3dnode.toml");
        let from_file = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(from_file, Config::default());
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let cfg = Config::load(
            None,
            env(&[
                ("M3DNODE__NODE__LISTEN", "127.0.0.1:4000"),
                ("M3DNODE__NODE__STORAGE", "/data"),
                ("M3DNODE__NODE__MAX_ASSOCIATIONS", "3"),
            ]),
            &Overrides {
                ae_title: Some("OTHER".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.node.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(cfg.node.storage, PathBuf::from("/data"));
        assert_eq!(cfg.node.max_associations, 3);
        assert_eq!(cfg.node.ae_title, "OTHER");
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[node]\nae_title = \"THIS TITLE IS FAR TOO LONG\"\n",
                "node.ae_title",
            ),
            ("[node]\nmax_associations = 0\n", "node.max_associations"),
            ("[node]\nlisten = \"nowhere\"\n", "node.listen"),
            ("[node]\nlistn = \"0.0.0.0:1\"\n", "listn"),
            (
                "[[peers]]\nae_title = \"PACS\"\naddress = \"pacs\"\n",
                "peers[0].address",
            ),
            ("[node]\non_conflict = \"maybe\"\n", "maybe"),
        ];
        for (text, key) in cases {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            let err = Config::load(Some(&path), env(&[]), &Overrides::default())
                .expect_err(text)
                .to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }
}
