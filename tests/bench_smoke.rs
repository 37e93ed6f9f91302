//! The benchmark in smoke size: the real gateway and both baseline sinks as
//! child processes over real mTLS, so that `schakel bench` keeps working. Checks
//! the exactly-once verdict and the table's rows, never a timing.

use schakel::bench::{self, BenchOptions, ROWS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_pulls_every_accepted_record_exactly_once() {
    let options = BenchOptions::smoke(env!("CARGO_BIN_EXE_schakel").into());
    let report = bench::run(&options).await.expect("bench run");

    let check = &report.check;
    assert!(report.passed(), "{}", report.table());
    assert_eq!(check.missing, 0);
    assert_eq!(check.duplicates, 0);
    assert_eq!(check.unexpected, 0);
    assert_eq!(check.bad_acks, 0);
    // Full load and half load: every first send accepted, every record pulled.
    assert_eq!(report.gateway.records, options.records);
    assert_eq!(report.gateway.rejected, 0);
    assert_eq!(
        report.gateway.accepted + report.gateway.duplicate,
        options.records
    );
    assert!(report.gateway.duplicate > 0, "the load includes resends");
    let (_, half) = report.half_load.as_ref().expect("half-load phase ran");
    assert_eq!(check.accepted, report.gateway.accepted + half.accepted);
    assert_eq!(check.pulled, check.accepted);
    assert_eq!(report.drain.records, report.gateway.accepted);
    assert_eq!(
        report.null_sink.as_ref().expect("null sink ran").accepted,
        options.records
    );
    assert_eq!(
        report.fsync_sink.as_ref().expect("fsync sink ran").accepted,
        options.records
    );

    let table = report.table();
    for row in ROWS {
        assert!(
            table.contains(&format!("| {row} |")),
            "row {row:?} missing:\n{table}"
        );
    }
    assert!(table.contains("| PASS ("), "{table}");
    assert!(!table.contains("n/a"), "every figure measured:\n{table}");
    assert!(
        report.empty_store.is_none(),
        "no reference run without --scale"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_mode_drains_the_prefilled_queue_too() {
    let options = BenchOptions {
        records: 1_000,
        batch: 200,
        scale: 3_000,
        baselines: false,
        half_load: false,
        ..BenchOptions::smoke(env!("CARGO_BIN_EXE_schakel").into())
    };
    let report = bench::run(&options).await.expect("bench run");
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.check.prefill_expected, 3_000);
    assert_eq!(report.check.prefill_pulled, 3_000);
    assert_eq!(report.drain.records, 3_000 + report.gateway.accepted);
    assert_eq!(
        report.stored_records,
        3_000 + report.gateway.accepted as u64
    );
    // The empty-store reference ran the same load in the same run, and its
    // records are in the exactly-once check too.
    let (empty_push, empty_drain) = report.empty_store.as_ref().expect("reference ran");
    assert_eq!(empty_push.accepted, report.gateway.accepted);
    assert_eq!(empty_drain.records, empty_push.accepted);
    assert_eq!(report.check.accepted, 2 * report.gateway.accepted);
    assert_eq!(report.check.pulled, report.check.accepted);
    let table = report.table();
    assert!(table.contains("prefilled dedup entries 3000"), "{table}");
    assert!(
        table.contains("| scale: empty store ingest / drain (rec/s), prefilled as % of it | "),
        "{table}"
    );
    assert!(!table.contains("prefilled as % of it | not run"), "{table}");
    assert!(table.contains("| baseline null sink (rec/s), gateway as % of it | not run |"));
}
