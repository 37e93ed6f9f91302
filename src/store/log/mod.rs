//! The record log (issue 13, first piece): an append-only log of checksummed
//! frames in segment files that Schakel owns, meant to hold record content
//! beside sled's dedup index. NOT WIRED IN YET: the `Store` still keeps record
//! content in sled; the submit/pull/ack paths, the index replay, the migration
//! and `schakel store check` come in the next piece.
//!
//! Owns: the segment files in one directory (`{first_seq:020}.log`, format in
//! `frame`), recovery at open, buffered appends made durable by one
//! `fdatasync` per [`RecordLog::sync`] (a group-commit round), reads by
//! sequence and in order, segment roll and deletion of whole segments, the
//! failure latch, and the offline [`check`]. The file layer is a trait
//! (`fs`), with the real `std::fs` implementation and a simulated one for
//! power-cut tests (`sim`).
//!
//! Durability rules:
//! - `sync` writes every frame appended since the last round and
//!   `fdatasync`s the active segment once. A roll first syncs the full
//!   segment, then creates the next one, writes and syncs its header and
//!   syncs the directory, so only the LAST segment can ever hold unsynced
//!   (hence tearable) bytes.
//! - Open verifies every segment header but reads the frames of the last
//!   segment only; a torn or corrupt frame there is the end of the log (the
//!   PostgreSQL WAL rule: only unacknowledged data can be past it) and is cut
//!   off (`set_len` + sync) and reported. A last segment no longer than a
//!   header whose header is not valid is an interrupted roll: it is removed.
//!   Anything else that is wrong is a [`LogError::Corrupt`] naming the file
//!   and offset, never a silent loss. The caller may pass the last sequence
//!   it knows was durable (`LogOptions::expect_durable`); a log that ends
//!   before it is [`LogError::Lost`].
//! - Open syncs the last segment and the directory, so what it read is
//!   durable before anything is served from it (after a process restart
//!   without a reboot the page cache can hold what the disk does not).
//! - After any failed write, sync, create or remove the log is latched
//!   failed: every call answers [`LogError::Failed`] until it is reopened
//!   (the store's rule, see `store::latch`: a later sync that succeeds
//!   proves nothing about the writes the failed one should have made
//!   durable).
//! - Only durable records are visible to `read` and `iter_from`.
//!
//! Start time does not grow with the log: open reads the segment headers and
//! the last segment's frames only (the caller replays its own index from its
//! checkpoint with `iter_from`). Reads find a frame through a sparse
//! in-memory index per segment (one entry per [`INDEX_EVERY`] frames), built
//! by the open scan for the last segment and lazily, by one verifying scan,
//! the first time an older segment is read. Segment files are opened lazily
//! too. Memory is bounded by the segments read, not by the records.
//!
//! Must not: log or put payload bytes into errors (ids, files, offsets and
//! counts only), panic on bad bytes on disk, or know tonic types. Not
//! thread-safe by itself: one owner (the commit task) holds it `&mut`.
//! Called by nothing in the gateway yet; by its tests and `benches/hot_paths`.

mod frame;
mod fs;
#[doc(hidden)]
pub mod sim;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use frame::FORMAT_VERSION;
use frame::{FrameProblem, FrameRead, FRAME_HEADER_LEN, HEADER_LEN};
pub use fs::{LogFile, LogFs, StdFs};

/// One entry in a segment's sparse index per this many frames.
pub const INDEX_EVERY: u64 = 64;

/// Everything that can go wrong in the record log. Messages name files,
/// offsets and sequences, never payload bytes.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file-system call failed (the log is latched failed if it was a write
    /// or sync).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Bytes on disk are not what the log wrote, somewhere data may have been
    /// acknowledged.
    #[error("record log corrupt: {file} at offset {offset}: {what}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        what: String,
    },
    /// The log ends before a sequence the caller knows was durable.
    #[error(
        "record log ends before sequence {expected} that was durable \
         (the log's last sequence is {last})"
    )]
    Lost { expected: u64, last: u64 },
    /// A payload larger than `LogOptions::max_payload`.
    #[error("payload of {len} bytes exceeds the record log's maximum of {max}")]
    TooLarge { len: usize, max: u32 },
    /// A write or sync failed earlier; the log refuses everything until it is
    /// reopened.
    #[error("the record log failed and refuses every call until reopened (first failure: {0})")]
    Failed(Arc<str>),
}

