//! `store::header::scan_bytes`, the streaming data set walker every received instance goes
//! through, in each encoding it handles (Deflated included). The first byte picks the
//! transfer syntax.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m3dnode::store::header::{Encoding, scan_bytes};

const SYNTAXES: [&str; 4] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let ts = SYNTAXES[usize::from(pick) % SYNTAXES.len()];
    let _ = scan_bytes(rest, Encoding::of_transfer_syntax(ts));
});
