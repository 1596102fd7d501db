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
    /// When a series counts as complete.
    pub series: SeriesConfig,
    /// Reconstruction workers.
    pub jobs: JobsConfig,
    /// Sending results to destinations.
    pub delivery: DeliveryConfig,
    /// Routing rules, first match wins. A series no rule matches is stored, not processed.
    pub rules: Vec<RuleConfig>,
    /// ONNX Runtime for the model pipelines.
    pub onnxruntime: OnnxRuntimeConfig,
    /// The NeuS surface fit of the `mvdiffusion` pipeline.
    pub neus: NeusConfig,
    /// Query/Retrieve (C-FIND, C-MOVE, C-GET) served by the node.
    pub query: QueryConfig,
    /// The HTTP side: health, metrics, the status page.
    pub http: HttpConfig,
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
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| ConfigError::Invalid {
            key: "http.listen".into(),
            message: format!("`{listen}` is not an IP address and port (e.g. 127.0.0.1:8080)"),
        })
    }

    /// The token from `token` or `token_file`, checked; `None` when neither is set.
    pub fn token(&self) -> Result<Option<Secret>, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        let token = self.token()?;
        if let Some(addr) = self.listen_addr()?
            && !addr.ip().is_loopback()
            && token.is_none()
        {
            return Err(ConfigError::Invalid {
                key: "http.token".into(),
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

/// `[query]`: the Query/Retrieve SCP.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// At most this many C-FIND matches per request (0 = no limit). A query with more
    /// matches gets the first `max_results` as pending responses, then a final 0xA700 whose
    /// Error Comment asks to narrow the query: a navigation system that asks for every study
    /// of a PACS-sized index should learn that it got a part, not believe it got the whole.
    pub max_results: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig { max_results: 1000 }
    }
}

/// `[onnxruntime]`: the library and device of the model pipelines (see [`crate::onnx`]).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so.1.31.1`; empty = the `ORT_DYLIB_PATH` environment variable.
    /// Loaded only when a model pipeline first runs.
    pub library: PathBuf,
    /// `auto`, `cpu`, `cuda` or `tensorrt`.
    pub device: crate::onnx::Device,
}

impl OnnxRuntimeConfig {
    /// The settings [`crate::onnx`] takes.
    pub fn settings(&self) -> crate::onnx::OrtSettings {
        crate::onnx::OrtSettings {
            library: (!self.library.as_os_str().is_empty()).then(|| self.library.clone()),
            device: self.device,
        }
    }
}

/// `[neus]`: the NeuS fit (six views -> surface). Unset numbers come from the profile.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NeusConfig {
    /// `auto` (CUDA if built with `gpu-cuda` and a driver answers, else CPU), `cpu`, `cuda`.
    pub device: crate::recon::neus::Device,
    /// `default` (the Wonder3D config: 3000 steps, marching cubes 192) or `fast` (CPU).
    pub profile: NeusProfile,
    /// Optimisation steps; 0 = the profile's.
    pub steps: usize,
    /// Rays per step; 0 = the profile's.
    pub rays_per_batch: usize,
    /// Samples per ray; 0 = the profile's.
    pub samples_per_ray: usize,
    /// Marching-cubes resolution; 0 = the profile's.
    pub mc_resolution: usize,
}

impl Default for NeusConfig {
    fn default() -> Self {
        NeusConfig {
            device: crate::recon::neus::Device::Auto,
            profile: NeusProfile::Default,
            steps: 0,
            rays_per_batch: 0,
            samples_per_ray: 0,
            mc_resolution: 0,
        }
    }
}

/// See [`NeusConfig::profile`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NeusProfile {
    /// [`crate::recon::neus::NeusSettings::default`].
    Default,
    /// [`crate::recon::neus::NeusSettings::fast`].
    Fast,
}

