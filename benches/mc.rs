//! Marching-cubes throughput benchmark (plain `harness = false`, no
//! criterion). Run with `cargo bench --bench mc`.
//!
//! (a) 256³ f32 "blobs": sum of gaussians, level 0.5.
//! (b) 300×512×512 i16 CT-like head phantom (0.5 × 0.5 × 1 mm): air -1000,
//!     soft-tissue ellipsoid 40 HU, a 6 mm 1200 HU "skull" shell, 1-voxel
//!     partial-volume ramps; level 300.
//!
//! Prints median seconds, Mvoxel/s and triangle count for 1 and 2 threads.
//! Set `MC_BENCH_REPS` to change the repetitions (default 5).

use std::time::Instant;

use m3dnode::mesh::{Affine, McOptions, marching_cubes, metrics, surface_distance};
use m3dnode::volume::{BodyMask, Rescale, Volume, Voxels};
use rayon::prelude::*;

fn blobs(n: usize) -> Vec<f32> {
    let centers = [
        ([0.30, 0.35, 0.40], 0.12),
        ([0.65, 0.40, 0.55], 0.10),
        ([0.50, 0.70, 0.35], 0.09),
        ([0.40, 0.55, 0.70], 0.11),
        ([0.70, 0.70, 0.70], 0.07),
    ];
    let mut v = vec![0.0f32; n * n * n];
    v.par_chunks_mut(n * n).enumerate().for_each(|(k, plane)| {
        let z = k as f64 / n as f64;
        for j in 0..n {
            let y = j as f64 / n as f64;
            for i in 0..n {
                let x = i as f64 / n as f64;
                let mut s = 0.0;
                for (c, r) in centers {
                    let d2 = (x - c[0]).powi(2) + (y - c[1]).powi(2) + (z - c[2]).powi(2);
                    s += (-d2 / (r * r)).exp();
                }
                plane[i + n * j] = s as f32;
            }
        }
    });
    v
}

/// Head phantom. Returns (data, dims, affine).
fn ct_phantom() -> (Vec<i16>, [usize; 3], Affine) {
    let (nx, ny, nz) = (512usize, 512usize, 300usize);
    let s = [0.5, 0.5, 1.0];
    let affine: Affine = [
        [s[0], 0.0, 0.0, -128.0],
        [0.0, s[1], 0.0, -128.0],
        [0.0, 0.0, s[2], -150.0],
    ];
    // Ellipsoid "radius" scaled so that 1.0 is the surface; distance in mm
    // approximated by (1 - rho) * mean semi-axis.
    let ell = |p: [f64; 3], a: [f64; 3]| {
        let rho = ((p[0] / a[0]).powi(2) + (p[1] / a[1]).powi(2) + (p[2] / a[2]).powi(2)).sqrt();
        (1.0 - rho) * (a[0] + a[1] + a[2]) / 3.0
    };
    let ramp = |d: f64, w: f64| (0.5 + d / w).clamp(0.0, 1.0);
    let mut v = vec![0i16; nx * ny * nz];
    v.par_chunks_mut(nx * ny)
        .enumerate()
        .for_each(|(k, plane)| {
            for j in 0..ny {
                for i in 0..nx {
                    let p = [
                        affine[0][0] * i as f64 + affine[0][3],
                        affine[1][1] * j as f64 + affine[1][3],
                        affine[2][2] * k as f64 + affine[2][3],
                    ];
                    let head = ramp(ell(p, [95.0, 115.0, 130.0]), 0.5);
                    let outer = ramp(ell(p, [90.0, 110.0, 125.0]), 0.5);
                    let inner = ramp(ell(p, [84.0, 104.0, 119.0]), 0.5);
                    let bone = outer - inner;
                    let hu = -1000.0 * (1.0 - head) + 40.0 * (head - bone) + 1200.0 * bone;
                    plane[i + nx * j] = hu.round() as i16;
                }
            }
        });
    (v, [nx, ny, nz], affine)
}

