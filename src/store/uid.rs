//! UID syntax (PS3.5 9.1) and generation.
//!
//! UIDs become directory and file names in the store, so a UID that is not a UID (`../../x`,
//! `1/2`) must never reach the file system; checking the syntax exactly is the simplest proof.

use rand::RngExt;

/// True for a syntactically valid UID: 1-64 characters, dot-separated numeric components,
/// no empty component, no leading zero in a multi-digit component.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && !(c.len() > 1 && c.starts_with('0'))
        })
}

/// A new globally unique UID under the `2.25` arc (PS3.5 B.2): the decimal form of a random
/// 128-bit number, which needs no registered organisation root.
pub fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes);
    // UUID v4 layout, as B.2 describes the value as a UUID.
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

/// A UID derived from `base` and a `label` (e.g. `"obj/1"`): the same pair always gives the
/// same UID, different pairs give different ones (with the odds of a 122-bit hash collision).
///
/// Why: a job re-run after a crash must make the same instances as the first run, so every
/// object of a result beyond the first takes its UID from the result's one fixed UID rather
/// than from a random number. The form is `2.25.` and the decimal of a 128-bit number
/// (PS3.5 B.2) built like a name-based UUID (RFC 9562 v5, but with SHA-256): the first 16 bytes
/// of SHA-256(base, 0x00, label) with the version nibble set to 5 and the RFC variant bits.
pub fn derived_uid(base: &str, label: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"m3dnode derived uid\0");
    h.update(base.as_bytes());
    h.update([0u8]);
    h.update(label.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0F) | 0x50;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax() {
        for ok in ["1.2.3", "0.1", "1.2.840.10008.5.1.4.1.1.104.3", "2.25.0"] {
            assert!(is_valid_uid(ok), "{ok}");
        }
        let long = format!("1.{}", "2".repeat(63));
        for bad in [
            "", "1..2", "../../x", "1.02", "1.2/3", ".1", "1.", "1.2 ", &long,
        ] {
            assert!(!is_valid_uid(bad), "{bad}");
        }
    }

    #[test]
    fn generated_uids_are_valid_and_distinct() {
        let a = new_uid();
        let b = new_uid();
        assert!(is_valid_uid(&a) && is_valid_uid(&b), "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn derived_uids_are_valid_deterministic_and_distinct() {
        let base = "2.25.123456789012345678901234567890";
        let a = derived_uid(base, "obj/1");
        assert!(is_valid_uid(&a), "{a}");
        assert!(a.starts_with("2.25."), "{a}");
        assert_eq!(a, derived_uid(base, "obj/1"));
        let others = [
            derived_uid(base, "obj/2"),
            derived_uid(base, "mtl/1"),
            derived_uid("2.25.1", "obj/1"),
            // the separator keeps ("a", "bc") and ("ab", "c") apart
            derived_uid(&format!("{base}o"), "bj/1"),
        ];
        for o in &others {
            assert!(is_valid_uid(o), "{o}");
            assert_ne!(&a, o);
        }
        // The version and variant bits are set as in a UUID v5.
        let n: u128 = a["2.25.".len()..].parse().expect("decimal");
        assert_eq!((n >> 76) & 0xF, 5);
        assert_eq!((n >> 62) & 0x3, 2);
    }
}
