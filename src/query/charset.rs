//! Specific Character Set (0008,0005) of a query: decoding its key values, encoding responses.
//!
//! dicom-rs decodes with the first value of (0008,0005) only and knows no ISO 2022 code
//! extensions, so the identifier is read undecoded and text is decoded here (PS3.5 6.1.2.5):
//! a single-valued set uses dicom-encoding's codec; a multi-valued or `ISO 2022 IR ...` set is
//! decoded with its escape sequences, the code elements returning to the initial ones at each
//! delimiter (`\`, `^`, `=`). Supported extensions: JIS X 0201 (IR 13, IR 14), JIS X 0208
//! (IR 87), KS X 1001 (IR 149), GB 2312 (IR 58) and the ISO 8859 right halves dicom-encoding
//! has (IR 100, 101, 109, 110, 126, 127, 138, 144, 166); not JIS X 0212 (IR 159).
//!
//! Responses: a value is encoded in the query's set (with the set's escape sequences for ISO
//! 2022); when any value of a response cannot be, the whole response is UTF-8 under
//! `ISO_IR 192`.

use dicom_encoding::text::{SpecificCharacterSet, TextCodec};

use super::QueryError;

const ESC: u8 = 0x1b;

/// A graphic character set that ISO 2022 can designate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    /// ISO 646 (ASCII), G0.
    Ascii,
    /// JIS X 0201 Romaji, G0 (IR 14).
    JisRoman,
    /// JIS X 0201 Katakana, G1 (IR 13).
    Katakana,
    /// A 96-character ISO 8859 right half, G1; the term (`ISO_IR 100`) names its codec.
    Latin(&'static str),
    /// JIS X 0208, G0, two bytes (IR 87).
    Jis0208,
    /// KS X 1001, G1, two bytes (IR 149).
    Ksx1001,
    /// GB 2312, G1, two bytes (IR 58).
    Gb2312,
}

