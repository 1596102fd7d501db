//! Configuration: one validated [`Config`] built once at start-up.
//!
//! Layers, later ones winning: the embedded defaults (the sections' `Default` impls, which
//! `conf/m3dnode.toml` documents key by key), an optional TOML file (`serve --config FILE`),
//! environment variables `M3DNODE__SECTION__KEY` (e.g. `M3DNODE__NODE__LISTEN`), then
//! command-line flags. Nothing else in the crate reads configuration ad hoc: modules receive
//! the typed sections they need, already checked, so a typo fails at start-up with the key's
//! name instead of surfacing as odd behaviour at 3 a.m.
//!
//! Each section's type lives in the module it configures (`[node]` in [`crate::net::settings`],
//! `[[rules]]` in [`crate::route`], `[neus]` in [`crate::recon::neus`], ...) and is re-exported
//! here; those modules never see the whole [`Config`], only their own settings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use crate::audit::AuditConfig;
pub use crate::http::{HttpConfig, HttpSettings, Secret};
pub use crate::net::mpps::MppsConfig;
pub use crate::net::settings::{
    NodeConfig, PeerConfig, QueryConfig, ScpSettings, Service, check_ae_title, parse_host_port,
};
pub use crate::net::tls::TlsConfig;
pub use crate::onnx::OnnxRuntimeConfig;
pub use crate::recon::neus::{NeusConfig, NeusProfile};
pub use crate::route::outbox::DeliveryConfig;
pub use crate::route::{Pipeline, Rule, RuleConfig};
pub use crate::series::jobs::{JobsConfig, WorkerSettings};
pub use crate::series::{AbortedAssociations, LateInstances, SeriesConfig};
pub use crate::store::OnConflict;

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

/// The whole node configuration. Each section's type belongs to the module it configures;
/// this module only assembles and checks them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node: identity, listener, storage.
    pub node: NodeConfig,
    /// Known application entities (senders we accept, destinations we send to).
    pub peers: Vec<PeerConfig>,
    /// When a series counts as complete.
    pub series: SeriesConfig,
    /// Reconstruction workers.
    pub jobs: JobsConfig,
    /// Sending results to destinations.
    pub delivery: DeliveryConfig,
    /// Storage Commitment (N-ACTION in, N-EVENT-REPORT out).
    pub commitment: crate::net::commit::CommitmentConfig,
    /// Routing rules as written, first match wins. A series no rule matches is stored, not
    /// processed. [`Config::compiled_rules`] holds them compiled.
    pub rules: Vec<RuleConfig>,
    /// ONNX Runtime for the model pipelines.
    pub onnxruntime: OnnxRuntimeConfig,
    /// The NeuS surface fit of the `mvdiffusion` pipeline.
    pub neus: NeusConfig,
    /// Query/Retrieve (C-FIND, C-MOVE, C-GET) served by the node.
    pub query: QueryConfig,
    /// Logging.
    pub log: LogConfig,
    /// `rules`, compiled by [`Config::validate`]: a rule's regular expression and
    /// destinations are checked once, and the node runs with exactly what was checked.
    #[serde(skip)]
    compiled: Arc<Vec<Rule>>,
    /// The HTTP side: health, metrics, the status page.
    pub http: HttpConfig,
    /// DICOM TLS: the TLS listener and the node's certificate.
    pub tls: TlsConfig,
    /// The audit trail (IHE ATNA): its file and syslog repository.
    pub audit: AuditConfig,
    /// The MPPS SCP: forwarding to a RIS or PACS.
    pub mpps: MppsConfig,
    /// The index: embedded SQLite, or a PostgreSQL database shared by several processes.
    pub index: crate::db::settings::IndexConfig,
}

/// `[log]`: how the node writes its log (to stderr).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json` (one JSON object per line, for log collectors).
    pub format: LogFormat,
}

/// See [`LogConfig::format`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the span fields.
    Json,
}

crate::choice!(LogFormat);

