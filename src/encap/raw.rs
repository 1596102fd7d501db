//! The source's text as it is stored: the bytes of every value, undecoded.
//!
//! dicom-rs decodes text with the Specific Character Set it understands, and it does not
//! understand code extensions (ISO 2022 escape sequences, multi-valued (0008,0005)): a Korean
//! or Japanese name comes back as mojibake, and writing that back re-encodes the damage. The
//! result must carry the source's patient and study text byte for byte under the source's
//! character set, so those values are taken from the file as stored, not from the decoded
//! object; nothing is decoded that need not be.

use std::io::{BufReader, Read};
use std::path::Path;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, DicomValue, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_object::InMemDicomObject;
use dicom_parser::dataset::read::{DataSetReaderOptions, ValueReadStrategy};
use dicom_parser::dataset::{DataSetReader, DataToken};

use super::EncapError;

/// Text VRs whose bytes depend on the Specific Character Set.
pub(super) const CHARSET_VRS: &[VR] = &[VR::SH, VR::LO, VR::ST, VR::LT, VR::UT, VR::UC, VR::PN];

/// Reads the data set of a Part 10 file up to Pixel Data with every primitive value as the
/// bytes stored (no text decoding, no byte swapping), sequences as items.
pub fn stored_values(path: &Path) -> Result<InMemDicomObject, EncapError> {
    let fail = |message: String| EncapError::ReadSource {
        path: path.to_path_buf(),
        message,
    };
    let mut file = BufReader::new(std::fs::File::open(path).map_err(|e| fail(e.to_string()))?);
    let mut preamble = [0u8; 128];
    file.read_exact(&mut preamble)
        .map_err(|e| fail(e.to_string()))?;
    let meta =
        dicom_object::FileMetaTable::from_reader(&mut file).map_err(|e| fail(e.to_string()))?;
    let ts_uid = meta.transfer_syntax().trim_end_matches(['\0', ' ']);
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| fail(format!("unknown transfer syntax {ts_uid}")))?;
    let options = DataSetReaderOptions::default().value_read(ValueReadStrategy::Raw);
    let source: Box<dyn Read> = match ts.codec() {
        Codec::Dataset(Some(adapter)) => adapter.adapt_reader(Box::new(file)),
        Codec::Dataset(None) => return Err(fail(format!("cannot read transfer syntax {ts_uid}"))),
        Codec::None | Codec::EncapsulatedPixelData(..) => Box::new(file),
    };
    let reader =
        DataSetReader::new_with_ts_options(source, ts, options).map_err(|e| fail(e.to_string()))?;
    let mut tokens = reader.map(|t| t.map_err(|e| fail(e.to_string())));
    read_items(&mut tokens, true)
}

/// Builds one data set (the top level or an item) from tokens, up to its end (or, at the
/// top level, Pixel Data).
fn read_items(
    tokens: &mut impl Iterator<Item = Result<DataToken, EncapError>>,
    top: bool,
) -> Result<InMemDicomObject, EncapError> {
    let mut obj = InMemDicomObject::new_empty();
    let mut header = None;
    while let Some(token) = tokens.next() {
        match token? {
            DataToken::ElementHeader(h) if top && h.tag == tags::PIXEL_DATA => break,
            DataToken::PixelSequenceStart if top => break,
            DataToken::ElementHeader(h) => header = Some(h),
            DataToken::PrimitiveValue(v) => {
                if let Some(h) = header.take() {
                    obj.put(DataElement::new(h.tag, h.vr, v));
                }
            }
            DataToken::SequenceStart { tag, .. } => {
                let items = read_sequence(tokens)?;
                obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
            }
            DataToken::ItemEnd if !top => break,
            _ => {}
        }
    }
    Ok(obj)
}

fn read_sequence(
    tokens: &mut impl Iterator<Item = Result<DataToken, EncapError>>,
) -> Result<Vec<InMemDicomObject>, EncapError> {
    let mut items = Vec::new();
    while let Some(token) = tokens.next() {
        match token? {
            DataToken::ItemStart { .. } => items.push(read_items(tokens, false)?),
            DataToken::SequenceEnd => break,
            _ => {}
        }
    }
    Ok(items)
}

/// Replaces, in `decoded`, the value of every charset-dependent text element (nested ones
/// included) and of Specific Character Set by the bytes stored in the file (`stored`, from
/// [`stored_values`]), so that copying an element copies the stored bytes.
pub(super) fn keep_stored_text(decoded: &mut InMemDicomObject, stored: &InMemDicomObject) {
    let tags: Vec<Tag> = decoded.iter().map(|e| e.header().tag).collect();
    for tag in tags {
        let (Some(e), Some(raw)) = (decoded.get(tag), stored.get(tag)) else {
            continue;
        };
        let vr = e.vr();
        let replaced = match (e.value(), raw.value()) {
            (DicomValue::Sequence(seq), DicomValue::Sequence(raw_seq))
                if seq.items().len() == raw_seq.items().len() =>
            {
                let mut items = seq.items().to_vec();
                for (item, raw_item) in items.iter_mut().zip(raw_seq.items()) {
                    keep_stored_text(item, raw_item);
                }
                Some(DataElement::new(tag, vr, DataSetSequence::from(items)))
            }
            (DicomValue::Primitive(_), DicomValue::Primitive(PrimitiveValue::U8(bytes)))
                if CHARSET_VRS.contains(&vr) || tag == tags::SPECIFIC_CHARACTER_SET =>
            {
                Some(DataElement::new(tag, vr, PrimitiveValue::U8(bytes.clone())))
            }
            _ => None,
        };
        if let Some(element) = replaced {
            decoded.put(element);
        }
    }
}
