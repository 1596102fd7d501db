//! The whole loop with real peers: DCMTK storescu -> node -> (series complete, job,
//! Encapsulated STL) -> outbox -> DCMTK storescp; restarts, kills and a destination that is
//! down.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const CT: &str = "ct_head_axial_small";

fn series(name: &str) -> PathBuf {
    testdata().join("series").join(name)
}

fn node_for(dest: &Destination, extra_node: &str, rule_extra: &str) -> Node {
    node_with_quiet(dest, extra_node, rule_extra, 0.5)
}

/// `quiet` must exceed any pause inside a series' transfer, or the series completes early
/// (and is then rebuilt for its late instances).
fn node_with_quiet(dest: &Destination, extra_node: &str, rule_extra: &str, quiet: f64) -> Node {
    Node::start(&format!(
        "{extra_node}[series]\nquiet_seconds = {quiet}\n[delivery]\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.5\ntimeout_seconds = 5\n{}[[rules]]\nname = \"ct bone\"\nmodality = \"CT\"\npreset = \"ct-bone\"\nsend_to = [\"{}\"]\n{rule_extra}",
        dest.peer_toml(),
        dest.aet
    ))
}

fn attr(path: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    obj.element(tag)
        .map(|e| e.to_str().unwrap().trim_end_matches('\0').to_string())
        .unwrap_or_default()
}

fn dciodvfy_clean(path: &Path) {
    let out = run(Command::new(tool("dciodvfy")).arg(path));
    let t = text(&out);
    assert!(
        !t.lines()
            .any(|l| l.contains("Error") || l.contains("Warning")),
        "dciodvfy {}:\n{t}",
        path.display()
    );
}

#[test]
fn received_series_comes_back_as_encapsulated_stl_in_its_study() {
    use dicom_dictionary_std::tags;
    let dest = Destination::up("DEST");
    let node = node_for(&dest, "", "");
    storescu(&node, &[series(CT)]);
    // An MR series matches no rule: stored, not processed.
    storescu(&node, &[series("mr_brainmask_axial_2mm")]);
    assert!(
        wait_for(Duration::from_secs(60), || dest.stores() >= 1),
        "no result; log:\n{}",
        node.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dest.stores(), 1, "exactly one result");
    assert!(wait_for(Duration::from_secs(30), || outbox(&node)
        .iter()
        .all(|(s, _)| s == "sent")));
    let result = &dest.files()[0];
    dciodvfy_clean(result);
    let source = std::fs::read_dir(series(CT))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert_eq!(
        attr(result, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.104.3"
    );
    assert_eq!(attr(result, tags::MODALITY), "M3D");
    assert_eq!(
        attr(result, tags::STUDY_INSTANCE_UID),
        attr(&source, tags::STUDY_INSTANCE_UID)
    );
    assert_eq!(
        attr(result, tags::FRAME_OF_REFERENCE_UID),
        attr(&source, tags::FRAME_OF_REFERENCE_UID)
    );
    assert_ne!(
        attr(result, tags::SERIES_INSTANCE_UID),
        attr(&source, tags::SERIES_INSTANCE_UID)
    );
    let obj = dicom_object::open_file(result).unwrap();
    let refs = obj
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let ref_series = refs[0]
        .element(tags::SERIES_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        ref_series.trim_end_matches('\0'),
        attr(&source, tags::SERIES_INSTANCE_UID)
    );
    // The result is stored and indexed like any instance.
    let sop = attr(result, tags::SOP_INSTANCE_UID);
    assert!(node.index().get(&sop).unwrap().is_some());
    assert_eq!(jobs(&node).len(), 1, "the unrouted MR series made no job");
    assert!(node.log().contains("series matches no rule"));
    assert_eq!(outbox(&node), vec![("sent".to_string(), 1)]);
    // `m3dnode jobs` shows it.
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["jobs", "--config"])
        .arg(&node.config));
    assert!(
        text(&out).contains("done") && text(&out).contains("watertight yes"),
        "{}",
        text(&out)
    );
}

