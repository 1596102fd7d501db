//! The NeuS stage on the CPU: analytic shapes rendered with the six cameras, reconstructed
//! with the fast profile (shortened where the shape allows), compared with the true surface;
//! the rendering and ranking helpers against hand-computed values; device selection; and
//! views -> NeuS -> Encapsulated STL checked by dciodvfy.
//!
//! `M3DNODE_TEST_DEVICE=cuda` (scripts/gpu-check, on a GPU machine with the `gpu-cuda`
//! feature) runs the shape fits on burn's CUDA backend against the same accuracy bounds.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use common::*;
use m3dnode::mesh::{self, Mesh};
use m3dnode::recon::ReconError;
use m3dnode::recon::neus::render::{
    Reduction, composite_weights, neus_alpha, ranking_loss, softplus,
};
use m3dnode::recon::neus::synthetic::{Shape, render_views};
use m3dnode::recon::neus::{
    self, CpuBackend, Device, NeusError, NeusResult, NeusSettings, Placement, ViewSet,
};

type B = CpuBackend;

/// The device of the shape fits: `M3DNODE_TEST_DEVICE` (`cpu`; `cuda` or `tensorrt`, which
/// both mean burn's CUDA backend here), set by scripts/gpu-check; the CPU when unset.
fn test_device() -> Device {
    match std::env::var("M3DNODE_TEST_DEVICE").as_deref() {
        Err(_) | Ok("") | Ok("cpu") => Device::Cpu,
        Ok("cuda") | Ok("tensorrt") => Device::Cuda,
        Ok(other) => panic!("M3DNODE_TEST_DEVICE={other:?}: expected cpu, cuda or tensorrt"),
    }
}

fn t1(v: &[f32]) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

fn t2(v: &[f32], cols: usize) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(v.to_vec(), [v.len() / cols, cols]),
        &Default::default(),
    )
}

fn vals<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((f64::from(*g) - w).abs() <= tol, "{got:?} vs {want:?}");
    }
}

/// sigmoid, for the hand computations below.
fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn neus_alpha_and_compositing_by_hand() {
    // Two sections of 0.2 on a ray meeting the surface head on (cos = -1), s = 10,
    // annealing 0: iter_cos = -(relu(1) * 1) = -1, so prev = sdf + 0.1, next = sdf - 0.1.
    let a = vals(neus_alpha(
        t2(&[0.1, -0.1], 2),
        t2(&[-1.0, -1.0], 2),
        t2(&[0.2, 0.2], 2),
        t1(&[10.0]),
        0.0,
    ));
    let want = |sdf: f64| {
        let (p, n) = (sig((sdf + 0.1) * 10.0), sig((sdf - 0.1) * 10.0));
        ((p - n + 1e-5) / (p + 1e-5)).clamp(0.0, 1.0)
    };
    // (0.880797 - 0.5) / 0.880797 = 0.43233 and (0.5 - 0.119203) / 0.5 = 0.76159.
    assert_close(&a, &[want(0.1), want(-0.1)], 1e-5);
    assert_close(&a, &[0.43233, 0.76159], 1e-4);

    // Fully annealed, a ray leaving the surface (cos = +0.5) sees iter_cos = 0: alpha is
    // only the 1e-5 floor over Φ(s sdf).
    let a = vals(neus_alpha(
        t2(&[0.0], 1),
        t2(&[0.5], 1),
        t2(&[0.2], 1),
        t1(&[10.0]),
        1.0,
    ));
    assert_close(&a, &[1e-5 / (0.5 + 1e-5)], 1e-7);
    // Half annealed, cos = 0: iter_cos = -(0.5 * 0.5 + 0) = -0.25, half-section 0.025.
    let a = vals(neus_alpha(
        t2(&[0.0], 1),
        t2(&[0.0], 1),
        t2(&[0.2], 1),
        t1(&[10.0]),
        0.5,
    ));
    let (p, n) = (sig(0.25), sig(-0.25));
    assert_close(&a, &[(p - n + 1e-5) / (p + 1e-5)], 1e-6);

    // w_i = alpha_i * prod_{j<i}(1 - alpha_j).
    let w = vals(composite_weights(t2(&[0.5, 0.5, 1.0, 0.3], 4)));
    assert_close(&w, &[0.5, 0.25, 0.25, 0.0], 1e-5);
}

