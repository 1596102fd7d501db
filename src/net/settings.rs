//! The network side's settings: `[node]`, `[[peers]]` and `[query]` as [`crate::config`]
//! deserializes them, and [`ScpSettings`], the part of them the SCP works with.
//!
//! They live here, not in `config`, so that the network code depends on its own types only;
//! `config` assembles them into the whole configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::store::{OnConflict, StoreSettings};

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

impl NodeConfig {
    /// The storage part of `[node]`, as [`crate::store::Store::open`] takes it.
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            storage: self.storage.clone(),
            sync: self.sync,
            min_free_mb: self.min_free_mb,
            on_conflict: self.on_conflict,
            shared: None,
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
    /// The mesh objects this peer gets when it is a rule's destination (`stl`, `obj`,
    /// `surface-seg`); default Encapsulated STL only, which every M3D-aware viewer reads.
    #[serde(default = "default_formats")]
    pub formats: Vec<crate::encap::Format>,
    /// DICOM TLS with this peer: its associations are accepted only on the TLS listener
    /// with a client certificate from `tls.ca`, and the node calls it over TLS, verifying
    /// its server certificate against `tls.ca` and the host of `address`.
    #[serde(default)]
    pub tls: bool,
}

fn default_formats() -> Vec<crate::encap::Format> {
    vec![crate::encap::Format::Stl]
}

/// The peer entry for an AE title, if any.
pub fn find_peer<'a>(peers: &'a [PeerConfig], ae_title: &str) -> Option<&'a PeerConfig> {
    peers.iter().find(|p| p.ae_title == ae_title)
}

/// Whether `calling_ae` may use `service`: echo, store, storage commitment and MPPS (what a
/// scanner does) are open to any AE unless `require_known_peers` (checked at association) or
/// its own `may` leaves them out; an unlisted AE gets its commitment report only on the
/// association that asked, since the node has no address to call it back on;
/// find, move and get only to listed peers whose `may` names them (as in Orthanc, whose
/// query/retrieve is for its known modalities).
pub fn peer_may(peers: &[PeerConfig], calling_ae: &str, service: Service) -> bool {
    match find_peer(peers, calling_ae) {
        Some(peer) => peer.may.contains(&service),
        None => matches!(
            service,
            Service::Echo | Service::Store | Service::Commit | Service::Mpps
        ),
    }
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
    /// Storage Commitment (N-ACTION, answered by N-EVENT-REPORT).
    Commit,
    /// Modality Performed Procedure Step (N-CREATE, N-SET).
    Mpps,
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
            Service::Commit,
            Service::Mpps,
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
            Service::Commit => "Storage Commitment",
            Service::Mpps => "MPPS",
        })
    }
}

/// What the SCP and its Q/R operations work with: the sections of the configuration they
/// read, and nothing else.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScpSettings {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[[peers]]`.
    pub peers: Vec<PeerConfig>,
    /// `[query]`.
    pub query: QueryConfig,
    /// Connect and response timeout of the C-MOVE sub-associations we open, in seconds
    /// (`delivery.timeout_seconds`: they are deliveries too).
    pub sub_operation_timeout_seconds: u64,
    /// `[mpps]`.
    pub mpps: super::mpps::MppsConfig,
}

impl ScpSettings {
    /// The peer entry for an AE title, if any.
    pub fn peer(&self, ae_title: &str) -> Option<&PeerConfig> {
        find_peer(&self.peers, ae_title)
    }

    /// See [`peer_may`].
    pub fn may(&self, calling_ae: &str, service: Service) -> bool {
        peer_may(&self.peers, calling_ae, service)
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
