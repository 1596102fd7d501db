//! `query::Query::parse`: C-FIND/C-MOVE/C-GET identifiers, in both models and every service.
//! The first byte picks the model, service and transfer syntax.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m3dnode::query::{Model, Query, Service};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let model = if pick & 1 == 0 {
        Model::StudyRoot
    } else {
        Model::PatientRoot
    };
    let service = match (pick >> 1) % 3 {
        0 => Service::Find,
        1 => Service::Move,
        _ => Service::Get,
    };
    let ts = if pick & 0x80 == 0 {
        "1.2.840.10008.1.2"
    } else {
        "1.2.840.10008.1.2.1"
    };
    if let Ok(q) = Query::parse(model, service, rest, ts) {
        let _ = q.level();
        let _ = q.model();
    }
});
