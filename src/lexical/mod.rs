//! The `bm25` index access method: Okapi BM25 over a text column, through a PostgreSQL text
//! search configuration. A second access method rather than a part of the faiss index: a
//! lexical index is useful alone (no model, no embeddings), has its own options and
//! maintenance, and hybrid search joins the two on the same column. Its pages follow the faiss
//! index's protocol (src/am/storage.rs): the metapage, a records chain of row keys, and a
//! snapshot (`semantic_lexical`: posting lists with score bounds, sealed with the generation's
//! key and shared through the server's snapshot file like a faiss one) covering the rows up to
//! the snapshot's end; rows appended since are scored exactly from the terms chain, where each
//! insert stores its row analysed (`semantic_lexical::tail`).
//! One file per phase: build, insert, scan, vacuum.

mod analyze;
mod build;
mod cache;
mod heap;
mod insert;
mod options;
mod scan;
mod statistics;
mod vacuum;

pub(crate) use cache::forget as forget_snapshot;
pub use options::register as register_options;
pub use vacuum::fold;

use crate::am::storage;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

#[pg_extern(sql = "
CREATE FUNCTION bm25_amhandler(internal) RETURNS index_am_handler
    PARALLEL SAFE IMMUTABLE STRICT LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
CREATE ACCESS METHOD bm25 TYPE INDEX HANDLER bm25_amhandler;
COMMENT ON ACCESS METHOD bm25 IS 'Okapi BM25 lexical index over text columns';
")]
fn bm25_amhandler(_fcinfo: pg_sys::FunctionCallInfo) -> PgBox<pg_sys::IndexAmRoutine> {
    let mut am = crate::am::ordered_am_routine();

    am.ambuild = Some(build::ambuild);
    am.ambuildempty = Some(build::ambuildempty);
    am.aminsert = Some(insert::aminsert);
    am.ambulkdelete = Some(vacuum::ambulkdelete);
    am.amvacuumcleanup = Some(vacuum::amvacuumcleanup);
    am.amcostestimate = Some(crate::am::cost::amcostestimate);
    am.amoptions = Some(options::amoptions);
    am.ambuildphasename = Some(build::ambuildphasename);
    am.amvalidate = Some(crate::am::amvalidate);
    am.ambeginscan = Some(scan::ambeginscan);
    am.amrescan = Some(scan::amrescan);
    am.amgettuple = Some(scan::amgettuple);
    am.amendscan = Some(scan::amendscan);
    am.into_pg_boxed()
}

/// `document <@> query`: minus the BM25 score of the row a bm25 index scan ordered by it just
/// returned. BM25 depends on the whole corpus, so there is no value outside such a scan.
#[pg_extern(stable, parallel_safe, cost = 10000)]
fn bm25_text_distance(document: &str, query: &str) -> f64 {
    scan::returned_row_distance(semantic_index::records::text_hash(document), query)
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "text <@> text is computed by a bm25 index scan only",
                Some("Create a bm25 index on the column (CREATE INDEX ON t USING bm25 (col)) and use the operator in ORDER BY col <@> 'query' LIMIT k, where that index answers it."),
            )
        })
}

extension_sql!(
    "
CREATE OPERATOR <@> (LEFTARG = text, RIGHTARG = text, PROCEDURE = bm25_text_distance);
CREATE OPERATOR CLASS bm25_text_ops DEFAULT FOR TYPE text USING bm25 AS
    OPERATOR 1 <@> (text, text) FOR ORDER BY float_ops;
",
    name = "bm25_opclass",
    requires = [bm25_amhandler, bm25_text_distance]
);

/// The settings a bm25 index's metapage keeps (an ERROR if it has none).
fn settings(meta: &semantic_index::layout::Meta) -> &semantic_index::layout::LexicalSettings {
    meta.lexical.as_ref().unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
            "bm25 index metapage has no lexical settings",
            Some("REINDEX the index."),
        )
    })
}

/// What a bm25 index holds: its text search configuration and BM25 parameters, its rows, the
/// documents and terms of its snapshot, the rows appended since, and whether this backend
/// searches the server's shared snapshot file (NULL if it opened none).
#[pg_extern(stable, strict)]
#[allow(clippy::type_complexity)] // the SQL result row
fn semantic_lexical_info(
    index: pgrx::PgRelation,
) -> TableIterator<
    'static,
    (
        name!(config, String),
        name!(k1, f32),
        name!(b, f32),
        name!(rows, i64),
        name!(documents, i64),
        name!(terms, i64),
        name!(appended, i64),
        name!(generation, i64),
        name!(pages, i64),
        name!(shared, Option<bool>),
    ),
> {
    // SAFETY: an open index relation of our access method.
    unsafe {
        crate::am::IndexKind::expect(&index, &[crate::am::IndexKind::Bm25]);
        let rel = index.as_ptr();
        let meta = storage::read_meta(rel);
        let settings = settings(&meta).clone();
        let terms = cache::segments(rel, &meta)
            .map(|sealed| sealed.view().term_entries())
            .unwrap_or(0);
        let pages = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        // A Citus coordinator's index is an empty shell: the shards hold the rows (their
        // dictionaries' entries are summed, a term of several shards counted in each).
        let counts = crate::citus::shard_sums(
            (*rel).rd_id,
            &["rows", "documents", "terms", "appended", "pages"],
        )
        .unwrap_or_else(|| {
            vec![
                meta.rows as i64,
                meta.snapshot_records as i64,
                terms as i64,
                meta.appended() as i64,
                i64::from(pages),
            ]
        });
        TableIterator::once((
            settings.config,
            settings.k1,
            settings.b,
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            meta.generation as i64,
            counts[4],
            cache::shared((*rel).rd_id),
        ))
    }
}
