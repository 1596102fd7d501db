//! Getting the STL payload back out of an Encapsulated STL object.

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::encap::{ENCAPSULATED_STL_STORAGE, EncapError, STL_MIME_TYPE};

/// The exact STL bytes stored in an Encapsulated STL object.
///
/// The object must have SOP Class UID Encapsulated STL Storage (when the SOP
/// Class UID is present) and MIME Type `model/stl`. DICOM pads odd-length
/// values to even length; the pad byte is removed using Encapsulated Document
/// Length (0042,0015). When that attribute is absent (objects from other
/// writers), a value whose size is exactly what its binary STL header
/// announces (84 + 50 × triangles) is returned whole, and otherwise one
/// trailing NUL byte — which a text STL never ends with — is removed.
pub fn extract_stl(obj: &FileDicomObject<InMemDicomObject>) -> Result<Vec<u8>, EncapError> {
    if let Some(e) = obj.get(tags::SOP_CLASS_UID) {
        let class = e
            .to_str()
            .map_err(|err| EncapError::ReadValue("SOP Class UID", err))?;
        let class = class.trim_end_matches(['\0', ' ']);
        if class != ENCAPSULATED_STL_STORAGE {
            return Err(EncapError::NotEncapsulatedStl(format!(
                "SOP Class UID is {class}"
            )));
        }
    }
    let mime = obj
        .get(tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT)
        .ok_or_else(|| EncapError::NotEncapsulatedStl("no MIME type".to_string()))?
        .to_str()
        .map_err(|err| EncapError::ReadValue("MIME Type of Encapsulated Document", err))?;
    if !mime.trim().eq_ignore_ascii_case(STL_MIME_TYPE) {
        return Err(EncapError::NotEncapsulatedStl(format!(
            "MIME type is {:?}",
            mime.trim()
        )));
    }

    let stored = obj
        .get(tags::ENCAPSULATED_DOCUMENT)
        .ok_or(EncapError::MissingDocument)?
        .to_bytes()
        .map_err(|err| EncapError::ReadValue("Encapsulated Document", err))?;

    let declared = match obj.get(tags::ENCAPSULATED_DOCUMENT_LENGTH) {
        Some(e) => Some(
            e.to_int::<u64>()
                .map_err(|err| EncapError::ReadValue("Encapsulated Document Length", err))?,
        ),
        None => None,
    };

    let len = match declared {
        Some(declared) => {
            let fits = usize::try_from(declared)
                .ok()
                .filter(|&d| d <= stored.len() && stored.len() - d <= 1);
            fits.ok_or(EncapError::LengthMismatch {
                declared,
                stored: stored.len(),
            })?
        }
        None if is_exact_binary_stl(&stored) => stored.len(),
        None if stored.last() == Some(&0) => stored.len() - 1,
        None => stored.len(),
    };
    Ok(stored[..len].to_vec())
}

/// Whether `bytes` is exactly as long as its binary STL header announces
/// (84 + 50 × triangle count).
fn is_exact_binary_stl(bytes: &[u8]) -> bool {
    let Some(count) = bytes.get(80..84).and_then(|c| <[u8; 4]>::try_from(c).ok()) else {
        return false;
    };
    usize::try_from(u32::from_le_bytes(count))
        .ok()
        .and_then(|n| n.checked_mul(50))
        .and_then(|n| n.checked_add(84))
        == Some(bytes.len())
}

