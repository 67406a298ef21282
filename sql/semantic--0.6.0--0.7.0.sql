-- semantic 0.6.0 -> 0.7.0: semantic_models() gains a precision column, fp32 or int8
-- (semantic-tools import-model --quantize int8).
\echo Use "ALTER EXTENSION semantic UPDATE" to load this file. \quit

DROP FUNCTION "semantic_models"();
CREATE FUNCTION "semantic_models"() RETURNS TABLE (
	"name" TEXT,
	"dimension" INT,
	"similarity" TEXT,
	"max_seq_length" INT,
	"pooling" TEXT,
	"normalize" bool,
	"precision" TEXT,
	"fingerprint" TEXT,
	"loaded" bool
)
STRICT STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'semantic_models_wrapper';
