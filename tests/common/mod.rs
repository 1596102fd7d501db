//! Shared helpers for the integration tests: start the real binary, find DCMTK, make data.
#![allow(dead_code)]

pub mod orthanc;
pub mod pg;
pub mod status;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The test venv's python (pynetdicom, pydicom): `M3DNODE_PYTHON`, else `target/pyenv`,
/// which scripts/test installs.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("M3DNODE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        venv.is_file(),
        "no test venv: run scripts/test (it installs pynetdicom into target/pyenv)"
    );
    venv
}

/// A text attribute of a Part 10 file (read up to the pixel data), without padding; empty
/// when absent.
pub fn attr(path: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    text_of(&obj, tag)
}

/// The text of `tag` in a data set without its padding; empty when absent.
pub fn text_of(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.get(tag)
        .map(|e| {
            e.to_str()
                .unwrap()
                .trim_end_matches(['\0', ' '])
                .to_string()
        })
        .unwrap_or_default()
}

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Path of a required external tool; a missing tool is a test failure with the fix named,
/// never a silent skip (`scripts/test` installs them).
pub fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed: run scripts/test, which installs the test tools of scripts/prereqs.sh (PREREQS_TEST)"
    );
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs dciodvfy on a file and fails on any error or warning it prints.
pub fn assert_dciodvfy_clean(path: &Path) {
    let out = run(Command::new(tool("dciodvfy")).arg(path));
    let t = text(&out);
    let problems: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("Error") || l.contains("Warning"))
        .collect();
    assert!(problems.is_empty(), "dciodvfy {}:\n{t}", path.display());
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a node process does (issue 17's roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `m3dnode serve`: receives, and runs jobs and deliveries.
    Serve,
    /// `m3dnode serve --no-workers`: receives only; workers elsewhere run its jobs.
    Receiver,
    /// `m3dnode worker`: claims and runs jobs and deliveries; no DICOM listener.
    Worker,
}

impl Role {
    /// The subcommand and its flags, before `--config FILE`.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Role::Serve => &["serve"],
            Role::Receiver => &["serve", "--no-workers"],
            Role::Worker => &["worker"],
        }
    }
}

/// A running `m3dnode serve` with its own storage directory.
pub struct Node {
    pub child: Child,
    /// `Serve`, or `Receiver` for `serve --no-workers` ([`Node::spawn_role`]).
    pub role: Role,
    pub addr: SocketAddr,
    /// The status page, health and metrics (`None` when `[http] listen` is empty).
    pub http: Option<SocketAddr>,
    /// The DICOM TLS listener (`None` unless `[tls] enabled`).
    pub tls: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub stderr_log: PathBuf,
}

impl Node {
    /// Starts the node with `extra` TOML appended to a config that listens on a free
    /// loopback port and stores under a temp dir.
    pub fn start(extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        Node::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Node {
        let config = dir.path().join("m3dnode.toml");
        let storage = dir.path().join("var");
        let (node_extra, rest) = split_node_section(extra);
        std::fs::write(
            &config,
            format!(
                "[node]\n{}storage = \"{}\"\n{}{node_extra}\n{rest}\n{}",
                if node_extra.contains("listen") {
                    ""
                } else {
                    "listen = \"127.0.0.1:0\"\n"
                },
                storage.display(),
                if node_extra.contains("min_free_mb") {
                    ""
                } else {
                    "min_free_mb = 1\n"
                },
                // A free port: tests run side by side, and 8080 may be taken on the machine.
                if rest.contains("[http]") {
                    ""
                } else {
                    "[http]\nlisten = \"127.0.0.1:0\"\n"
                }
            ),
        )
        .unwrap();
        Node::spawn(dir, config)
    }

    fn spawn(dir: tempfile::TempDir, config: PathBuf) -> Node {
        Node::spawn_role(dir, config, Role::Serve)
    }

    /// Starts `m3dnode serve` (`Role::Serve`) or `serve --no-workers` (`Role::Receiver`) on a
    /// config file the caller wrote (its storage may be shared with other processes; then
    /// [`Node::storage`] and the helpers built on it do not apply). Logs go to `dir/node.log`.
    pub fn spawn_role(dir: tempfile::TempDir, config: PathBuf, role: Role) -> Node {
        assert!(
            role != Role::Worker,
            "a worker has no listener: use Worker::start"
        );
        let stderr_log = dir.path().join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(role.args())
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,m3dnode=debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start m3dnode");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // The HTTP side's address comes first when it is enabled.
        let http = match line.trim().strip_prefix("m3dnode http on ") {
            Some(a) => {
                let a = a.parse().ok();
                line.clear();
                stdout.read_line(&mut line).unwrap();
                a
            }
            None => None,
        };
        let tls = match line.trim().strip_prefix("m3dnode tls listening on ") {
            Some(a) => {
                let a = a.parse().ok();
                line.clear();
                stdout.read_line(&mut line).unwrap();
                a
            }
            None => None,
        };
        let addr = line
            .trim()
            .strip_prefix("m3dnode listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                )
            })
            .parse()
            .unwrap();
        Node {
            child,
            role,
            addr,
            http,
            tls,
            dir,
            config,
            stderr_log,
        }
    }