/// The text of an encapsulated text document (OBJ, MTL) whose MIME type is `mime`: the
/// stored bytes cut to Encapsulated Document Length (or without the pad byte, a NUL or
/// space, when the length is absent), as UTF-8.
pub fn extract_text_document(
    obj: &FileDicomObject<InMemDicomObject>,
    mime: &str,
) -> Result<String, EncapError> {
    let found = obj
        .get(tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT)
        .ok_or_else(|| EncapError::WrongDocument("no MIME type".to_string()))?
        .to_str()
        .map_err(|err| EncapError::ReadValue("MIME Type of Encapsulated Document", err))?;
    if !found.trim().eq_ignore_ascii_case(mime) {
        return Err(EncapError::WrongDocument(format!(
            "MIME type is {:?}, not {mime}",
            found.trim()
        )));
    }
    let stored = obj
        .get(tags::ENCAPSULATED_DOCUMENT)
        .ok_or(EncapError::MissingDocument)?
        .to_bytes()
        .map_err(|err| EncapError::ReadValue("Encapsulated Document", err))?;
    let len = match obj.get(tags::ENCAPSULATED_DOCUMENT_LENGTH) {
        Some(e) => {
            let declared = e
                .to_int::<u64>()
                .map_err(|err| EncapError::ReadValue("Encapsulated Document Length", err))?;
            usize::try_from(declared)
                .ok()
                .filter(|&d| d <= stored.len() && stored.len() - d <= 1)
                .ok_or(EncapError::LengthMismatch {
                    declared,
                    stored: stored.len(),
                })?
        }
        None if matches!(stored.last(), Some(0 | b' ')) => stored.len() - 1,
        None => stored.len(),
    };
    String::from_utf8(stored[..len].to_vec())
        .map_err(|_| EncapError::WrongDocument("the document is not UTF-8 text".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::uids;
    use dicom_object::FileMetaTableBuilder;

    fn object(doc: Vec<u8>, len: Option<u32>, mime: &str) -> FileDicomObject<InMemDicomObject> {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            ENCAPSULATED_STL_STORAGE,
        ));
        obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"));
        obj.put(DataElement::new(
            tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
            VR::LO,
            mime,
        ));
        obj.put(DataElement::new(
            tags::ENCAPSULATED_DOCUMENT,
            VR::OB,
            PrimitiveValue::from(doc),
        ));
        if let Some(len) = len {
            obj.put(DataElement::new(
                tags::ENCAPSULATED_DOCUMENT_LENGTH,
                VR::UL,
                PrimitiveValue::from(len),
            ));
        }
        obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .expect("meta")
    }

    #[test]
    fn pad_byte_is_stripped_by_declared_length() {
        let obj = object(vec![1, 2, 3, 0], Some(3), "model/stl");
        assert_eq!(extract_stl(&obj).expect("extract"), vec![1, 2, 3]);
        let obj = object(vec![1, 2, 3, 4], Some(4), "model/stl");
        assert_eq!(extract_stl(&obj).expect("extract"), vec![1, 2, 3, 4]);
    }

    #[test]
    fn inconsistent_length_is_an_error() {
        let obj = object(vec![1, 2, 3, 4], Some(2), "model/stl");
        assert!(matches!(
            extract_stl(&obj),
            Err(EncapError::LengthMismatch {
                declared: 2,
                stored: 4
            })
        ));
        let obj = object(vec![1, 2], Some(3), "model/stl");
        assert!(matches!(
            extract_stl(&obj),
            Err(EncapError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn wrong_mime_type_is_rejected() {
        let obj = object(vec![1, 2], Some(2), "application/pdf");
        assert!(matches!(
            extract_stl(&obj),
            Err(EncapError::NotEncapsulatedStl(_))
        ));
    }

    #[test]
    fn missing_length_keeps_binary_stl_and_strips_text_pad() {
        // A binary STL of one triangle whose last attribute byte is zero:
        // its size matches the header, so nothing is stripped.
        let mut stl = vec![0u8; 84 + 50];
        stl[80..84].copy_from_slice(&1u32.to_le_bytes());
        let obj = object(stl.clone(), None, "model/stl");
        assert_eq!(extract_stl(&obj).expect("extract"), stl);
        // An odd-length text STL padded with NUL.
        let text = b"solid t\nendsolid t\n".to_vec();
        assert_eq!(text.len() % 2, 1);
        let mut padded = text.clone();
        padded.push(0);
        let obj = object(padded, None, "model/stl");
        assert_eq!(extract_stl(&obj).expect("extract"), text);
    }
}
