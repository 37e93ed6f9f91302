//! Seeded generator of realistic, valid vaccination records for the benchmark:
//! valid BSNs (eleven test), Dutch names, birth and vaccination dates, the
//! authorised products, lot numbers and performers, and a chosen fraction of
//! resends (the same record again, same message id and content).
//!
//! Pure: no I/O, no clock. Called by [`crate::bench`] and the criterion benches.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::proto::{
    Action, AgeBand, AnonymousSubject, Batch, BatchHeader, Consent, OrganizationIdType, Patient,
    Performer, PerformerType, Vaccination, VaccinationRecord,
};
use crate::schema::products::PRODUCTS;

const GIVEN: &[&str] = &[
    "Johannes Cornelis Maria Hendrikus",
    "Anna Wilhelmina Geertruida",
    "Hendrikus Petrus Antonius Gerardus",
    "Maria Johanna Elisabeth Theodora",
    "Pieter Jan Willem",
    "Sophie Catharina Henriette",
    "Willem Alexander Frederik Lodewijk",
    "Fatima Zahra Khadija",
    "Mohammed Amin Youssef",
    "Geertruida Hendrika Margaretha Aleida",
    "Lars Sven Erik",
    "Emma Louise Charlotte Adriana",
];
const INFIX: &[&str] = &[
    "", "", "", "van", "de", "van der", "van den", "ter", "in 't",
];
const FAMILY: &[&str] = &[
    "Jansen-Oosterhuis",
    "Bakker-Visser van Oudshoorn",
    "Vermeulen-Hoogendoorn",
    "Bos-Meijerink",
    "Smit-Hoekstra",
    "El Amrani-Bouzidi",
    "Dijkstra-Wiersma",
    "Schouten-van Beek",
    "Mulder-Kloosterboer",
    "Yilmaz-Demirci",
    "Kuipers-Terpstra",
    "Wijnaldum-Blinde",
];
const LOT_PREFIX: &[&str] = &["EW", "FA", "FC", "ABV", "300042", "NL-LOT-", "XD"];

/// A valid BSN: 8 random digits and the check digit of the eleven test.
pub fn bsn(rng: &mut StdRng) -> String {
    loop {
        let digits: Vec<u32> = (0..8).map(|_| rng.random_range(0..10)).collect();
        let sum: u32 = digits.iter().zip((2..=9).rev()).map(|(d, w)| d * w).sum();
        let check = sum % 11;
        if check == 10 || (check == 0 && digits.iter().all(|&d| d == 0)) {
            continue;
        }
        let mut s: String = digits
            .iter()
            .filter_map(|d| char::from_digit(*d, 10))
            .collect();
        if let Some(c) = char::from_digit(check, 10) {
            s.push(c);
        }
        return s;
    }
}

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

/// One realistic valid record with message id `message_id`.
pub fn record(rng: &mut StdRng, message_id: String) -> VaccinationRecord {
    let product = PRODUCTS[rng.random_range(0..PRODUCTS.len().min(4))];
    let consent = rng.random_range(0..10) < 9;
    let birth_year = rng.random_range(1925..2003);
    let (patient, anonymous) = if consent {
        let patient = Patient {
            bsn: bsn(rng),
            given_names: pick(rng, GIVEN).to_owned(),
            infix: pick(rng, INFIX).to_owned(),
            family_name: pick(rng, FAMILY).to_owned(),
            birth_date: format!(
                "{birth_year}-{:02}-{:02}",
                rng.random_range(1..13),
                rng.random_range(1..29)
            ),
        };
        (Some(patient), None)
    } else {
        let band = if birth_year < 1956 {
            AgeBand::Age65AndOver
        } else {
            AgeBand::Age18To64
        };
        (
            None,
            Some(AnonymousSubject {
                age_band: band as i32,
            }),
        )
    };
    let dose = rng.random_range(1..4u32);
    VaccinationRecord {
        message_id,
        action: Action::Register as i32,
        refers_to: String::new(),
        consent: if consent {
            Consent::Given
        } else {
            Consent::NotGiven
        } as i32,
        patient,
        anonymous,
        vaccination: Some(Vaccination {
            hpk_code: product.hpk.unwrap_or_default().to_owned(),
            eu_product_number: product.eu_number.to_owned(),
            date: format!(
                "2021-{:02}-{:02}",
                rng.random_range(2..13),
                rng.random_range(1..29)
            ),
            dose_number: dose,
            total_doses: 2,
            lot_number: format!(
                "{}{:06}-{:04}/VIAL-{:02}",
                pick(rng, LOT_PREFIX),
                rng.random_range(0..1_000_000),
                rng.random_range(0..10_000),
                rng.random_range(1..13)
            ),
            country: if rng.random_range(0..5) == 0 {
                "NLD"
            } else {
                "NL"
            }
            .to_owned(),
        }),
        performer: Some(Performer {
            organization_id: format!("{:08}", rng.random_range(1_000_000..99_999_999)),
            id_type: if rng.random_range(0..2) == 0 {
                OrganizationIdType::Agb
            } else {
                OrganizationIdType::Ura
            } as i32,
            r#type: [
                PerformerType::Gp,
                PerformerType::Ggd,
                PerformerType::Hospital,
                PerformerType::CareInstitution,
            ][rng.random_range(0..4)] as i32,
        }),
        is_test: false,
    }
}

