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
}
