//! Tests of the record log: on real files in a temp dir and on `SimFs`,
//! including the seeded power-cut property test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::sim::{FaultOn, SimFs, EIO, ENOSPC};
use super::*;

fn payload(i: u64) -> Vec<u8> {
    // Sizes 0..=299, content derived from the index.
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn small(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        max_payload: 4096,
        ..LogOptions::default()
    }
}

fn sim_dir() -> PathBuf {
    PathBuf::from("/sim/log")
}

fn read_all(log: &mut RecordLog, from: u64) -> Vec<(u64, Vec<u8>)> {
    log.iter_from(from)
        .collect::<Result<Vec<_>, _>>()
        .expect("iterate")
}

/// Appends `n` records (payload(i) for the sequence i) and syncs.
fn fill(log: &mut RecordLog, n: u64) {
    for _ in 0..n {
        let seq = log.next_seq();
        assert_eq!(log.append(&payload(seq)).expect("append"), seq);
    }
    log.sync().expect("sync");
}

fn assert_all(log: &mut RecordLog, from: u64, to: u64) {
    for seq in from..to {
        assert_eq!(
            log.read(seq).expect("read"),
            Some(payload(seq)),
            "seq {seq}"
        );
    }
    let all = read_all(log, from);
    assert_eq!(all.len() as u64, to - from);
    for (seq, p) in all {
        assert_eq!(p, payload(seq), "iterated seq {seq}");
    }
}

fn round_trip(fs: Arc<dyn LogFs>, dir: &Path) {
    let mut log = RecordLog::open(Arc::clone(&fs), dir, small(1 << 20)).expect("open");
    assert_eq!((log.first_seq(), log.next_seq()), (1, 1));
    let seq = log.append(b"first").expect("append");
    assert_eq!(seq, 1);
    assert_eq!(log.read(1).expect("read"), None, "not durable before sync");
    assert!(read_all(&mut log, 1).is_empty());
    log.sync().expect("sync");
    assert_eq!(log.read(1).expect("read"), Some(b"first".to_vec()));
    assert_eq!(log.read(2).expect("read"), None);
    assert_eq!(log.read(0).expect("read"), None);
    // An empty payload, a large one, then many in one round.
    log.append(b"").expect("append");
    log.append(&vec![7u8; 4096]).expect("append");
    fill(&mut log, 200);
    assert_eq!(log.read(2).expect("read"), Some(Vec::new()));
    assert_eq!(log.read(3).expect("read"), Some(vec![7u8; 4096]));
    assert_all(&mut log, 4, 204);
    drop(log);

    let mut log = RecordLog::open(fs, dir, small(1 << 20)).expect("reopen");
    assert_eq!(log.recovery().tail_cut, None);
    assert_eq!(log.recovery().frames_scanned, 203);
    assert_eq!((log.first_seq(), log.next_seq()), (1, 204));
    assert_eq!(log.read(1).expect("read"), Some(b"first".to_vec()));
    assert_all(&mut log, 4, 204);
    fill(&mut log, 10);
    assert_all(&mut log, 4, 214);
}

#[test]
fn round_trip_and_reopen_on_real_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    round_trip(Arc::new(StdFs), &tmp.path().join("log"));
}

#[test]
fn round_trip_and_reopen_on_simfs() {
    round_trip(Arc::new(SimFs::new(1)), &sim_dir());
}