/// A message id in the style of a HIS export: source, day, sequence, random tail.
pub fn message_id(rng: &mut StdRng, prefix: &str, n: u64) -> String {
    format!(
        "{prefix}/2021-03-04/vacc/{n:08}/{:08x}-{:04x}-{:04x}-{:04x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u16>()
    )
}

/// One supplier's batches: `count` records in batches of `batch_size`, of which
/// about `resend_fraction` are resends of an earlier record of this supplier
/// (identical, so answered DUPLICATE). Returns the batches and how many of the
/// records are first sends.
pub fn supplier_batches(
    seed: u64,
    prefix: &str,
    count: usize,
    batch_size: usize,
    resend_fraction: f64,
) -> (Vec<Batch>, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent: Vec<VaccinationRecord> = Vec::new();
    let mut batches = Vec::new();
    let mut current = Vec::with_capacity(batch_size);
    let mut fresh = 0usize;
    for _ in 0..count {
        let resend = !sent.is_empty() && rng.random::<f64>() < resend_fraction;
        let record = if resend {
            sent[rng.random_range(0..sent.len())].clone()
        } else {
            let id = message_id(&mut rng, prefix, fresh as u64);
            fresh += 1;
            let r = record(&mut rng, id);
            sent.push(r.clone());
            r
        };
        current.push(record);
        if current.len() == batch_size {
            batches.push(batch(prefix, batches.len(), std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        batches.push(batch(prefix, batches.len(), current));
    }
    (batches, fresh)
}

fn batch(prefix: &str, n: usize, records: Vec<VaccinationRecord>) -> Batch {
    Batch {
        header: Some(BatchHeader {
            batch_id: format!("{prefix}-batch-{n}"),
            source_system: "SchakelBench HIS 1.0".into(),
            created_at: "2021-03-04T18:00:00Z".into(),
            record_count: records.len() as u32,
            file_name: format!("export-{prefix}-{n}.json"),
        }),
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{self, Rules};
    use prost::Message;

    #[test]
    fn generated_records_are_valid_and_resends_are_identical() {
        let (batches, fresh) = supplier_batches(7, "his-x", 2_000, 300, 0.1);
        assert_eq!(batches.len(), 7);
        let records: Vec<_> = batches.iter().flat_map(|b| b.records.clone()).collect();
        assert_eq!(records.len(), 2_000);
        let ids: std::collections::HashSet<_> = records.iter().map(|r| &r.message_id).collect();
        assert_eq!(ids.len(), fresh);
        assert!(fresh < 2_000 && fresh > 1_700, "fresh {fresh}");
        let today = time::macros::date!(2022 - 01 - 01);
        for mut r in records {
            let findings = schema::validate_record(&mut r, &Rules::default(), today);
            assert!(!schema::is_rejected(&findings), "{findings:?}");
            assert!(r.encoded_len() > 100, "{}", r.encoded_len());
        }
    }

    #[test]
    fn generated_bsns_pass_the_eleven_test() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1_000 {
            assert!(schema::bsn_is_valid(&bsn(&mut rng)));
        }
    }
}
