//! Text values decoded to UTF-8 by the instance's Specific Character Set (0008,0005), for the
//! query index.
//!
//! Why not only `SpecificCharacterSet::decode`: dicom-encoding decodes a value with *one*
//! character set, while ISO 2022 sets (`ISO 2022 IR 13\ISO 2022 IR 87`, `\ISO 2022 IR 149`)
//! switch sets inside a value with escape sequences. Here a value holding ESC is cut at its
//! escape sequences and each run decoded with the set its escape designates (the codecs are
//! still dicom-encoding's); the run before the first escape uses the first value of (0008,0005).
//! A value that does not decode is stored lossily (invalid bytes as U+FFFD): the index must
//! never refuse an instance the store accepted.

use dicom_encoding::text::{SpecificCharacterSet, TextCodec};

/// An instance's Specific Character Set, as far as decoding needs it.
#[derive(Debug, Clone)]
pub struct Charset {
    /// The set of the run before any escape sequence (the first value; default repertoire
    /// when empty or unknown).
    initial: Option<SpecificCharacterSet>,
}

impl Charset {
    /// From the raw (0008,0005) value (`None`: absent, the default repertoire).
    pub fn new(value: Option<&str>) -> Charset {
        let first = value
            .and_then(|v| v.split('\\').next())
            .map(str::trim)
            .unwrap_or("");
        Charset {
            initial: if first.is_empty() {
                None
            } else {
                SpecificCharacterSet::from_code(first)
            },
        }
    }

    /// Decodes one value (trailing spaces and NULs removed by the caller or here).
    pub fn decode(&self, raw: &[u8]) -> String {
        let text = if raw.contains(&0x1B) {
            decode_iso2022(raw, self.initial.as_ref())
        } else {
            decode_with(self.initial.as_ref(), raw)
        };
        text.trim_end_matches(['\0', ' ']).to_string()
    }
}

/// Decodes with one set (`None`: the default repertoire, whose high bytes are taken as UTF-8
/// or, failing that, lossily).
fn decode_with(set: Option<&SpecificCharacterSet>, raw: &[u8]) -> String {
    if raw.is_ascii() {
        // The common case, and every set agrees on it.
        return String::from_utf8_lossy(raw).into_owned();
    }
    decode_always(set, raw)
}

/// Decodes with the set's codec even when the bytes are ASCII (ISO-2022-JP's are).
/// dicom-encoding marks bytes a set cannot decode as `\ooo` escapes; UTF-8 and the default
/// repertoire use U+FFFD instead.
fn decode_always(set: Option<&SpecificCharacterSet>, raw: &[u8]) -> String {
    match set {
        Some(set) if *set != SpecificCharacterSet::ISO_IR_192 => set
            .decode(raw)
            .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned()),
        _ => String::from_utf8_lossy(raw).into_owned(),
    }
}

/// The set an escape sequence designates (PS3.3 C.12.1.1.2, tables C.12-3 and C.12-4), and
/// whether the escape itself must be handed to the codec (ISO-2022-JP decodes its own escapes).
fn designated(escape: &[u8]) -> Option<(&'static str, bool)> {
    Some(match escape {
        b"\x1b(B" | b"\x1b(J" => ("ISO_IR 6", false),
        b"\x1b)I" => ("ISO_IR 13", false),
        b"\x1b$B" | b"\x1b$@" => ("ISO 2022 IR 87", true),
        b"\x1b$)C" => ("ISO_IR 149", false),
        b"\x1b$)A" => ("GB2312", false),
        b"\x1b-A" => ("ISO_IR 100", false),
        b"\x1b-B" => ("ISO_IR 101", false),
        b"\x1b-C" => ("ISO_IR 109", false),
        b"\x1b-D" => ("ISO_IR 110", false),
        b"\x1b-F" => ("ISO_IR 126", false),
        b"\x1b-G" => ("ISO_IR 127", false),
        b"\x1b-H" => ("ISO_IR 138", false),
        b"\x1b-L" => ("ISO_IR 144", false),
        b"\x1b-T" => ("ISO_IR 166", false),
        _ => return None,
    })
}

