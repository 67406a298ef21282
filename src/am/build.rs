//! CREATE INDEX / REINDEX: scan the table, embed (text) or take (real[]) every value, build the
//! FAISS index and write records + snapshot to the index's pages. Progress is reported through
//! pg_stat_progress_create_index.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ColumnKind, Meta, Segment};
use semantic_index::records::{encode_record, text_hash, RecordKey};
use semantic_index::snapshot::encode_snapshot_into;
use semantic_index::tiers::segments_to_merge;
use semantic_index::IndexMetric;
use semantic_index::{tid_to_id, CacheKey, IndexError, VectorIndex};

use super::operators::vector_metric;
use super::options::IndexOptions;
use super::storage::{check_dimension, create_meta, cut, rewrite, Cut, Generation};
use super::vectors::{datum_text, embed_passages, prepare, VectorType};
use super::IndexKind;
use crate::errors::raise;
use crate::models::with_encoder;

/// Build phases, as pg_stat_progress_create_index shows them (see `ambuildphasename`).
pub const PHASE_EMBEDDING: i64 = 2;
pub const PHASE_TRAINING: i64 = 3;
pub const PHASE_ADDING: i64 = 4;
pub const PHASE_WRITING: i64 = 5;

#[pg_guard]
pub unsafe extern "C-unwind" fn ambuildphasename(phase: i64) -> *mut std::ffi::c_char {
    let name: &std::ffi::CStr = match phase {
        PHASE_EMBEDDING => c"embedding rows",
        PHASE_TRAINING => c"training",
        PHASE_ADDING => c"adding vectors",
        PHASE_WRITING => c"writing index pages",
        _ => return std::ptr::null_mut(),
    };
    name.as_ptr() as *mut _
}

fn progress(param: u32, value: i64) {
    unsafe { pg_sys::pgstat_progress_update_param(param as i32, value) };
}

/// Texts are embedded this many at a time while the table is scanned, so memory holds
/// vectors, not the whole table's text. Batches are length-sorted within a chunk: a large one
/// pads almost as little as sorting the whole table would.
const EMBED_CHUNK: usize = 2048;

/// Vectors are handed to a Flat or HNSW index this many at a time while the table is scanned
/// (see `VectorIndex::fill`), so the build never holds them twice.
const FILL_BATCH: usize = 4096;

struct BuildState {
    meta: Meta,
    index_name: String,
    /// The column's type, for a vector column.
    vector_type: Option<VectorType>,
    /// The vectors, row-major, with their FAISS ids, not yet handed to `filling` (all of them
    /// for kinds that cannot be filled); the text hash of every vector.
    ids: Vec<i64>,
    hashes: Vec<u64>,
    vectors: Vec<f32>,
    /// The index being filled while the table is scanned (Flat, HNSW over flat storage),
    /// made at the first vector; None for the other kinds.
    filling: Option<VectorIndex>,
    /// The table's estimated rows, the room `filling` starts with.
    expected_rows: usize,
    rows: u64,
    pending_keys: Vec<RecordKey>,
    pending_texts: Vec<String>,
}

impl BuildState {
    fn push(&mut self, key: &RecordKey, vector: Vec<f32>) {
        if self.meta.dim == 0 {
            check_dimension(&self.meta, vector.len());
            self.meta.dim = vector.len() as u32;
        }
        let vector = prepare(&self.meta, vector);
        if self.hashes.is_empty() {
            let mut index = self
                .meta
                .empty_index(self.meta.dim as usize)
                .unwrap_or_else(|e| {
                    raise(
                        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                        e.to_string(),
                        None,
                    )
                });
            let fills = index
                .begin_filling(self.expected_rows)
                .unwrap_or_else(|e| interrupted_or_internal(e));
            self.filling = fills.then_some(index);
        }
        self.ids.push(tid_to_id(key.block, key.offset));
        self.hashes.push(key.text_hash);
        self.vectors.extend_from_slice(&vector);
        if self.ids.len() >= FILL_BATCH {
            self.fill();
        }
    }