#[test]
fn ranking_loss_by_hand() {
    use m3dnode::recon::neus::render::Selection::{AsInstantNsr, Smallest};
    let e = [0.4f32, 0.1, 0.3, 0.2, 10.0];
    let w = [1.0f32, 2.0, 3.0, 4.0, 5.0];
    let rank = |e: &[f32], p, w: Option<&[f32]>, red, sel| {
        vals(ranking_loss(t1(e), p, w.map(t1), red, sel).unwrap())
    };
    // Smallest: p = 0.8 of 5 keeps 4, the outlier 10.0 goes.
    assert_close(
        &rank(&e, 0.8, None, Reduction::Mean, Smallest),
        &[0.25],
        1e-6,
    );
    // Each kept error with its own weight: 0.1*2 + 0.2*4 + 0.3*3 + 0.4*1 = 2.3.
    assert_close(
        &rank(&e, 0.8, Some(&w), Reduction::Sum, Smallest),
        &[2.3],
        1e-5,
    );
    assert_close(
        &rank(&e, 0.8, Some(&w), Reduction::Mean, Smallest),
        &[0.575],
        1e-5,
    );
    // floor(0.1 * 5) = 0 keeps nothing: zero, not NaN.
    assert_close(&rank(&e, 0.1, None, Reduction::Mean, Smallest), &[0.0], 0.0);

    // As instant-nsr-pl computes it: order = [1, 3, 2, 0, 4], sorted = [0.1, 0.2, 0.3, 0.4, 10];
    // errors sorted[order[..4]] = [0.2, 0.4, 0.3, 0.1], weights w[order[..4]] = [2, 4, 3, 1]:
    // 0.4 + 1.6 + 0.9 + 0.1 = 3.0.
    assert_close(
        &rank(&e, 0.8, Some(&w), Reduction::Sum, AsInstantNsr),
        &[3.0],
        1e-5,
    );
    // It need not drop the outlier: [10, 0.1, 0.2], k = 2, order = [1, 2, 0],
    // sorted[1] + sorted[2] = 0.2 + 10.
    let o = [10.0f32, 0.1, 0.2];
    assert_close(
        &rank(&o, 0.7, None, Reduction::Sum, AsInstantNsr),
        &[10.2],
        1e-5,
    );
    assert_close(&rank(&o, 0.7, None, Reduction::Sum, Smallest), &[0.3], 1e-6);
}

#[test]
fn softplus_is_stable_at_beta_100() {
    let y = vals(softplus(t1(&[-1.0, 0.0, 0.5, 5.0, 100.0]), 100.0));
    assert!(y.iter().all(|v| v.is_finite()), "{y:?}");
    assert_close(
        &y,
        &[0.0, std::f64::consts::LN_2 / 100.0, 0.5, 5.0, 100.0],
        1e-6,
    );
}

/// A short CPU profile for tests that only need a surface, not a good one.
fn tiny() -> NeusSettings {
    NeusSettings {
        steps: 3,
        rays_per_batch: 32,
        samples_per_ray: 8,
        random_points: 32,
        mc_resolution: 24,
        ..NeusSettings::fast()
    }
}

fn sphere() -> Shape {
    Shape::Sphere {
        centre: [0.0; 3],
        radius: 0.5,
    }
}

#[test]
fn device_cuda_without_gpu_is_a_clear_error_and_auto_falls_back() {
    let views = render_views(&sphere(), 32);
    let placement = Placement::scaled(50.0);
    let cuda = NeusSettings {
        device: Device::Cuda,
        ..tiny()
    };
    match neus::reconstruct(&views, &cuda, &placement) {
        Err(ReconError::Neus(e @ NeusError::CudaUnavailable(_))) => {
            let msg = e.to_string();
            assert!(msg.contains("cuda") && msg.contains("auto"), "{msg}");
        }
        other => panic!("expected CudaUnavailable on a machine without a GPU, got {other:?}"),
    }
    let auto = NeusSettings {
        device: Device::Auto,
        ..tiny()
    };
    let r = neus::reconstruct(&views, &auto, &placement).unwrap();
    assert_eq!(r.report.device, neus::ChosenDevice::Cpu);
    assert!(
        r.report.fallback.is_some(),
        "auto must say why it did not use CUDA"
    );
    assert!(!r.mesh.is_empty());
    assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
    assert!("gpu".parse::<Device>().is_err());
}

