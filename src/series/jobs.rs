//! Reconstruction jobs (the `jobs` table of [`crate::db`], queued -> running -> done | failed)
//! and the bounded pool of worker threads that run them.
//!
//! Workers are OS threads, not async tasks: a reconstruction is seconds of CPU and must not
//! starve the associations on the runtime. A job's result UIDs are fixed when it is queued,
//! so a job re-run after a crash re-makes the same instance instead of a second one, and its
//! outbox rows are written in the same transaction that marks it done.
//!
//! A job must never take the node down for good: a panic fails the job with its message, and
//! a job that kills the process (abort, stack overflow, OOM kill) is not re-queued forever:
//! every start is counted in the `attempts` column *before* the job runs, and at start-up a
//! job left `running` that has used [`MAX_ATTEMPTS`] is failed instead of re-queued.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn};

use crate::db::{JobRow, NewDeliveries, ResultObject};
use crate::encap::{Cielab, Format, ObjectKind, StructureMesh, build_results};
use crate::net::settings::PeerConfig;
use crate::onnx::OrtSettings;
use crate::recon::multiview::MultiviewOptions;
use crate::recon::mvdiffusion::Pipeline;
use crate::recon::neus::NeusConfig;
use crate::route::Rule;
use crate::store::{IndexError, Store};

/// Starts of one job (each counted before it runs) after which a crash at start-up fails it.
pub const MAX_ATTEMPTS: i64 = 3;

/// How often an idle worker of a shared index looks for a job queued by another process.
pub const SHARED_POLL: Duration = Duration::from_millis(200);

/// Stack of the worker threads and of their rayon pool. Generous on purpose: the header walk
/// ([`crate::store::header::check_part10`]) bounds nesting before dicom-object recurses, and
/// this is the second line of defence (the memory is only reserved, not used).
const WORKER_STACK: usize = 64 << 20;

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The OS refused a thread.
    #[error("starting job worker thread {index}: {source}")]
    Thread {
        /// Which worker (or the pool).
        index: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The workers' rayon pool could not be built.
    #[error("starting the job workers' thread pool: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
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

/// What the workers need of the configuration.
#[derive(Debug, Clone, Default)]
pub struct WorkerSettings {
    /// Worker threads (`jobs.workers`).
    pub workers: usize,
    /// Our AE title (`node.ae_title`), the source AE of stored results.
    pub ae_title: String,
    /// `[[peers]]`, for the address of a rule's `reply_to_sender`.
    pub peers: Vec<PeerConfig>,
    /// Give up delivering a result after this many seconds (`delivery.deadline_seconds`).
    pub delivery_deadline_seconds: f64,
    /// ONNX Runtime for the model pipelines (`[onnxruntime]`).
    pub ort: OrtSettings,
    /// The NeuS fit (`[neus]`), before a rule's overrides.
    pub neus: NeusConfig,
}

/// Wakes idle workers when a job is queued, and when the node stops.
pub struct JobQueue {
    generation: Mutex<u64>,
    cv: Condvar,
    shutdown: CancellationToken,
}

impl JobQueue {
    /// A queue whose workers stop, after their current job, once `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Result<Arc<JobQueue>, crate::shutdown::NoRuntime> {
        let queue = Arc::new(JobQueue {
            generation: Mutex::new(0),
            cv: Condvar::new(),
            shutdown,
        });
        let weak = Arc::downgrade(&queue);
        crate::shutdown::wake_on_cancel(&queue.shutdown, move || {
            if let Some(q) = weak.upgrade() {
                q.notify();
            }
        })?;
        Ok(queue)
    }

    /// A job was queued.
    pub fn notify(&self) {
        if let Ok(mut g) = self.generation.lock() {
            *g += 1;
        }
        self.cv.notify_all();
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let Ok(g) = self.generation.lock() else {
            return seen;
        };
        match self
            .cv
            .wait_timeout_while(g, timeout, |g| *g == seen && !self.stopping())
        {
            Ok((g, _)) => *g,
            Err(_) => seen,
        }
    }

    fn current(&self) -> u64 {
        self.generation.lock().map(|g| *g).unwrap_or(0)
    }
}

