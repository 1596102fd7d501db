//! m3dnode: a DICOM node that receives CT/MR series, reconstructs a surface mesh from each
//! completed series and sends it back as an Encapsulated STL object.
//!
//! The modules follow the data:
//!
//! - [`audit`]: the audit trail (DICOM audit messages to a 0600 file and syslog over TLS).
//! - [`net`]: associations and DIMSE (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET as SCP and SCU).
//! - [`store`]: durable files (temp file, fsync, rename).
//! - [`db`]: the SQLite index: every table and statement, the versioned schema.
//! - [`query`]: Query/Retrieve matching (C-FIND identifiers against the query index, C-MOVE/C-GET
//!   resolution).
//! - [`series`]: series completion, the job table and the worker pool.
//! - [`volume`]: pixel decoding, slice geometry and assembly into a volume in patient mm.
//! - [`onnx`]: ONNX Runtime for the model pipelines (library loading, device, session cache).
//! - [`recon`]: reconstruction pipelines (`iso`; `mvdiffusion` six-view diffusion + `neus`
//!   surface fit, joined by `multiview`).
//! - [`mesh`]: marching cubes, cleanup, smoothing, simplification, STL/PLY/OBJ, metrics.
//! - [`encap`]: the Encapsulated STL object (built from a mesh and its source series).
//! - [`route`]: routing rules and the persistent delivery outbox.
//! - [`metrics`]: Prometheus metrics (counters, histograms, scrape-time gauges).
//! - [`http`]: the HTTP side: health probes, Prometheus metrics, the status page with its 3D
//!   previews.
//! - [`config`]: the validated configuration (each section's type lives in its module).
//! - [`node`]: the composition root: [`node::start`] wires the subsystems into a running
//!   [`node::Node`] and stops them in order, on one stop signal ([`shutdown`]).
//! - [`cli`]: the command-line front end (`serve`, `echo`, `send`, `find`, `move`, `get`, `recon`, ...).
//!
//! Cargo features: `gpu-cuda` runs the NeuS fit on burn's CUDA backend (kernels compiled by
//! NVRTC at run time, so building needs no CUDA toolkit; without a driver `device = "auto"`
//! falls back to the CPU).
#![deny(missing_docs)]

pub mod audit;
pub mod choice;
pub mod cli;
pub mod config;
pub mod db;
pub mod encap;
pub mod http;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod node;
pub mod onnx;
pub mod query;
pub mod recon;
pub mod route;
pub mod series;
pub mod shutdown;
pub mod store;
pub mod volume;