impl Set {
    fn escape(self) -> &'static [u8] {
        match self {
            Set::Ascii => b"\x1b(B",
            Set::JisRoman => b"\x1b(J",
            Set::Katakana => b"\x1b)I",
            Set::Jis0208 => b"\x1b$B",
            Set::Ksx1001 => b"\x1b$)C",
            Set::Gb2312 => b"\x1b$)A",
            Set::Latin(term) => match term {
                "ISO_IR 100" => b"\x1b-A",
                "ISO_IR 101" => b"\x1b-B",
                "ISO_IR 109" => b"\x1b-C",
                "ISO_IR 110" => b"\x1b-D",
                "ISO_IR 126" => b"\x1b-F",
                "ISO_IR 127" => b"\x1b-G",
                "ISO_IR 138" => b"\x1b-H",
                "ISO_IR 144" => b"\x1b-L",
                _ => b"\x1b-T", // ISO_IR 166
            },
        }
    }

    fn is_g0(self) -> bool {
        matches!(self, Set::Ascii | Set::JisRoman | Set::Jis0208)
    }

    /// The sets a defined term of (0008,0005) designates (G0, G1).
    fn of_term(term: &str) -> Option<(Set, Option<Set>)> {
        let latin = |t| Some((Set::Ascii, Some(Set::Latin(t))));
        match term {
            "" | "ISO 2022 IR 6" => Some((Set::Ascii, None)),
            "ISO 2022 IR 13" => Some((Set::JisRoman, Some(Set::Katakana))),
            "ISO 2022 IR 87" => Some((Set::Jis0208, None)),
            "ISO 2022 IR 149" => Some((Set::Ascii, Some(Set::Ksx1001))),
            "ISO 2022 IR 58" => Some((Set::Ascii, Some(Set::Gb2312))),
            "ISO 2022 IR 100" => latin("ISO_IR 100"),
            "ISO 2022 IR 101" => latin("ISO_IR 101"),
            "ISO 2022 IR 109" => latin("ISO_IR 109"),
            "ISO 2022 IR 110" => latin("ISO_IR 110"),
            "ISO 2022 IR 126" => latin("ISO_IR 126"),
            "ISO 2022 IR 127" => latin("ISO_IR 127"),
            "ISO 2022 IR 138" => latin("ISO_IR 138"),
            "ISO 2022 IR 144" => latin("ISO_IR 144"),
            "ISO 2022 IR 166" => latin("ISO_IR 166"),
            _ => None,
        }
    }

    fn by_escape(seq: &[u8]) -> Option<Set> {
        [
            Set::Ascii,
            Set::JisRoman,
            Set::Katakana,
            Set::Jis0208,
            Set::Ksx1001,
            Set::Gb2312,
            Set::Latin("ISO_IR 100"),
            Set::Latin("ISO_IR 101"),
            Set::Latin("ISO_IR 109"),
            Set::Latin("ISO_IR 110"),
            Set::Latin("ISO_IR 126"),
            Set::Latin("ISO_IR 127"),
            Set::Latin("ISO_IR 138"),
            Set::Latin("ISO_IR 144"),
            Set::Latin("ISO_IR 166"),
        ]
        .into_iter()
        .find(|s| s.escape() == seq)
    }

    fn codec(term: &str) -> Option<SpecificCharacterSet> {
        SpecificCharacterSet::from_code(term)
    }

    /// Decodes a run of bytes of this set (high bit as received for G1 sets).
    fn decode(self, run: &[u8], out: &mut String) -> Result<(), QueryError> {
        let codec = |t| Set::codec(t).ok_or(QueryError::Charset);
        match self {
            Set::Ascii => out.extend(run.iter().map(|&b| b as char)),
            Set::JisRoman => out.extend(run.iter().map(|&b| match b {
                0x5c => '\u{a5}',
                0x7e => '\u{203e}',
                b => b as char,
            })),
            Set::Katakana => {
                for &b in run {
                    match b {
                        0xa1..=0xdf => out.push(
                            char::from_u32(0xff61 + u32::from(b - 0xa1))
                                .ok_or(QueryError::Charset)?,
                        ),
                        _ => return Err(QueryError::Charset),
                    }
                }
            }
            Set::Latin(term) => out.push_str(&decode_with(codec(term)?, run)?),
            Set::Jis0208 => {
                let mut wrapped = b"\x1b$B".to_vec();
                wrapped.extend_from_slice(run);
                wrapped.extend_from_slice(b"\x1b(B");
                out.push_str(&decode_with(codec("ISO_IR 87")?, &wrapped)?);
            }
            Set::Ksx1001 => out.push_str(&decode_with(codec("ISO_IR 149")?, run)?),
            Set::Gb2312 => out.push_str(&decode_with(codec("GB2312")?, run)?),
        }
        Ok(())
    }

    /// The bytes of `c` in this set, when it has it.
    fn encode(self, c: char) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4];
        let s = c.encode_utf8(&mut buf);
        match self {
            Set::Ascii => c.is_ascii().then(|| vec![c as u8]),
            Set::JisRoman => match c {
                '\u{a5}' => Some(vec![0x5c]),
                '\u{203e}' => Some(vec![0x7e]),
                '\\' | '~' => None,
                c => c.is_ascii().then(|| vec![c as u8]),
            },
            Set::Katakana => {
                let u = c as u32;
                (0xff61..=0xff9f)
                    .contains(&u)
                    .then(|| vec![(u - 0xff61 + 0xa1) as u8])
            }
            Set::Latin(term) => {
                let b = Set::codec(term)?.encode(s).ok()?;
                (b.len() == 1 && b[0] >= 0xa0).then_some(b)
            }
            Set::Jis0208 => {
                let b = Set::codec("ISO_IR 87")?.encode(s).ok()?;
                // ESC $ B b1 b2, and ESC ( B in some versions of the encoder.
                let b = b.strip_prefix(b"\x1b$B")?;
                let b = b.strip_suffix(b"\x1b(B").unwrap_or(b);
                (b.len() == 2).then(|| b.to_vec())
            }
            Set::Ksx1001 | Set::Gb2312 => {
                let term = if self == Set::Ksx1001 {
                    "ISO_IR 149"
                } else {
                    "GB2312"
                };
                let b = Set::codec(term)?.encode(s).ok()?;
                (b.len() == 2 && b.iter().all(|&x| x >= 0xa1)).then_some(b)
            }
        }
    }
}

fn decode_with(codec: SpecificCharacterSet, bytes: &[u8]) -> Result<String, QueryError> {
    codec.decode(bytes).map_err(|_| QueryError::Charset)
}

/// The character set of a query.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Charset {
    /// The values of (0008,0005) as received (empty: default repertoire).
    terms: Vec<String>,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// No (0008,0005): ASCII.
    Default,
    /// One non-ISO 2022 set (ISO_IR 100, ISO_IR 192, GB18030, ...).
    Single(SpecificCharacterSet),
    /// ISO 2022: the initial G0 and G1 and every set the terms allow.
    Iso2022 {
        g0: Set,
        g1: Option<Set>,
        allowed: Vec<Set>,
    },
}

impl Charset {
    /// The default repertoire.
    pub fn default_repertoire() -> Charset {
        Charset {
            terms: Vec::new(),
            kind: Kind::Default,
        }
    }

    /// The character set of (0008,0005)'s raw value.
    pub fn from_value(raw: &[u8]) -> Result<Charset, QueryError> {
        let text = std::str::from_utf8(raw).map_err(|_| QueryError::Charset)?;
        let terms: Vec<String> = text
            .split('\\')
            .map(|t| t.trim_matches([' ', '\0']).to_string())
            .collect();
        if terms.iter().all(|t| t.is_empty()) {
            return Ok(Charset::default_repertoire());
        }
        let iso2022 = terms.len() > 1 || terms[0].starts_with("ISO 2022");
        let kind = if iso2022 {
            let mut allowed = vec![Set::Ascii];
            let mut initial = None;
            for t in &terms {
                let (g0, g1) = Set::of_term(t).ok_or(QueryError::Charset)?;
                allowed.push(g0);
                allowed.extend(g1);
                initial.get_or_insert((g0, g1));
            }
            let (g0, g1) = initial.unwrap_or((Set::Ascii, None));
            allowed.dedup();
            Kind::Iso2022 { g0, g1, allowed }
        } else if terms[0] == "ISO_IR 6" {
            Kind::Default
        } else {
            Kind::Single(SpecificCharacterSet::from_code(&terms[0]).ok_or(QueryError::Charset)?)
        };
        Ok(Charset { terms, kind })
    }

