//! A delivered record as a FHIR R4 `Immunization` resource, for the registry's
//! `schakel pull --format fhir`.
//!
//! Owns: the mapping (identifier = message id; status `completed`, or
//! `entered-in-error` for a RETRACT; vaccineCode with the HPK, EU product number
//! and SNOMED vaccine type; the patient with the BSN identifier ONLY when consent
//! was GIVEN, otherwise an anonymous reference carrying the age band;
//! occurrenceDateTime; lotNumber; performer.actor with the URA/AGB identifier;
//! protocolApplied with target disease COVID-19 and the dose numbers).
//! Must not: do I/O or logging; it returns a JSON value.
//! Called by: `schakel pull`.

use serde_json::{json, Map, Value};

use crate::proto::{
    Action, AgeBand, Consent, DeliveredRecord, OrganizationIdType, Patient, VaccinationRecord,
};
use crate::schema::products;

/// FHIR identifier system of the BSN.
pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
/// FHIR identifier system of the URA.
pub const URA_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/ura";
/// FHIR identifier system of the AGB code.
pub const AGB_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/agb-z";
/// Code system of the G-Standaard HPK.
pub const HPK_SYSTEM: &str = "urn:oid:2.16.840.1.113883.2.4.4.7";
/// Code system of EU product numbers (as in the EU DCC value sets).
pub const EU_PRODUCT_SYSTEM: &str =
    "https://ec.europa.eu/health/documents/community-register/html/";
/// SNOMED CT.
pub const SNOMED_SYSTEM: &str = "http://snomed.info/sct";
/// SNOMED CT: COVID-19.
pub const COVID_19: &str = "840539006";
/// Identifier system prefix of message ids; the supplier id follows.
pub const MESSAGE_ID_SYSTEM_PREFIX: &str = "urn:schakel:message-id:";
/// Prefix of the resource id; the gateway's sequence follows.
pub const RESOURCE_ID_PREFIX: &str = "schakel-";

/// The sequence a resource made by [`immunization`] was made from.
pub fn sequence_of(resource: &Value) -> Option<u64> {
    resource
        .get("id")?
        .as_str()?
        .strip_prefix(RESOURCE_ID_PREFIX)?
        .parse()
        .ok()
}

/// A FHIR partial date from a birth date with XX: "1950-XX-XX" -> "1950",
/// "1950-04-XX" -> "1950-04".
fn fhir_birth_date(s: &str) -> &str {
    let s = s.strip_suffix("-XX").unwrap_or(s);
    s.strip_suffix("-XX").unwrap_or(s)
}

fn patient_value(record: &VaccinationRecord) -> Value {
    match (Consent::try_from(record.consent), record.patient.as_ref()) {
        (Ok(Consent::Given), Some(p)) if !p.bsn.is_empty() => json!({
            "reference": "#patient",
            "identifier": { "system": BSN_SYSTEM, "value": p.bsn },
        }),
        _ => {
            let band = record
                .anonymous
                .as_ref()
                .and_then(|a| AgeBand::try_from(a.age_band).ok())
                .unwrap_or(AgeBand::Unspecified);
            json!({
                "display": "anonymous (no consent)",
                "extension": [{
                    "url": "urn:schakel:age-band",
                    "valueCode": band.as_str_name(),
                }],
            })
        }
    }
}

