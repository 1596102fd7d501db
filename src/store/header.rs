//! A streaming walk over a received data set: proves it is structurally complete and picks out
//! the few top-level attributes the node files and routes by.
//!
//! Why not parse it with dicom-object: that reads every value into memory, and a multi-frame
//! instance can be gigabytes. This walker reads only the tags and lengths and *skips* every
//! value it does not need, so checking a 2 GB instance costs a few kilobytes of memory. It
//! follows PS3.5 chapter 7: explicit/implicit VR, both byte orders, defined and undefined
//! lengths, nested sequences and encapsulated pixel data.

use std::io::{self, BufRead, BufReader, Read, Seek};

/// Why a data set was not accepted; these end as status 0xC000 ("cannot understand").
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The data set stops inside an element.
    #[error("data set is truncated at byte {offset} (inside {tag})")]
    Truncated {
        /// Offset from the start of the data set.
        offset: u64,
        /// The element being read, `(gggg,eeee)`.
        tag: String,
    },
    /// Bytes that cannot be a DICOM element here.
    #[error("malformed data set at byte {offset}, element {tag}: {reason}")]
    Malformed {
        /// Offset from the start of the data set.
        offset: u64,
        /// The element being read.
        tag: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// A required top-level attribute is missing or empty.
    #[error("data set has no {0}")]
    Missing(&'static str),
    /// The file could not be read.
    #[error("reading the received data set: {0}")]
    Io(#[from] io::Error),
}

/// How the data set is encoded, derived from the transfer syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// Explicit VR (every transfer syntax but Implicit VR Little Endian).
    pub explicit: bool,
    /// Big endian (only the retired Explicit VR Big Endian).
    pub big_endian: bool,
    /// Deflated (1.2.840.10008.1.2.1.99 and its JPIP sibling): the data set is a raw deflate
    /// stream of Explicit VR Little Endian.
    pub deflated: bool,
}

impl Encoding {
    /// The encoding of a transfer syntax UID. Unknown syntaxes are assumed to be explicit
    /// little endian, which is what every encapsulated syntax uses.
    pub fn of_transfer_syntax(uid: &str) -> Encoding {
        let uid = uid.trim_end_matches(['\0', ' ']);
        Encoding {
            explicit: uid != "1.2.840.10008.1.2",
            big_endian: uid == "1.2.840.10008.1.2.2",
            deflated: matches!(uid, "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95"),
        }
    }
}

/// The top-level attributes the node files, checks and routes instances by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// (0008,0016)
    pub sop_class_uid: String,
    /// (0008,0018)
    pub sop_instance_uid: String,
    /// (0020,000D)
    pub study_instance_uid: String,
    /// (0020,000E)
    pub series_instance_uid: String,
    /// (0008,0060)
    pub modality: Option<String>,
    /// (0020,0013)
    pub instance_number: Option<i64>,
    /// (0020,0052)
    pub frame_of_reference_uid: Option<String>,
    /// (0008,103E)
    pub series_description: Option<String>,
    /// (0018,0015)
    pub body_part_examined: Option<String>,
    /// (0020,1002), which scanners use to announce how many images a series will hold.
    pub images_in_acquisition: Option<i64>,
}

const ITEM: u32 = 0xFFFE_E000;
const ITEM_DELIMITER: u32 = 0xFFFE_E00D;
const SEQUENCE_DELIMITER: u32 = 0xFFFE_E0DD;
const PIXEL_DATA: u32 = 0x7FE0_0010;
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Deeper nesting than this is hostile input, not anatomy.
const MAX_DEPTH: u32 = 64;
/// Values of the attributes we keep are UIDs and short strings; anything longer is skipped.
const MAX_KEPT_VALUE: u32 = 1024;

fn tag_name(tag: u32) -> String {
    format!("({:04X},{:04X})", tag >> 16, tag & 0xFFFF)
}

