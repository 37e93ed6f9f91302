//! Group commit: the one place that makes sled's writes durable on the device.
//!
//! Owns the dedicated commit thread, the open handles on sled's data files and
//! the channel through which callers ask for a sync round. sled's own `flush()`
//! ends in `sync_file_range`, which is not a device flush (sled issue #1452), so
//! every round here is `Db::flush()` followed by `fsync` of the data files.
//! Concurrent callers share one round: the thread drains every pending request,
//! syncs once and answers them all.
//!
//! A failed round latches the store failed (`latch`): that round's callers and
//! every later one get `StoreError::Failed`, and no further round is tried, so a
//! sync that would "succeed" after Linux dropped the failed pages can never
//! move the durable watermark past lost records. The fault point of
//! [`super::SyncFaults`] sits where the data file's `fdatasync` is.
//!
//! Must not: interpret records, know about queue state, or log anything but
//! counts and errors. Called by `Store` (submit, ack, put_identity, put_supplier,
//! sync) and indirectly by everything that marks the store dirty (audit, pull).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::latch::{Latch, SyncFaults};
use super::{lock, StoreError};

/// Context used for every group-commit failure message.
const SYNC_CONTEXT: &str = "syncing the store to disk (group commit)";

/// How a caller waits for its round.
enum Waiter {
    /// An async caller (submit, ack, sync).
    Async(oneshot::Sender<Result<(), StoreError>>),
    /// A synchronous caller (put_identity, put_supplier).
    Blocking(mpsc::SyncSender<Result<(), StoreError>>),
}

impl Waiter {
    fn answer(self, result: Result<(), StoreError>) {
        // A caller that gave up waiting (dropped its receiver) is not an error.
        match self {
            Waiter::Async(tx) => {
                let _ = tx.send(result);
            }
            Waiter::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

enum CommitMsg {
    Sync(Waiter),
    Stop,
}

/// Handle on the commit thread. Dropping it runs a last round and joins the thread.
pub(crate) struct Committer {
    /// Requests for a sync round go to the commit thread through this channel;
    /// the thread batches everything queued into one round.
    tx: mpsc::Sender<CommitMsg>,
    /// The commit thread, joined on drop so sled's file lock is released when the
    /// last `Store` handle goes away (a reopen in the same process must succeed).
    handle: Mutex<Option<JoinHandle<()>>>,
    /// Set by unsynced writes (audit events, delivery attempts); the periodic
    /// round only syncs when something was written since the last round.
    dirty: Arc<AtomicBool>,
    /// The store's failure latch: once set, no round is run.
    latch: Arc<Latch>,
}

impl Committer {
    /// Opens sled's data files, fsyncs the directories once and starts the thread.
    ///
    /// # Errors
    /// `StoreError::Io` when the data files or directories cannot be opened or synced.
    pub(crate) fn start(
        db: sled::Db,
        path: &Path,
        flush_every: Option<Duration>,
        latch: Arc<Latch>,
        faults: SyncFaults,
    ) -> Result<Committer, StoreError> {
        let db_file = open_file(&path.join("db"))?;
        let conf_file = open_file(&path.join("conf"))?;
        // The files were possibly just created: make their directory entries durable.
        sync_dir(path)?;
        let blobs = path.join("blobs");
        if blobs.is_dir() {
            sync_dir(&blobs)?;
        }
        if let Some(parent) = path.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            sync_dir(parent)?;
        }

        let dirty = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut worker = Worker {
            db,
            db_file,
            conf_file,
            blobs,
            synced_blobs: HashSet::new(),
            dirty: Arc::clone(&dirty),
            latch: Arc::clone(&latch),
            faults,
        };
        let handle = std::thread::Builder::new()
            .name("schakel-commit".into())
            .spawn(move || worker.run(rx, flush_every))
            .map_err(|source| StoreError::Io {
                context: "starting the group-commit thread".into(),
                source,
            })?;
        Ok(Committer {
            tx,
            handle: Mutex::new(Some(handle)),
            dirty,
            latch,
        })
    }

    /// Notes that something was written without waiting for a round; the next
    /// round (periodic or requested) makes it durable.
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Waits until every write issued before this call is durable.
    ///
    /// # Errors
    /// `StoreError::Io` when the flush or fsync failed (e.g. disk full),
    /// `StoreError::Closed` when the commit thread is gone.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        self.latch.check()?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(CommitMsg::Sync(Waiter::Async(tx)))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Committer::sync`] but blocks the calling thread.
    ///
    /// # Errors
    /// As [`Committer::sync`].
    pub(crate) fn sync_blocking(&self) -> Result<(), StoreError> {
        self.latch.check()?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(CommitMsg::Sync(Waiter::Blocking(tx)))
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.tx.send(CommitMsg::Stop);
        if let Some(handle) = lock(&self.handle).take() {
            if handle.join().is_err() {
                tracing::error!("group-commit thread panicked");
            }
        }
    }
}

struct Worker {
    db: sled::Db,
    db_file: File,
    conf_file: File,
    blobs: PathBuf,
    /// Blob files already fsynced (sled writes large pages as separate files
    /// without syncing them).
    synced_blobs: HashSet<OsString>,
    dirty: Arc<AtomicBool>,
    latch: Arc<Latch>,
    /// Test hook: fails the data file's fdatasync when armed.
    faults: SyncFaults,
}

impl Worker {
    fn run(&mut self, rx: mpsc::Receiver<CommitMsg>, flush_every: Option<Duration>) {
        loop {
            let first = match flush_every {
                Some(every) => match rx.recv_timeout(every) {
                    Ok(msg) => Some(msg),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => return,
                },
            };
            let Some(first) = first else {
                // Periodic round: only when unsynced writes happened, and never
                // once the store has failed (a failed round latches it).
                if self.dirty.load(Ordering::Acquire) && self.latch.check().is_ok() {
                    let _ = self.round();
                }
                continue;
            };
            // Drain everything queued: all of it shares this round.
            let mut waiters = Vec::new();
            let mut stop = false;
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    CommitMsg::Sync(w) => waiters.push(w),
                    CommitMsg::Stop => stop = true,
                }
                next = rx.try_recv().ok();
            }
            // Once failed, nothing is synced again: a later round could
            // "succeed" over pages the kernel dropped.
            let result = self.latch.check().and_then(|()| self.round());
            if let Err(e) = &result {
                tracing::warn!(error = %e, waiters = waiters.len(), "store sync round refused");
            }
            for w in waiters {
                w.answer(match &result {
                    Ok(()) => Ok(()),
                    Err(StoreError::Failed(first)) => Err(StoreError::Failed(Arc::clone(first))),
                    Err(other) => Err(StoreError::Io {
                        context: SYNC_CONTEXT.into(),
                        source: io::Error::other(other.to_string()),
                    }),
                });
            }
            if stop {
                return;
            }
        }
    }

