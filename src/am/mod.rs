//! The `faiss` index access method: the handler and its SQL (access method, operator
//! classes). One file per phase: build, insert, scan, vacuum (and folding), cost; pages in
//! storage, the server's shared snapshot files in cache; which operator an index serves in
//! operators.

pub(crate) mod appended;
pub(crate) mod build;
mod cache;
pub(crate) mod cost;
pub(crate) mod fold_worker;
mod insert;
pub(crate) mod operators;
pub mod options;
pub(crate) mod ordered;
pub mod scan;
pub(crate) mod storage;
pub(crate) mod vacuum;
pub(crate) mod vectors;

pub use cache::{cache_root, dead_positions, open_or_build, OpenSnapshots};
pub use insert::append_row;

/// Gives the heap memory a rewrite freed (a snapshot's postings or FAISS buffers, the rows it
/// read) back to the system: glibc keeps the free chunks of a fragmented heap in the backend
/// until it exits (74 MB after a 100,000-row bm25 build, 341 MB at 1M, measured).
pub fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free memory; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::IndexMetric;

#[pg_extern(sql = "
CREATE FUNCTION faiss_amhandler(internal) RETURNS index_am_handler
    PARALLEL SAFE IMMUTABLE STRICT LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
CREATE ACCESS METHOD faiss TYPE INDEX HANDLER faiss_amhandler;
COMMENT ON ACCESS METHOD faiss IS 'FAISS vector index over text (embedded), real[] or pgvector columns';
")]
fn faiss_amhandler(_fcinfo: pg_sys::FunctionCallInfo) -> PgBox<pg_sys::IndexAmRoutine> {
    let mut am = ordered_am_routine();

    am.ambuild = Some(build::ambuild);
    am.ambuildempty = Some(build::ambuildempty);
    am.aminsert = Some(insert::aminsert);
    am.ambulkdelete = Some(vacuum::ambulkdelete);
    am.amvacuumcleanup = Some(vacuum::amvacuumcleanup);
    am.amcostestimate = Some(cost::amcostestimate);
    am.amoptions = Some(options::amoptions);
    am.ambuildphasename = Some(build::ambuildphasename);
    am.amvalidate = Some(amvalidate);
    am.ambeginscan = Some(scan::ambeginscan);
    am.amrescan = Some(scan::amrescan);
    am.amgettuple = Some(scan::amgettuple);
    am.amendscan = Some(scan::amendscan);
    am.into_pg_boxed()
}

/// What faiss and bm25 indexes can do: one column, no plain scans, `ORDER BY col <op> query`
/// only. The handlers add their own callbacks.
pub fn ordered_am_routine() -> PgBox<pg_sys::IndexAmRoutine, pgrx::AllocatedByRust> {
    let mut am =
        unsafe { PgBox::<pg_sys::IndexAmRoutine>::alloc_node(pg_sys::NodeTag::T_IndexAmRoutine) };
    // faiss numbers its operators by metric (IndexMetric::strategy); bm25 uses 1.
    am.amstrategies = IndexMetric::ALL.len() as u16;
    am.amsupport = 0;
    am.amoptsprocnum = 0;
    am.amcanorder = false;
    am.amcanorderbyop = true;
    am.amcanbackward = false;
    am.amcanunique = false;
    am.amcanmulticol = false;
    am.amoptionalkey = true;
    am.amsearcharray = false;
    am.amsearchnulls = false;
    am.amstorage = false;
    am.amclusterable = false;
    am.ampredlocks = false;
    am.amcanparallel = false;
    am.amcaninclude = false;
    am.amusemaintenanceworkmem = false;
    am.amparallelvacuumoptions = pg_sys::VACUUM_OPTION_NO_PARALLEL as u8;
    am.amkeytype = pg_sys::InvalidOid;
    am
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amvalidate(_opclass: pg_sys::Oid) -> bool {
    true
}

extension_sql!(
    "
CREATE OPERATOR CLASS faiss_text_ops DEFAULT FOR TYPE text USING faiss AS
    OPERATOR 1 <=> (text, text) FOR ORDER BY float_ops,
    OPERATOR 2 <=> (text, real[]) FOR ORDER BY float_ops;
CREATE OPERATOR CLASS faiss_real_ops DEFAULT FOR TYPE real[] USING faiss AS
    OPERATOR 1 <=> (real[], real[]) FOR ORDER BY float_ops,
    OPERATOR 2 <-> (real[], real[]) FOR ORDER BY float_ops,
    OPERATOR 3 <#> (real[], real[]) FOR ORDER BY float_ops,
    OPERATOR 4 <+> (real[], real[]) FOR ORDER BY float_ops;
",
    name = "faiss_opclasses",
    requires = [faiss_amhandler, "semantic_operators"]
);

/// The extension's two index access methods, which share one page protocol and one set of
/// maintenance entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    Faiss,
    Bm25,
}

