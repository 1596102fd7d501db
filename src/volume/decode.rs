//! Reading DICOM objects and decoding their frames into voxel buffers.
//!
//! Files are read with the regular `dicom-object` reader; when it fails,
//! with the `dicom-object` collector, which stops right after Pixel Data, so
//! real-world files with trailing garbage after the pixel data (seen on an
//! older GE console) are still readable. Truncated files are reported as
//! such (short native pixel data, compressed pixel data without its
//! sequence delimiter). Each frame is decoded
//! with `dicom-pixeldata` (`decode_pixel_data_frame`), then masked to Bits
//! Stored, sign-extended and written into the caller's output slice, so a
//! volume never holds more than its own buffer plus the current file.
//!
//! Values are never inverted for MONOCHROME1 (display-only convention):
//! thresholds always apply to stored / modality values.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DicomValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::{Codec, Endianness, TransferSyntaxIndex};
use dicom_object::{
    DicomCollector, FileDicomObject, InMemDicomObject, OpenFileOptions, mem::InMemElement,
};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tracing::debug;

use super::jpeg12::{self, DecodedFrame};
use super::{Rescale, VolumeError};

/// A DICOM file in memory (header, and pixel data when read in full).
pub(crate) type DicomFile = FileDicomObject<InMemDicomObject>;

/// First tag of the pixel data group: headers are read up to (excluding) it.
const PIXEL_GROUP_START: Tag = Tag(0x7FE0, 0x0000);
/// First tag after Pixel Data (used to collect encapsulated pixel data).
const AFTER_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0011);

/// Error message of `e` including all its causes.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        src = s.source();
    }
    msg
}

fn read_error(path: &Path, e: &dyn std::error::Error) -> VolumeError {
    VolumeError::Read {
        path: path.to_path_buf(),
        detail: error_chain(e),
    }
}

