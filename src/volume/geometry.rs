//! Patient-space geometry of a slice stack.
//!
//! Works on Image Position (Patient) (IPP, the centre of the first voxel of
//! a slice, mm, LPS) and Image Orientation (Patient) (IOP: row direction
//! then column direction, unit vectors in LPS). The slice normal is
//! `n = row_dir x col_dir`; slices are ordered by `dot(IPP, n)`, their
//! position along the normal. From there this file checks uniform spacing,
//! finds missing slices (gaps), measures gantry tilt (slice origins drifting
//! sideways) and builds the voxel-to-patient [`Affine`].

use super::{Affine, AssembleOptions, GapPolicy, TiltPolicy, VolumeError};

/// Slice positions may deviate from the regular grid by this fraction of
/// the slice step (or [`AssembleOptions::spacing_tolerance_mm`], whichever is
/// larger): some consoles write positions rounded to 0.1 mm.
const RELATIVE_SPACING_TOLERANCE: f64 = 0.01;

/// Largest angle (degrees) between the slice normal and the direction in
/// which slice origins advance that is still treated as a straight stack.
///
/// Below it the small residual shear is kept in the affine (slice `k` lands
/// exactly at its recorded position, see [`Affine`]); above it the
/// [`TiltPolicy`] applies. Real gantry tilts are several degrees, while
/// rounding of IOP/IPP in real MR series produces a few tenths of a degree
/// (0.42 degrees in a GE Signa series used in the tests).
pub const TILT_TOLERANCE_DEG: f64 = 1.0;

pub(crate) type Vec3 = [f64; 3];

pub(crate) fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn add(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub(crate) fn scale(a: Vec3, s: f64) -> Vec3 {
    [a[0] * s, a[1] * s, a[2] * s]
}

pub(crate) fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

pub(crate) fn normalize(a: Vec3) -> Option<Vec3> {
    let l = norm(a);
    if l.is_finite() && l > 1e-9 {
        Some(scale(a, 1.0 / l))
    } else {
        None
    }
}

/// `A * [i, j, k, 1]`.
pub(crate) fn apply_affine(a: &Affine, ijk: Vec3) -> Vec3 {
    let mut p = [0.0; 3];
    for (r, out) in a.iter().zip(p.iter_mut()) {
        *out = r[0] * ijk[0] + r[1] * ijk[1] + r[2] * ijk[2] + r[3];
    }
    p
}

/// Validated in-plane orientation of an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Orientation {
    /// Direction of increasing column index (first three IOP values), unit.
    pub row_dir: Vec3,
    /// Direction of increasing row index (last three IOP values), unit.
    pub col_dir: Vec3,
    /// Slice normal `row_dir x col_dir`, unit.
    pub normal: Vec3,
}

impl Orientation {
    /// Validates Image Orientation (Patient); `Err` says what is wrong.
    pub fn from_iop(iop: &[f64]) -> Result<Self, String> {
        if iop.len() != 6 || iop.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "Image Orientation (Patient) has {} values instead of 6 numbers",
                iop.len()
            ));
        }
        let r = normalize([iop[0], iop[1], iop[2]]);
        let c = normalize([iop[3], iop[4], iop[5]]);
        let (Some(row_dir), Some(col_dir)) = (r, c) else {
            return Err("Image Orientation (Patient) contains a zero vector".into());
        };
        if dot(row_dir, col_dir).abs() > 0.01 {
            return Err(format!(
                "Image Orientation (Patient) row and column directions are not perpendicular (cos = {:.4})",
                dot(row_dir, col_dir)
            ));
        }
        let normal = normalize(cross(row_dir, col_dir))
            .ok_or_else(|| "Image Orientation (Patient) is degenerate".to_string())?;
        Ok(Orientation {
            row_dir,
            col_dir,
            normal,
        })
    }

    /// True when both directions agree within `tol` (per component).
    pub fn same_as(&self, other: &Orientation, tol: f64) -> bool {
        (0..3).all(|a| {
            (self.row_dir[a] - other.row_dir[a]).abs() <= tol
                && (self.col_dir[a] - other.col_dir[a]).abs() <= tol
        })
    }

    /// "axial", "sagittal", "coronal" or "oblique" (for messages).
    pub fn label(&self) -> &'static str {
        let n = self.normal;
        let (ax, ay, az) = (n[0].abs(), n[1].abs(), n[2].abs());
        let max = ax.max(ay).max(az);
        let base = if max == az {
            "axial"
        } else if max == ax {
            "sagittal"
        } else {
            "coronal"
        };
        if max > 0.999 {
            base
        } else {
            match base {
                "axial" => "oblique (near axial)",
                "sagittal" => "oblique (near sagittal)",
                _ => "oblique (near coronal)",
            }
        }
    }
}

