//! Several node processes on one index (issue 17, design §4.3): two receivers
//! (`serve --no-workers`, rx1 and rx2, own ports, one AE title) and two workers (`worker`, w1
//! and w2) on one PostgreSQL database and one storage directory (a local temp dir stands in
//! for the shared NFS mount), with `lease_seconds = 3` and `quiet_seconds = 1`, delivering
//! `iso` results to a DCMTK storescp that counts what it stores:
//! - 20 series sent instance by instance, alternately to rx1 and rx2: each processed once,
//!   each result delivered once, `m3dnode jobs` listing the four processes;
//! - `kill -9` of the worker running a job: the other one takes it over after the lease;
//! - `kill -9` of a receiver in the middle of a series: nothing it acknowledged is lost, and
//!   the series completes from the other receiver.
//!
//! And the first scenario on the embedded SQLite index with one `serve`.
//!
//! The PostgreSQL database comes from tests/common/pg.rs: the cluster of
//! `M3DNODE_TEST_PG_URL` (scripts/test starts one), or one this binary starts itself. The tests
//! run one at a time: each keeps up to four node processes, PostgreSQL and storescp busy on
//! the two cores of CI.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `[index] lease_seconds` of every process.
const LEASE_SECONDS: u64 = 3;
/// Series in the first scenario.
const SERIES: usize = 20;
/// Instances of each of its series.
const SLICES: usize = 6;
/// `series.quiet_seconds`: the instances of one series are sent back to back, well within it.
const QUIET: f64 = 1.0;
/// `series.quiet_seconds` when a receiver is killed: from the kill to the first store at the
/// other receiver, which a loaded machine may stretch.
const RECEIVER_KILL_QUIET: f64 = 3.0;
/// How long a scenario may take to settle on the 2-core CI machine.
const SETTLE: Duration = Duration::from_secs(150);