impl NeusConfig {
    /// The settings this section asks for.
    pub fn settings(&self) -> crate::recon::neus::NeusSettings {
        let mut s = match self.profile {
            NeusProfile::Default => crate::recon::neus::NeusSettings::default(),
            NeusProfile::Fast => crate::recon::neus::NeusSettings::fast(),
        };
        s.device = self.device;
        let pick = |v: usize, d: usize| if v == 0 { d } else { v };
        s.steps = pick(self.steps, s.steps);
        s.rays_per_batch = pick(self.rays_per_batch, s.rays_per_batch);
        s.samples_per_ray = pick(self.samples_per_ray, s.samples_per_ray);
        s.mc_resolution = pick(self.mc_resolution, s.mc_resolution);
        s
    }
}

/// `[series]`: series completion.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SeriesConfig {
    /// A series is complete after this many seconds without a new instance (or at once when
    /// the expected number of instances has arrived).
    pub quiet_seconds: f64,
    /// Instances arriving after a series was processed: rebuild the result or ignore them.
    pub late_instances: LateInstances,
    /// Instances stored by an association that was later aborted: keep or drop them.
    pub aborted_associations: AbortedAssociations,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        SeriesConfig {
            quiet_seconds: 20.0,
            late_instances: LateInstances::Rebuild,
            aborted_associations: AbortedAssociations::Keep,
        }
    }
}

/// See [`SeriesConfig::late_instances`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LateInstances {
    /// Build a new result that supersedes the old one (same result series, Instance Number + 1).
    Rebuild,
    /// Keep the instance stored but do not reprocess; log it.
    Ignore,
}

/// See [`SeriesConfig::aborted_associations`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AbortedAssociations {
    /// Keep what an aborted association stored (it was acknowledged).
    Keep,
    /// Delete what an aborted association stored, as MONAI's gateway does, so a half-sent
    /// series is not processed.
    Drop,
}

/// `[jobs]`: reconstruction workers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Reconstructions run at once (each is itself parallel).
    pub workers: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig { workers: 1 }
    }
}

/// `[delivery]`: the outbox.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// First retry delay in seconds; doubled per failure (with +-20 % jitter).
    pub retry_initial_seconds: f64,
    /// Longest retry delay in seconds.
    pub retry_max_seconds: f64,
    /// Give up (state `failed`, retry by hand with `m3dnode retry`) after this many
    /// seconds.
    pub deadline_seconds: f64,
    /// Connect and response timeout per association, in seconds.
    pub timeout_seconds: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry_initial_seconds: 2.0,
            retry_max_seconds: 300.0,
            deadline_seconds: 86_400.0,
            timeout_seconds: 30,
        }
    }
}