/// Settings of a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is rolled once the next frame would make it larger (a
    /// segment always takes at least one frame).
    pub segment_bytes: u64,
    /// The largest payload accepted (and believed when reading a length).
    pub max_payload: u32,
    /// The sequence of the first record of a new, empty log.
    pub first_seq: u64,
    /// The last sequence the caller knows was durable (its checkpoint), if
    /// any: open fails with `Lost` if the log ends before it.
    pub expect_durable: Option<u64>,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes: 64 << 20,
            max_payload: 16 << 20,
            first_seq: 1,
            expect_durable: None,
        }
    }
}

/// A torn or corrupt tail that open cut off the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    pub file: PathBuf,
    /// Where the log now ends (the file's new length).
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
    /// What was wrong at `offset`.
    pub what: String,
}

/// What open found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// The frames of the last segment that open read.
    pub frames_scanned: u64,
    pub tail_cut: Option<TailCut>,
    /// Segment files of an interrupted roll (no valid header, nothing else)
    /// that open removed.
    pub removed_incomplete: Vec<PathBuf>,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    file: Option<Box<dyn LogFile>>,
    /// Known once scanned (or written): the byte length of its valid frames,
    /// the sequence after its last frame, and the sparse index.
    scanned: Option<Scanned>,
}

#[derive(Clone)]
struct Scanned {
    end: u64,
    next_seq: u64,
    /// (sequence, offset) of every `INDEX_EVERY`-th frame, ascending.
    index: Vec<(u64, u64)>,
}

/// The append-only record log. See the module documentation.
pub struct RecordLog {
    fs: Arc<dyn LogFs>,
    dir: PathBuf,
    opts: LogOptions,
    /// Ascending by `first_seq`; never empty; the last is the active one.
    segments: Vec<Segment>,
    /// The sequence the next append gets.
    next_seq: u64,
    /// Every sequence below this is durable.
    durable_next: u64,
    /// Frames appended since the last sync, encoded.
    buf: Vec<u8>,
    /// (sequence, start in `buf`) of each buffered frame.
    buf_frames: Vec<(u64, usize)>,
    failed: Option<Arc<str>>,
    recovery: Recovery,
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> LogError {
    move |source| LogError::Io { context, source }
}

fn corrupt(file: &Path, offset: u64, what: impl ToString) -> LogError {
    LogError::Corrupt {
        file: file.to_path_buf(),
        offset,
        what: what.to_string(),
    }
}

/// Reads and checks a segment header; `Err(what)` says why it is not valid.
fn read_header(file: &dyn LogFile, name_seq: u64) -> io::Result<Result<(), String>> {
    let mut h = [0u8; HEADER_LEN as usize];
    let got = file.read_at(&mut h, 0)?;
    Ok(match frame::decode_header(&h[..got]) {
        Ok(seq) if seq == name_seq => Ok(()),
        Ok(seq) => Err(format!(
            "segment header says first sequence {seq}, its name says {name_seq}"
        )),
        Err(p) => Err(p.to_string()),
    })
}

/// Scans a segment's frames from its header on. Returns what is valid and,
/// if the scan stopped before the end of the file, where and why.
fn scan_segment(
    file: &dyn LogFile,
    first_seq: u64,
    max_payload: u32,
) -> io::Result<(Scanned, Option<(u64, FrameProblem)>)> {
    let mut offset = HEADER_LEN;
    let mut seq = first_seq;
    let mut index = Vec::new();
    loop {
        match frame::read_frame(file, offset, seq, max_payload)? {
            FrameRead::Frame { next, .. } => {
                if (seq - first_seq) % INDEX_EVERY == 0 {
                    index.push((seq, offset));
                }
                offset = next;
                seq += 1;
            }
            FrameRead::End => {
                let scanned = Scanned {
                    end: offset,
                    next_seq: seq,
                    index,
                };
                return Ok((scanned, None));
            }
            FrameRead::Bad(problem) => {
                let scanned = Scanned {
                    end: offset,
                    next_seq: seq,
                    index,
                };
                return Ok((scanned, Some((offset, problem))));
            }
        }
    }
}

/// The segment files in `dir`, ascending by first sequence.
fn list_segments(fs: &dyn LogFs, dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let names = fs
        .list_dir(dir)
        .map_err(io_err(format!("listing {}", dir.display())))?;
    let mut segs: Vec<(u64, PathBuf)> = names
        .iter()
        .filter_map(|n| frame::parse_segment_name(n).map(|s| (s, dir.join(n))))
        .collect();
    segs.sort();
    Ok(segs)
}

impl RecordLog {
    /// Opens (or creates) the log in `dir` on the real file system.
    pub fn open_std(dir: &Path, opts: LogOptions) -> Result<RecordLog, LogError> {
        RecordLog::open(Arc::new(StdFs), dir, opts)
    }

