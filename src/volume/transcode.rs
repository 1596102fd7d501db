//! Decompressing a stored instance for a peer that accepts only native transfer syntaxes.
//!
//! C-MOVE and C-GET sub-operations and deliveries send an instance in the syntax it was stored
//! in; a JPEG, JPEG-LS, JPEG 2000 or RLE instance whose receiver takes only Explicit or
//! Implicit VR Little Endian would otherwise fail. This decodes its frames with the same
//! decoders the volume reader uses (dicom-pixeldata, libjpeg-turbo for JPEG Extended) and
//! writes the data set with native Pixel Data and the Image Pixel attributes that PS3.5 8.2 and
//! PS3.3 C.7.6.3 / C.7.6.1.1.5 tie to the encoding: Photometric Interpretation (decoders give
//! RGB for YBR_FULL_422, YBR_ICT, YBR_RCT), Planar Configuration 0 (colour-by-pixel, what the
//! decoders give), Bits Allocated of the decoded samples, Lossy Image Compression "01" kept or
//! set when the stored syntax is always lossy, and no encapsulation-only attributes.
//!
//! Memory is bounded by the one instance: its stored form plus its decoded frames plus the
//! encoded output. Callers on the async runtime run it under `spawn_blocking`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::VolumeError;
use super::decode::{self, DicomFile, PixelLayout, error_chain, get_str, get_u32};
use super::jpeg12::{self, DecodedFrame};

/// Why an instance could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// Reading or decoding the stored file failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The stored or the requested transfer syntax is not one this module converts between.
    #[error("cannot decompress from {from} to {to}")]
    Unsupported {
        /// Stored Transfer Syntax UID.
        from: String,
        /// Requested Transfer Syntax UID.
        to: String,
    },
    /// The Image Pixel attributes do not describe the decoded frames.
    #[error("{path}: {detail}")]
    Pixels {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        detail: String,
    },
    /// Writing the decompressed data set failed.
    #[error("{path}: cannot encode the decompressed data set in {ts}: {detail}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// Target Transfer Syntax UID.
        ts: String,
        /// Encoder message.
        detail: String,
    },
}

impl TranscodeError {
    /// The reason without the file's path, for log lines that already name the instance by
    /// its UID (the path would take most of a length-capped field).
    pub fn reason(&self) -> String {
        match self {
            TranscodeError::Volume(VolumeError::Decode {
                frame,
                transfer_syntax,
                detail,
                ..
            }) => format!("frame {frame} ({transfer_syntax}) does not decode: {detail}"),
            TranscodeError::Volume(VolumeError::Read { detail, .. }) => detail.clone(),
            TranscodeError::Pixels { detail, .. } => detail.clone(),
            TranscodeError::Encode { ts, detail, .. } => format!("encoding in {ts}: {detail}"),
            other => other.to_string(),
        }
    }
}

const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// True when an instance stored in `ts_uid` has compressed (encapsulated) pixel data that the
/// node can decode to native samples.
pub fn can_decompress(ts_uid: &str) -> bool {
    ts_uid == jpeg12::JPEG_EXTENDED
        || TransferSyntaxRegistry
            .get(ts_uid)
            .is_some_and(|ts| ts.is_encapsulated_pixel_data() && ts.can_decode_all())
}

/// Syntaxes whose every encoding discards information (JPEG Baseline and Extended); for the
/// others (JPEG-LS near-lossless, JPEG 2000) only the instance's own Lossy Image Compression
/// says, so it is kept as it is.
fn always_lossy(ts_uid: &str) -> Option<&'static str> {
    match ts_uid {
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" => Some("ISO_10918_1"),
        _ => None,
    }
}

/// The data set of the Part 10 file at `path` (stored in `stored_ts`, an encapsulated syntax
/// [`can_decompress`] accepts), decompressed and encoded in `target_ts` (Explicit or Implicit
/// VR Little Endian), ready to be sent as a C-STORE data set.
pub fn decompressed_data_set(
    path: &Path,
    stored_ts: &str,
    target_ts: &str,
) -> Result<Vec<u8>, TranscodeError> {
    let unsupported = || TranscodeError::Unsupported {
        from: stored_ts.to_string(),
        to: target_ts.to_string(),
    };
    if !can_decompress(stored_ts) || !matches!(target_ts, EXPLICIT_VR_LE | IMPLICIT_VR_LE) {
        return Err(unsupported());
    }
    let ts = TransferSyntaxRegistry
        .get(target_ts)
        .ok_or_else(unsupported)?;
    let mut file = decode::read_full(path)?;
    let file_ts = file.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    if file_ts != stored_ts {
        return Err(TranscodeError::Pixels {
            path: path.to_path_buf(),
            detail: format!("the file is in {file_ts}, not in the indexed {stored_ts}"),
        });
    }
    let native = decode_all(&file, path)?;
    apply(&mut file, stored_ts, native);
    let mut out = Vec::new();
    file.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| TranscodeError::Encode {
            path: path.to_path_buf(),
            ts: target_ts.to_string(),
            detail: error_chain(&e),
        })?;
    Ok(out)
}

