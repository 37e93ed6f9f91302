//! The supplier and registry tools end to end: the built `schakel` binary
//! (`push`, `validate`, `pull`) against a real gateway over real mTLS with a
//! real sled store.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use rand::Rng;
use schakel::proto::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_schakel");
const EXAMPLE: &str = include_str!("../examples/export-2021-03-04.csv");

/// `--server --ca --cert --key` for harness identity `name`.
fn connect_args(server: &TestServer, name: &str) -> Vec<String> {
    let files = server.files(name);
    let (cert, key) = files.identity.expect("identity");
    vec![
        "--server".into(),
        server.url(),
        "--ca".into(),
        files.ca.display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn schakel(args: &[String]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running schakel");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write input");
    path
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("report is JSON")
}

/// Every patient value (bsn, given names, infix, family name, birth date) of a
/// `;`-separated export with a header line, as written; values shorter than
/// four characters (an infix such as "de") are left out, they occur in
/// ordinary words. A quoted value loses its quotes.
fn patient_values(export: &str) -> BTreeSet<String> {
    let mut lines = export.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    let columns: Vec<usize> = ["bsn", "given_names", "infix", "family_name", "birth_date"]
        .iter()
        .map(|c| header.iter().position(|h| h == c).expect("column"))
        .collect();
    let mut out = BTreeSet::new();
    for line in lines {
        // Split on ';' outside double quotes.
        let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                ';' if !quoted => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        for &c in &columns {
            if let Some(v) = fields.get(c).filter(|v| v.chars().count() >= 4) {
                out.insert(v.clone());
                // The parts of a multi-part value too ("Zoë; Anne").
                out.extend(
                    v.split([';', ' '])
                        .map(str::trim)
                        .filter(|p| p.chars().count() >= 4)
                        .map(str::to_owned),
                );
            }
        }
    }
    out
}

/// (line, message_id, status, field, code) of every report entry.
fn entries(report: &Value) -> Vec<(u64, String, String, String, String)> {
    report["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().expect("line"),
                e["message_id"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_str().unwrap_or_default().to_owned(),
                e["field"].as_str().unwrap_or_default().to_owned(),
                e["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Pulls and acks everything queued; returns the delivered records.
async fn drain(server: &TestServer) -> Vec<DeliveredRecord> {
    let mut registry = server.registry().await;
    let mut all = Vec::new();
    loop {
        let got = registry
            .pull(pull_request(5000, 0, 60_000))
            .await
            .expect("pull")
            .into_inner()
            .records;
        if got.is_empty() {
            return all;
        }
        let tokens = got.iter().map(|r| r.lease_token.clone()).collect();
        let acked = registry
            .ack(AckRequest {
                lease_tokens: tokens,
            })
            .await
            .expect("ack")
            .into_inner();
        // Every token answered, in order, ACKED: an ack that did nothing
        // would otherwise look like a drained queue (the lease is still live).
        assert_eq!(
            acked
                .results
                .iter()
                .map(|r| (r.lease_token.as_str(), r.outcome, r.sequence))
                .collect::<Vec<_>>(),
            got.iter()
                .map(|r| (
                    r.lease_token.as_str(),
                    TokenOutcome::Acked as i32,
                    r.sequence
                ))
                .collect::<Vec<_>>()
        );
        all.extend(got);
    }
}

fn tuple(
    line: u64,
    id: &str,
    status: &str,
    field: &str,
    code: &str,
) -> (u64, String, String, String, String) {
    (line, id.into(), status.into(), field.into(), code.into())
}

#[tokio::test(flavor = "multi_thread")]
async fn push_of_a_csv_with_good_duplicate_and_bad_rows_exits_2_with_summary_and_report() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "export-2021-03-04.csv", EXAMPLE);
    let mut args = strings(&[
        "push",
        input.to_str().unwrap(),
        "--batch-size",
        "3",
        "--source-system",
        "Example HIS 4.2",
    ]);
    args.extend(connect_args(&server, SUPPLIER_A));

    let run = schakel(&args).await;
    assert_eq!(
        run.code, 2,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains(
            "accepted 3, duplicate 1, rejected 4 (BSN_CHECKSUM 1, INVALID_VALUE 1, PII_WITHOUT_CONSENT 1, REFERS_TO_MISSING 1)"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Re-running the same files is safe"),
        "{}",
        run.stdout
    );

    let report = read_json(&dir.path().join("export-2021-03-04.csv.errors.json"));
    assert_eq!(
        entries(&report),
        vec![
            tuple(4, "EX-0001", "DUPLICATE", "message_id", "DUPLICATE"),
            tuple(5, "EX-0003", "REJECTED", "patient.bsn", "BSN_CHECKSUM"),
            tuple(
                6,
                "EX-0004",
                "REJECTED",
                "patient.bsn",
                "PII_WITHOUT_CONSENT"
            ),
            tuple(7, "EX-0005", "REJECTED", "refers_to", "REFERS_TO_MISSING"),
            tuple(8, "EX-0006", "REJECTED", "dose_number", "INVALID_VALUE"),
        ]
    );
    assert_eq!(report["summary"]["accepted"], 3);
    assert_eq!(report["summary"]["duplicate"], 1);
    assert_eq!(report["summary"]["rejected"], 4);
    // Line 5 went in the second batch of three (lines 5, 6, 7): its header is complete.
    let bsn = &report["entries"][1];
    assert_eq!(bsn["file_name"], "export-2021-03-04.csv");
    assert!(bsn["batch_id"]
        .as_str()
        .unwrap()
        .starts_with("export-2021-03-04-"));
    assert!(bsn["batch_id"].as_str().unwrap().ends_with("-0002"));
    assert_eq!(bsn["source_system"], "Example HIS 4.2");
    assert_eq!(bsn["record_count"], 3);
    assert!(!bsn["created_at"].as_str().unwrap().is_empty());
    assert!(!bsn["received_at"].as_str().unwrap().is_empty());
    assert!(!bsn["message"].as_str().unwrap().is_empty());
    let csv = std::fs::read_to_string(dir.path().join("export-2021-03-04.csv.errors.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert!(csv
        .lines()
        .nth(2)
        .unwrap()
        .contains(",5,EX-0003,REJECTED,patient.bsn,BSN_CHECKSUM,"));
    // No patient value of any row (accepted, duplicate or rejected) is in
    // either report file: every BSN, name and birth date of the input.
    let report_files = [
        std::fs::read_to_string(dir.path().join("export-2021-03-04.csv.errors.json")).unwrap(),
        csv.clone(),
    ];
    let patient_values = patient_values(EXAMPLE);
    assert!(patient_values.len() >= 10, "{patient_values:?}");
    for value in &patient_values {
        for text in &report_files {
            assert!(
                !text.contains(value.as_str()),
                "{value:?} in a report: {text}"
            );
        }
    }

    let queued: BTreeSet<String> = drain(&server)
        .await
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!(
        queued,
        BTreeSet::from(["EX-0001".into(), "EX-0002".into(), "EX-0007".into()])
    );

    // The same file again: nothing new, the same batch ids, the same exit code.
    let again = schakel(&args).await;
    assert_eq!(again.code, 2);
    assert!(
        again.stdout.contains("accepted 0, duplicate 4, rejected 4"),
        "{}",
        again.stdout
    );
    let report2 = read_json(&dir.path().join("export-2021-03-04.csv.errors.json"));
    let line5 = |r: &Value| {
        r["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["line"] == 5)
            .map(|e| e["batch_id"].clone())
    };
    assert_eq!(line5(&report2), line5(&report));
    assert!(drain(&server).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_without_message_id_is_refused_with_exit_1_and_the_reason() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "bad.csv", "consent;bsn\nGIVEN;249566758\n");
    let mut args = strings(&["push", input.to_str().unwrap()]);
    args.extend(connect_args(&server, SUPPLIER_A));
    let run = schakel(&args).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("no message_id column"),
        "{}",
        run.stderr
    );
    let run = schakel(&strings(&["validate", input.to_str().unwrap()])).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("no message_id column"),
        "{}",
        run.stderr
    );
    assert!(drain(&server).await.is_empty());
}

/// The example plus rows for most rules, a conflicting resend, a rejected id
/// sent again correctly, warnings and a malformed id.
fn rich_csv() -> String {
    const GOOD: &str = "ID;REGISTER;;GIVEN;249566758;Jan;van der;Berg;1950-04-12;;2924528;EU/1/20/1528;2021-03-04;1;2;EW2243;NL;01234567;AGB;GP;false";
    let row = |id: &str, from: &str, to: &str| {
        let r = GOOD.replace("ID;", &format!("{id};"));
        assert!(r.contains(from), "{from}");
        r.replacen(from, to, 1)
    };
    let mut text = EXAMPLE.to_owned();
    for r in [
        row("EX-0001", "EW2243", "OTHERLOT"),    // conflicting duplicate
        row("R-01", "2021-03-04", "2099-01-01"), // future
        row("R-02", "2021-03-04", "2020-12-01"), // before the campaign
        row("R-03", "2924528", "9999999"),       // unknown product
        row("R-04", "01234567", "123"),          // organisation id
        row("R-05", ";NL;", ";XX;"),             // country
        row("R-06", "EU/1/20/1528", "EU/1/20/1507"), // product mismatch: a warning only
        row("R 07", "EW2243", "EW2243"),         // malformed id
        row("R-08", "REGISTER;;", "CORRECT;EX-0001;"), // a correction
        row(
            "R-09",
            "GIVEN;249566758;Jan;van der;Berg;1950-04-12;",
            "NOT_GIVEN;;;;;;",
        ), // no age band
        row("R-10", "249566758", "123456789"),   // rejected ...
        row("R-10", "EW2243", "EW2243"),         // ... then sent right
        row("R-11", ";1;2;", ";0;2;"),           // dose
        row("R-12", "1950-04-12", "1950-13-01"), // birth date
        row("R-13", "EW2243", ""),               // no lot
    ] {
        text.push_str(&r);
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_agrees_with_the_server_on_every_row() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "rich.csv", &rich_csv());
    let offline_prefix = dir.path().join("offline");
    let online_prefix = dir.path().join("online");

    // validate needs no server and no certificates.
    let offline = schakel(&strings(&[
        "validate",
        input.to_str().unwrap(),
        "--batch-size",
        "4",
        "--report",
        offline_prefix.to_str().unwrap(),
    ]))
    .await;
    let mut args = strings(&[
        "push",
        input.to_str().unwrap(),
        "--batch-size",
        "4",
        "--report",
        online_prefix.to_str().unwrap(),
    ]);
    args.extend(connect_args(&server, SUPPLIER_A));
    let online = schakel(&args).await;
    assert_eq!(online.code, 2, "{}\n{}", online.stdout, online.stderr);
    assert_eq!(
        offline.code, online.code,
        "{}\n{}",
        offline.stdout, offline.stderr
    );

    let off = read_json(&dir.path().join("offline.errors.json"));
    let on = read_json(&dir.path().join("online.errors.json"));
    assert_eq!(entries(&off), entries(&on));
    assert_eq!(off["summary"], on["summary"]);
    let codes: BTreeSet<String> = entries(&on).into_iter().map(|e| e.4).collect();
    for code in [
        "CONFLICTING_DUPLICATE",
        "VACCINATION_DATE_IN_FUTURE",
        "VACCINATION_DATE_BEFORE_CAMPAIGN",
        "UNKNOWN_PRODUCT",
        "ORGANIZATION_ID_FORMAT",
        "COUNTRY_UNKNOWN",
        "INVALID_CHARACTERS",
        "AGE_BAND_MISSING",
        "BSN_CHECKSUM",
        "DOSE_OUT_OF_RANGE",
        "BIRTH_DATE_FORMAT",
        "MISSING_FIELD",
        "DUPLICATE",
    ] {
        assert!(codes.contains(code), "{code} not exercised: {codes:?}");
    }
    // The same deterministic batch ids on both sides.
    let batch_ids = |v: &Value| -> BTreeSet<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["batch_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(batch_ids(&off), batch_ids(&on));
    // The accepted ones are exactly the ones the registry gets.
    let accepted = on["summary"]["accepted"].as_u64().unwrap();
    assert_eq!(drain(&server).await.len() as u64, accepted);
}

fn ndjson_records(prefix: &str, n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        let r = if i % 3 == 0 {
            anonymous_record(&format!("{prefix}-{i:05}"))
        } else {
            record(&format!("{prefix}-{i:05}"))
        };
        text.push_str(&serde_json::to_string(&r).unwrap());
        text.push('\n');
    }
    text
}

/// Starts `schakel` with `args` and waits until it reports a finished batch.
async fn push_until_a_batch_is_done(args: &[String]) -> tokio::process::Child {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("a progress line before the end");
        if line.contains("batch") && line.contains("done") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_push_rerun_adds_nothing_twice() {
    const N: usize = 6000;
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "big.ndjson", &ndjson_records("P", N));
    let mut args = strings(&[
        "push",
        input.to_str().unwrap(),
        "--batch-size",
        "10",
        "--in-flight",
        "1",
    ]);
    args.extend(connect_args(&server, SUPPLIER_A));

    // 1: SIGTERM: it finishes the batch under way, writes the report, says so.
    let child = push_until_a_batch_is_done(&args).await;
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("push stops after SIGTERM")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("The run did not complete. Re-running the same files is safe"),
        "{stdout}"
    );
    let first = read_json(&dir.path().join("big.ndjson.errors.json"));
    let sent_first = first["summary"]["accepted"].as_u64().unwrap();
    assert!((10..N as u64).contains(&sent_first), "{sent_first}");

    // 2: SIGKILL: no report, no goodbye.
    let mut child = push_until_a_batch_is_done(&args).await;
    child.kill().await.unwrap();

    // 3: to the end.
    let run = schakel(&args).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("Re-running the same files is safe"));
    let report = read_json(&dir.path().join("big.ndjson.errors.json"));
    let (acc, dup) = (
        report["summary"]["accepted"].as_u64().unwrap(),
        report["summary"]["duplicate"].as_u64().unwrap(),
    );
    assert_eq!(acc + dup, N as u64);
    // What the first run accepted comes back DUPLICATE (the killed run may add more).
    assert!(
        dup >= sent_first,
        "duplicates {dup} < first run's {sent_first}"
    );
    assert_eq!(report["summary"]["rejected"], 0);

    let delivered = drain(&server).await;
    let ids: HashSet<&str> = delivered.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(delivered.len(), N, "every record queued exactly once");
    assert_eq!(ids.len(), N);
}

/// Message ids and sequences in a pull output file; panics on a line that is
/// not complete JSON.
fn output_contents(path: &Path) -> (Vec<String>, Vec<u64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ids = Vec::new();
    let mut seqs = Vec::new();
    for line in text.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
        ids.push(v["message_id"].as_str().unwrap().to_owned());
        seqs.push(v["sequence"].as_u64().unwrap());
    }
    (ids, seqs)
}

async fn push_records(server: &TestServer, records: Vec<VaccinationRecord>) {
    let mut intake = server.intake(SUPPLIER_A).await;
    for (i, chunk) in records.chunks(500).enumerate() {
        let receipt = intake
            .submit_batch(batch(&format!("b-{i}"), chunk.to_vec()))
            .await
            .expect("submit")
            .into_inner();
        assert_eq!(receipt.accepted as usize, chunk.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_pull_rerun_writes_every_record_exactly_once() {
    const N: usize = 1200;
    let server = TestServer::start().await;
    let records: Vec<_> = (0..N).map(|i| record(&format!("Q-{i:05}"))).collect();
    push_records(&server, records).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("registry.ndjson");
    let mut pull_args = strings(&[
        "pull",
        "--out",
        out.to_str().unwrap(),
        "--max",
        "20",
        "--lease-ms",
        "1000",
        "--wait-ms",
        "200",
    ]);
    pull_args.extend(connect_args(&server, REGISTRY));

    let mut rng = rand::rng();
    for round in 0..5 {
        let before = output_contents(&out).0.len();
        let target = before + rng.random_range(1..150);
        let mut args = pull_args.clone();
        args.push("--follow".into());
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Bounded polling until the file has grown to the target (or 20 s).
        for _ in 0..2000 {
            let len = std::fs::read_to_string(&out)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if len >= target.min(N) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if round % 2 == 0 {
            child.kill().await.unwrap(); // SIGKILL: may leave a torn line
        } else {
            let pid = child.id().unwrap().to_string();
            let status = Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .await
                .unwrap();
            assert!(status.success());
            let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .expect("pull stops after SIGTERM")
                .unwrap();
            assert!(exit.success(), "a SIGTERM stop is a clean exit: {exit:?}");
        }
        // What is in the file is never duplicated, even between rounds.
        let (_, seqs) = output_contents_tolerant(&out);
        eprintln!("round {round}: {} records in the output", seqs.len());
        assert_eq!(
            seqs.iter().collect::<HashSet<_>>().len(),
            seqs.len(),
            "round {round}"
        );
    }

    // The final run drains everything (leases of killed runs expire after 1 s).
    let final_args: Vec<String> = {
        let mut a = pull_args.clone();
        let i = a.iter().position(|s| s == "--wait-ms").unwrap();
        a[i + 1] = "3000".into();
        a
    };
    let run = schakel(&final_args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (ids, seqs) = output_contents(&out);
    assert_eq!(ids.len(), N, "every record exactly once");
    let unique_ids: BTreeSet<&String> = ids.iter().collect();
    let expected: Vec<String> = (0..N).map(|i| format!("Q-{i:05}")).collect();
    assert_eq!(unique_ids, expected.iter().collect::<BTreeSet<_>>());
    assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), N);
    // And the gateway has nothing left for the registry.
    let mut registry = server.registry().await;
    let left = registry
        .pull(pull_request(100, 0, 1000))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(left.is_empty());
}

/// Like [`output_contents`], but ignores a torn last line (a killed run's).
fn output_contents_tolerant(path: &Path) -> (Vec<String>, Vec<u64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let mut ids = Vec::new();
    let mut seqs = Vec::new();
    for line in text[..complete].lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
        ids.push(v["message_id"].as_str().unwrap().to_owned());
        seqs.push(v["sequence"].as_u64().unwrap());
    }
    (ids, seqs)
}

#[tokio::test(flavor = "multi_thread")]
async fn fhir_output_parses_and_has_the_fields() {
    let server = TestServer::start().await;
    let mut retract = record("F-3");
    retract.action = Action::Retract as i32;
    retract.refers_to = "F-1".into();
    retract.performer.as_mut().unwrap().id_type = OrganizationIdType::Ura as i32;
    push_records(
        &server,
        vec![record("F-1"), anonymous_record("F-2"), retract],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fhir.ndjson");
    let mut args = strings(&[
        "pull",
        "--format",
        "fhir",
        "--out",
        out.to_str().unwrap(),
        "--wait-ms",
        "0",
    ]);
    args.extend(connect_args(&server, REGISTRY));
    let run = schakel(&args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    let text = std::fs::read_to_string(&out).unwrap();
    let resources: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(resources.len(), 3);
    let by_id = |id: &str| {
        resources
            .iter()
            .find(|r| r["identifier"][0]["value"] == id)
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    let given = by_id("F-1");
    assert_eq!(given["resourceType"], "Immunization");
    assert_eq!(given["status"], "completed");
    assert_eq!(
        given["patient"]["identifier"]["system"],
        "http://fhir.nl/fhir/NamingSystem/bsn"
    );
    assert_eq!(given["patient"]["identifier"]["value"], "249566758");
    let codings = given["vaccineCode"]["coding"].as_array().unwrap();
    assert!(codings
        .iter()
        .any(|c| c["system"] == "urn:oid:2.16.840.1.113883.2.4.4.7" && c["code"] == "2924528"));
    assert!(codings
        .iter()
        .any(|c| c["system"] == "http://snomed.info/sct" && c["code"] == "1119349007"));
    assert_eq!(given["occurrenceDateTime"], "2021-03-04");
    assert_eq!(given["lotNumber"], "EW2243");
    assert_eq!(
        given["performer"][0]["actor"]["identifier"]["value"],
        "01234567"
    );
    assert_eq!(
        given["performer"][0]["actor"]["identifier"]["system"],
        "http://fhir.nl/fhir/NamingSystem/agb-z"
    );
    let applied = &given["protocolApplied"][0];
    assert_eq!(
        applied["targetDisease"][0]["coding"][0]["code"],
        "840539006"
    );
    assert_eq!(applied["doseNumberPositiveInt"], 1);
    assert_eq!(applied["seriesDosesPositiveInt"], 2);

    let anonymous = by_id("F-2");
    assert!(
        anonymous["patient"].get("identifier").is_none(),
        "{anonymous}"
    );
    assert!(anonymous.get("contained").is_none());
    assert!(!anonymous.to_string().contains("249566758"));
    assert!(!anonymous
        .to_string()
        .contains("fhir.nl/fhir/NamingSystem/bsn"));

    let retracted = by_id("F-3");
    assert_eq!(retracted["status"], "entered-in-error");
    assert_eq!(
        retracted["performer"][0]["actor"]["identifier"]["system"],
        "http://fhir.nl/fhir/NamingSystem/ura"
    );

    // Acknowledged: a second run writes nothing and keeps the file as it was.
    let again = schakel(&args).await;
    assert_eq!(again.code, 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_written_but_not_acknowledged_are_acked_without_writing_again() {
    let server = TestServer::start().await;
    push_records(
        &server,
        (0..10).map(|i| record(&format!("W-{i}"))).collect(),
    )
    .await;
    // A run that wrote five records, crashed before its ack, and tore a sixth line.
    let mut registry = server.registry().await;
    let leased = registry
        .pull(pull_request(10, 0, 300))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(leased.len(), 10);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let mut text = String::new();
    for r in &leased[..5] {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    text.push_str(&serde_json::to_string(&leased[5]).unwrap()[..20]);
    std::fs::write(&out, &text).unwrap();

    // The new run gets all ten again once the leases run out.
    let mut args = strings(&["pull", "--out", out.to_str().unwrap(), "--wait-ms", "2000"]);
    args.extend(connect_args(&server, REGISTRY));
    let run = schakel(&args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("cutting off a torn last line"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("already in the output 5"),
        "{}",
        run.stderr
    );
    let (ids, seqs) = output_contents(&out);
    assert_eq!(ids.len(), 10);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10);
    assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), 10);
    // All ten were acknowledged: nothing comes back.
    let left = registry
        .pull(pull_request(100, 500, 1000))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(left.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn push_retries_while_the_gateway_is_unavailable() {
    // The harness's config (PKI, identities), served later on a port we choose.
    let mut server = TestServer::start().await;
    server.stop().await;
    // The port is ours from here on: bound but not listening, so a connection
    // is refused (the gateway is down) and no other process can take it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "later.ndjson", &ndjson_records("L", 20));
    let mut args = strings(&["push", input.to_str().unwrap(), "--attempts", "30"]);
    args.extend(connect_args(&server, SUPPLIER_A));
    let i = args.iter().position(|a| a == "--server").unwrap();
    args[i + 1] = format!("https://localhost:{port}");
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next_line().await.unwrap().expect("a retry line");
        if line.contains("Unavailable") && line.contains("retrying") {
            break;
        }
    }
    // Now the gateway comes up on that port (and no operations port: the
    // config's default is the fixed 9464).
    let listener = socket.listen(1024).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(schakel::server::run_with_http(
        server.config.clone(),
        listener,
        None,
        async {
            let _ = rx.await;
        },
    ));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("push finishes once the gateway is up")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("accepted 20, duplicate 0, rejected 0"),
        "{stdout}"
    );
    let _ = tx.send(());
    serving.await.unwrap().unwrap();
}