/// Proves a file with the streaming header walk before dicom-object parses it: dicom-object
/// recurses into sequences on the stack and inflates deflated data sets into memory, and
/// stored files may predate the receive-side checks.
fn prove(path: &Path) -> Result<(), VolumeError> {
    use crate::store::header::{HeaderError, check_part10};
    check_part10(path).map_err(|source| match source {
        HeaderError::NotPart10(_) | HeaderError::Io(_) => VolumeError::Read {
            path: path.to_path_buf(),
            detail: source.to_string(),
        },
        source => VolumeError::Refused {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Reads the header of a DICOM file: everything before the pixel data group.
pub(crate) fn read_header(path: &Path) -> Result<DicomFile, VolumeError> {
    prove(path)?;
    match OpenFileOptions::new()
        .read_until(PIXEL_GROUP_START)
        .open_file(path)
    {
        Ok(file) => Ok(file),
        Err(e) => collect(path, false).map_err(|_| read_error(path, &e)),
    }
}

/// Reads a DICOM file including its pixel data.
///
/// The regular `dicom-object` reader is tried first; when it fails, the
/// collector, which stops right after Pixel Data, is tried (it accepts
/// files with trailing garbage after the pixel data). The first error is
/// reported when both fail. Encapsulated pixel data is checked for a
/// missing end (truncated file).
pub(crate) fn read_full(path: &Path) -> Result<DicomFile, VolumeError> {
    prove(path)?;
    let file = match OpenFileOptions::new().open_file(path) {
        Ok(file) => file,
        Err(e) => match collect(path, true) {
            Ok(file) => {
                debug!(path = %path.display(), "read with the tolerant reader (data after Pixel Data ignored)");
                file
            }
            Err(_) => return Err(read_error(path, &e)),
        },
    };
    if let Some(DicomValue::PixelSequence(seq)) = file.get(tags::PIXEL_DATA).map(|e| e.value()) {
        let body: u64 = 8
            + 4 * seq.offset_table().len() as u64
            + seq
                .fragments()
                .iter()
                .map(|f| 8 + f.len() as u64)
                .sum::<u64>();
        check_pixel_sequence_end(path, body)?;
    }
    Ok(file)
}

/// Reads with the `dicom-object` collector, which never looks past Pixel
/// Data: the header only (`with_pixels == false`) or including pixel data.
fn collect(path: &Path, with_pixels: bool) -> Result<DicomFile, VolumeError> {
    let mut collector = DicomCollector::open_file(path).map_err(|e| read_error(path, &e))?;
    let ts_uid = collector
        .read_file_meta()
        .map_err(|e| read_error(path, &e))?
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    let ts = TransferSyntaxRegistry
        .get(&ts_uid)
        .ok_or_else(|| VolumeError::Read {
            path: path.to_path_buf(),
            detail: format!("unknown transfer syntax {ts_uid}"),
        })?;
    if matches!(ts.codec(), Codec::Dataset(_)) {
        // Deflated data sets are handled by the regular reader only.
        return Err(VolumeError::Read {
            path: path.to_path_buf(),
            detail: "deflated data set".into(),
        });
    }
    let mut obj = InMemDicomObject::new_empty();
    let stop = if with_pixels {
        tags::PIXEL_DATA
    } else {
        PIXEL_GROUP_START
    };
    collector
        .read_dataset_up_to(stop, &mut obj)
        .map_err(|e| read_error(path, &e))?;
    if with_pixels {
        if ts.is_encapsulated_pixel_data() {
            collector
                .read_dataset_up_to(AFTER_PIXEL_DATA, &mut obj)
                .map_err(|e| read_error(path, &e))?;
        } else {
            let mut bytes = Vec::new();
            let found = collector
                .read_next_fragment(&mut bytes)
                .map_err(|e| read_error(path, &e))?;
            if let Some(len) = found {
                if (bytes.len() as u64) < u64::from(len) {
                    return Err(VolumeError::Read {
                        path: path.to_path_buf(),
                        detail: format!(
                            "the file is truncated: Pixel Data holds {} of its {len} bytes",
                            bytes.len()
                        ),
                    });
                }
                let bits = obj
                    .get(tags::BITS_ALLOCATED)
                    .and_then(|e| e.to_int::<u16>().ok())
                    .unwrap_or(16);
                if ts.endianness() == Endianness::Big {
                    to_native_from_big_endian(&mut bytes, bits);
                } else {
                    to_native_from_little_endian(&mut bytes, bits);
                }
                obj.put(InMemElement::new(
                    tags::PIXEL_DATA,
                    VR::OB,
                    PrimitiveValue::from(bytes),
                ));
            }
        }
    }
    let meta = collector
        .take_file_meta()
        .ok_or_else(|| VolumeError::Read {
            path: path.to_path_buf(),
            detail: "file meta information missing".into(),
        })?;
    Ok(obj.with_exact_meta(meta))
}

/// Encapsulated Pixel Data ends with a Sequence Delimitation Item; a file
/// cut right after the last fragment still parses (the parser takes the end
/// of file as the end of the sequence), so check it explicitly.
///
/// `body` is the encoded size of the items (offset table and fragments).
/// Only the usual layout, Pixel Data as the last element, can be checked
/// cheaply; otherwise the file is accepted.
fn check_pixel_sequence_end(path: &Path, body: u64) -> Result<(), VolumeError> {
    const HEADER_LEN: u64 = 12;
    const DELIMITER: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];
    let io = |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut read_at = |pos: u64, buf: &mut [u8]| -> std::io::Result<()> {
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(buf)
    };
    let is_pixel_header =
        |h: &[u8; 12]| h[..4] == [0xE0, 0x7F, 0x10, 0x00] && h[8..] == [0xFF, 0xFF, 0xFF, 0xFF];
    let mut header = [0u8; 12];
    let complete = HEADER_LEN + body + 8;
    if size >= complete {
        read_at(size - complete, &mut header).map_err(io)?;
        if is_pixel_header(&header) {
            let mut tail = [0u8; 8];
            read_at(size - 8, &mut tail).map_err(io)?;
            if tail == DELIMITER {
                return Ok(());
            }
        }
    }
    let cut = HEADER_LEN + body;
    if size >= cut {
        read_at(size - cut, &mut header).map_err(io)?;
        if is_pixel_header(&header) {
            return Err(VolumeError::Read {
                path: path.to_path_buf(),
                detail: "the file is truncated: the compressed Pixel Data ends without its Sequence Delimitation Item".into(),
            });
        }
    }
    Ok(())
}

/// Pixel Data bytes as read from a big endian file -> native byte order.
fn to_native_from_big_endian(bytes: &mut [u8], bits_allocated: u16) {
    match bits_allocated {
        16 => {
            for c in bytes.chunks_exact_mut(2) {
                let v = u16::from_be_bytes([c[0], c[1]]);
                c.copy_from_slice(&v.to_ne_bytes());
            }
        }
        32 => {
            for c in bytes.chunks_exact_mut(4) {
                let v = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                c.copy_from_slice(&v.to_ne_bytes());
            }
        }
        _ => {}
    }
}

/// Pixel Data bytes as read from a little endian file -> native byte order
/// (a no-op on little endian machines).
fn to_native_from_little_endian(bytes: &mut [u8], bits_allocated: u16) {
    if cfg!(target_endian = "big") {
        for c in bytes.chunks_exact_mut(usize::from(bits_allocated / 8).max(1)) {
            c.reverse();
        }
    }
}

/// What the pixel samples of an image look like (Image Pixel module).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PixelLayout {
    /// Rows (0028,0010).
    pub rows: u32,
    /// Columns (0028,0011).
    pub cols: u32,
    /// Number of Frames (0028,0008), 1 when absent.
    pub frames: u32,
    /// Bits Allocated (0028,0100).
    pub bits_allocated: u16,
    /// Bits Stored (0028,0101).
    pub bits_stored: u16,
    /// High Bit (0028,0102).
    pub high_bit: u16,
    /// Pixel Representation (0028,0103) == 1.
    pub signed: bool,
    /// Photometric Interpretation (0028,0004).
    pub photometric: String,
}

impl PixelLayout {
    /// Range of stored values this layout can hold.
    pub fn value_range(&self) -> (f64, f64) {
        if self.bits_allocated >= 32 && self.bits_stored >= 32 {
            return (f64::from(f32::MIN), f64::from(f32::MAX));
        }
        let bits = i32::from(self.bits_stored.clamp(1, 32));
        if self.signed {
            let half = 2f64.powi(bits - 1);
            (-half, half - 1.0)
        } else {
            (0.0, 2f64.powi(bits) - 1.0)
        }
    }

    /// Samples in one frame.
    pub fn frame_len(&self) -> usize {
        self.rows as usize * self.cols as usize
    }
}

pub(crate) fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

pub(crate) fn get_u32(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.get(tag)?.to_int::<u32>().ok()
}

/// Reads and validates the Image Pixel module of `obj`.
pub(crate) fn pixel_layout(
    obj: &InMemDicomObject,
    path: &Path,
) -> Result<PixelLayout, VolumeError> {
    let sop_class = get_str(obj, tags::SOP_CLASS_UID).unwrap_or_else(|| "unknown".into());
    let (Some(rows), Some(cols)) = (get_u32(obj, tags::ROWS), get_u32(obj, tags::COLUMNS)) else {
        return Err(VolumeError::NotAnImage {
            path: path.to_path_buf(),
            sop_class_uid: sop_class,
        });
    };
    let missing = |attribute: &'static str| VolumeError::MissingAttribute {
        path: path.to_path_buf(),
        attribute,
        frame: None,
    };
    if rows == 0 || cols == 0 {
        return Err(missing("Rows/Columns (0028,0010/0011)"));
    }
    let frames = match obj.get(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(e) => match e.to_int::<i64>() {
            Ok(n) if n >= 1 && n <= i64::from(u32::MAX) => n as u32,
            _ => return Err(missing("Number of Frames (0028,0008)")),
        },
    };
    let samples = get_u32(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric =
        get_str(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".into());
    if samples != 1 || !photometric.starts_with("MONOCHROME") {
        return Err(VolumeError::UnsupportedPixelFormat {
            path: path.to_path_buf(),
            detail: format!(
                "colour image ({samples} sample(s) per pixel, {photometric}); only grey-level (MONOCHROME) images form a volume"
            ),
        });
    }
    let bits_allocated =
        get_u32(obj, tags::BITS_ALLOCATED).ok_or_else(|| missing("Bits Allocated (0028,0100)"))?;
    if !matches!(bits_allocated, 8 | 16 | 32 | 64) {
        return Err(VolumeError::UnsupportedPixelFormat {
            path: path.to_path_buf(),
            detail: format!("Bits Allocated {bits_allocated} (8, 16 or 32 expected)"),
        });
    }
    let bits_stored = get_u32(obj, tags::BITS_STORED).unwrap_or(bits_allocated);
    let high_bit = get_u32(obj, tags::HIGH_BIT).unwrap_or(bits_stored.saturating_sub(1));
    if bits_stored == 0 || bits_stored > bits_allocated || high_bit >= bits_allocated {
        return Err(VolumeError::UnsupportedPixelFormat {
            path: path.to_path_buf(),
            detail: format!(
                "inconsistent Bits Allocated {bits_allocated} / Bits Stored {bits_stored} / High Bit {high_bit}"
            ),
        });
    }
    let signed = get_u32(obj, tags::PIXEL_REPRESENTATION) == Some(1);
    Ok(PixelLayout {
        rows,
        cols,
        frames,
        bits_allocated: bits_allocated as u16,
        bits_stored: bits_stored as u16,
        high_bit: high_bit as u16,
        signed,
        photometric,
    })
}

/// Destination of one decoded frame: a slice of the output volume.
pub(crate) enum FrameOut<'a> {
    /// Stored values, unsigned 8-bit.
    U8(&'a mut [u8]),
    /// Stored values, signed 16-bit.
    I16(&'a mut [i16]),
    /// Stored values, unsigned 16-bit.
    U16(&'a mut [u16]),
    /// Values after applying the given rescale.
    F32(&'a mut [f32], Rescale),
}

impl FrameOut<'_> {
    fn len(&self) -> usize {
        match self {
            FrameOut::U8(s) => s.len(),
            FrameOut::I16(s) => s.len(),
            FrameOut::U16(s) => s.len(),
            FrameOut::F32(s, _) => s.len(),
        }
    }
}

/// A voxel sample type the volume can be decoded into.
pub(crate) trait OutSample: Copy + Send + Sync + Default + 'static {
    /// Wraps an output slice so the decoder can write into it.
    fn frame_out(slice: &mut [Self], rescale: Rescale) -> FrameOut<'_>;
}

impl OutSample for u8 {
    fn frame_out(slice: &mut [Self], _: Rescale) -> FrameOut<'_> {
        FrameOut::U8(slice)
    }
}
impl OutSample for i16 {
    fn frame_out(slice: &mut [Self], _: Rescale) -> FrameOut<'_> {
        FrameOut::I16(slice)
    }
}
impl OutSample for u16 {
    fn frame_out(slice: &mut [Self], _: Rescale) -> FrameOut<'_> {
        FrameOut::U16(slice)
    }
}
impl OutSample for f32 {
    fn frame_out(slice: &mut [Self], rescale: Rescale) -> FrameOut<'_> {
        FrameOut::F32(slice, rescale)
    }
}

