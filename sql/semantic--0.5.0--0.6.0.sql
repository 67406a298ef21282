-- semantic 0.5.0 -> 0.6.0: real[] gets pgvector's three distance operators with pgvector's
-- meanings: <-> Euclidean, <=> cosine (it was Euclidean), <#> negative inner product. A faiss
-- index on real[] serves the operator of its metric; faiss indexes also take pgvector's
-- vector and halfvec columns, through the semantic_pgvector extension's operator classes.
\echo Use "ALTER EXTENSION semantic UPDATE" to load this file. \quit

CREATE FUNCTION "semantic_vector_l2_distance"("a" real[], "b" real[]) RETURNS double precision
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'semantic_vector_l2_distance_wrapper';

CREATE FUNCTION "semantic_vector_negative_inner_product"("a" real[], "b" real[]) RETURNS double precision
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'semantic_vector_negative_inner_product_wrapper';

-- semantic_vector_distance, behind real[] <=>, now computes the cosine distance.
CREATE OR REPLACE FUNCTION "semantic_vector_distance"("a" real[], "b" real[]) RETURNS double precision
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'semantic_vector_cosine_distance_wrapper';

CREATE OPERATOR <-> (LEFTARG = real[], RIGHTARG = real[], PROCEDURE = semantic_vector_l2_distance, COMMUTATOR = <->);
CREATE OPERATOR <#> (LEFTARG = real[], RIGHTARG = real[], PROCEDURE = semantic_vector_negative_inner_product, COMMUTATOR = <#>);
COMMENT ON OPERATOR <=> (real[], real[]) IS 'cosine distance';
COMMENT ON OPERATOR <-> (real[], real[]) IS 'Euclidean distance';
COMMENT ON OPERATOR <#> (real[], real[]) IS 'negative inner product';

ALTER OPERATOR FAMILY faiss_real_ops USING faiss ADD
    OPERATOR 2 <-> (real[], real[]) FOR ORDER BY float_ops,
    OPERATOR 3 <#> (real[], real[]) FOR ORDER BY float_ops;

COMMENT ON ACCESS METHOD faiss IS 'FAISS vector index over text (embedded), real[] or pgvector columns';

-- The real[] indexes whose queries must change: each now serves its metric's operator, and
-- ORDER BY ... <=> (the cosine distance now) only where the metric is cosine.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS index, info.metric
        FROM pg_class c
        JOIN pg_am a ON a.oid = c.relam AND a.amname = 'faiss'
        JOIN pg_index i ON i.indexrelid = c.oid AND i.indisvalid
        JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum = 1
        CROSS JOIN LATERAL semantic_index_info(c.oid::regclass) info
        WHERE att.atttypid = 'real[]'::regtype AND info.metric <> 'cosine'
    LOOP
        RAISE WARNING 'faiss index % ranks by metric %: it now serves ORDER BY ... %, and no longer <=>, which is the cosine distance from this version on',
            r.index, r.metric, CASE r.metric WHEN 'l2' THEN '<->' ELSE '<#>' END;
    END LOOP;
END
$$;
