//! The server's snapshot files: each index generation's snapshot, written once to a file that
//! every process of the server maps read-only (one copy in the page cache, however many
//! backends search it). The index pages stay the truth: a file is a cache derived from them,
//! rebuilt when it is missing, damaged or of another generation.
//!
//! The protocol, after PostgreSQL's pg_internal.init:
//! - a file is written under a temporary name, fsynced and renamed into place (then the
//!   directory is fsynced); a published file is never written again;
//! - its name holds the generation's [`CacheKey`], and its footer repeats the key, so a file
//!   of another generation is never taken for this one;
//! - footer and sizes are checked at every open; the checksum, which reads the whole file, is
//!   checked by the first process that opens it after each server start (a stamp beside the
//!   file remembers that, with the file's identity: rewriting or replacing the file, or a
//!   restart, makes the next open check again);
//! - one process builds a missing file while the others wait for it ([`CacheDir::lock`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::snapshot::{key_hex as hex, CacheKey, Sealed, Snapshot};
use crate::IndexError;

/// What a snapshot file opens as: a faiss [`Snapshot`], or a [`Sealed`] payload.
pub trait SnapshotFile: Sized {
    fn open_file(path: &Path, verify_checksum: bool) -> Result<Self, IndexError>;
    fn key(&self) -> &CacheKey;
}

impl SnapshotFile for Snapshot {
    fn open_file(path: &Path, verify_checksum: bool) -> Result<Self, IndexError> {
        Snapshot::open_file(path, verify_checksum)
    }
    fn key(&self) -> &CacheKey {
        Snapshot::key(self)
    }
}

impl SnapshotFile for Sealed {
    fn open_file(path: &Path, verify_checksum: bool) -> Result<Self, IndexError> {
        Sealed::open_file(path, verify_checksum)
    }
    fn key(&self) -> &CacheKey {
        Sealed::key(self)
    }
}

/// A directory of snapshot files.
pub struct CacheDir {
    dir: PathBuf,
    fsync: bool,
}

/// What [`CacheDir::open`] found.
pub enum Opened<S> {
    Ready(S),
    Missing,
    /// Present but unusable (truncated, corrupt, another generation's): rebuild it.
    Damaged(IndexError),
}

/// Holds the build lock of one snapshot file; released when dropped (also when the process
/// dies: it is an flock).
pub struct CacheLock {
    _file: File,
}

impl CacheDir {
    pub fn new(dir: impl Into<PathBuf>) -> CacheDir {
        CacheDir {
            dir: dir.into(),
            fsync: true,
        }
    }

    /// Whether files are fsynced before they are renamed into place (a server running with
    /// `fsync = off` asks for no fsync anywhere, as pg_fsync does then).
    pub fn with_fsync(mut self, fsync: bool) -> CacheDir {
        self.fsync = fsync;
        self
    }

    /// The directory the files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of generation `key` of the index `owner` (a name unique to the index within
    /// the server, such as database and relfilenode: it lets older generations' files be
    /// found and removed).
    pub fn path(&self, owner: &str, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{owner}-{}.snap", hex(key)))
    }

    fn sibling(path: &Path, suffix: &str) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Maps the published file of `key`, if there is a sound one. `server_start` identifies
    /// the running server (its start time): the checksum is checked once per file and start.
    pub fn open<S: SnapshotFile>(
        &self,
        owner: &str,
        key: &CacheKey,
        server_start: i64,
    ) -> Opened<S> {
        let path = self.path(owner, key);
        let identity = match identity(&path, server_start) {
            Ok(identity) => identity,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Opened::Missing,
            Err(e) => {
                return Opened::Damaged(IndexError::Corrupt(format!("{}: {e}", path.display())))
            }
        };
        let stamp = Self::sibling(&path, ".verified");
        let verified = std::fs::read_to_string(&stamp).is_ok_and(|s| s == identity);
        match S::open_file(&path, !verified) {
            Ok(snapshot) if snapshot.key() != key => Opened::Damaged(IndexError::Corrupt(format!(
                "{}: holds another generation",
                path.display()
            ))),
            Ok(snapshot) => {
                if !verified {
                    // Best effort: without a stamp the next process checks the file again.
                    let _ = write_durably(&stamp, self.fsync, |w| w.write_all(identity.as_bytes()));
                }
                Opened::Ready(snapshot)
            }
            Err(e) => Opened::Damaged(e),
        }
    }

    /// Records that `key`'s file, just published by this process from bytes it computed, needs
    /// no checksum pass in this server start (`server_start` as for [`CacheDir::open`]): the
    /// first search after a rewrite then maps it without reading it all. Best effort.
    pub fn mark_verified(&self, owner: &str, key: &CacheKey, server_start: i64) {
        let path = self.path(owner, key);
        if let Ok(identity) = identity(&path, server_start) {
            let stamp = Self::sibling(&path, ".verified");
            let _ = write_durably(&stamp, self.fsync, |w| w.write_all(identity.as_bytes()));
        }
    }

    /// Takes the build lock of `key`'s file, calling `wait` (which may give up by unwinding,
    /// for a query cancel) every few milliseconds while another process holds it.
    pub fn lock(
        &self,
        owner: &str,
        key: &CacheKey,
        mut wait: impl FnMut(),
    ) -> io::Result<CacheLock> {
        std::fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::sibling(&self.path(owner, key), ".lock"))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(CacheLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    wait();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
    }