    /// The value of (0008,0005) for a response in this set.
    pub fn value(&self) -> String {
        self.terms.join("\\")
    }

    /// Whether the query named no character set.
    pub fn is_default(&self) -> bool {
        self.terms.is_empty()
    }

    /// Decodes the raw bytes of a charset-dependent text value.
    pub fn decode(&self, raw: &[u8]) -> Result<String, QueryError> {
        match &self.kind {
            Kind::Default => Ok(raw.iter().map(|&b| b as char).collect()),
            Kind::Single(cs) => decode_with(cs.clone(), raw),
            Kind::Iso2022 { g0, g1, allowed } => decode_2022(raw, *g0, *g1, allowed),
        }
    }

    /// Encodes a text value, or None when a character does not fit the set.
    pub fn encode(&self, text: &str) -> Option<Vec<u8>> {
        match &self.kind {
            Kind::Default => text.is_ascii().then(|| text.as_bytes().to_vec()),
            Kind::Single(cs) => {
                let bytes = cs.encode(text).ok()?;
                // The codecs of dicom-encoding are strict on encoding, but a decode check
                // guards against a lossy one.
                (cs.decode(&bytes).ok()?.as_str() == text).then_some(bytes)
            }
            Kind::Iso2022 { g0, g1, allowed } => encode_2022(text, *g0, *g1, allowed),
        }
    }
}

fn is_delimiter(b: u8) -> bool {
    matches!(b, b'\\' | b'^' | b'=' | b'\r' | b'\n' | b'\t' | b'\x0c')
}

fn decode_2022(
    raw: &[u8],
    g0_init: Set,
    g1_init: Option<Set>,
    allowed: &[Set],
) -> Result<String, QueryError> {
    let (mut g0, mut g1) = (g0_init, g1_init);
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == ESC {
            let seq_len = raw[i..]
                .iter()
                .skip(1)
                .position(|&x| (0x30..=0x7e).contains(&x))
                .map(|p| p + 2)
                .ok_or(QueryError::Charset)?;
            let set = Set::by_escape(&raw[i..i + seq_len])
                .filter(|s| allowed.contains(s))
                .ok_or(QueryError::Charset)?;
            if set.is_g0() {
                g0 = set;
            } else {
                g1 = Some(set);
            }
            i += seq_len;
            continue;
        }
        if b >= 0x80 {
            let end = raw[i..]
                .iter()
                .position(|&x| x < 0x80)
                .map_or(raw.len(), |p| i + p);
            g1.ok_or(QueryError::Charset)?
                .decode(&raw[i..end], &mut out)?;
            i = end;
            continue;
        }
        if g0 == Set::Jis0208 {
            let end = raw[i..]
                .iter()
                .position(|&x| x == ESC || x >= 0x80)
                .map_or(raw.len(), |p| i + p);
            g0.decode(&raw[i..end], &mut out)?;
            i = end;
            continue;
        }
        if is_delimiter(b) {
            g0 = g0_init;
            g1 = g1_init;
        }
        g0.decode(&raw[i..i + 1], &mut out)?;
        i += 1;
    }
    Ok(out)
}

fn encode_2022(text: &str, g0_init: Set, g1_init: Option<Set>, allowed: &[Set]) -> Option<Vec<u8>> {
    let (mut g0, mut g1) = (g0_init, g1_init);
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && (c as u8 == ESC || is_delimiter(c as u8)) {
            // Delimiters are written in ASCII, and the state returns to the initial one.
            if g0 != Set::Ascii {
                out.extend_from_slice(Set::Ascii.escape());
            }
            out.push(c as u8);
            g0 = g0_init;
            g1 = g1_init;
            if g0 != Set::Ascii {
                out.extend_from_slice(g0.escape());
            }
            continue;
        }
        // The active sets first (no escape needed), then the others allowed.
        let candidates = [Some(g0)]
            .into_iter()
            .chain([g1])
            .flatten()
            .chain(allowed.iter().copied());
        let mut done = false;
        for set in candidates {
            if !allowed.contains(&set) {
                continue;
            }
            if let Some(bytes) = set.encode(c) {
                if set.is_g0() && set != g0 {
                    out.extend_from_slice(set.escape());
                    g0 = set;
                } else if !set.is_g0() && Some(set) != g1 {
                    out.extend_from_slice(set.escape());
                    g1 = Some(set);
                }
                out.extend_from_slice(&bytes);
                done = true;
                break;
            }
        }
        if !done {
            return None;
        }
    }
    if g0 != Set::Ascii {
        out.extend_from_slice(Set::Ascii.escape());
    }
    Some(out)
}
