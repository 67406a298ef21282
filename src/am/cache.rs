//! Which snapshot a backend searches. The index relation's pages are the truth; each
//! generation's snapshot is also written once to a file under the data directory
//! (`pg_stat_tmp/semantic`, left out of base backups and pg_rewind like the rest of
//! pg_stat_tmp), which every backend maps read-only: one copy in the page cache for the whole
//! server. The backend that finds the file missing or damaged rebuilds it from the pages while
//! the others wait (a standby builds its own). Where no file can be written, the backend
//! searches a private copy, with a WARNING. A backend keeps only the handle of the snapshot it
//! opened, keyed by relation; records appended since the snapshot are searched where they lie
//! (see scan.rs).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use semantic_encoder::Lru;
use semantic_index::cache_file::{CacheDir, CacheLock, Opened, SnapshotFile};
use semantic_index::layout::{Meta, SnapshotPages};
use semantic_index::{CacheKey, DeadPositions, IndexError, Snapshot};

use super::storage::read_snapshot_with;
use crate::errors::raise;

struct Open<S> {
    relfilenode: u32,
    key: CacheKey,
    snapshot: Rc<S>,
}

/// The snapshots of one index kind (`S`: a faiss [`Snapshot`] or a bm25 [`Sealed`]) that this
/// backend has open, by relation: the generation it searched last, up to
/// `semantic.max_cached_indexes` relations, least recently used first out.
pub struct OpenSnapshots<S> {
    open: RefCell<Lru<pg_sys::Oid, Open<S>>>,
}

impl<S> Default for OpenSnapshots<S> {
    fn default() -> Self {
        OpenSnapshots {
            open: RefCell::new(Lru::default()),
        }
    }
}

impl<S> OpenSnapshots<S> {
    /// What this backend opened of `meta`'s generation of `rel` (kept until the generation
    /// changes), else what `open_now` opens; None if the index has no snapshot (a real[] index
    /// built without rows) or `open_now` found its pages rewritten while reading them.
    ///
    /// # Safety
    /// `rel` is an open index relation of this kind and `meta` its metapage.
    pub unsafe fn get(
        &self,
        rel: pg_sys::Relation,
        meta: &Meta,
        open_now: impl FnOnce() -> Option<S>,
    ) -> Option<Rc<S>> {
        let key = meta.cache_key()?;
        // SAFETY: the caller's contract.
        let (oid, relfilenode) =
            unsafe { ((*rel).rd_id, crate::compat::relation_file(rel).number) };
        let open = self
            .open
            .borrow_mut()
            .get(&oid)
            .filter(|o| o.relfilenode == relfilenode && o.key == key)
            .map(|o| o.snapshot.clone());
        if open.is_some() {
            return open;
        }
        let snapshot = Rc::new(open_now()?);
        self.open.borrow_mut().insert(
            oid,
            Open {
                relfilenode,
                key,
                snapshot: snapshot.clone(),
            },
            crate::gucs::max_cached_indexes(),
        );
        Some(snapshot)
    }

    /// Forgets the snapshot of `oid` (its relation was rewritten by this backend).
    pub fn forget(&self, oid: pg_sys::Oid) {
        self.open.borrow_mut().remove(&oid);
    }

    /// `f` of the snapshot this backend has open for `oid`, if any.
    pub fn with_open<T>(&self, oid: pg_sys::Oid, f: impl FnOnce(&S) -> T) -> Option<T> {
        self.open.borrow().get(&oid).map(|o| f(&o.snapshot))
    }
}

/// The dead positions of one generation as far as its marks chain went (`marked` entries).
struct ReadMarks {
    relfilenode: u32,
    generation: u64,
    marked: u64,
    dead: Rc<DeadPositions>,
}

thread_local! {
    static OPEN: OpenSnapshots<Snapshot> = OpenSnapshots::default();
    static MARKS: RefCell<Lru<pg_sys::Oid, ReadMarks>> = RefCell::new(Lru::default());
}