/// A small MR sphere (16 x 16 pixels, `slices` slices 2 mm apart, radius `slices` - 2.5 mm,
/// inside the slab of slices centred on the origin): its `iso` job takes a fraction of a
/// second.
fn small_sphere(dir: &Path, slices: usize) -> Vec<PathBuf> {
    let grid = Grid::axial(16, slices, 2.0);
    let radius = slices as f64 - 2.5;
    let mut files = write_phantom(dir, &grid, &[], |p| {
        (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - radius
    });
    files.sort_by_key(|f| {
        attr(f, dicom_dictionary_std::tags::INSTANCE_NUMBER)
            .parse::<u32>()
            .unwrap()
    });
    files
}

/// A sphere in a 128 x 128 x `slices` series: enough instances to kill a receiver during
/// its association.
fn medium_sphere(dir: &Path, slices: usize) -> Vec<PathBuf> {
    let grid = Grid::axial(128, slices, 1.0);
    let mut files = write_phantom(dir, &grid, &[], |p| {
        (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - slices as f64 / 3.0
    });
    files.sort_by_key(|f| {
        attr(f, dicom_dictionary_std::tags::INSTANCE_NUMBER)
            .parse::<u32>()
            .unwrap()
    });
    files
}

fn sop_uid(path: &Path) -> String {
    attr(path, dicom_dictionary_std::tags::SOP_INSTANCE_UID)
}

/// `m3dnode send` of `files` to the node listening on `port` (AE title M3DNODE, one
/// association): the files whose store was acknowledged (`OK` lines), and whether all were.
fn send(port: u16, files: &[PathBuf]) -> (Vec<PathBuf>, bool, String) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .arg("send")
        .args(files)
        .args(["--to", &format!("M3DNODE@127.0.0.1:{port}")]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acknowledged = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("OK "))
        .map(|l| PathBuf::from(l.split(" (status").next().unwrap_or(l)))
        .collect();
    (acknowledged, out.status.success(), text(&out))
}

/// The config of one process. `index` is `None` for the embedded SQLite index, else the
/// `(url, instance)` of a process on the shared PostgreSQL index.
/// `quiet` is `series.quiet_seconds`.
fn config_toml(
    storage: &Path,
    index: Option<(&str, &str)>,
    quiet: f64,
    dest: &Destination,
) -> String {
    let index = match index {
        Some((url, instance)) => format!(
            "[index]\nurl = \"{url}\"\nlease_seconds = {LEASE_SECONDS}\ninstance = \"{instance}\"\n"
        ),
        None => String::new(),
    };
    format!(
        "[node]\nlisten = \"127.0.0.1:0\"\nstorage = \"{}\"\nmin_free_mb = 1\n\
         {index}\
         [series]\nquiet_seconds = {quiet}\n\
         [jobs]\nworkers = 1\n\
         [delivery]\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.5\ntimeout_seconds = 5\n\
         [http]\nlisten = \"\"\n\
         [[peers]]\nae_title = \"FINDER\"\naddress = \"127.0.0.1:9\"\nmay = [\"find\"]\n\
         {}\
         [[rules]]\nname = \"sphere\"\nmodality = \"MR\"\npreset = \"1000\"\nsend_to = [\"{}\"]\n",
        storage.display(),
        dest.peer_toml(),
        dest.aet
    )
}

/// One job as the index has it.
#[derive(Debug, Clone)]
struct Job {
    series: String,
    state: String,
    attempts: i64,
    version: i64,
    /// `lease_owner` (`<instance>:<pid>:<ms>`): PostgreSQL only.
    owner: Option<String>,
    /// The error or summary: read in failure messages only.
    #[allow(dead_code)]
    error: String,
}

/// One outbox row.
#[derive(Debug, Clone)]
struct Delivery {
    sop: String,
    state: String,
    attempts: i64,
}

/// Where the index is: a SQLite file, or a PostgreSQL database.
enum IndexAt {
    Lite(PathBuf),
    Pg(String),
}

impl IndexAt {
    fn pg(url: &str) -> postgres::Client {
        let cfg = m3dnode::db::pg::config(url, "m3dnode/tests-cluster").unwrap();
        m3dnode::db::pg::connect(&cfg).unwrap()
    }

    fn jobs(&self) -> Vec<Job> {
        match self {
            IndexAt::Lite(path) => m3dnode::store::Index::open(path)
                .unwrap()
                .with(|c| {
                    c.prepare(
                        "SELECT series_instance_uid, state, attempts, version, \
                         COALESCE(error, summary, '') FROM jobs ORDER BY id",
                    )?
                    .query_map([], |r| {
                        Ok(Job {
                            series: r.get(0)?,
                            state: r.get(1)?,
                            attempts: r.get(2)?,
                            version: r.get(3)?,
                            owner: None,
                            error: r.get(4)?,
                        })
                    })?
                    .collect()
                })
                .unwrap(),
            IndexAt::Pg(url) => Self::pg(url)
                .query(
                    "SELECT series_instance_uid, state, attempts, version, lease_owner, \
                     COALESCE(error, summary, '') FROM jobs ORDER BY id",
                    &[],
                )
                .unwrap_or_else(|e| panic!("jobs of {url}: {e}"))
                .iter()
                .map(|r| Job {
                    series: r.get(0),
                    state: r.get(1),
                    attempts: r.get(2),
                    version: r.get(3),
                    owner: r.get(4),
                    error: r.get(5),
                })
                .collect(),
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        let sql = "SELECT sop_instance_uid, state, attempts FROM outbox ORDER BY id";
        match self {
            IndexAt::Lite(path) => m3dnode::store::Index::open(path)
                .unwrap()
                .with(|c| {
                    c.prepare(sql)?
                        .query_map([], |r| {
                            Ok(Delivery {
                                sop: r.get(0)?,
                                state: r.get(1)?,
                                attempts: r.get(2)?,
                            })
                        })?
                        .collect()
                })
                .unwrap(),
            IndexAt::Pg(url) => Self::pg(url)
                .query(sql, &[])
                .unwrap_or_else(|e| panic!("outbox of {url}: {e}"))
                .iter()
                .map(|r| Delivery {
                    sop: r.get(0),
                    state: r.get(1),
                    attempts: r.get(2),
                })
                .collect(),
        }
    }

    /// The stored path (relative to the storage root) of an instance.
    fn instance_path(&self, sop: &str) -> Option<String> {
        match self {
            IndexAt::Lite(path) => m3dnode::store::Index::open(path)
                .unwrap()
                .get(sop)
                .unwrap()
                .map(|row| row.path),
            IndexAt::Pg(url) => Self::pg(url)
                .query_opt(
                    "SELECT path FROM instances WHERE sop_instance_uid = $1",
                    &[&sop],
                )
                .unwrap()
                .map(|r| r.get(0)),
        }
    }

    fn instances_of_series(&self, series: &str) -> i64 {
        match self {
            IndexAt::Lite(path) => m3dnode::store::Index::open(path)
                .unwrap()
                .with(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM instances WHERE series_instance_uid = ?1",
                        [series],
                        |r| r.get(0),
                    )
                })
                .unwrap(),
            IndexAt::Pg(url) => Self::pg(url)
                .query_one(
                    "SELECT COUNT(*) FROM instances WHERE series_instance_uid = $1",
                    &[&series],
                )
                .unwrap()
                .get(0),
        }
    }
}