/// Jobs a crash or kill left running go back to the queue, unless they have been started
/// [`MAX_ATTEMPTS`] times already: a job that crashes the node would otherwise crash it again
/// at every start. Those are failed with the reason. Returns how many were re-queued.
pub fn requeue_interrupted(store: &Store) -> Result<usize, IndexError> {
    let (failed, requeued) = store.index().requeue_interrupted_jobs(MAX_ATTEMPTS)?;
    for f in failed {
        error!(
            job_id = f.id,
            series_instance_uid = %f.series_instance_uid,
            attempts = f.attempts,
            "job failed: the node stopped every time it ran (crash or kill); not retried"
        );
    }
    Ok(requeued)
}

/// What a worker needs.
pub struct Workers {
    /// Configuration.
    pub config: WorkerSettings,
    /// Storage and index.
    pub store: Arc<Store>,
    /// Compiled rules.
    pub rules: Arc<Vec<Rule>>,
    /// Wake-ups.
    pub queue: Arc<JobQueue>,
    /// Wakes the delivery task when a result is ready.
    pub delivery: Arc<tokio::sync::Notify>,
    /// Model pipelines, loaded by the first job that needs each.
    pub models: ModelCache,
}

/// Model directories loaded once (manifest checks, ONNX Runtime, sessions) and kept for the
/// jobs after. ONNX Runtime itself is loaded here, by the first `mvdiffusion` job, never at
/// start-up.
#[derive(Default)]
pub struct ModelCache(Mutex<HashMap<PathBuf, Arc<Pipeline>>>);

impl ModelCache {
    fn get(&self, dir: &Path, ort: &OrtSettings) -> Result<Arc<Pipeline>, String> {
        // Held while loading, so that two workers do not load the same model twice.
        let mut map = self
            .0
            .lock()
            .map_err(|_| "the model cache was poisoned by a panic".to_string())?;
        if let Some(p) = map.get(dir) {
            return Ok(p.clone());
        }
        let pipeline =
            Pipeline::load(dir, ort).map_err(|e| format!("model {}: {e}", dir.display()))?;
        let pipeline = Arc::new(pipeline);
        map.insert(dir.to_path_buf(), pipeline.clone());
        Ok(pipeline)
    }
}

