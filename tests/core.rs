//! The core contract over the wire: real gateway, real mTLS, real sled.

mod common;

use common::*;
use schakel::proto::*;
use tonic::Code;

/// The per-token answers of an ack or release, in order: (token, outcome,
/// sequence). Compared whole, so an empty or short answer fails too.
fn answers(results: &[TokenResult]) -> Vec<(String, i32, u64)> {
    results
        .iter()
        .map(|r| (r.lease_token.clone(), r.outcome, r.sequence))
        .collect()
}

/// What [`answers`] must be when every one of `records` got `outcome`.
fn each(records: &[DeliveredRecord], outcome: TokenOutcome) -> Vec<(String, i32, u64)> {
    records
        .iter()
        .map(|r| (r.lease_token.clone(), outcome as i32, r.sequence))
        .collect()
}

fn statuses(receipt: &BatchReceipt) -> Vec<(u32, i32, Vec<String>)> {
    receipt
        .results
        .iter()
        .map(|r| {
            (
                r.index,
                r.status,
                r.findings.iter().map(|f| f.code.clone()).collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn push_then_pull_then_ack() {
    let server = TestServer::start().await;
    let mut intake = server.intake(SUPPLIER_A).await;
    let receipt = intake
        .submit_batch(batch("day-1", vec![record("m-1"), anonymous_record("m-2")]))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(
        (receipt.accepted, receipt.duplicate, receipt.rejected),
        (2, 0, 0)
    );
    assert_eq!(receipt.batch_id, "day-1");
    assert_eq!(receipt.supplier_id, SUPPLIER_A);
    assert!(
        receipt.results.is_empty(),
        "plain accepts need no result: {receipt:?}"
    );

    let mut registry = server.registry().await;
    // A short lease, so the "nothing more" pull below outlives it: if the ack
    // had not removed the records they would come back within that wait.
    let pulled = registry
        .pull(pull_request(10, 0, 2_000))
        .await
        .expect("pull")
        .into_inner();
    assert_eq!(pulled.records.len(), 2);
    let first = &pulled.records[0];
    assert_eq!(first.message_id, "m-1");
    assert_eq!(first.supplier_id, SUPPLIER_A);
    assert_eq!(first.batch_id, "day-1");
    assert_eq!(first.delivery_attempt, 1);
    assert!(first.sequence < pulled.records[1].sequence, "arrival order");
    assert_eq!(
        first.record.as_ref().map(|r| r.message_id.as_str()),
        Some("m-1")
    );
    assert_eq!(
        first
            .record
            .as_ref()
            .and_then(|r| r.patient.as_ref())
            .map(|p| p.bsn.as_str()),
        Some("249566758")
    );
    assert!(pulled.records[1]
        .record
        .as_ref()
        .is_some_and(|r| r.patient.is_none()));

    let tokens: Vec<String> = pulled
        .records
        .iter()
        .map(|r| r.lease_token.clone())
        .collect();
    let acked = registry
        .ack(AckRequest {
            lease_tokens: tokens.clone(),
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(
        answers(&acked.results),
        each(&pulled.records, TokenOutcome::Acked)
    );
    // Idempotent: a second ack of the same tokens says so.
    let again = registry
        .ack(AckRequest {
            lease_tokens: tokens,
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(
        answers(&again.results),
        each(&pulled.records, TokenOutcome::AlreadyAcked)
    );
    // Nothing more to deliver, even once the first lease has run out; a
    // long-poll that runs out answers empty, not an error.
    let empty = registry
        .pull(pull_request(10, 2_500, 30_000))
        .await
        .expect("pull")
        .into_inner();
    assert_eq!(empty.records, vec![]);
    // Garbage is unknown.
    let unknown = registry
        .ack(AckRequest {
            lease_tokens: vec!["nonsense".into()],
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(
        answers(&unknown.results),
        vec![("nonsense".to_owned(), TokenOutcome::UnknownToken as i32, 0)]
    );
}

#[tokio::test]
async fn resend_is_duplicate_and_not_delivered_twice() {
    let server = TestServer::start().await;
    let mut intake = server.intake(SUPPLIER_A).await;
    let first = intake
        .submit_batch(batch("b1", vec![record("m-1")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.accepted, 1);
    let resend = intake
        .submit_batch(batch("b1", vec![record("m-1")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resend.accepted, resend.duplicate, resend.rejected),
        (0, 1, 0)
    );
    assert_eq!(resend.results.len(), 1);
    assert_eq!(resend.results[0].status, RecordStatus::Duplicate as i32);
    assert_eq!(resend.results[0].message_id, "m-1");
    // The same message id from another supplier is a different record.
    let other = server
        .intake(SUPPLIER_B)
        .await
        .submit_batch(batch("b1", vec![record("m-1")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.accepted, 1);

    let mut registry = server.registry().await;
    // A short lease: the final pull outlives it (see below).
    let pulled = registry
        .pull(pull_request(100, 0, 2_000))
        .await
        .unwrap()
        .into_inner();
    let from_a = pulled
        .records
        .iter()
        .filter(|r| r.supplier_id == SUPPLIER_A)
        .count();
    assert_eq!(from_a, 1, "the resend is not queued again");
    assert_eq!(pulled.records.len(), 2);
    // Dedup memory outlives the ack.
    let tokens = pulled
        .records
        .iter()
        .map(|r| r.lease_token.clone())
        .collect();
    let acked = registry
        .ack(AckRequest {
            lease_tokens: tokens,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answers(&acked.results),
        each(&pulled.records, TokenOutcome::Acked)
    );
    let late = intake
        .submit_batch(batch("b2", vec![record("m-1")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((late.accepted, late.duplicate, late.rejected), (0, 1, 0));
    // Waits past the first lease: neither the acked records nor the late
    // resend come (back).
    let nothing = registry
        .pull(pull_request(100, 2_500, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nothing.records, vec![]);
}

#[tokio::test]
async fn changed_resend_is_conflicting_duplicate() {
    let server = TestServer::start().await;
    let mut intake = server.intake(SUPPLIER_A).await;
    intake
        .submit_batch(batch("b1", vec![record("m-1")]))
        .await
        .unwrap();
    let mut changed = record("m-1");
    changed.vaccination.as_mut().unwrap().lot_number = "OTHER-LOT".into();
    let receipt = intake
        .submit_batch(batch("b2", vec![changed]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (receipt.accepted, receipt.duplicate, receipt.rejected),
        (0, 0, 1)
    );
    assert_eq!(
        statuses(&receipt),
        vec![(
            0,
            RecordStatus::Rejected as i32,
            vec!["CONFLICTING_DUPLICATE".to_string()]
        )]
    );
    // A change comes as a CORRECT with a new id.
    let mut correction = record("m-1-fix");
    correction.action = Action::Correct as i32;
    correction.refers_to = "m-1".into();
    correction.vaccination.as_mut().unwrap().lot_number = "OTHER-LOT".into();
    let fixed = intake
        .submit_batch(batch("b3", vec![correction]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fixed.accepted, 1);
}

#[tokio::test]
async fn each_validation_code_rejects_its_record_and_good_records_pass() {
    let server = TestServer::start().await;
    let mut intake = server.intake(SUPPLIER_A).await;
    let mut bad_bsn = record("bad-bsn");
    bad_bsn.patient.as_mut().unwrap().bsn = "123456789".into();
    let mut short_bsn = record("short-bsn");
    short_bsn.patient.as_mut().unwrap().bsn = "12345".into();
    let mut long_name = record("long-name");
    long_name.patient.as_mut().unwrap().family_name = "é".repeat(51);
    let mut birth = record("birth");
    birth.patient.as_mut().unwrap().birth_date = "1950-13-01".into();
    let mut future = record("future");
    future.vaccination.as_mut().unwrap().date = "2999-01-01".into();
    let mut early = record("early");
    early.vaccination.as_mut().unwrap().date = "2020-12-01".into();
    let mut dose = record("dose");
    dose.vaccination.as_mut().unwrap().dose_number = 0;
    let mut product = record("product");
    product.vaccination.as_mut().unwrap().hpk_code = "9999999".into();
    product.vaccination.as_mut().unwrap().eu_product_number = String::new();
    let mut lot = record("lot");
    lot.vaccination.as_mut().unwrap().lot_number = "L".repeat(51);
    let mut country = record("country");
    country.vaccination.as_mut().unwrap().country = "XQ".into();
    let mut retract = record("retract");
    retract.action = Action::Retract as i32;
    let mut no_id = record("");
    no_id.message_id = String::new();
    let mut before_birth = record("before-birth");
    before_birth.patient.as_mut().unwrap().birth_date = "2021-06-01".into();
    let mut alpha3 = record("alpha3");
    alpha3.vaccination.as_mut().unwrap().country = "NLD".into();
    let mut booster = record("booster");
    booster.vaccination.as_mut().unwrap().dose_number = 3;
    let mut mismatch = record("mismatch");
    mismatch.vaccination.as_mut().unwrap().eu_product_number = "EU/1/20/1507".into();

    let records = vec![
        record("good-1"),
        bad_bsn,
        short_bsn,
        long_name,
        birth,
        future,
        early,
        dose,
        product,
        lot,
        country,
        retract,
        no_id,
        before_birth,
        alpha3,
        booster,
        mismatch,
        anonymous_record("good-2"),
    ];
    let receipt = intake
        .submit_batch(batch("mixed", records))
        .await
        .unwrap()
        .into_inner();
    let expect = |index: u32, code: &str, field: &str| {
        let r = receipt
            .results
            .iter()
            .find(|r| r.index == index)
            .unwrap_or_else(|| panic!("no result for {index}"));
        assert_eq!(r.status, RecordStatus::Rejected as i32, "index {index}");
        assert!(
            r.findings
                .iter()
                .any(|f| f.code == code && f.field == field),
            "index {index}: want {code} on {field}, got {:?}",
            r.findings
        );
    };
    expect(1, "BSN_CHECKSUM", "patient.bsn");
    expect(2, "BSN_FORMAT", "patient.bsn");
    expect(3, "NAME_TOO_LONG", "patient.family_name");
    expect(4, "BIRTH_DATE_FORMAT", "patient.birth_date");
    expect(5, "VACCINATION_DATE_IN_FUTURE", "vaccination.date");
    expect(6, "VACCINATION_DATE_BEFORE_CAMPAIGN", "vaccination.date");
    expect(7, "DOSE_OUT_OF_RANGE", "vaccination.dose_number");
    expect(8, "UNKNOWN_PRODUCT", "vaccination.hpk_code");
    expect(9, "LOT_NUMBER_TOO_LONG", "vaccination.lot_number");
    expect(10, "COUNTRY_UNKNOWN", "vaccination.country");
    expect(11, "REFERS_TO_MISSING", "refers_to");
    expect(12, "MISSING_FIELD", "message_id");
    expect(13, "VACCINATION_DATE_BEFORE_BIRTH", "vaccination.date");
    // Not rejected: an alpha-3 country, a booster (dose above total), and a
    // product mismatch (a warning).
    let warned = receipt
        .results
        .iter()
        .find(|r| r.index == 16)
        .expect("mismatch result");
    assert_eq!(warned.status, RecordStatus::Accepted as i32);
    assert_eq!(warned.findings[0].code, "PRODUCT_MISMATCH");
    assert_eq!(warned.findings[0].severity, Severity::Warning as i32);
    assert_eq!((receipt.accepted, receipt.rejected), (5, 13));
    assert!(receipt
        .results
        .iter()
        .all(|r| r.index != 0 && r.index != 14 && r.index != 15 && r.index != 17));
    // Rejected records leave no trace in the dedup memory: fixed, they come in.
    let fixed = intake
        .submit_batch(batch("fix", vec![record("bad-bsn")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fixed.accepted, 1);
    // The accepted alpha-3 record was normalised.
    let pulled = server
        .registry()
        .await
        .pull(pull_request(100, 0, 30_000))
        .await
        .unwrap()
        .into_inner();
    let alpha3 = pulled
        .records
        .iter()
        .find(|r| r.message_id == "alpha3")
        .expect("alpha3 delivered");
    assert_eq!(
        alpha3
            .record
            .as_ref()
            .unwrap()
            .vaccination
            .as_ref()
            .unwrap()
            .country,
        "NL"
    );
}

#[tokio::test]
async fn batch_level_problems_fail_the_call_with_a_code() {
    let server = TestServer::start().await;
    let mut intake = server.intake(SUPPLIER_A).await;
    let mut truncated = batch("short", vec![record("a"), record("b")]);
    truncated.header.as_mut().unwrap().record_count = 3;
    let status = intake.submit_batch(truncated).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(code_of(&status), "RECORD_COUNT_MISMATCH");

    let headless = Batch {
        header: None,
        records: vec![record("a")],
    };
    let status = intake.submit_batch(headless).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(code_of(&status), "HEADER_MISSING");

    // Nothing of the refused batches was queued.
    let pulled = server
        .registry()
        .await
        .pull(pull_request(10, 0, 1000))
        .await
        .unwrap()
        .into_inner();
    assert!(pulled.records.is_empty());
}

#[tokio::test]
async fn too_many_records_and_too_many_bytes_are_refused() {
    let server = TestServer::start_with(|c| {
        c.limits.max_records_per_batch = 5;
        c.limits.max_request_bytes = 64 * 1024;
    })
    .await;
    let mut intake = server.intake(SUPPLIER_A).await;
    let six = (0..6).map(|i| record(&format!("m-{i}"))).collect();
    let status = intake.submit_batch(batch("six", six)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(code_of(&status), "TOO_MANY_RECORDS");

    let mut huge = record("huge");
    huge.patient.as_mut().unwrap().family_name = "x".repeat(100 * 1024);
    let status = intake
        .submit_batch(batch("huge", vec![huge]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The server is still serving.
    let ok = intake
        .submit_batch(batch("ok", vec![record("fine")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.accepted, 1);
}

#[tokio::test]
async fn unregistered_certificate_is_unauthenticated() {
    let server = TestServer::start().await;
    let status = server
        .intake(STRANGER)
        .await
        .submit_batch(batch("b", vec![record("m")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(code_of(&status), "CERTIFICATE_NOT_REGISTERED");
}

#[tokio::test]
async fn wrong_role_is_permission_denied() {
    let server = TestServer::start().await;
    // A supplier cannot pull.
    let mut as_supplier =
        schakel::proto::registry_client::RegistryClient::new(server.channel(SUPPLIER_A).await);
    let status = as_supplier
        .pull(pull_request(1, 0, 1000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(code_of(&status), "WRONG_ROLE");
    // The registry cannot push.
    let status = server
        .intake(REGISTRY)
        .await
        .submit_batch(batch("b", vec![record("m")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(code_of(&status), "WRONG_ROLE");
    // The admin can do neither.
    let status = server
        .intake(ADMIN)
        .await
        .submit_batch(batch("b", vec![record("m")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn lease_expiry_redelivers_with_attempt_two_and_late_ack_is_refused() {
    let server = TestServer::start().await;
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m-1")]))
        .await
        .unwrap();
    let mut registry = server.registry().await;
    let first = registry
        .pull(pull_request(10, 0, 200))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.records.len(), 1);
    assert_eq!(first.records[0].delivery_attempt, 1);
    // The long-poll returns as soon as the lease runs out: no sleeping here.
    let second = registry
        .pull(pull_request(10, 10_000, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.records.len(), 1);
    assert_eq!(second.records[0].sequence, first.records[0].sequence);
    assert_eq!(second.records[0].delivery_attempt, 2);
    assert_ne!(second.records[0].lease_token, first.records[0].lease_token);
    // The expired token no longer acknowledges; the current one does.
    let late = registry
        .ack(AckRequest {
            lease_tokens: vec![first.records[0].lease_token.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answers(&late.results),
        each(&first.records, TokenOutcome::LeaseExpired)
    );
    let ok = registry
        .ack(AckRequest {
            lease_tokens: vec![second.records[0].lease_token.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answers(&ok.results),
        each(&second.records, TokenOutcome::Acked)
    );
}

#[tokio::test]
async fn release_gives_records_back_at_once() {
    let server = TestServer::start().await;
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m-1")]))
        .await
        .unwrap();
    let mut registry = server.registry().await;
    let first = registry
        .pull(pull_request(10, 0, 60_000))
        .await
        .unwrap()
        .into_inner();
    let token = first.records[0].lease_token.clone();
    let released = registry
        .release(ReleaseRequest {
            lease_tokens: vec![token.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answers(&released.results),
        each(&first.records, TokenOutcome::Released)
    );
    let again = registry
        .release(ReleaseRequest {
            lease_tokens: vec![token],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answers(&again.results),
        each(&first.records, TokenOutcome::AlreadyReleased)
    );
    let second = registry
        .pull(pull_request(10, 0, 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.records.len(), 1);
    assert_eq!(second.records[0].delivery_attempt, 2);
}

#[tokio::test]
async fn restart_keeps_queue_and_dedup_memory() {
    let mut server = TestServer::start().await;
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m-1"), record("m-2")]))
        .await
        .unwrap();
    {
        let mut registry = server.registry().await;
        let pulled = registry
            .pull(pull_request(1, 0, 60_000))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pulled.records.len(), 1);
        assert_eq!(pulled.records[0].message_id, "m-1");
        let acked = registry
            .ack(AckRequest {
                lease_tokens: vec![pulled.records[0].lease_token.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answers(&acked.results),
            each(&pulled.records, TokenOutcome::Acked)
        );
    }
    server.restart().await;
    let resend = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m-1"), record("m-2")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resend.accepted, resend.duplicate), (0, 2));
    let pulled = server
        .registry()
        .await
        .pull(pull_request(10, 0, 60_000))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = pulled
        .records
        .iter()
        .map(|r| r.message_id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec!["m-2"],
        "the acked record stays acked, the other is still queued"
    );
}

#[tokio::test]
async fn pii_without_consent_is_rejected_and_stored_nowhere() {
    let mut server = TestServer::start().await;
    // A BSN that passes the eleven test and a name that occurs nowhere else.
    let bsn = "111222333";
    let mut leaky = anonymous_record("leaky");
    leaky.patient = Some(Patient {
        bsn: bsn.into(),
        given_names: "Zebulon".into(),
        family_name: "Quixotewright".into(),
        ..Default::default()
    });
    let receipt = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("pii", vec![leaky, anonymous_record("clean")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((receipt.accepted, receipt.rejected), (1, 1));
    let result = &receipt.results[0];
    assert!(result
        .findings
        .iter()
        .any(|f| f.code == "PII_WITHOUT_CONSENT" && f.field == "patient.bsn"));
    let echoed = format!("{receipt:?}");
    assert!(
        !echoed.contains(bsn) && !echoed.contains("Quixotewright"),
        "the receipt echoes PII"
    );
    server.stop().await;
    for path in files_below(server.dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        for needle in [
            bsn.as_bytes(),
            b"Quixotewright".as_slice(),
            b"Zebulon".as_slice(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} contains personal data",
                path.display()
            );
        }
    }
}

/// Dedup judges "identical" after normalisation (README, Decisions): the same
/// record resent with the alpha-3 country `NLD` instead of `NL` and the BSN's
/// 8-digit form instead of its 9 digits with a leading zero is DUPLICATE, not
/// a conflict and not a second record.
#[tokio::test]
async fn a_resend_that_differs_only_before_normalisation_is_duplicate() {
    let server = TestServer::start().await;
    let mut intake = server.intake(SUPPLIER_A).await;
    let mut original = record("norm-1");
    original.patient.as_mut().unwrap().bsn = "010015838".into();
    original.vaccination.as_mut().unwrap().country = "NL".into();
    let first = intake
        .submit_batch(batch("b1", vec![original.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.accepted, first.duplicate, first.rejected), (1, 0, 0));
    let mut resend = original;
    resend.patient.as_mut().unwrap().bsn = "10015838".into();
    resend.vaccination.as_mut().unwrap().country = "NLD".into();
    let again = intake
        .submit_batch(batch("b2", vec![resend]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.accepted, again.duplicate, again.rejected),
        (0, 1, 0),
        "{again:?}"
    );
    assert_eq!(
        statuses(&again),
        vec![(0, RecordStatus::Duplicate as i32, vec![])]
    );
    let pulled = server
        .registry()
        .await
        .pull(pull_request(10, 0, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pulled.records.len(), 1, "one record, not two");
    let stored = pulled.records[0].record.as_ref().unwrap();
    assert_eq!(stored.patient.as_ref().unwrap().bsn, "010015838");
    assert_eq!(stored.vaccination.as_ref().unwrap().country, "NL");
}

/// README (Decisions): a record's message id is echoed in the receipt, except
/// when the id itself is malformed (it may hold anything, patient data too).
#[tokio::test]
async fn a_malformed_message_id_is_not_echoed() {
    let server = TestServer::start().await;
    let with_spaces = "BSN 249566758 Berg";
    let too_long = format!("Oostwoudsma-1944-07-29-{}", "x".repeat(60));
    let mut bad_bsn = record("echo-me");
    bad_bsn.patient.as_mut().unwrap().bsn = "123456789".into();
    let receipt = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch(
            "echo",
            vec![record(with_spaces), record(&too_long), bad_bsn],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (receipt.accepted, receipt.duplicate, receipt.rejected),
        (0, 0, 3)
    );
    type Seen<'a> = Vec<(u32, &'a str, Vec<(&'a str, &'a str)>)>;
    let seen: Seen = receipt
        .results
        .iter()
        .map(|r| {
            (
                r.index,
                r.message_id.as_str(),
                r.findings
                    .iter()
                    .map(|f| (f.field.as_str(), f.code.as_str()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, "", vec![("message_id", "INVALID_CHARACTERS")]),
            (1, "", vec![("message_id", "MESSAGE_ID_TOO_LONG")]),
            (2, "echo-me", vec![("patient.bsn", "BSN_CHECKSUM")]),
        ]
    );
    let text = format!("{receipt:?}");
    for needle in ["249566758", "Berg", "Oostwoudsma", "1944-07-29"] {
        assert!(!text.contains(needle), "{needle:?} echoed: {text}");
    }
}