#[test]
fn destination_down_then_up_is_delivered_once() {
    let mut dest = Destination::down("DEST");
    let node = node_for(&dest, "", "");
    storescu(&node, &[series(CT)]);
    assert!(
        wait_for(Duration::from_secs(60), || outbox(&node)
            .first()
            .is_some_and(|(_, a)| *a >= 2)),
        "no failed attempts; log:\n{}",
        node.log()
    );
    assert!(node.log().contains("delivery failed; will retry"));
    dest.start();
    assert!(
        wait_for(Duration::from_secs(30), || dest.stores() >= 1),
        "not delivered after the destination came up; log:\n{}",
        node.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dest.stores(), 1);
    assert!(wait_for(Duration::from_secs(10), || outbox(&node)[0].0 == "sent"));
}

#[test]
fn failed_delivery_is_visible_and_can_be_retried_by_hand() {
    let mut dest = Destination::down("DEST");
    let node = node_for(&dest, "", "");
    // Replace the delivery section: give up after one second.
    let cfg = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("[delivery]\n", "[delivery]\ndeadline_seconds = 1.0\n");
    std::fs::write(&node.config, cfg).unwrap();
    let node = node.restart();
    storescu(&node, &[series(CT)]);
    assert!(
        wait_for(Duration::from_secs(60), || outbox(&node)
            .first()
            .is_some_and(|(s, _)| s == "failed")),
        "log:\n{}",
        node.log()
    );
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["jobs", "--config"])
        .arg(&node.config));
    assert!(text(&out).contains("failed"), "{}", text(&out));
    dest.start();
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["retry", "--all-failed", "--config"])
        .arg(&node.config));
    assert!(
        text(&out).contains("1 deliveries queued again"),
        "{}",
        text(&out)
    );
    assert!(
        wait_for(Duration::from_secs(30), || dest.stores() == 1),
        "log:\n{}",
        node.log()
    );
    assert!(wait_for(Duration::from_secs(10), || outbox(&node)[0].0 == "sent"));
    assert_eq!(dest.stores(), 1);
}

#[test]
fn kill_during_delivery_and_reconstruction_delivers_exactly_once() {
    // During delivery: the destination is down, the result waits in the outbox, kill -9.
    let mut dest = Destination::down("DEST");
    let mut node = node_for(&dest, "", "");
    storescu(&node, &[series(CT)]);
    assert!(wait_for(Duration::from_secs(60), || outbox(&node)
        .first()
        .is_some_and(|(_, a)| *a >= 1)));
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    dest.start();
    let node = node.restart();
    assert!(
        wait_for(Duration::from_secs(30), || dest.stores() >= 1),
        "log:\n{}",
        node.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dest.stores(), 1);

    // During reconstruction: a larger series, killed while its job runs.
    let big = tempfile::tempdir().unwrap();
    write_big_sphere(big.path());
    let dest2 = Destination::up("DEST2");
    let mut node = Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n{}[[rules]]\nname = \"phantom\"\nmodality = \"MR\"\npreset = \"1000\"\nsend_to = [\"DEST2\"]\n",
        dest2.peer_toml()
    ));
    storescu(&node, &[big.path().to_path_buf()]);
    assert!(
        wait_for(Duration::from_secs(60), || jobs(&node)
            .first()
            .is_some_and(|(s, _)| s == "running")),
        "job never ran; log:\n{}",
        node.log()
    );
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    assert_eq!(dest2.stores(), 0, "killed before the result was sent");
    let node = node.restart();
    assert!(
        wait_for(Duration::from_secs(120), || dest2.stores() >= 1),
        "log:\n{}",
        node.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dest2.stores(), 1);
    assert!(
        node.log().contains("re-queued jobs interrupted"),
        "log:\n{}",
        node.log()
    );
    assert_eq!(jobs(&node).len(), 1);
}