impl Workers {
    /// Starts `jobs.workers` threads, with large stacks, sharing one rayon pool with large
    /// stacks (jobs read headers and decode in parallel). A thread that cannot be started is
    /// an error: a node without its workers would queue jobs that never run.
    pub fn spawn(self: Arc<Self>) -> Result<Vec<std::thread::JoinHandle<()>>, SpawnError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("job-pool-{i}"))
            .stack_size(WORKER_STACK)
            .build()
            .inspect_err(|e| error!(error = %e, "cannot start the job workers' thread pool"))?;
        let pool = Arc::new(pool);
        (0..self.config.workers)
            .map(|index| {
                let w = self.clone();
                let pool = pool.clone();
                std::thread::Builder::new()
                    .name(format!("job-worker-{index}"))
                    .stack_size(WORKER_STACK)
                    .spawn(move || w.work(&pool))
                    .map_err(|source| {
                        error!(worker = index, error = %source, "cannot start a job worker thread");
                        SpawnError::Thread { index, source }
                    })
            })
            .collect()
    }

    fn work(&self, pool: &rayon::ThreadPool) {
        let mut seen = self.queue.current();
        // The queue wakes this process's workers for its own jobs; on a shared index another
        // process's completer queues most of them, so an idle worker asks the index more
        // often (two short statements each time).
        let idle = match self.store.is_shared() {
            true => SHARED_POLL,
            false => Duration::from_secs(1),
        };
        while !self.queue.stopping() {
            match self.claim() {
                Ok(Some(job)) => self.run(job, pool),
                Ok(None) => seen = self.queue.wait(seen, idle),
                Err(e) => {
                    warn!(error = %e, "claiming a job failed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Takes the oldest queued job, marks it running and counts the start (committed before
    /// the job runs, so that a crash during it is counted too).
    fn claim(&self) -> Result<Option<JobRow>, IndexError> {
        // A job whose holder died (lease expired) too often is failed, not taken over.
        for f in self.store.index().expire_dead_jobs(MAX_ATTEMPTS)? {
            error!(
                job_id = f.id,
                series_instance_uid = %f.series_instance_uid,
                attempts = f.attempts,
                "job failed: the node stopped every time it ran (crash or kill); not retried"
            );
        }
        self.store.index().claim_job()
    }

    fn run(&self, job: JobRow, pool: &rayon::ThreadPool) {
        let span = info_span!("job", job_id = job.id, series_instance_uid = %job.series_instance_uid, rule = %job.rule);
        let _g = span.enter();
        let started = Instant::now();
        info!("job started");
        // The job runs on the pool (large stacks, and its parallel loops use the same pool);
        // a panic anywhere in it fails this job instead of killing the worker.
        let outcome = run_caught(pool, || span.in_scope(|| self.execute(&job)));
        crate::metrics::job_finished(self.pipeline(&job), outcome.is_ok(), started.elapsed());
        match outcome {
            Ok(summary) => {
                info!(seconds = format_args!("{:.2}", started.elapsed().as_secs_f64()), %summary, "job done")
            }
            Err(message) => {
                error!(error = %message, "job failed");
                if let Err(e) = self.store.index().fail_job(job.id, job.attempts, &message) {
                    warn!(error = %e, "could not record the job failure");
                }
            }
        }
    }

    /// The `pipeline` label of a job's metrics: its rule's pipeline, as far as the rule is
    /// still configured.
    fn pipeline(&self, job: &JobRow) -> &'static str {
        match self.rules.iter().find(|r| r.name == job.rule) {
            Some(r) if r.mvdiffusion.is_some() => "mvdiffusion",
            Some(_) => "iso",
            None => "unknown",
        }
    }

    /// Runs one job to its end; the error is the message shown in `m3dnode jobs`.
    fn execute(&self, job: &JobRow) -> Result<String, String> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.name == job.rule)
            .ok_or_else(|| format!("rule `{}` is no longer configured", job.rule))?;
        let index = self.store.index();
        let source = index.job_source(job.id).map_err(|e| e.to_string())?;
        let result_series = source.result_series_uid;
        let destinations = rule.destinations_for(&source.calling_ae, &self.config.peers)?;
        let rows = index
            .series(&job.series_instance_uid)
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Err("the series has no stored instances (were they dropped?)".into());
        }
        let paths: Vec<_> = rows
            .iter()
            .map(|r| self.store.root().join(&r.path))
            .collect();
        let vol = crate::volume::assemble(&paths, &rule.assemble)
            .map_err(|e| format!("no usable image stack: {e}"))?;
        let made = self.reconstruct(rule, &vol)?;
        let structures: Vec<StructureMesh<'_>> = made
            .iter()
            .map(|m| StructureMesh {
                label: &m.label,
                description: &m.description,
                colour: m.colour,
                opacity: m.opacity,
                mesh: &m.mesh,
                metrics: &m.metrics,
                comment: m.comment.clone(),
                algorithm: &m.algorithm,
            })
            .collect();
        let formats = formats_to_build(&destinations);
        let ids = crate::encap::ResultIds {
            series_instance_uid: Some(result_series),
            sop_instance_uid: Some(job.result_sop_instance_uid.clone()),
            instance_number: i32::try_from(job.version).unwrap_or(1),
        };
        let built = build_results(&vol, &structures, &formats, &ids)
            .map_err(|e| format!("building the result objects failed: {e}"))?;
        let mut paths = Vec::with_capacity(built.len());
        for b in &built {
            let stored = self
                .store
                .store_object(&b.object, &self.config.ae_title)
                .map_err(|e| format!("storing the result failed: {e}"))?;
            paths.push(
                stored
                    .path
                    .strip_prefix(self.store.root())
                    .unwrap_or(&stored.path)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        let summary = made
            .iter()
            .map(Made::summary)
            .collect::<Vec<_>>()
            .join("; ");
        // Each object goes to the destinations that take its format.
        let routed: Vec<Vec<(String, String)>> = built
            .iter()
            .map(|b| {
                destinations
                    .iter()
                    .filter(|d| d.formats.contains(&b.format))
                    .map(|d| (d.ae_title.clone(), d.address.clone()))
                    .collect()
            })
            .collect();
        let deliveries: Vec<NewDeliveries<'_>> = built
            .iter()
            .zip(&paths)
            .zip(&routed)
            .filter(|(_, to)| !to.is_empty())
            .map(|((b, path), to)| NewDeliveries {
                sop_instance_uid: &b.sop_instance_uid,
                path,
                destinations: to,
                deadline_seconds: self.config.delivery_deadline_seconds,
            })
            .collect();
        let colours: Vec<String> = made.iter().map(|m| m.colour.to_string()).collect();
        let objects: Vec<ResultObject<'_>> = built
            .iter()
            .map(|b| ResultObject {
                sop_instance_uid: &b.sop_instance_uid,
                kind: kind_name(b.kind),
                structure: b.structure,
                label: b
                    .structure
                    .and_then(|i| made.get(i))
                    .map(|m| m.label.as_str()),
                colour: b.structure.and_then(|i| colours.get(i)).map(String::as_str),
                opacity: b.structure.and_then(|i| made.get(i)).map(|m| m.opacity),
            })
            .collect();
        index
            .finish_job(job.id, job.attempts, &summary, &objects, &deliveries)
            .map_err(|e| format!("recording the result failed: {e}"))?;
        self.delivery.notify_one();
        Ok(summary)
    }

    /// The rule's surfaces: each structure of the `iso` pipeline, or the one surface of the
    /// model pipeline.
    fn reconstruct(&self, rule: &Rule, vol: &crate::volume::Volume) -> Result<Vec<Made>, String> {
        match &rule.mvdiffusion {
            None => {
                let opts: Vec<_> = rule.structures.iter().map(|s| s.iso.clone()).collect();
                let results = crate::recon::iso::reconstruct_all(vol, &opts, &mut |_, _| {})
                    .map_err(|e| e.to_string())?;
                Ok(rule
                    .structures
                    .iter()
                    .zip(results)
                    .map(|(s, r)| Made {
                        dropped: r.dropped.len(),
                        comment: iso_comment(&r),
                        algorithm: format!("m3dnode iso {}", r.description),
                        label: s.label.clone(),
                        colour: s.colour,
                        opacity: s.opacity,
                        description: r.description,
                        mesh: r.mesh,
                        metrics: r.metrics,
                    })
                    .collect())
            }
            Some(mv) => {
                let pipeline = self.models.get(&mv.model, &self.config.ort)?;
                let neus = self
                    .config
                    .neus
                    .settings_for(mv.neus_profile, mv.neus_steps);
                let opts = MultiviewOptions {
                    run: mv.run.clone(),
                    neus,
                };
                let r = crate::recon::multiview::reconstruct(vol, &pipeline, &opts)
                    .map_err(|e| e.to_string())?;
                let (label, rgb) = crate::route::preset_look(crate::recon::iso::Preset::Otsu);
                Ok(vec![Made {
                    dropped: 0,
                    comment: crate::encap::metrics_comment(&r.metrics),
                    algorithm: "m3dnode mvdiffusion (six views, NeuS)".into(),
                    label: label.into(),
                    colour: Cielab::from_srgb(rgb),
                    opacity: 1.0,
                    description: r.description,
                    mesh: r.mesh,
                    metrics: r.metrics,
                }])
            }
        }
    }
}

/// One surface a job made, with what describes it.
struct Made {
    label: String,
    colour: Cielab,
    opacity: f32,
    description: String,
    mesh: crate::mesh::Mesh,
    metrics: crate::mesh::MeshMetrics,
    comment: String,
    algorithm: String,
    /// Pieces the keep policy dropped.
    dropped: usize,
}

impl Made {
    fn summary(&self) -> String {
        let m = &self.metrics;
        let mut line = format!(
            "{}: {} triangles, {:.0} mm3, watertight {}",
            self.description,
            m.triangles,
            m.volume_mm3,
            if m.watertight { "yes" } else { "no" }
        );
        if self.dropped > 0 {
            line.push_str(&format!(", {} pieces dropped", self.dropped));
        }
        line
    }
}

/// The formats to build for `destinations`: Encapsulated STL always (the status page and
/// Query/Retrieve serve it), then each other format some destination takes.
fn formats_to_build(destinations: &[crate::route::Destination]) -> Vec<Format> {
    let mut formats = vec![Format::Stl];
    for f in destinations.iter().flat_map(|d| &d.formats) {
        if !formats.contains(f) {
            formats.push(*f);
        }
    }
    formats
}

fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Stl => "stl",
        ObjectKind::Obj => "obj",
        ObjectKind::Mtl => "mtl",
        ObjectKind::SurfaceSeg => "surface-seg",
    }
}