/// The SOP Instance UIDs of what the destination stored (one file per UID: a second store of
/// a UID overwrites its file, and only the store count shows it).
fn stored_uids(dest: &Destination) -> Vec<String> {
    dest.files().iter().map(|f| sop_uid(f)).collect()
}

/// Waits until every job is done and every delivery sent and the destination has stored
/// `results` objects, then a little longer (a duplicate would come now), and checks that
/// each was made and delivered exactly once: `results` done jobs, one per source series;
/// `results` outbox rows, all sent at the first attempt; storescp received each result's
/// SOP Instance UID once. Returns the jobs.
fn assert_each_processed_and_delivered_once(
    index: &IndexAt,
    dest: &Destination,
    series: &BTreeSet<String>,
    logs: &dyn Fn() -> String,
) -> Vec<Job> {
    let results = series.len();
    let settled = wait_for(SETTLE, || {
        let jobs = index.jobs();
        let out = index.deliveries();
        jobs.len() >= results
            && jobs.iter().all(|j| j.state == "done")
            && out.len() >= results
            && out.iter().all(|d| d.state == "sent")
            && dest.stores() >= results
    });
    assert!(
        settled,
        "not settled: jobs {:#?}\noutbox {:?}\nstorescp stored {}\n{}",
        index.jobs(),
        index.deliveries(),
        dest.stores(),
        logs()
    );
    // Anything processed or sent twice would show within a lease and a few claim polls.
    std::thread::sleep(Duration::from_secs(LEASE_SECONDS + 2));

    let jobs = index.jobs();
    assert_eq!(jobs.len(), results, "one job per series: {jobs:#?}");
    let job_series: BTreeSet<String> = jobs.iter().map(|j| j.series.clone()).collect();
    assert_eq!(&job_series, series, "the jobs' series");
    for j in &jobs {
        assert_eq!(j.state, "done", "{j:?}");
        assert_eq!(
            j.version, 1,
            "a series completed early and was rebuilt: {j:?}"
        );
    }

    let out = index.deliveries();
    assert_eq!(out.len(), results, "one delivery per result: {out:?}");
    for d in &out {
        assert_eq!((d.state.as_str(), d.attempts), ("sent", 1), "{d:?}");
    }
    let outbox_uids: BTreeSet<String> = out.iter().map(|d| d.sop.clone()).collect();
    assert_eq!(outbox_uids.len(), results, "{out:?}");

    let uids = stored_uids(dest);
    assert_eq!(
        dest.stores(),
        results,
        "storescp received {} stores for {results} results (files: {uids:?})",
        dest.stores()
    );
    assert_eq!(
        uids.iter().cloned().collect::<BTreeSet<_>>(),
        outbox_uids,
        "storescp stored other instances than the results"
    );
    jobs
}

