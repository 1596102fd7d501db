//! JPEG Extended (Process 2 & 4, 1.2.840.10008.1.2.4.51) through libjpeg-turbo.
//!
//! Older CT and MR scanners send 12-bit lossy JPEG in this syntax, and senders that cannot
//! decompress (pynetdicom, PixelMed) have no other way to deliver such images. The pure-Rust
//! `jpeg-decoder` behind dicom-pixeldata reads only 8-bit lossy JPEG, so frames of this syntax
//! are decoded here with libjpeg-turbo 3 (`turbojpeg-sys`, built from its bundled source),
//! which reads 8- and 12-bit lossy (and, being lenient, lossless) JPEG. The decoded samples
//! go through the same masking and sign extension as every other syntax (`decode_frame`).

use std::borrow::Cow;
use std::ffi::CStr;

use dicom_core::DicomValue;
use dicom_dictionary_std::tags;
use turbojpeg_sys as tj;

use super::decode::{DicomFile, PixelLayout};

/// Transfer syntax UID of JPEG Extended (Process 2 & 4).
pub(crate) const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// Upper bound of progressive scans libjpeg-turbo may read: JPEG Extended has none, and a
/// stream with thousands of them is a decompression-time bomb.
const SCAN_LIMIT: i32 = 64;

/// What `decode_frame` needs from a decoded frame, whoever decoded it.
pub(crate) trait DecodedFrame {
    fn rows(&self) -> u32;
    fn columns(&self) -> u32;
    fn samples_per_pixel(&self) -> u16;
    fn bits_allocated(&self) -> u16;
    /// Samples in native byte order, `bits_allocated / 8` bytes each.
    fn data(&self) -> &[u8];
}

impl DecodedFrame for dicom_pixeldata::DecodedPixelData<'_> {
    fn rows(&self) -> u32 {
        dicom_pixeldata::DecodedPixelData::rows(self)
    }
    fn columns(&self) -> u32 {
        dicom_pixeldata::DecodedPixelData::columns(self)
    }
    fn samples_per_pixel(&self) -> u16 {
        dicom_pixeldata::DecodedPixelData::samples_per_pixel(self)
    }
    fn bits_allocated(&self) -> u16 {
        dicom_pixeldata::DecodedPixelData::bits_allocated(self)
    }
    fn data(&self) -> &[u8] {
        dicom_pixeldata::DecodedPixelData::data(self)
    }
}

/// One grayscale frame decoded by libjpeg-turbo.
pub(crate) struct Frame {
    rows: u32,
    cols: u32,
    bits_allocated: u16,
    data: Vec<u8>,
}

impl DecodedFrame for Frame {
    fn rows(&self) -> u32 {
        self.rows
    }
    fn columns(&self) -> u32 {
        self.cols
    }
    fn samples_per_pixel(&self) -> u16 {
        1
    }
    fn bits_allocated(&self) -> u16 {
        self.bits_allocated
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
}

/// True when `file` is encoded in JPEG Extended and must be decoded here.
pub(crate) fn handles(file: &DicomFile) -> bool {
    file.meta().transfer_syntax().trim_end_matches(['\0', ' ']) == JPEG_EXTENDED
}

/// Decodes frame `frame0` (0-based) of a JPEG Extended file. Errors are plain messages;
/// the caller wraps them with the path, frame and transfer syntax.
pub(crate) fn decode_frame(
    file: &DicomFile,
    layout: &PixelLayout,
    frame0: u32,
) -> Result<Frame, String> {
    let stream = frame_stream(file, layout.frames, frame0)?;
    decode_stream(&stream, layout)
}

/// The compressed bytes of frame `frame0`: its fragment when there is one fragment per frame,
/// else the fragments the Basic Offset Table assigns to it, else the fragments from one that
/// starts with a JPEG SOI marker up to the next one (how DCMTK splits frames without a table).
fn frame_stream(file: &DicomFile, frames: u32, frame0: u32) -> Result<Cow<'_, [u8]>, String> {
    let Some(elem) = file.get(tags::PIXEL_DATA) else {
        return Err("the object has no Pixel Data".into());
    };
    let DicomValue::PixelSequence(seq) = elem.value() else {
        return Err("JPEG Extended pixel data is not encapsulated".into());
    };
    let fragments = seq.fragments();
    let frames = frames as usize;
    let f = frame0 as usize;
    if f >= frames {
        return Err(format!("frame {} is beyond the {frames} frames", f + 1));
    }
    if fragments.len() == frames {
        return Ok(Cow::Borrowed(&fragments[f]));
    }
    if frames == 1 {
        return Ok(Cow::Owned(fragments.concat()));
    }
    let groups: Vec<&[Vec<u8>]> = {
        let table = seq.offset_table();
        if table.len() == frames {
            // Offsets count from the first fragment's item tag; each item has an 8-byte header.
            let mut starts = Vec::with_capacity(fragments.len());
            let mut at = 0u64;
            for frag in fragments {
                starts.push(at);
                at += 8 + frag.len() as u64;
            }
            let mut groups = Vec::with_capacity(frames);
            for (i, &off) in table.iter().enumerate() {
                let end = table.get(i + 1).map_or(u64::MAX, |&e| u64::from(e));
                let lo = starts.partition_point(|&s| s < u64::from(off));
                let hi = starts.partition_point(|&s| s < end);
                if starts.get(lo) != Some(&u64::from(off)) || hi <= lo {
                    return Err(format!(
                        "the Basic Offset Table entry {i} ({off}) does not start a fragment"
                    ));
                }
                groups.push(&fragments[lo..hi]);
            }
            groups
        } else {
            let mut starts: Vec<usize> = (0..fragments.len())
                .filter(|&i| fragments[i].starts_with(&[0xFF, 0xD8]))
                .collect();
            if starts.len() != frames || starts.first() != Some(&0) {
                return Err(format!(
                    "cannot tell the {frames} frames apart in {} fragments (no usable Basic Offset Table)",
                    fragments.len()
                ));
            }
            starts.push(fragments.len());
            starts.windows(2).map(|w| &fragments[w[0]..w[1]]).collect()
        }
    };
    // One group per frame (checked above), and f < frames.
    Ok(Cow::Owned(groups[f].concat()))
}