/// The snapshot positions `meta`'s generation has marked dead, among `len`: read from the
/// marks chain once per VACUUM that marked some, then kept by this backend. Some(None) when
/// there are none; None if the index was rewritten while they were read. (faiss and bm25.)
pub unsafe fn dead_positions(
    rel: pg_sys::Relation,
    meta: &Meta,
    len: usize,
) -> Option<Option<Rc<DeadPositions>>> {
    if meta.marked == 0 {
        return Some(None);
    }
    // SAFETY: `rel` is an open index relation (the caller's contract).
    unsafe {
        let oid = (*rel).rd_id;
        let relfilenode = crate::compat::relation_file(rel).number;
        let cached = MARKS.with(|marks| {
            marks
                .borrow_mut()
                .get(&oid)
                .filter(|m| {
                    m.relfilenode == relfilenode
                        && m.generation == meta.generation
                        && m.marked == meta.marked
                })
                .map(|m| m.dead.clone())
        });
        if cached.is_some() {
            return Some(cached);
        }
        let positions = super::storage::read_marks(rel, meta)?;
        let dead = Rc::new(DeadPositions::new(len, positions));
        MARKS.with(|marks| {
            marks.borrow_mut().insert(
                oid,
                ReadMarks {
                    relfilenode,
                    generation: meta.generation,
                    marked: meta.marked,
                    dead: dead.clone(),
                },
                crate::gucs::max_cached_indexes(),
            )
        });
        Some(Some(dead))
    }
}

fn index_error(kind: &str, e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
        format!("{kind}: {e}"),
        Some("REINDEX the index."),
    )
}

/// The server's cache folder: files derived from what the database and the model directory
/// hold, left out of base backups and pg_rewind like the rest of pg_stat_tmp.
pub fn cache_root() -> PathBuf {
    // SAFETY: DataDir is set before any backend runs SQL.
    let data_dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(data_dir.to_string_lossy().as_ref()).join("pg_stat_tmp/semantic")
}

/// The server's snapshot directory.
pub fn cache_dir() -> CacheDir {
    // SAFETY: a plain read of the fsync setting.
    CacheDir::new(cache_root()).with_fsync(unsafe { pg_sys::enableFsync })
}

/// Names an index relation's files within the server: tablespace, database, relfilenode.
pub unsafe fn owner(rel: pg_sys::Relation) -> String {
    // SAFETY: `rel` is an open relation (the caller's contract).
    unsafe {
        let file = crate::compat::relation_file(rel);
        format!("{}.{}.{}", file.tablespace, file.database, file.number)
    }
}

/// Whether the index relation a file `owner` names still exists, as far as this backend can
/// tell (files of other databases are left to them).
unsafe fn owner_exists(owner: &str) -> bool {
    // SAFETY: reads the catalog inside the caller's transaction.
    unsafe {
        let parts: Vec<u32> = owner.split('.').filter_map(|p| p.parse().ok()).collect();
        let [spc, db, rel] = parts[..] else {
            return true;
        };
        if db != u32::from(pg_sys::MyDatabaseId) {
            return true;
        }
        crate::compat::relation_of_file(spc, rel) != pg_sys::InvalidOid
    }
}

/// The cache key of the generation an index with metapage `meta` writes next: its number and
/// random bytes (semantic_index::generation_key).
pub fn new_cache_key(meta: &Meta) -> CacheKey {
    let mut random = [0u8; 8];
    // SAFETY: fills the buffer it is given.
    if !unsafe { pg_sys::pg_strong_random(random.as_mut_ptr().cast(), random.len()) } {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "could not generate random bytes",
            None,
        );
    }
    semantic_index::generation_key(meta.generation + 1, random)
}

/// The build lock of `key`'s file; a query cancel ends the wait.
fn lock(dir: &CacheDir, owner: &str, key: &CacheKey) -> std::io::Result<CacheLock> {
    dir.lock(owner, key, || {
        pg_sys::check_for_interrupts!();
    })
}

/// A new generation's snapshot as [`publish`] wrote it: its file, or bytes in memory where no
/// file could be written.
pub enum Written {
    File(std::fs::File),
    Memory(Vec<u8>),
}