    /// Hands the vectors collected so far to the index being filled, if there is one.
    fn fill(&mut self) {
        if let Some(index) = &mut self.filling {
            index
                .fill(&self.ids, &self.vectors)
                .unwrap_or_else(|e| interrupted_or_internal(e));
            self.ids.clear();
            self.vectors.clear();
        }
    }

    fn flush_texts(&mut self) {
        if self.pending_texts.is_empty() {
            return;
        }
        let texts = std::mem::take(&mut self.pending_texts);
        let keys = std::mem::take(&mut self.pending_keys);
        // Rows counted so far include this chunk's; progress moves through it batch by batch.
        let before = self.rows - texts.len() as u64;
        let embedded = embed_passages(&self.meta, &self.index_name, &texts, |done| {
            progress(
                pg_sys::PROGRESS_CREATEIDX_TUPLES_DONE,
                (before + done as u64) as i64,
            )
        });
        for (key, vectors) in keys.iter().zip(embedded) {
            for v in vectors {
                self.push(key, v);
            }
        }
        progress(pg_sys::PROGRESS_CREATEIDX_TUPLES_DONE, self.rows as i64);
    }
}

impl BuildState {
    /// One row of the build scan: a text to embed (in chunks) or a vector.
    fn row(&mut self, (block, offset): (u32, u16), value: pg_sys::Datum) {
        self.rows += 1;
        match self.meta.kind {
            ColumnKind::Text => {
                // SAFETY: a non-null value of the index's text column.
                let text = unsafe { datum_text(value) };
                self.pending_keys.push(RecordKey {
                    block,
                    offset,
                    text_hash: text_hash(&text),
                });
                self.pending_texts.push(text);
                if self.pending_texts.len() >= EMBED_CHUNK {
                    self.flush_texts();
                }
            }
            ColumnKind::Vector => {
                // SAFETY: a non-null value of the index's vector column.
                let vector = unsafe { self.vector_type.expect("a vector column").floats(value) };
                let key = RecordKey {
                    block,
                    offset,
                    text_hash: 0,
                };
                self.push(&key, vector)
            }
        }
    }
}

/// A memory context reset after every row a build scan hands over, as pgvector's build does:
/// detoasted values and analysed texts are freed row by row, so CREATE INDEX holds no more
/// than the index itself needs, whatever the table's size.
struct RowContext(PgMemoryContexts);

impl RowContext {
    /// Runs `f` with the row context current, then frees what it allocated there.
    fn run<T>(&mut self, f: impl FnOnce() -> T) -> T {
        // SAFETY: the context is ours and lives as long as self; the previous one is current
        // again when `f` returns (an error aborts the transaction, which resets it), and
        // nothing allocated in it outlives the row.
        unsafe {
            let result = self.0.switch_to(|_| f());
            self.0.reset();
            result
        }
    }
}

struct RowScan<'a> {
    context: RowContext,
    row: &'a mut dyn FnMut((u32, u16), pg_sys::Datum),
}