/// Writes the 20 series of the first scenario under `dir`; returns their files (instance
/// order) and their Series Instance UIDs.
fn twenty_series(dir: &Path) -> (Vec<Vec<PathBuf>>, BTreeSet<String>) {
    let series: Vec<Vec<PathBuf>> = (0..SERIES)
        .map(|s| small_sphere(&dir.join(format!("s{s:02}")), SLICES))
        .collect();
    let uids = series
        .iter()
        .map(|files| attr(&files[0], dicom_dictionary_std::tags::SERIES_INSTANCE_UID))
        .collect();
    (series, uids)
}

/// Sends each series instance by instance, one association per instance: instance k to
/// `ports[0]` when k is even, to `ports[1]` when odd. Every store must succeed.
fn send_split(series: &[Vec<PathBuf>], ports: [u16; 2]) {
    for files in series {
        for (k, f) in files.iter().enumerate() {
            let (acked, ok, out) = send(ports[k % 2], std::slice::from_ref(f));
            assert!(
                ok && acked.len() == 1,
                "store of {} failed: {out}",
                f.display()
            );
        }
    }
}

/// The embedded SQLite index, one `serve`: the 20 series, each processed once and delivered
/// once.
#[test]
fn sqlite_one_serve_processes_and_delivers_each_series_once() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let (series, series_uids) = twenty_series(data.path());
    let dest = Destination::up("DEST");
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("var");
    let config = dir.path().join("m3dnode.toml");
    std::fs::write(&config, config_toml(&storage, None, QUIET, &dest)).unwrap();
    let node = Node::spawn_role(dir, config, Role::Serve);
    let port = node.addr.port();

    send_split(&series, [port, port]);
    let index = IndexAt::Lite(storage.join("index.sqlite"));
    let jobs = assert_each_processed_and_delivered_once(&index, &dest, &series_uids, &|| {
        format!("log:\n{}", node.log())
    });
    assert!(jobs.iter().all(|j| j.attempts == 1), "{jobs:#?}");
}

/// The processes of one PostgreSQL scenario: a fresh database, one shared storage directory,
/// the destination, two receivers and two workers.
/// Fields drop in order: the processes are killed before their storage goes.
struct Cluster {
    /// rx1, rx2 (`None` once killed).
    receivers: Vec<Option<Node>>,
    /// w1, w2 (`None` once killed).
    workers: Vec<Option<Worker>>,
    dest: Destination,
    storage: tempfile::TempDir,
    url: String,
    /// The logs of the killed processes, for failure messages.
    dead_logs: Vec<String>,
}

impl Cluster {
    /// Writes the four configs (`quiet` = `series.quiet_seconds`) and starts rx1, rx2
    /// (`serve --no-workers`) and w1, w2 (`worker`), waiting until `m3dnode jobs` lists every
    /// process.
    fn up(quiet: f64) -> Cluster {
        let url = common::pg::fresh_db();
        let storage = tempfile::tempdir().unwrap();
        let dest = Destination::up("DEST");
        let config = |instance: &str| {
            let dir = tempfile::Builder::new()
                .prefix(&format!("m3d-{instance}-"))
                .tempdir()
                .unwrap();
            let path = dir.path().join("m3dnode.toml");
            std::fs::write(
                &path,
                config_toml(storage.path(), Some((&url, instance)), quiet, &dest),
            )
            .unwrap();
            (dir, path)
        };
        let configs: Vec<_> = ["rx1", "rx2", "w1", "w2"].map(config).into();
        let mut configs = configs.into_iter();
        let mut receivers = Vec::new();
        for _ in 0..2 {
            let (dir, path) = configs.next().unwrap();
            receivers.push(Some(Node::spawn_role(dir, path, Role::Receiver)));
        }
        let workers: Vec<Option<Worker>> = configs
            .map(|(dir, path)| Some(Worker::start(dir, path)))
            .collect();
        let mut cluster = Cluster {
            url,
            storage,
            dest,
            receivers,
            workers,
            dead_logs: Vec::new(),
        };
        // A worker that refused to start exits at once; one that runs shows in `processes`.
        let listed = wait_for(Duration::from_secs(30), || {
            cluster.workers.iter_mut().flatten().all(|w| w.running())
                && cluster.processes_listed().len() == 4
        });
        assert!(
            listed,
            "the four processes did not come up (listed: {:?}):\n{}",
            cluster.processes_listed(),
            cluster.logs()
        );
        cluster
    }

