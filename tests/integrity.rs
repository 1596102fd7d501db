//! Storage integrity with the real binary: one node per storage root, no stored file
//! without an index row when the index cannot be written, and character sets carried
//! through to the result byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Index rows (SOP Instance UID, relative path) of every instance.
fn rows(node: &Node) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = node
        .index()
        .with(|c| {
            c.prepare("SELECT sop_instance_uid, path FROM instances")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .unwrap();
    rows.sort();
    rows
}

/// Every stored file has an index row and every row a file.
fn assert_index_matches_files(node: &Node) {
    let root = node.storage();
    let mut indexed: Vec<PathBuf> = rows(node).iter().map(|(_, p)| root.join(p)).collect();
    indexed.sort();
    assert_eq!(node.stored_files(), indexed, "files vs index rows");
}

#[test]
fn a_second_node_on_the_same_storage_is_refused_and_leaves_the_first_alone() {
    let node = Node::start("");
    let storage = node.storage();
    // As an instance being received by the first node leaves it.
    let in_flight = storage.join("tmp").join("rx-in-flight.part");
    std::fs::write(&in_flight, b"half an instance").unwrap();

    let log = node.dir.path().join("second.log");
    let mut second = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["serve", "--config"])
        .arg(&node.config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut second, Duration::from_secs(30));
    if status.is_none() {
        let _ = second.kill();
        let _ = second.wait();
    }
    let message = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "the second node must refuse to start; stderr: {message}"
    );
    assert!(
        message.contains(&storage.display().to_string())
            && message.contains(&format!("PID {}", node.child.id()))
            && message.contains("in use by another m3dnode"),
        "{message}"
    );
    assert!(
        in_flight.exists(),
        "the second node removed the first one's temp file"
    );

    // The first node goes on storing.
    let series = write_mr_series(&node.dir.path().join("in"), 2, 8, 8);
    storescu(&node, &series);
    assert_eq!(node.stored_files().len(), 2);
    assert_index_matches_files(&node);
}

/// The index holds no row and the tree no file for `sop`.
fn assert_not_stored(node: &Node, sop: &str) {
    assert!(
        rows(node).iter().all(|(s, _)| s != sop),
        "refused instance indexed"
    );
    assert!(
        node.stored_files()
            .iter()
            .all(|f| !f.ends_with(format!("{sop}.dcm"))),
        "refused instance left in the storage tree: {:?}",
        node.stored_files()
    );
}

fn sop_of(path: &Path) -> String {
    let obj = dicom_object::open_file(path).unwrap();
    obj.meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string()
}

#[test]
fn an_instance_whose_index_row_cannot_be_written_is_refused_and_not_left_behind() {
    let mut node = Node::start("");
    let series = write_mr_series(&node.dir.path().join("in"), 2, 8, 8);
    storescu(&node, &series[..1]);
    assert_index_matches_files(&node);

    // Another connection holds the index's write lock longer than the node's busy timeout
    // (10 s), as a full disk or a stuck writer would make every index write fail.
    let blocker = rusqlite::Connection::open(node.storage().join("index.sqlite")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let out = run(Command::new(tool("storescu"))
        .args(["-aec", "M3DNODE", "-v", "127.0.0.1", &node.port()])
        .arg(&series[1]));
    let t = text(&out);
    assert!(
        t.contains("Refused: OutOfResources"),
        "expected 0xA700: {t}"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let refused = sop_of(&series[1]);
    assert_not_stored(&node, &refused);
    assert_index_matches_files(&node);

    // A re-send is stored and indexed.
    storescu(&node, &series[1..]);
    assert!(rows(&node).iter().any(|(s, _)| *s == refused));
    assert_eq!(node.stored_files().len(), 2);
    assert_index_matches_files(&node);

    // After a clean stop the next start finds the index matching the files.
    assert!(node.terminate().success());
    let node = node.restart();
    assert_index_matches_files(&node);
    assert_eq!(rows(&node).len(), 2);
}