/// The build scan of faiss and bm25 indexes alike: `row` gets the TID and value of every row
/// whose (one) indexed column is not NULL, in a memory context reset after each row. Returns
/// the heap tuples scanned.
pub unsafe fn scan_rows(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
    mut row: impl FnMut((u32, u16), pg_sys::Datum),
) -> f64 {
    let mut scan = RowScan {
        context: RowContext(PgMemoryContexts::new("semantic build row")),
        row: &mut row,
    };
    // SAFETY: the relations and index info of the caller's ambuild; the callback gets `scan`.
    unsafe {
        pg_sys::table_index_build_scan(
            heap,
            index,
            index_info,
            true,
            true,
            Some(row_callback),
            &mut scan as *mut RowScan as *mut std::ffi::c_void,
            std::ptr::null_mut(),
        )
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn row_callback(
    _index: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    _alive: bool,
    scan: *mut std::ffi::c_void,
) {
    // SAFETY: table_index_build_scan calls this with a valid TID, values and isnull of the
    // index's one column, and the RowScan scan_rows gave it.
    unsafe {
        if *isnull {
            return;
        }
        let scan = &mut *(scan as *mut RowScan);
        let (tid, value) = (tid_parts(tid), *values);
        scan.context.run(|| (scan.row)(tid, value));
    }
}

pub unsafe fn tid_parts(tid: pg_sys::ItemPointer) -> (u32, u16) {
    // SAFETY: `tid` points to a valid ItemPointer (the caller's contract).
    unsafe {
        let t = &*tid;
        let block = (u32::from(t.ip_blkid.bi_hi) << 16) | u32::from(t.ip_blkid.bi_lo);
        (block, t.ip_posid)
    }
}

pub unsafe fn relation_name(rel: pg_sys::Relation) -> String {
    // SAFETY: `rel` is an open relation: its rd_rel lives while it is open.
    unsafe {
        std::ffi::CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The dimension a pgvector column declares (its type modifier), if it declares one.
unsafe fn declared_dimension(index: pg_sys::Relation) -> Option<usize> {
    // SAFETY: `index` is an open index relation (the caller's contract).
    let (typid, typmod) = unsafe {
        let tupdesc = pgrx::PgTupleDesc::from_pg_unchecked((*index).rd_att);
        let attribute = tupdesc.get(0).expect("one column");
        (attribute.atttypid, attribute.atttypmod)
    };
    match VectorType::of(typid) {
        Some(VectorType::PgVector | VectorType::PgHalfvec) if typmod > 0 => Some(typmod as usize),
        _ => None,
    }
}

/// The metapage of a new index: what its options and (for text) its model say.
pub unsafe fn initial_meta(index: pg_sys::Relation) -> Meta {
    // SAFETY: `index` is an open faiss index relation (the caller's contract).
    unsafe {
        let options = IndexOptions::of(index);
        let mut meta = match options.kind {
            ColumnKind::Text => {
                let (dim, similarity, fingerprint) = with_encoder(&options.model, |e| {
                    let m = e.manifest();
                    Ok((m.dimension, m.similarity, m.fingerprint.clone()))
                });
                let metric = options.metric.unwrap_or(match similarity {
                    semantic_encoder::Similarity::Cosine => IndexMetric::Cosine,
                    semantic_encoder::Similarity::Dot => IndexMetric::Dot,
                });
                let mut meta = Meta::new(
                    ColumnKind::Text,
                    metric,
                    options.long_text,
                    dim as u32,
                    &options.factory,
                );
                meta.model = options.model.clone();
                meta.fingerprint = fingerprint;
                meta
            }
            ColumnKind::Vector => Meta::new(
                ColumnKind::Vector,
                vector_metric(index, options.metric),
                options.long_text,
                0,
                &options.factory,
            ),
        };
        meta.ef_construction = options.ef_construction;
        if !meta.metric.supports_factory(&meta.factory) {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "metric \"{}\" needs a Flat or HNSW factory, not \"{}\": FAISS computes L1 \
                     distances over exact vectors only",
                    meta.metric.name(),
                    meta.factory
                ),
                Some("Use factory 'Flat' or 'HNSW16' (m = 16), or another metric."),
            );
        }
        // Check the factory string now, before any work: FAISS itself is the judge.
        let probe_dim = if meta.dim == 0 { 8 } else { meta.dim as usize };
        if let Err(e) = meta.empty_index(probe_dim) {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "invalid faiss option \"factory\" = \"{}\": {e}",
                    meta.factory
                ),
                Some("Use a FAISS index factory string such as Flat, HNSW32 or IVF100,Flat."),
            );
        }
        if let Some(declared) = declared_dimension(index) {
            // Refused now rather than at every INSERT: no row could enter the index.
            check_dimension(&meta, declared);
        }
        meta.generation = 0;
        meta
    }
}