/// `[[rules]]`: which series go to which pipeline and where the result goes. Unset match
/// keys match anything.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Name for logs and the job list (default `rule N`).
    pub name: Option<String>,
    /// Match: calling AE title (exact).
    pub calling_ae: Option<String>,
    /// Match: called AE title (exact).
    pub called_ae: Option<String>,
    /// Match: Modality (exact, e.g. `CT`).
    pub modality: Option<String>,
    /// Match: Body Part Examined (exact, case-insensitive).
    pub body_part: Option<String>,
    /// Match: Series Description (regular expression, unanchored).
    pub series_description: Option<String>,
    /// Match: SOP Class UID (exact).
    pub sop_class: Option<String>,
    /// Pipeline: `iso` (default) or `mvdiffusion` (six generated views + NeuS).
    pub pipeline: Option<String>,
    /// mvdiffusion: the model directory (holding `model.toml`); default `models/wonder3d`.
    pub model: Option<PathBuf>,
    /// mvdiffusion: the key image: `middle` (default), `largest` (most foreground) or an
    /// Instance Number.
    pub key_image: Option<String>,
    /// mvdiffusion: windowing of the key image: `series` (default: its Window Center/Width),
    /// `auto`, `ct-bone`, `ct-soft`, `ct-lung`, `ct-brain` or `CENTER,WIDTH`.
    pub window: Option<String>,
    /// mvdiffusion: denoising steps (default: the model's, 50 for Wonder3D).
    pub diffusion_steps: Option<usize>,
    /// mvdiffusion: NeuS profile overriding `[neus] profile`: `default` (the config's 3000
    /// steps, for a GPU) or `fast` (the CPU profile).
    pub neus_profile: Option<String>,
    /// mvdiffusion: NeuS optimisation steps, overriding the profile's.
    pub neus_steps: Option<usize>,
    /// Preset of the iso pipeline (`ct-bone`, `ct-skin`, `mr-head`, `otsu`, `mask` or a
    /// number); default `ct-bone` for CT, `mr-head` otherwise.
    pub preset: Option<String>,
    /// Gaussian pre-smoothing in mm.
    pub smooth_sigma_mm: Option<f64>,
    /// Missing slices: `fail` (default) or `interpolate`.
    pub gaps: Option<String>,
    /// Several stacks: `fail` (default) or `largest`.
    pub mixed: Option<String>,
    /// Gantry tilt: `reject` (default) or `resample`.
    pub tilt: Option<String>,
    /// Overrides `[series] quiet_seconds` for series of this rule.
    pub quiet_seconds: Option<f64>,
    /// Complete the series as soon as this many instances have arrived.
    pub expected_instances: Option<u32>,
    /// Destinations: AE titles from `[[peers]]`.
    pub send_to: Vec<String>,
    /// Also send the result to the AE that sent the series (it must be in `[[peers]]`).
    pub reply_to_sender: bool,
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
    /// Kernel receive buffer of each association's socket, in KB; 0 leaves it to the
    /// kernel's autotuning, which starts at 128 KB and grows it during the association.
    pub receive_buffer_kb: u32,
    /// Reject calling AE titles that are not in `[[peers]]`.
    pub require_known_peers: bool,
    /// Seconds an association may stay silent before it is aborted.
    pub idle_timeout_seconds: u64,
    /// Seconds a new connection has to deliver its whole A-ASSOCIATE-RQ (the ARTIM timer of
    /// PS3.8 9.1.5); until then it holds no association slot.
    pub association_request_timeout_seconds: u64,
    /// Open connections (associations and connections still sending their request) from one
    /// IP address; one more is answered "local limit exceeded" or closed.
    pub max_connections_per_host: usize,
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
            receive_buffer_kb: 1024,
            require_known_peers: false,
            idle_timeout_seconds: 60,
            association_request_timeout_seconds: 10,
            max_connections_per_host: 16,
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
    /// What this peer may ask the node for; default all of them. C-FIND/C-MOVE/C-GET are
    /// refused to AE titles that are not listed in `[[peers]]` at all.
    #[serde(default = "Service::all")]
    pub may: Vec<Service>,
}

/// A DIMSE service a peer may be allowed (`[[peers]] may`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// C-ECHO.
    Echo,
    /// C-STORE to the node.
    Store,
    /// C-FIND.
    Find,
    /// C-MOVE.
    Move,
    /// C-GET.
    Get,
}

impl Service {
    /// Every service: the default of `may`.
    pub fn all() -> Vec<Service> {
        vec![
            Service::Echo,
            Service::Store,
            Service::Find,
            Service::Move,
            Service::Get,
        ]
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Echo => "C-ECHO",
            Service::Store => "C-STORE",
            Service::Find => "C-FIND",
            Service::Move => "C-MOVE",
            Service::Get => "C-GET",
        })
    }
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
        for (i, rule) in self.rules.iter().enumerate() {
            crate::route::Rule::compile(i, rule, self)
                .map_err(|(field, message)| invalid(&format!("rules[{i}].{field}"), message))?;
        }
        self.neus
            .settings()
            .validate()
            .map_err(|e| invalid("neus", e.to_string()))?;
        self.http.validate()?;
        Ok(())
    }

    /// The peer entry for an AE title, if any.
    pub fn peer(&self, ae_title: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.ae_title == ae_title)
    }

    /// Whether `calling_ae` may use `service`: echo and store are open to any AE unless
    /// `require_known_peers` (checked at association) or its own `may` leaves them out;
    /// find, move and get only to listed peers whose `may` names them (as in Orthanc, whose
    /// query/retrieve is for its known modalities).
    pub fn may(&self, calling_ae: &str, service: Service) -> bool {
        match self.peer(calling_ae) {
            Some(peer) => peer.may.contains(&service),
            None => matches!(service, Service::Echo | Service::Store),
        }
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
}
