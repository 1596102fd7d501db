//! The DICOM network side: association negotiation and DIMSE, as service class provider
//! ([`scp`], with its Query/Retrieve operations in [`qr`]) and user ([`scu`]).
//!
//! The upper layer (PDUs, A-ASSOCIATE negotiation) is dicom-ul's; this module adds the node's
//! policy (which AEs, which SOP classes, which transfer syntaxes, how many associations) and the
//! DIMSE messages ([`dimse`]). It hands received data sets to [`crate::store`] and knows nothing
//! about meshes.

pub mod accept;
pub mod commit;
pub mod dimse;
pub mod mpps;
pub mod qr;
pub mod qr_scu;
pub mod request;
pub mod scp;
pub mod scu;
pub mod settings;
pub mod tls;
pub mod wire;

use dicom_core::dictionary::{UidDictionary, UidType};

/// Verification SOP Class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Storage Commitment Push Model SOP Class (PS3.4 Annex J): a scanner asks, by N-ACTION,
/// whether the node keeps the instances it sent, before it deletes its own copy.
pub const STORAGE_COMMITMENT_PUSH: &str = "1.2.840.10008.1.20.1";
/// The well-known SOP Instance of Storage Commitment Push Model: the Requested SOP Instance
/// of every N-ACTION and the Affected SOP Instance of every N-EVENT-REPORT.
pub const STORAGE_COMMITMENT_PUSH_INSTANCE: &str = "1.2.840.10008.1.20.1.1";
/// Modality Performed Procedure Step SOP Class (PS3.4 Annex F): N-CREATE and N-SET tell when
/// an acquisition is complete and which instances it made.
pub const MPPS: &str = "1.2.840.10008.3.1.2.3.3";
/// Implicit VR Little Endian, the default transfer syntax.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Transfer syntaxes the SCP accepts: exactly those whose pixel data the `volume` module can
/// decode (dicom-pixeldata with its native, `charls` and `openjp2` codecs; libjpeg-turbo for
/// JPEG Extended, whose 12-bit variant the pure-Rust JPEG decoder cannot read), so that no
/// image is acknowledged that a job could not read. Refused at negotiation, so that the sender
/// falls back to a syntax we can read: video and JPEG XL/HTJ2K. Instances are stored in the
/// syntax they arrive in.
pub const ACCEPTED_TRANSFER_SYNTAXES: &[&str] = &[
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    "1.2.840.10008.1.2.2",    // Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50", // JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51", // JPEG Extended (Process 2 & 4), 8 and 12 bit
    "1.2.840.10008.1.2.4.57", // JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70", // JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.5",    // RLE Lossless
];

/// The retired storage SOP classes of Print Management (PS3.4 H, retired), which live outside
/// the `1.2.840.10008.5.1.4` arc of every other storage class.
const RETIRED_PRINT_STORAGE: &[&str] = &[
    "1.2.840.10008.5.1.1.27", // Stored Print Storage
    "1.2.840.10008.5.1.1.29", // Hardcopy Grayscale Image Storage
    "1.2.840.10008.5.1.1.30", // Hardcopy Color Image Storage
];

/// True for every storage SOP class of the standard dictionary (retired ones included: old
/// modalities still send them), and nothing else: not Storage Commitment, not the DICOMDIR
/// "Media Storage Directory", not query/retrieve.
pub fn is_storage_sop_class(uid: &str) -> bool {
    let uid = uid.trim_end_matches(['\0', ' ']);
    if RETIRED_PRINT_STORAGE.contains(&uid) {
        return true;
    }
    let Some(entry) = dicom_dictionary_std::StandardSopClassDictionary.by_uid(uid) else {
        return false;
    };
    entry.r#type == UidType::SopClass
        && uid.starts_with("1.2.840.10008.5.1.4.")
        && entry.name.contains("Storage")
        && !entry.name.contains("Commitment")
}

/// The normalized (DIMSE-N) services the SCP serves: Storage Commitment Push Model and MPPS.
/// Their messages are a command plus a small data set the node reads with dicom-object, so
/// they are negotiated with [`NATIVE_LE_SYNTAXES`] only.
pub fn is_normalized_service(uid: &str) -> bool {
    uid == STORAGE_COMMITMENT_PUSH || uid == MPPS
}