    fn index(&self) -> IndexAt {
        IndexAt::Pg(self.url.clone())
    }

    fn rx(&self, i: usize) -> &Node {
        self.receivers[i].as_ref().expect("receiver killed")
    }

    /// `m3dnode jobs` with the config of a live process.
    fn jobs_output(&self) -> String {
        let config = self
            .receivers
            .iter()
            .flatten()
            .map(|n| n.config.clone())
            .next()
            .or_else(|| {
                self.workers
                    .iter()
                    .flatten()
                    .map(|w| w.config.clone())
                    .next()
            })
            .expect("a live process");
        let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(["jobs", "--config"])
            .arg(config));
        text(&out)
    }

    /// The instances (rx1, rx2, w1, w2) named in the PROCESSES section of `m3dnode jobs`.
    fn processes_listed(&self) -> BTreeSet<String> {
        let out = self.jobs_output();
        let Some(at) = out.find("PROCESSES") else {
            return BTreeSet::new();
        };
        // The section ends at the next blank line (the next section's header follows it).
        let section = &out[at..];
        let section = &section[..section.find("\n\n").unwrap_or(section.len())];
        ["rx1", "rx2", "w1", "w2"]
            .into_iter()
            .filter(|i| section.contains(&format!("{i}:")))
            .map(String::from)
            .collect()
    }

    /// Kills a process with SIGKILL (no clean-up of any kind) and waits for it.
    fn kill_receiver(&mut self, i: usize) {
        let mut node = self.receivers[i].take().expect("receiver running");
        unsafe_kill(node.child.id() as i32, "KILL");
        node.child.wait().unwrap();
        let log = node.log();
        self.dead_logs.push(format!("rx{} (killed):\n{log}", i + 1));
    }

    fn kill_worker(&mut self, i: usize) {
        let mut w = self.workers[i].take().expect("worker running");
        unsafe_kill(w.pid(), "KILL");
        w.child.wait().unwrap();
        let log = w.log();
        self.dead_logs.push(format!("w{} (killed):\n{log}", i + 1));
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.receivers.iter().enumerate() {
            if let Some(n) = n {
                s += &format!("--- rx{} log:\n{}\n", i + 1, n.log());
            }
        }
        for (i, w) in self.workers.iter().enumerate() {
            if let Some(w) = w {
                s += &format!("--- w{} log:\n{}\n", i + 1, w.log());
            }
        }
        for d in &self.dead_logs {
            s += &format!("--- {d}\n");
        }
        s
    }
}

/// (a) 20 series, each split instance by instance across rx1 and rx2: every store succeeds,
/// each series is processed once (one job, done at the first attempt) and its result
/// delivered once, and `m3dnode jobs` lists the four processes.
#[test]
fn two_receivers_two_workers_process_and_deliver_each_series_once() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let (series, series_uids) = twenty_series(data.path());
    let cluster = Cluster::up(QUIET);

    send_split(
        &series,
        [cluster.rx(0).addr.port(), cluster.rx(1).addr.port()],
    );
    let jobs = assert_each_processed_and_delivered_once(
        &cluster.index(),
        &cluster.dest,
        &series_uids,
        &|| cluster.logs(),
    );
    for j in &jobs {
        assert_eq!(j.attempts, 1, "{j:?}");
        let owner = j.owner.as_deref().unwrap_or_default();
        assert!(
            owner.starts_with("w1:") || owner.starts_with("w2:"),
            "a done job names the worker that finished it: {j:?}"
        );
    }
    // `m3dnode jobs` (20 jobs by default) shows the owner of each done job.
    let listing = cluster.jobs_output();
    for j in &jobs {
        let owner = j.owner.as_deref().unwrap_or_default();
        assert!(
            listing.contains(owner),
            "m3dnode jobs does not show {owner}:\n{listing}"
        );
    }
    // Q/R on the shared index: each receiver finds every study with its mesh, whichever
    // worker stored it.
    let studies: BTreeSet<String> = series
        .iter()
        .map(|files| attr(&files[0], dicom_dictionary_std::tags::STUDY_INSTANCE_UID))
        .collect();
    for rx in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args([
                "find",
                &format!("M3DNODE@127.0.0.1:{}", cluster.rx(rx).addr.port()),
            ])
            .args(["--calling-ae", "FINDER", "-L", "STUDY"])
            .args(["-k", "ModalitiesInStudy=M3D", "-k", "StudyInstanceUID"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .flat_map(|l| l.split('\t'))
            .filter_map(|kv| kv.strip_prefix("StudyInstanceUID="))
            .map(str::to_string)
            .collect();
        assert_eq!(found, studies, "C-FIND at rx{}", rx + 1);
    }
    let listed = cluster.processes_listed();
    assert_eq!(
        listed.len(),
        4,
        "m3dnode jobs lists {listed:?}:\n{}",
        cluster.jobs_output()
    );
}

