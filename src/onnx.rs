//! ONNX Runtime for the model pipelines: loading the shared library, choosing the execution
//! provider, and one cached session per model file.
//!
//! The library is the one from the PyPI wheel (`onnxruntime==1.31.1` on CPU hosts,
//! `onnxruntime-gpu==1.31.1` on CUDA 13 hosts), found from `[onnxruntime] library` or
//! `ORT_DYLIB_PATH` and loaded with [`ort::init_from`] the first time a model pipeline needs it:
//! the iso pipeline and the SCP never touch it, and a node without it still serves DICOM.
//! Loading happens once per process (a library cannot be unloaded); a missing or too old library
//! is an [`OrtError`], never a panic, because this module calls no `ort` function before the
//! load has succeeded (`ort` itself panics when its API is used without a library).
//!
//! Providers are registered with `error_on_failure()`, so ONNX Runtime never silently drops a
//! requested GPU: [`Device::Cuda`] / [`Device::TensorRt`] fail with the reason, [`Device::Auto`]
//! logs the reason and runs on CPU, and every session logs which provider it got
//! ([`Model::provider`]).
//!
//! Main types: [`OrtSettings`], [`Device`], [`Model`] (see [`model`]), [`OrtError`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use serde::Deserialize;

/// The ONNX Runtime release the project is built and tested against (`api-31`).
pub const ORT_VERSION: &str = "1.31.1";

/// Where to run the models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum Device {
    /// CUDA when the library and the machine can use it, else CPU (logged with the reason).
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA, or an error saying why not.
    Cuda,
    /// TensorRT (with CUDA for the nodes TensorRT does not take), or an error saying why not.
    /// Not tried by `auto`: building engines takes minutes on first use.
    TensorRt,
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "tensorrt" => Ok(Self::TensorRt),
            _ => Err(format!(
                "unknown device {s:?} (expected auto, cpu, cuda or tensorrt)"
            )),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::TensorRt => "tensorrt",
        })
    }
}

/// The execution provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `CPUExecutionProvider`.
    Cpu,
    /// `CUDAExecutionProvider`.
    Cuda,
    /// `TensorrtExecutionProvider` (CUDA for the rest).
    TensorRt,
}

impl Provider {
    /// True when tensors live in GPU memory and a job must hold the GPU permit.
    pub fn is_gpu(self) -> bool {
        !matches!(self, Self::Cpu)
    }

    /// Where the session's inputs and outputs live between runs.
    pub(crate) fn memory_info(self) -> ort::Result<MemoryInfo<'static>> {
        let device = if self.is_gpu() {
            AllocationDevice::CUDA
        } else {
            AllocationDevice::CPU
        };
        MemoryInfo::new(device, 0, AllocatorType::Device, MemoryType::Default)
    }

    /// The allocation device of [`Provider::memory_info`].
    pub(crate) fn allocation_device(self) -> AllocationDevice<'static> {
        if self.is_gpu() {
            AllocationDevice::CUDA
        } else {
            AllocationDevice::CPU
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "CPUExecutionProvider",
            Self::Cuda => "CUDAExecutionProvider",
            Self::TensorRt => "TensorrtExecutionProvider",
        })
    }
}

/// `[onnxruntime]` of the configuration: the library and device of the model pipelines.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so.1.31.1`; empty = the `ORT_DYLIB_PATH` environment variable.
    /// Loaded only when a model pipeline first runs.
    pub library: PathBuf,
    /// `auto`, `cpu`, `cuda` or `tensorrt`.
    pub device: Device,
}

impl OnnxRuntimeConfig {
    /// The settings the sessions take.
    pub fn settings(&self) -> OrtSettings {
        OrtSettings {
            library: (!self.library.as_os_str().is_empty()).then(|| self.library.clone()),
            device: self.device,
        }
    }
}

/// Which library and which device; built from `[onnxruntime]` of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrtSettings {
    /// Path of `libonnxruntime.so.1.31.1`; `None` = the `ORT_DYLIB_PATH` environment variable.
    pub library: Option<PathBuf>,
    /// Where to run.
    pub device: Device,
}