    /// Opens (or creates) the log in `dir`: verifies every segment header,
    /// scans the last segment, cuts a torn tail. See the module docs.
    pub fn open(fs: Arc<dyn LogFs>, dir: &Path, opts: LogOptions) -> Result<RecordLog, LogError> {
        fs.create_dir_all(dir)
            .map_err(io_err(format!("creating {}", dir.display())))?;
        let mut recovery = Recovery::default();
        let mut found = list_segments(&*fs, dir)?;
        let mut restart_seq = None;

        // An interrupted roll leaves a last segment no longer than a header
        // (its header is synced before any frame is written to it).
        while let Some((seq, path)) = found.last().cloned() {
            let file = fs
                .open(&path)
                .map_err(io_err(format!("opening {}", path.display())))?;
            let len = file
                .size()
                .map_err(io_err(format!("reading {}", path.display())))?;
            let header =
                read_header(&*file, seq).map_err(io_err(format!("reading {}", path.display())))?;
            match header {
                Ok(()) => break,
                Err(_) if len <= HEADER_LEN => {
                    drop(file);
                    fs.remove(&path)
                        .map_err(io_err(format!("removing {}", path.display())))?;
                    fs.sync_dir(dir)
                        .map_err(io_err(format!("syncing {}", dir.display())))?;
                    recovery.removed_incomplete.push(path);
                    restart_seq = Some(seq);
                    found.pop();
                }
                Err(what) => return Err(corrupt(&path, 0, what)),
            }
        }

        let mut segments = Vec::with_capacity(found.len().max(1));
        for (i, (seq, path)) in found.iter().enumerate() {
            let mut seg = Segment {
                first_seq: *seq,
                path: path.clone(),
                file: None,
                scanned: None,
            };
            if i + 1 < found.len() {
                let file = fs
                    .open(path)
                    .map_err(io_err(format!("opening {}", path.display())))?;
                read_header(&*file, *seq)
                    .map_err(io_err(format!("reading {}", path.display())))?
                    .map_err(|what| corrupt(path, 0, what))?;
                // Keep the handle: it is needed for reads anyway.
                seg.file = Some(file);
            }
            segments.push(seg);
        }

        let mut log = RecordLog {
            fs,
            dir: dir.to_path_buf(),
            opts,
            segments,
            next_seq: 0,
            durable_next: 0,
            buf: Vec::new(),
            buf_frames: Vec::new(),
            failed: None,
            recovery,
        };

        if log.segments.is_empty() {
            // A log whose only segment was an interrupted creation restarts
            // at that segment's sequence.
            let first = restart_seq.unwrap_or(log.opts.first_seq);
            log.create_segment(first)?;
        } else {
            log.recover_last()?;
        }
        let last = log.last_mut();
        log.next_seq = last.scanned.as_ref().map_or(last.first_seq, |s| s.next_seq);
        log.durable_next = log.next_seq;
        log.recovery.segments = log.segments.len();
        if let Some(expected) = log.opts.expect_durable {
            if log.next_seq <= expected {
                return Err(LogError::Lost {
                    expected,
                    last: log.next_seq.saturating_sub(1),
                });
            }
        }
        Ok(log)
    }

