//! The command-line front end. It parses arguments, sets up logging and the runtime, and
//! calls into the library; it holds no logic the server lacks. Only this module picks exit
//! codes: 0 success, 1 a command that ran and failed (e.g. a file that was not stored), 2 bad
//! usage or configuration; the Q/R commands add the codes of [`qr_exit`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use crate::config::{Config, LogFormat, Overrides};
use crate::net::qr_scu::{self, QrAssociation, QrError};
use crate::net::scu::{self, AeAddress, OutgoingFile, ScuOptions};
use crate::node::Role;
use dicom_core::header::Header as _;

/// A DICOM node that turns received CT/MR series into surface meshes (Encapsulated STL).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node: Storage SCP (C-ECHO, C-STORE) on `node.listen`.
    Serve {
        /// TOML configuration file (default: the embedded defaults, see conf/m3dnode.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overrides `node.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Storage root, overrides `node.storage`.
        #[arg(long)]
        storage: Option<PathBuf>,
        /// Our AE title, overrides `node.ae_title`.
        #[arg(long)]
        ae_title: Option<String>,
        /// Status page, health and metrics address, overrides `http.listen` ("" disables).
        #[arg(long)]
        http_listen: Option<String>,
        /// Only receive: run no reconstruction jobs and send no results (the `worker`
        /// processes of a shared PostgreSQL index do that).
        #[arg(long)]
        no_workers: bool,
    },
    /// Run a worker of a shared PostgreSQL index (`[index] url`): it claims and runs jobs and
    /// deliveries, decides series completion, and has no DICOM listener. For GPU machines
    /// beside the receivers.
    Worker {
        /// TOML configuration file; its `[index] url` must name the shared database.
        #[arg(long, short)]
        config: PathBuf,
        /// Storage root (the shared one), overrides `node.storage`.
        #[arg(long)]
        storage: Option<PathBuf>,
        /// Status page, health and metrics address, overrides `http.listen` ("" disables).
        #[arg(long)]
        http_listen: Option<String>,
    },
    /// Ask a running node whether it is ready (`/health/ready` of its HTTP side): exit 0 when
    /// ready, 1 when not or unreachable; prints the node's answer. For Docker's HEALTHCHECK.
    Health {
        /// The node's HTTP side.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Only whether the process serves (`/health/live`).
        #[arg(long)]
        live: bool,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Verify a remote AE with C-ECHO.
    Echo {
        /// The remote AE, `AE@host:port`, or with `--config` the AE title of one of its
        /// `[[peers]]` (called at its address, over TLS when it has `tls = true`).
        to: String,
        /// The node's configuration: its `[[peers]]`, `[tls]` identity and AE title.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Our calling AE title (default `node.ae_title`, M3DNODE without `--config`).
        #[arg(long)]
        calling_ae: Option<String>,
        /// Seconds to wait for the connection and each answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Reconstruct a surface from a folder of DICOM files, offline, with the node's pipeline.
    Recon(Box<ReconArgs>),
    /// Fit a surface to six generated views (NeuS) and write it as STL.
    Neus(Box<NeusArgs>),
    /// Recent jobs (state, timings, error) and deliveries of the node's storage.
    Jobs {
        /// The node's configuration file (for `node.storage`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Storage root, overrides `node.storage`.
        #[arg(long)]
        storage: Option<PathBuf>,
        /// How many of each to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Put failed deliveries back in the queue of the running node (one by id, or all).
    Retry {
        /// Outbox id from `m3dnode jobs`.
        id: Option<i64>,
        /// Retry every failed delivery.
        #[arg(long, conflicts_with = "id")]
        all_failed: bool,
        /// The node's configuration file (for `node.storage` and `delivery.deadline_seconds`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Storage root, overrides `node.storage`.
        #[arg(long)]
        storage: Option<PathBuf>,
    },
    /// Six views (normal and colour maps) of a series' key image with the mvdiffusion model
    /// (ONNX Runtime; see models/README.md).
    Views(Box<ViewsArgs>),
    /// Benchmarks (see bench/README.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Query a remote AE (C-FIND): one line per match on stdout.
    Find(Box<FindArgs>),
    /// Have a remote AE send what the keys name to another AE (C-MOVE).
    Move(Box<MoveArgs>),
    /// Retrieve what the keys name into a folder (C-GET), one Part 10 file per instance.
    Get(Box<GetArgs>),
    /// Send DICOM files (directories are walked recursively) with C-STORE.
    Send {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The remote AE, `AE@host:port`.
        #[arg(long)]
        to: AeAddress,
        /// Our calling AE title.
        #[arg(long, default_value = "M3DNODE")]
        calling_ae: String,
        /// Seconds to wait for the connection and each answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// What `find`, `move` and `get` share: the peer, the identifier and the association.
#[derive(Debug, clap::Args)]
struct QrArgs {
    /// The remote AE, `AE@host:port`.
    peer: AeAddress,
    /// A key: `Tag=Value` to match, `Tag` (or `Tag=`) to have it returned. Tag is a keyword
    /// (`PatientName`) or `gggg,eeee`. Repeatable.
    #[arg(short = 'k', long = "key")]
    keys: Vec<qr_scu::Key>,
    /// Query/Retrieve Level: PATIENT, STUDY, SERIES or IMAGE.
    #[arg(short = 'L', long, default_value = "STUDY")]
    level: qr_scu::Level,
    /// Patient Root information model.
    #[arg(short = 'P', long, conflicts_with = "study_root")]
    patient_root: bool,
    /// Study Root information model (the default).
    #[arg(short = 'S', long)]
    study_root: bool,
    /// Specific Character Set of the identifier, e.g. `ISO_IR 192` for UTF-8 values.
    #[arg(long)]
    charset: Option<String>,
    /// Our calling AE title.
    #[arg(long, default_value = "M3DNODE")]
    calling_ae: String,
    /// Seconds to wait for the connection and for each response.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

impl QrArgs {
    fn model(&self) -> qr_scu::Model {
        if self.patient_root {
            qr_scu::Model::PatientRoot
        } else {
            qr_scu::Model::StudyRoot
        }
    }

    fn options(&self) -> ScuOptions {
        ScuOptions {
            calling_ae: self.calling_ae.clone(),
            timeout: Duration::from_secs(self.timeout),
            ..Default::default()
        }
    }

    fn identifier(&self) -> dicom_object::InMemDicomObject {
        qr_scu::identifier(self.level, &self.keys, self.charset.as_deref())
    }
}

/// Arguments of `m3dnode find`.
#[derive(Debug, clap::Args)]
struct FindArgs {
    #[command(flatten)]
    qr: QrArgs,
    /// One JSON object per match (keyword: value) instead of tab-separated `keyword=value`.
    #[arg(long)]
    json: bool,
}

/// Arguments of `m3dnode move`.
#[derive(Debug, clap::Args)]
struct MoveArgs {
    #[command(flatten)]
    qr: QrArgs,
    /// The AE title the peer is to send to (it must know its address).
    #[arg(long)]
    dest: String,
}

/// Arguments of `m3dnode get`.
#[derive(Debug, clap::Args)]
struct GetArgs {
    #[command(flatten)]
    qr: QrArgs,
    /// Folder for the retrieved instances (`<SOP Instance UID>.dcm`); created if missing.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// Arguments of `m3dnode neus`.
#[derive(Debug, clap::Args)]
struct NeusArgs {
    /// A folder with Wonder3D's `normals_000_<view>.png` for the six views (RGBA: normals in
    /// the front camera's frame as RGB, the foreground mask as alpha).
    views: PathBuf,
    /// Output STL (binary), in mm.
    #[arg(long, short)]
    output: PathBuf,
    /// The CPU profile (600 short steps, coarser grid) instead of the config's 3000 steps.
    #[arg(long)]
    fast: bool,
    /// Optimisation steps, overriding the profile.
    #[arg(long)]
    steps: Option<usize>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: crate::recon::neus::Device,
    /// Millimetres per half view width (without a key image the scene box is placed at the
    /// origin, +x right, +z up).
    #[arg(long, default_value_t = 100.0)]
    mm_per_unit: f64,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Surface extraction (marching cubes) on a .npy volume, as bench/mc.sh runs it beside
    /// VTK and scikit-image on the same file.
    Mc {
        /// A (z, y, x) C-order volume: int16, uint16, uint8 or float32 little endian.
        npy: PathBuf,
        /// Iso value, in the volume's units.
        #[arg(long)]
        level: f32,
        /// Voxel size z,y,x in mm.
        #[arg(long, default_value = "1,1,1")]
        spacing: String,
        /// Thread counts to measure, comma-separated.
        #[arg(long, default_value = "1,2")]
        threads: String,
        /// Repetitions per thread count (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// The mvdiffusion pipeline: session creation, whole runs, time per denoising step inside
    /// and outside ONNX Runtime, peak memory. Takes the arguments of `m3dnode views`.
    Views(Box<ViewsArgs>),
    /// The Q/R benchmark's data set (bench/README.md, "The data set") written straight into a
    /// storage's index, as bench/qr.sh loads the node: the rows `serve` would have written for
    /// the files `bench/qr_data.py` makes, without the files (C-FIND only). The storage must
    /// not hold studies yet.
    QrLoad {
        /// The storage root (node.storage of the node that serves it); created if missing.
        #[arg(long)]
        storage: PathBuf,
        /// Studies 0..N of the data set.
        #[arg(long)]
        studies: u64,
        /// Instances per study, in min(4, M) series.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        per_study: u64,
        /// Data-set seed (part of every UID).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=999))]
        seed: u64,
    },
    /// NeuS on analytic views (see tests/neus.rs): seconds per step, total, and the mean
    /// surface distance to the true shape.
    Neus {
        /// sphere, ellipsoid or dimple.
        #[arg(long, default_value = "ellipsoid")]
        shape: String,
        /// The CPU profile instead of the config's.
        #[arg(long)]
        fast: bool,
        /// Optimisation steps, overriding the profile.
        #[arg(long)]
        steps: Option<usize>,
        /// View size in pixels.
        #[arg(long, default_value_t = 96)]
        size: usize,
        /// cpu, cuda or auto (cuda needs the `gpu-cuda` feature; scripts/gpu-check).
        #[arg(long, default_value = "cpu")]
        device: crate::recon::neus::Device,
    },
}

/// Arguments of `m3dnode views` and `m3dnode bench views`.
#[derive(Debug, clap::Args)]
struct ViewsArgs {
    /// Folder holding the series (searched recursively).
    dir: PathBuf,
    /// Model directory: model.toml and the ONNX files it names.
    #[arg(long)]
    model: PathBuf,
    /// Write the six normal maps, colour maps, masks and the input image as PNG here, plus
    /// Wonder3D's `normals_000_<view>.png` (RGBA) that `m3dnode neus` reads.
    #[arg(long)]
    save_views: Option<PathBuf>,
    /// Series Instance UID to use when the folder holds several series.
    #[arg(long)]
    series: Option<String>,
    /// Key image: `middle`, `largest` (most foreground), or an Instance Number.
    #[arg(long, default_value = "middle")]
    key: String,
    /// Window: `series` (Window Center/Width of the key image), `auto` (1-99 %), `ct-bone`,
    /// `ct-soft`, `ct-lung`, `ct-brain`, or CENTER,WIDTH in modality units.
    #[arg(long, default_value = "series")]
    window: String,
    /// Seed of the sampler's noise.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Denoising steps (default: the manifest's).
    #[arg(long)]
    steps: Option<usize>,
    /// Guidance scale, 1 = none (default: the manifest's).
    #[arg(long)]
    guidance: Option<f32>,
    /// auto, cpu, cuda or tensorrt (default: [onnxruntime] device of --config).
    #[arg(long)]
    device: Option<crate::onnx::Device>,
    /// libonnxruntime.so.1.31.1 (default: [onnxruntime] library, then ORT_DYLIB_PATH).
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// Configuration file for [onnxruntime].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Record the model inputs, the noise and the outputs as .npy here, for
    /// scripts/mvdiffusion_reference.py.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Runs (bench views; the first is reported apart as warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Arguments of `m3dnode recon`.
#[derive(Debug, clap::Args)]
struct ReconArgs {
    /// Folder holding the series (searched recursively).
    dir: PathBuf,
    /// Reconstruction pipeline (only `iso` runs offline).
    #[arg(long, value_enum, default_value_t = crate::route::Pipeline::Iso)]
    pipeline: crate::route::Pipeline,
    /// What to segment: ct-bone (300 HU), ct-skin (-300 HU), mr-head, otsu, mask (0.5), or an
    /// iso value in modality units (negative ones too: `--preset -142.5`). Repeat it for
    /// several structures (`--preset ct-bone --preset ct-skin`), each its own mesh.
    #[arg(long, default_value = "ct-bone", allow_negative_numbers = true)]
    preset: Vec<crate::recon::iso::Preset>,
    /// Output. A file with a mesh extension (.stl, binary or ASCII with --ascii; .ply; .obj)
    /// for one structure; a directory (existing, or ending in `/`) for several structures or
    /// with --format: one mesh file per structure (`bone.stl`) and the DICOM objects of each
    /// format (`stl-bone.dcm`, `obj-bone.dcm` + `mtl-bone.dcm`, `surface-seg.dcm`).
    #[arg(long, short)]
    output: PathBuf,
    /// DICOM objects to write into the output directory: stl, obj, surface-seg
    /// (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    format: Vec<crate::encap::Format>,
    /// Also write the Encapsulated STL DICOM object here (one structure).
    #[arg(long)]
    dicom: Option<PathBuf>,
    /// Which connected pieces to keep: largest, all, inside-body (default: the preset's,
    /// inside-body for ct-bone, largest otherwise).
    #[arg(long, value_enum)]
    keep: Option<crate::recon::iso::Keep>,
    /// Drop pieces enclosing less than this many mm³.
    #[arg(long)]
    min_size_mm3: Option<f64>,
    /// Series Instance UID to use when the folder holds several series.
    #[arg(long)]
    series: Option<String>,
    /// Gaussian pre-smoothing sigma in mm.
    #[arg(long)]
    smooth: Option<f64>,
    /// The same as `--keep all`.
    #[arg(long, conflicts_with = "keep")]
    all_components: bool,
    /// No Taubin smoothing of the mesh.
    #[arg(long)]
    no_taubin: bool,
    /// No simplification.
    #[arg(long)]
    no_simplify: bool,
    /// Write ASCII instead of binary STL.
    #[arg(long)]
    ascii: bool,
    /// Missing slices: fail, or interpolate (with a warning).
    #[arg(long, value_enum, default_value_t)]
    gaps: crate::volume::GapPolicy,
    /// Several stacks in the series: fail, or largest.
    #[arg(long, value_enum, default_value_t)]
    mixed: crate::volume::MixedPolicy,
    /// Gantry tilt: reject, or resample.
    #[arg(long, value_enum, default_value_t)]
    tilt: crate::volume::TiltPolicy,
}

/// Runs the program; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The server's configuration is read first: it chooses the log format.
    let (config, overrides, role) = match &cli.command {
        Command::Serve {
            config,
            listen,
            storage,
            ae_title,
            http_listen,
            no_workers,
        } => (
            config.as_deref(),
            Overrides {
                listen: *listen,
                storage: storage.clone(),
                ae_title: ae_title.clone(),
                http_listen: http_listen.clone(),
            },
            Some(Role::Serve {
                workers: !no_workers,
            }),
        ),
        Command::Worker {
            config,
            storage,
            http_listen,
        } => (
            Some(config.as_path()),
            Overrides {
                storage: storage.clone(),
                http_listen: http_listen.clone(),
                ..Overrides::default()
            },
            Some(Role::Worker),
        ),
        _ => (None, Overrides::default(), None),
    };
    let served = match role {
        Some(role) => match Config::load(config, None, &overrides) {
            Ok(cfg) if role == Role::Worker && !cfg.index.is_shared() => {
                eprintln!(
                    "m3dnode: `worker` needs a shared index: set [index] url to the PostgreSQL \
                     database the receivers use (beside an SQLite index, `serve` runs the jobs)"
                );
                return ExitCode::from(2);
            }
            Ok(cfg) => Some((cfg, role)),
            Err(e) => {
                eprintln!("m3dnode: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    // The server logs its work; offline commands only warnings (their result goes to stdout).
    match &served {
        Some((cfg, _)) => init_logging("info", cfg.log.format),
        None => init_logging("warn", LogFormat::Text),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("m3dnode: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match served {
        Some((cfg, role)) => runtime
            .block_on(serve(cfg, role))
            .map(|()| ExitCode::SUCCESS),
        None => runtime.block_on(run(cli)),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("m3dnode: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default`), as text or as one JSON object
/// per line (`[log] format`).
fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colours only on a terminal: journald and log files get plain text.
        LogFormat::Text => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init()
        }
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// One health request; blocking (ureq), run off the runtime.
fn health(url: &str, timeout: Duration) -> ExitCode {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_string().unwrap_or_default();
            println!("{status} {}", body.trim());
            if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            println!("{url}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { .. } | Command::Worker { .. } => {
            anyhow::bail!("serve and worker are run by main with their configuration")
        }
        Command::Health { url, live, timeout } => {
            let path = if live { "live" } else { "ready" };
            let url = format!("{}/health/{path}", url.trim_end_matches('/'));
            tokio::task::spawn_blocking(move || health(&url, Duration::from_secs(timeout)))
                .await
                .context("health check task")
        }
        Command::Echo {
            to,
            config,
            calling_ae,
            timeout,
        } => {
            let (to, mut opts) = echo_target(&to, config.as_deref())?;
            if let Some(calling_ae) = calling_ae {
                opts.calling_ae = calling_ae;
            }
            opts.timeout = Duration::from_secs(timeout);
            match scu::echo(&to, &opts).await {
                Ok(()) => {
                    println!("C-ECHO {to}: success");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(network_failure(&e)),
            }
        }
        Command::Find(args) => find(*args).await,
        Command::Move(args) => retrieve(args.qr, Retrieve::Move(args.dest)).await,
        Command::Get(args) => retrieve(args.qr, Retrieve::Get(args.output)).await,
        Command::Send {
            paths,
            to,
            calling_ae,
            timeout,
        } => send(paths, to, calling_ae, timeout).await,
        Command::Jobs {
            config,
            storage,
            limit,
        } => {
            let (cfg, index) = open_index(config, storage)?;
            print_jobs(&cfg, &index, limit)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            id,
            all_failed,
            config,
            storage,
        } => {
            anyhow::ensure!(
                id.is_some() || all_failed,
                "name an outbox id or use --all-failed"
            );
            let (cfg, index) = open_index(config, storage)?;
            let n = index.retry_deliveries(id, cfg.delivery.deadline_seconds)?;
            println!("{n} deliveries queued again");
            Ok(if n > 0 || all_failed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        // The data's faults (no series, a missing slice, an empty surface) are failures of
        // the command, exit 1; exit 2 stays for usage.
        Command::Recon(args) => match tokio::task::spawn_blocking(move || recon(*args)).await? {
            Err(e) if e.downcast_ref::<Usage>().is_none() => {
                eprintln!("m3dnode: {e:#}");
                Ok(ExitCode::from(1))
            }
            other => other,
        },
        Command::Views(args) => tokio::task::spawn_blocking(move || views(*args, false)).await?,
        Command::Bench(BenchCommand::Views(args)) => {
            tokio::task::spawn_blocking(move || views(*args, true)).await?
        }
        Command::Neus(args) => tokio::task::spawn_blocking(move || neus(*args)).await?,
        Command::Bench(BenchCommand::Neus {
            shape,
            fast,
            steps,
            size,
            device,
        }) => {
            tokio::task::spawn_blocking(move || bench_neus(&shape, fast, steps, size, device))
                .await?
        }
        Command::Bench(BenchCommand::QrLoad {
            storage,
            studies,
            per_study,
            seed,
        }) => {
            tokio::task::spawn_blocking(move || bench_qr_load(&storage, studies, per_study, seed))
                .await?
        }
        Command::Bench(BenchCommand::Mc {
            npy,
            level,
            spacing,
            threads,
            reps,
        }) => {
            tokio::task::spawn_blocking(move || bench_mc(&npy, level, &spacing, &threads, reps))
                .await?
        }
    }
}

/// `m3dnode serve`: the node until SIGTERM or SIGINT (or until it fails), then its orderly
/// stop.
async fn serve(cfg: Config, role: Role) -> Result<()> {
    let mut node = crate::node::start_as(cfg, role).await?;
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let (store, listening) = (node.store.clone(), node.scp_listening.clone());
        node.spawn_task("systemd watchdog", move |stop| {
            watchdog(store, listening, interval, stop)
        });
    }
    // Machine-readable lines on stdout for scripts and tests that bind port 0; the DICOM
    // listener's comes last, once everything is up.
    if let Some(http) = node.http_addr() {
        println!("m3dnode http on {http}");
    }
    if let Some(tls) = node.tls_addr() {
        println!("m3dnode tls listening on {tls}");
    }
    match role {
        Role::Serve { .. } => println!("m3dnode listening on {}", node.local_addr()),
        Role::Worker => println!("m3dnode worker running"),
    }
    // systemd `Type=notify`: started means accepting associations. Outside systemd
    // (no NOTIFY_SOCKET) these do nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let mut hangups = Hangups::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = node.wait() => break,
            _ = hangups.next() => match node.reload_tls() {
                Ok(true) => info!("SIGHUP: TLS certificate, key and CA files reloaded"),
                Ok(false) => info!("SIGHUP: no [tls] configured; nothing to reload"),
                Err(e) => warn!("SIGHUP: TLS files not reloaded, the previous ones stay in use: {e}"),
            },
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    node.shutdown().await?;
    Ok(())
}

/// Pings systemd's watchdog (`WatchdogSec=`) at half its interval while the node is alive:
/// the index answers within the interval and the DICOM listener accepts. A hung index or a
/// dead listener stops the pings and systemd restarts the service. A full disk does not
/// (that is `/health/ready`'s business: restarting would not free space).
async fn watchdog(
    store: std::sync::Arc<crate::store::Store>,
    listening: std::sync::Arc<std::sync::atomic::AtomicBool>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let period = interval / 2;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let store = store.clone();
        let ping = tokio::time::timeout(
            period,
            tokio::task::spawn_blocking(move || store.index().ping()),
        )
        .await;
        let alive = listening.load(std::sync::atomic::Ordering::SeqCst);
        match ping {
            Ok(Ok(Ok(()))) if alive => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Ok(Ok(Ok(()))) => warn!("systemd watchdog not pinged: the DICOM listener is down"),
            Ok(Ok(Err(e))) => warn!("systemd watchdog not pinged: the index fails: {e}"),
            Ok(Err(_)) => warn!("systemd watchdog not pinged: the index check panicked"),
            Err(_) => warn!(
                seconds = period.as_secs_f64(),
                "systemd watchdog not pinged: the index did not answer in time"
            ),
        }
    }
}

/// Whom `m3dnode echo` calls and how: `AE@host:port` as given, or a `[[peers]]` entry of
/// `config` by AE title, with the node's AE title and, for a `tls = true` peer, its TLS
/// identity.
fn echo_target(to: &str, config: Option<&Path>) -> Result<(AeAddress, ScuOptions)> {
    let Some(path) = config else {
        let to: AeAddress = to.parse()?;
        return Ok((to, ScuOptions::default()));
    };
    let cfg = Config::load(Some(path), None, &Overrides::default())?;
    let mut opts = ScuOptions {
        calling_ae: cfg.node.ae_title.clone(),
        ..Default::default()
    };
    let to = match cfg.peer(to) {
        Some(peer) => AeAddress {
            ae_title: peer.ae_title.clone(),
            address: peer.address.clone(),
            tls: peer.tls,
        },
        None if to.contains('@') => to.parse()?,
        None => anyhow::bail!(
            "`{to}` is neither AE@host:port nor the AE title of a [[peers]] entry in {}",
            path.display()
        ),
    };
    if to.tls {
        let tls = crate::net::tls::Tls::load(&cfg.tls)?;
        opts.tls = Some(tls.client_config());
    }
    Ok((to, opts))
}

/// SIGHUP, which reloads the TLS files (systemd's `ExecReload`). Once it is watched, a
/// hangup no longer ends the process, as it would by default.
struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    fn new() -> Hangups {
        #[cfg(unix)]
        {
            let signal =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            Hangups(signal)
        }
        #[cfg(not(unix))]
        Hangups()
    }

    /// The next SIGHUP (never, where there are none).
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.0
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received"),
                    _ = int.recv() => info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn send(
    paths: Vec<PathBuf>,
    to: AeAddress,
    calling_ae: String,
    timeout: u64,
) -> Result<ExitCode> {
    let mut files = Vec::new();
    let mut failed = 0usize;
    for path in collect_files(&paths)? {
        match OutgoingFile::open(&path) {
            Ok(f) => files.push(f),
            Err(e) => {
                println!("FAILED {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    let opts = ScuOptions {
        calling_ae,
        timeout: Duration::from_secs(timeout),
        ..Default::default()
    };
    let mut sent = 0usize;
    if !files.is_empty() {
        let outcomes = match scu::send_files(&files, &to, &opts).await {
            Ok(o) => o,
            Err(e) => return Ok(network_failure(&e)),
        };
        for outcome in outcomes {
            match (&outcome.result, outcome.is_success()) {
                (Ok(code), true) => {
                    sent += 1;
                    println!("OK {} (status {code:#06X})", outcome.path.display());
                }
                (Ok(code), false) => {
                    failed += 1;
                    println!(
                        "FAILED {} (status {code:#06X}{})",
                        outcome.path.display(),
                        outcome
                            .comment
                            .as_deref()
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default()
                    );
                }
                (Err(e), _) => {
                    failed += 1;
                    println!("FAILED {}: {e}", outcome.path.display());
                }
            }
        }
    }
    println!("{sent} sent, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Exit codes of the network commands (`echo`, `send`, `find`, `move`, `get`) beyond 0, 1 and
/// 2, so that a script can tell a peer that is down from one that answered "no".
mod qr_exit {
    /// The association could not be established (unreachable, rejected, nothing accepted).
    pub const ASSOCIATION: u8 = 3;
    /// The peer did not answer within `--timeout`.
    pub const TIMEOUT: u8 = 4;
    /// The association broke or the peer sent something malformed.
    pub const PROTOCOL: u8 = 5;
    /// Cancelled with Ctrl-C (128 + SIGINT, as shells report it).
    pub const CANCELLED: u8 = 130;
}

/// The exit code and message of a failed Q/R operation.
fn qr_failure(e: &QrError) -> ExitCode {
    let message = match e {
        QrError::Associate(e) => e.full_message(),
        other => other.to_string(),
    };
    eprintln!("m3dnode: {message}");
    ExitCode::from(match e {
        _ if e.is_timeout() => qr_exit::TIMEOUT,
        QrError::Associate(_) | QrError::NotAccepted { .. } => qr_exit::ASSOCIATION,
        QrError::Protocol { .. } => qr_exit::PROTOCOL,
        QrError::Cancelled { .. } => qr_exit::CANCELLED,
        QrError::Status { .. }
        | QrError::Key { .. }
        | QrError::Encode(_)
        | QrError::Output { .. }
        | QrError::Timeout { .. } => 1,
    })
}

/// A cancel signal that fires on the first Ctrl-C.
fn cancel_on_ctrl_c() -> qr_scu::Cancel {
    let (tx, cancel) = qr_scu::Cancel::channel();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("m3dnode: cancelling (C-CANCEL sent)");
            let _ = tx.send(true);
        }
    });
    cancel
}

/// A match as one line: tab-separated `Keyword=value` (tabs and line breaks inside values
/// escaped), or one JSON object.
fn match_line(obj: &dicom_object::InMemDicomObject, json: bool) -> String {
    if json {
        let map: serde_json::Map<String, serde_json::Value> = obj
            .iter()
            .map(|e| {
                (
                    qr_scu::keyword(e.tag()),
                    serde_json::Value::String(qr_scu::value_text(e)),
                )
            })
            .collect();
        return serde_json::Value::Object(map).to_string();
    }
    obj.iter()
        .map(|e| {
            let v: String = qr_scu::value_text(e)
                .chars()
                .flat_map(|c| {
                    if c.is_control() {
                        c.escape_default().collect::<Vec<_>>()
                    } else {
                        vec![c]
                    }
                })
                .collect();
            format!("{}={v}", qr_scu::keyword(e.tag()))
        })
        .collect::<Vec<_>>()
        .join("\t")
}

async fn find(args: FindArgs) -> Result<ExitCode> {
    use std::io::Write;
    let qr = &args.qr;
    let mut assoc = match QrAssociation::connect(
        &qr.peer,
        &qr.options(),
        &[qr.model()],
        &[qr_scu::Service::Find],
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return Ok(qr_failure(&e)),
    };
    let mut cancel = cancel_on_ctrl_c();
    let json = args.json;
    // A closed stdout (`| head`) cancels the query instead of panicking.
    let result = assoc
        .find_with(qr.model(), &qr.identifier(), &mut cancel, &mut |m| {
            writeln!(std::io::stdout(), "{}", match_line(&m, json)).is_ok()
        })
        .await;
    assoc.release().await;
    match result {
        Ok(outcome) if outcome.cancelled => {
            eprintln!("m3dnode: cancelled after {} matches", outcome.matches);
            Ok(ExitCode::from(qr_exit::CANCELLED))
        }
        Ok(outcome) => {
            eprintln!("{} matches", outcome.matches);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(qr_failure(&e)),
    }
}

enum Retrieve {
    Move(String),
    Get(PathBuf),
}

/// What a C-MOVE/C-GET status means (PS3.4 C.4.2.1.5, C.4.3.1.4).
fn retrieve_status_meaning(code: u16) -> &'static str {
    match code {
        0x0000 => "success",
        0xFE00 => "cancelled",
        0xB000 => "warning: some sub-operations failed",
        0xA701 | 0xA702 => "refused: out of resources",
        0xA801 => "refused: move destination unknown",
        0xA900 => "identifier does not match SOP class",
        0x0122 => "SOP class not supported",
        0x0124 => "not authorized",
        c if c & 0xF000 == 0xC000 => "unable to process",
        _ => "failure",
    }
}

async fn retrieve(qr: QrArgs, what: Retrieve) -> Result<ExitCode> {
    if let Retrieve::Move(dest) = &what {
        anyhow::ensure!(
            crate::config::check_ae_title(dest).is_ok(),
            "`{dest}` is not an AE title"
        );
    }
    let service = match what {
        Retrieve::Move(_) => qr_scu::Service::Move,
        Retrieve::Get(_) => qr_scu::Service::Get,
    };
    let mut assoc =
        match QrAssociation::connect(&qr.peer, &qr.options(), &[qr.model()], &[service]).await {
            Ok(a) => a,
            Err(e) => return Ok(qr_failure(&e)),
        };
    let mut cancel = cancel_on_ctrl_c();
    let ident = qr.identifier();
    let result = match &what {
        Retrieve::Move(dest) => assoc.move_to(qr.model(), &ident, dest, &mut cancel).await,
        Retrieve::Get(dir) => assoc.get(qr.model(), &ident, dir, &mut cancel).await,
    };
    assoc.release().await;
    let o = match result {
        Ok(o) => o,
        Err(e) => return Ok(qr_failure(&e)),
    };
    for path in &o.stored {
        println!("OK {}", path.display());
    }
    // The peer chose these UIDs: one that holds a line break must not forge a line.
    for (uid, why) in &o.refused {
        println!("REFUSED {}: {why}", crate::net::Printable(uid));
    }
    for uid in &o.failed_uids {
        println!("FAILED {}", crate::net::Printable(uid));
    }
    println!(
        "{} completed, {} failed, {} warning{} (status {:#06X}, {}{})",
        o.completed,
        o.failed,
        o.warning,
        o.remaining
            .filter(|r| *r > 0)
            .map(|r| format!(", {r} remaining"))
            .unwrap_or_default(),
        o.status,
        retrieve_status_meaning(o.status),
        o.comment
            .as_deref()
            .map(|c| format!(": {}", crate::net::Printable(c)))
            .unwrap_or_default()
    );
    Ok(if o.cancelled {
        ExitCode::from(qr_exit::CANCELLED)
    } else if o.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A peer that could not be reached or refused: the command ran and failed (exit 1, not the
/// usage code 2), with the cause said once.
fn network_failure(e: &scu::ScuError) -> ExitCode {
    use scu::ScuError;
    eprintln!("m3dnode: {}", e.full_message());
    ExitCode::from(match e {
        ScuError::Associate { source, .. }
            if matches!(**source, crate::net::request::RequestError::Timeout(_)) =>
        {
            qr_exit::TIMEOUT
        }
        ScuError::Associate { .. }
        | ScuError::RejectedPermanent { .. }
        | ScuError::NoContext { .. } => qr_exit::ASSOCIATION,
        ScuError::Protocol { .. } => qr_exit::PROTOCOL,
        ScuError::Address(_) => 2,
        ScuError::EchoStatus(_) | ScuError::File { .. } => 1,
    })
}

/// Expands directories recursively, in a stable order.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("reading {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                entries.sort();
                for e in entries {
                    if e.is_dir() {
                        stack.push(e);
                    } else {
                        out.push(e);
                    }
                }
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            anyhow::bail!("{} does not exist", p.display());
        }
    }
    Ok(out)
}

/// `m3dnode recon`: folder -> series -> volume -> surface -> mesh file (+ Encapsulated STL).
/// The series of `dir` (scanned recursively): the one named, or the only one.
fn choose_series(
    dir: &std::path::Path,
    series: Option<&str>,
) -> Result<crate::volume::SeriesFiles> {
    let mut found =
        crate::volume::scan_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(match series {
        Some(uid) => found
            .drain(..)
            .find(|s| s.series_instance_uid == uid)
            .with_context(|| format!("{} holds no series {uid}", dir.display()))?,
        None if found.len() == 1 => found.remove(0),
        None if found.is_empty() => anyhow::bail!(
            "{} holds no DICOM image series (no readable DICOM files with pixel data)",
            dir.display()
        ),
        None => {
            let list: Vec<String> = found
                .iter()
                .map(|s| {
                    format!(
                        "  {} ({}, {} files)",
                        s.series_instance_uid,
                        s.modality,
                        s.files.len()
                    )
                })
                .collect();
            anyhow::bail!(
                "{} holds {} series; choose one with --series UID:\n{}",
                dir.display(),
                found.len(),
                list.join("\n")
            )
        }
    })
}

fn views(args: ViewsArgs, bench: bool) -> Result<ExitCode> {
    use crate::recon::mvdiffusion::{self, KeySlice, Pipeline, RunOptions, Windowing};
    let cfg = Config::load(args.config.as_deref(), None, &Overrides::default())?;
    let mut ort = cfg.onnxruntime.settings();
    if let Some(lib) = args.ort_library {
        ort.library = Some(lib);
    }
    if let Some(device) = args.device {
        ort.device = device;
    }
    let key = KeySlice::parse(&args.key)
        .map_err(anyhow::Error::msg)
        .context("--key")?;
    let windowing = Windowing::parse(&args.window)
        .map_err(anyhow::Error::msg)
        .context("--window")?;
    let chosen = choose_series(&args.dir, args.series.as_deref())?;
    let vol = crate::volume::assemble(&chosen.files, &Default::default())?;
    let started = std::time::Instant::now();
    let pipeline = Pipeline::load(&args.model, &ort)?;
    let load_time = started.elapsed();
    let opts = RunOptions {
        seed: args.seed,
        steps: args.steps,
        guidance_scale: args.guidance,
        key,
        windowing,
        record: args.record,
        ..RunOptions::default()
    };
    let runs = if bench { args.runs.max(2) } else { 1 };
    let mut results = Vec::with_capacity(runs);
    for _ in 0..runs {
        results.push(pipeline.run(&vol, &opts)?);
    }
    let Some(last) = results.last() else {
        anyhow::bail!("no run");
    };
    if let Some(dir) = &args.save_views {
        mvdiffusion::save_views(last, dir)?;
    }
    let s = last.stats;
    let provider = s.provider.map_or("?".to_string(), |p| p.to_string());
    println!(
        "{}: key slice {}, {} steps, UNet batch {}, on {provider}; {:.3} s",
        pipeline.manifest().name,
        last.condition.slice,
        s.steps,
        s.batch,
        s.total.as_secs_f64()
    );
    if bench {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let warm = &results[1..];
        let mean = |f: &dyn Fn(&mvdiffusion::RunStats) -> f64| {
            warm.iter().map(|r| f(&r.stats)).sum::<f64>() / warm.len() as f64
        };
        println!("load (manifest, sha256, sessions): {:.1} ms", ms(load_time));
        println!("first run: {:.1} ms", ms(results[0].stats.total));
        println!(
            "later runs ({}): whole run {:.1} ms, UNet in ONNX Runtime {:.1} ms ({:.3} ms/step)",
            warm.len(),
            mean(&|s| ms(s.total)),
            mean(&|s| ms(s.unet)),
            mean(&|s| ms(s.unet) / s.steps as f64)
        );
        println!(
            "pipeline overhead outside ONNX Runtime per denoising step: {:.3} ms (target < 1 ms)",
            mean(&|s| ms(s.overhead_per_step()))
        );
        println!("peak RSS: {:.1} MiB", peak_rss_mib());
    }
    Ok(ExitCode::SUCCESS)
}

/// Peak resident set size of this process (getrusage), MiB.
fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}

/// A usage error of an offline command (exit 2); its other errors are failures (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn recon(args: ReconArgs) -> Result<ExitCode> {
    use crate::recon::iso::{self, Stage};
    use crate::route::{RuleConfig, StructureConfig};
    let started = std::time::Instant::now();
    if args.pipeline != crate::route::Pipeline::Iso {
        return Err(Usage(
            "--pipeline mvdiffusion: offline, only the iso pipeline is available (use `m3dnode views` and `m3dnode neus`)".into(),
        )
        .into());
    }
    let to_dir = args.preset.len() > 1
        || !args.format.is_empty()
        || args.output.is_dir()
        || args.output.as_os_str().to_string_lossy().ends_with('/');
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !to_dir && !matches!(ext.as_str(), "stl" | "ply" | "obj") {
        return Err(Usage(format!(
            "-o {}: unknown mesh format `.{ext}` (use .stl, .ply or .obj, or a directory ending in /)",
            args.output.display()
        ))
        .into());
    }
    if to_dir && args.dicom.is_some() {
        return Err(Usage(
            "--dicom names one object; with a directory output use --format stl".into(),
        )
        .into());
    }
    let keep = if args.all_components {
        Some(crate::recon::iso::Keep::All)
    } else {
        args.keep
    };
    let rule = RuleConfig {
        smooth_sigma_mm: args.smooth,
        structures: args
            .preset
            .iter()
            .map(|&preset| StructureConfig {
                preset,
                label: None,
                color: None,
                opacity: None,
                keep,
                min_size_mm3: args.min_size_mm3,
            })
            .collect(),
        ..Default::default()
    };
    let mut structures = crate::route::compile_structures(&rule, crate::recon::iso::Preset::CtBone)
        .map_err(|(key, message)| Usage(format!("--{key}: {message}")))?;
    for s in &mut structures {
        if args.no_taubin {
            s.iso.taubin = None;
        }
        if args.no_simplify {
            s.iso.simplify = None;
        }
    }
    let assemble = crate::volume::AssembleOptions {
        gaps: args.gaps,
        mixed: args.mixed,
        tilt: args.tilt,
        ..Default::default()
    };
    let progress = Progress::new();
    progress.stage("scanning");
    let chosen = choose_series(&args.dir, args.series.as_deref())?;
    progress.stage("assembling volume");
    let vol = crate::volume::assemble(&chosen.files, &assemble)?;
    for w in &vol.warnings {
        progress.println(&format!("warning: {w}"));
    }
    let opts: Vec<_> = structures.iter().map(|s| s.iso.clone()).collect();
    let results = iso::reconstruct_all(&vol, &opts, &mut |_, stage| {
        progress.stage(match stage {
            Stage::Segment => "segmenting",
            Stage::Surface => "marching cubes",
            Stage::Cleanup => "cleaning up",
            Stage::Smooth => "smoothing",
            Stage::Simplify => "simplifying",
        })
    })?;
    progress.stage("writing");
    if to_dir {
        write_recon_dir(&args, &vol, &structures, &results)?;
    } else if let Some(result) = results.first() {
        let stl = crate::mesh::write_stl_binary(&result.mesh, &result.description);
        let bytes = match ext.as_str() {
            "stl" if args.ascii => {
                crate::mesh::write_stl_ascii(&result.mesh, "m3dnode").into_bytes()
            }
            "ply" => crate::mesh::write_ply(&result.mesh),
            "obj" => crate::mesh::write_obj(&result.mesh).into_bytes(),
            _ => stl.clone(),
        };
        std::fs::write(&args.output, bytes)
            .with_context(|| format!("writing {}", args.output.display()))?;
        if let Some(path) = &args.dicom {
            let obj = crate::encap::from_reconstruction(
                &vol,
                &result.description,
                &result.metrics,
                &stl,
                &crate::encap::ResultIds::default(),
            )?;
            obj.write_to_file(path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    for r in &results {
        let m = &r.metrics;
        println!(
            "{}: {} triangles, {} vertices, volume {:.0} mm3, area {:.0} mm2, watertight {}, manifold {}, {:.2} s",
            r.description,
            m.triangles,
            m.vertices,
            m.volume_mm3,
            m.area_mm2,
            if m.watertight { "yes" } else { "no" },
            if m.manifold { "yes" } else { "no" },
            seconds
        );
        if !r.dropped.is_empty() {
            println!(
                "  keep {}: dropped {} piece(s): {}",
                r.keep,
                r.dropped.len(),
                crate::series::jobs::dropped_text(&r.dropped)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `recon -o DIR/`: a mesh file per structure and the DICOM objects of each `--format`.
fn write_recon_dir(
    args: &ReconArgs,
    vol: &crate::volume::Volume,
    structures: &[crate::route::Structure],
    results: &[crate::recon::iso::IsoResult],
) -> Result<()> {
    use crate::encap::{Format, ObjectKind, StructureMesh};
    let dir = &args.output;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names: Vec<String> = structures.iter().map(|s| file_stem(&s.label)).collect();
    for (name, r) in names.iter().zip(results) {
        let path = dir.join(format!("{name}.stl"));
        std::fs::write(
            &path,
            crate::mesh::write_stl_binary(&r.mesh, &r.description),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    let formats = if args.format.is_empty() {
        vec![Format::Stl]
    } else {
        args.format.clone()
    };
    let algorithms: Vec<String> = results
        .iter()
        .map(|r| format!("m3dnode iso {}", r.description))
        .collect();
    let meshes: Vec<StructureMesh<'_>> = structures
        .iter()
        .zip(results)
        .zip(&algorithms)
        .map(|((s, r), algorithm)| StructureMesh {
            label: &s.label,
            description: &r.description,
            colour: s.colour,
            opacity: s.opacity,
            mesh: &r.mesh,
            metrics: &r.metrics,
            comment: crate::series::jobs::iso_comment(r),
            algorithm,
        })
        .collect();
    let built =
        crate::encap::build_results(vol, &meshes, &formats, &crate::encap::ResultIds::default())?;
    for b in built {
        let file = match (b.kind, b.structure.and_then(|i| names.get(i))) {
            (ObjectKind::SurfaceSeg, _) | (_, None) => "surface-seg.dcm".to_string(),
            (ObjectKind::Stl, Some(n)) => format!("stl-{n}.dcm"),
            (ObjectKind::Obj, Some(n)) => format!("obj-{n}.dcm"),
            (ObjectKind::Mtl, Some(n)) => format!("mtl-{n}.dcm"),
        };
        let path = dir.join(file);
        b.object
            .write_to_file(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A structure label as a file name: lower case, letters and digits, `-` for the rest.
fn file_stem(label: &str) -> String {
    let stem: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let stem = stem.trim_matches('-').to_string();
    if stem.is_empty() {
        "surface".into()
    } else {
        stem
    }
}

/// A spinner on a terminal; silent otherwise (scripts and tests read stdout only).
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(Some(bar))
    }

    fn stage(&self, what: &'static str) {
        if let Some(bar) = &self.0 {
            bar.set_message(what);
        }
    }

    fn println(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// A volume read from a .npy file.
enum NpyVolume {
    I16(Vec<i16>),
    U16(Vec<u16>),
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// Reads a 3-D little-endian C-order .npy file; returns the data and its (z, y, x) shape.
fn read_npy(path: &std::path::Path) -> Result<(NpyVolume, [usize; 3])> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() > 10 && &bytes[..6] == b"\x93NUMPY",
        "{} is not a .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .context("truncated .npy header")?,
    )?;
    anyhow::ensure!(
        header.contains("'fortran_order': False"),
        "only C-order .npy volumes are supported"
    );
    let descr = header
        .split("'descr':")
        .nth(1)
        .and_then(|r| r.split('\'').nth(1))
        .context("no dtype in .npy header")?;
    let shape: Vec<usize> = header
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split('(').nth(1))
        .and_then(|r| r.split(')').next())
        .context("no shape in .npy header")?
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        shape.len() == 3,
        "expected a 3-D volume, got shape {shape:?}"
    );
    let data = &bytes[start + header_len..];
    let n = shape.iter().product::<usize>();
    let vol = match descr {
        "<i2" => NpyVolume::I16(
            data.chunks_exact(2)
                .take(n)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        "<u2" => NpyVolume::U16(
            data.chunks_exact(2)
                .take(n)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        "|u1" => NpyVolume::U8(data.iter().take(n).copied().collect()),
        "<f4" => NpyVolume::F32(
            data.chunks_exact(4)
                .take(n)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        other => anyhow::bail!("unsupported .npy dtype {other}"),
    };
    Ok((vol, [shape[0], shape[1], shape[2]]))
}

/// `m3dnode bench mc`: median wall time of marching cubes per thread count.
fn bench_mc(
    npy: &std::path::Path,
    level: f32,
    spacing: &str,
    threads: &str,
    reps: usize,
) -> Result<ExitCode> {
    let (vol, [nz, ny, nx]) = read_npy(npy)?;
    let sp: Vec<f64> = spacing
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(sp.len() == 3, "--spacing takes z,y,x");
    let affine = [
        [sp[2], 0.0, 0.0, 0.0],
        [0.0, sp[1], 0.0, 0.0],
        [0.0, 0.0, sp[0], 0.0],
    ];
    let dims = [nx, ny, nz];
    let voxels = (nx * ny * nz) as f64;
    for t in threads.split(',') {
        let t: usize = t.trim().parse()?;
        // One pool per thread count, built outside the timed region.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
        let opts = crate::mesh::McOptions { threads: None };
        let mut times = Vec::new();
        let mut tris = 0;
        for _ in 0..reps.max(1) {
            let start = std::time::Instant::now();
            let mesh = pool.install(|| match &vol {
                NpyVolume::I16(d) => crate::mesh::marching_cubes(d, dims, level, &affine, &opts),
                NpyVolume::U16(d) => crate::mesh::marching_cubes(d, dims, level, &affine, &opts),
                NpyVolume::U8(d) => crate::mesh::marching_cubes(d, dims, level, &affine, &opts),
                NpyVolume::F32(d) => crate::mesh::marching_cubes(d, dims, level, &affine, &opts),
            })?;
            times.push(start.elapsed().as_secs_f64());
            tris = mesh.triangle_count();
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "m3dnode-mc threads={t} wall median {median:.4} s [{:.4}-{:.4}] {:.0} Mvoxel/s triangles {tris}",
            times[0],
            times[times.len() - 1],
            voxels / median / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `m3dnode bench qr-load`: fills `<storage>/index.sqlite` with the benchmark's data set.
/// The index is opened (created, migrated) by [`crate::db::Db::open`] under the storage lock,
/// as `serve` opens it, so that `serve` takes it as its own afterwards.
fn bench_qr_load(
    storage: &std::path::Path,
    studies: u64,
    per_study: u64,
    seed: u64,
) -> Result<ExitCode> {
    std::fs::create_dir_all(storage).with_context(|| format!("creating {}", storage.display()))?;
    let _lock = crate::store::lock_root(storage)?;
    let path = storage.join("index.sqlite");
    let db = crate::db::Db::open(&path)?;
    let held: i64 = db.with(|c| c.query_row("SELECT COUNT(*) FROM studies", [], |r| r.get(0)))?;
    anyhow::ensure!(
        held == 0,
        "{} already holds {held} studies; qr-load fills an empty storage (remove it, or give another --storage)",
        path.display()
    );
    let start = std::time::Instant::now();
    let filled = db.with(|c| crate::query::synthetic::fill(c, studies, per_study, seed))?;
    let secs = start.elapsed().as_secs_f64();
    // Everything into the main file, so that its size is the index's.
    db.with(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))?;
    drop(db);
    let size: u64 = ["index.sqlite", "index.sqlite-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(storage.join(f)).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "qr-load: {} studies, {} patients, {} series, {} instances (seed {seed}) in {secs:.1} s \
         ({:.0} instances/s); index {:.1} MB",
        filled.studies,
        filled.patients,
        filled.series,
        filled.instances,
        filled.instances as f64 / secs.max(1e-9),
        size as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

/// Opens the index of a (possibly running) node without touching its files.
fn open_index(
    config: Option<PathBuf>,
    storage: Option<PathBuf>,
) -> Result<(Config, crate::store::Index)> {
    let cfg = Config::load(
        config.as_deref(),
        None,
        &Overrides {
            storage,
            ..Default::default()
        },
    )?;
    if cfg.index.is_shared() {
        let name = format!("m3dnode/{}-cli", cfg.index.instance_name());
        let index = crate::store::Index::open_postgres_existing(&cfg.index.url, &name, 1)?;
        return Ok((cfg, index));
    }
    let path = cfg.node.storage.join("index.sqlite");
    anyhow::ensure!(
        path.exists(),
        "no index at {} (node.storage)",
        path.display()
    );
    let index = crate::store::Index::open_existing(&path)?;
    Ok((cfg, index))
}

fn print_jobs(_cfg: &Config, index: &crate::store::Index, limit: usize) -> Result<()> {
    let fmt_time = |t: Option<f64>| {
        t.map(|t| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs_f64(t))
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
    };
    println!("JOBS (newest first)");
    println!(
        "{:>5}  {:<8} {:<22} {:>7}  {:<20}  series / result or error",
        "id", "state", "started", "seconds", "rule"
    );
    for j in index.list_jobs(limit)? {
        let secs = match (j.started_at, j.finished_at) {
            (Some(s), Some(f)) => format!("{:.1}", f - s),
            _ => "-".into(),
        };
        println!(
            "{:>5}  {:<8} {:<22} {:>7}  {:<20}  {}\n{:>48}{}",
            j.id,
            j.state,
            fmt_time(j.started_at),
            secs,
            j.rule,
            j.series_instance_uid,
            "",
            j.error.or(j.summary).unwrap_or_default()
        );
        if let Some(owner) = &j.lease_owner {
            println!("{:>48}run {} by {owner}", "", j.attempts);
        }
    }
    let processes = index.list_processes()?;
    if !processes.is_empty() {
        println!("\nPROCESSES (sharing this index)");
        println!("{:<40} {:<9} {:<22} last seen", "owner", "role", "started");
        for p in processes {
            println!(
                "{:<40} {:<9} {:<22} {}",
                p.owner,
                p.role,
                fmt_time(Some(p.started_at)),
                fmt_time(Some(p.seen_at))
            );
        }
    }
    println!("\nDELIVERIES (newest first)");
    println!(
        "{:>5}  {:<8} {:>8}  {:<16} {:<22} last error",
        "id", "state", "attempts", "destination", "sent"
    );
    for o in index.list_deliveries(limit)? {
        // An open unconfirmed attempt: the destination may hold it; it is verified first.
        let unconfirmed = if o.unconfirmed > 0 && o.state != crate::db::DeliveryState::Sent {
            format!("[{} unconfirmed] ", o.unconfirmed)
        } else {
            String::new()
        };
        println!(
            "{:>5}  {:<8} {:>8}  {:<16} {:<22} {unconfirmed}{}",
            o.id,
            o.state,
            o.attempts,
            o.destination,
            fmt_time(o.sent_at),
            o.last_error.unwrap_or_default()
        );
    }
    print_commitments(index, limit, &fmt_time)?;
    print_mpps(index, limit, &fmt_time)?;
    Ok(())
}

/// Storage Commitment transactions: the open ones first, then the most recent others.
fn print_commitments(
    index: &crate::store::Index,
    limit: usize,
    fmt_time: &dyn Fn(Option<f64>) -> String,
) -> Result<()> {
    println!("\nCOMMITMENTS (open first, then newest)");
    println!(
        "{:<13} {:<16} {:>5} {:>6} {:>5} {:>8}  {:<22} {:<22} transaction / last error",
        "state", "requester", "event", "items", "fail", "attempts", "requested", "reported"
    );
    for c in index.list_commitments(limit)? {
        println!(
            "{:<13} {:<16} {:>5} {:>6} {:>5} {:>8}  {:<22} {:<22} {}{}",
            c.state,
            c.calling_ae,
            c.event_type.map_or("-".into(), |e| e.to_string()),
            c.items,
            c.failed,
            c.attempts,
            fmt_time(Some(c.requested_at)),
            fmt_time(c.reported_at),
            c.transaction_uid,
            c.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// The MPPS section of `m3dnode jobs`: each step's status and how many of the series and
/// instances it lists are stored (a COMPLETED step with every series complete has had its
/// jobs queued without quiet time).
fn print_mpps(
    index: &crate::store::Index,
    limit: usize,
    fmt_time: &dyn Fn(Option<f64>) -> String,
) -> Result<()> {
    let steps = index.list_mpps(limit)?;
    if steps.is_empty() {
        return Ok(());
    }
    println!("\nMPPS STEPS (newest first)");
    println!(
        "{:<13} {:<22} {:<16} {:>15} {:>17}  step",
        "status", "updated", "from", "series complete", "instances stored"
    );
    for m in steps {
        println!(
            "{:<13} {:<22} {:<16} {:>15} {:>17}  {}",
            m.step.status,
            fmt_time(Some(m.step.updated_at)),
            m.step.calling_ae,
            format!("{}/{}", m.series_complete, m.series_listed),
            format!("{}/{}", m.instances_stored, m.instances_listed),
            m.step.sop_instance_uid
        );
    }
    Ok(())
}

fn neus_settings(fast: bool, steps: Option<usize>) -> crate::recon::neus::NeusSettings {
    let mut s = if fast {
        crate::recon::neus::NeusSettings::fast()
    } else {
        crate::recon::neus::NeusSettings::default()
    };
    if let Some(n) = steps {
        s.steps = n;
    }
    s
}

/// Reads one RGBA (or RGB, then all foreground) 8-bit PNG as normals and mask.
fn read_view_png(path: &std::path::Path) -> Result<(usize, usize, Vec<f32>, Vec<f32>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .with_context(|| format!("reading {}", path.display()))?;
    let size = reader
        .output_buffer_size()
        .with_context(|| format!("{}: image too large", path.display()))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .with_context(|| format!("decoding {}", path.display()))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => anyhow::bail!(
            "{}: {other:?} PNG; RGB or RGBA normal maps are needed",
            path.display()
        ),
    };
    let mut normals = Vec::with_capacity(w * h * 3);
    let mut mask = Vec::with_capacity(w * h);
    for px in buf[..w * h * channels].chunks_exact(channels) {
        normals.extend(px[..3].iter().map(|&v| f32::from(v) / 255.0));
        mask.push(if channels == 4 {
            f32::from(px[3]) / 255.0
        } else {
            1.0
        });
    }
    Ok((w, h, normals, mask))
}

/// `m3dnode neus`: six normal-map PNGs -> NeuS -> STL.
fn neus(args: NeusArgs) -> Result<ExitCode> {
    use crate::recon::neus::{self, Placement, View, ViewKind, ViewSet};
    let mut views = Vec::new();
    let mut size = None;
    for kind in ViewKind::ALL {
        let path = args.views.join(format!("normals_000_{}.png", kind.name()));
        let (w, h, normals, mask) = read_view_png(&path)?;
        anyhow::ensure!(
            size.is_none_or(|s| s == (w, h)),
            "{}: all six views must have the same size",
            path.display()
        );
        size = Some((w, h));
        views.push(View {
            kind,
            normals,
            mask,
            color: None,
        });
    }
    let (width, height) = size.unwrap_or((0, 0));
    let set = ViewSet {
        width,
        height,
        views,
    };
    let mut settings = neus_settings(args.fast, args.steps);
    settings.device = args.device;
    let r = neus::reconstruct(&set, &settings, &Placement::scaled(args.mm_per_unit))?;
    let m = crate::mesh::metrics(&r.mesh);
    std::fs::write(
        &args.output,
        crate::mesh::write_stl_binary(&r.mesh, "m3dnode NeuS"),
    )
    .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "{}: {} triangles, watertight {}, {} steps on {:?} in {:.1} s (+{:.1} s marching cubes)",
        args.output.display(),
        m.triangles,
        m.watertight,
        r.report.steps,
        r.report.device,
        r.report.fit_seconds,
        r.report.extract_seconds
    );
    Ok(ExitCode::SUCCESS)
}

/// `m3dnode bench neus`: timings and accuracy on an analytic shape.
fn bench_neus(
    shape: &str,
    fast: bool,
    steps: Option<usize>,
    size: usize,
    device: crate::recon::neus::Device,
) -> Result<ExitCode> {
    use crate::recon::neus::synthetic::{Shape, render_views};
    use crate::recon::neus::{self, Placement};
    let shape = match shape {
        "sphere" => Shape::Sphere {
            centre: [0.0; 3],
            radius: 0.5,
        },
        "ellipsoid" => Shape::Ellipsoid {
            centre: [0.15, -0.1, 0.1],
            radii: [0.55, 0.35, 0.3],
        },
        "dimple" => Shape::DimpledBox {
            half: [0.5; 3],
            rounding: 0.08,
            dimple_radius: 0.4,
            dimple_depth: 0.2,
        },
        other => anyhow::bail!("unknown shape `{other}`: sphere, ellipsoid or dimple"),
    };
    let mut settings = neus_settings(fast, steps);
    settings.device = device;
    let mm = 50.0;
    let views = render_views(&shape, size);
    let start = std::time::Instant::now();
    let r = neus::reconstruct(&views, &settings, &Placement::scaled(mm))?;
    let total = start.elapsed().as_secs_f64();
    let truth = shape.reference_mesh(160, mm)?;
    let b = crate::mesh::metrics(&truth);
    let diag = (0..3)
        .map(|i| (b.bbox_max[i] - b.bbox_min[i]).powi(2))
        .sum::<f64>()
        .sqrt();
    let d = crate::mesh::surface_distance(&r.mesh, &truth);
    println!(
        "on {:?}: steps {} rays {} samples {} mc {}: {:.3} s/step, fit {:.1} s, marching cubes {:.1} s, total {:.1} s; mean distance {:.3} % of the diagonal, watertight {}",
        r.report.device,
        settings.steps,
        settings.rays_per_batch,
        settings.samples_per_ray,
        settings.mc_resolution,
        r.report.fit_seconds / settings.steps as f64,
        r.report.fit_seconds,
        r.report.extract_seconds,
        total,
        100.0 * d.mean / diag,
        crate::mesh::metrics(&r.mesh).watertight
    );
    let (rt, tr) = (
        crate::mesh::one_sided_distance(&r.mesh, &truth),
        crate::mesh::one_sided_distance(&truth, &r.mesh),
    );
    println!(
        "result -> truth mean {:.2} max {:.2} mm; truth -> result mean {:.2} max {:.2} mm",
        rt.mean, rt.max, tr.mean, tr.max
    );
    let rb = crate::mesh::metrics(&r.mesh);
    println!(
        "bounding box mm: result {:.1?}..{:.1?}, truth {:.1?}..{:.1?}",
        rb.bbox_min, rb.bbox_max, b.bbox_min, b.bbox_max
    );
    Ok(ExitCode::SUCCESS)
}