/// The metrics and the pieces the keep policy dropped (volume and centre of each), for the
/// objects' comment.
pub fn iso_comment(r: &crate::recon::iso::IsoResult) -> String {
    let mut out = format!(
        "{} keep={}",
        crate::encap::metrics_comment(&r.metrics),
        r.keep
    );
    if !r.dropped.is_empty() {
        out.push_str(&format!(
            " dropped={}: {}",
            r.dropped.len(),
            dropped_text(&r.dropped)
        ));
    }
    out
}

/// The largest dropped pieces, by volume, as `outside the body 1234 mm3 at (x, y, z)`; a
/// count for the rest (noise can leave hundreds of specks).
pub fn dropped_text(dropped: &[crate::recon::iso::DroppedComponent]) -> String {
    const SHOWN: usize = 5;
    let mut by_volume: Vec<_> = dropped.iter().collect();
    by_volume.sort_by(|a, b| b.volume_mm3.total_cmp(&a.volume_mm3));
    let mut parts: Vec<String> = by_volume
        .iter()
        .take(SHOWN)
        .map(|d| {
            format!(
                "{} {:.0} mm3 at ({:.1}, {:.1}, {:.1})",
                d.reason, d.volume_mm3, d.centre_mm[0], d.centre_mm[1], d.centre_mm[2]
            )
        })
        .collect();
    if dropped.len() > SHOWN {
        parts.push(format!("{} smaller ones", dropped.len() - SHOWN));
    }
    parts.join("; ")
}

/// The message of a panic payload (`panic!` with a literal or a formatted message).
/// Runs a job's body on the workers' pool; a panic anywhere in it (its parallel loops
/// included) becomes the job's error instead of ending the worker thread.
fn run_caught<F>(pool: &rayon::ThreadPool, body: F) -> Result<String, String>
where
    F: FnOnce() -> Result<String, String> + Send,
{
    catch_unwind(AssertUnwindSafe(|| pool.install(body)))
        .unwrap_or_else(|payload| Err(format!("the job panicked: {}", panic_message(&*payload))))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "no message"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_job_fails_with_its_message_and_the_pool_goes_on() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let failed = run_caught(&pool, || {
            // A panic inside one of the job's parallel loops, as a decoder bug would raise.
            use rayon::prelude::*;
            let sum: u32 = (0..64u32)
                .into_par_iter()
                .map(|i| {
                    if i == 40 {
                        panic!("slice {i} is odd")
                    } else {
                        i
                    }
                })
                .sum();
            Ok(format!("{sum}"))
        });
        assert_eq!(failed, Err("the job panicked: slice 40 is odd".to_string()));
        assert_eq!(
            run_caught(&pool, || Ok("next job".into())),
            Ok("next job".into())
        );
    }
}