    /// One round: flush sled's log to the OS, then fsync the data files. A
    /// failure latches the store failed.
    fn round(&mut self) -> Result<(), StoreError> {
        self.dirty.store(false, Ordering::Release);
        let result = self.round_inner();
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.dirty.store(true, Ordering::Release);
                Err(self.latch.sync_failed(SYNC_CONTEXT, &e))
            }
        }
    }

    fn round_inner(&mut self) -> io::Result<()> {
        self.db.flush().map_err(|e| match e {
            sled::Error::Io(io) => io,
            other => io::Error::other(other.to_string()),
        })?;
        self.sync_blobs()?;
        if self.faults.take() {
            // Fault injection (test hook): the data file's fdatasync fails as
            // Linux reports a write-back error. 5 is EIO on Linux.
            return Err(io::Error::from_raw_os_error(5));
        }
        self.db_file.sync_data()?;
        self.conf_file.sync_data()?;
        Ok(())
    }

    fn sync_blobs(&mut self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut new_files = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // Garbage-collected by sled between listing and opening.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_files = true;
            }
            present.insert(name);
        }
        self.synced_blobs = present;
        if new_files {
            File::open(&self.blobs)?.sync_all()?;
        }
        Ok(())
    }
}

fn open_file(path: &Path) -> Result<File, StoreError> {
    File::open(path).map_err(|source| StoreError::Io {
        context: format!("opening {} for fsync", path.display()),
        source,
    })
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            context: format!("syncing directory {}", path.display()),
            source,
        })
}

/// fsyncs one file or directory.
pub(crate) fn sync_path(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| StoreError::Io {
            context: format!("syncing {}", path.display()),
            source,
        })
}