/// (b) `kill -9` of the worker running a job (a series whose job takes seconds): after its
/// lease the other worker takes the job over and finishes it; the result is delivered once.
#[test]
fn a_killed_workers_job_is_taken_over_after_its_lease() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let big = write_big_sphere(data.path());
    let series_uid = attr(&big[0], dicom_dictionary_std::tags::SERIES_INSTANCE_UID);
    let mut cluster = Cluster::up(QUIET);
    let index = cluster.index();

    let (acked, ok, out) = send(cluster.rx(0).addr.port(), &big);
    assert!(ok && acked.len() == big.len(), "{out}");

    // Whichever worker claims the job is killed; the other must finish it.
    let mut holder = None;
    let running = wait_for(SETTLE, || {
        holder = index.jobs().into_iter().find_map(|j| {
            let owner = j.owner.filter(|_| j.state == "running")?;
            ["w1:", "w2:"].iter().position(|w| owner.starts_with(w))
        });
        holder.is_some()
    });
    assert!(
        running,
        "no job ran: {:#?}\n{}",
        index.jobs(),
        cluster.logs()
    );
    let killed = holder.unwrap();
    let other = 1 - killed;
    cluster.kill_worker(killed);
    let killed_at = Instant::now();

    // The lease held at the kill had been renewed within the last lease/3 seconds, and the
    // job then runs again from the start: it cannot end sooner.
    assert!(
        wait_for(SETTLE, || index.jobs().iter().all(|j| j.state != "running")),
        "the job never ended after the kill: {:#?}\n{}",
        index.jobs(),
        cluster.logs()
    );
    let ended_after = killed_at.elapsed();
    assert!(
        ended_after >= Duration::from_secs(LEASE_SECONDS * 2 / 3),
        "ended {ended_after:?} after the kill: taken over before the lease ran out"
    );

    let series: BTreeSet<String> = [series_uid].into();
    let jobs = assert_each_processed_and_delivered_once(&index, &cluster.dest, &series, &|| {
        cluster.logs()
    });
    let job = &jobs[0];
    let owner = job.owner.as_deref().unwrap_or_default();
    assert!(
        owner.starts_with(&format!("w{}:", other + 1)),
        "w{} killed, the job should be finished by w{}: {job:?}",
        killed + 1,
        other + 1
    );
    assert_eq!(job.attempts, 2, "{job:?}");
}

