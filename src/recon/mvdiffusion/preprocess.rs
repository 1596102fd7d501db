//! From a series to the conditioning image: key slice, windowing, foreground crop on a white
//! canvas, and the CLIP and VAE inputs derived from it.
//!
//! Wonder3D's conditioning (`mvdiffusion/data/single_image_dataset.py`, `load_image`): the
//! foreground's bounding box (PIL `crop`, so its last row and column are left out, as there),
//! scaled so its longer side is `crop_size` (192) with `int()` truncation, pasted centred on a
//! `resolution` (256) canvas, composited over white with the alpha mask; the pipeline then sees it
//! as an 8-bit image (`TF.to_pil_image`, which truncates). The VAE takes that image in [-1, 1];
//! CLIP takes it resized to 224 (bicubic), centre-cropped, /255 and normalised with CLIP's
//! mean and std. Resampling uses PIL's bicubic kernel (a = -0.5) and support scaling in float
//! arithmetic, not PIL's fixed point: results may differ from PIL by a grey level.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;

use super::MvDiffusionError;
use crate::volume::Volume;

/// Which slice of the series becomes the key image.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum KeySlice {
    /// The middle slice along k.
    #[default]
    Middle,
    /// The slice with the most foreground pixels after windowing.
    LargestForeground,
    /// The slice whose DICOM Instance Number (0020,0013) is this.
    InstanceNumber(i32),
}

impl KeySlice {
    /// `middle`, `largest` or an Instance Number.
    pub fn parse(text: &str) -> Result<KeySlice, String> {
        match text {
            "middle" => Ok(KeySlice::Middle),
            "largest" => Ok(KeySlice::LargestForeground),
            n => {
                n.trim().parse().map(KeySlice::InstanceNumber).map_err(|_| {
                    format!("`{text}`: expected middle, largest or an Instance Number")
                })
            }
        }
    }
}

/// How stored values become grey levels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Windowing {
    /// Window Center/Width (0028,1050/1051) of the key image, else [`Windowing::Auto`].
    #[default]
    FromSeries,
    /// Centre and width in modality units (HU for CT).
    Explicit {
        /// Window centre.
        center: f64,
        /// Window width (> 0).
        width: f64,
    },
    /// The 1st to 99th percentile of the slice.
    Auto,
}

impl Windowing {
    /// A preset name or `CENTER,WIDTH` (the command line's `--window`, a rule's `window`).
    pub fn parse(text: &str) -> Result<Windowing, String> {
        if let Some(w) = Windowing::preset(text) {
            return Ok(w);
        }
        let bad = || {
            format!(
                "`{text}`: expected ct-bone, ct-soft, ct-lung, ct-brain, series, auto or CENTER,WIDTH"
            )
        };
        let (c, w) = text.split_once(',').ok_or_else(bad)?;
        let (center, width) = (
            c.trim().parse::<f64>().map_err(|_| bad())?,
            w.trim().parse::<f64>().map_err(|_| bad())?,
        );
        if !(center.is_finite() && width.is_finite() && width > 0.0) {
            return Err(bad());
        }
        Ok(Windowing::Explicit { center, width })
    }

    /// A named preset: `ct-bone` (500/2000), `ct-soft` (40/400), `ct-lung` (-600/1500),
    /// `ct-brain` (40/80), `series`, `auto`.
    pub fn preset(name: &str) -> Option<Windowing> {
        let w = |center, width| Some(Windowing::Explicit { center, width });
        match name {
            "ct-bone" => w(500.0, 2000.0),
            "ct-soft" => w(40.0, 400.0),
            "ct-lung" => w(-600.0, 1500.0),
            "ct-brain" => w(40.0, 80.0),
            "series" => Some(Windowing::FromSeries),
            "auto" => Some(Windowing::Auto),
            _ => None,
        }
    }
}

/// The conditioning image, as the pipeline's models see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionImage {
    /// Side in pixels.
    pub size: usize,
    /// RGB in [0, 1], row-major, y down, 8-bit levels (k/255).
    pub rgb: Vec<f32>,
    /// Which key slice (k index) it came from.
    pub slice: usize,
    /// Where the canvas lies on the key image, so that what is made from the views can be put
    /// back in patient coordinates.
    pub frame: CanvasFrame,
}