impl Written {
    /// Where the snapshot's vectors lie in it (see `snapshot::flat_vectors_range`), read
    /// without moving the file's position.
    pub fn flat_vectors_range(&self, dim: usize) -> Option<(u64, u64)> {
        use std::os::unix::fs::FileExt;
        match self {
            Written::File(file) => {
                let len = file.metadata().ok()?.len();
                semantic_index::snapshot::flat_vectors_range(len, dim, |at, buf| {
                    file.read_exact_at(buf, at)
                })
            }
            Written::Memory(bytes) => {
                semantic_index::snapshot::flat_vectors_range(bytes.len() as u64, dim, |at, buf| {
                    let at = at as usize;
                    let src = bytes
                        .get(at..at + buf.len())
                        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                    buf.copy_from_slice(src);
                    Ok(())
                })
            }
        }
    }

    /// Its length and a reader of it from the start, for the rewrite that copies it to pages.
    pub fn reader(&mut self) -> (u64, Box<dyn Read + '_>) {
        match self {
            Written::File(file) => {
                let len = file.metadata().map_or(0, |m| m.len());
                (len, Box::new(std::io::BufReader::new(file)))
            }
            Written::Memory(bytes) => (bytes.len() as u64, Box::new(&bytes[..])),
        }
    }
}

/// Where `encode`'s bytes go, and whether writing them failed (rather than making them).
struct FileSide<'a> {
    out: &'a mut dyn Write,
    failed: Option<String>,
}

impl Write for FileSide<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.out
            .write(bytes)
            .inspect_err(|e| self.failed = Some(e.to_string()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out
            .flush()
            .inspect_err(|e| self.failed = Some(e.to_string()))
    }
}

/// Writes the snapshot that `encode` makes (build, vacuum, fold) as the file of generation
/// `key`, before the metapage points to it, so that searches find the file ready; the bytes are
/// streamed, never all in memory. Older generations' files go, but those of `kept` (the
/// segments the new generation keeps). Where the file cannot be written (a missing directory, a full
/// disk), a WARNING, and `encode` again into memory: a failure only costs the first search of
/// each session a private copy. An error of `encode` itself (a cancel) is raised.
pub unsafe fn publish(
    rel: pg_sys::Relation,
    key: &CacheKey,
    kept: &[CacheKey],
    encode: impl Fn(&mut dyn Write) -> Result<(), IndexError>,
) -> Written {
    // SAFETY: `rel` is an open index relation (the caller's contract).
    unsafe {
        let dir = cache_dir();
        let owner = owner(rel);
        let mut encode_error = None;
        let published = lock(&dir, &owner, key).and_then(|_lock| {
            let published = dir.publish(&owner, key, kept, |w| {
                let mut side = FileSide {
                    out: w,
                    failed: None,
                };
                match encode(&mut side) {
                    Ok(()) => Ok(()),
                    Err(e) => match side.failed {
                        Some(io) => Err(std::io::Error::other(io)),
                        None => {
                            encode_error = Some(e);
                            Err(std::io::Error::other("not written"))
                        }
                    },
                }
            })?;
            dir.mark_verified(&owner, key, pg_sys::PgStartTime);
            Ok(published)
        });
        if let Some(e) = encode_error {
            super::build::interrupted_or_internal(e);
        }
        // Files of this database's dropped or rebuilt indexes go; an hour's grace covers
        // transactions that created an index and have not committed yet (a file removed too early
        // is only rebuilt by its first search).
        dir.sweep(
            |owner| owner_exists(owner),
            std::time::Duration::from_secs(3600),
        );
        match published {
            Ok(published) => Written::File(published.file),
            Err(e) => {
                // Once per index and generation: this runs once for each new generation.
                pgrx::warning!(
                    "index \"{}\": could not write its snapshot file in \"{}\": {e}; every \
                     session will search a private copy of it until the file can be written",
                    super::build::relation_name(rel),
                    dir.dir().display()
                );
                let mut bytes = Vec::new();
                encode(&mut bytes).unwrap_or_else(|e| super::build::interrupted_or_internal(e));
                Written::Memory(bytes)
            }
        }
    }
}