impl IndexKind {
    fn access_method(self) -> &'static std::ffi::CStr {
        match self {
            IndexKind::Faiss => c"faiss",
            IndexKind::Bm25 => c"bm25",
        }
    }

    /// The kind of the index relation `rel`, if it is one of ours.
    ///
    /// # Safety
    /// `rel` is an open relation.
    pub unsafe fn of(rel: pg_sys::Relation) -> Option<IndexKind> {
        // SAFETY: the caller's open relation; a missing access method is no error here.
        unsafe {
            let relam = (*(*rel).rd_rel).relam;
            [IndexKind::Faiss, IndexKind::Bm25]
                .into_iter()
                .find(|k| relam == pg_sys::get_index_am_oid(k.access_method().as_ptr(), true))
        }
    }

    /// `index`'s kind; an error naming `wanted` (the kinds the caller takes) otherwise.
    ///
    /// # Safety
    /// `index` is an open relation.
    pub unsafe fn expect(index: &pgrx::PgRelation, wanted: &[IndexKind]) -> IndexKind {
        // SAFETY: the caller's open relation.
        match unsafe { IndexKind::of(index.as_ptr()) } {
            Some(kind) if wanted.contains(&kind) => kind,
            _ => {
                let names: Vec<&str> = wanted
                    .iter()
                    .map(|k| k.access_method().to_str().expect("ASCII"))
                    .collect();
                crate::errors::raise(
                    PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                    format!("\"{}\" is not a {} index", index.name(), names.join(" or ")),
                    None,
                )
            }
        }
    }

    /// Drops this backend's handle of `index`'s snapshot (after this backend rewrote it).
    ///
    /// # Safety
    /// `index` is an open index of this kind.
    pub unsafe fn forget_snapshot(self, index: pg_sys::Relation) {
        match self {
            // SAFETY: the caller's open index.
            IndexKind::Faiss => cache::forget(unsafe { (*index).rd_id }),
            IndexKind::Bm25 => crate::lexical::forget_snapshot(index),
        }
    }

    /// Folds the rows appended to `index` (of this kind) into a new snapshot; returns how many
    /// there were.
    ///
    /// # Safety
    /// `index` is an open index of this kind.
    pub unsafe fn fold(self, index: pg_sys::Relation) -> u64 {
        // SAFETY: the caller's contract.
        unsafe {
            match self {
                IndexKind::Faiss => vacuum::fold(index),
                IndexKind::Bm25 => crate::lexical::fold(index),
            }
        }
    }
}

/// The metric a faiss index ranks by (`cosine`, `dot`, `l2` or `l1`): what semantic_search
/// needs to turn distances into scores, without semantic_index_info's sizes (which on a Citus
/// coordinator are read from every shard).
#[pg_extern(stable, strict)]
fn semantic_index_metric(index: pgrx::PgRelation) -> String {
    // SAFETY: an open index relation, checked to be a faiss one.
    unsafe {
        IndexKind::expect(&index, &[IndexKind::Faiss]);
        storage::read_meta(index.as_ptr()).metric.name().to_string()
    }
}

/// What a faiss index holds: its model and settings, sizes and free space, the records
/// appended since its snapshot, and the snapshot this backend searches (its vectors, and
/// whether it is the server's shared file; NULL when this backend has opened none).
#[pg_extern(stable, strict)]
#[allow(clippy::type_complexity)] // the SQL result row
fn semantic_index_info(
    index: pgrx::PgRelation,
) -> TableIterator<
    'static,
    (
        name!(model, String),
        name!(fingerprint, String),
        name!(metric, String),
        name!(factory, String),
        name!(ef_construction, i32),
        name!(long_text, String),
        name!(dimension, i32),
        name!(rows, i64),
        name!(vectors, i64),
        name!(generation, i64),
        name!(pages, i64),
        name!(free_pages, i64),
        name!(appended, i64),
        name!(cached_vectors, Option<i64>),
        name!(shared, Option<bool>),
    ),
> {
    unsafe {
        IndexKind::expect(&index, &[IndexKind::Faiss]);
        let rel = index.as_ptr();
        let meta = storage::read_meta(rel);
        let opened = cache::opened((*rel).rd_id);
        let pages = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        let lower = |s: String| s.to_lowercase();
        // A Citus coordinator's index is an empty shell: the shards hold the rows.
        let counts = crate::citus::shard_sums(
            (*rel).rd_id,
            &["rows", "vectors", "pages", "free_pages", "appended"],
        )
        .unwrap_or_else(|| {
            vec![
                meta.rows as i64,
                meta.record_count as i64,
                i64::from(pages),
                meta.free_blocks() as i64,
                meta.appended() as i64,
            ]
        });
        TableIterator::once((
            meta.model.clone(),
            meta.fingerprint.clone(),
            meta.metric.name().to_string(),
            meta.factory.clone(),
            meta.ef_construction as i32,
            lower(format!("{:?}", meta.long_text)),
            meta.dim as i32,
            counts[0],
            counts[1],
            meta.generation as i64,
            counts[2],
            counts[3],
            counts[4],
            opened.map(|(n, _)| n as i64),
            opened.map(|(_, shared)| shared),
        ))
    }
}