impl OrtSettings {
    /// The library path: the setting, else `ORT_DYLIB_PATH`.
    pub fn library_path(&self) -> Result<PathBuf, OrtError> {
        if let Some(path) = self.library.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            return Ok(path.clone());
        }
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(OrtError::NoLibrary),
        }
    }
}

/// Why ONNX Runtime could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrtError {
    /// Neither the setting nor the environment names a library.
    #[error(
        "no ONNX Runtime library: set [onnxruntime] library or ORT_DYLIB_PATH to \
         libonnxruntime.so.{ORT_VERSION} (pip install onnxruntime=={ORT_VERSION}, or \
         onnxruntime-gpu=={ORT_VERSION} on CUDA 13 hosts; scripts/test sets it up for the tests)"
    )]
    NoLibrary,
    /// The named file does not exist.
    #[error(
        "ONNX Runtime library {} does not exist (expected libonnxruntime.so.{ORT_VERSION})",
        path.display()
    )]
    LibraryMissing {
        /// The path that was given.
        path: PathBuf,
    },
    /// The file is not a loadable ONNX Runtime.
    #[error("cannot use ONNX Runtime library {} (need {ORT_VERSION}): {message}", path.display())]
    NotOrt {
        /// The path that was given.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file is ONNX Runtime, but another release.
    #[error(
        "ONNX Runtime library {} is version {found}; this build needs 1.{}.x ({ORT_VERSION}): \
         pip install onnxruntime=={ORT_VERSION} (or onnxruntime-gpu=={ORT_VERSION})",
        path.display(), ort::MINOR_VERSION
    )]
    WrongVersion {
        /// The path that was given.
        path: PathBuf,
        /// The version the library reports.
        found: String,
    },
    /// `ort` refused the library.
    #[error("cannot use ONNX Runtime library {} (need {ORT_VERSION}): {source}", path.display())]
    Load {
        /// The path that was given.
        path: PathBuf,
        /// What `ort` found wrong.
        source: ort::LoadDynamicError,
    },
    /// Creating the ONNX Runtime environment failed.
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(#[source] ort::Error),
    /// A requested GPU provider cannot be used.
    #[error(
        "device = \"{device}\": the {provider} cannot be used with this ONNX Runtime and machine \
         ({reason}); use onnxruntime-gpu=={ORT_VERSION} on a CUDA 13 host, or set \
         [onnxruntime] device = \"auto\" or \"cpu\""
    )]
    Provider {
        /// The configured device.
        device: Device,
        /// The provider that failed.
        provider: Provider,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The model file could not be turned into a session.
    #[error("cannot load ONNX model {}: {source}", path.display())]
    Session {
        /// The model file.
        path: PathBuf,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
}

/// The process-wide environment, created once the library is loaded.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data (a cache, an environment handle)
    // that is still consistent, so poisoning is not worth propagating.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loads the library (once per process) and returns the environment.
///
/// A second call naming another library keeps the first one (a loaded library cannot be
/// replaced) and says so in the log.
pub fn environment(settings: &OrtSettings) -> Result<Environment, OrtError> {
    let path = settings.library_path()?;
    let mut env = lock(&ENVIRONMENT);
    if let Some((loaded, env)) = env.as_ref() {
        if *loaded != path {
            tracing::warn!(
                loaded = %loaded.display(),
                requested = %path.display(),
                "ONNX Runtime is already loaded from another file; keeping it"
            );
        }
        return Ok(env.clone());
    }
    if !path.is_file() {
        return Err(OrtError::LibraryMissing { path });
    }
    let found = library_version(&path)?;
    if !version_fits(&found) {
        return Err(OrtError::WrongVersion { path, found });
    }
    let builder = ort::init_from(&path).map_err(|source| OrtError::Load {
        path: path.clone(),
        source,
    })?;
    let built = builder
        .with_name("m3dnode")
        .build()
        .map_err(OrtError::Environment)?;
    tracing::info!(library = %path.display(), version = %found, "ONNX Runtime loaded");
    *env = Some((path, built.clone()));
    Ok(built)
}

/// The version string the library reports (`OrtGetApiBase()->GetVersionString()`).
///
/// `ort` itself only rejects older releases and would run a newer one with a log line; the
/// project is tested against one release, so the caller insists on it.
fn library_version(path: &Path) -> Result<String, OrtError> {
    let not_ort = |message: String| OrtError::NotOrt {
        path: path.to_path_buf(),
        message,
    };
    // SAFETY: loading runs the library's initialisers; it is the library the configuration
    // names for exactly this purpose, and `ort` loads the same file right after.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| not_ort(e.to_string()))?;
    // SAFETY: the symbol's type is the one ONNX Runtime's C API declares.
    let get_base: libloading::Symbol<'_, unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }
            .map_err(|_| not_ort("it does not export OrtGetApiBase".into()))?;
    // SAFETY: OrtGetApiBase takes no arguments and returns a static table or null.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(not_ort("OrtGetApiBase returned null".into()));
    }
    // SAFETY: base is the library's static OrtApiBase; GetVersionString returns a static,
    // NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(((*base).GetVersionString)()) };
    Ok(version.to_string_lossy().into_owned())
}