/// Length of the escape sequence at the start of `s` (ESC, intermediates 0x20-0x2F, a final
/// byte 0x30-0x7E), or 1 for a stray ESC.
fn escape_len(s: &[u8]) -> usize {
    let mut n = 1;
    while s.get(n).is_some_and(|b| (0x20..=0x2F).contains(b)) {
        n += 1;
    }
    if s.get(n).is_some_and(|b| (0x30..=0x7E).contains(b)) {
        n + 1
    } else {
        1
    }
}

fn decode_iso2022(raw: &[u8], initial: Option<&SpecificCharacterSet>) -> String {
    let mut out = String::new();
    let mut set: Option<SpecificCharacterSet> = initial.cloned();
    let mut escape: &[u8] = &[];
    let mut pass_escape = false;
    let mut rest = raw;
    loop {
        let run_end = rest.iter().position(|&b| b == 0x1B).unwrap_or(rest.len());
        let run = &rest[..run_end];
        if !run.is_empty() {
            if pass_escape {
                let mut with = escape.to_vec();
                with.extend_from_slice(run);
                out.push_str(&decode_always(set.as_ref(), &with));
            } else {
                out.push_str(&decode_with(set.as_ref(), run));
            }
        }
        if run_end == rest.len() {
            return out;
        }
        rest = &rest[run_end..];
        let n = escape_len(rest);
        escape = &rest[..n];
        match designated(escape) {
            Some((code, pass)) => {
                // G0 back to ASCII keeps an 8-bit initial set for the high half (IR 13, 100...).
                set = if code == "ISO_IR 6" {
                    initial.cloned()
                } else {
                    SpecificCharacterSet::from_code(code)
                };
                pass_escape = pass;
            }
            None => {
                // An escape we cannot follow: what comes next is decoded lossily.
                set = None;
                pass_escape = false;
            }
        }
        rest = &rest[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_byte_and_utf8_sets() {
        assert_eq!(Charset::new(None).decode(b"Smith^John  "), "Smith^John");
        assert_eq!(
            Charset::new(Some("ISO_IR 100")).decode(b"Buc^J\xe9r\xf4me"),
            "Buc^Jérôme"
        );
        assert_eq!(
            Charset::new(Some("ISO_IR 192")).decode("Wang^XiaoDong=王^小東".as_bytes()),
            "Wang^XiaoDong=王^小東"
        );
    }

    /// PS3.5 H.3.1 (Japanese, ISO 2022 IR 87), I.2 (Korean, ISO 2022 IR 149) and the IR 13
    /// katakana of H.3.2.
    #[test]
    fn iso_2022_escape_sequences_switch_sets_inside_a_value() {
        let jp =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        assert_eq!(
            Charset::new(Some("\\ISO 2022 IR 87")).decode(jp),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
        let kr = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        assert_eq!(
            Charset::new(Some("\\ISO 2022 IR 149")).decode(kr),
            "Hong^Gildong=洪^吉洞=홍^길동"
        );
        let kana = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        assert_eq!(
            Charset::new(Some("ISO 2022 IR 13\\ISO 2022 IR 87")).decode(kana),
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
        );
    }

    #[test]
    fn undecodable_values_are_kept_lossily() {
        // Invalid UTF-8 in an ISO_IR 192 value, an unknown set, an escape nobody knows.
        assert_eq!(
            Charset::new(Some("ISO_IR 192")).decode(b"A\xffB"),
            "A\u{fffd}B"
        );
        assert_eq!(
            Charset::new(Some("NOT A SET")).decode(b"A\xe9"),
            "A\u{fffd}"
        );
        assert_eq!(Charset::new(None).decode(b"A\x1b$(DxyB"), "AxyB");
    }
}