/// The searchable snapshot of `meta`'s generation, or None if the index has none (no rows
/// when it was built) or the snapshot chain was rewritten while being read.
pub unsafe fn snapshot(rel: pg_sys::Relation, meta: &Meta) -> Option<Rc<Snapshot>> {
    OPEN.with(|open| {
        // SAFETY: the caller's contract.
        unsafe {
            open.get(rel, meta, || {
                let key = meta.cache_key()?;
                open_or_build(
                    rel,
                    &meta.snapshot_pages(),
                    &key,
                    &[],
                    "faiss index",
                    |bytes| Snapshot::from_bytes(&bytes),
                )
            })
        }
    })
}

/// The snapshot file `key` of the `kind` index `rel` (whose pages are `pages`), mapped; built
/// from the pages when missing or damaged, by one backend while the others wait (which removes
/// older generations' files, but those of `kept`). Where no file can be written, a private copy
/// made by `from_pages` from the pages' bytes, with a WARNING. None if a chain was freed
/// while its pages were read. (faiss and bm25 indexes alike.)
pub unsafe fn open_or_build<S: SnapshotFile>(
    rel: pg_sys::Relation,
    pages: &SnapshotPages,
    key: &CacheKey,
    kept: &[CacheKey],
    kind: &str,
    from_pages: impl FnOnce(Vec<u8>) -> Result<S, IndexError>,
) -> Option<S> {
    // SAFETY: `rel` is an open index relation (the caller's contract).
    unsafe {
        let dir = cache_dir();
        let owner = owner(rel);
        let started = pg_sys::PgStartTime;
        if let Opened::Ready(snapshot) = dir.open(&owner, key, started) {
            return Some(snapshot);
        }
        let private = |why: String| -> Option<S> {
            pgrx::warning!(
                "{kind} \"{}\": {why}; this session searches a private copy",
                super::build::relation_name(rel)
            );
            let bytes = super::storage::read_snapshot(rel, pages)?;
            Some(from_pages(bytes).unwrap_or_else(|e| index_error(kind, e)))
        };
        let lock = match lock(&dir, &owner, key) {
            Ok(lock) => lock,
            Err(e) => return private(format!("cannot lock its snapshot file: {e}")),
        };
        // Whoever held the lock may have built it meanwhile.
        match dir.open(&owner, key, started) {
            Opened::Ready(snapshot) => return Some(snapshot),
            Opened::Damaged(e) => pgrx::log!(
                "{kind} \"{}\": rebuilding its snapshot file: {e}",
                super::build::relation_name(rel)
            ),
            Opened::Missing => {}
        }
        let mut rewritten = false;
        let written = dir.publish(&owner, key, kept, |w| {
            rewritten = !read_snapshot_with(rel, pages, |page| w.write_all(page))?;
            if rewritten {
                return Err(std::io::Error::other("the index was rewritten meanwhile"));
            }
            Ok(())
        });
        drop(lock);
        if rewritten {
            return None;
        }
        if let Err(e) = written {
            return private(format!("cannot write its snapshot file: {e}"));
        }
        match dir.open(&owner, key, started) {
            Opened::Ready(snapshot) => Some(snapshot),
            // Written from pages that are damaged themselves.
            Opened::Damaged(e) => index_error(kind, e),
            Opened::Missing => private("its snapshot file vanished".into()),
        }
    }
}

/// Forgets the snapshot of `oid` (its relation was rebuilt).
pub fn forget(oid: pg_sys::Oid) {
    OPEN.with(|open| open.forget(oid));
}

/// Vectors in the snapshot this backend opened for `oid`, and whether it is the mapped file.
pub fn opened(oid: pg_sys::Oid) -> Option<(usize, bool)> {
    OPEN.with(|open| open.with_open(oid, |s| (s.len(), s.is_mapped())))
}
