//! `net::accept::read_request`: the A-ASSOCIATE-RQ read before any policy applies (any peer
//! on the network reaches it).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let mut stream = data;
        let _ = m3dnode::net::accept::read_request(&mut stream, Duration::from_secs(5)).await;
    });
});