/// RLE Lossless (PS3.5 G.5): a frame's fragment starts with a 64-byte header of at most 15
/// segment offsets. dicom-rs sizes a table by the header's segment count before checking it,
/// so a corrupt count (the fuzzer found 0x2A000002) asks for gigabytes; the header is checked
/// here first: 1 to 15 segments, each offset inside the fragment and in order.
fn check_rle_header(file: &DicomFile, frames: u32, frame0: u32) -> Result<(), String> {
    const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
    if file.meta().transfer_syntax().trim_end_matches(['\0', ' ']) != RLE_LOSSLESS {
        return Ok(());
    }
    let Some(DicomValue::PixelSequence(seq)) = file.get(tags::PIXEL_DATA).map(|e| e.value()) else {
        return Ok(());
    };
    let fragments = seq.fragments();
    // One fragment per frame (PS3.5 A.4.2); anything else is left to the decoder's checks.
    let fragment = match (fragments.len() == frames as usize, frames) {
        (true, _) => fragments.get(frame0 as usize),
        (false, 1) => fragments.first(),
        _ => None,
    };
    let Some(fragment) = fragment else {
        return Ok(());
    };
    let word = |i: usize| {
        fragment
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(segments), true) = (word(0), fragment.len() >= 64) else {
        return Err(format!(
            "RLE frame of {} bytes is shorter than its 64-byte header",
            fragment.len()
        ));
    };
    if !(1..=15).contains(&segments) {
        return Err(format!(
            "RLE header declares {segments} segments (PS3.5 G.5 allows 1 to 15)"
        ));
    }
    let mut previous = 63u32;
    for i in 1..=segments as usize {
        let offset = word(i).unwrap_or(u32::MAX);
        if offset <= previous || offset as usize >= fragment.len() {
            return Err(format!(
                "RLE segment {i} starts at byte {offset}, outside its {}-byte frame or out of order",
                fragment.len()
            ));
        }
        previous = offset;
    }
    Ok(())
}

