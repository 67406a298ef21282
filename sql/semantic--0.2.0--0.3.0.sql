-- semantic 0.2.0 -> 0.3.0: one snapshot per server (a shared, mapped file under the data
-- directory) instead of a FAISS copy per backend.
-- Index pages change format: faiss indexes built by 0.2.0 answer with an error and a hint to
-- REINDEX until they are rebuilt.

-- semantic_index_info reports the records appended since the snapshot and the snapshot this
-- backend searches.
DROP FUNCTION semantic_index_info(regclass);
CREATE FUNCTION "semantic_index_info"(
	"index" regclass /* pgrx :: PgRelation */
) RETURNS TABLE (
	"model" TEXT,  /* String */
	"fingerprint" TEXT,  /* String */
	"metric" TEXT,  /* String */
	"factory" TEXT,  /* String */
	"ef_construction" INT,  /* i32 */
	"long_text" TEXT,  /* String */
	"dimension" INT,  /* i32 */
	"rows" bigint,  /* i64 */
	"vectors" bigint,  /* i64 */
	"generation" bigint,  /* i64 */
	"pages" bigint,  /* i64 */
	"free_pages" bigint,  /* i64 */
	"appended" bigint,  /* i64 */
	"cached_vectors" bigint,  /* Option < i64 > */
	"shared" bool  /* Option < bool > */
)
STRICT STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'semantic_index_info_wrapper';

-- Folds the records appended since the snapshot into a new one (VACUUM does it past a
-- threshold).
CREATE FUNCTION "semantic_index_fold"(
	"index" regclass /* pgrx :: PgRelation */
) RETURNS bigint /* i64 */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'semantic_index_fold_wrapper';
