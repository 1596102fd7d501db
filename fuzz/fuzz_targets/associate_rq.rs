//! `net::accept::read_request`: the A-ASSOCIATE-RQ read before any policy applies (any peer
//! on the network reaches it), then `net::accept::negotiate` with the node's own terms on
//! whatever request it yields, and the encoding of the answer.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use m3dnode::net::accept::{Decision, Terms, negotiate, read_request, send};

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let mut stream = data;
        let Ok(rq) = read_request(&mut stream, Duration::from_secs(5)).await else {
            return;
        };
        let access = |called: &str, _calling: &str| {
            if called == "M3DNODE" {
                Ok(())
            } else {
                Err(dicom_ul::pdu::AssociationRJServiceUserReason::CalledAETitleNotRecognized)
            }
        };
        let terms = Terms {
            max_pdu: 131_072,
            abstract_syntax: &|uid| {
                uid == m3dnode::net::VERIFICATION
                    || m3dnode::net::is_storage_sop_class(uid)
                    || m3dnode::query::sop_class(uid).is_some()
            },
            transfer_syntaxes: m3dnode::net::ACCEPTED_TRANSFER_SYNTAXES,
            access: &access,
            scp_role: &m3dnode::net::is_storage_sop_class,
            decline_extended: &|uid| m3dnode::query::sop_class(uid).is_some(),
        };
        let answer = match negotiate(rq, &terms) {
            Decision::Accept(agreed) => agreed.ac,
            Decision::Reject { rj, .. } => rj,
        };
        let mut sink = tokio::io::sink();
        let _ = send(&mut sink, &answer).await;
    });
});
