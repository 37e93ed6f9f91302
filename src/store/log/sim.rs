//! `SimFs`: a simulated file system for power-cut tests of the record log
//! (what FoundationDB and TigerBeetle do). Test-only in spirit; public
//! (`#[doc(hidden)]`) so integration tests and benches can use it.
//!
//! It keeps, per file, the durable content (as of its last `sync_data`) and
//! every write and `set_len` since, in order; per directory entry, whether it
//! is durable (as of the directory's last `sync_dir`). [`SimFs::power_cut`]
//! turns that into what a disk could hold after losing power: each file keeps
//! its durable content plus a random prefix of its unsynced operations, the
//! last of them possibly torn (a prefix of it survives, possibly followed by
//! garbage); a created file whose directory was not synced may vanish, a
//! removed one may come back. It can also fail the next sync or write with
//! EIO or ENOSPC, and "crash" after a number of operations (every later
//! operation fails, as if the process had died mid-call).
//!
//! Must not: be used by production code paths. Called by the log's tests and
//! benches.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fs::{LogFile, LogFs};
use crate::store::lock;

/// Linux `EIO`.
pub const EIO: i32 = 5;
/// Linux `ENOSPC`.
pub const ENOSPC: i32 = 28;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(content: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[start..end].copy_from_slice(data);
        }
        Op::SetLen(len) => content.resize(*len as usize, 0),
    }
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    /// Content as of the last `sync_data`.
    durable: Vec<u8>,
    /// Content as the process sees it (durable + pending applied).
    current: Vec<u8>,
    /// Writes and `set_len` since the last `sync_data`, in order.
    pending: Vec<Op>,
    /// Whether the directory entry exists now.
    linked: bool,
    /// Whether the directory entry exists as of the last `sync_dir`.
    linked_durable: bool,
}

/// Which operation a planned fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOn {
    /// `sync_data` or `sync_dir`.
    Sync,
    /// `write_at` or `set_len`.
    Write,
}

#[derive(Debug)]
struct State {
    files: BTreeMap<PathBuf, SimFile>,
    /// Bumped by every power cut: handles from before it fail.
    generation: u64,
    /// Mutating operations left before the simulated crash.
    crash_after: Option<u64>,
    crashed: bool,
    fault: Option<(FaultOn, i32)>,
    rng: StdRng,
    syncs: u64,
}

/// The simulated file system. A clone shares the same state.
#[derive(Debug, Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

struct SimHandle {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    generation: u64,
}

fn dead() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

impl State {
    /// Counts a mutating operation against the crash plan; `Err` once crashed.
    fn step(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(dead());
        }
        if let Some(n) = self.crash_after.as_mut() {
            if *n == 0 {
                self.crashed = true;
                return Err(dead());
            }
            *n -= 1;
        }
        Ok(())
    }

    fn fault(&mut self, on: FaultOn) -> io::Result<()> {
        match self.fault {
            Some((f, errno)) if f == on => {
                self.fault = None;
                Err(io::Error::from_raw_os_error(errno))
            }
            _ => Ok(()),
        }
    }
}

impl SimFs {
    /// A new, empty file system; `seed` drives every random choice of
    /// `power_cut`.
    pub fn new(seed: u64) -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(State {
                files: BTreeMap::new(),
                generation: 0,
                crash_after: None,
                crashed: false,
                fault: None,
                rng: StdRng::seed_from_u64(seed),
                syncs: 0,
            })),
        }
    }

    /// The next `sync_*` (or `write_at`/`set_len`) fails with `errno`, once.
    pub fn fail_next(&self, on: FaultOn, errno: i32) {
        lock(&self.state).fault = Some((on, errno));
    }

    /// After `ops` more mutating operations (create, write, set_len, sync,
    /// remove) every operation fails with EIO, as if the process had died;
    /// `power_cut` then decides what the disk holds.
    pub fn crash_after(&self, ops: u64) {
        lock(&self.state).crash_after = Some(ops);
    }

    /// How many `sync_data` and `sync_dir` calls succeeded so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Loses power: every file keeps its durable content plus a random prefix
    /// of the operations since its last sync, the last kept one possibly torn
    /// (with garbage); unsynced directory entries randomly persist or not.
    /// Afterwards everything is durable, the crash plan and faults are
    /// cleared, and handles from before the cut fail.
    pub fn power_cut(&self) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let rng = &mut st.rng;
        st.files.retain(|_, f| {
            let linked = if f.linked == f.linked_durable {
                f.linked
            } else {
                rng.random_bool(0.5)
            };
            if !linked {
                return false;
            }
            let mut content = std::mem::take(&mut f.durable);
            let keep = rng.random_range(0..=f.pending.len());
            for op in &f.pending[..keep] {
                apply(&mut content, op);
            }
            if keep < f.pending.len() && rng.random_bool(0.5) {
                // Tear the next operation: a prefix of it, maybe garbage after.
                if let Op::Write { offset, data } = &f.pending[keep] {
                    let cut = rng.random_range(0..data.len().max(1));
                    let mut torn = data[..cut.min(data.len())].to_vec();
                    if rng.random_bool(0.5) {
                        let garbage = rng.random_range(0..=data.len() - torn.len());
                        torn.extend((0..garbage).map(|_| rng.random::<u8>()));
                    }
                    apply(
                        &mut content,
                        &Op::Write {
                            offset: *offset,
                            data: torn,
                        },
                    );
                }
            }
            f.current = content.clone();
            f.durable = content;
            f.pending.clear();
            f.linked = true;
            f.linked_durable = true;
            true
        });
        st.generation += 1;
        st.crash_after = None;
        st.crashed = false;
        st.fault = None;
    }

    /// The process restarts without a power cut: the disk and the page cache
    /// keep what they hold (unsynced writes stay visible, and unsynced);
    /// the crash plan and faults are cleared; handles from before fail.
    pub fn restart(&self) {
        let mut st = lock(&self.state);
        st.generation += 1;
        st.crash_after = None;
        st.crashed = false;
        st.fault = None;
    }

    /// Flips one byte of a file's content (durable and current): bit rot.
    pub fn corrupt_byte(&self, path: &Path, offset: u64) -> io::Result<()> {
        let mut st = lock(&self.state);
        let f = st
            .files
            .get_mut(path)
            .filter(|f| f.linked)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let i = offset as usize;
        if i >= f.current.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        f.current[i] ^= 0x5a;
        if i < f.durable.len() {
            f.durable[i] ^= 0x5a;
        }
        Ok(())
    }

    /// A file's current length, if it exists.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let st = lock(&self.state);
        st.files
            .get(path)
            .filter(|f| f.linked)
            .map(|f| f.current.len() as u64)
    }

    fn handle(&self, path: &Path, generation: u64) -> Box<dyn LogFile> {
        Box::new(SimHandle {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
            generation,
        })
    }
}