/// The mapping between canvas pixels and key-image pixels (index coordinates, pixel centres
/// at integers): `key = origin + canvas / scale`, the same along x (columns) and y (rows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanvasFrame {
    /// Key-image (column, row) of canvas pixel (0, 0).
    pub origin: [f64; 2],
    /// Canvas pixels per key-image pixel.
    pub scale: f64,
}

impl CanvasFrame {
    /// Key-image (column, row) of the canvas pixel (u, v).
    pub fn to_key(&self, u: f64, v: f64) -> [f64; 2] {
        [
            self.origin[0] + u / self.scale,
            self.origin[1] + v / self.scale,
        ]
    }
}

impl ConditionImage {
    /// The VAE encoder input [1,3,R,R] in [-1, 1].
    pub fn vae_input(&self) -> Vec<f32> {
        planar(&self.rgb, self.size, |_, v| v * 2.0 - 1.0)
    }

    /// The CLIP input [1,3,S,S]: bicubic resize of the shorter side to `s`, centre crop,
    /// 8-bit levels, normalised.
    pub fn clip_input(&self, s: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
        let resized = resize_rgb(&self.rgb, self.size, self.size, s, s);
        let quantised: Vec<f32> = resized
            .iter()
            .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) / 255.0)
            .collect();
        planar(&quantised, s, |c, v| (v - mean[c]) / std[c])
    }
}

/// Interleaved RGB -> planar CHW with a per-channel map.
fn planar(rgb: &[f32], size: usize, f: impl Fn(usize, f32) -> f32) -> Vec<f32> {
    let n = size * size;
    let mut out = vec![0f32; 3 * n];
    for (p, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + p] = f(c, px[c]);
        }
    }
    out
}

/// Chooses the key slice, windows it and builds the conditioning image.
pub fn condition_image(
    volume: &Volume,
    key: KeySlice,
    windowing: Windowing,
    foreground_threshold: f32,
    resolution: usize,
    crop_size: usize,
) -> Result<ConditionImage, MvDiffusionError> {
    let [cols, rows, slices] = volume.dims;
    if cols == 0 || rows == 0 || slices == 0 {
        return Err(MvDiffusionError::Input("the volume is empty".into()));
    }
    let slice_values = |k: usize| -> Vec<f32> {
        let base = k * cols * rows;
        (0..cols * rows)
            .map(|i| {
                let stored = volume.voxels.get_f32(base + i).unwrap_or(0.0);
                volume.modality_value(stored) as f32
            })
            .collect()
    };
    let k = match key {
        KeySlice::Middle => slices / 2,
        KeySlice::InstanceNumber(n) => find_instance(volume, n)?,
        KeySlice::LargestForeground => {
            let mut best = (0usize, 0usize);
            for k in 0..slices {
                let values = slice_values(k);
                let (lo, hi) = window_bounds(volume, k, windowing, &values);
                let count = values
                    .iter()
                    .filter(|&&v| apply_window(v, lo, hi) > foreground_threshold)
                    .count();
                if count > best.1 {
                    best = (k, count);
                }
            }
            best.0
        }
    };
    let values = slice_values(k);
    let (lo, hi) = window_bounds(volume, k, windowing, &values);
    let grey: Vec<f32> = values.iter().map(|&v| apply_window(v, lo, hi)).collect();
    let mask: Vec<bool> = grey.iter().map(|&g| g > foreground_threshold).collect();
    let (rgb, frame) =
        compose(&grey, &mask, cols, rows, resolution, crop_size).ok_or_else(|| {
            MvDiffusionError::Input(format!(
                "slice {k} has no foreground above {foreground_threshold} after windowing \
             ({lo:.0}..{hi:.0}); choose another key slice or window"
            ))
        })?;
    Ok(ConditionImage {
        size: resolution,
        rgb,
        slice: k,
        frame,
    })
}

fn apply_window(v: f32, lo: f64, hi: f64) -> f32 {
    (((f64::from(v) - lo) / (hi - lo)) as f32).clamp(0.0, 1.0)
}

/// Lower and upper modality value of the window (DICOM PS3.3 C.11.2.1.2, linear).
fn window_bounds(volume: &Volume, k: usize, windowing: Windowing, values: &[f32]) -> (f64, f64) {
    let explicit = |c: f64, w: f64| {
        let w = w.max(1.0);
        (c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0)
    };
    match windowing {
        Windowing::Explicit { center, width } => explicit(center, width),
        Windowing::FromSeries => match series_window(volume, k) {
            Some((c, w)) => explicit(c, w),
            None => percentile_window(values),
        },
        Windowing::Auto => percentile_window(values),
    }
}

