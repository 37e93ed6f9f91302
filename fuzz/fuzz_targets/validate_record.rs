//! Arbitrary records through validation: never a panic; a record without
//! consent (anything but GIVEN) never keeps its patient data; validating a normalised, accepted
//! record again finds no errors (normalisation is stable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use schakel::proto::{Consent, VaccinationRecord};
use schakel::schema::{is_rejected, validate_record, Rules};

fuzz_target!(|data: &[u8]| {
    let Ok(mut record) = VaccinationRecord::decode(data) else {
        return;
    };
    let rules = Rules::default();
    let today = time::macros::date!(2022 - 06 - 01);
    let findings = validate_record(&mut record, &rules, today);
    // Without consent means anything but GIVEN: NOT_GIVEN, unspecified, or a
    // value this version does not know.
    if record.consent != Consent::Given as i32 {
        assert!(record.patient.is_none(), "patient data survived without consent");
    }
    if !is_rejected(&findings) {
        let again = validate_record(&mut record, &rules, today);
        assert!(!is_rejected(&again), "an accepted record fails when validated again: {again:?}");
    }
});