#[test]
fn two_interleaved_series_of_one_study_give_two_results() {
    let tmp = tempfile::tempdir().unwrap();
    let a: Vec<PathBuf> = copy_as_new_series(&series(CT), &tmp.path().join("a"));
    let b: Vec<PathBuf> = copy_as_new_series(&series(CT), &tmp.path().join("b"));
    let dest = Destination::up("DEST");
    let node = node_with_quiet(&dest, "", "", 4.0);
    // Alternate associations: half of A, half of B, rest of A, rest of B.
    let (a1, a2) = a.split_at(a.len() / 2);
    let (b1, b2) = b.split_at(b.len() / 2);
    for part in [a1, b1, a2, b2] {
        storescu(&node, part);
    }
    assert!(
        wait_for(Duration::from_secs(90), || dest.files().len() >= 2),
        "log:\n{}",
        node.log()
    );
    assert!(wait_for(Duration::from_secs(30), || {
        let o = outbox(&node);
        o.len() == 2 && o.iter().all(|(s, _)| s == "sent")
    }));
    assert_eq!(dest.stores(), 2);
    let sources: std::collections::BTreeSet<String> = dest
        .files()
        .iter()
        .map(|f| {
            let obj = dicom_object::open_file(f).unwrap();
            let refs = obj
                .element(dicom_dictionary_std::tags::REFERENCED_SERIES_SEQUENCE)
                .unwrap()
                .items()
                .unwrap();
            refs[0]
                .element(dicom_dictionary_std::tags::SERIES_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string()
        })
        .collect();
    assert_eq!(
        sources.len(),
        2,
        "each result references its own source series"
    );
    assert_eq!(jobs(&node).len(), 2);
}

#[test]
fn late_instance_rebuilds_in_the_same_result_series() {
    use dicom_dictionary_std::tags;
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_as_new_series(&series(CT), tmp.path());
    let dest = Destination::up("DEST");
    let node = node_for(&dest, "", "");
    let (first, last) = files.split_at(files.len() - 1);
    storescu(&node, first);
    assert!(
        wait_for(Duration::from_secs(60), || dest.stores() >= 1),
        "log:\n{}",
        node.log()
    );
    storescu(&node, last);
    // storescp logs the request before it has written the file: wait for the files.
    assert!(
        wait_for(Duration::from_secs(60), || dest.files().len() >= 2),
        "log:\n{}",
        node.log()
    );
    // Read the files only once the destination has acknowledged them (written in full).
    assert!(wait_for(Duration::from_secs(30), || {
        let o = outbox(&node);
        o.len() == 2 && o.iter().all(|(s, _)| s == "sent")
    }));
    let results = dest.files();
    assert_eq!(results.len(), 2);
    assert_eq!(
        attr(&results[0], tags::SERIES_INSTANCE_UID),
        attr(&results[1], tags::SERIES_INSTANCE_UID)
    );
    let mut numbers: Vec<String> = results
        .iter()
        .map(|r| attr(r, tags::INSTANCE_NUMBER))
        .collect();
    numbers.sort();
    assert_eq!(numbers, vec!["1", "2"]);
}

#[test]
fn a_series_that_cannot_be_reconstructed_fails_its_job_and_the_node_keeps_running() {
    let dest = Destination::up("DEST");
    let node = Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n{}[[rules]]\nname = \"mr head\"\nmodality = \"MR\"\nsend_to = [\"DEST\"]\n",
        dest.peer_toml()
    ));
    storescu(&node, &[series("mr_t1_shuffled_missing_2mm")]);
    assert!(
        wait_for(Duration::from_secs(60), || jobs(&node)
            .first()
            .is_some_and(|(s, _)| s == "failed")),
        "log:\n{}",
        node.log()
    );
    let (_, error) = &jobs(&node)[0];
    assert!(
        error.contains("missing") && error.contains("19.500 mm"),
        "{error}"
    );
    assert!(outbox(&node).is_empty());
    assert!(node.echo_ok());
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["jobs", "--config"])
        .arg(&node.config));
    assert!(
        text(&out).contains("failed") && text(&out).contains("missing"),
        "{}",
        text(&out)
    );
}

