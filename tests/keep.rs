//! Which pieces of a surface are kept (issue 15 item 5) and whether the surface's summary is
//! true of it (item 6): a CT head phantom with a skull cap, a separate mandible, a tiny bone
//! fragment and a head-rest outside the body; single-slice series; integer data at an integer
//! iso value; the real CT head test series.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use m3dnode::mesh::{self, Mesh};
use m3dnode::recon::ReconError;
use m3dnode::recon::iso::{self, DropReason, IsoOptions, IsoResult, Keep, Preset, Stage};
use m3dnode::volume::{self, AssembleOptions, BodyMask, Rescale, Volume, Voxels};

/// HU gradient across every boundary of the phantom: 450 HU/mm keeps both samples of every
/// crossed edge (1 mm apart) on the linear ramp, so marching cubes finds the analytic
/// boundary up to the rounding of stored values.
const SLOPE_HU_PER_MM: f64 = 450.0;

/// Head-rest: a bone-valued box in the air behind the head (LPS: +y posterior).
const SLAB_LO: [f64; 3] = [-20.2, 40.3, -15.4];
const SLAB_HI: [f64; 3] = [20.2, 45.3, 15.4];

fn sphere(c: [f64; 3], r: f64) -> impl Fn([f64; 3]) -> f64 {
    move |p| r - ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2)).sqrt()
}

/// Signed distance to an axis-aligned box, positive inside.
fn boxed(lo: [f64; 3], hi: [f64; 3]) -> impl Fn([f64; 3]) -> f64 {
    move |p| {
        let d: [f64; 3] = std::array::from_fn(|a| (lo[a] - p[a]).max(p[a] - hi[a]));
        let outside = d.iter().map(|x| x.max(0.0).powi(2)).sum::<f64>().sqrt();
        let inside = d[0].max(d[1]).max(d[2]).min(0.0);
        -(outside + inside)
    }
}

/// First-order distance to an ellipsoid, positive inside.
fn ellipsoid(c: [f64; 3], a: [f64; 3]) -> impl Fn([f64; 3]) -> f64 {
    move |p| {
        let q: [f64; 3] = std::array::from_fn(|i| (p[i] - c[i]) / a[i]);
        let g = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt().max(1e-9);
        let grad: [f64; 3] = std::array::from_fn(|i| q[i] / (a[i] * g));
        (1.0 - g) / (grad[0] * grad[0] + grad[1] * grad[1] + grad[2] * grad[2]).sqrt()
    }
}