fn roll_and_delete(fs: Arc<dyn LogFs>, dir: &Path) {
    // ~16 frames of up to 316 bytes per 4 KiB segment.
    let opts = small(4096);
    let mut log = RecordLog::open(Arc::clone(&fs), dir, opts.clone()).expect("open");
    // More than INDEX_EVERY frames per round and several rounds.
    for _ in 0..5 {
        fill(&mut log, 300);
    }
    let segments = log.segment_count();
    assert!(segments > 50, "rolled into {segments} segments");
    // Every segment respects the limit (each holds at least one frame).
    let names: Vec<u64> = log
        .segment_paths()
        .iter()
        .map(|p| {
            frame::parse_segment_name(&p.file_name().unwrap().to_string_lossy()).expect("name")
        })
        .collect();
    assert_eq!(names[0], 1);
    assert!(names.windows(2).all(|w| w[0] < w[1]));
    assert_all(&mut log, 1, 1501);
    drop(log);

    let mut log = RecordLog::open(Arc::clone(&fs), dir, opts.clone()).expect("reopen");
    assert_eq!(log.segment_count(), segments);
    assert!(
        log.recovery().frames_scanned < 20,
        "open reads the last segment only"
    );
    // Reads across every segment (lazy scans) and from the middle.
    assert_all(&mut log, 1, 1501);
    let tail = read_all(&mut log, 777);
    assert_eq!(tail.first().map(|r| r.0), Some(777));
    assert_eq!(tail.len(), 1501 - 777);

    // Delete: only whole segments below the sequence go.
    let second = names[1];
    assert_eq!(log.delete_below(second - 1).expect("delete"), 0);
    assert_eq!(log.delete_below(second).expect("delete"), 1);
    assert_eq!(log.first_seq(), second);
    assert_eq!(log.read(second - 1).expect("read"), None);
    let removed = log.delete_below(1000).expect("delete");
    assert!(removed > 10);
    let first = log.first_seq();
    assert!(first <= 1000 && first > second, "first {first}");
    assert_all(&mut log, first, 1501);
    assert_eq!(read_all(&mut log, 1).first().map(|r| r.0), Some(first));
    // The active segment is never deleted.
    log.delete_below(u64::MAX).expect("delete");
    assert_eq!(log.segment_count(), 1);
    let last = log.first_seq();
    assert_all(&mut log, last, 1501);
    drop(log);

    let mut log = RecordLog::open(fs, dir, opts).expect("reopen after delete");
    assert_eq!((log.first_seq(), log.next_seq()), (last, 1501));
    fill(&mut log, 100);
    assert_all(&mut log, last, 1601);
}

#[test]
fn roll_read_and_delete_on_real_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    roll_and_delete(Arc::new(StdFs), &dir);
    // Exactly the segment files are left (no stray files).
    let report = check(&StdFs, &dir, 4096).expect("check");
    assert_eq!(report.first_problem, None);
    assert_eq!(report.segments, std::fs::read_dir(&dir).unwrap().count());
}

#[test]
fn roll_read_and_delete_on_simfs() {
    roll_and_delete(Arc::new(SimFs::new(2)), &sim_dir());
}

#[test]
fn a_torn_tail_is_cut_off_and_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let mut log = RecordLog::open_std(&dir, small(1 << 20)).expect("open");
    fill(&mut log, 50);
    let path = log.segment_paths()[0].clone();
    drop(log);
    let good_len = std::fs::metadata(&path).unwrap().len();
    // A torn write: the first 100 bytes of a 316-byte frame for seq 51.
    let mut frame = Vec::new();
    frame::encode_frame(&mut frame, 51, &[9u8; 300]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&frame[..100]);
    std::fs::write(&path, &bytes).unwrap();

    let report = check(&StdFs, &dir, 4096).expect("check");
    let problem = report.first_problem.expect("check sees the torn tail");
    assert_eq!((problem.offset, problem.at_tail), (good_len, true));
    assert_eq!(problem.file, path);
    assert_eq!(report.records, 50);

    let mut log = RecordLog::open_std(&dir, small(1 << 20)).expect("reopen");
    assert_eq!(
        log.recovery().tail_cut,
        Some(TailCut {
            file: path.clone(),
            offset: good_len,
            bytes: 100,
            what: "frame truncated: 100 of 316 bytes".into(),
        })
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    assert_eq!(log.next_seq(), 51);
    assert_all(&mut log, 1, 51);
    fill(&mut log, 5);
    assert_all(&mut log, 1, 56);
    drop(log);
    assert_eq!(check(&StdFs, &dir, 4096).unwrap().first_problem, None);

    // Garbage after the last frame (a torn write of zeros and noise).
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len() as u64;
    bytes.extend_from_slice(&[0u8; 40]);
    bytes.extend_from_slice(&[0xabu8; 13]);
    std::fs::write(&path, &bytes).unwrap();
    let log = RecordLog::open_std(&dir, small(1 << 20)).expect("reopen");
    let cut = log.recovery().tail_cut.clone().expect("cut");
    assert_eq!((cut.offset, cut.bytes), (len, 53));
    assert_eq!(cut.what, "frame checksum mismatch");
}