fn bench<T: Copy + Into<f32> + Send + Sync>(
    name: &str,
    data: &[T],
    dims: [usize; 3],
    iso: f32,
    affine: &Affine,
    reps: usize,
) {
    let voxels = (dims[0] * dims[1] * dims[2]) as f64;
    let thread_counts: Vec<usize> = match std::env::var("MC_BENCH_THREADS") {
        Ok(t) => t.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2],
    };
    for threads in thread_counts {
        let opts = McOptions {
            threads: Some(threads),
        };
        let mut times = Vec::with_capacity(reps);
        let cpu0 = process_cpu_seconds();
        let mut tris = 0;
        let mut verts = 0;
        for _ in 0..reps {
            let t0 = Instant::now();
            let m = match marching_cubes(data, dims, iso, affine, &opts) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    return;
                }
            };
            times.push(t0.elapsed().as_secs_f64());
            tris = m.triangle_count();
            verts = m.vertices.len();
            std::hint::black_box(&m);
        }
        let cpu = match (cpu0, process_cpu_seconds()) {
            (Some(a), Some(b)) => format!("  cpu {:.4} s/call", (b - a) / reps as f64),
            _ => String::new(),
        };
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "{name:<26} threads={threads}  median {med:.4} s (min {:.4})  {:6.1} Mvoxel/s{cpu}  triangles {tris}  vertices {verts}",
            times[0],
            voxels / med / 1e6
        );
    }
}

fn main() {
    let reps: usize = std::env::var("MC_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let ident: Affine = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ];

    // MC_BENCH_ONLY=ct, =blobs, =distance or =body restricts the run (profiling).
    let only = std::env::var("MC_BENCH_ONLY").unwrap_or_default();
    if only == "distance" {
        distance_bench(&ident);
        return;
    }
    if only == "body" {
        body_bench(reps);
        return;
    }
    if only != "ct" {
        let n = 256;
        let b = blobs(n);
        bench("blobs 256^3 f32 @0.5", &b, [n, n, n], 0.5, &ident, reps);
    }
    if only == "blobs" {
        return;
    }

    let (ct, dims, affine) = ct_phantom();
    // MC_BENCH_DUMP=path writes the phantom as raw little-endian i16
    // (x fastest) for comparisons with other tools.
    if let Ok(path) = std::env::var("MC_BENCH_DUMP") {
        let bytes: Vec<u8> = ct.iter().flat_map(|v| v.to_le_bytes()).collect();
        if let Err(e) = std::fs::write(&path, bytes) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    bench("CT 512x512x300 i16 @300", &ct, dims, 300.0, &affine, reps);

    // Sanity and distance-query timing on the CT surface.
    if let Ok(m) = marching_cubes(&ct, dims, 300.0, &affine, &McOptions::default()) {
        let r = metrics(&m);
        println!(
            "CT surface: watertight {} manifold {} volume {:.0} mm3",
            r.watertight, r.manifold, r.volume_mm3
        );
    }
    distance_bench(&ident);
}

/// Body mask (skin threshold, largest component, holes filled) on the 512x512x300 CT
/// phantom: the once-per-volume cost of `keep = "inside-body"`.
fn body_bench(reps: usize) {
    let (ct, dims, affine) = ct_phantom();
    let vol = Volume {
        dims,
        voxels: Voxels::I16(ct),
        rescale: Rescale::IDENTITY,
        affine,
        spacing: [affine[0][0], affine[1][1], affine[2][2]],
        study_instance_uid: "1".into(),
        series_instance_uid: "2".into(),
        frame_of_reference_uid: None,
        modality: "CT".into(),
        sources: Vec::new(),
        warnings: Vec::new(),
    };
    let mut times = Vec::with_capacity(reps);
    let mut voxels = 0;
    for _ in 0..reps {
        let t0 = Instant::now();
        let body = BodyMask::of(&vol);
        times.push(t0.elapsed().as_secs_f64());
        voxels = body.voxels();
        std::hint::black_box(&body);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "body mask 512x512x300 i16  median {:.4} s (min {:.4})  {} body voxels",
        times[times.len() / 2],
        times[0],
        voxels
    );
}

/// Distance query timing on two ~100k-triangle surfaces.
fn distance_bench(ident: &Affine) {
    let n = 256;
    let b = blobs(n);
    let opts = McOptions::default();
    if let (Ok(a), Ok(c)) = (
        marching_cubes(&b, [n; 3], 0.5, ident, &opts),
        marching_cubes(&b, [n; 3], 0.45, ident, &opts),
    ) {
        let mut shifted = a.clone();
        for v in &mut shifted.vertices {
            v[0] += 0.5;
        }
        for (what, other) in [
            ("itself", &a),
            ("shifted 0.5 voxel", &shifted),
            ("level 0.45", &c),
        ] {
            let t0 = Instant::now();
            let d = surface_distance(&a, other);
            println!(
                "surface_distance {} x {} triangles ({what}): {:.3} s  mean {:.3} max {:.3}",
                a.triangle_count(),
                other.triangle_count(),
                t0.elapsed().as_secs_f64(),
                d.mean,
                d.max
            );
        }
    }
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, 10 ms
/// ticks), to tell CPU cost from wall time on a shared machine.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