fn ts_description(file: &DicomFile) -> String {
    let uid = file.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => format!("{uid} {}", ts.name()),
        None => uid.to_string(),
    }
}

/// Decodes frame `frame0` (0-based) of `file` into `out`.
///
/// Integer samples are masked to Bits Stored (shifted by High Bit) and
/// sign-extended when Pixel Representation is signed; `FrameOut::F32`
/// additionally applies its rescale. Float Pixel Data (7FE0,0008) and Double
/// Float Pixel Data (7FE0,0009) are read directly into `F32` outputs.
pub(crate) fn decode_frame(
    file: &DicomFile,
    path: &Path,
    layout: &PixelLayout,
    frame0: u32,
    out: FrameOut<'_>,
) -> Result<(), VolumeError> {
    let n = layout.frame_len();
    let decode_err = |detail: String| VolumeError::Decode {
        path: path.to_path_buf(),
        frame: frame0 + 1,
        transfer_syntax: ts_description(file),
        detail,
    };
    if out.len() != n {
        return Err(decode_err(format!(
            "internal size mismatch: {} output samples for a {}x{} frame",
            out.len(),
            layout.cols,
            layout.rows
        )));
    }
    if file.get(tags::PIXEL_DATA).is_none() {
        for (tag, width) in [
            (tags::FLOAT_PIXEL_DATA, 4),
            (tags::DOUBLE_FLOAT_PIXEL_DATA, 8),
        ] {
            if let Some(elem) = file.get(tag) {
                return decode_float_frame(elem, width, n, frame0, out).map_err(decode_err);
            }
        }
        return Err(decode_err("the object has no Pixel Data".into()));
    }

    // Native pixel data shorter than announced: a truncated file.
    if let Some(p) = file
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().primitive())
    {
        let have = p.to_bytes().len() as u64;
        let frame_bytes = n as u64 * u64::from(layout.bits_allocated.div_ceil(8));
        let need = frame_bytes * (u64::from(frame0) + 1);
        if have < need {
            return Err(decode_err(format!(
                "pixel data is truncated: {have} bytes present, {} needed for {} frame(s) of {}x{}",
                frame_bytes * u64::from(layout.frames),
                layout.frames,
                layout.cols,
                layout.rows
            )));
        }
    }
    check_rle_header(file, layout.frames, frame0).map_err(decode_err)?;
    // JPEG Extended goes to libjpeg-turbo (12-bit lossy), every other syntax to dicom-pixeldata.
    let decoded: Box<dyn DecodedFrame + '_> = if jpeg12::handles(file) {
        Box::new(jpeg12::decode_frame(file, layout, frame0).map_err(decode_err)?)
    } else {
        Box::new(
            catch_unwind(AssertUnwindSafe(|| file.decode_pixel_data_frame(frame0)))
                .map_err(|_| {
                    decode_err("the decoder crashed on this pixel data (corrupt stream?)".into())
                })?
                .map_err(|e| decode_err(error_chain(&e)))?,
        )
    };
    if decoded.rows() != layout.rows || decoded.columns() != layout.cols {
        return Err(decode_err(format!(
            "decoded size {}x{} differs from the header's {}x{}",
            decoded.columns(),
            decoded.rows(),
            layout.cols,
            layout.rows
        )));
    }
    if decoded.samples_per_pixel() != 1 {
        return Err(decode_err("decoded image has colour samples".into()));
    }
    let bytes_per_sample = usize::from(decoded.bits_allocated().div_ceil(8));
    let data = decoded.data();
    let expected = n * bytes_per_sample;
    if data.len() < expected {
        return Err(decode_err(format!(
            "pixel data is too short: {} bytes decoded, {expected} expected (truncated file or stream?)",
            data.len()
        )));
    }
    let data = &data[..expected];
    let bits_stored = u32::from(layout.bits_stored.min(decoded.bits_allocated()));
    let shift = (u32::from(layout.high_bit) + 1).saturating_sub(bits_stored);
    let conv = SampleConv::new(bits_stored, shift, layout.signed);
    match bytes_per_sample {
        1 => write_samples(data.iter().map(|&b| conv.apply(u32::from(b))), out),
        2 => write_samples(
            data.chunks_exact(2)
                .map(|c| conv.apply(u32::from(u16::from_ne_bytes([c[0], c[1]])))),
            out,
        ),
        4 => write_samples(
            data.chunks_exact(4)
                .map(|c| conv.apply(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))),
            out,
        ),
        other => {
            return Err(decode_err(format!(
                "unsupported sample size of {other} bytes"
            )));
        }
    }
    Ok(())
}