#[test]
fn corruption_before_the_tail_is_an_error_naming_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let mut log = RecordLog::open_std(&dir, small(4096)).expect("open");
    fill(&mut log, 200);
    let paths = log.segment_paths();
    assert!(paths.len() > 3);
    drop(log);

    // Flip one payload byte of the third frame of the first segment.
    let first = &paths[0];
    let third_at = HEADER_LEN
        + (1..=2)
            .map(|s| (FRAME_HEADER_LEN + payload(s).len()) as u64)
            .sum::<u64>();
    let mut bytes = std::fs::read(first).unwrap();
    bytes[(third_at + FRAME_HEADER_LEN as u64 + 2) as usize] ^= 1;
    std::fs::write(first, &bytes).unwrap();

    // Open reads headers only: it succeeds; the read of that record fails
    // with the file and offset, and so does iterating over it.
    let mut log = RecordLog::open_std(&dir, small(4096)).expect("open");
    assert_eq!(log.recovery().tail_cut, None);
    let err = log.read(3).expect_err("corrupt record");
    match &err {
        LogError::Corrupt { file, offset, what } => {
            assert_eq!((file, *offset), (first, third_at));
            assert_eq!(what, "frame checksum mismatch");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "record log corrupt: {} at offset {third_at}: frame checksum mismatch",
            first.display()
        )
    );
    let mut it = log.iter_from(1);
    assert!(matches!(it.next(), Some(Err(LogError::Corrupt { .. }))));
    assert!(it.next().is_none(), "the iterator stops after an error");
    // Records in other segments are still readable.
    let last = log.next_seq() - 1;
    assert_eq!(log.read(last).expect("read"), Some(payload(last)));

    let report = check(&StdFs, &dir, 4096).expect("check");
    assert_eq!(
        report.first_problem,
        Some(Problem {
            file: first.clone(),
            offset: third_at,
            what: "frame checksum mismatch".into(),
            at_tail: false,
        })
    );
    drop(log);

    // A broken header of a segment that is not the last: open fails.
    let second = &paths[1];
    let mut bytes = std::fs::read(second).unwrap();
    bytes[0] = b'X';
    std::fs::write(second, &bytes).unwrap();
    match RecordLog::open_std(&dir, small(4096)) {
        Err(LogError::Corrupt { file, offset, what }) => {
            assert_eq!((&file, offset), (second, 0));
            assert_eq!(what, "not a record log segment (bad magic)");
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("open must fail on a corrupt header"),
    }
}

#[test]
fn an_unknown_format_version_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let mut log = RecordLog::open_std(&dir, small(1 << 20)).expect("open");
    fill(&mut log, 3);
    let path = log.segment_paths()[0].clone();
    drop(log);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    match RecordLog::open_std(&dir, small(1 << 20)) {
        Err(LogError::Corrupt { file, offset, what }) => {
            assert_eq!((file, offset), (path, 0));
            assert_eq!(
                what,
                "segment format version 2 is not supported (this build reads 1)"
            );
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("open must refuse version 2"),
    }
}

#[test]
fn an_interrupted_roll_is_removed_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let mut log = RecordLog::open_std(&dir, small(1 << 20)).expect("open");
    fill(&mut log, 20);
    drop(log);
    // The next segment was created but its header never made it to disk.
    let stray = dir.join(frame::segment_name(21));
    std::fs::write(&stray, [0u8; 7]).unwrap();
    let mut log = RecordLog::open_std(&dir, small(1 << 20)).expect("reopen");
    assert_eq!(log.recovery().removed_incomplete, vec![stray.clone()]);
    assert!(!stray.exists());
    assert_eq!(log.segment_count(), 1);
    assert_all(&mut log, 1, 21);

    // A last segment longer than a header with a broken header is not an
    // interrupted roll: frames were written after its header was synced.
    drop(log);
    let path = dir.join(frame::segment_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        RecordLog::open_std(&dir, small(1 << 20)),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn a_log_that_ends_before_the_callers_checkpoint_is_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("log");
    let mut log = RecordLog::open_std(&dir, small(1 << 20)).expect("open");
    fill(&mut log, 10);
    drop(log);
    let opts = |n| LogOptions {
        expect_durable: Some(n),
        ..small(1 << 20)
    };
    RecordLog::open_std(&dir, opts(10)).expect("the checkpoint is covered");
    match RecordLog::open_std(&dir, opts(11)) {
        Err(LogError::Lost { expected, last }) => assert_eq!((expected, last), (11, 10)),
        Err(other) => panic!("expected Lost, got {other:?}"),
        Ok(_) => panic!("open must report the loss"),
    }
}