    /// Scans the last segment; cuts a torn or corrupt tail.
    fn recover_last(&mut self) -> Result<(), LogError> {
        let max = self.opts.max_payload;
        let seg = self.last_mut();
        let (path, first_seq) = (seg.path.clone(), seg.first_seq);
        let mut file = self
            .fs
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let (scanned, problem) = scan_segment(&*file, first_seq, max)
            .map_err(io_err(format!("reading {}", path.display())))?;
        self.recovery.frames_scanned = scanned.next_seq - first_seq;
        if let Some((offset, what)) = problem {
            let len = file
                .size()
                .map_err(io_err(format!("reading {}", path.display())))?;
            file.set_len(offset).map_err(io_err(format!(
                "cutting the torn tail of {}",
                path.display()
            )))?;
            tracing::warn!(
                file = %path.display(),
                offset,
                bytes = len - offset,
                what = %what,
                "record log: cut a torn or corrupt tail off the last segment (unacknowledged data)"
            );
            self.recovery.tail_cut = Some(TailCut {
                file: path.clone(),
                offset,
                bytes: len - offset,
                what: what.to_string(),
            });
        }
        // Make what this open read durable before anything is served from
        // it: after a failed sync and a reopen without a reboot the page
        // cache may hold bytes the disk does not (PostgreSQL fsyncs its data
        // directory at crash recovery for the same reason).
        file.sync_data()
            .map_err(io_err(format!("syncing {}", path.display())))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err(format!("syncing {}", self.dir.display())))?;
        let seg = self.last_mut();
        seg.file = Some(file);
        seg.scanned = Some(scanned);
        Ok(())
    }

    fn last_mut(&mut self) -> &mut Segment {
        // `segments` is never empty after open (see `open`): the last index
        // exists. Written without unwrap: `len() - 1` on a non-empty Vec.
        let i = self.segments.len() - 1;
        &mut self.segments[i]
    }