impl SimHandle {
    fn with<T>(
        &self,
        mutating: bool,
        f: impl FnOnce(&mut State, &Path) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut st = lock(&self.state);
        if st.generation != self.generation {
            return Err(dead());
        }
        if mutating {
            st.step()?;
        } else if st.crashed {
            return Err(dead());
        }
        f(&mut st, &self.path)
    }
}

fn file_mut<'a>(st: &'a mut State, path: &Path) -> io::Result<&'a mut SimFile> {
    st.files
        .get_mut(path)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

impl LogFile for SimHandle {
    fn size(&self) -> io::Result<u64> {
        self.with(false, |st, p| Ok(file_mut(st, p)?.current.len() as u64))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(false, |st, p| {
            let f = file_mut(st, p)?;
            let start = (offset as usize).min(f.current.len());
            let n = buf.len().min(f.current.len() - start);
            buf[..n].copy_from_slice(&f.current[start..start + n]);
            Ok(n)
        })
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(true, |st, p| {
            st.fault(FaultOn::Write)?;
            let f = file_mut(st, p)?;
            let op = Op::Write {
                offset,
                data: buf.to_vec(),
            };
            apply(&mut f.current, &op);
            f.pending.push(op);
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(true, |st, p| {
            st.fault(FaultOn::Write)?;
            let f = file_mut(st, p)?;
            let op = Op::SetLen(len);
            apply(&mut f.current, &op);
            f.pending.push(op);
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with(true, |st, p| {
            st.fault(FaultOn::Sync)?;
            let f = file_mut(st, p)?;
            f.durable = f.current.clone();
            f.pending.clear();
            st.syncs += 1;
            Ok(())
        })
    }
}

impl LogFs for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implicit in the simulation (the log's one directory
        // is assumed durable).
        if lock(&self.state).crashed {
            return Err(dead());
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let mut st = lock(&self.state);
        st.step()?;
        st.fault(FaultOn::Write)?;
        if st.files.get(path).is_some_and(|f| f.linked) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let linked_durable = st.files.get(path).is_some_and(|f| f.linked_durable);
        st.files.insert(
            path.to_path_buf(),
            SimFile {
                linked: true,
                linked_durable,
                ..SimFile::default()
            },
        );
        let generation = st.generation;
        drop(st);
        Ok(self.handle(path, generation))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let st = lock(&self.state);
        if st.crashed {
            return Err(dead());
        }
        if !st.files.get(path).is_some_and(|f| f.linked) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let generation = st.generation;
        drop(st);
        Ok(self.handle(path, generation))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.step()?;
        st.fault(FaultOn::Sync)?;
        st.files.retain(|p, f| {
            if p.parent() == Some(dir) {
                f.linked_durable = f.linked;
            }
            f.linked || f.linked_durable
        });
        st.syncs += 1;
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = lock(&self.state);
        if st.crashed {
            return Err(dead());
        }
        Ok(st
            .files
            .iter()
            .filter(|(p, f)| f.linked && p.parent() == Some(dir))
            .filter_map(|(p, _)| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.step()?;
        st.fault(FaultOn::Write)?;
        let f = st
            .files
            .get_mut(path)
            .filter(|f| f.linked)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        f.linked = false;
        Ok(())
    }
}
