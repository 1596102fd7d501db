//! Hostile and malformed data sets against the real binary (issue 12, items 1, 3 and 5): deep
//! defined-length nesting, a defined-length sequence of random bytes, encapsulated Pixel Data
//! in a native syntax, a repeated SOP Instance UID, a deflate bomb; files of that kind already
//! in storage (stored by an older release) reaching a job; a job that keeps killing the node.
//!
//! Hostile files are written byte by byte (no DICOM toolkit would write them) and sent with
//! the node's own `send` command, which sends a file's data set bytes as they are.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const CONTENT_SEQUENCE: u32 = 0x0040_A730;
const PIXEL_DATA: u32 = 0x7FE0_0010;
/// What the node's RSS peak (VmHWM) must stay under while it handles these files.
const RSS_BOUND_KB: u64 = 500 * 1024;

use m3dnode::store::header::raw::{element as el, item, tag as tag_bytes};

/// UIDs of one hostile instance.
struct Ids {
    study: String,
    series: String,
    sop: String,
}

impl Ids {
    fn new() -> Ids {
        let uid = m3dnode::store::uid::new_uid;
        Ids {
            study: uid(),
            series: uid(),
            sop: uid(),
        }
    }
}

/// The leading elements of an MR data set, up to (excluding) (0020,0013).
/// The node's Error Comment is cut at 64 characters (LO), so tests look for its first words.
fn mr_head(ids: &Ids, sop: &str) -> Vec<u8> {
    [
        el(0x0008_0016, b"UI", MR.as_bytes()),
        el(0x0008_0018, b"UI", sop.as_bytes()),
        el(0x0008_0060, b"CS", b"MR"),
        el(0x0020_000D, b"UI", ids.study.as_bytes()),
        el(0x0020_000E, b"UI", ids.series.as_bytes()),
    ]
    .concat()
}

/// The image attributes of a `rows` x `cols` 16-bit MONOCHROME2 image.
fn image_attributes(rows: u16, cols: u16) -> Vec<u8> {
    [
        el(0x0028_0002, b"US", &1u16.to_le_bytes()),
        el(0x0028_0004, b"CS", b"MONOCHROME2"),
        el(0x0028_0010, b"US", &rows.to_le_bytes()),
        el(0x0028_0011, b"US", &cols.to_le_bytes()),
        el(0x0028_0100, b"US", &16u16.to_le_bytes()),
        el(0x0028_0101, b"US", &12u16.to_le_bytes()),
        el(0x0028_0102, b"US", &11u16.to_le_bytes()),
        el(0x0028_0103, b"US", &0u16.to_le_bytes()),
    ]
    .concat()
}

/// A Part 10 MR file in transfer syntax `ts`, holding `data_set` as given.
fn part10(ts: &str, sop: &str, data_set: &[u8]) -> Vec<u8> {
    m3dnode::store::header::raw::part10(ts, MR, sop, data_set)
}

/// An MR instance whose Content Sequence nests `depth` deep, all of defined length.
fn deep_nesting(ids: &Ids, depth: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    for _ in 0..depth {
        inner = el(CONTENT_SEQUENCE, b"SQ", &item(&inner));
    }
    let ds = [
        mr_head(ids, &ids.sop),
        image_attributes(2, 2),
        inner,
        el(PIXEL_DATA, b"OW", &[0; 8]),
    ]
    .concat();
    part10(EXPLICIT_LE, &ids.sop, &ds)
}

/// A deflated MR instance declaring a 16x16 image whose private (0009,1010) OB inflates to
/// `bulk` bytes of zeros.
fn deflate_bomb(ids: &Ids, bulk: usize) -> Vec<u8> {
    use std::io::Write;
    let mut head = [
        el(0x0008_0016, b"UI", MR.as_bytes()),
        el(0x0008_0018, b"UI", ids.sop.as_bytes()),
        el(0x0008_0060, b"CS", b"MR"),
    ]
    .concat();
    head.extend_from_slice(&tag_bytes(0x0009_1010));
    head.extend_from_slice(b"OB\0\0");
    head.extend_from_slice(&(bulk as u32).to_le_bytes());
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&head).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = bulk;
    while left > 0 {
        let n = left.min(chunk.len());
        enc.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    let tail = [
        el(0x0020_000D, b"UI", ids.study.as_bytes()),
        el(0x0020_000E, b"UI", ids.series.as_bytes()),
        image_attributes(16, 16),
        el(PIXEL_DATA, b"OW", &[0; 512]),
    ]
    .concat();
    enc.write_all(&tail).unwrap();
    part10(DEFLATED, &ids.sop, &enc.finish().unwrap())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Sends one file with `m3dnode send`; returns its stdout line for the file.
fn send(node: &Node, path: &Path) -> String {
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["send", "--to", &node.ae()])
        .arg(path));
    text(&out)
}