/// (c) `kill -9` of a receiver in the middle of a series: the first half goes to rx1 on one
/// association, rx1 is killed while it stores (or right after), the rest goes to rx2. Every
/// instance rx1 acknowledged is in the index and on disk, and the series completes from rx2
/// and is delivered once.
#[test]
fn a_killed_receivers_series_completes_from_the_other() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    let files = medium_sphere(data.path(), 60);
    let series_uid = attr(&files[0], dicom_dictionary_std::tags::SERIES_INSTANCE_UID);
    let mut cluster = Cluster::up(RECEIVER_KILL_QUIET);
    let index = cluster.index();

    let (first, _) = files.split_at(files.len() / 2);
    let sender = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .arg("send")
        .args(first)
        .args([
            "--to",
            &format!("M3DNODE@127.0.0.1:{}", cluster.rx(0).addr.port()),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once a third of the first half is in.
    assert!(
        wait_for(Duration::from_secs(60), || index
            .instances_of_series(&series_uid)
            >= first.len() as i64 / 3),
        "rx1 stored nothing:\n{}",
        cluster.logs()
    );
    cluster.kill_receiver(0);
    let out = sender.wait_with_output().unwrap();
    let acknowledged: BTreeSet<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("OK "))
        .map(|l| PathBuf::from(l.split(" (status").next().unwrap_or(l)))
        .collect();
    assert!(!acknowledged.is_empty(), "rx1 acknowledged nothing");

    // Everything else (the second half, and what rx1 did not acknowledge) to rx2 at once,
    // within the quiet time of the instances rx1 stored.
    let rest: Vec<PathBuf> = files
        .iter()
        .filter(|f| !acknowledged.contains(*f))
        .cloned()
        .collect();
    let (acked, ok, out) = send(cluster.rx(1).addr.port(), &rest);
    assert!(ok && acked.len() == rest.len(), "{out}");

    // Nothing rx1 acknowledged is lost: each has its row and its file.
    for path in &acknowledged {
        let sop = sop_uid(path);
        let stored = index
            .instance_path(&sop)
            .unwrap_or_else(|| panic!("acknowledged {sop} is not indexed"));
        let on_disk = cluster.storage.path().join(&stored);
        assert!(
            on_disk.is_file() && data_set(&on_disk) == data_set(path),
            "acknowledged {sop} is not intact at {}",
            on_disk.display()
        );
    }

    let series: BTreeSet<String> = [series_uid.clone()].into();
    let jobs = assert_each_processed_and_delivered_once(&index, &cluster.dest, &series, &|| {
        cluster.logs()
    });
    assert_eq!(jobs[0].attempts, 1, "{:?}", jobs[0]);
    assert_eq!(
        index.instances_of_series(&series_uid),
        files.len() as i64,
        "every instance of the series is indexed once"
    );
}

/// A worker beside an SQLite index would need the storage lock `serve` holds: refused at
/// start with what to do, as are a bad url and a duplicate instance name on one storage.
#[test]
fn a_worker_needs_a_shared_index_and_each_process_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: &str, role: &[&str]| {
        let path = dir.path().join("m3dnode.toml");
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(role)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let storage = dir.path().join("var");
    let base = format!(
        "[node]\nstorage = \"{}\"\nlisten = \"127.0.0.1:0\"\nmin_free_mb = 0\n[http]\nlisten = \"\"\n",
        storage.display()
    );
    let (code, err) = run(&base, &["worker"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("[index] url"), "{err}");
    let (code, err) = run(
        &format!("{base}[index]\nurl = \"mysql://db/m3d\"\n"),
        &["worker"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("index.url"), "{err}");
    // The password of a url is never echoed, even when the url is refused.
    let (code, err) = run(
        &format!("{base}[index]\nurl = \"postgres://m3d:s3cret@db:notaport/m3d\"\n"),
        &["worker"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    // A database that does not answer: the start fails, naming the server, not the password.
    let (code, err) = run(
        &format!("{base}[index]\nurl = \"postgres://m3d:s3cret@127.0.0.1:1/m3d\"\n"),
        &["serve"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let _guard = serial();
    let url = common::pg::fresh_db();
    let shared = format!("{base}[index]\nurl = \"{url}\"\ninstance = \"w1\"\n");
    let path = dir.path().join("w1.toml");
    std::fs::write(&path, &shared).unwrap();
    let mut first = common::Worker::start(tempfile::tempdir().unwrap(), path.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !first.log().contains("m3dnode worker running") {
        assert!(first.running(), "{}", first.log());
        assert!(std::time::Instant::now() < deadline, "{}", first.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, err) = run(&shared, &["worker"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("instance `w1`"), "{err}");
    assert!(first.running(), "the first w1 keeps running");
}
