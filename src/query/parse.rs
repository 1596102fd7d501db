//! Reading and checking an identifier (PS3.4 C.4.1.2.1, C.4.2.2.1, C.4.3.2.1).
//!
//! The data set is read undecoded (values as their bytes), bounded in size and nesting before
//! anything is allocated for a value, and text is decoded with the query's own character set
//! ([`super::charset`]).

use std::io::Read;

use dicom_core::header::HasLength;
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_parser::dataset::read::{DataSetReaderOptions, ValueReadStrategy};
use dicom_parser::dataset::{DataSetReader, DataToken};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::keys::{self, Key, KeyValue, Matching};
use super::{
    Charset, Level, MAX_DEPTH, MAX_IDENTIFIER_BYTES, Model, Query, QueryError, Service, TagName,
};

/// Text VRs whose bytes depend on the Specific Character Set.
pub(super) const CHARSET_VRS: &[VR] = &[VR::SH, VR::LO, VR::ST, VR::LT, VR::UT, VR::UC, VR::PN];

/// A top-level element as read.
pub(super) enum Raw {
    Value {
        tag: Tag,
        vr: VR,
        bytes: Vec<u8>,
    },
    /// A sequence; `values` tells whether any item holds a non-empty value.
    Sequence {
        tag: Tag,
        values: bool,
    },
}

pub(super) fn parse(
    model: Model,
    service: Service,
    bytes: &[u8],
    ts_uid: &str,
) -> Result<Query, QueryError> {
    let elements = read_elements(bytes, ts_uid)?;
    let charset = match elements.iter().find_map(|e| match e {
        Raw::Value { tag, bytes, .. } if *tag == tags::SPECIFIC_CHARACTER_SET => Some(bytes),
        _ => None,
    }) {
        Some(raw) => Charset::from_value(raw)?,
        None => Charset::default_repertoire(),
    };
    let level = match elements.iter().find_map(|e| match e {
        Raw::Value { tag, bytes, .. } if *tag == tags::QUERY_RETRIEVE_LEVEL => Some(bytes),
        _ => None,
    }) {
        None => return Err(QueryError::MissingLevel),
        Some(raw) => match std::str::from_utf8(raw)
            .map_err(|_| QueryError::InvalidLevel)?
            .trim_matches([' ', '\0'])
        {
            "" => return Err(QueryError::MissingLevel),
            "PATIENT" => Level::Patient,
            "STUDY" => Level::Study,
            "SERIES" => Level::Series,
            "IMAGE" => Level::Image,
            _ => return Err(QueryError::InvalidLevel),
        },
    };
    if model == Model::StudyRoot && level == Level::Patient {
        return Err(QueryError::LevelNotInModel { level, model });
    }

    let mut keys = Vec::with_capacity(elements.len() + 4);
    for element in elements {
        let key = match element {
            Raw::Sequence { tag, values } => {
                if values {
                    return Err(QueryError::SequenceMatching { tag: TagName(tag) });
                }
                Key {
                    tag,
                    vr: VR::SQ,
                    attr: None,
                    value: KeyValue::Sequence,
                }
            }
            Raw::Value { tag, vr, bytes } => {
                if tag == tags::SPECIFIC_CHARACTER_SET {
                    continue;
                }
                let attr = keys::attr(tag);
                let vr = attr.map_or(vr, |a| a.vr);
                let text = if CHARSET_VRS.contains(&vr) {
                    charset.decode(&bytes)?
                } else {
                    bytes.iter().map(|&b| b as char).collect()
                };
                let text = if matches!(vr, VR::ST | VR::LT | VR::UT) {
                    text.trim_end_matches([' ', '\0'])
                } else {
                    text.trim_matches([' ', '\0'])
                };
                let value = if text.is_empty() {
                    KeyValue::Empty
                } else {
                    KeyValue::Text(text.to_string())
                };
                Key {
                    tag,
                    vr,
                    attr,
                    value,
                }
            }
        };
        if let Some(a) = key.attr {
            if a.level > level {
                return Err(QueryError::KeyBelowLevel {
                    tag: TagName(key.tag),
                    level,
                });
            }
            check_value(&key)?;
        }
        keys.push(key);
    }

    // Hierarchical model: one value for the unique key of each level above the query level;
    // a retrieve also names what it retrieves at its own level (a UID list there).
    let top = match model {
        Model::PatientRoot => Level::Patient,
        Model::StudyRoot => Level::Study,
    };
    for l in [Level::Patient, Level::Study, Level::Series, Level::Image] {
        if l < top || l > level {
            continue;
        }
        let tag = keys::unique_key(l);
        let key = keys.iter().find(|k| k.tag == tag);
        let single = key
            .and_then(Key::text)
            .is_some_and(|t| !t.contains(['*', '?']) && (l == level || !t.contains('\\')));
        let required = l < level || service != Service::Find;
        if required && !single {
            return Err(QueryError::MissingUniqueKey {
                tag: TagName(tag),
                level,
            });
        }
        if key.is_none() {
            keys.push(Key {
                tag,
                vr: keys::attr(tag).map_or(VR::UN, |a| a.vr),
                attr: keys::attr(tag),
                value: KeyValue::Empty,
            });
        }
    }
    // The level as this node spells it (the received one may carry padding).
    keys.retain(|k| k.tag != tags::QUERY_RETRIEVE_LEVEL);
    keys.push(Key {
        tag: tags::QUERY_RETRIEVE_LEVEL,
        vr: VR::CS,
        attr: None,
        value: KeyValue::Text(level.code().to_string()),
    });
    keys.sort_by_key(|k| k.tag);
    keys.dedup_by_key(|k| k.tag);

    Ok(Query {
        model,
        service,
        level,
        keys,
        charset,
    })
}