/// Peak resident set size (VmHWM) of the node, in kB.
fn vm_hwm_kb(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

fn instances(node: &Node) -> i64 {
    node.index()
        .with(|c| c.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0)))
        .unwrap()
}

/// A node with a rule `name` for MR series (the hostile files are MR), quiet after 0.5 s,
/// sending to a destination that is down (nothing here is meant to be delivered).
fn rule_config(name: &str, rule_extra: &str) -> String {
    let dest = Destination::down("DEST");
    format!(
        "[series]\nquiet_seconds = 0.5\n{}[[rules]]\nname = \"{name}\"\nmodality = \"MR\"\nsend_to = [\"DEST\"]\n{rule_extra}",
        dest.peer_toml()
    )
}

fn mr_node_config() -> String {
    rule_config("mr", "")
}

fn assert_refused(out: &str, what: &str, comment: &str) {
    assert!(
        out.contains("status 0xC000") || out.contains("status 0xA900"),
        "{what}: expected 0xC000/0xA900, got:\n{out}"
    );
    assert!(
        out.contains(comment),
        "{what}: expected an Error Comment with {comment:?}, got:\n{out}"
    );
}

/// (a) 2,000-deep defined-length nesting is refused with 0xC000 and stored nowhere; the node
/// keeps answering.
#[test]
fn deep_defined_length_nesting_is_refused_on_receive() {
    let node = Node::start(&mr_node_config());
    let dir = tempfile::tempdir().unwrap();
    let ids = Ids::new();
    let path = write(dir.path(), "deep.dcm", &deep_nesting(&ids, 2000));
    let out = send(&node, &path);
    assert_refused(&out, "deep nesting", "nested too deeply");
    assert!(node.stored_files().is_empty(), "{:?}", node.stored_files());
    assert_eq!(instances(&node), 0);
    assert!(node.echo_ok(), "log:\n{}", node.log());
    // A legitimate nesting of the same shape is stored.
    let ids = Ids::new();
    let path = write(dir.path(), "shallow.dcm", &deep_nesting(&ids, 8));
    let out = send(&node, &path);
    assert!(out.contains("1 sent, 0 failed"), "{out}");
    let hwm = vm_hwm_kb(&node);
    eprintln!("VmHWM after the deep nesting: {hwm} kB");
    assert!(hwm < RSS_BOUND_KB, "VmHWM {hwm} kB");
}