/// True for 1.31.x, the release `ort`'s `api-31` was made for.
fn version_fits(found: &str) -> bool {
    let mut parts = found.split('.');
    parts.next() == Some("1")
        && parts.next().and_then(|m| m.parse::<u32>().ok()) == Some(ort::MINOR_VERSION)
}

/// One ONNX model with its session, shared by every pipeline that loads the same file on the
/// same device.
#[derive(Debug)]
pub struct Model {
    path: PathBuf,
    provider: Provider,
    session: Mutex<Session>,
}

impl Model {
    /// The file the session was made from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The provider the session runs on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The session, exclusively: ONNX Runtime's `Run` takes `&mut` in `ort`.
    pub fn session(&self) -> MutexGuard<'_, Session> {
        lock(&self.session)
    }
}

type Cache = HashMap<(PathBuf, Device), Arc<Model>>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The session for `path` on `settings.device`: created on first use, then the same one.
///
/// Files are keyed by their canonical path, so a model directory reached through two paths is
/// still one session; a file replaced on disk after its session exists is not re-read (the
/// manifest's sha256 check happens before this, at pipeline load).
pub fn model(path: &Path, settings: &OrtSettings) -> Result<Arc<Model>, OrtError> {
    let env = environment(settings)?;
    let key = (
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        settings.device,
    );
    if let Some(found) = lock(cache()).get(&key) {
        return Ok(Arc::clone(found));
    }
    let (session, provider) = open(&env, path, settings.device)?;
    tracing::info!(model = %path.display(), device = %settings.device, %provider, "ONNX Runtime session ready");
    let model = Arc::new(Model {
        path: path.to_path_buf(),
        provider,
        session: Mutex::new(session),
    });
    // Two threads may race to create the same session; the first stored wins and both callers
    // get a working one.
    Ok(Arc::clone(lock(cache()).entry(key).or_insert(model)))
}

fn open(env: &Environment, path: &Path, device: Device) -> Result<(Session, Provider), OrtError> {
    let cuda = || ep::CUDA::default().build().error_on_failure();
    match device {
        Device::Cpu => Ok((commit_cpu(env, path)?, Provider::Cpu)),
        Device::Cuda => Ok((
            commit_gpu(env, path, &[cuda()], device, Provider::Cuda)?,
            Provider::Cuda,
        )),
        Device::TensorRt => {
            let trt = ep::TensorRT::default().build().error_on_failure();
            Ok((
                commit_gpu(env, path, &[trt, cuda()], device, Provider::TensorRt)?,
                Provider::TensorRt,
            ))
        }
        Device::Auto => match commit_gpu(env, path, &[cuda()], device, Provider::Cuda) {
            Ok(session) => Ok((session, Provider::Cuda)),
            Err(OrtError::Provider { reason, .. }) => {
                tracing::warn!(
                    model = %path.display(),
                    %reason,
                    "device = \"auto\": CUDAExecutionProvider unavailable, falling back to CPUExecutionProvider"
                );
                Ok((commit_cpu(env, path)?, Provider::Cpu))
            }
            Err(e) => Err(e),
        },
    }
}