/// Whether this backend has a query cancel or a termination pending: what FAISS, polling from
/// its worker threads, stops for (only reads two flags the signal handlers set).
fn cancel_or_terminate_pending() -> bool {
    // SAFETY: plain reads of sig_atomic_t globals.
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
            || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
    }
}

/// A FAISS error; when FAISS stopped because of a cancel, PostgreSQL's own error for it.
pub(crate) fn interrupted_or_internal(e: semantic_index::IndexError) -> ! {
    pg_sys::check_for_interrupts!();
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None)
}

/// A new generation's snapshot, made but not yet written.
pub struct NewSnapshot {
    /// None for a real[] index that has seen no vector.
    index: Option<VectorIndex>,
    /// The text hash of each of its vectors (text indexes).
    hashes: Vec<u64>,
    /// Its positions that stay marked dead (a fold's, carried from the snapshot it extends).
    pub marks: Vec<u32>,
    /// Whether it extends the current snapshot (a fold), whose vectors it then starts with.
    pub extends: bool,
}

/// The snapshot of a FAISS index over `ids`/`vectors` with the rows' text hashes: a new index
/// (trained on them first for IVF-style factories), or `base` (a private copy of the current
/// snapshot, or the index a build filled while it scanned, with its text hashes) with them
/// added and linked. What build, vacuum and fold write.
/// `vectors` is freed once added when the FAISS index keeps them exactly (the records chain
/// then needs none), so that FAISS holds the only copy.
pub fn snapshot(
    meta: &Meta,
    base: Option<(VectorIndex, Vec<u64>)>,
    ids: &[i64],
    hashes: &[u64],
    vectors: &mut Vec<f32>,
) -> NewSnapshot {
    let dim = meta.dim as usize;
    if dim == 0 {
        // A real[] index that has seen no vector: nothing to snapshot.
        return NewSnapshot {
            index: None,
            hashes: Vec::new(),
            marks: Vec::new(),
            extends: false,
        };
    }
    semantic_index::set_interrupt_check(cancel_or_terminate_pending);
    // FAISS trains and links the graph with semantic.threads OpenMP threads (they run FAISS
    // code only, never PostgreSQL's), back to one when this returns or raises.
    struct FaissThreads;
    impl Drop for FaissThreads {
        fn drop(&mut self) {
            semantic_index::set_threads(1);
        }
    }
    semantic_index::set_threads(crate::gucs::threads());
    let _single_again = FaissThreads;
    let (mut index, mut all_hashes) = base.unwrap_or_else(|| {
        let index = meta.empty_index(dim).unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                e.to_string(),
                None,
            )
        });
        (index, Vec::new())
    });
    if index.needs_training() {
        progress(pg_sys::PROGRESS_CREATEIDX_SUBPHASE, PHASE_TRAINING);
        index.train(vectors).unwrap_or_else(|e| {
            pg_sys::check_for_interrupts!(); // k-means stops for a cancel too
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("cannot train faiss index \"{}\": {e}", meta.factory),
                Some("Build IVF indexes once the table holds enough rows, or use Flat or HNSW32."),
            )
        });
    }
    progress(pg_sys::PROGRESS_CREATEIDX_SUBPHASE, PHASE_ADDING);
    // In one call: FAISS links an HNSW graph's upper layers before its bottom layer within a
    // call, and slices of a few thousand rows cost recall at a million. A cancel still stops it:
    // FAISS polls the backend's pending cancel/terminate flags.
    index
        .add(ids, vectors)
        .unwrap_or_else(|e| interrupted_or_internal(e));
    // What a build handed over while it scanned the table is linked now, in the same call.
    index
        .link_filled()
        .unwrap_or_else(|e| interrupted_or_internal(e));
    if index.stores_exact_vectors() {
        *vectors = Vec::new();
    }
    if meta.kind == ColumnKind::Text {
        all_hashes.extend_from_slice(hashes);
    } else {
        all_hashes.clear();
    }
    NewSnapshot {
        index: Some(index),
        hashes: all_hashes,
        marks: Vec::new(),
        extends: false,
    }
}