/// (d) Malformed data sets DCMTK reads differently or not at all get 0xC000 with a reason.
#[test]
fn malformed_data_sets_are_refused_with_a_comment() {
    let node = Node::start(&mr_node_config());
    let dir = tempfile::tempdir().unwrap();

    // A defined-length sequence holding random bytes.
    let ids = Ids::new();
    let mut state = 0x2545_F491_u32;
    let random: Vec<u8> = (0..2000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let ds = [
        mr_head(&ids, &ids.sop),
        el(CONTENT_SEQUENCE, b"SQ", &random),
    ]
    .concat();
    let path = write(
        dir.path(),
        "random.dcm",
        &part10(EXPLICIT_LE, &ids.sop, &ds),
    );
    assert_refused(&send(&node, &path), "random sequence", "(status 0xC000: ");

    // Encapsulated (fragment sequence) Pixel Data on Explicit VR Little Endian.
    let ids = Ids::new();
    let mut pixels = tag_bytes(PIXEL_DATA).to_vec();
    pixels.extend_from_slice(b"OB\0\0");
    pixels.extend_from_slice(&u32::MAX.to_le_bytes());
    pixels.extend(item(&[]));
    pixels.extend(item(&[0xFF, 0xD8, 0xFF, 0xD9]));
    pixels.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    let ds = [mr_head(&ids, &ids.sop), image_attributes(2, 2), pixels].concat();
    let path = write(
        dir.path(),
        "encapsulated.dcm",
        &part10(EXPLICIT_LE, &ids.sop, &ds),
    );
    assert_refused(
        &send(&node, &path),
        "encapsulated pixel data",
        "native transfer syntax",
    );

    // (0008,0018) twice: DCMTK reads the first, a naive reader the last.
    let ids = Ids::new();
    let ds = [
        el(0x0008_0016, b"UI", MR.as_bytes()),
        el(0x0008_0018, b"UI", ids.sop.as_bytes()),
        el(
            0x0008_0018,
            b"UI",
            m3dnode::store::uid::new_uid().as_bytes(),
        ),
        el(0x0008_0060, b"CS", b"MR"),
        el(0x0020_000D, b"UI", ids.study.as_bytes()),
        el(0x0020_000E, b"UI", ids.series.as_bytes()),
    ]
    .concat();
    let path = write(dir.path(), "twice.dcm", &part10(EXPLICIT_LE, &ids.sop, &ds));
    assert_refused(&send(&node, &path), "duplicate SOP UID", "tags must ascend");

    assert!(node.stored_files().is_empty(), "{:?}", node.stored_files());
    assert_eq!(instances(&node), 0);
    assert!(node.echo_ok());
    assert!(!node.log().contains("panicked"), "log:\n{}", node.log());
}

/// Puts `file` into a node's storage and index as an older release would have stored it, with
/// its series still `receiving` under rule `mr`, so that the next start queues a job for it.
/// `old_jobs_table`: the jobs table as releases before the attempt counter made it.
fn plant(dir: &Path, ids: &Ids, file: &[u8], old_jobs_table: bool) {
    let root = dir.join("var");
    let rel = format!("{}/{}/{}.dcm", ids.study, ids.series, ids.sop);
    std::fs::create_dir_all(root.join(&ids.study).join(&ids.series)).unwrap();
    std::fs::write(root.join(&rel), file).unwrap();
    let db = root.join("index.sqlite");
    if old_jobs_table {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, series_instance_uid TEXT NOT NULL,
                rule TEXT NOT NULL, state TEXT NOT NULL, version INTEGER NOT NULL,
                result_series_uid TEXT NOT NULL, result_sop_instance_uid TEXT NOT NULL,
                created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT,
                summary TEXT)",
        )
        .unwrap();
    }
    let index = m3dnode::store::Index::open(&db).unwrap();
    index
        .with(|c| {
            c.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,
                 series_instance_uid, modality, instance_number, transfer_syntax, path, size,
                 calling_ae, received_at)
                 VALUES (?1, ?2, ?3, ?4, 'MR', 1, ?5, ?6, ?7, 'OLD', 0)",
                rusqlite::params![
                    ids.sop,
                    MR,
                    ids.study,
                    ids.series,
                    if file.windows(22).any(|w| w == DEFLATED.as_bytes()) {
                        DEFLATED
                    } else {
                        EXPLICIT_LE
                    },
                    rel,
                    file.len() as i64
                ],
            )?;
            c.execute(
                "INSERT INTO series_work (series_instance_uid, study_instance_uid, calling_ae, rule, state, first_at, last_at)
                 VALUES (?1, ?2, 'OLD', 'mr', 'receiving', 0, 0)",
                rusqlite::params![ids.series, ids.study],
            )
        })
        .unwrap();
}

fn wait_for_job_end(node: &Node) -> (String, String) {
    assert!(
        wait_for(Duration::from_secs(60), || jobs(node)
            .first()
            .is_some_and(|(s, _)| s == "failed" || s == "done")),
        "job never ended: {:?}; log:\n{}",
        jobs(node),
        node.log()
    );
    jobs(node)[0].clone()
}