/// Every frame decoded, as Pixel Data in little-endian byte order, and what describes it.
struct Native {
    data: Vec<u8>,
    samples_per_pixel: u32,
    bits_allocated: u16,
}

fn decode_all(file: &DicomFile, path: &Path) -> Result<Native, TranscodeError> {
    let pixels = |detail: String| TranscodeError::Pixels {
        path: path.to_path_buf(),
        detail,
    };
    let (Some(rows), Some(cols)) = (get_u32(file, tags::ROWS), get_u32(file, tags::COLUMNS)) else {
        return Err(pixels("no Rows/Columns: not an image".into()));
    };
    let frames = match file.get(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(e) => match e.to_int::<i64>() {
            Ok(n) if (1..=i64::from(u32::MAX)).contains(&n) => n as u32,
            _ => return Err(pixels("invalid Number of Frames (0028,0008)".into())),
        },
    };
    let samples = get_u32(file, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits_allocated = get_u32(file, tags::BITS_ALLOCATED)
        .filter(|b| matches!(b, 8 | 16 | 32))
        .ok_or_else(|| pixels("Bits Allocated (0028,0100) missing or not 8, 16 or 32".into()))?
        as u16;
    let bits_stored = get_u32(file, tags::BITS_STORED).unwrap_or(u32::from(bits_allocated)) as u16;
    let layout = PixelLayout {
        rows,
        cols,
        frames,
        bits_allocated,
        bits_stored,
        high_bit: get_u32(file, tags::HIGH_BIT)
            .map(|h| h as u16)
            .unwrap_or(bits_stored.saturating_sub(1)),
        signed: get_u32(file, tags::PIXEL_REPRESENTATION) == Some(1),
        photometric: get_str(file, tags::PHOTOMETRIC_INTERPRETATION)
            .unwrap_or_else(|| "MONOCHROME2".into()),
    };
    let ts_uid = file.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    let decode_err = |frame0: u32, detail: String| {
        TranscodeError::Volume(VolumeError::Decode {
            path: path.to_path_buf(),
            frame: frame0 + 1,
            transfer_syntax: ts_uid.to_string(),
            detail,
        })
    };
    let mut data: Vec<u8> = Vec::new();
    let mut out_bits: Option<u16> = None;
    for frame0 in 0..frames {
        // JPEG Extended goes to libjpeg-turbo (12-bit lossy, grey), the rest to dicom-pixeldata,
        // as in the volume reader.
        let decoded: Box<dyn DecodedFrame + '_> = if jpeg12::handles(file) && samples == 1 {
            Box::new(
                jpeg12::decode_frame(file, &layout, frame0).map_err(|e| decode_err(frame0, e))?,
            )
        } else {
            Box::new(
                catch_unwind(AssertUnwindSafe(|| file.decode_pixel_data_frame(frame0)))
                    .map_err(|_| {
                        decode_err(
                            frame0,
                            "the decoder crashed on this pixel data (corrupt stream?)".into(),
                        )
                    })?
                    .map_err(|e| decode_err(frame0, error_chain(&e)))?,
            )
        };
        if decoded.rows() != rows
            || decoded.columns() != cols
            || u32::from(decoded.samples_per_pixel()) != samples
        {
            return Err(decode_err(
                frame0,
                format!(
                    "decoded {}x{} with {} sample(s) per pixel, the header says {cols}x{rows} with {samples}",
                    decoded.columns(),
                    decoded.rows(),
                    decoded.samples_per_pixel()
                ),
            ));
        }
        let bits = decoded.bits_allocated();
        if !matches!(bits, 8 | 16 | 32) || out_bits.is_some_and(|b| b != bits) {
            return Err(decode_err(
                frame0,
                format!("decoded samples of {bits} bits"),
            ));
        }
        out_bits = Some(bits);
        let width = usize::from(bits / 8);
        let len = rows as usize * cols as usize * samples as usize * width;
        let bytes = decoded.data().get(..len).ok_or_else(|| {
            decode_err(
                frame0,
                format!(
                    "{} bytes decoded, {len} expected (truncated stream?)",
                    decoded.data().len()
                ),
            )
        })?;
        if data.is_empty() {
            data.reserve_exact(len * frames as usize);
        }
        // Decoders give native byte order; Pixel Data is little endian.
        if cfg!(target_endian = "big") && width > 1 {
            for c in bytes.chunks_exact(width) {
                data.extend(c.iter().rev());
            }
        } else {
            data.extend_from_slice(bytes);
        }
    }
    if data.len() % 2 == 1 {
        data.push(0);
    }
    Ok(Native {
        data,
        samples_per_pixel: samples,
        bits_allocated: out_bits.unwrap_or(bits_allocated),
    })
}