    /// Restarts on the same storage and config (a new port).
    pub fn restart(mut self) -> Node {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Node::spawn_role(dir, self.config.clone(), self.role)
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    pub fn ae(&self) -> String {
        format!("M3DNODE@{}", self.addr)
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("var")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Every stored instance file.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.storage();
        for study in std::fs::read_dir(&root).unwrap().flatten() {
            if !study.file_type().unwrap().is_dir()
                || study.file_name() == "tmp"
                || study.file_name() == "audit"
            {
                continue;
            }
            for series in std::fs::read_dir(study.path()).unwrap().flatten() {
                for f in std::fs::read_dir(series.path()).unwrap().flatten() {
                    out.push(f.path());
                }
            }
        }
        out.sort();
        out
    }

    pub fn temp_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.storage().join("tmp"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    pub fn index(&self) -> m3dnode::store::Index {
        m3dnode::store::Index::open(&self.storage().join("index.sqlite")).unwrap()
    }

    pub fn echo_ok(&self) -> bool {
        run(Command::new(tool("echoscu")).args(["-aec", "M3DNODE", "127.0.0.1", &self.port()]))
            .status
            .success()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        unsafe_kill(pid, "TERM");
        wait_timeout(&mut self.child, Duration::from_secs(60))
            .expect("node did not exit after SIGTERM")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `m3dnode worker` (no DICOM listener, so nothing to wait for on stdout: callers
/// see it arrive in the index). Its stdout and stderr go to `dir/node.log`; killed on drop.
pub struct Worker {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub stderr_log: PathBuf,
}

impl Worker {
    pub fn start(dir: tempfile::TempDir, config: PathBuf) -> Worker {
        let stderr_log = dir.path().join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(Role::Worker.args())
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,m3dnode=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start m3dnode worker");
        Worker {
            child,
            dir,
            config,
            stderr_log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Whether the process is still running (a refused start exits at once).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn split_node_section(extra: &str) -> (String, String) {
    // Lines before the first table header belong to [node].
    let mut node = String::new();
    let mut rest = String::new();
    let mut in_rest = false;
    for line in extra.lines() {
        if line.trim_start().starts_with('[') {
            in_rest = true;
        }
        if in_rest {
            rest.push_str(line);
            rest.push('\n');
        } else {
            node.push_str(line);
            node.push('\n');
        }
    }
    (node, rest)
}

pub fn unsafe_kill(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The data set bytes of a Part 10 file (everything after the file meta), inflated for the
/// deflated transfer syntax (whose compressed bytes differ between encoders).
pub fn data_set(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut f = std::io::Cursor::new(&bytes);
    let off = m3dnode::store::part10_data_offset(&mut f).unwrap() as usize;
    let ts = m3dnode::net::scu::OutgoingFile::open(path)
        .unwrap()
        .transfer_syntax;
    if ts == "1.2.840.10008.1.2.1.99" {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&bytes[off..])
            .read_to_end(&mut out)
            .unwrap();
        return out;
    }
    bytes[off..].to_vec()
}

/// Writes `n` MR instances of `rows`x`cols` 16-bit pixels (one series) into `dir`.
pub fn write_mr_series(dir: &Path, n: usize, rows: u16, cols: u16) -> Vec<PathBuf> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    std::fs::create_dir_all(dir).unwrap();
    let study = m3dnode::store::uid::new_uid();
    let series = m3dnode::store::uid::new_uid();
    let mut out = Vec::new();
    for i in 0..n {
        let sop = m3dnode::store::uid::new_uid();
        let mut obj = InMemDicomObject::new_empty();
        let mut put =
            |tag, vr, v: &str| obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        put(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.4");
        put(tags::SOP_INSTANCE_UID, VR::UI, &sop);
        put(tags::STUDY_INSTANCE_UID, VR::UI, &study);
        put(tags::SERIES_INSTANCE_UID, VR::UI, &series);
        put(tags::MODALITY, VR::CS, "MR");
        put(tags::PATIENT_NAME, VR::PN, "TEST^PHANTOM");
        put(tags::PATIENT_ID, VR::LO, "PHANTOM01");
        put(tags::INSTANCE_NUMBER, VR::IS, &(i + 1).to_string());
        put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(rows),
        ));
        obj.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(cols),
        ));
        obj.put(DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(1u16),
        ));
        obj.put(DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(16u16),
        ));
        obj.put(DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(12u16),
        ));
        obj.put(DataElement::new(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(11u16),
        ));
        obj.put(DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
        let pixels: Vec<u16> = (0..rows as usize * cols as usize)
            .map(|p| ((p * 7 + i * 13) % 4096) as u16)
            .collect();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.1")
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.4"),
            )
            .unwrap();
        let path = dir.join(format!("IM{:04}.dcm", i + 1));
        file.write_to_file(&path).unwrap();
        out.push(path);
    }
    out
}

/// Geometry of a synthetic series: slice `k` sits at `origin + k * step * normal`, with
/// `row_dir`/`col_dir` as Image Orientation (Patient) and `spacing` (row, col) in mm.
pub struct Grid {
    pub rows: u16,
    pub cols: u16,
    pub slices: usize,
    pub spacing: [f64; 2],
    pub step: f64,
    pub row_dir: [f64; 3],
    pub col_dir: [f64; 3],
    pub origin: [f64; 3],
}

impl Grid {
    /// An axial grid of `size` x `size` pixels and `slices` slices, all `mm` apart, centred
    /// on the patient origin.
    pub fn axial(size: u16, slices: usize, mm: f64) -> Grid {
        let half = |n: f64| -n * mm / 2.0;
        Grid {
            rows: size,
            cols: size,
            slices,
            spacing: [mm, mm],
            step: mm,
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 1.0, 0.0],
            origin: [
                half(f64::from(size)),
                half(f64::from(size)),
                half(slices as f64),
            ],
        }
    }