fn contained_patient(p: &Patient) -> Value {
    let family = [p.infix.as_str(), p.family_name.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let mut name = Map::new();
    if !family.is_empty() {
        name.insert("family".into(), json!(family));
    }
    if !p.given_names.is_empty() {
        name.insert(
            "given".into(),
            json!(p.given_names.split_whitespace().collect::<Vec<_>>()),
        );
    }
    let mut patient = json!({
        "resourceType": "Patient",
        "id": "patient",
        "identifier": [{ "system": BSN_SYSTEM, "value": p.bsn }],
        "name": [Value::Object(name)],
    });
    if !p.birth_date.is_empty() {
        patient["birthDate"] = json!(fhir_birth_date(&p.birth_date));
    }
    patient
}

/// The `Immunization` resource of `delivered`. A record without consent GIVEN
/// carries no BSN, name or birth date (the gateway removes the patient of such a
/// record; this does not rely on that).
pub fn immunization(delivered: &DeliveredRecord) -> Value {
    let empty = VaccinationRecord::default();
    let record = delivered.record.as_ref().unwrap_or(&empty);
    let status = match Action::try_from(record.action) {
        Ok(Action::Retract) => "entered-in-error",
        _ => "completed",
    };
    let mut resource = json!({
        "resourceType": "Immunization",
        "id": format!("{RESOURCE_ID_PREFIX}{}", delivered.sequence),
        "identifier": [{
            "system": format!("{MESSAGE_ID_SYSTEM_PREFIX}{}", delivered.supplier_id),
            "value": delivered.message_id,
        }],
        "status": status,
        "patient": patient_value(record),
        "recorded": delivered.received_at,
        "primarySource": true,
    });
    let consent_given = Consent::try_from(record.consent) == Ok(Consent::Given);
    if let (true, Some(p)) = (consent_given, record.patient.as_ref()) {
        if !p.bsn.is_empty() {
            resource["contained"] = json!([contained_patient(p)]);
        }
    }
    if let Some(v) = record.vaccination.as_ref() {
        let mut codings = Vec::new();
        if !v.hpk_code.is_empty() {
            codings.push(json!({ "system": HPK_SYSTEM, "code": v.hpk_code }));
        }
        if !v.eu_product_number.is_empty() {
            codings.push(json!({ "system": EU_PRODUCT_SYSTEM, "code": v.eu_product_number }));
        }
        let product =
            products::by_hpk(&v.hpk_code).or(products::by_eu_number(&v.eu_product_number));
        if let Some(product) = product {
            codings.push(json!({
                "system": SNOMED_SYSTEM,
                "code": product.snomed_type,
                "display": product.name,
            }));
        }
        resource["vaccineCode"] = json!({ "coding": codings });
        resource["occurrenceDateTime"] = json!(v.date);
        if !v.lot_number.is_empty() {
            resource["lotNumber"] = json!(v.lot_number);
        }
        let mut applied = json!({
            "targetDisease": [{ "coding": [{ "system": SNOMED_SYSTEM, "code": COVID_19, "display": "COVID-19" }] }],
        });
        if v.dose_number > 0 {
            applied["doseNumberPositiveInt"] = json!(v.dose_number);
        }
        if v.total_doses > 0 {
            applied["seriesDosesPositiveInt"] = json!(v.total_doses);
        }
        resource["protocolApplied"] = json!([applied]);
        if !v.country.is_empty() {
            resource["extension"] = json!([{
                "url": "urn:schakel:country",
                "valueCode": v.country,
            }]);
        }
    }
    if let Some(p) = record.performer.as_ref() {
        let system = match OrganizationIdType::try_from(p.id_type) {
            Ok(OrganizationIdType::Ura) => URA_SYSTEM,
            _ => AGB_SYSTEM,
        };
        resource["performer"] = json!([{
            "actor": {
                "type": "Organization",
                "identifier": { "system": system, "value": p.organization_id },
            },
        }]);
    }
    if !record.refers_to.is_empty() {
        resource["note"] =
            json!([{ "text": format!("{status}: replaces message id {}", record.refers_to) }]);
    }
    if record.is_test {
        resource["meta"] = json!({ "tag": [{ "system": "urn:schakel:tag", "code": "test", "display": "test record" }] });
    }
    resource
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{anonymous_record, record};

    fn delivered(record: VaccinationRecord) -> DeliveredRecord {
        DeliveredRecord {
            sequence: 42,
            supplier_id: "supplier-a".into(),
            message_id: record.message_id.clone(),
            received_at: "2021-03-04T19:00:00.000Z".into(),
            delivery_attempt: 1,
            lease_token: "t".into(),
            lease_expires_at: String::new(),
            batch_id: "b".into(),
            record: Some(record),
        }
    }

    #[test]
    fn a_record_with_consent_maps_every_field() {
        let r = immunization(&delivered(record("M-1")));
        assert_eq!(r["resourceType"], "Immunization");
        assert_eq!(sequence_of(&r), Some(42));
        assert_eq!(r["identifier"][0]["value"], "M-1");
        assert_eq!(
            r["identifier"][0]["system"],
            "urn:schakel:message-id:supplier-a"
        );
        assert_eq!(r["status"], "completed");
        assert_eq!(r["patient"]["identifier"]["system"], BSN_SYSTEM);
        assert_eq!(r["patient"]["identifier"]["value"], "249566758");
        assert_eq!(r["contained"][0]["birthDate"], "1950-04-12");
        assert_eq!(r["contained"][0]["name"][0]["family"], "van der Berg");
        let coding = r["vaccineCode"]["coding"].as_array().unwrap();
        assert_eq!(coding[0], json!({"system": HPK_SYSTEM, "code": "2924528"}));
        assert_eq!(coding[1]["code"], "EU/1/20/1528");
        assert_eq!(coding[2]["system"], SNOMED_SYSTEM);
        assert_eq!(coding[2]["code"], products::SNOMED_MRNA);
        assert_eq!(r["occurrenceDateTime"], "2021-03-04");
        assert_eq!(r["lotNumber"], "EW2243");
        assert_eq!(
            r["performer"][0]["actor"]["identifier"]["system"],
            AGB_SYSTEM
        );
        assert_eq!(
            r["performer"][0]["actor"]["identifier"]["value"],
            "01234567"
        );
        let applied = &r["protocolApplied"][0];
        assert_eq!(applied["targetDisease"][0]["coding"][0]["code"], COVID_19);
        assert_eq!(applied["doseNumberPositiveInt"], 1);
        assert_eq!(applied["seriesDosesPositiveInt"], 2);
    }

    #[test]
    fn an_anonymous_record_has_no_identity_anywhere() {
        let r = immunization(&delivered(anonymous_record("M-2")));
        assert!(r["patient"].get("identifier").is_none());
        assert!(r.get("contained").is_none());
        assert_eq!(r["patient"]["extension"][0]["valueCode"], "AGE_65_AND_OVER");
        let text = r.to_string();
        assert!(!text.contains("249566758") && !text.contains("Berg") && !text.contains("1950"));
    }

    #[test]
    fn a_patient_without_consent_is_never_written() {
        // Defence in depth: even if a record without consent carried a patient.
        let mut rec = anonymous_record("M-3");
        rec.patient = record("x").patient;
        let text = immunization(&delivered(rec)).to_string();
        assert!(!text.contains("249566758") && !text.contains(BSN_SYSTEM));
    }

    #[test]
    fn retract_is_entered_in_error_and_ura_and_partial_birth_dates_map() {
        let mut rec = record("M-4");
        rec.action = Action::Retract as i32;
        rec.refers_to = "M-1".into();
        rec.performer.as_mut().unwrap().id_type = OrganizationIdType::Ura as i32;
        rec.patient.as_mut().unwrap().birth_date = "1961-XX-XX".into();
        let r = immunization(&delivered(rec));
        assert_eq!(r["status"], "entered-in-error");
        assert_eq!(
            r["performer"][0]["actor"]["identifier"]["system"],
            URA_SYSTEM
        );
        assert_eq!(r["contained"][0]["birthDate"], "1961");
        assert_eq!(fhir_birth_date("1961-04-XX"), "1961-04");
    }
}