fn percentile_window(values: &[f32]) -> (f64, f64) {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return (0.0, 1.0);
    }
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| f64::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize]);
    let (lo, hi) = (at(0.01), at(0.99));
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

fn series_window(volume: &Volume, k: usize) -> Option<(f64, f64)> {
    let source = volume.sources.get(k)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(&source.path)
        .ok()?;
    let first = |tag| -> Option<f64> {
        obj.element_opt(tag)
            .ok()??
            .to_multi_float64()
            .ok()?
            .first()
            .copied()
    };
    let center = first(tags::WINDOW_CENTER)?;
    let width = first(tags::WINDOW_WIDTH)?;
    (width > 0.0).then_some((center, width))
}

fn instance_number(path: &Path) -> Option<i32> {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .ok()?;
    obj.element_opt(tags::INSTANCE_NUMBER)
        .ok()??
        .to_int::<i32>()
        .ok()
}

fn find_instance(volume: &Volume, n: i32) -> Result<usize, MvDiffusionError> {
    for (k, source) in volume.sources.iter().enumerate() {
        if source.frame.is_none_or(|f| f == 1) && instance_number(&source.path) == Some(n) {
            return Ok(k);
        }
    }
    Err(MvDiffusionError::Input(format!(
        "no slice of the series has Instance Number {n}"
    )))
}

/// Crops the foreground, scales it to `crop_size` and composites it over a white canvas.
/// `None` when nothing is foreground.
fn compose(
    grey: &[f32],
    mask: &[bool],
    cols: usize,
    rows: usize,
    resolution: usize,
    crop_size: usize,
) -> Option<(Vec<f32>, CanvasFrame)> {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..rows {
        for x in 0..cols {
            if mask[y * cols + x] {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
        }
    }
    if x0 == usize::MAX {
        return None;
    }
    // PIL's crop box excludes max_x/max_y; a single-pixel foreground keeps one pixel.
    let w = (x1 - x0).max(1);
    let h = (y1 - y0).max(1);
    let scale = crop_size as f64 / w.max(h) as f64;
    let (w2, h2) = (
        ((scale * w as f64) as usize).max(1),
        ((scale * h as f64) as usize).max(1),
    );
    // Premultiplied grey and alpha, as PIL resizes RGBA.
    let mut premul = vec![0f32; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let i = (y0 + y) * cols + x0 + x;
            let a = if mask[i] { 1.0 } else { 0.0 };
            let p = (y * w + x) * 3;
            premul[p] = grey[i] * a;
            premul[p + 1] = a;
        }
    }
    let scaled = resize_rgb(&premul, w, h, w2, h2);
    let mut rgb = vec![1f32; resolution * resolution * 3];
    let (ox, oy) = (
        (resolution.saturating_sub(w2)) / 2,
        (resolution.saturating_sub(h2)) / 2,
    );
    for y in 0..h2.min(resolution) {
        for x in 0..w2.min(resolution) {
            let s = (y * w2 + x) * 3;
            let a = scaled[s + 1].clamp(0.0, 1.0);
            let g = scaled[s].clamp(0.0, 1.0);
            // img * alpha + white * (1 - alpha), with img premultiplied; then 8-bit, truncated
            let v = (g + (1.0 - a)).clamp(0.0, 1.0);
            let q = (v * 255.0).floor() / 255.0;
            let d = ((oy + y) * resolution + ox + x) * 3;
            rgb[d..d + 3].copy_from_slice(&[q, q, q]);
        }
    }
    let frame = CanvasFrame {
        origin: [x0 as f64 - ox as f64 / scale, y0 as f64 - oy as f64 / scale],
        scale,
    };
    Some((rgb, frame))
}

