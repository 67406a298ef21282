//! The `<=>` operators and semantic_search().

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_encoder::TextKind;

use crate::am::scan::returned_row_distance;
use crate::errors::raise;
use crate::gucs;
use crate::models::embed_text;

thread_local! {
    /// The right-hand side of the last text <=> text: the constant query of a scan, embedded
    /// once rather than once per row.
    static LAST_QUERY: RefCell<Option<(String, String, Vec<f32>)>> = const { RefCell::new(None) };
}

fn embed_query(model: &str, text: &str) -> Vec<f32> {
    let hit = LAST_QUERY.with(|q| {
        q.borrow()
            .as_ref()
            .filter(|(m, t, _)| m == model && t == text)
            .map(|(_, _, v)| v.clone())
    });
    hit.unwrap_or_else(|| {
        let v = embed_text(model, text, TextKind::Query).vector;
        LAST_QUERY
            .with(|q| *q.borrow_mut() = Some((model.to_string(), text.to_string(), v.clone())));
        v
    })
}

/// `document <=> query` for text: the cosine distance of their embeddings under
/// `semantic.default_model`. A faiss index on the column answers the same ORDER BY with its
/// own model and metric, without embedding every row.
#[pg_extern(stable, parallel_safe, cost = 10000)]
fn semantic_text_distance(document: &str, query: &str) -> f64 {
    // On a row a faiss index scan just returned (PostgreSQL evaluates the ORDER BY expression
    // again for it), the index's own distance: no embedding of the row, and the same value the
    // rows were ordered by.
    if let Some(distance) =
        returned_row_distance(semantic_index::records::text_hash(document), query)
    {
        return distance;
    }
    let model = gucs::default_model();
    let q = embed_query(&model, query);
    let d = embed_text(&model, document, TextKind::Passage).vector;
    1.0 - semantic_encoder::cosine_similarity(&d, &q)
}