/// A libjpeg-turbo decompressor, destroyed on drop.
struct Decompressor(tj::tjhandle);

impl Decompressor {
    fn new() -> Result<Self, String> {
        // SAFETY: tj3Init has no preconditions; a null handle is checked below.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
        if handle.is_null() {
            return Err("libjpeg-turbo could not create a decompressor".into());
        }
        Ok(Decompressor(handle))
    }

    fn get(&self, param: tj::TJPARAM) -> i32 {
        // SAFETY: the handle is valid for the lifetime of self.
        unsafe { tj::tj3Get(self.0, param as i32) }
    }

    fn set(&self, param: tj::TJPARAM, value: i32) -> Result<(), String> {
        // SAFETY: the handle is valid for the lifetime of self.
        self.check(unsafe { tj::tj3Set(self.0, param as i32, value) })
    }

    /// Maps a libjpeg-turbo return code to its error message.
    fn check(&self, rc: i32) -> Result<(), String> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle (or by
        // the library), valid until the next call on it; it is copied at once.
        let msg = unsafe {
            let p = tj::tj3GetErrorStr(self.0);
            if p.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Err(format!("libjpeg-turbo: {msg}"))
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

/// Decodes one JPEG stream into grayscale samples of 1 (precision up to 8) or 2 bytes.
fn decode_stream(jpeg: &[u8], layout: &PixelLayout) -> Result<Frame, String> {
    let len = jpeg.len() as tj::size_t;
    let d = Decompressor::new()?;
    // Corrupt or truncated data fails instead of yielding a grey-filled image, and memory and
    // time stay bounded by the header's declared image size.
    d.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
    d.set(tj::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT)?;
    let declared = u64::from(layout.rows) * u64::from(layout.cols);
    d.set(
        tj::TJPARAM_TJPARAM_MAXPIXELS,
        i32::try_from(declared).unwrap_or(i32::MAX),
    )?;
    // SAFETY: pointer and length describe the borrowed slice.
    d.check(unsafe { tj::tj3DecompressHeader(d.0, jpeg.as_ptr(), len) })?;
    let width = d.get(tj::TJPARAM_TJPARAM_JPEGWIDTH);
    let height = d.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT);
    let precision = d.get(tj::TJPARAM_TJPARAM_PRECISION);
    let colorspace = d.get(tj::TJPARAM_TJPARAM_COLORSPACE);
    if width <= 0 || height <= 0 {
        return Err(format!("JPEG header gives a {width}x{height} image"));
    }
    // Decoding to TJPF_GRAY would silently convert colour.
    if colorspace != tj::TJCS_TJCS_GRAY as i32 {
        return Err("decoded image has colour samples".into());
    }
    let n = width as usize * height as usize;
    let gray = tj::TJPF_TJPF_GRAY;
    let (bits_allocated, data) = match precision {
        2..=8 => {
            let mut buf = vec![0u8; n];
            // SAFETY: `buf` holds width*height samples, pitch 0 means width samples a row.
            d.check(unsafe {
                tj::tj3Decompress8(d.0, jpeg.as_ptr(), len, buf.as_mut_ptr(), 0, gray)
            })?;
            (8, buf)
        }
        9..=16 => {
            let mut buf = vec![0u16; n];
            let out = buf.as_mut_ptr();
            // SAFETY: as above, with 16-bit samples; 12-bit ones are 0..=4095, the same bits
            // as i16 or u16. 13 to 16 bits occur in lossless streams only.
            d.check(unsafe {
                if precision <= 12 {
                    tj::tj3Decompress12(d.0, jpeg.as_ptr(), len, out.cast::<i16>(), 0, gray)
                } else {
                    tj::tj3Decompress16(d.0, jpeg.as_ptr(), len, out, 0, gray)
                }
            })?;
            (16, buf.iter().flat_map(|v| v.to_ne_bytes()).collect())
        }
        p => return Err(format!("unsupported JPEG sample precision {p}")),
    };
    // A size other than the header's is reported by the caller, as for every syntax.
    Ok(Frame {
        rows: height as u32,
        cols: width as u32,
        bits_allocated,
        data,
    })
}