#[test]
fn a_payload_over_the_maximum_is_refused_without_failing_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = RecordLog::open_std(&tmp.path().join("log"), small(1 << 20)).expect("open");
    match log.append(&vec![0u8; 4097]) {
        Err(LogError::TooLarge { len, max }) => assert_eq!((len, max), (4097, 4096)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    fill(&mut log, 3);
    assert_all(&mut log, 1, 4);
}

fn assert_failed<T: std::fmt::Debug>(r: Result<T, LogError>, first: &str) {
    match r {
        Err(LogError::Failed(f)) => assert!(f.contains(first), "{f}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn a_failed_sync_latches_the_log_until_reopened() {
    for (on, errno, what) in [
        (FaultOn::Sync, EIO, "syncing"),
        (FaultOn::Write, ENOSPC, "writing"),
    ] {
        let fs = SimFs::new(3);
        let dir = sim_dir();
        let mut log = RecordLog::open(Arc::new(fs.clone()), &dir, small(1 << 20)).expect("open");
        fill(&mut log, 10);
        fs.fail_next(on, errno);
        log.append(b"never acknowledged").expect("append");
        match log.sync() {
            Err(LogError::Io { context, source }) => {
                assert_eq!(source.raw_os_error(), Some(errno));
                assert!(context.starts_with(what), "{context}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
        // Everything answers Failed now, even though the fault was one-shot.
        let first = format!("(os error {errno})");
        assert_failed(log.append(b"x"), &first);
        assert_failed(log.sync(), &first);
        assert_failed(log.read(1), &first);
        assert_failed(log.delete_below(5), &first);
        assert!(matches!(
            log.iter_from(1).next(),
            Some(Err(LogError::Failed(_)))
        ));
        drop(log);

        // Reopened (after a power cut, so nothing unsynced lingers): the
        // acknowledged records are all there and the log works again.
        fs.power_cut();
        let mut log = RecordLog::open(Arc::new(fs.clone()), &dir, small(1 << 20)).expect("reopen");
        for seq in 1..11 {
            assert_eq!(log.read(seq).expect("read"), Some(payload(seq)));
        }
        // The unacknowledged record may or may not have reached the disk.
        match log.next_seq() {
            11 => {}
            12 => assert_eq!(
                log.read(11).expect("read"),
                Some(b"never acknowledged".to_vec())
            ),
            n => panic!("next sequence {n}"),
        }
        log.append(b"after").expect("append");
        log.sync().expect("sync");
    }
}

#[test]
fn a_failed_roll_latches_the_log() {
    let fs = SimFs::new(4);
    let dir = sim_dir();
    let mut log = RecordLog::open(Arc::new(fs.clone()), &dir, small(1024)).expect("open");
    fill(&mut log, 3);
    // The next frame does not fit the active segment: the sync rolls first,
    // and creating the new segment fails.
    log.append(&[1u8; 900]).expect("append");
    fs.fail_next(FaultOn::Write, ENOSPC);
    match log.sync() {
        Err(LogError::Io { context, source }) => {
            assert_eq!(source.raw_os_error(), Some(ENOSPC));
            assert!(context.starts_with("creating /sim/log/"), "{context}");
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_failed(log.append(b"x"), "os error 28");
    assert_failed(log.sync(), "os error 28");
    drop(log);
    fs.power_cut();
    let mut log = RecordLog::open(Arc::new(fs), &dir, small(1024)).expect("reopen");
    assert_eq!((log.segment_count(), log.next_seq()), (1, 4));
    assert_all(&mut log, 1, 4);
}

/// What a power-cut run went through (printed, to show the test's reach).
#[derive(Debug, Default)]
struct CutStats {
    cuts: u32,
    restarts: u32,
    tail_cuts: u32,
    removed_incomplete: u32,
    acknowledged: u64,
    rolls_seen: u64,
    deletes: u64,
}

/// One sequence of random operations and power cuts (or plain process
/// restarts) on one `SimFs`.
fn power_cut_run(seed: u64, cuts: u32, stats: &mut CutStats) {
    let ctx = |cut: u32, what: &str| format!("seed {seed}, cut {cut}: {what}");
    let mut rng = StdRng::seed_from_u64(seed);
    let fs = SimFs::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let dir = sim_dir();
    let opts = LogOptions {
        segment_bytes: rng.random_range(200..3000),
        max_payload: 4096,
        ..LogOptions::default()
    };
    // What the log must hold (acknowledged or seen durable by an open).
    let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    // Appended since the last acknowledged sync: may or may not survive.
    let mut maybe: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    // Records below this may have been deleted.
    let mut floor = 0u64;
    for cut in 0..cuts {
        let durable_max = model.keys().next_back().copied();
        let open_opts = LogOptions {
            expect_durable: durable_max,
            ..opts.clone()
        };
        let mut log = match RecordLog::open(Arc::new(fs.clone()), &dir, open_opts) {
            Ok(log) => log,
            Err(e) => panic!("{}", ctx(cut, &format!("open failed: {e}"))),
        };
        stats.tail_cuts += u32::from(log.recovery().tail_cut.is_some());
        stats.removed_incomplete += log.recovery().removed_incomplete.len() as u32;
        let segments_before = log.segment_count();
        // Verify: contiguous, same bytes, nothing from nowhere, nothing lost.
        let first = log.first_seq();
        let mut seen = BTreeMap::new();
        for item in log.iter_from(0) {
            let (seq, p) = item.unwrap_or_else(|e| panic!("{}", ctx(cut, &e.to_string())));
            let expected = model.get(&seq).or_else(|| maybe.get(&seq));
            assert_eq!(
                expected,
                Some(&p),
                "{}",
                ctx(
                    cut,
                    &format!("seq {seq} holds bytes never appended with it")
                )
            );
            seen.insert(seq, p);
        }
        assert_eq!(
            seen.len() as u64,
            log.next_seq() - first,
            "{}",
            ctx(cut, "gap")
        );
        for seq in model.keys() {
            if *seq >= floor || *seq >= first {
                assert!(
                    seen.contains_key(seq),
                    "{}",
                    ctx(cut, &format!("acknowledged seq {seq} lost"))
                );
            }
        }
        let report = check(&fs, &dir, 4096).expect("check");
        assert_eq!(
            report.first_problem,
            None,
            "{}",
            ctx(cut, "check after open")
        );
        // Everything an open saw is durable (open syncs it).
        model = seen;
        maybe.clear();

        // Random operations until the crash point or a fault.
        match rng.random_range(0..10) {
            0 => fs.fail_next(FaultOn::Sync, EIO),
            1 => fs.fail_next(FaultOn::Write, ENOSPC),
            _ => {}
        }
        fs.crash_after(rng.random_range(0..40));
        for _ in 0..rng.random_range(1..40) {
            let r: Result<(), LogError> = match rng.random_range(0..100) {
                0..60 => {
                    let len = rng.random_range(0..400);
                    let p: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    log.append(&p).map(|seq| {
                        maybe.insert(seq, p);
                    })
                }
                60..85 => log.sync().map(|()| {
                    stats.acknowledged += maybe.len() as u64;
                    model.append(&mut maybe);
                }),
                85..90 => {
                    // Records below `at` may go even if the call fails.
                    let at = rng.random_range(log.first_seq()..=log.next_seq());
                    floor = floor.max(at);
                    log.delete_below(at).map(|n| stats.deletes += n as u64)
                }
                _ => {
                    let at = rng.random_range(log.first_seq()..=log.next_seq());
                    log.read(at).map(|got| {
                        if let Some(p) = got {
                            assert_eq!(model.get(&at), Some(&p), "{}", ctx(cut, "read"));
                        }
                    })
                }
            };
            if r.is_err() {
                break;
            }
        }
        stats.rolls_seen += log.segment_count().saturating_sub(segments_before) as u64;
        drop(log);
        // Mostly a power cut; sometimes a plain restart of the process.
        if rng.random_bool(0.9) {
            fs.power_cut();
            stats.cuts += 1;
        } else {
            fs.restart();
            stats.restarts += 1;
        }
    }
}

#[test]
fn power_cuts_never_lose_an_acknowledged_record() {
    let seeds: u64 = std::env::var("SCHAKEL_LOG_CUT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let base: u64 = std::env::var("SCHAKEL_LOG_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut stats = CutStats::default();
    for seed in base..base + seeds {
        power_cut_run(seed, 100, &mut stats);
    }
    eprintln!("power-cut test, {seeds} seeds from {base}: {stats:?}");
    assert_eq!(stats.cuts + stats.restarts, seeds as u32 * 100);
    // The run reached what it is meant to test.
    assert!(stats.tail_cuts > 0 && stats.rolls_seen > 0 && stats.deletes > 0);
}
