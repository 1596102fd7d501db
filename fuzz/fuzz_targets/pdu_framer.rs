//! `net::wire::PduReader` on a byte stream, and the PDVs of every P-DATA-TF it frames: the
//! first parser a peer's bytes reach after the association.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m3dnode::net::wire::{Frame, PduReader};

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        // The node announces 256 KiB; a small bound too, so that both paths of the length
        // check are reached.
        for max in [16_384u32, 262_144] {
            let mut stream = data;
            let mut reader = PduReader::new(max);
            for _ in 0..64 {
                match reader.next(&mut stream).await {
                    Ok(Frame::PData(pdvs)) => {
                        for pdv in pdvs {
                            if pdv.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    });
});
