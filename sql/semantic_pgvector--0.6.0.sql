-- semantic_pgvector: faiss indexes on pgvector's vector and halfvec columns, for pgvector's
-- own operators, with operator classes named as pgvector names its own. An application
-- written for pgvector switches to faiss by changing USING hnsw to USING faiss.
-- A separate extension, so that an installation without pgvector is not affected: it
-- requires both semantic and vector.
\echo Use "CREATE EXTENSION semantic_pgvector" to load this file. \quit

-- The strategy numbers are the faiss access method's: 1 cosine (<=>), 2 Euclidean (<->),
-- 3 negative inner product (<#>). The index ranks by the metric of its one operator.
CREATE OPERATOR CLASS vector_l2_ops DEFAULT FOR TYPE vector USING faiss AS
    OPERATOR 2 <-> (vector, vector) FOR ORDER BY float_ops;
CREATE OPERATOR CLASS vector_cosine_ops FOR TYPE vector USING faiss AS
    OPERATOR 1 <=> (vector, vector) FOR ORDER BY float_ops;
CREATE OPERATOR CLASS vector_ip_ops FOR TYPE vector USING faiss AS
    OPERATOR 3 <#> (vector, vector) FOR ORDER BY float_ops;
CREATE OPERATOR CLASS vector_l1_ops FOR TYPE vector USING faiss AS
    OPERATOR 4 <+> (vector, vector) FOR ORDER BY float_ops;

CREATE OPERATOR CLASS halfvec_l2_ops DEFAULT FOR TYPE halfvec USING faiss AS
    OPERATOR 2 <-> (halfvec, halfvec) FOR ORDER BY float_ops;
CREATE OPERATOR CLASS halfvec_cosine_ops FOR TYPE halfvec USING faiss AS
    OPERATOR 1 <=> (halfvec, halfvec) FOR ORDER BY float_ops;
CREATE OPERATOR CLASS halfvec_ip_ops FOR TYPE halfvec USING faiss AS
    OPERATOR 3 <#> (halfvec, halfvec) FOR ORDER BY float_ops;
CREATE OPERATOR CLASS halfvec_l1_ops FOR TYPE halfvec USING faiss AS
    OPERATOR 4 <+> (halfvec, halfvec) FOR ORDER BY float_ops;
