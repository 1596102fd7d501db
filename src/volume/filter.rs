//! Volume filters used before surface extraction: Gaussian smoothing and
//! automatic thresholds. All thresholds are in modality units (the values
//! after Rescale Slope/Intercept, e.g. HU for CT).

use rayon::prelude::*;

use super::{Rescale, Volume, Voxels};

/// Gaussian smoothing with a standard deviation of `sigma_mm` millimetres
/// in every direction (anisotropic voxels are handled: the kernel width in
/// voxels is `sigma_mm / spacing` per axis).
///
/// Separable (three 1D passes, kernels truncated at 3 sigma, edges
/// replicated), parallel over slices / rows with rayon. The result holds
/// `F32` modality values with an identity rescale; geometry, UIDs and
/// sources are copied. Axes whose sigma is below 0.05 voxel are left
/// unchanged, so `sigma_mm <= 0` returns the volume converted to `F32`.
pub fn gaussian_smooth(vol: &Volume, sigma_mm: f64) -> Volume {
    let [nx, ny, nz] = vol.dims;
    let mut data = vol.to_f32_modality();
    let kernel = |axis: usize| -> Option<Vec<f32>> {
        let spacing = vol.spacing[axis];
        if !(sigma_mm.is_finite() && sigma_mm > 0.0 && spacing > 0.0) {
            return None;
        }
        gaussian_kernel(sigma_mm / spacing)
    };
    let (kx, ky, kz) = (kernel(0), kernel(1), kernel(2));
    let slice_len = nx * ny;

    if slice_len > 0 && nz > 0 && (kx.is_some() || ky.is_some()) {
        data.par_chunks_mut(slice_len).for_each(|slice| {
            let mut line = Vec::new();
            let mut tmp = Vec::new();
            if let Some(k) = &kx {
                for row in slice.chunks_mut(nx) {
                    line.clear();
                    line.extend_from_slice(row);
                    convolve_line(&line, k, &mut tmp);
                    row.copy_from_slice(&tmp);
                }
            }
            if let Some(k) = &ky {
                for i in 0..nx {
                    line.clear();
                    line.extend((0..ny).map(|j| slice[i + nx * j]));
                    convolve_line(&line, k, &mut tmp);
                    for (j, v) in tmp.iter().enumerate() {
                        slice[i + nx * j] = *v;
                    }
                }
            }
        });
    }

    if let Some(k) = &kz
        && nz > 1
    {
        // Process a few rows (j) at a time: the strips are computed in
        // parallel from the unchanged data, then written back.
        const ROWS_PER_BATCH: usize = 8;
        let mut j0 = 0;
        while j0 < ny {
            let j1 = (j0 + ROWS_PER_BATCH).min(ny);
            let strips: Vec<(usize, Vec<f32>)> = (j0..j1)
                .into_par_iter()
                .map(|j| {
                    let mut strip = vec![0f32; nx * nz];
                    let mut line = Vec::with_capacity(nz);
                    let mut tmp = Vec::with_capacity(nz);
                    for i in 0..nx {
                        line.clear();
                        line.extend((0..nz).map(|z| data[i + nx * (j + ny * z)]));
                        convolve_line(&line, k, &mut tmp);
                        for (z, v) in tmp.iter().enumerate() {
                            strip[i + nx * z] = *v;
                        }
                    }
                    (j, strip)
                })
                .collect();
            for (j, strip) in strips {
                for z in 0..nz {
                    let dst = nx * (j + ny * z);
                    data[dst..dst + nx].copy_from_slice(&strip[nx * z..nx * (z + 1)]);
                }
            }
            j0 = j1;
        }
    }

    Volume {
        dims: vol.dims,
        voxels: Voxels::F32(data),
        rescale: Rescale::IDENTITY,
        affine: vol.affine,
        spacing: vol.spacing,
        study_instance_uid: vol.study_instance_uid.clone(),
        series_instance_uid: vol.series_instance_uid.clone(),
        frame_of_reference_uid: vol.frame_of_reference_uid.clone(),
        modality: vol.modality.clone(),
        sources: vol.sources.clone(),
        warnings: vol.warnings.clone(),
    }
}