/// Masking / sign extension of raw integer samples.
#[derive(Clone, Copy)]
struct SampleConv {
    mask: u64,
    shift: u32,
    sign_bit: u64,
    signed: bool,
    bits: u32,
}

impl SampleConv {
    fn new(bits_stored: u32, shift: u32, signed: bool) -> Self {
        let bits = bits_stored.clamp(1, 32);
        SampleConv {
            mask: (1u64 << bits) - 1,
            shift: shift.min(31),
            sign_bit: 1u64 << (bits - 1),
            signed,
            bits,
        }
    }

    #[inline]
    fn apply(&self, raw: u32) -> i64 {
        let v = (u64::from(raw) >> self.shift) & self.mask;
        if self.signed && v & self.sign_bit != 0 {
            v as i64 - (1i64 << self.bits)
        } else {
            v as i64
        }
    }
}

fn write_samples(values: impl Iterator<Item = i64>, out: FrameOut<'_>) {
    match out {
        FrameOut::U8(dst) => {
            for (d, v) in dst.iter_mut().zip(values) {
                *d = v.clamp(0, i64::from(u8::MAX)) as u8;
            }
        }
        FrameOut::I16(dst) => {
            for (d, v) in dst.iter_mut().zip(values) {
                *d = v.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
            }
        }
        FrameOut::U16(dst) => {
            for (d, v) in dst.iter_mut().zip(values) {
                *d = v.clamp(0, i64::from(u16::MAX)) as u16;
            }
        }
        FrameOut::F32(dst, r) => {
            for (d, v) in dst.iter_mut().zip(values) {
                *d = r.apply(v as f64) as f32;
            }
        }
    }
}