    /// Patient position (LPS mm) of voxel column `i`, row `j`, slice `k`.
    pub fn position(&self, i: f64, j: f64, k: f64) -> [f64; 3] {
        let n = cross(self.row_dir, self.col_dir);
        std::array::from_fn(|a| {
            self.origin[a]
                + i * self.spacing[1] * self.row_dir[a]
                + j * self.spacing[0] * self.col_dir[a]
                + k * self.step * n[a]
        })
    }
}

pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Writes an MR series sampling `signed_distance` (mm, negative inside) as
/// stored = 1000 - 100 * d, clamped to 0..=2000: the iso value 1000 is the true surface.
/// Slices in `skip` are left out (a missing slice). Files are named in reverse order so that
/// nothing can rely on names.
pub fn write_phantom(
    dir: &Path,
    grid: &Grid,
    skip: &[usize],
    signed_distance: impl Fn([f64; 3]) -> f64,
) -> Vec<PathBuf> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    std::fs::create_dir_all(dir).unwrap();
    let study = m3dnode::store::uid::new_uid();
    let series = m3dnode::store::uid::new_uid();
    let frame = m3dnode::store::uid::new_uid();
    let ds = |v: f64| format!("{v:.6}");
    let mut out = Vec::new();
    for k in (0..grid.slices).filter(|k| !skip.contains(k)) {
        let mut obj = InMemDicomObject::new_empty();
        let mut put =
            |tag, vr, v: &str| obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        let sop = m3dnode::store::uid::new_uid();
        put(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.4");
        put(tags::SOP_INSTANCE_UID, VR::UI, &sop);
        put(tags::STUDY_INSTANCE_UID, VR::UI, &study);
        put(tags::SERIES_INSTANCE_UID, VR::UI, &series);
        put(tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame);
        put(tags::MODALITY, VR::CS, "MR");
        put(tags::PATIENT_NAME, VR::PN, "PHANTOM^ANALYTIC");
        put(tags::PATIENT_ID, VR::LO, "PHANTOM02");
        put(tags::INSTANCE_NUMBER, VR::IS, &(k + 1).to_string());
        put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        let p = grid.position(0.0, 0.0, k as f64);
        put(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &format!("{}\\{}\\{}", ds(p[0]), ds(p[1]), ds(p[2])),
        );
        let (r, c) = (grid.row_dir, grid.col_dir);
        put(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            &[r[0], r[1], r[2], c[0], c[1], c[2]].map(ds).join("\\"),
        );
        put(
            tags::PIXEL_SPACING,
            VR::DS,
            &format!("{}\\{}", ds(grid.spacing[0]), ds(grid.spacing[1])),
        );
        put(tags::SLICE_THICKNESS, VR::DS, &ds(grid.step));
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(grid.rows),
        ));
        obj.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(grid.cols),
        ));
        for (tag, v) in [
            (tags::SAMPLES_PER_PIXEL, 1u16),
            (tags::BITS_ALLOCATED, 16),
            (tags::BITS_STORED, 16),
            (tags::HIGH_BIT, 15),
            (tags::PIXEL_REPRESENTATION, 0),
        ] {
            obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        }
        let mut pixels = Vec::with_capacity(grid.rows as usize * grid.cols as usize);
        for j in 0..grid.rows {
            for i in 0..grid.cols {
                let d = signed_distance(grid.position(f64::from(i), f64::from(j), k as f64));
                pixels.push((1000.0 - 100.0 * d).round().clamp(0.0, 2000.0) as u16);
            }
        }
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.1")
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.4"),
            )
            .unwrap();
        let path = dir.join(format!("Z{:04}.dcm", grid.slices - k));
        file.write_to_file(&path).unwrap();
        out.push(path);
    }
    out
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// DCMTK storescp as a delivery destination; counts every C-STORE it receives (a re-sent
/// instance overwrites its file, the count shows it).
pub struct Destination {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub aet: String,
    /// Seconds storescp sleeps during each store (`--sleep-during`): a slow destination.
    pub sleep_during: u32,
}