/// Normalised Gaussian kernel for `sigma` voxels, truncated at 3 sigma.
fn gaussian_kernel(sigma: f64) -> Option<Vec<f32>> {
    if sigma < 0.05 {
        return None;
    }
    let radius = (3.0 * sigma).ceil().max(1.0) as usize;
    let w: Vec<f64> = (0..=2 * radius)
        .map(|t| {
            let x = t as f64 - radius as f64;
            (-0.5 * x * x / (sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = w.iter().sum();
    Some(w.iter().map(|v| (v / sum) as f32).collect())
}

/// 1D convolution with edge replication; `out` is resized to `line.len()`.
fn convolve_line(line: &[f32], kernel: &[f32], out: &mut Vec<f32>) {
    let n = line.len();
    out.clear();
    if n == 0 {
        return;
    }
    let r = (kernel.len() / 2) as isize;
    let last = n as isize - 1;
    for x in 0..n as isize {
        let mut acc = 0f32;
        for (t, w) in kernel.iter().enumerate() {
            let src = (x + t as isize - r).clamp(0, last) as usize;
            acc += w * line[src];
        }
        out.push(acc);
    }
}

/// Number of bins of the Otsu histogram.
const OTSU_BINS: usize = 512;
/// Bins of the fine histogram used for percentiles.
const FINE_BINS: usize = 1 << 16;

/// Calls `f` with the modality value of every finite voxel.
fn for_each_value(vol: &Volume, mut f: impl FnMut(f64)) {
    let r = vol.rescale;
    match &vol.voxels {
        Voxels::U8(v) => v.iter().for_each(|&x| f(r.apply(f64::from(x)))),
        Voxels::I16(v) => v.iter().for_each(|&x| f(r.apply(f64::from(x)))),
        Voxels::U16(v) => v.iter().for_each(|&x| f(r.apply(f64::from(x)))),
        Voxels::F32(v) => v
            .iter()
            .filter(|x| x.is_finite())
            .for_each(|&x| f(r.apply(f64::from(x)))),
    }
}

/// Min and max modality value, `None` for an empty volume.
fn value_range(vol: &Volume) -> Option<(f64, f64)> {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for_each_value(vol, |v| {
        lo = lo.min(v);
        hi = hi.max(v);
    });
    (lo <= hi).then_some((lo, hi))
}

/// Approximate percentiles (0..=100) of the modality values of the voxels
/// with a value strictly above `floor` (all voxels when `floor` is `None`),
/// from a 65,536-bin histogram. `None` when no voxel qualifies.
fn percentiles(vol: &Volume, floor: Option<f64>, ps: &[f64]) -> Option<Vec<f64>> {
    let (lo, hi) = value_range(vol)?;
    if hi <= lo {
        return Some(vec![lo; ps.len()]);
    }
    let width = (hi - lo) / FINE_BINS as f64;
    let mut hist = vec![0u64; FINE_BINS];
    let mut count = 0u64;
    for_each_value(vol, |v| {
        if floor.is_some_and(|f| v <= f) {
            return;
        }
        let b = (((v - lo) / width) as usize).min(FINE_BINS - 1);
        hist[b] += 1;
        count += 1;
    });
    if count == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(ps.len());
    for &p in ps {
        let target = ((p / 100.0).clamp(0.0, 1.0) * (count - 1) as f64).round() as u64;
        let mut acc = 0u64;
        let mut value = hi;
        for (b, &h) in hist.iter().enumerate() {
            acc += h;
            if acc > target {
                value = lo + (b as f64 + 0.5) * width;
                break;
            }
        }
        out.push(value.clamp(lo, hi));
    }
    Some(out)
}

/// Otsu threshold over the values in `[lo, hi]` (values outside are
/// clamped into the end bins) of the voxels strictly above `floor`.
fn otsu_in_range(vol: &Volume, lo: f64, hi: f64, floor: Option<f64>) -> f64 {
    if hi <= lo {
        return lo;
    }
    let width = (hi - lo) / OTSU_BINS as f64;
    let mut hist = vec![0f64; OTSU_BINS];
    for_each_value(vol, |v| {
        if floor.is_some_and(|f| v <= f) {
            return;
        }
        let b = ((v - lo) / width)
            .floor()
            .clamp(0.0, (OTSU_BINS - 1) as f64) as usize;
        hist[b] += 1.0;
    });
    let total: f64 = hist.iter().sum();
    if total == 0.0 {
        return lo;
    }
    let centre = |b: usize| lo + (b as f64 + 0.5) * width;
    let sum_all: f64 = hist.iter().enumerate().map(|(b, h)| h * centre(b)).sum();
    let (mut w0, mut sum0) = (0.0, 0.0);
    let mut between = vec![0f64; OTSU_BINS - 1];
    for (b, &h) in hist.iter().enumerate().take(OTSU_BINS - 1) {
        w0 += h;
        sum0 += h * centre(b);
        let w1 = total - w0;
        if w0 > 0.0 && w1 > 0.0 {
            let m0 = sum0 / w0;
            let m1 = (sum_all - sum0) / w1;
            between[b] = w0 * w1 * (m0 - m1) * (m0 - m1);
        }
    }
    let best = between.iter().copied().fold(0.0, f64::max);
    if best <= 0.0 {
        return lo;
    }
    // Empty bins between two classes give a plateau of equal scores: take
    // its middle rather than its first bin.
    let near = |v: f64| v >= best * (1.0 - 1e-12);
    let first = between.iter().position(|&v| near(v)).unwrap_or(0);
    let last = first
        + between[first..]
            .iter()
            .take_while(|&&v| near(v))
            .count()
            .saturating_sub(1);
    // Threshold at the upper edge of the last background bin.
    lo + ((first + last) as f64 / 2.0 + 1.0) * width
}

/// Otsu's threshold of the whole volume, in modality units.
///
/// The histogram has 512 bins spanning the robust range from the 0.1th to
/// the 99.9th percentile (so a few extreme voxels, e.g. metal, do not
/// squeeze the tissue into a handful of bins); values outside are counted
/// in the end bins. The threshold maximises the between-class variance;
/// use `inside = value >= threshold`. A constant volume returns its value.
pub fn otsu_threshold(vol: &Volume) -> f64 {
    let Some(p) = percentiles(vol, None, &[0.1, 99.9]) else {
        return 0.0;
    };
    otsu_in_range(vol, p[0], p[1], None)
}

/// A threshold separating an MR head (or body) from the background air, in
/// modality units.
///
/// MR background is dark noise, often many exact zeros (scanner masking),
/// that outnumber the tissue voxels; Otsu on the whole histogram then
/// splits tissue classes instead. This function therefore:
///
/// 1. ignores voxels at the volume minimum (the "zero" part),
/// 2. computes Otsu's threshold on the remaining voxels over the range from
///    the minimum to their 99th percentile `p99`,
/// 3. caps the result at `0.2 * p99` (relative to the minimum): scalp and
///    fat are darker than brain in many sequences, and the surface must
///    enclose them.
///
/// Use `inside = value >= threshold`. A constant volume returns its value.
pub fn background_threshold(vol: &Volume) -> f64 {
    let Some((lo, _)) = value_range(vol) else {
        return 0.0;
    };
    let Some(p) = percentiles(vol, Some(lo), &[99.0]) else {
        return lo;
    };
    let p99 = p[0];
    if p99 <= lo {
        return lo;
    }
    let otsu = otsu_in_range(vol, lo, p99, Some(lo));
    otsu.min(lo + 0.2 * (p99 - lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(dims: [usize; 3], spacing: [f64; 3], voxels: Voxels, rescale: Rescale) -> Volume {
        Volume {
            dims,
            voxels,
            rescale,
            affine: [
                [spacing[0], 0.0, 0.0, 0.0],
                [0.0, spacing[1], 0.0, 0.0],
                [0.0, 0.0, spacing[2], 0.0],
            ],
            spacing,
            study_instance_uid: "1".into(),
            series_instance_uid: "2".into(),
            frame_of_reference_uid: None,
            modality: "MR".into(),
            sources: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Deterministic pseudo-random numbers in [0, 1) (no RNG dependency).
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn smoothing_an_impulse_gives_a_normalised_gaussian() {
        let n = 21;
        let mut v = vec![0u16; n * n * n];
        let c = n / 2;
        v[c + n * (c + n * c)] = 1000;
        // Anisotropic voxels: 1 x 1 x 2 mm, sigma 2 mm = 2, 2, 1 voxels.
        let vol = volume(
            [n, n, n],
            [1.0, 1.0, 2.0],
            Voxels::U16(v),
            Rescale {
                slope: 0.5,
                intercept: 0.0,
            },
        );
        let s = gaussian_smooth(&vol, 2.0);
        assert_eq!(s.rescale, Rescale::IDENTITY);
        let Voxels::F32(d) = &s.voxels else {
            panic!("F32 expected");
        };
        let total: f64 = d.iter().map(|&x| f64::from(x)).sum();
        assert!((total - 500.0).abs() < 0.5, "sum {total}");
        // Second moments: sigma^2 in voxels per axis.
        let (mut vx, mut vz) = (0.0, 0.0);
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let w = f64::from(d[x + n * (y + n * z)]) / total;
                    vx += w * (x as f64 - c as f64).powi(2);
                    vz += w * (z as f64 - c as f64).powi(2);
                }
            }
        }
        assert!((vx - 4.0).abs() < 0.2, "var x {vx}");
        assert!((vz - 1.0).abs() < 0.1, "var z {vz}");
        // Symmetry.
        let at = |x: usize, y: usize, z: usize| d[x + n * (y + n * z)];
        assert!((at(c - 3, c, c) - at(c + 3, c, c)).abs() < 1e-6);
        assert!((at(c, c, c - 2) - at(c, c, c + 2)).abs() < 1e-6);
    }

    #[test]
    fn smoothing_keeps_constants_and_zero_sigma_is_identity() {
        let vol = volume(
            [4, 3, 2],
            [1.0; 3],
            Voxels::U8(vec![7; 24]),
            Rescale::IDENTITY,
        );
        let s = gaussian_smooth(&vol, 1.5);
        assert!(s.to_f32_modality().iter().all(|&x| (x - 7.0).abs() < 1e-4));
        let ramp: Vec<i16> = (0..24).collect();
        let vol = volume(
            [4, 3, 2],
            [1.0; 3],
            Voxels::I16(ramp),
            Rescale {
                slope: 1.0,
                intercept: -5.0,
            },
        );
        let s = gaussian_smooth(&vol, 0.0);
        assert_eq!(s.to_f32_modality(), vol.to_f32_modality());
    }

    #[test]
    fn otsu_separates_two_modes() {
        let mut seed = 1;
        let values: Vec<u16> = (0..20_000)
            .map(|i| {
                let base = if i % 3 == 0 { 800.0 } else { 200.0 };
                (base + 60.0 * (lcg(&mut seed) - 0.5)) as u16
            })
            .collect();
        let vol = volume(
            [100, 200, 1],
            [1.0; 3],
            Voxels::U16(values),
            Rescale {
                slope: 1.0,
                intercept: -1024.0,
            },
        );
        let t = otsu_threshold(&vol);
        assert!(t > 230.0 - 1024.0 && t < 770.0 - 1024.0, "threshold {t}");
        // Constant volume: its value.
        let flat = volume(
            [2, 2, 1],
            [1.0; 3],
            Voxels::F32(vec![3.0; 4]),
            Rescale::IDENTITY,
        );
        assert_eq!(otsu_threshold(&flat), 3.0);
    }

    /// Synthetic "head": lots of zero background with faint noise, a scalp
    /// ring of 300 and a brain of 1000. The head threshold must keep the
    /// scalp and reject the noise.
    #[test]
    fn background_threshold_keeps_the_scalp() {
        let n = 64;
        let mut seed = 7;
        let mut v = vec![0u16; n * n * 8];
        for z in 0..8 {
            for y in 0..n {
                for x in 0..n {
                    let r = ((x as f64 - 32.0).powi(2) + (y as f64 - 32.0).powi(2)).sqrt();
                    let noise = lcg(&mut seed);
                    let value = if r < 14.0 {
                        1000.0 + 100.0 * noise
                    } else if r < 18.0 {
                        300.0 + 40.0 * noise
                    } else if noise < 0.5 {
                        0.0
                    } else {
                        40.0 * noise
                    };
                    v[x + n * (y + n * z)] = value as u16;
                }
            }
        }
        let vol = volume([n, n, 8], [1.0; 3], Voxels::U16(v), Rescale::IDENTITY);
        let t = background_threshold(&vol);
        assert!(t > 40.0 && t < 300.0, "threshold {t}");
        let otsu = otsu_threshold(&vol);
        assert!(
            otsu > t,
            "plain Otsu {otsu} should sit higher than the head threshold {t}"
        );
    }
}