/// Implicit and Explicit VR Little Endian: the transfer syntaxes of the normalized services.
pub const NATIVE_LE_SYNTAXES: &[&str] = &[EXPLICIT_VR_LE, IMPLICIT_VR_LE];

/// Every abstract syntax the SCP accepts: Verification, storage, Query/Retrieve, Storage
/// Commitment and MPPS.
pub fn served_by_scp(uid: &str) -> bool {
    uid == VERIFICATION
        || is_storage_sop_class(uid)
        || crate::query::sop_class(uid).is_some()
        || is_normalized_service(uid)
}

/// A peer-supplied string made safe for a log line: control characters (a newline would
/// forge a line of its own), quotes and backslashes are escaped, anything else non-ASCII is
/// escaped too (AE titles and UIDs are ASCII; anything else is worth seeing as it is), and
/// at most 128 characters are shown.
pub struct Printable<'a>(pub &'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 128;
        for c in self.0.chars().take(SHOWN) {
            if c.is_ascii_graphic() && c != '\\' && c != '"' || c == ' ' {
                f.write_fmt(format_args!("{c}"))?;
            } else {
                f.write_fmt(format_args!("{}", c.escape_default()))?;
            }
        }
        let n = self.0.chars().count();
        if n > SHOWN {
            write!(f, "...({n} characters)")?;
        }
        Ok(())
    }
}

/// Name of a SOP class or transfer syntax for logs, falling back to the UID.
pub fn uid_name(uid: &str) -> String {
    let uid = uid.trim_end_matches(['\0', ' ']);
    dicom_dictionary_std::StandardSopClassDictionary
        .by_uid(uid)
        .map(|e| e.name.to_string())
        .or_else(|| {
            use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
            dicom_transfer_syntax_registry::TransferSyntaxRegistry
                .get(uid)
                .map(|ts| ts.name().to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_come_from_the_dictionary() {
        for uid in [
            "1.2.840.10008.5.1.4.1.1.2",     // CT
            "1.2.840.10008.5.1.4.1.1.4",     // MR
            "1.2.840.10008.5.1.4.1.1.4.1",   // Enhanced MR
            "1.2.840.10008.5.1.4.1.1.2.1",   // Enhanced CT
            "1.2.840.10008.5.1.4.1.1.104.3", // Encapsulated STL
            "1.2.840.10008.5.1.4.1.1.481.3", // RT Structure Set
            "1.2.840.10008.5.1.4.1.1.88.22", // Enhanced SR
            "1.2.840.10008.5.1.4.1.1.12.1",  // XA
            "1.2.840.10008.5.1.4.38.1",      // Hanging Protocol
        ] {
            assert!(is_storage_sop_class(uid), "{uid}");
        }
        for uid in [
            VERIFICATION,
            "1.2.840.10008.1.20.1",        // Storage Commitment
            "1.2.840.10008.1.3.10",        // Media Storage Directory
            "1.2.840.10008.5.1.4.1.2.2.1", // Study Root FIND
            "1.2.3.4",
        ] {
            assert!(!is_storage_sop_class(uid), "{uid}");
        }
    }

    #[test]
    fn retired_print_storage_classes_are_storage() {
        for uid in RETIRED_PRINT_STORAGE {
            assert!(is_storage_sop_class(uid), "{uid}");
        }
        // Print Management's other classes are not.
        assert!(!is_storage_sop_class("1.2.840.10008.5.1.1.1")); // Basic Film Session
    }

    #[test]
    fn printable_escapes_what_could_forge_a_log_line() {
        let shown = Printable("1.2.3\n2026-12-04T00:00:00Z INFO forged\x1b[31m\u{e9}").to_string();
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(
            shown,
            "1.2.3\\n2026-12-04T00:00:00Z INFO forged\\u{1b}[31m\\u{e9}"
        );
        let long = "9".repeat(500);
        assert_eq!(
            Printable(&long).to_string(),
            format!("{}...(500 characters)", "9".repeat(128))
        );
    }

    #[test]
    fn every_accepted_syntax_is_supported_by_the_registry() {
        for ts in ACCEPTED_TRANSFER_SYNTAXES {
            assert!(dicom_ul::association::server::is_supported(ts), "{ts}");
        }
    }
}