#[test]
fn expected_instances_complete_a_series_without_waiting() {
    let dest = Destination::up("DEST");
    // A quiet time far beyond the test: only the count can complete the series.
    let node = Node::start(&format!(
        "[series]\nquiet_seconds = 3600\n{}[[rules]]\nname = \"ct\"\nmodality = \"CT\"\nexpected_instances = 54\nsend_to = [\"DEST\"]\n",
        dest.peer_toml()
    ));
    storescu(&node, &[series(CT)]);
    assert!(
        wait_for(Duration::from_secs(60), || dest.stores() == 1),
        "log:\n{}",
        node.log()
    );
}

#[test]
fn orthanc_round_trip() {
    use common::orthanc::Orthanc;
    let node_port = free_port();
    let orthanc = Orthanc::start("M3DNODE", node_port);
    let node = Node::start(&format!(
        "listen = \"127.0.0.1:{node_port}\"\n[series]\nquiet_seconds = 3\n[[peers]]\nae_title = \"ORTHANC\"\naddress = \"127.0.0.1:{}\"\n[[rules]]\nname = \"ct bone\"\nmodality = \"CT\"\nsend_to = [\"ORTHANC\"]\n",
        orthanc.dicom_port
    ));
    let (study, count) = orthanc.upload_dir(&series(CT));
    assert_eq!(count, 54);
    orthanc.push_study_to("NODE", &study);
    assert_eq!(
        node.index().count().unwrap(),
        54,
        "Orthanc's push was stored"
    );
    let m3d = orthanc
        .wait_for_modality(&study, "M3D", Duration::from_secs(90))
        .unwrap_or_else(|| {
            panic!(
                "no M3D series in the study; node log:\n{}\nOrthanc log:\n{}",
                node.log(),
                orthanc.log_tail(40)
            )
        });
    let described = m3d["MainDicomTags"]["SeriesDescription"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The series is named by its structures' labels (each object's Document Title says
    // what its surface is: "Bone surface, iso 300 HU").
    assert_eq!(described, "3D model: Bone", "{m3d}");
    assert_eq!(
        orthanc.series_of_study(&study).len(),
        2,
        "source series and mesh series in one study"
    );
}

/// Stores one file over a raw association and then aborts it (A-ABORT) instead of releasing.
fn store_then_abort(node: &Node, file: &Path) {
    use dicom_ul::pdu::PDataValueType;
    use m3dnode::net::dimse;
    let f = m3dnode::net::scu::OutgoingFile::open(file).unwrap();
    let mut assoc = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("ABORTER")
        .called_ae_title("M3DNODE")
        .with_presentation_context(f.sop_class_uid.as_str(), vec![f.transfer_syntax.as_str()])
        .establish(node.addr)
        .unwrap();
    let pc = assoc.presentation_contexts()[0].id;
    let max = assoc.acceptor_max_pdu_length();
    let cmd = dimse::c_store_rq(1, &f.sop_class_uid, &f.sop_instance_uid).encode();
    let data = data_set(file);
    for pdu in dimse::pdata_pdus(pc, PDataValueType::Command, &cmd, max, true)
        .into_iter()
        .chain(dimse::pdata_pdus(
            pc,
            PDataValueType::Data,
            &data,
            max,
            true,
        ))
    {
        assoc.send(&pdu).unwrap();
    }
    let rsp = assoc.receive().unwrap();
    assert!(matches!(rsp, dicom_ul::Pdu::PData { .. }), "{rsp:?}");
    assoc.abort().unwrap();
}

#[test]
fn aborted_associations_follow_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_as_new_series(&series(CT), tmp.path());
    for (setting, kept) in [("keep", true), ("drop", false)] {
        let node = Node::start(&format!(
            "[series]\nquiet_seconds = 3600\naborted_associations = \"{setting}\"\n"
        ));
        store_then_abort(&node, &files[0]);
        let sop = m3dnode::net::scu::OutgoingFile::open(&files[0])
            .unwrap()
            .sop_instance_uid;
        if kept {
            std::thread::sleep(Duration::from_millis(500));
            assert!(node.index().get(&sop).unwrap().is_some(), "{setting}");
            assert_eq!(node.stored_files().len(), 1);
        } else {
            assert!(
                wait_for(Duration::from_secs(10), || node
                    .index()
                    .get(&sop)
                    .unwrap()
                    .is_none()),
                "{setting}: log\n{}",
                node.log()
            );
            assert!(node.stored_files().is_empty());
            assert!(
                node.log()
                    .contains("dropping the instances of an aborted association")
            );
        }
    }
}