/// Every row's records, for the pages of an index whose snapshot does not keep vectors.
pub fn encode_records(ids: &[i64], hashes: &[u64], vectors: &[f32], dim: usize) -> Vec<u8> {
    let mut records = Vec::with_capacity(ids.len() * semantic_index::record_size(dim));
    for (i, &id) in ids.iter().enumerate() {
        let (block, offset) = semantic_index::id_to_tid(id);
        let key = RecordKey {
            block,
            offset,
            text_hash: hashes.get(i).copied().unwrap_or(0),
        };
        encode_record(&key, &vectors[i * dim..(i + 1) * dim], &mut records);
    }
    records
}

/// A new generation's snapshot and counts (see [`write_generation`]).
pub struct NewGeneration<'a, E> {
    /// Writes the snapshot, sealed with the generation's key; None when there is none (a
    /// real[] index with no vector yet). Dropped, with what it holds, once the snapshot is
    /// written.
    pub encode: Option<E>,
    pub snapshot_vectors: u64,
    pub snapshot_has_vectors: bool,
    pub rows: u64,
    /// Snapshot positions still marked dead.
    pub marks: &'a [u32],
    /// Snapshots of earlier generations that stay (bm25 segments), oldest first;
    /// `snapshot_vectors` counts their documents too. With `split_vectors`: the segments that
    /// hold the first of the snapshot's vectors.
    pub kept: Vec<Segment>,
    /// Whether the snapshot's vectors go to segments of their own (a faiss index that keeps
    /// them as flat codes), which later folds keep.
    pub split_vectors: bool,
}

/// Writes a new generation of `index` (of `kind`) from `cut`, as build, fold and compaction do
/// for both index kinds: the snapshot's file first (so searches find it ready), then the pages,
/// copied from the file, so the serialised snapshot is never all in memory; the records chain
/// comes from `records`, asked for once the snapshot is written and what encoding it held is
/// freed. Then this backend forgets the old generation and gives the freed memory back.
///
/// # Safety
/// `index` is an open index of `kind` that the caller holds locked against other rewrites.
pub unsafe fn write_generation<E, R>(
    index: pg_sys::Relation,
    kind: IndexKind,
    cut: Cut,
    new: NewGeneration<'_, E>,
    records: impl FnOnce() -> R,
) where
    E: Fn(&CacheKey, &mut dyn std::io::Write) -> Result<(), IndexError>,
    R: AsRef<[u8]>,
{
    let key = super::cache::new_cache_key(&cut.meta);
    // SAFETY: the caller's contract.
    unsafe {
        let kept: Vec<CacheKey> = new.kept.iter().filter_map(|s| s.key()).collect();
        let mut written = new
            .encode
            .map(|encode| super::cache::publish(index, &key, &kept, |w| encode(&key, w)));
        let records = records();
        let dim = cut.meta.dim as usize;
        let vectors = match &written {
            Some(written) if new.split_vectors => written.flat_vectors_range(dim),
            _ => None,
        };
        // Kept segments hold vectors only where the snapshot's vectors were found.
        let kept = if vectors.is_none() && new.split_vectors {
            Vec::new()
        } else {
            new.kept
        };
        let (snapshot_bytes, mut snapshot) = match &mut written {
            Some(written) => written.reader(),
            None => (0, Box::new(std::io::empty()) as Box<dyn std::io::Read>),
        };
        rewrite(
            index,
            cut,
            dim,
            Generation {
                records: records.as_ref(),
                rows: new.rows,
                snapshot: &mut snapshot,
                snapshot_bytes,
                cache_key: key,
                snapshot_vectors: new.snapshot_vectors,
                snapshot_has_vectors: new.snapshot_has_vectors,
                marks: new.marks,
                kept,
                vectors,
            },
        );
        kind.forget_snapshot(index);
    }
    super::release_freed_memory();
}