/// Refuses values the key's VR cannot hold, so that matching never sees them.
fn check_value(key: &Key) -> Result<(), QueryError> {
    let (Some(attr), Some(text)) = (key.attr, key.text()) else {
        return Ok(());
    };
    let bad = || QueryError::InvalidValue {
        tag: TagName(key.tag),
    };
    for value in text.split('\\') {
        let ok = match attr.matching {
            Matching::Date => range_ends(value).is_some_and(|(a, b)| {
                [a, b]
                    .into_iter()
                    .flatten()
                    .all(|d| d.len() == 8 && d.bytes().all(|c| c.is_ascii_digit()))
            }),
            Matching::Time => range_ends(value).is_some_and(|(a, b)| {
                [a, b].into_iter().flatten().all(|t| {
                    (2..=13).contains(&t.len())
                        && t.bytes()
                            .all(|c| c.is_ascii_digit() || c == b'.' || c == b':')
                })
            }),
            Matching::Int => value.trim().parse::<i64>().is_ok(),
            _ => true,
        };
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// The ends of a DA/TM value: `A-B`, `-B`, `A-`, or a single value `A` (as `(A, A)`).
/// None for `-` alone or more than one `-`.
pub(super) fn range_ends(value: &str) -> Option<(Option<&str>, Option<&str>)> {
    let mut parts = value.split('-');
    let a = parts.next()?;
    match (parts.next(), parts.next()) {
        (None, _) => Some((Some(a), Some(a))),
        (Some(b), None) => {
            let (a, b) = ((!a.is_empty()).then_some(a), (!b.is_empty()).then_some(b));
            (a.is_some() || b.is_some()).then_some((a, b))
        }
        _ => None,
    }
}

/// Reads the top-level elements, values undecoded, within the size and depth caps.
pub(super) fn read_elements(bytes: &[u8], ts_uid: &str) -> Result<Vec<Raw>, QueryError> {
    if bytes.len() > MAX_IDENTIFIER_BYTES {
        return Err(QueryError::TooLarge {
            limit: MAX_IDENTIFIER_BYTES,
        });
    }
    let ts_uid = ts_uid.trim_end_matches(['\0', ' ']);
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| QueryError::TransferSyntax(crate::net::Printable(ts_uid).to_string()))?;
    let inflated;
    let data: &[u8] = match ts.codec() {
        Codec::Dataset(Some(adapter)) => {
            let mut buf = Vec::new();
            adapter
                .adapt_reader(Box::new(bytes))
                .take(MAX_IDENTIFIER_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| QueryError::Malformed(e.to_string()))?;
            if buf.len() > MAX_IDENTIFIER_BYTES {
                return Err(QueryError::TooLarge {
                    limit: MAX_IDENTIFIER_BYTES,
                });
            }
            inflated = buf;
            &inflated
        }
        Codec::Dataset(None) => {
            return Err(QueryError::TransferSyntax(ts_uid.to_string()));
        }
        Codec::None | Codec::EncapsulatedPixelData(..) => bytes,
    };
    let options = DataSetReaderOptions::default().value_read(ValueReadStrategy::Raw);
    let reader = DataSetReader::new_with_ts_options(data, ts, options)
        .map_err(|e| QueryError::Malformed(e.to_string()))?;

    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut header = None;
    // The open top-level sequence and whether a value was found in it.
    let mut open: Option<(Tag, bool)> = None;
    for token in reader {
        let token = token.map_err(|e| QueryError::Malformed(short(&e.to_string())))?;
        match token {
            DataToken::ElementHeader(h) => {
                // A length beyond the data would make the parser allocate it before it finds
                // the data missing.
                if h.length().get().is_some_and(|l| l as usize > data.len()) {
                    return Err(QueryError::Malformed(format!(
                        "length of {} beyond the data",
                        TagName(h.tag)
                    )));
                }
                header = Some(h);
            }
            DataToken::PrimitiveValue(v) => {
                let Some(h) = header.take() else { continue };
                let bytes = match v {
                    PrimitiveValue::U8(b) => b.into_vec(),
                    PrimitiveValue::Empty => Vec::new(),
                    other => other.to_bytes().into_owned(),
                };
                if depth == 0 {
                    if h.tag.0 > 0x0007 && h.tag.1 != 0x0000 {
                        out.push(Raw::Value {
                            tag: h.tag,
                            vr: h.vr,
                            bytes,
                        });
                    }
                } else if let Some((_, values)) = open.as_mut() {
                    *values |= bytes.iter().any(|&b| b != b' ' && b != 0);
                }
            }
            DataToken::SequenceStart { tag, .. } => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(QueryError::TooDeep { limit: MAX_DEPTH });
                }
                if depth == 1 {
                    open = Some((tag, false));
                }
            }
            DataToken::SequenceEnd => {
                depth = depth.saturating_sub(1);
                if depth == 0
                    && let Some((tag, values)) = open.take()
                {
                    out.push(Raw::Sequence { tag, values });
                }
            }
            DataToken::ItemStart { .. } | DataToken::ItemEnd => {}
            DataToken::PixelSequenceStart | DataToken::ItemValue(_) | DataToken::OffsetTable(_) => {
                return Err(QueryError::Malformed("pixel data in identifier".into()));
            }
        }
    }
    if depth != 0 {
        return Err(QueryError::Malformed("unterminated sequence".into()));
    }
    Ok(out)
}

/// Parser messages can be long; the Error Comment holds 64 characters anyway.
fn short(s: &str) -> String {
    s.chars().take(120).collect()
}