    /// Creates, syncs and registers a new segment starting at `first_seq`.
    fn create_segment(&mut self, first_seq: u64) -> Result<(), LogError> {
        let path = self.dir.join(frame::segment_name(first_seq));
        let ctx = |what: &str| format!("{what} {}", path.display());
        let mut file = self.fs.create(&path).map_err(io_err(ctx("creating")))?;
        file.write_at(&frame::encode_header(first_seq), 0)
            .map_err(io_err(ctx("writing the header of")))?;
        file.sync_data().map_err(io_err(ctx("syncing")))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err(format!("syncing {}", self.dir.display())))?;
        self.segments.push(Segment {
            first_seq,
            path,
            file: Some(file),
            scanned: Some(Scanned {
                end: HEADER_LEN,
                next_seq: first_seq,
                index: Vec::new(),
            }),
        });
        Ok(())
    }

    fn check_failed(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(first) => Err(LogError::Failed(Arc::clone(first))),
            None => Ok(()),
        }
    }

    /// Latches the log failed on a write-side error (the first one is kept).
    fn latch(&mut self, err: LogError) -> LogError {
        if self.failed.is_none() {
            tracing::error!(error = %err, "record log FAILED: refusing every call until reopened");
            self.failed = Some(Arc::from(err.to_string()));
        }
        err
    }

    /// What open found and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The oldest sequence still in the log.
    pub fn first_seq(&self) -> u64 {
        self.segments.first().map_or(self.next_seq, |s| s.first_seq)
    }

    /// The sequence the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every sequence below this is durable (and readable).
    pub fn durable_next(&self) -> u64 {
        self.durable_next
    }

    /// The number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segment files' paths, ascending.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    /// Appends a record (buffered in memory): it becomes durable and readable
    /// with the next successful [`sync`](RecordLog::sync).
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        self.check_failed()?;
        if payload.len() > self.opts.max_payload as usize {
            return Err(LogError::TooLarge {
                len: payload.len(),
                max: self.opts.max_payload,
            });
        }
        let seq = self.next_seq;
        self.buf_frames.push((seq, self.buf.len()));
        frame::encode_frame(&mut self.buf, seq, payload);
        self.next_seq += 1;
        Ok(seq)
    }

    /// One group-commit round: writes every frame appended since the last
    /// round and `fdatasync`s once (plus the syncs of a roll). On `Ok` every
    /// record appended before the call is durable. On `Err` the log is
    /// latched failed.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.check_failed()?;
        if self.buf_frames.is_empty() {
            return Ok(());
        }
        match self.write_buffered() {
            Ok(()) => {
                self.buf.clear();
                self.buf_frames.clear();
                self.durable_next = self.next_seq;
                Ok(())
            }
            Err(e) => Err(self.latch(e)),
        }
    }

    fn write_buffered(&mut self) -> Result<(), LogError> {
        let frames = std::mem::take(&mut self.buf_frames);
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_frames(&frames, &buf);
        self.buf_frames = frames;
        self.buf = buf;
        result
    }

    fn write_frames(&mut self, frames: &[(u64, usize)], buf: &[u8]) -> Result<(), LogError> {
        let limit = self.opts.segment_bytes;
        // Frames [chunk_from, i) go to the active segment in one write.
        let mut chunk_from = 0;
        for i in 0..frames.len() {
            let (seq, start) = frames[i];
            let end = frames.get(i + 1).map_or(buf.len(), |f| f.1);
            let active = self.active_scanned()?;
            let chunk_bytes = (start - frames[chunk_from].1) as u64;
            let has_frames = i > chunk_from || active.next_seq > self.last_mut().first_seq;
            if has_frames && active.end + chunk_bytes + (end - start) as u64 > limit {
                self.write_chunk(&frames[chunk_from..i], buf)?;
                self.roll(seq)?;
                chunk_from = i;
            }
        }
        self.write_chunk(&frames[chunk_from..], buf)
    }

    fn active_scanned(&mut self) -> Result<Scanned, LogError> {
        let seg = self.last_mut();
        match &seg.scanned {
            Some(s) => Ok(Scanned {
                end: s.end,
                next_seq: s.next_seq,
                index: Vec::new(),
            }),
            None => Err(corrupt(&seg.path, 0, "active segment was never scanned")),
        }
    }

    /// Writes the frames (contiguous in `buf`) at the end of the active
    /// segment and syncs it.
    fn write_chunk(&mut self, frames: &[(u64, usize)], buf: &[u8]) -> Result<(), LogError> {
        let (Some(&(first, from)), Some(&(last, _))) = (frames.first(), frames.last()) else {
            return Ok(());
        };
        let last_start = frames[frames.len() - 1].1;
        let to = last_start + frame_len_at(buf, last_start);
        let seg = self.last_mut();
        let path = seg.path.clone();
        let first_in_seg = seg.first_seq;
        let scanned = seg
            .scanned
            .as_mut()
            .ok_or_else(|| corrupt(&path, 0, "active segment was never scanned"))?;
        let offset = scanned.end;
        let file = seg
            .file
            .as_mut()
            .ok_or_else(|| corrupt(&path, 0, "active segment is not open"))?;
        file.write_at(&buf[from..to], offset)
            .map_err(io_err(format!("writing {}", path.display())))?;
        file.sync_data()
            .map_err(io_err(format!("syncing {}", path.display())))?;
        for &(seq, start) in frames {
            if (seq - first_in_seg) % INDEX_EVERY == 0 {
                scanned.index.push((seq, offset + (start - from) as u64));
            }
        }
        debug_assert_eq!(scanned.next_seq, first);
        scanned.end = offset + (to - from) as u64;
        scanned.next_seq = last + 1;
        Ok(())
    }

    /// Rolls to a new segment whose first record is `first_seq`. The full
    /// segment was synced by `write_chunk` just before.
    fn roll(&mut self, first_seq: u64) -> Result<(), LogError> {
        self.create_segment(first_seq)
    }

    /// Removes every whole segment whose records are all below `seq` (never
    /// the active one), oldest first, syncing the directory after each
    /// removal so no gap can appear. Returns how many were removed.
    pub fn delete_below(&mut self, seq: u64) -> Result<usize, LogError> {
        self.check_failed()?;
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_seq <= seq {
            let seg = self.segments.remove(0);
            let path = seg.path;
            drop(seg.file);
            let result = self
                .fs
                .remove(&path)
                .map_err(io_err(format!("removing {}", path.display())))
                .and_then(|()| {
                    self.fs
                        .sync_dir(&self.dir)
                        .map_err(io_err(format!("syncing {}", self.dir.display())))
                });
            if let Err(e) = result {
                return Err(self.latch(e));
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Makes sure segment `i` is open and scanned (lazily, once).
    fn ensure_scanned(&mut self, i: usize) -> Result<(), LogError> {
        let max = self.opts.max_payload;
        let is_last = i + 1 == self.segments.len();
        let next_first = self.segments.get(i + 1).map(|s| s.first_seq);
        let fs = Arc::clone(&self.fs);
        let seg = &mut self.segments[i];
        if seg.file.is_none() {
            let f = fs
                .open(&seg.path)
                .map_err(io_err(format!("opening {}", seg.path.display())))?;
            seg.file = Some(f);
        }
        if seg.scanned.is_some() {
            return Ok(());
        }
        let Some(file) = seg.file.as_deref() else {
            return Err(corrupt(&seg.path, 0, "segment is not open"));
        };
        let (scanned, problem) = scan_segment(file, seg.first_seq, max)
            .map_err(io_err(format!("reading {}", seg.path.display())))?;
        if let Some((offset, what)) = problem {
            return Err(corrupt(&seg.path, offset, what));
        }
        if !is_last && Some(scanned.next_seq) != next_first {
            return Err(corrupt(
                &seg.path,
                scanned.end,
                format!(
                    "segment ends before sequence {}, the next segment starts at {}",
                    scanned.next_seq,
                    next_first.unwrap_or(0)
                ),
            ));
        }
        seg.scanned = Some(scanned);
        Ok(())
    }

    /// The segment holding `seq` (which must be in the log).
    fn segment_of(&self, seq: u64) -> usize {
        self.segments
            .partition_point(|s| s.first_seq <= seq)
            .saturating_sub(1)
    }

    /// Where the frame of `seq` starts in segment `i` (scanned).
    fn locate(&mut self, i: usize, seq: u64) -> Result<u64, LogError> {
        self.ensure_scanned(i)?;
        let max = self.opts.max_payload;
        let seg = &self.segments[i];
        let (Some(scanned), Some(file)) = (&seg.scanned, seg.file.as_deref()) else {
            return Err(corrupt(&seg.path, 0, "segment is not open"));
        };
        let k = scanned.index.partition_point(|&(s, _)| s <= seq);
        let (mut at_seq, mut offset) = match k {
            0 => (seg.first_seq, HEADER_LEN),
            k => scanned.index[k - 1],
        };
        while at_seq < seq {
            match frame::read_frame(file, offset, at_seq, max)
                .map_err(io_err(format!("reading {}", seg.path.display())))?
            {
                FrameRead::Frame { next, .. } => offset = next,
                FrameRead::End => {
                    return Err(corrupt(&seg.path, offset, "segment ends early"));
                }
                FrameRead::Bad(p) => return Err(corrupt(&seg.path, offset, p)),
            }
            at_seq += 1;
        }
        Ok(offset)
    }

    /// The payload of a durable record, or `None` if `seq` is below the
    /// oldest segment or not durable (yet).
    pub fn read(&mut self, seq: u64) -> Result<Option<Vec<u8>>, LogError> {
        self.check_failed()?;
        if seq < self.first_seq() || seq >= self.durable_next {
            return Ok(None);
        }
        let i = self.segment_of(seq);
        let offset = self.locate(i, seq)?;
        let max = self.opts.max_payload;
        let seg = &self.segments[i];
        let Some(file) = seg.file.as_deref() else {
            return Err(corrupt(&seg.path, 0, "segment is not open"));
        };
        match frame::read_frame(file, offset, seq, max)
            .map_err(io_err(format!("reading {}", seg.path.display())))?
        {
            FrameRead::Frame { payload, .. } => Ok(Some(payload)),
            FrameRead::End => Err(corrupt(&seg.path, offset, "segment ends early")),
            FrameRead::Bad(p) => Err(corrupt(&seg.path, offset, p)),
        }
    }

    /// The durable records from `seq` on (from the oldest if `seq` is below
    /// it), in order, as `(sequence, payload)`.
    pub fn iter_from(&mut self, seq: u64) -> LogIter<'_> {
        let seq = seq.max(self.first_seq());
        LogIter {
            log: self,
            seq,
            pos: None,
            done: false,
        }
    }
}

/// The length of the encoded frame starting at `start` in `buf`.
fn frame_len_at(buf: &[u8], start: usize) -> usize {
    let mut len = [0u8; 4];
    len.copy_from_slice(&buf[start..start + 4]);
    FRAME_HEADER_LEN + u32::from_le_bytes(len) as usize
}

/// Iterator over durable records; see [`RecordLog::iter_from`]. Stops after
/// the first error.
pub struct LogIter<'a> {
    log: &'a mut RecordLog,
    seq: u64,
    /// (segment index, offset of the frame of `seq`).
    pos: Option<(usize, u64)>,
    done: bool,
}

