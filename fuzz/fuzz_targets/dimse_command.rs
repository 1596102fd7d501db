//! `net::dimse::Command::parse` and every accessor the SCP and SCU call on a command set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m3dnode::net::dimse::Command;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::parse(data) {
        let _ = c.command_field();
        let _ = c.message_id();
        let _ = c.message_id_responded_to();
        let _ = c.status();
        let _ = c.has_data_set();
        let _ = c.affected_sop_class_uid();
        let _ = c.affected_sop_instance_uid();
        let _ = c.error_comment();
        let _ = c.move_destination();
        let _ = c.move_originator_ae_title();
        let _ = c.move_originator_message_id();
        let _ = c.sub_operations();
    }
});
