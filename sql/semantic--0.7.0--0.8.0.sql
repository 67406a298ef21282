-- semantic 0.7.0 -> 0.8.0: text <=> real[], a query vector the caller embedded against a text
-- column, served by faiss indexes on text (strategy 2 of faiss_text_ops) without embedding.
\echo Use "ALTER EXTENSION semantic UPDATE" to load this file. \quit

CREATE FUNCTION "semantic_text_vector_distance"(
	"document" TEXT,
	"query" real[]
) RETURNS double precision
STRICT STABLE PARALLEL SAFE COST 10000
LANGUAGE c
AS 'MODULE_PATHNAME', 'semantic_text_vector_distance_wrapper';
CREATE OPERATOR <=> (LEFTARG = text, RIGHTARG = real[], PROCEDURE = semantic_text_vector_distance);
COMMENT ON OPERATOR <=> (text, real[]) IS 'cosine distance of the text''s embedding to a query vector';
ALTER OPERATOR FAMILY faiss_text_ops USING faiss
    ADD OPERATOR 2 <=> (text, real[]) FOR ORDER BY float_ops;