/// The model pipeline through the whole loop: storescu -> six views from the tiny models on
/// real ONNX Runtime -> NeuS (CPU, a few steps) -> Encapsulated STL -> storescp, placed on
/// the key slice in the source's Frame of Reference.
#[test]
fn mvdiffusion_rule_returns_a_surface_from_generated_views() {
    use dicom_dictionary_std::tags;
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: run the tests with scripts/test (it installs onnxruntime==1.31.1)"
    );
    let model = testdata().join("models").join("tiny");
    let dest = Destination::up("DEST");
    let node = Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n[delivery]\nretry_initial_seconds = 0.2\ntimeout_seconds = 5\n\
         [onnxruntime]\ndevice = \"cpu\"\n[neus]\ndevice = \"cpu\"\nmc_resolution = 48\n{}\
         [[rules]]\nname = \"views\"\nmodality = \"CT\"\npipeline = \"mvdiffusion\"\nmodel = \"{}\"\n\
         window = \"ct-bone\"\ndiffusion_steps = 2\nneus_profile = \"fast\"\nneus_steps = 30\nsend_to = [\"{}\"]\n",
        dest.peer_toml(),
        model.display(),
        dest.aet
    ));
    storescu(&node, &[series(CT)]);
    assert!(
        wait_for(Duration::from_secs(240), || outbox(&node)
            .first()
            .is_some_and(|(s, _)| s == "sent")),
        "no result; jobs {:?}; log:\n{}",
        jobs(&node),
        node.log()
    );
    let js = jobs(&node);
    assert_eq!(js.len(), 1);
    assert_eq!(js[0].0, "done");
    assert!(js[0].1.contains("six generated views"), "{js:?}");
    let log = node.log();
    assert!(
        log.contains("surface reconstructed from six generated views"),
        "{log}"
    );
    let result = &dest.files()[0];
    dciodvfy_clean(result);
    let source_dir = series(CT);
    let source = std::fs::read_dir(&source_dir)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert_eq!(attr(result, tags::MODALITY), "M3D");
    assert_eq!(
        attr(result, tags::FRAME_OF_REFERENCE_UID),
        attr(&source, tags::FRAME_OF_REFERENCE_UID)
    );
    // The mesh is watertight and lies where the key slice is: its centre inside the
    // source volume's extent.
    let obj = dicom_object::open_file(result).unwrap();
    let mesh = m3dnode::mesh::read_stl(&m3dnode::encap::extract_stl(&obj).unwrap()).unwrap();
    let m = m3dnode::mesh::metrics(&mesh);
    assert!(m.triangles > 0 && m.watertight, "{m:?}");
    let files = m3dnode::volume::scan_dir(&source_dir).unwrap();
    let vol = m3dnode::volume::assemble(&files[0].files, &Default::default()).unwrap();
    let [c, r, s] = vol.dims.map(|d| d as f64 - 1.0);
    let (lo, hi) = (
        vol.voxel_to_patient(0.0, 0.0, 0.0),
        vol.voxel_to_patient(c, r, s),
    );
    for a in 0..3 {
        let centre = (m.bbox_min[a] + m.bbox_max[a]) * 0.5;
        let (l, h) = (lo[a].min(hi[a]), lo[a].max(hi[a]));
        assert!(
            centre >= l - 1.0 && centre <= h + 1.0,
            "axis {a}: mesh centre {centre:.1} outside the volume {l:.1}..{h:.1}"
        );
    }
}