impl LogIter<'_> {
    fn step(&mut self) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        self.log.check_failed()?;
        if self.seq >= self.log.durable_next {
            return Ok(None);
        }
        let (mut i, mut offset) = match self.pos {
            Some(p) => p,
            None => {
                let i = self.log.segment_of(self.seq);
                (i, self.log.locate(i, self.seq)?)
            }
        };
        if i + 1 < self.log.segments.len() && self.log.segments[i + 1].first_seq <= self.seq {
            i += 1;
            self.log.ensure_scanned(i)?;
            offset = HEADER_LEN;
        }
        let max = self.log.opts.max_payload;
        let seg = &self.log.segments[i];
        let Some(file) = seg.file.as_deref() else {
            return Err(corrupt(&seg.path, 0, "segment is not open"));
        };
        match frame::read_frame(file, offset, self.seq, max)
            .map_err(io_err(format!("reading {}", seg.path.display())))?
        {
            FrameRead::Frame { payload, next } => {
                let seq = self.seq;
                self.seq += 1;
                self.pos = Some((i, next));
                Ok(Some((seq, payload)))
            }
            FrameRead::End => Err(corrupt(&seg.path, offset, "segment ends early")),
            FrameRead::Bad(p) => Err(corrupt(&seg.path, offset, p)),
        }
    }
}