    /// Publishes `key`'s file with the bytes `write` produces (the caller holds the lock),
    /// replacing a damaged one, then removes the files of `owner`'s older generations but
    /// those of `also_keep` (the segments the index still searches; see
    /// [`CacheDir::remove_older`]).
    /// Processes that still map an older file keep searching it until they see the new
    /// generation (an unlinked file lives on while it is mapped).
    pub fn publish(
        &self,
        owner: &str,
        key: &CacheKey,
        also_keep: &[CacheKey],
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Published> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(owner, key);
        let _ = std::fs::remove_file(Self::sibling(&path, ".verified"));
        let file = write_durably(&path, self.fsync, write)?;
        self.remove_older(owner, key, also_keep);
        Ok(Published { path, file })
    }

    /// Removes the files of `owner`'s generations older than `keep` (snapshots, stamps, locks
    /// and the temporary files of writers that died; keys order as generations do, see
    /// [`crate::snapshot::generation_key`]). A newer generation's files stay: a backend that
    /// publishes an old generation late must not remove what a rewrite has just published.
    /// Those of `also_keep` stay too.
    pub fn remove_older(&self, owner: &str, keep: &CacheKey, also_keep: &[CacheKey]) {
        self.remove_files(owner, Some(keep), also_keep);
    }

    /// Removes every file of `owner` (its index was dropped).
    pub fn remove_all(&self, owner: &str) {
        self.remove_files(owner, None, &[]);
    }

    /// Removes the files of owners that `alive` says are gone (dropped or rebuilt indexes),
    /// once they are older than `grace`: an index being created publishes its file before the
    /// rest of the server can see it exists.
    pub fn sweep(&self, mut alive: impl FnMut(&str) -> bool, grace: std::time::Duration) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some((owner, _)) = name.split_once('-') else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= grace));
            if old && !alive(owner) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Removes the files of `owner`'s generations older than `keep` (all of them with None).
    /// A generation whose build lock someone holds keeps its files: it is being written. Its
    /// lock is taken while its files go, so nobody starts writing it meanwhile.
    fn remove_files(&self, owner: &str, keep: Option<&CacheKey>, also_keep: &[CacheKey]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{owner}-");
        let keep = keep.map(hex);
        let also_keep: Vec<String> = also_keep.iter().map(hex).collect();
        let mut generations: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            // `<key in hex>.snap`, then a suffix for the stamp, lock or temporary file.
            let Some((key, suffix)) = rest.split_once('.') else {
                continue;
            };
            let older = keep
                .as_ref()
                .is_none_or(|keep| key.len() == keep.len() && key.as_bytes() < keep.as_bytes());
            if older && suffix.starts_with("snap") && !also_keep.iter().any(|k| k == key) {
                generations
                    .entry(key.to_string())
                    .or_default()
                    .push(entry.path());
            }
        }
        for (key, files) in generations {
            let lock_path = self.dir.join(format!("{owner}-{key}.snap.lock"));
            let lock = match OpenOptions::new().write(true).open(&lock_path) {
                Ok(file) => match file.try_lock() {
                    Ok(()) => Some(file),
                    Err(_) => continue,
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(_) => continue,
            };
            for file in files.iter().filter(|f| **f != lock_path) {
                let _ = std::fs::remove_file(file);
            }
            if lock.is_some() {
                let _ = std::fs::remove_file(&lock_path);
            }
        }
    }
}

/// What identifies a file's contents in one server start: the start, the file's device, inode,
/// size and modification time (rewriting or replacing the file changes it).
fn identity(path: &Path, server_start: i64) -> io::Result<String> {
    let m = std::fs::metadata(path)?;
    Ok(format!(
        "{server_start} {} {} {} {}",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000
    ))
}

/// A file [`CacheDir::publish`] wrote.
pub struct Published {
    pub path: PathBuf,
    /// Open for reading, at its start: what was written can be read back even if the file is
    /// removed meanwhile.
    pub file: File,
}

/// Writes `path` as a whole or not at all: a temporary file in the same directory, fsynced,
/// renamed over `path`, and the directory fsynced so that the rename survives a crash (the
/// fsyncs only when `fsync`). The temporary file is removed on failure, also when `write`
/// unwinds (a query cancel). Returns the file, open for reading at its start.
pub fn write_durably(
    path: &Path,
    fsync: bool,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<File> {
    struct Temp(PathBuf, bool);
    impl Drop for Temp {
        fn drop(&mut self) {
            if !self.1 {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = Temp(
        CacheDir::sibling(path, &format!(".tmp{}", std::process::id())),
        false,
    );
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp.0)?;
    let mut file = io::BufWriter::with_capacity(1 << 20, file);
    write(&mut file)?;
    let mut file = file.into_inner().map_err(|e| e.into_error())?;
    if fsync {
        file.sync_all()?;
    }
    std::fs::rename(&temp.0, path)?;
    temp.1 = true;
    if fsync {
        File::open(dir)?.sync_all()?;
    }
    file.seek(io::SeekFrom::Start(0))?;
    Ok(file)
}
