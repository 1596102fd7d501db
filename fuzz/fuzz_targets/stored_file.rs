//! A stored Part 10 file as a job reads it: the header check (`store::header::scan_part10`)
//! and, when that passes, the volume assembly with every pixel decoder
//! (`volume::assemble`: native, RLE, JPEG, JPEG-LS, JPEG 2000, Deflated).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The node catches a third-party decoder's panic (`volume::decode`) and fails the frame
    // with a reason; libfuzzer-sys's hook would abort on it even so. Without the hook, a
    // panic that escapes still reaches libfuzzer-sys's catch_unwind and counts as a crash.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    let path = file.path().to_path_buf();
    if m3dnode::store::header::scan_part10(&path).is_ok() {
        let _ = m3dnode::volume::assemble(&[path], &Default::default());
    }
});
