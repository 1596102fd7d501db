//! Shared helpers for the integration tests: start the real binary, find DCMTK, make data.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    panic!("`{name}` is not installed: run scripts/test, which installs dcmtk and dicom3tools");
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `m3dnode serve` with its own storage directory.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
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
                "[node]\nlisten = \"127.0.0.1:0\"\nstorage = \"{}\"\n{}{node_extra}\n{rest}\n",
                storage.display(),
                if node_extra.contains("min_free_mb") {
                    ""
                } else {
                    "min_free_mb = 1\n"
                }
            ),
        )
        .unwrap();
        Node::spawn(dir, config)
    }

    fn spawn(dir: tempfile::TempDir, config: PathBuf) -> Node {
        let stderr_log = dir.path().join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,m3dnode=debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start m3dnode");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
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
            addr,
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
        Node::spawn(dir, self.config.clone())
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
            if !study.file_type().unwrap().is_dir() || study.file_name() == "tmp" {
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