fn decode_float_frame(
    elem: &InMemElement,
    width: usize,
    n: usize,
    frame0: u32,
    out: FrameOut<'_>,
) -> Result<(), String> {
    let FrameOut::F32(dst, r) = out else {
        return Err("floating point pixels need a floating point volume".into());
    };
    let bytes = match elem.value().primitive() {
        Some(p) => p.to_bytes(),
        None => return Err("float pixel data is not a plain value".into()),
    };
    let start = n * width * frame0 as usize;
    let Some(frame) = bytes.get(start..start + n * width) else {
        return Err(format!(
            "float pixel data is too short for frame {} ({} bytes)",
            frame0 + 1,
            bytes.len()
        ));
    };
    if width == 4 {
        for (d, c) in dst.iter_mut().zip(frame.chunks_exact(4)) {
            let v = f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            *d = r.apply(f64::from(v)) as f32;
        }
    } else {
        for (d, c) in dst.iter_mut().zip(frame.chunks_exact(8)) {
            let v = f64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            *d = r.apply(v) as f32;
        }
    }
    Ok(())
}

/// Decodes every frame of a file into stored values (`f32`, no rescale).
/// Used to compare encodings of the same image.
#[cfg(test)]
pub(crate) fn decode_stored_frames(
    path: &Path,
) -> Result<(PixelLayout, Vec<Vec<f32>>), VolumeError> {
    let file = read_full(path)?;
    let layout = pixel_layout(&file, path)?;
    let mut frames = Vec::new();
    for f in 0..layout.frames {
        let mut buf = vec![0f32; layout.frame_len()];
        decode_frame(
            &file,
            path,
            &layout,
            f,
            FrameOut::F32(&mut buf, Rescale::IDENTITY),
        )?;
        frames.push(buf);
    }
    Ok((layout, frames))
}