/// One slice handed to [`analyse_stack`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SliceInput {
    /// Image Position (Patient), mm.
    pub ipp: Vec3,
}

/// A run of missing slices between two present ones (sorted slot indices).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gap {
    /// Slot (k) of the slice before the gap.
    pub before_slot: usize,
    /// Slot (k) of the slice after the gap.
    pub after_slot: usize,
    /// Index (into the input) of the slice before the gap.
    pub before_input: usize,
    /// Index (into the input) of the slice after the gap.
    pub after_input: usize,
    /// Position along the normal of the slice before, mm.
    pub before_mm: f64,
    /// Position along the normal of the slice after, mm.
    pub after_mm: f64,
    /// Positions of the missing slices along the normal, mm.
    pub missing_mm: Vec<f64>,
}

/// Result of [`analyse_stack`]: where each input slice goes and the grid.
#[derive(Debug, Clone)]
pub(crate) struct StackGeometry {
    /// Input indices sorted by position along the normal.
    pub order: Vec<usize>,
    /// Output slice index (k) of each entry of `order`.
    pub slots: Vec<usize>,
    /// Number of output slices (including interpolated ones).
    pub n_slices: usize,
    /// Voxel-to-patient transform.
    pub affine: Affine,
    /// Voxel size: column step, row step, slice step (mm).
    pub spacing: [f64; 3],
    /// Missing slice runs (empty unless the policy allowed interpolation).
    pub gaps: Vec<Gap>,
    /// When resampling for tilt: per entry of `order`, the in-plane offset
    /// of that slice in voxels `(di, dj)` relative to the output grid.
    pub shifts: Option<Vec<[f64; 2]>>,
    /// Measured tilt (degrees).
    pub tilt_deg: f64,
}