/// Overrides given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--storage`
    pub storage: Option<PathBuf>,
    /// `--ae-title`
    pub ae_title: Option<String>,
    /// `--http-listen` (empty disables the HTTP side)
    pub http_listen: Option<String>,
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
        let mut cfg: Config = builder.build()?.try_deserialize().map_err(dotted_key)?;
        if let Some(listen) = overrides.listen {
            cfg.node.listen = listen;
        }
        if let Some(storage) = &overrides.storage {
            cfg.node.storage = storage.clone();
        }
        if let Some(ae) = &overrides.ae_title {
            cfg.node.ae_title = ae.clone();
        }
        if let Some(listen) = &overrides.http_listen {
            cfg.http.listen = listen.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot (ranges, AE title syntax, duplicate peers) and compiles the
    /// rules into [`Config::compiled_rules`]. Call it again after changing the configuration.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
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
        let kb = self.node.receive_buffer_kb;
        if kb != 0 && !(64..=65_536).contains(&kb) {
            return Err(invalid(
                "node.receive_buffer_kb",
                format!("{kb} is neither 0 (kernel default) nor within 64..=65536 KB"),
            ));
        }
        if self.node.idle_timeout_seconds == 0 {
            return Err(invalid(
                "node.idle_timeout_seconds",
                "must be at least 1".into(),
            ));
        }
        if self.node.association_request_timeout_seconds == 0 {
            return Err(invalid(
                "node.association_request_timeout_seconds",
                "must be at least 1".into(),
            ));
        }
        if self.node.max_connections_per_host == 0 {
            return Err(invalid(
                "node.max_connections_per_host",
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
            if peer.formats.is_empty() {
                return Err(invalid(
                    &format!("peers[{i}].formats"),
                    "name at least one of stl, obj, surface-seg (or leave it out for stl)".into(),
                ));
            }
        }
        self.tls
            .validate(&self.peers)
            .map_err(|(key, message)| invalid(&key, message))?;
        self.audit
            .validate()
            .map_err(|(key, message)| invalid(&key, message))?;
        self.index
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if !self.audit.syslog.is_empty() && self.audit.enabled {
            self.tls
                .require_files("audit.syslog is sent over TLS with the node's certificate")
                .map_err(|(key, message)| invalid(&key, message))?;
        }
        if !(self.series.quiet_seconds >= 0.0 && self.series.quiet_seconds.is_finite()) {
            return Err(invalid(
                "series.quiet_seconds",
                "must be 0 or more seconds".into(),
            ));
        }
        if self.jobs.workers == 0 {
            return Err(invalid("jobs.workers", "must be at least 1".into()));
        }
        let d = &self.delivery;
        if !(d.retry_initial_seconds > 0.0 && d.retry_max_seconds >= d.retry_initial_seconds) {
            return Err(invalid(
                "delivery.retry_initial_seconds",
                "must be positive and not above delivery.retry_max_seconds".into(),
            ));
        }
        if d.deadline_seconds.is_nan() || d.deadline_seconds <= 0.0 {
            return Err(invalid(
                "delivery.deadline_seconds",
                "must be positive".into(),
            ));
        }
        if let Some(to) = &self.mpps.forward_to
            && self.peer(to).is_none()
        {
            return Err(invalid(
                "mpps.forward_to",
                format!("`{to}` is not an AE title in [[peers]]"),
            ));
        }
        if !(self.mpps.forward_retry_seconds >= 0.0 && self.mpps.forward_retry_seconds.is_finite())
        {
            return Err(invalid(
                "mpps.forward_retry_seconds",
                "must be 0 or more seconds".into(),
            ));
        }
        self.commitment
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        let rules = crate::route::compile_rules(&self.rules, &self.peers)
            .map_err(|(i, field, message)| invalid(&format!("rules[{i}].{field}"), message))?;
        self.neus
            .settings()
            .validate()
            .map_err(|e| invalid("neus", e.to_string()))?;
        self.compiled = Arc::new(rules);
        self.http
            .validate()
            .map_err(|e| invalid(e.key, e.message))?;
        Ok(())
    }

    /// The rules, compiled by [`Config::validate`] (empty before it ran).
    pub fn compiled_rules(&self) -> &Arc<Vec<Rule>> {
        &self.compiled
    }

    /// Whether [`Config::compiled_rules`] are the current `rules` (false when `rules`
    /// changed after [`Config::validate`], or it never ran).
    pub fn rules_are_compiled(&self) -> bool {
        self.compiled.len() == self.rules.len()
            && self
                .compiled
                .iter()
                .zip(&self.rules)
                .all(|(c, r)| c.source() == r)
    }

    /// The peer entry for an AE title, if any.
    pub fn peer(&self, ae_title: &str) -> Option<&PeerConfig> {
        crate::net::settings::find_peer(&self.peers, ae_title)
    }

    /// See [`crate::net::settings::peer_may`].
    pub fn may(&self, calling_ae: &str, service: Service) -> bool {
        crate::net::settings::peer_may(&self.peers, calling_ae, service)
    }

    /// What the SCP works with.
    pub fn scp_settings(&self) -> ScpSettings {
        ScpSettings {
            node: self.node.clone(),
            peers: self.peers.clone(),
            query: self.query.clone(),
            sub_operation_timeout_seconds: self.delivery.timeout_seconds,
            mpps: self.mpps.clone(),
        }
    }

    /// Whether the node loads its TLS identity: for the TLS listener, `tls = true` peers or
    /// the audit trail's syslog.
    pub fn needs_tls_identity(&self) -> bool {
        self.tls.needed(&self.peers) || (self.audit.enabled && !self.audit.syslog.is_empty())
    }

    /// What the HTTP side works with.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            http: self.http.clone(),
            ae_title: self.node.ae_title.clone(),
            min_free_mb: self.node.min_free_mb,
            delivery_deadline_seconds: self.delivery.deadline_seconds,
        }
    }

    /// What the job workers work with.
    pub fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            workers: self.jobs.workers,
            ae_title: self.node.ae_title.clone(),
            peers: self.peers.clone(),
            delivery_deadline_seconds: self.delivery.deadline_seconds,
            ort: self.onnxruntime.settings(),
            neus: self.neus.clone(),
        }
    }
}