#[test]
fn invalid_views_are_rejected_with_the_reason() {
    let mut views = render_views(&sphere(), 16);
    views.views.pop();
    let e = neus::reconstruct(&views, &tiny(), &Placement::scaled(1.0)).unwrap_err();
    assert!(e.to_string().contains("front_left"), "{e}");
    let mut views = render_views(&sphere(), 16);
    views.views[0].mask.truncate(3);
    assert!(neus::reconstruct(&views, &tiny(), &Placement::scaled(1.0)).is_err());
}

/// The true surface in mm.
fn truth(shape: &Shape, mm_per_unit: f64) -> Mesh {
    shape.reference_mesh(160, mm_per_unit).unwrap()
}

fn diagonal(m: &Mesh) -> f64 {
    let b = mesh::metrics(m);
    (0..3)
        .map(|a| (b.bbox_max[a] - b.bbox_min[a]).powi(2))
        .sum::<f64>()
        .sqrt()
}

const MM: f64 = 50.0;

fn fit(shape: &Shape, settings: &NeusSettings) -> (NeusResult, f64) {
    let views = render_views(shape, 64);
    let t = Instant::now();
    let r = neus::reconstruct(&views, settings, &Placement::scaled(MM)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    // The device is forced: no silent fallback to the CPU.
    assert_eq!(
        r.report.device == neus::ChosenDevice::Cpu,
        settings.device == Device::Cpu,
        "ran on {:?}, asked for {:?}",
        r.report.device,
        settings.device
    );
    (r, secs)
}

/// Symmetric mean surface distance as a fraction of the true bounding-box diagonal.
fn relative_distance(r: &Mesh, shape: &Shape) -> f64 {
    let t = truth(shape, MM);
    mesh::surface_distance(r, &t).mean / diagonal(&t)
}

/// Fits `shape` with a shortened fast profile; watertight and within 2 % of the diagonal.
fn within_two_percent(name: &str, shape: Shape, steps: usize) {
    let settings = NeusSettings {
        steps,
        mc_resolution: 64,
        device: test_device(),
        ..NeusSettings::fast()
    };
    let (r, secs) = fit(&shape, &settings);
    let m = mesh::metrics(&r.mesh);
    let d = relative_distance(&r.mesh, &shape);
    eprintln!(
        "{name}: {steps} steps, {secs:.1} s ({:.1} s fit, {:.1} s mc), loss {:.4}, inv_s {:.0}, mean distance {:.3} % of the diagonal",
        r.report.fit_seconds,
        r.report.extract_seconds,
        r.report.final_loss,
        r.report.final_inv_s,
        100.0 * d
    );
    assert!(m.watertight && m.manifold, "{name}: {m:?}");
    assert!(
        d < 0.02,
        "{name}: mean distance {:.3} % of the diagonal",
        100.0 * d
    );
}

#[test]
fn sphere_within_two_percent() {
    within_two_percent("sphere", sphere(), 120);
}

#[test]
fn offset_ellipsoid_within_two_percent() {
    let shape = Shape::Ellipsoid {
        centre: [0.15, -0.1, 0.1],
        radii: [0.55, 0.35, 0.3],
    };
    within_two_percent("ellipsoid", shape, 150);
}

/// Mean front-face position (world y, mm) of the mesh near the front axis x = z = 0.
fn front_depth_at_centre(m: &Mesh) -> f64 {
    let r = 0.06 * MM;
    let ys: Vec<f64> = m
        .vertices
        .iter()
        .filter(|v| (f64::from(v[0]).powi(2) + f64::from(v[2]).powi(2)).sqrt() < r && v[1] < 0.0)
        .map(|v| f64::from(v[1]))
        .collect();
    assert!(!ys.is_empty(), "no front vertices near the axis");
    ys.iter().sum::<f64>() / ys.len() as f64
}

#[test]
fn a_dimple_no_silhouette_shows_is_shaped_by_the_normal_loss() {
    let shape = Shape::DimpledBox {
        half: [0.5, 0.5, 0.5],
        rounding: 0.08,
        dimple_radius: 0.4,
        dimple_depth: 0.2,
    };
    let full = NeusSettings {
        steps: 150,
        mc_resolution: 64,
        device: test_device(),
        ..NeusSettings::fast()
    };
    let mut mask_only = full.clone();
    mask_only.loss.normal = 0.0;
    let want = -(0.5 - 0.2) * MM;
    let (with_normals, _) = fit(&shape, &full);
    let (silhouettes, _) = fit(&shape, &mask_only);
    let (dn, ds) = (
        front_depth_at_centre(&with_normals.mesh),
        front_depth_at_centre(&silhouettes.mesh),
    );
    let (rn, rs) = (
        relative_distance(&with_normals.mesh, &shape),
        relative_distance(&silhouettes.mesh, &shape),
    );
    eprintln!(
        "dimple bottom at y = {want:.1} mm: with normals {dn:.1} mm ({:.2} % mean distance), masks only {ds:.1} mm ({:.2} %)",
        100.0 * rn,
        100.0 * rs
    );
    assert!(mesh::metrics(&with_normals.mesh).watertight);
    // The normals carve the dimple; the silhouettes alone cannot see it.
    assert!(
        (dn - want).abs() < 0.5 * (ds - want).abs(),
        "{dn} {ds} {want}"
    );
    // At least about two thirds of the 10 mm depth are recovered in this short run.
    assert!((dn - want).abs() < 0.07 * MM, "{dn} vs {want}");
    assert!(rn < rs);
}

#[test]
fn views_to_encapsulated_stl_in_the_key_image_frame() {
    use m3dnode::encap::{self, EncapRequest, SourceInstance, SourceSeries};
    let dir = testdata().join("series").join("mr_t1_axial_2mm");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let key = &files[files.len() / 2];
    let key_obj = dicom_object::open_file(key).unwrap();
    let placement = Placement::from_key_object(&key_obj).unwrap();

    let shape = Shape::Ellipsoid {
        centre: [0.0, 0.0, 0.0],
        radii: [0.6, 0.45, 0.5],
    };
    let views: ViewSet = render_views(&shape, 64);
    let settings = NeusSettings {
        steps: 60,
        mc_resolution: 48,
        device: test_device(),
        ..NeusSettings::fast()
    };
    let r = neus::reconstruct(&views, &settings, &placement).unwrap();
    let m = mesh::metrics(&r.mesh);
    assert!(m.watertight, "{m:?}");
    // The centre of the result sits at the key image's centre, within a few mm.
    let c: [f64; 3] = std::array::from_fn(|a| 0.5 * (m.bbox_min[a] + m.bbox_max[a]));
    let d = (0..3)
        .map(|a| (c[a] - placement.centre_mm[a]).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        d < 0.1 * placement.mm_per_unit,
        "centre {c:?} vs {:?}",
        placement.centre_mm
    );

    let instances: Vec<SourceInstance> = files
        .iter()
        .map(|f| SourceInstance::from_object(&dicom_object::open_file(f).unwrap()).unwrap())
        .collect();
    let uid = key_obj
        .element(dicom_dictionary_std::tags::SERIES_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string();
    let source = SourceSeries::load(key, instances, &uid).unwrap();
    let stl = mesh::write_stl_binary(&r.mesh, "NeuS surface");
    let obj = encap::build_encapsulated_stl(
        &source,
        &EncapRequest {
            stl: &stl,
            document_title: "NeuS surface from six views".to_string(),
            series_description: "3D model: NeuS".to_string(),
            series_instance_uid: None,
            sop_instance_uid: None,
            series_number: 9902,
            instance_number: 1,
            content_datetime: None,
            equipment: Default::default(),
            metrics_comment: Some(format!(
                "triangles={} watertight={}",
                m.triangles, m.watertight
            )),
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("neus.dcm");
    obj.write_to_file(&path).unwrap();
    assert_dciodvfy_clean(&path);
    let back = dicom_object::open_file(&path).unwrap();
    let stl_back = encap::extract_stl(&back).unwrap();
    assert_eq!(
        mesh::read_stl(&stl_back).unwrap().triangle_count(),
        r.mesh.triangle_count()
    );
}
