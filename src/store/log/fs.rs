//! The record log's file layer: the few file-system calls the log makes
//! ([`LogFs`], [`LogFile`]) and their real implementation over `std::fs`
//! ([`StdFs`]). The simulated one for power-cut tests is in `super::sim`.
//!
//! Must not: buffer, retry or hide an error (the log latches on the first
//! one), or sync anything the log did not ask for. Called only by
//! `super` (`RecordLog`, `check`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// An open file of the log (a segment).
pub trait LogFile: Send {
    /// The file's current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads into `buf` from `offset`; returns how many bytes were read, fewer
    /// than `buf.len()` only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset` (not durable until `sync_data`).
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends the file (not durable until `sync_data`).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// `fdatasync`: makes every write and `set_len` before it durable.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The file-system calls the log makes. Paths are the log's own directory and
/// the segment files in it.
pub trait LogFs: Send + Sync {
    /// Creates the directory (and its parents) if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new, empty file; fails if it exists (never overwrites). The
    /// file's directory entry is durable only after `sync_dir`.
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// `fsync` of a directory: makes its entries (creations, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries in a directory, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Removes a file (durable only after `sync_dir`).
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

struct StdFile(File);

impl LogFile for StdFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl LogFs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            // Names that are not UTF-8 are not segments; they are skipped.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}