/// Sorts slices along the normal, validates the spacing, and builds the grid.
///
/// * `pixel_spacing` is DICOM Pixel Spacing: `[row spacing, column spacing]`
///   (mm between rows, mm between columns).
/// * `single_slice_step` is used when there is only one slice (Spacing
///   Between Slices or Slice Thickness).
/// * `label(i)` names input slice `i` in messages (file and UID).
pub(crate) fn analyse_stack(
    slices: &[SliceInput],
    orient: &Orientation,
    pixel_spacing: [f64; 2],
    single_slice_step: f64,
    opts: &AssembleOptions,
    series_uid: &str,
    label: &dyn Fn(usize) -> String,
) -> Result<StackGeometry, VolumeError> {
    let n = orient.normal;
    let col_step = pixel_spacing[1];
    let row_step = pixel_spacing[0];
    let pos: Vec<f64> = slices.iter().map(|s| dot(s.ipp, n)).collect();
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by(|&a, &b| pos[a].total_cmp(&pos[b]));

    let Some(&first) = order.first() else {
        return Err(VolumeError::NoFiles);
    };
    let origin = slices[first].ipp;
    let mut affine: Affine = [[0.0; 4]; 3];
    for a in 0..3 {
        affine[a][0] = orient.row_dir[a] * col_step;
        affine[a][1] = orient.col_dir[a] * row_step;
        affine[a][3] = origin[a];
    }

    if order.len() == 1 {
        for a in 0..3 {
            affine[a][2] = n[a] * single_slice_step;
        }
        return Ok(StackGeometry {
            order,
            slots: vec![0],
            n_slices: 1,
            affine,
            spacing: [col_step, row_step, single_slice_step],
            gaps: Vec::new(),
            shifts: None,
            tilt_deg: 0.0,
        });
    }

    // Consecutive distances along the normal; duplicates first.
    let sorted_pos: Vec<f64> = order.iter().map(|&i| pos[i]).collect();
    let diffs: Vec<f64> = sorted_pos.windows(2).map(|w| w[1] - w[0]).collect();
    let dup_tol = opts.spacing_tolerance_mm.max(1e-4);
    for (w, d) in diffs.iter().enumerate() {
        if *d <= dup_tol {
            return Err(VolumeError::DuplicatePosition {
                series_instance_uid: series_uid.to_string(),
                position_mm: sorted_pos[w],
                first: label(order[w]),
                second: label(order[w + 1]),
            });
        }
    }

    // Nominal step: lower median of the distances (robust to a few gaps).
    let mut sorted_diffs = diffs.clone();
    sorted_diffs.sort_by(f64::total_cmp);
    let nominal = sorted_diffs[(sorted_diffs.len() - 1) / 2];
    let tol = opts
        .spacing_tolerance_mm
        .max(nominal * RELATIVE_SPACING_TOLERANCE);

    // Slot of each sorted slice on the nominal grid.
    let slots: Vec<usize> = sorted_pos
        .iter()
        .map(|p| ((p - sorted_pos[0]) / nominal).round() as usize)
        .collect();
    let last_slot = slots[slots.len() - 1];
    // Least-squares line through (slot, position): robust to positions
    // rounded to a few decimals by the scanner.
    let count = slots.len() as f64;
    let slot_mean = slots.iter().sum::<usize>() as f64 / count;
    let pos_mean = sorted_pos.iter().sum::<f64>() / count;
    let slot_var: f64 = slots.iter().map(|&s| (s as f64 - slot_mean).powi(2)).sum();
    let fit = |values: &dyn Fn(usize) -> f64| -> f64 {
        slots
            .iter()
            .enumerate()
            .map(|(w, &s)| (s as f64 - slot_mean) * values(w))
            .sum::<f64>()
            / slot_var
    };
    let step = fit(&|w| sorted_pos[w] - pos_mean);
    let intercept = pos_mean - step * slot_mean;
    for w in 0..order.len() {
        let deviation = (sorted_pos[w] - (intercept + slots[w] as f64 * step)).abs();
        let repeated_slot = w > 0 && slots[w] == slots[w - 1];
        if deviation > tol || repeated_slot {
            let (b, a) = if w == 0 { (0, 1) } else { (w - 1, w) };
            return Err(VolumeError::IrregularSpacing {
                series_instance_uid: series_uid.to_string(),
                expected_mm: step,
                found_mm: sorted_pos[a] - sorted_pos[b],
                before: label(order[b]),
                before_mm: sorted_pos[b],
                after: label(order[a]),
                after_mm: sorted_pos[a],
            });
        }
    }

    // Gaps.
    let mut gaps = Vec::new();
    for w in 1..order.len() {
        if slots[w] > slots[w - 1] + 1 {
            gaps.push(Gap {
                before_slot: slots[w - 1],
                after_slot: slots[w],
                before_input: order[w - 1],
                after_input: order[w],
                before_mm: sorted_pos[w - 1],
                after_mm: sorted_pos[w],
                missing_mm: (slots[w - 1] + 1..slots[w])
                    .map(|s| intercept + s as f64 * step)
                    .collect(),
            });
        }
    }
    if let (Some(g), GapPolicy::Fail) = (gaps.first(), opts.gaps) {
        return Err(VolumeError::SliceGap {
            series_instance_uid: series_uid.to_string(),
            step_mm: step,
            before: label(g.before_input),
            before_mm: g.before_mm,
            after: label(g.after_input),
            after_mm: g.after_mm,
            missing_mm: g.missing_mm.clone().into_boxed_slice(),
        });
    }

    // Tilt: how the slice origins advance, fitted over the whole stack.
    let ipp = |w: usize| slices[order[w]].ipp;
    let ipp_mean = scale(
        (0..order.len()).fold([0.0; 3], |acc, w| add(acc, ipp(w))),
        1.0 / count,
    );
    let step_vec = [
        fit(&|w| ipp(w)[0] - ipp_mean[0]),
        fit(&|w| ipp(w)[1] - ipp_mean[1]),
        fit(&|w| ipp(w)[2] - ipp_mean[2]),
    ];
    let along = dot(step_vec, n);
    let sideways = sub(step_vec, scale(n, along));
    let tilt_deg = norm(sideways).atan2(along.abs()).to_degrees();
    let shift_mm = norm(sideways) * last_slot as f64;
    // Scatter of the slice origins around the fitted straight line.
    let inplane_tol = tol.max(0.1 * col_step.min(row_step));
    let scatter = (0..order.len())
        .map(|w| {
            let on_line = add(ipp_mean, scale(step_vec, slots[w] as f64 - slot_mean));
            norm(sub(ipp(w), on_line))
        })
        .fold(0.0f64, f64::max);
    let tilted = tilt_deg > TILT_TOLERANCE_DEG || scatter > inplane_tol;

    let mut shifts = None;
    if tilted {
        if opts.tilt == TiltPolicy::Reject {
            return Err(VolumeError::GantryTilt {
                series_instance_uid: series_uid.to_string(),
                angle_deg: tilt_deg,
                shift_mm: shift_mm.max(scatter),
            });
        }
        // Resample: k runs along the normal; each slice is shifted in-plane.
        for a in 0..3 {
            affine[a][2] = n[a] * step;
        }
        let s: Vec<[f64; 2]> = order
            .iter()
            .zip(&sorted_pos)
            .map(|(&i, &p)| {
                let off = sub(sub(slices[i].ipp, origin), scale(n, p - sorted_pos[0]));
                [
                    dot(off, orient.row_dir) / col_step,
                    dot(off, orient.col_dir) / row_step,
                ]
            })
            .collect();
        shifts = Some(s);
    } else {
        // Straight stack: k follows the recorded slice origins.
        for a in 0..3 {
            affine[a][2] = step_vec[a];
        }
    }

    Ok(StackGeometry {
        order,
        slots,
        n_slices: last_slot + 1,
        affine,
        spacing: [col_step, row_step, step],
        gaps,
        shifts,
        tilt_deg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axial() -> Orientation {
        Orientation::from_iop(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).expect("valid")
    }

    fn run(z: &[f64], opts: &AssembleOptions) -> Result<StackGeometry, VolumeError> {
        let s: Vec<SliceInput> = z
            .iter()
            .map(|&z| SliceInput { ipp: [0.0, 0.0, z] })
            .collect();
        analyse_stack(&s, &axial(), [1.0, 1.0], 1.0, opts, "1.2.3", &|i| {
            format!("slice{i}")
        })
    }

    #[test]
    fn sorts_by_position_and_finds_gap() {
        let opts = AssembleOptions {
            gaps: GapPolicy::Interpolate,
            ..Default::default()
        };
        let g = run(&[4.0, 0.0, 2.0, 8.0], &opts).expect("ok");
        assert_eq!(g.order, vec![1, 2, 0, 3]);
        assert_eq!(g.slots, vec![0, 1, 2, 4]);
        assert_eq!(g.n_slices, 5);
        assert_eq!(g.gaps.len(), 1);
        assert!((g.gaps[0].missing_mm[0] - 6.0).abs() < 1e-9);
        let e = run(&[4.0, 0.0, 2.0, 8.0], &AssembleOptions::default()).unwrap_err();
        assert!(matches!(e, VolumeError::SliceGap { .. }), "{e}");
    }

    #[test]
    fn irregular_and_duplicate() {
        let e = run(&[0.0, 2.0, 4.0, 7.0], &AssembleOptions::default()).unwrap_err();
        assert!(matches!(e, VolumeError::IrregularSpacing { .. }), "{e}");
        let e = run(&[0.0, 2.0, 2.0, 4.0], &AssembleOptions::default()).unwrap_err();
        assert!(matches!(e, VolumeError::DuplicatePosition { .. }), "{e}");
    }

    #[test]
    fn orientation_checks() {
        assert!(Orientation::from_iop(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).is_err());
        assert!(Orientation::from_iop(&[1.0, 0.0, 0.0]).is_err());
        let o = Orientation::from_iop(&[0.0, 1.0, 0.0, 0.0, 0.0, -1.0]).expect("sagittal");
        assert_eq!(o.label(), "sagittal");
        assert!((o.normal[0] + 1.0).abs() < 1e-12);
    }
}
