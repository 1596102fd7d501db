//! Cost of each output format (issue 15 figures): the CT head test series reconstructed at
//! the bone and skin presets (`recon::iso::reconstruct`, default options, as the node does),
//! then for each format the time to build its objects (`encap::build_results` with that one
//! format, both structures) and their encoded Part 10 size, each also as a ratio to the
//! Encapsulated STL. Plain `harness = false`, like the other benches.
//!
//! Run with `cargo bench --bench formats`; `FORMATS_BENCH_REPS` sets the repetitions
//! (default 7; the median is reported).
//!
//! Figures (2026-12-04, 2 shared cores; bone 62,326 + skin 32,400 triangles; build time
//! includes reading the source header and encoding the objects in memory, not writing):
//!
//! | format | objects | build | x STL | bytes | x STL |
//! |---|---|---|---|---|---|
//! | stl | 2 | 2.8 ms | 1.00 | 4,761,058 | 1.00 |
//! | obj (+ mtl) | 4 | 50.9 ms | 18.3 | 6,903,768 | 1.45 |
//! | surface-seg | 1 | 1.4 ms | 0.49 | 2,281,250 | 0.48 |
//!
//! OBJ is text (shortest round-trip decimal floats, plus a normal per vertex), hence its
//! time; the Surface Segmentation shares vertices and stores binary float32 and 32-bit
//! indices, hence half the bytes of STL, which repeats each vertex in every facet.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use m3dnode::encap::{self, Format, ResultIds, StructureMesh};
use m3dnode::recon::iso::{self, IsoOptions, Preset};
use m3dnode::volume::{self, AssembleOptions};

fn main() {
    let reps: usize = std::env::var("FORMATS_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
        .max(1);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/series/ct_head_axial_small");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("test series")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    let vol = volume::assemble(&files, &AssembleOptions::default()).expect("assemble");
    let mut results = Vec::new();
    for preset in [Preset::CtBone, Preset::CtSkin] {
        let r = iso::reconstruct(
            &vol,
            &IsoOptions {
                preset,
                ..Default::default()
            },
            &mut |_| {},
        )
        .expect("reconstruct");
        results.push(r);
    }
    let labels = ["Bone", "Skin"];
    let colours = ["#e3dac9", "#f1c27d"];
    let structures: Vec<StructureMesh<'_>> = results
        .iter()
        .enumerate()
        .map(|(i, r)| StructureMesh {
            label: labels[i],
            description: &r.description,
            colour: colours[i].parse().expect("colour"),
            opacity: if i == 0 { 1.0 } else { 0.5 },
            mesh: &r.mesh,
            metrics: &r.metrics,
            comment: format!("triangles={}", r.metrics.triangles),
            algorithm: "m3dnode iso threshold",
        })
        .collect();
    for (l, r) in labels.iter().zip(&results) {
        println!(
            "{l}: {} vertices, {} triangles",
            r.mesh.vertices.len(),
            r.mesh.triangle_count()
        );
    }
    let ids = ResultIds {
        series_instance_uid: Some("2.25.1".into()),
        sop_instance_uid: Some("2.25.2".into()),
        instance_number: 1,
    };
    let mut rows = Vec::new();
    for format in [Format::Stl, Format::Obj, Format::SurfaceSeg] {
        let mut times = Vec::with_capacity(reps);
        let mut built = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            built = encap::build_results(&vol, &structures, &[format], &ids).expect("build");
            times.push(t.elapsed());
        }
        times.sort();
        let median: Duration = times[reps / 2];
        let mut bytes = 0usize;
        let mut parts = Vec::new();
        for b in &built {
            let mut buf = Vec::new();
            b.object.write_all(&mut buf).expect("encode");
            parts.push(format!("{:?}={}", b.kind, buf.len()));
            bytes += buf.len();
        }
        rows.push((format, median, bytes, built.len(), parts));
    }
    let (stl_time, stl_bytes) = (rows[0].1.as_secs_f64(), rows[0].2 as f64);
    println!(
        "{:<12} {:>8} {:>11} {:>9} {:>12} {:>9}  objects",
        "format", "objects", "build ms", "x STL", "bytes", "x STL"
    );
    for (format, t, bytes, n, parts) in &rows {
        println!(
            "{:<12} {:>8} {:>11.2} {:>9.2} {:>12} {:>9.2}  {}",
            format.to_string(),
            n,
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() / stl_time,
            bytes,
            *bytes as f64 / stl_bytes,
            parts.join(" ")
        );
    }
}