/// (b) A deeply nested file stored by an older release reaches a job: the job fails with the
/// reason, the node keeps running, and a restart does not crash either.
#[test]
fn deep_nesting_already_in_storage_fails_its_job_not_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let ids = Ids::new();
    plant(dir.path(), &ids, &deep_nesting(&ids, 2000), true);
    let node = Node::start_in(dir, &mr_node_config());
    let (state, error) = wait_for_job_end(&node);
    assert_eq!(state, "failed", "{error}");
    assert!(
        error.contains("refused before decoding") && error.contains("nested too deeply"),
        "{error}"
    );
    assert!(node.echo_ok(), "log:\n{}", node.log());
    let hwm = vm_hwm_kb(&node);
    eprintln!("VmHWM after the job on the deep nesting: {hwm} kB");
    let node = node.restart();
    std::thread::sleep(Duration::from_secs(2));
    assert!(node.echo_ok(), "log:\n{}", node.log());
    assert_eq!(jobs(&node).len(), 1, "{:?}", jobs(&node));
    assert_eq!(jobs(&node)[0].0, "failed");
    assert!(!node.log().contains("overflowed its stack"));
}

/// (e) A deflate bomb: refused on receive, and, already in storage, failing its job with a
/// clear message while the node's memory stays bounded.
#[test]
fn deflate_bomb_is_bounded_on_receive_and_in_jobs() {
    const BULK: usize = 1 << 30;
    let files = tempfile::tempdir().unwrap();
    let ids = Ids::new();
    let bomb = deflate_bomb(&ids, BULK);
    eprintln!(
        "deflate bomb: {} bytes inflating to {} bytes",
        bomb.len(),
        BULK
    );
    let path = write(files.path(), "bomb.dcm", &bomb);

    let node = Node::start(&mr_node_config());
    assert_refused(&send(&node, &path), "deflate bomb", "deflate bomb");
    assert_eq!(instances(&node), 0);
    let hwm = vm_hwm_kb(&node);
    eprintln!("VmHWM after receiving the deflate bomb: {hwm} kB");
    assert!(hwm < RSS_BOUND_KB, "VmHWM {hwm} kB");
    drop(node);

    let dir = tempfile::tempdir().unwrap();
    plant(dir.path(), &ids, &bomb, false);
    let node = Node::start_in(dir, &mr_node_config());
    let (state, error) = wait_for_job_end(&node);
    let hwm = vm_hwm_kb(&node);
    eprintln!("VmHWM after the job on the deflate bomb: {hwm} kB");
    assert!(hwm < RSS_BOUND_KB, "VmHWM {hwm} kB");
    assert_eq!(state, "failed", "{error}");
    assert!(error.contains("deflate bomb"), "{error}");
    assert!(node.echo_ok());
}

/// (c) A job during which the node dies every time (simulated with kill -9 while it runs) is
/// failed after three starts instead of being re-queued forever.
#[test]
fn job_that_keeps_killing_the_node_is_failed_after_three_starts() {
    let big = tempfile::tempdir().unwrap();
    write_big_sphere(big.path());
    let mut node = Node::start(&rule_config("phantom", "preset = \"1000\"\n"));
    storescu(&node, &[big.path().to_path_buf()]);
    // (state, started_at) of the job: a new start shows as a new started_at.
    let job = |node: &Node| -> Option<(String, f64)> {
        node.index()
            .with(|c| {
                c.query_row(
                    "SELECT state, started_at FROM jobs ORDER BY id LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get::<_, Option<f64>>(1)?.unwrap_or(0.0))),
                )
            })
            .ok()
    };
    let mut last_start = 0.0;
    for start in 1..=3 {
        assert!(
            wait_for(Duration::from_secs(60), || job(&node)
                .is_some_and(|(s, t)| s == "running" && t > last_start)),
            "start {start}: {:?}; log:\n{}",
            job(&node),
            node.log()
        );
        last_start = job(&node).map_or(0.0, |(_, t)| t);
        // The process dies while the job runs (as a stack overflow or an OOM kill would).
        node = node.restart();
    }
    assert!(
        wait_for(Duration::from_secs(10), || jobs(&node)
            .first()
            .is_some_and(|(s, _)| s == "failed")),
        "{:?}; log:\n{}",
        jobs(&node),
        node.log()
    );
    let (_, error) = jobs(&node)[0].clone();
    assert!(
        error.contains("the node stopped 3 times while running this job")
            && error.contains("not retried"),
        "{error}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let attempts: i64 = node
        .index()
        .with(|c| c.query_row("SELECT attempts FROM jobs", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(attempts, 3);
    assert_eq!(jobs(&node)[0].0, "failed", "not started again");
    assert!(node.echo_ok());
}