/// Reads a data set from `reader` (positioned at its first byte, `len` bytes long) and returns
/// its header once the whole structure has been checked.
pub fn scan_file<R: Read + Seek>(
    reader: R,
    len: u64,
    enc: Encoding,
) -> Result<Header, HeaderError> {
    if enc.deflated {
        let inflated = flate2::read::DeflateDecoder::new(reader.take(len));
        let input = Input::stream(inflated);
        let enc = Encoding {
            deflated: false,
            ..enc
        };
        return Walker::new(input, enc).run();
    }
    Walker::new(Input::seekable(reader, len), enc).run()
}

/// Like [`scan_file`] over bytes in memory (tests and small data sets).
pub fn scan_bytes(bytes: &[u8], enc: Encoding) -> Result<Header, HeaderError> {
    scan_file(io::Cursor::new(bytes), bytes.len() as u64, enc)
}

/// Read + Seek, boxed.
trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

enum Source<'a> {
    /// Files: values are skipped by seeking, truncation is known from the length.
    Seekable(BufReader<Box<dyn ReadSeek + 'a>>),
    /// Inflated streams: values are skipped by reading.
    Stream(BufReader<Box<dyn Read + 'a>>),
}

/// A byte source that can skip values cheaply and knows where it is.
struct Input<'a> {
    source: Source<'a>,
    offset: u64,
    /// Known total length (seekable inputs), to detect truncation without reading.
    len: Option<u64>,
}