impl Destination {
    /// A destination on a free port, not started yet (a peer that is down).
    pub fn down(aet: &str) -> Destination {
        Destination {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            aet: aet.to_string(),
            sleep_during: 0,
        }
    }

    pub fn up(aet: &str) -> Destination {
        let mut d = Destination::down(aet);
        d.start();
        d
    }

    /// A destination that takes `seconds` over each store, so that a test can act while a
    /// transfer to it is surely under way.
    pub fn up_slow(aet: &str, seconds: u32) -> Destination {
        let mut d = Destination::down(aet);
        d.sleep_during = seconds;
        d.start();
        d
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("storescp.log"))
            .unwrap();
        let out = self.dir.path().join("in");
        std::fs::create_dir_all(&out).unwrap();
        let child = Command::new(tool("storescp"))
            .args(["-v", "-aet", &self.aet, "+xa"])
            .args(["--sleep-during", &self.sleep_during.to_string(), "-od"])
            .arg(&out)
            .arg(self.port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        assert!(wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        }));
    }

    pub fn peer_toml(&self) -> String {
        format!(
            "[[peers]]\nae_title = \"{}\"\naddress = \"127.0.0.1:{}\"\n",
            self.aet, self.port
        )
    }

    /// C-STORE requests received so far.
    pub fn stores(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("storescp.log"))
            .unwrap_or_default()
            .matches("Received Store Request")
            .count()
    }

    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("in"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// storescu of whole folders or files to the node.
pub fn storescu(node: &Node, paths: &[PathBuf]) -> Output {
    let out = run(Command::new(tool("storescu"))
        .env("TCP_NODELAY", "1")
        .args(["-aec", "M3DNODE", "+sd", "+r", "127.0.0.1", &node.port()])
        .args(paths));
    assert!(out.status.success(), "{}", text(&out));
    out
}

/// (state, error or summary) of every job, oldest first.
pub fn jobs(node: &Node) -> Vec<(String, String)> {
    node.index()
        .with(|c| {
            c.prepare("SELECT state, COALESCE(error, summary, '') FROM jobs ORDER BY id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .unwrap()
}

/// (state, attempts) of every outbox row, oldest first.
pub fn outbox(node: &Node) -> Vec<(String, i64)> {
    node.index()
        .with(|c| {
            c.prepare("SELECT state, attempts FROM outbox ORDER BY id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .unwrap()
}

/// Copies a series into `dir` as a new series of the same study (new Series and SOP Instance
/// UIDs), so that tests can have several series of one study.
pub fn copy_as_new_series(src: &Path, dir: &Path) -> Vec<PathBuf> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    std::fs::create_dir_all(dir).unwrap();
    let series = m3dnode::store::uid::new_uid();
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let mut obj = dicom_object::open_file(&f).unwrap();
        let sop = m3dnode::store::uid::new_uid();
        obj.put(DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(series.as_str()),
        ));
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop.as_str()),
        ));
        obj.meta_mut().media_storage_sop_instance_uid = sop.clone();
        obj.meta_mut().update_information_group_length();
        let path = dir.join(f.file_name().unwrap());
        obj.write_to_file(&path).unwrap();
        out.push(path);
    }
    out
}

/// A sphere of radius 60 mm in a 256x256x160 axial MR series (0.8 mm pixels, 1 mm slices):
/// large enough that its job runs for a while (tests that kill the node during a job).
pub fn write_big_sphere(dir: &Path) -> Vec<PathBuf> {
    let grid = Grid {
        rows: 256,
        cols: 256,
        slices: 160,
        spacing: [0.8, 0.8],
        step: 1.0,
        row_dir: [1.0, 0.0, 0.0],
        col_dir: [0.0, 1.0, 0.0],
        origin: [-102.0, -102.0, -80.0],
    };
    write_phantom(dir, &grid, &[], |p| {
        (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - 60.0
    })
}

/// DCMTK `movescu` or `getscu` (Study Root, STUDY level) of one study from the node, as `aet`,
/// with `extra` options (`-aem DEST`, `-od DIR`, ...).
pub fn retrieve_study(
    tool_name: &str,
    node: &Node,
    aet: &str,
    extra: &[&str],
    study: &str,
) -> Output {
    run(Command::new(tool(tool_name))
        .args(["-v", "-aet", aet, "-aec", "M3DNODE", "-S"])
        .args(extra)
        .args([
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={study}"),
            "127.0.0.1",
            &node.port(),
        ]))
}

/// Samples of a Prometheus text exposition: `name{labels}` (as written) -> value.
pub fn metric_samples(rendered: &str) -> std::collections::BTreeMap<String, f64> {
    rendered
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// One sample of [`metric_samples`]; panics, listing them, when it is missing.
pub fn metric_sample(samples: &std::collections::BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample `{key}` in:\n{samples:#?}"))
}