/// The `config` crate names a key inside an array of tables `rules[0]preset`; the dotted
/// `rules[0].preset` is what the file says and what every other message of ours uses.
fn dotted_key(e: config::ConfigError) -> config::ConfigError {
    let fix = |key: Option<String>| {
        key.map(|k| {
            let mut out = String::with_capacity(k.len() + 2);
            let mut after_index = false;
            for c in k.chars() {
                if after_index && c != '[' && c != '.' {
                    out.push('.');
                }
                after_index = c == ']';
                out.push(c);
            }
            out
        })
    };
    match e {
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key: fix(key),
        },
        config::ConfigError::At { error, origin, key } => config::ConfigError::At {
            error,
            origin,
            key: fix(key),
        },
        other => other,
    }
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
    fn may_defaults_to_all_and_q_r_needs_a_listed_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[peers]]\nae_title = \"NAV\"\naddress = \"nav:104\"\n\
             [[peers]]\nae_title = \"MODALITY\"\naddress = \"ct:104\"\nmay = [\"echo\", \"store\"]\n\
             [query]\nmax_results = 0\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(cfg.query.max_results, 0);
        for s in Service::all() {
            assert!(cfg.may("NAV", s), "{s}");
        }
        assert!(cfg.may("MODALITY", Service::Store));
        assert!(!cfg.may("MODALITY", Service::Find));
        assert!(cfg.may("STRANGER", Service::Echo) && cfg.may("STRANGER", Service::Store));
        for s in [Service::Find, Service::Move, Service::Get] {
            assert!(!cfg.may("STRANGER", s), "{s}");
        }
        std::fs::write(
            &path,
            "[[peers]]\nae_title = \"NAV\"\naddress = \"nav:104\"\nmay = [\"query\"]\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("query"), "{err}");
    }

    #[test]
    fn http_beyond_loopback_needs_a_token_which_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let token = dir.path().join("token");
        std::fs::write(&token, "  0123456789abcdefXYZ\n").unwrap();
        std::fs::write(
            &path,
            format!(
                "[http]\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
        )
        .unwrap();
        let cfg = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        let secret = cfg.http.token().unwrap().unwrap();
        assert_eq!(secret.expose(), "0123456789abcdefXYZ");
        assert_eq!(format!("{secret:?}"), "\"***\"", "Debug hides the token");
        // Loopback needs none; an empty address disables the HTTP side.
        let cfg = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            cfg.http.listen_addr().unwrap(),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert!(cfg.http.token().unwrap().is_none());
        let cfg = Config::load(
            None,
            env(&[("M3DNODE__HTTP__LISTEN", "")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.http.listen_addr().unwrap(), None);
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
            (
                "[node]\nassociation_request_timeout_seconds = 0\n",
                "node.association_request_timeout_seconds",
            ),
            (
                "[node]\nmax_connections_per_host = 0\n",
                "node.max_connections_per_host",
            ),
            ("[node]\nlisten = \"nowhere\"\n", "node.listen"),
            ("[node]\nlistn = \"0.0.0.0:1\"\n", "listn"),
            (
                "[[peers]]\nae_title = \"PACS\"\naddress = \"pacs\"\n",
                "peers[0].address",
            ),
            ("[node]\non_conflict = \"maybe\"\n", "maybe"),
            ("[node]\nreceive_buffer_kb = 8\n", "node.receive_buffer_kb"),
            ("[http]\nlisten = \"0.0.0.0:8080\"\n", "http.token"),
            ("[http]\nlisten = \"[::]:8080\"\n", "http.token"),
            ("[http]\nlisten = \"localhost:8080\"\n", "http.listen"),
            ("[http]\ntoken = \"too-short\"\n", "http.token"),
            (
                "[http]\ntoken = \"0123456789abcdef\"\ntoken_file = \"/etc/t\"\n",
                "http.token_file",
            ),
            (
                "[http]\ntoken_file = \"/nonexistent/token\"\n",
                "http.token_file",
            ),
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

    fn load_text(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), env(&[]), &Overrides::default()).map_err(|e| e.to_string())
    }

    const PEER: &str = "[[peers]]\nae_title = \"PACS\"\naddress = \"pacs:104\"\n";

    #[test]
    fn rule_values_are_typed_and_rules_compiled_at_load() {
        use crate::recon::iso::Preset;
        use crate::volume::{GapPolicy, MixedPolicy, TiltPolicy};
        let mut cfg = load_text(&format!(
            "{PEER}[log]\nformat = \"json\"\n\
             [[rules]]\nname = \"a\"\npreset = 250\ngaps = \"interpolate\"\nmixed = \"largest\"\ntilt = \"resample\"\nsend_to = [\"PACS\"]\n\
             [[rules]]\npreset = \"iso:-400.5\"\nsend_to = [\"PACS\"]\n\
             [[rules]]\nmodality = \"CT\"\nsend_to = [\"PACS\"]\n"
        ))
        .unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        let r = &cfg.rules[0];
        assert_eq!(r.preset, Some(Preset::Iso(250.0)));
        assert_eq!(
            (r.pipeline, r.gaps, r.mixed, r.tilt),
            (
                Pipeline::Iso,
                GapPolicy::Interpolate,
                MixedPolicy::Largest,
                TiltPolicy::Resample
            )
        );
        assert_eq!(cfg.rules[1].preset, Some(Preset::Iso(-400.5)));
        assert!(cfg.rules_are_compiled());
        let compiled = cfg.compiled_rules().clone();
        let names: Vec<&str> = compiled.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "rule 2", "rule 3"]);
        assert_eq!(compiled[0].assemble.gaps, GapPolicy::Interpolate);
        assert_eq!(compiled[2].structures[0].iso.preset, Preset::CtBone);
        // A changed rule is noticed, and validate compiles it again.
        cfg.rules[2].modality = Some("MR".into());
        assert!(!cfg.rules_are_compiled());
        cfg.validate().unwrap();
        assert_eq!(
            cfg.compiled_rules()[2].structures[0].iso.preset,
            Preset::MrHead
        );
    }

    #[test]
    fn bad_enumerated_values_name_the_key_and_the_choices() {
        for (section, key, value, choices) in [
            ("[[rules]]", "gaps", "maybe", "interpolate"),
            ("[[rules]]", "mixed", "all", "largest"),
            ("[[rules]]", "tilt", "fix", "resample"),
            ("[[rules]]", "pipeline", "magic", "mvdiffusion"),
            ("[[rules]]", "neus_profile", "turbo", "fast"),
            ("[[rules]]", "preset", "bones", "ct-bone"),
            ("[log]", "format", "xml", "json"),
            ("[neus]", "device", "tpu", "cuda"),
            ("[onnxruntime]", "device", "npu", "tensorrt"),
        ] {
            let text = format!("{section}\n{key} = \"{value}\"\n");
            let key = match section.trim_matches(['[', ']']) {
                "rules" => format!("rules[0].{key}"),
                table => format!("{table}.{key}"),
            };
            let err = load_text(&format!("{PEER}{text}")).expect_err(&text);
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(choices),
                "{err:?} should name {key} and {choices}"
            );
        }
    }
}