/// [`write_generation`] of a faiss index: `new`'s FAISS index and hashes are the snapshot;
/// `records` gives every row's records, asked for only when the snapshot does not keep the
/// vectors itself.
pub unsafe fn write_faiss_generation(
    index: pg_sys::Relation,
    cut: Cut,
    records: impl FnOnce() -> Vec<u8>,
    rows: u64,
    new: NewSnapshot,
) {
    let NewSnapshot {
        index: faiss,
        hashes,
        marks,
        extends,
    } = new;
    let (vectors, has_vectors) = faiss.as_ref().map_or((0, false), |faiss| {
        (faiss.len() as u64, faiss.stores_exact_vectors())
    });
    // A fold keeps the vector segments of the snapshot it extends, but for the newest ones of
    // the tier its own vectors fill (see semantic_index::tiers), which it writes again with
    // them.
    let kept = if extends && cut.meta.vectors_at.is_some() {
        let sizes: Vec<u64> = cut.meta.segments.iter().map(|s| s.documents).collect();
        let folded = vectors.saturating_sub(sizes.iter().sum());
        let merged = segments_to_merge(&sizes, folded, crate::gucs::max_appended());
        cut.meta.segments[..sizes.len() - merged].to_vec()
    } else {
        Vec::new()
    };
    let new = NewGeneration {
        encode: faiss.map(|faiss| {
            move |key: &CacheKey, w: &mut dyn std::io::Write| {
                encode_snapshot_into(&faiss, &hashes, key, w)
            }
        }),
        snapshot_vectors: vectors,
        snapshot_has_vectors: has_vectors,
        rows,
        marks: &marks,
        kept,
        split_vectors: has_vectors,
    };
    // SAFETY: the caller's contract.
    unsafe {
        write_generation(index, IndexKind::Faiss, cut, new, || {
            if has_vectors {
                Vec::new()
            } else {
                records()
            }
        })
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: PostgreSQL's index AM interface calls this with the open heap and index and their IndexInfo.
    unsafe {
        let meta = initial_meta(index);
        if meta.dim != 0 {
            check_dimension(&meta, meta.dim as usize);
        }
        let mut state = BuildState {
            meta,
            index_name: relation_name(index),
            vector_type: VectorType::of_index(index),
            ids: Vec::new(),
            vectors: Vec::new(),
            filling: None,
            expected_rows: (*(*heap).rd_rel).reltuples.max(0.0) as usize,
            rows: 0,
            pending_keys: Vec::new(),
            hashes: Vec::new(),
            pending_texts: Vec::new(),
        };
        progress(pg_sys::PROGRESS_CREATEIDX_SUBPHASE, PHASE_EMBEDDING);
        progress(
            pg_sys::PROGRESS_CREATEIDX_TUPLES_TOTAL,
            (*(*heap).rd_rel).reltuples.max(0.0) as i64,
        );
        let heap_tuples = scan_rows(heap, index, index_info, |tid, value| state.row(tid, value));
        state.flush_texts();
        state.fill();

        let filled = state.filling.take().map(|index| (index, Vec::new()));
        let new = snapshot(
            &state.meta,
            filled,
            &state.ids,
            &state.hashes,
            &mut state.vectors,
        );
        progress(pg_sys::PROGRESS_CREATEIDX_SUBPHASE, PHASE_WRITING);
        create_meta(index, &state.meta);
        let dim = state.meta.dim as usize;
        write_faiss_generation(
            index,
            cut(index),
            || encode_records(&state.ids, &state.hashes, &state.vectors, dim),
            state.rows,
            new,
        );

        let mut result = PgBox::<pg_sys::IndexBuildResult>::alloc0();
        result.heap_tuples = heap_tuples;
        result.index_tuples = state.rows as f64;
        result.into_pg()
    }
}

/// Unlogged tables would need an init fork; they are refused rather than half supported.
#[pg_guard]
pub unsafe extern "C-unwind" fn ambuildempty(_index: pg_sys::Relation) {
    raise(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "faiss indexes on unlogged tables are not supported",
        None,
    );
}