impl<'a> Input<'a> {
    fn seekable<R: Read + Seek + 'a>(reader: R, len: u64) -> Self {
        Input {
            source: Source::Seekable(BufReader::with_capacity(64 * 1024, Box::new(reader))),
            offset: 0,
            len: Some(len),
        }
    }

    fn stream<R: Read + 'a>(reader: R) -> Self {
        Input {
            source: Source::Stream(BufReader::with_capacity(64 * 1024, Box::new(reader))),
            offset: 0,
            len: None,
        }
    }

    fn reader(&mut self) -> &mut dyn BufRead {
        match &mut self.source {
            Source::Seekable(r) => r,
            Source::Stream(r) => r,
        }
    }

    fn at_end(&mut self) -> io::Result<bool> {
        match self.len {
            Some(len) => Ok(self.offset >= len),
            None => Ok(self.reader().fill_buf()?.is_empty()),
        }
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` when the input ended first.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if let Some(len) = self.len
            && self.offset + buf.len() as u64 > len
        {
            return Ok(false);
        }
        match self.reader().read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Skips `n` bytes; `Ok(false)` when the input ends first.
    fn skip(&mut self, n: u64) -> io::Result<bool> {
        if let Some(len) = self.len
            && self.offset + n > len
        {
            return Ok(false);
        }
        let skipped = match &mut self.source {
            // BufReader::seek_relative keeps its buffer when the jump lands inside it.
            Source::Seekable(r) => {
                let n = i64::try_from(n).map_err(io::Error::other)?;
                r.seek_relative(n)?;
                n as u64
            }
            Source::Stream(r) => io::copy(&mut r.take(n), &mut io::sink())?,
        };
        self.offset += skipped;
        Ok(skipped == n)
    }

    /// True when everything left is zero bytes: trailing padding some writers leave behind.
    fn rest_is_zero(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 8192];
        loop {
            let n = self.reader().read(&mut buf)?;
            if n == 0 {
                return Ok(true);
            }
            self.offset += n as u64;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
        }
    }
}

/// Where an element sits: decides whether its value is kept and how EOF is judged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Nested(u32),
}

struct Walker<'a> {
    input: Input<'a>,
    enc: Encoding,
    header: Header,
}

enum Element {
    /// A normal element; its header has been read.
    Value {
        tag: u32,
        vr: Option<[u8; 2]>,
        len: u32,
    },
    /// An item or delimiter tag.
    Delimiter(u32),
    /// Clean end of input at an element boundary.
    End,
}

impl<'a> Walker<'a> {
    fn new(input: Input<'a>, enc: Encoding) -> Self {
        Walker {
            input,
            enc,
            header: Header::default(),
        }
    }

    fn run(mut self) -> Result<Header, HeaderError> {
        self.elements(Level::Top, self.enc.explicit)?;
        let h = self.header;
        for (value, name) in [
            (&h.sop_class_uid, "SOP Class UID (0008,0016)"),
            (&h.sop_instance_uid, "SOP Instance UID (0008,0018)"),
            (&h.study_instance_uid, "Study Instance UID (0020,000D)"),
            (&h.series_instance_uid, "Series Instance UID (0020,000E)"),
        ] {
            if value.is_empty() {
                return Err(HeaderError::Missing(name));
            }
        }
        Ok(h)
    }

    fn u16(&self, b: [u8; 2]) -> u16 {
        if self.enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: [u8; 4]) -> u32 {
        if self.enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn truncated(&self, tag: u32) -> HeaderError {
        HeaderError::Truncated {
            offset: self.input.offset,
            tag: tag_name(tag),
        }
    }

    fn malformed(&self, tag: u32, reason: &'static str) -> HeaderError {
        HeaderError::Malformed {
            offset: self.input.offset,
            tag: tag_name(tag),
            reason,
        }
    }

    fn next(&mut self, explicit: bool, level: Level) -> Result<Element, HeaderError> {
        if level == Level::Top && self.input.at_end()? {
            return Ok(Element::End);
        }
        let mut t = [0u8; 4];
        if !self.input.read(&mut t)? {
            return Err(self.truncated(0));
        }
        let group = self.u16([t[0], t[1]]) as u32;
        let elem = self.u16([t[2], t[3]]) as u32;
        let tag = (group << 16) | elem;
        if group == 0xFFFE {
            let mut l = [0u8; 4];
            if !self.input.read(&mut l)? {
                return Err(self.truncated(tag));
            }
            let len = self.u32(l);
            return match tag {
                ITEM => Ok(Element::Value { tag, vr: None, len }),
                ITEM_DELIMITER | SEQUENCE_DELIMITER => Ok(Element::Delimiter(tag)),
                _ => Err(self.malformed(tag, "unknown item tag")),
            };
        }
        if tag == 0 && level == Level::Top && self.input.rest_is_zero()? {
            tracing::debug!("data set ends in zero padding");
            return Ok(Element::End);
        }
        if !explicit {
            let mut l = [0u8; 4];
            if !self.input.read(&mut l)? {
                return Err(self.truncated(tag));
            }
            return Ok(Element::Value {
                tag,
                vr: None,
                len: self.u32(l),
            });
        }
        let mut vr = [0u8; 2];
        if !self.input.read(&mut vr)? {
            return Err(self.truncated(tag));
        }
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(self.malformed(tag, "value representation is not two capital letters"));
        }
        let len = if matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        ) {
            let mut l = [0u8; 6];
            if !self.input.read(&mut l)? {
                return Err(self.truncated(tag));
            }
            self.u32([l[2], l[3], l[4], l[5]])
        } else {
            let mut l = [0u8; 2];
            if !self.input.read(&mut l)? {
                return Err(self.truncated(tag));
            }
            self.u16(l) as u32
        };
        Ok(Element::Value {
            tag,
            vr: Some(vr),
            len,
        })
    }

    /// Walks elements until the end (top level) or an item delimiter (nested, undefined
    /// length item).
    fn elements(&mut self, level: Level, explicit: bool) -> Result<(), HeaderError> {
        loop {
            match self.next(explicit, level)? {
                Element::End => return Ok(()),
                Element::Delimiter(ITEM_DELIMITER) if level != Level::Top => return Ok(()),
                Element::Delimiter(tag) => {
                    return Err(self.malformed(tag, "delimiter outside a sequence item"));
                }
                Element::Value { tag: ITEM, .. } => {
                    return Err(self.malformed(ITEM, "item outside a sequence"));
                }
                Element::Value { tag, vr, len } => self.value(tag, vr, len, level, explicit)?,
            }
        }
    }

    fn value(
        &mut self,
        tag: u32,
        vr: Option<[u8; 2]>,
        len: u32,
        level: Level,
        explicit: bool,
    ) -> Result<(), HeaderError> {
        let depth = match level {
            Level::Top => 0,
            Level::Nested(d) => d,
        };
        if len == UNDEFINED {
            if depth >= MAX_DEPTH {
                return Err(self.malformed(tag, "sequences nested too deeply"));
            }
            return match vr {
                // Encapsulated (compressed) pixel data: a run of fragments.
                Some(vr) if tag == PIXEL_DATA && &vr != b"SQ" => self.fragments(),
                // PS3.5 6.2.2: UN with undefined length is a sequence in implicit VR LE.
                Some(vr) if &vr == b"UN" => self.sequence(depth + 1, false),
                Some(vr) if &vr == b"SQ" => self.sequence(depth + 1, explicit),
                Some(_) => Err(self.malformed(tag, "undefined length on a non-sequence")),
                None => self.sequence(depth + 1, explicit),
            };
        }
        if level == Level::Top && len <= MAX_KEPT_VALUE && self.wants(tag) {
            let mut buf = vec![0u8; len as usize];
            if !self.input.read(&mut buf)? {
                return Err(self.truncated(tag));
            }
            self.keep(tag, &buf);
            return Ok(());
        }
        if !self.input.skip(len as u64)? {
            return Err(self.truncated(tag));
        }
        Ok(())
    }

    /// Items of an undefined-length sequence, up to its delimiter.
    fn sequence(&mut self, depth: u32, explicit: bool) -> Result<(), HeaderError> {
        loop {
            match self.next(explicit, Level::Nested(depth))? {
                Element::Delimiter(SEQUENCE_DELIMITER) => return Ok(()),
                Element::Value {
                    tag: ITEM,
                    len: UNDEFINED,
                    ..
                } => self.elements(Level::Nested(depth), explicit)?,
                Element::Value { tag: ITEM, len, .. } => {
                    if !self.input.skip(len as u64)? {
                        return Err(self.truncated(ITEM));
                    }
                }
                Element::Value { tag, .. } | Element::Delimiter(tag) => {
                    return Err(self.malformed(tag, "expected an item in a sequence"));
                }
                Element::End => return Err(self.truncated(SEQUENCE_DELIMITER)),
            }
        }
    }

    /// Fragments of encapsulated pixel data: defined-length items up to the delimiter.
    fn fragments(&mut self) -> Result<(), HeaderError> {
        loop {
            match self.next(true, Level::Nested(1))? {
                Element::Delimiter(SEQUENCE_DELIMITER) => return Ok(()),
                Element::Value { tag: ITEM, len, .. } if len != UNDEFINED => {
                    if !self.input.skip(len as u64)? {
                        return Err(self.truncated(PIXEL_DATA));
                    }
                }
                _ => return Err(self.malformed(PIXEL_DATA, "bad pixel data fragment")),
            }
        }
    }

    fn wants(&self, tag: u32) -> bool {
        matches!(
            tag,
            0x0008_0016
                | 0x0008_0018
                | 0x0008_0060
                | 0x0008_103E
                | 0x0018_0015
                | 0x0020_000D
                | 0x0020_000E
                | 0x0020_0013
                | 0x0020_0052
                | 0x0020_1002
        )
    }

    fn keep(&mut self, tag: u32, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw)
            .trim_end_matches(['\0', ' '])
            .trim_start()
            .to_string();
        let h = &mut self.header;
        let opt = |s: String| (!s.is_empty()).then_some(s);
        match tag {
            0x0008_0016 => h.sop_class_uid = text,
            0x0008_0018 => h.sop_instance_uid = text,
            0x0008_0060 => h.modality = opt(text),
            0x0008_103E => h.series_description = opt(text),
            0x0018_0015 => h.body_part_examined = opt(text),
            0x0020_000D => h.study_instance_uid = text,
            0x0020_000E => h.series_instance_uid = text,
            0x0020_0013 => h.instance_number = text.parse().ok(),
            0x0020_0052 => h.frame_of_reference_uid = opt(text),
            0x0020_1002 => h.images_in_acquisition = text.parse().ok(),
            _ => {}
        }
    }
}