impl Iterator for LogIter<'_> {
    type Item = Result<(u64, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// The first problem [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub offset: u64,
    pub what: String,
    /// At the tail of the last segment: a torn write that the next open cuts
    /// off (unacknowledged data), not a loss.
    pub at_tail: bool,
}

/// What [`check`] verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub first_problem: Option<Problem>,
}

/// Offline check of a log (the future `schakel store check`): verifies every
/// segment header, every frame's checksum and that sequences are contiguous
/// across segments; stops at the first problem. Writes nothing. `Err` only
/// when the files cannot be read at all.
pub fn check(fs: &dyn LogFs, dir: &Path, max_payload: u32) -> Result<CheckReport, LogError> {
    let segs = list_segments(fs, dir)?;
    let mut report = CheckReport {
        segments: segs.len(),
        ..CheckReport::default()
    };
    let mut expected_next: Option<u64> = None;
    for (i, (seq, path)) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        let problem = |offset, what: String, at_tail| Problem {
            file: path.clone(),
            offset,
            what,
            at_tail,
        };
        let file = fs
            .open(path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let len = file
            .size()
            .map_err(io_err(format!("reading {}", path.display())))?;
        report.bytes += len;
        if let Err(what) =
            read_header(&*file, *seq).map_err(io_err(format!("reading {}", path.display())))?
        {
            let at_tail = is_last && len <= HEADER_LEN;
            report.first_problem = Some(problem(0, what, at_tail));
            return Ok(report);
        }
        if let Some(next) = expected_next {
            if next != *seq {
                let what = format!(
                    "segment starts at sequence {seq}, the previous one ends before {next}"
                );
                report.first_problem = Some(problem(0, what, false));
                return Ok(report);
            }
        }
        let (scanned, bad) = scan_segment(&*file, *seq, max_payload)
            .map_err(io_err(format!("reading {}", path.display())))?;
        report.records += scanned.next_seq - seq;
        if let Some((offset, what)) = bad {
            report.first_problem = Some(problem(offset, what.to_string(), is_last));
            return Ok(report);
        }
        expected_next = Some(scanned.next_seq);
    }
    Ok(report)
}