/// A CT volume (I16 stored values, intercept -1024) on a 1 mm grid with voxel (0, 0, 0) at
/// `origin`, `hu(p)` sampled at every voxel centre.
fn ct_volume(dims: [usize; 3], origin: [f64; 3], hu: impl Fn([f64; 3]) -> f64) -> Volume {
    let mut v = Vec::with_capacity(dims.iter().product());
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let p = [
                    origin[0] + i as f64,
                    origin[1] + j as f64,
                    origin[2] + k as f64,
                ];
                v.push((hu(p) + 1024.0).round() as i16);
            }
        }
    }
    Volume {
        dims,
        voxels: Voxels::I16(v),
        rescale: Rescale {
            slope: 1.0,
            intercept: -1024.0,
        },
        affine: [
            [1.0, 0.0, 0.0, origin[0]],
            [0.0, 1.0, 0.0, origin[1]],
            [0.0, 0.0, 1.0, origin[2]],
        ],
        spacing: [1.0; 3],
        study_instance_uid: "1.2.3".into(),
        series_instance_uid: "1.2.3.4".into(),
        frame_of_reference_uid: None,
        modality: "CT".into(),
        sources: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Soft-tissue ellipsoid (40 HU) in air (-1000 HU) holding a skull cap (a spherical shell
/// open at the bottom, 800 HU), a separate "mandible" (a bone sphere 8 mm below the cap's
/// rim) and a tiny bone fragment; the head-rest slab lies 4 mm behind the skin, in the air.
fn head_phantom() -> Volume {
    let soft = ellipsoid([0.0, -4.0, 0.0], [40.0, 40.0, 36.0]);
    let outer = sphere([0.0, -4.0, 6.0], 24.0);
    let inner = sphere([0.0, -4.0, 6.0], 19.0);
    // The cap: between the spheres and above z = -6 (the foramen side is open, so the
    // inner and outer surfaces are one piece, as in a real skull).
    let cap = move |p: [f64; 3]| outer(p).min(-inner(p)).min(p[2] + 6.0);
    let mandible = sphere([0.0, -4.0, -20.0], 6.0);
    let fragment = sphere([25.0, -4.0, -20.0], 1.5);
    let slab = boxed(SLAB_LO, SLAB_HI);
    let ramp = |d: f64, at: f64, lo: f64, hi: f64| (at + SLOPE_HU_PER_MM * d).clamp(lo, hi);
    ct_volume([96, 100, 80], [-48.0, -48.0, -40.0], move |p| {
        let bone = cap(p).max(mandible(p)).max(fragment(p)).max(slab(p));
        ramp(soft(p), -300.0, -1000.0, 40.0).max(ramp(bone, 300.0, -1000.0, 800.0))
    })
}

fn raw(keep: Option<Keep>) -> IsoOptions {
    IsoOptions {
        preset: Preset::CtBone,
        keep,
        taubin: None,
        simplify: None,
        ..Default::default()
    }
}

/// Number of connected pieces of a mesh.
fn pieces(m: &Mesh) -> usize {
    mesh::connected_components(m)
        .iter()
        .max()
        .map_or(0, |c| c + 1)
}

fn reasons(r: &IsoResult) -> Vec<DropReason> {
    r.dropped.iter().map(|d| d.reason).collect()
}

#[test]
fn inside_body_keeps_skull_and_mandible_and_drops_the_head_rest() {
    let vol = head_phantom();
    let mut stages = Vec::new();
    let results = iso::reconstruct_all(
        &vol,
        &[
            raw(None),
            raw(Some(Keep::Largest)),
            raw(Some(Keep::All)),
            IsoOptions {
                min_component_mm3: 0.0,
                ..raw(Some(Keep::All))
            },
        ],
        &mut |n, s| stages.push((n, s)),
    )
    .unwrap();
    assert_eq!(results.len(), 4);
    assert!(stages.contains(&(3, Stage::Cleanup)), "{stages:?}");

    // Default for bone: inside the body. Cap + mandible kept; slab outside, fragment small.
    let inside = &results[0];
    assert_eq!(inside.keep, Keep::InsideBody);
    assert_eq!(pieces(&inside.mesh), 2, "{:?}", inside.dropped);
    assert!(inside.metrics.watertight && inside.metrics.manifold);
    assert_eq!(inside.metrics.degenerate_triangles, 0);
    assert_eq!(
        reasons(inside),
        [DropReason::OutsideBody, DropReason::Small],
        "{:?}",
        inside.dropped
    );
    let slab = &inside.dropped[0];
    let exact: f64 = (0..3).map(|a| SLAB_HI[a] - SLAB_LO[a]).product();
    let centre: [f64; 3] = std::array::from_fn(|a| 0.5 * (SLAB_LO[a] + SLAB_HI[a]));
    assert!(
        (slab.volume_mm3 - exact).abs() / exact < 0.03,
        "head-rest {:.0} mm3 vs {exact:.0}",
        slab.volume_mm3
    );
    for a in 0..3 {
        assert!(
            (slab.centre_mm[a] - centre[a]).abs() < 1.0,
            "head-rest centre {:?} vs {centre:?}",
            slab.centre_mm
        );
    }
    let fragment = &inside.dropped[1];
    let exact = 4.0 / 3.0 * PI * 1.5f64.powi(3);
    assert!(
        fragment.volume_mm3 < iso::DEFAULT_MIN_COMPONENT_MM3
            && (fragment.volume_mm3 - exact).abs() / exact < 0.25,
        "{fragment:?}"
    );
    assert!((fragment.centre_mm[0] - 25.0).abs() < 1.0, "{fragment:?}");
    // The mandible is in the kept mesh: something below the cap's rim (z < -6).
    assert!(inside.metrics.bbox_min[2] < -25.0, "{:?}", inside.metrics);
    assert!(inside.metrics.bbox_max[1] < 40.0, "{:?}", inside.metrics);

    // Largest: the cap only.
    let largest = &results[1];
    assert_eq!(largest.keep, Keep::Largest);
    assert_eq!(pieces(&largest.mesh), 1);
    assert_eq!(reasons(largest), [DropReason::NotLargest; 3]);
    assert!(largest.metrics.bbox_min[2] > -7.0, "{:?}", largest.metrics);

    // All: cap, mandible and head-rest; the fragment is still below the minimum size.
    let all = &results[2];
    assert_eq!(pieces(&all.mesh), 3);
    assert_eq!(reasons(all), [DropReason::Small]);
    assert!(all.metrics.bbox_max[1] > 45.0, "{:?}", all.metrics);
    // ... and without a minimum size, the fragment too.
    assert_eq!(pieces(&results[3].mesh), 4);
    assert!(results[3].dropped.is_empty());

    // Same volumes as the single-structure entry point.
    let one = iso::reconstruct(&vol, &raw(None), &mut |_| {}).unwrap();
    assert_eq!(one.mesh, inside.mesh);
    assert_eq!(one.dropped, inside.dropped);
}

#[test]
fn body_mask_is_the_soft_tissue_with_its_holes_filled() {
    let vol = head_phantom();
    let body = BodyMask::of(&vol);
    assert_eq!(body.threshold(), -300.0);
    let exact = 4.0 / 3.0 * PI * 40.0 * 40.0 * 36.0;
    let rel = (body.volume_mm3() - exact).abs() / exact;
    assert!(rel < 0.02, "body {:.0} vs {exact:.0}", body.volume_mm3());
    // Bone inside the head is body; the head-rest and the air are not.
    assert!(body.contains([0.0, -4.0, 6.0 + 21.0]));
    assert!(body.contains([0.0, -4.0, -20.0]));
    assert!(!body.contains([0.0, 42.8, 0.0]));
    assert!(!body.contains([0.0, 38.5, 0.0]));
}

#[test]
fn a_single_slice_is_refused() {
    let vol = ct_volume([32, 32, 1], [0.0; 3], |p| {
        if p[0] > 10.0 { 800.0 } else { -1000.0 }
    });
    let err = iso::reconstruct(&vol, &raw(None), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, ReconError::NotAVolume { dims: [32, 32, 1] }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "a surface needs a volume: the series has 1 slice"
    );
    let vol = ct_volume([32, 1, 8], [0.0; 3], |_| 800.0);
    let err = iso::reconstruct_all(&vol, &[raw(None)], &mut |_, _| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a surface needs a volume: the images are 32 x 1 pixels"
    );
}

#[test]
fn integer_data_at_an_integer_iso_value_has_no_degenerate_triangles() {
    // Staircase values in steps of 100 HU: a third of the samples equal the iso value.
    let vol = ct_volume([40, 40, 30], [0.0; 3], |p| {
        let r = ((p[0] - 19.5).powi(2) + (p[1] - 19.5).powi(2) + (p[2] - 14.5).powi(2)).sqrt();
        (100.0 * ((14.0 - r) / 2.0).floor()).clamp(-1000.0, 800.0) + 300.0 - 100.0
    });
    let ties = match &vol.voxels {
        Voxels::I16(v) => v.iter().filter(|&&x| x == 1324).count(),
        _ => 0,
    };
    assert!(ties > 1000, "{ties} samples at the iso value");
    let r = iso::reconstruct(
        &vol,
        &IsoOptions {
            preset: Preset::Iso(300.0),
            ..raw(Some(Keep::All))
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.metrics.degenerate_triangles, 0);
    assert!(r.metrics.watertight && r.metrics.manifold);
}

fn ct_head() -> Volume {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/series/ct_head_axial_small");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    volume::assemble(&files, &AssembleOptions::default()).unwrap()
}

/// The real CT head (1.9 x 1.9 x 3 mm class) at ct-bone: the raw surface is free of
/// degenerate triangles, Taubin smoothing changes the bone volume by less than 1 %, and the
/// dropped pieces are reported.
#[test]
fn real_ct_head_raw_surface_is_clean_and_smoothing_keeps_the_volume() {
    let ct = ct_head();
    let [raw_all, raw_largest, raw_inside, smoothed] = <[IsoResult; 4]>::try_from(
        iso::reconstruct_all(
            &ct,
            &[
                raw(Some(Keep::All)),
                raw(Some(Keep::Largest)),
                raw(None),
                IsoOptions {
                    simplify: None,
                    ..IsoOptions::default()
                },
            ],
            &mut |_, _| {},
        )
        .unwrap(),
    )
    .unwrap();
    for r in [&raw_all, &raw_largest, &raw_inside, &smoothed] {
        assert_eq!(r.metrics.degenerate_triangles, 0, "{:?}", r.metrics);
        assert!(
            r.metrics.watertight && r.metrics.manifold,
            "{:?}",
            r.metrics
        );
    }
    let change = (smoothed.metrics.volume_mm3 - raw_inside.metrics.volume_mm3)
        / raw_inside.metrics.volume_mm3;
    assert!(
        change.abs() < 0.01,
        "Taubin volume change {:.3} %",
        100.0 * change
    );
    // Inside the body keeps at least what the largest piece holds, and drops the
    // head-rest: pieces behind the head (LPS +y is posterior), the two largest about
    // 1000 mm3 each.
    let outside: Vec<_> = raw_inside
        .dropped
        .iter()
        .filter(|d| d.reason == DropReason::OutsideBody)
        .collect();
    let outside_mm3: f64 = outside.iter().map(|d| d.volume_mm3).sum();
    eprintln!(
        "ct-bone raw: all {:.0} mm3, largest {:.0} mm3, inside-body {:.0} mm3 ({} pieces outside, {outside_mm3:.0} mm3; {} small); Taubin {:.0} mm3 ({:+.4} %)",
        raw_all.metrics.volume_mm3,
        raw_largest.metrics.volume_mm3,
        raw_inside.metrics.volume_mm3,
        outside.len(),
        raw_inside.dropped.len() - outside.len(),
        smoothed.metrics.volume_mm3,
        100.0 * change,
    );
    assert!(raw_inside.metrics.volume_mm3 >= raw_largest.metrics.volume_mm3);
    assert!(raw_inside.metrics.volume_mm3 < raw_all.metrics.volume_mm3);
    assert!(outside.iter().filter(|d| d.volume_mm3 > 500.0).count() >= 2);
    assert!(outside.iter().all(|d| d.centre_mm[1] > 25.0), "{outside:?}");
}