/// `a <=> b` for real[]: the Euclidean distance, the default metric of faiss indexes on
/// real[] (an index built with metric = cosine or dot orders by that metric instead).
#[pg_extern(immutable, parallel_safe, strict)]
fn semantic_vector_distance(a: Vec<f32>, b: Vec<f32>) -> f64 {
    if a.len() != b.len() {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "vectors of different dimensions: {} and {}",
                a.len(),
                b.len()
            ),
            None,
        );
    }
    a.iter()
        .zip(&b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

extension_sql!(
    r#"
CREATE OPERATOR <=> (LEFTARG = text, RIGHTARG = text, PROCEDURE = semantic_text_distance);
CREATE OPERATOR <=> (LEFTARG = real[], RIGHTARG = real[], PROCEDURE = semantic_vector_distance, COMMUTATOR = <=>);

-- The index is taken by name and resolved here, under a lock on its table: an OID resolved
-- by the caller (regclass) can name an index that a concurrent REINDEX CONCURRENTLY has
-- already swapped out and dropped, while a name resolved with the table locked stays valid
-- until the end of the statement (REINDEX CONCURRENTLY waits for the table's lockers before
-- it drops the old copy).
CREATE FUNCTION semantic_search(query text, k integer, index text DEFAULT NULL)
RETURNS TABLE (rank bigint, score double precision, row_id tid, "row" jsonb)
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    idx regclass;
    names text[];
    tbl regclass;
    expr text;
    metric text;
    found_faiss boolean;
    seqscan text := current_setting('enable_seqscan');
BEGIN
    IF query IS NULL OR k IS NULL THEN
        RETURN;
    END IF;
    IF k < 1 THEN
        RAISE EXCEPTION 'k must be at least 1, got %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A second try covers an index swapped by REINDEX CONCURRENTLY between lookup and lock.
    FOR attempt IN 1..2 LOOP
        IF index IS NULL THEN
            SELECT array_agg(c.oid::regclass::text ORDER BY c.oid::regclass::text) INTO names
            FROM pg_class c JOIN pg_am a ON a.oid = c.relam JOIN pg_index i ON i.indexrelid = c.oid
            -- indisvalid: not the half-built copy a REINDEX CONCURRENTLY makes
            WHERE a.amname = 'faiss' AND c.relkind = 'i' AND i.indisvalid;
            IF names IS NULL THEN
                RAISE EXCEPTION 'there is no faiss index in this database'
                    USING ERRCODE = 'undefined_object',
                          HINT = 'Create one: CREATE INDEX ON my_table USING faiss (my_text_column).';
            ELSIF cardinality(names) > 1 THEN
                RAISE EXCEPTION 'there are % faiss indexes: %', cardinality(names), array_to_string(names, ', ')
                    USING ERRCODE = 'ambiguous_parameter',
                          HINT = 'Name one: semantic_search(query, k, ''index_name'').';
            END IF;
            idx := to_regclass(names[1]);
        ELSE
            idx := to_regclass(index);
            IF idx IS NULL THEN
                RAISE EXCEPTION 'index "%" does not exist', index USING ERRCODE = 'undefined_table';
            END IF;
        END IF;
        SELECT i.indrelid::regclass, coalesce(a.amname = 'faiss' AND c.relkind = 'i', false)
        INTO tbl, found_faiss
        FROM pg_class c LEFT JOIN pg_am a ON a.oid = c.relam LEFT JOIN pg_index i ON i.indexrelid = c.oid
        WHERE c.oid = idx;
        IF NOT found_faiss THEN
            RAISE EXCEPTION '"%" is not a faiss index', coalesce(index, idx::text)
                USING ERRCODE = 'wrong_object_type';
        END IF;
        IF tbl IS NOT NULL THEN
            -- Needs SELECT on the table, like the search itself.
            EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', tbl);
            SELECT pg_get_indexdef(i.indexrelid, 1, true) INTO expr
            FROM pg_index i WHERE i.indexrelid = to_regclass(coalesce(index, names[1]))
                AND i.indexrelid = idx AND i.indisvalid;
            EXIT WHEN expr IS NOT NULL;
        END IF;
    END LOOP;
    IF expr IS NULL THEN
        RAISE EXCEPTION 'faiss index "%" is being replaced', coalesce(index, idx::text)
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Try again.';
    END IF;
    SELECT i.metric INTO metric FROM semantic_index_info(idx) i;
    -- The ranking must come from the index (its model, metric and chunks), never from a
    -- sequential scan that would embed every row: for this one query, sequential scans are off.
    PERFORM set_config('enable_seqscan', 'off', true);
    RETURN QUERY EXECUTE format(
        'SELECT row_number() OVER (), %s, s.ctid, s.r FROM ('
        '  SELECT t.ctid, (%s) <=> $1 AS d, to_jsonb(t) AS r'
        '  FROM %s t ORDER BY (%s) <=> $1 LIMIT $2) s',
        CASE metric WHEN 'cosine' THEN '1 - s.d' ELSE '-s.d' END,
        expr, tbl, expr)
    USING query, k;
    PERFORM set_config('enable_seqscan', seqscan, true);
END
$function$;
COMMENT ON FUNCTION semantic_search(text, integer, text) IS
    'Top k rows of the table behind a faiss index for a query text: rank, score (cosine similarity, inner product, or minus the L2 distance), row id and the row as jsonb';

-- The same for an index given as a regclass value.
CREATE FUNCTION semantic_search(query text, k integer, index regclass)
RETURNS TABLE (rank bigint, score double precision, row_id tid, "row" jsonb)
LANGUAGE sql VOLATILE
AS $function$ SELECT * FROM semantic_search(query, k, index::text) $function$;
"#,
    name = "semantic_operators",
    requires = [
        semantic_text_distance,
        semantic_vector_distance,
        am::semantic_index_info
    ]
);