/// A session builder with the options every model session gets.
///
/// Intra-op threads do not spin between runs: ONNX Runtime's default keeps them busy-waiting
/// after each `Run`, which on a small machine takes the cores from the host-side work of the
/// denoising loop (measured: 2-3 ms per step of host work instead of ~0.3 ms on 2 vCPUs).
fn builder(
    env: &Environment,
    path: &Path,
) -> Result<ort::session::builder::SessionBuilder, OrtError> {
    let session_error = |source: ort::Error| OrtError::Session {
        path: path.to_path_buf(),
        source,
    };
    Session::builder(env)
        .map_err(session_error)?
        .with_config_entry("session.intra_op.allow_spinning", "0")
        .map_err(|e| session_error(e.into()))
}

fn commit_gpu(
    env: &Environment,
    path: &Path,
    eps: &[ExecutionProviderDispatch],
    device: Device,
    provider: Provider,
) -> Result<Session, OrtError> {
    let mut builder = builder(env, path)?
        .with_execution_providers(eps)
        .map_err(|e| OrtError::Provider {
            device,
            provider,
            reason: e.message().to_string(),
        })?;
    builder
        .commit_from_file(path)
        .map_err(|source| OrtError::Session {
            path: path.to_path_buf(),
            source,
        })
}

/// The host path runs without ONNX Runtime's CPU arena and memory pattern. Sessions are
/// cached across jobs, and at Wonder3D's guided batch (24 views, 4.8 GB of multi-view
/// attention scores alone) the arena keeps the first run's chunks while the memory pattern
/// plans one more block for the whole graph from the second run on: measured, a 910 M
/// parameter UNet at batch 24 went past 20 GiB on its second run and was killed on the
/// 24 GiB machine, where without both it stays near its first run's peak (bench/RESULTS.md,
/// issue 18). Allocations then go to the system allocator, which costs little beside a
/// model's kernels.
fn commit_cpu(env: &Environment, path: &Path) -> Result<Session, OrtError> {
    let session_error = |source: ort::Error| OrtError::Session {
        path: path.to_path_buf(),
        source,
    };
    let cpu = ep::CPU::default().with_arena_allocator(false).build();
    let mut builder = builder(env, path)?
        .with_execution_providers([cpu])
        .map_err(|e| session_error(e.into()))?
        .with_memory_pattern(false)
        .map_err(|e| session_error(e.into()))?;
    builder.commit_from_file(path).map_err(session_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip() {
        for d in [Device::Auto, Device::Cpu, Device::Cuda, Device::TensorRt] {
            assert_eq!(d.to_string().parse::<Device>(), Ok(d));
        }
        assert!("gpu".parse::<Device>().is_err());
    }

    #[test]
    fn only_the_tested_release_fits() {
        assert!(version_fits("1.31.1"));
        assert!(version_fits("1.31.0"));
        assert!(!version_fits("1.30.1"));
        assert!(!version_fits("1.32.0"));
        assert!(!version_fits("2.31.0"));
        assert!(!version_fits(""));
    }

    #[test]
    fn missing_library_is_an_error_not_a_panic() {
        let settings = OrtSettings {
            library: Some(PathBuf::from("/nonexistent/libonnxruntime.so.1.31.1")),
            device: Device::Cpu,
        };
        // Another test in this process may already have loaded the real library; then the
        // loaded one is kept and this is fine too.
        if lock(&ENVIRONMENT).is_none() {
            let err = environment(&settings).unwrap_err();
            assert!(matches!(err, OrtError::LibraryMissing { .. }), "{err}");
        }
    }
}