/// PIL's bicubic kernel, a = -0.5.
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Per output pixel: first input index and normalised weights (PIL `precompute_coeffs`).
fn coefficients(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(input);
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Separable bicubic resize of interleaved RGB (horizontal pass, then vertical).
pub(crate) fn resize_rgb(src: &[f32], w: usize, h: usize, w2: usize, h2: usize) -> Vec<f32> {
    let cx = coefficients(w, w2);
    let cy = coefficients(h, h2);
    let mut tmp = vec![0f32; w2 * h * 3];
    for y in 0..h {
        for (x, (start, ws)) in cx.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (i, wt) in ws.iter().enumerate() {
                let s = (y * w + start + i) * 3;
                for c in 0..3 {
                    acc[c] += wt * src[s + c];
                }
            }
            tmp[(y * w2 + x) * 3..(y * w2 + x) * 3 + 3].copy_from_slice(&acc);
        }
    }
    let mut out = vec![0f32; w2 * h2 * 3];
    for (y, (start, ws)) in cy.iter().enumerate() {
        for x in 0..w2 {
            let mut acc = [0f32; 3];
            for (i, wt) in ws.iter().enumerate() {
                let s = ((start + i) * w2 + x) * 3;
                for c in 0..3 {
                    acc[c] += wt * tmp[s + c];
                }
            }
            out[(y * w2 + x) * 3..(y * w2 + x) * 3 + 3].copy_from_slice(&acc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_constants_and_pil_support() {
        let src = vec![0.25f32; 10 * 8 * 3];
        let out = resize_rgb(&src, 10, 8, 7, 5);
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        // downscaling by 2 widens the kernel to 4 input pixels each side of the centre (3.0):
        // PIL takes inputs int(3 - 4 + 0.5) = 0 .. int(3 + 4 + 0.5) = 7
        let c = coefficients(8, 4);
        assert_eq!(c[1].0, 0);
        assert_eq!(c[1].1.len(), 7);
        assert!((c[1].1.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn foreground_is_cropped_to_crop_size_on_white() {
        // a 20x10 grey rectangle in a 64x64 slice
        let (cols, rows) = (64, 64);
        let mut grey = vec![0f32; cols * rows];
        let mut mask = vec![false; cols * rows];
        for y in 30..41 {
            for x in 10..31 {
                grey[y * cols + x] = 0.5;
                mask[y * cols + x] = true;
            }
        }
        let (rgb, frame) = compose(&grey, &mask, cols, rows, 256, 192).unwrap();
        let at = |x: usize, y: usize| rgb[(y * 256 + x) * 3];
        assert_eq!(at(0, 0), 1.0, "corner is white");
        assert_eq!(
            at(128, 128),
            (0.5f32 * 255.0).floor() / 255.0,
            "centre is the grey"
        );
        // 20 px wide -> 192 px: columns 32..224 are covered, 31 and 224 are white
        assert!(at(31, 128) > 0.99);
        assert!(at(40, 128) < 0.6);
        assert!(at(215, 128) < 0.6);
        assert!(at(224, 128) > 0.99);
        // 20 key pixels span 192 canvas pixels starting at canvas column 32
        assert!((frame.scale - 9.6).abs() < 1e-9);
        let [kx, _] = frame.to_key(32.0, 0.0);
        let first_foreground_column = (0..cols).find(|&x| mask[35 * cols + x]).unwrap();
        assert!((kx - first_foreground_column as f64).abs() < 1e-9, "{kx}");
        // every value is an 8-bit level
        assert!(
            rgb.iter()
                .all(|v| ((v * 255.0) - (v * 255.0).round()).abs() < 1e-3)
        );
    }

    #[test]
    fn empty_foreground_is_none() {
        assert!(compose(&[0.0; 16], &[false; 16], 4, 4, 256, 192).is_none());
    }

    #[test]
    fn clip_input_is_normalised() {
        let img = ConditionImage {
            size: 256,
            rgb: vec![1.0; 256 * 256 * 3],
            slice: 0,
            frame: CanvasFrame {
                origin: [0.0; 2],
                scale: 1.0,
            },
        };
        let mean = [0.481_454_7, 0.457_827_5, 0.408_210_7];
        let std = [0.268_629_5, 0.261_302_6, 0.275_777_1];
        let x = img.clip_input(224, mean, std);
        assert_eq!(x.len(), 3 * 224 * 224);
        assert!((x[0] - (1.0 - mean[0]) / std[0]).abs() < 1e-5);
        assert!((x[2 * 224 * 224] - (1.0 - mean[2]) / std[2]).abs() < 1e-5);
        let v = img.vae_input();
        assert!(v.iter().all(|&a| a == 1.0));
    }
}