/// Replaces the encapsulated Pixel Data with `native` and updates what describes it.
fn apply(file: &mut DicomFile, stored_ts: &str, native: Native) {
    let put = |file: &mut DicomFile, tag, vr, value: PrimitiveValue| {
        file.put(DataElement::new(tag, vr, value));
    };
    let bits = native.bits_allocated;
    let vr = if bits <= 8 { VR::OB } else { VR::OW };
    put(
        file,
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::from(native.data),
    );
    for tag in [
        tags::EXTENDED_OFFSET_TABLE,
        tags::EXTENDED_OFFSET_TABLE_LENGTHS,
        tags::ENCAPSULATED_PIXEL_DATA_VALUE_TOTAL_LENGTH,
    ] {
        file.remove_element(tag);
    }
    if get_u32(file, tags::BITS_ALLOCATED) != Some(u32::from(bits)) {
        put(
            file,
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(bits),
        );
        let stored = get_u32(file, tags::BITS_STORED).map_or(bits, |b| (b as u16).min(bits));
        put(
            file,
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(stored),
        );
        put(
            file,
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(stored - 1),
        );
    }
    if native.samples_per_pixel > 1 {
        // RLE keeps the colour model (PS3.5 G.2); every other decoder hands back RGB.
        if stored_ts != RLE_LOSSLESS {
            put(
                file,
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from("RGB"),
            );
        }
        put(
            file,
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        );
    }
    if let Some(method) = always_lossy(stored_ts) {
        put(
            file,
            tags::LOSSY_IMAGE_COMPRESSION,
            VR::CS,
            PrimitiveValue::from("01"),
        );
        if file.get(tags::LOSSY_IMAGE_COMPRESSION_METHOD).is_none() {
            put(
                file,
                tags::LOSSY_IMAGE_COMPRESSION_METHOD,
                VR::CS,
                PrimitiveValue::from(method),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testfile(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/files")
            .join(name)
    }

    fn ts_of(path: &Path) -> String {
        dicom_object::OpenFileOptions::new()
            .read_until(tags::SPECIFIC_CHARACTER_SET)
            .open_file(path)
            .unwrap()
            .meta()
            .transfer_syntax()
            .trim_end_matches(['\0', ' '])
            .to_string()
    }

    /// The decompressed data set reads back with the native samples of the uncompressed
    /// original (all of these encodings are lossless).
    #[test]
    fn lossless_encodings_decompress_to_the_original_samples() {
        let reference = dicom_object::open_file(testfile("pydicom/MR_small.dcm")).unwrap();
        let want = reference
            .element(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec();
        for name in [
            "pydicom/MR_small_RLE.dcm",
            "pydicom/MR_small_jpeg_ls_lossless.dcm",
            "pydicom/MR_small_jp2klossless.dcm",
        ] {
            let path = testfile(name);
            let stored = ts_of(&path);
            assert!(can_decompress(&stored), "{name} {stored}");
            for target in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
                let bytes = decompressed_data_set(&path, &stored, target).unwrap();
                let ts = TransferSyntaxRegistry.get(target).unwrap();
                let obj =
                    dicom_object::InMemDicomObject::read_dataset_with_ts(bytes.as_slice(), ts)
                        .unwrap();
                let got = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
                assert_eq!(got.as_ref(), want.as_slice(), "{name} -> {target}");
                assert!(obj.get(tags::LOSSY_IMAGE_COMPRESSION).is_none(), "{name}");
            }
        }
    }

    #[test]
    fn jpeg_extended_is_decoded_by_libjpeg_turbo_and_marked_lossy() {
        let path = testfile("pydicom/JPGExtended.dcm");
        let stored = ts_of(&path);
        assert_eq!(stored, jpeg12::JPEG_EXTENDED);
        let bytes = decompressed_data_set(&path, &stored, EXPLICIT_VR_LE).unwrap();
        let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(
            bytes.as_slice(),
            TransferSyntaxRegistry.get(EXPLICIT_VR_LE).unwrap(),
        )
        .unwrap();
        let rows = get_u32(&obj, tags::ROWS).unwrap() as usize;
        let cols = get_u32(&obj, tags::COLUMNS).unwrap() as usize;
        let px = obj.element(tags::PIXEL_DATA).unwrap();
        assert_eq!(px.vr(), VR::OW);
        assert_eq!(px.to_bytes().unwrap().len(), rows * cols * 2);
        assert_eq!(
            get_str(&obj, tags::LOSSY_IMAGE_COMPRESSION).as_deref(),
            Some("01")
        );
    }

    #[test]
    fn native_and_unknown_syntaxes_are_not_decompressed() {
        assert!(!can_decompress(EXPLICIT_VR_LE));
        assert!(!can_decompress("1.2.840.10008.1.2.1.99"));
        assert!(!can_decompress("1.2.3.4"));
        let path = testfile("pydicom/MR_small.dcm");
        assert!(matches!(
            decompressed_data_set(&path, EXPLICIT_VR_LE, IMPLICIT_VR_LE),
            Err(TranscodeError::Unsupported { .. })
        ));
    }

    #[test]
    fn a_broken_stream_is_an_error_not_a_panic() {
        let path = testfile("pydicom/emri_small_jpeg_2k_lossless_too_short.dcm");
        let stored = ts_of(&path);
        assert!(decompressed_data_set(&path, &stored, EXPLICIT_VR_LE).is_err());
    }
}
