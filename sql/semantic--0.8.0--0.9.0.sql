-- semantic 0.8.0 -> 0.9.0: semantic_search returns the relation (table, partition or Citus
-- shard) that holds each row, and the hybrid fusion joins on (relation, ctid), where ctid alone
-- repeats across partitions and shards; on Citus it sets its search settings again as SET LOCAL
-- (through the new semantic_set_local) so that they reach the shards, and scores lexical and
-- hybrid searches with the corpus statistics of every shard summed (semantic_lexical_statistics,
-- semantic.bm25_statistics); semantic_index_shards reports each shard of a distributed index,
-- and semantic_index_metric gives a faiss index's metric (what semantic_search reads). A new
-- result column: the functions are dropped and created.
\echo Use "ALTER EXTENSION semantic UPDATE" to load this file. \quit

DROP FUNCTION semantic_search(text, integer, regclass, text, text, double precision, double precision, integer);
DROP FUNCTION semantic_search(text, integer, text, text, text, double precision, double precision, integer);

CREATE FUNCTION "semantic_lexical_statistics"(
	"index" regclass,
	"query" TEXT
) RETURNS jsonb
STABLE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'semantic_lexical_statistics_wrapper';

CREATE FUNCTION "semantic_index_metric"(
	"index" regclass
) RETURNS TEXT
STABLE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'semantic_index_metric_wrapper';

-- SET LOCAL, run from inside a query. Citus forwards a SET LOCAL to the shards only when it
-- runs inside a function called by a query or in a transaction block (its test of "in a
-- function" counts nested executors, and a PL/pgSQL statement of semantic_search itself is
-- not one), so semantic_search sets its search settings through this.
CREATE FUNCTION semantic_set_local(setting text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $function$
BEGIN
    IF setting !~ '^[A-Za-z_][A-Za-z0-9_.]*$' THEN
        RAISE EXCEPTION 'invalid setting name "%"', setting USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('SET LOCAL %s = %L', setting, value);
END
$function$;
COMMENT ON FUNCTION semantic_set_local(text, text) IS
    'SET LOCAL setting = value from inside a query, which Citus (citus.propagate_set_commands = local) forwards to the shards';

-- The index is taken by name and resolved here, under a lock on its table: an OID resolved
-- by the caller (regclass) can name an index that a concurrent REINDEX CONCURRENTLY has
-- already swapped out and dropped, while a name resolved with the table locked stays valid
-- until the end of the statement (REINDEX CONCURRENTLY waits for the table's lockers before
-- it drops the old copy).
--
-- mode: 'semantic' ranks with the faiss index, 'lexical' with the bm25 index, 'hybrid' fuses
-- both top lists (each 5 x k deep, at least 50) over the same column: reciprocal rank fusion
-- (fusion 'rrf': weight / (rrf_k + rank) per side), or a convex combination of the two sides'
-- scores, each min-max normalised over its list (fusion 'convex'). Rows of equal fused score
-- (with RRF, a row ranked r by one side only ties with one ranked r by the other only) come in
-- the order of their semantic rank, then their lexical rank: the order one server gives, and a
-- Citus table too (a row's ctid, the last tie-break, differs between the two).
--
-- A row is told apart by (relation, row_id): the table, partition or Citus shard that holds it,
-- and its ctid there. ctid alone repeats across partitions and across the shards of a
-- distributed table, so the hybrid fusion joins on both.
CREATE FUNCTION semantic_search(
    query text, k integer, index text DEFAULT NULL, mode text DEFAULT 'semantic',
    fusion text DEFAULT 'rrf', semantic_weight double precision DEFAULT 1,
    lexical_weight double precision DEFAULT 1, rrf_k integer DEFAULT 60)
RETURNS TABLE (rank bigint, score double precision, row_id tid, "row" jsonb, relation text)
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    idx regclass;
    target text;
    from_default boolean := false;
    found_am text;
    companions text[];
    names text[];
    lexical_names text[];
    tbl regclass;
    expr text;
    metric text;
    am text;
    depth integer;
    semantic_list text;
    lexical_list text;
    query_vector real[];
    seqscan text := current_setting('enable_seqscan');
    citus_propagation text := current_setting('citus.propagate_set_commands', true);
    distributed boolean := false;
    setting text;
    shard_command text;
    shard_figures jsonb[];
    failed text;
    corpus jsonb;
BEGIN
    IF query IS NULL OR k IS NULL THEN
        RETURN;
    END IF;
    IF k < 1 THEN
        RAISE EXCEPTION 'k must be at least 1, got %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mode IS NULL OR mode NOT IN ('semantic', 'lexical', 'hybrid') THEN
        RAISE EXCEPTION 'unknown search mode "%"', mode USING ERRCODE = 'invalid_parameter_value',
            HINT = 'mode is semantic, lexical or hybrid.';
    END IF;
    IF fusion IS NULL OR fusion NOT IN ('rrf', 'convex') THEN
        RAISE EXCEPTION 'unknown fusion "%"', fusion USING ERRCODE = 'invalid_parameter_value',
            HINT = 'fusion is rrf or convex.';
    END IF;
    IF semantic_weight IS NULL OR lexical_weight IS NULL OR semantic_weight < 0 OR lexical_weight < 0
       OR rrf_k IS NULL OR rrf_k < 0 THEN
        RAISE EXCEPTION 'weights and rrf_k must be non-negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The index named or looked up first: the bm25 one for lexical search, else the faiss one.
    am := CASE mode WHEN 'lexical' THEN 'bm25' ELSE 'faiss' END;
    -- Without one in the call, the semantic.default_index setting names it (per database or
    -- role with ALTER DATABASE / ALTER ROLE ... SET); else the database must hold just one.
    IF index IS NULL THEN
        index := nullif(current_setting('semantic.default_index', true), '');
        from_default := index IS NOT NULL;
    END IF;
    -- A second try covers an index swapped by REINDEX CONCURRENTLY between lookup and lock.
    FOR attempt IN 1..2 LOOP
        IF index IS NULL THEN
            SELECT array_agg(c.oid::regclass::text ORDER BY c.oid::regclass::text) INTO names
            FROM pg_class c JOIN pg_am a ON a.oid = c.relam JOIN pg_index i ON i.indexrelid = c.oid
            -- indisvalid: not the half-built copy a REINDEX CONCURRENTLY makes
            WHERE a.amname = am AND c.relkind = 'i' AND i.indisvalid;
            IF names IS NULL THEN
                RAISE EXCEPTION 'there is no % index in this database', am
                    USING ERRCODE = 'undefined_object',
                          HINT = format('Create one: CREATE INDEX ON my_table USING %s (my_text_column).', am);
            ELSIF cardinality(names) > 1 THEN
                RAISE EXCEPTION 'there are % % indexes: %', cardinality(names), am, array_to_string(names, ', ')
                    USING ERRCODE = 'ambiguous_parameter',
                          HINT = 'Name one: semantic_search(query, k, ''index_name''), or set semantic.default_index.';
            END IF;
            target := names[1];
        ELSE
            target := index;
        END IF;
        idx := to_regclass(target);
        IF idx IS NULL AND from_default THEN
            RAISE EXCEPTION 'semantic.default_index names "%", which does not exist', index
                USING ERRCODE = 'undefined_table',
                      HINT = 'Set semantic.default_index to an existing faiss index (or RESET it), or name the index in the call.';
        ELSIF idx IS NULL THEN
            RAISE EXCEPTION 'index "%" does not exist', index USING ERRCODE = 'undefined_table';
        END IF;
        SELECT i.indrelid::regclass, CASE WHEN c.relkind = 'i' THEN a.amname END
        INTO tbl, found_am
        FROM pg_class c LEFT JOIN pg_am a ON a.oid = c.relam LEFT JOIN pg_index i ON i.indexrelid = c.oid
        WHERE c.oid = idx;
        IF EXISTS (SELECT FROM pg_class c JOIN pg_am a ON a.oid = c.relam
                   WHERE c.oid = idx AND c.relkind = 'I' AND a.amname IN ('faiss', 'bm25')) THEN
            RAISE EXCEPTION '"%" is the index of a partitioned table, which semantic_search does not search', target
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Name the index of one partition, or search the parent table with ORDER BY col <=> ''query'' LIMIT k.';
        END IF;
        IF found_am IN ('faiss', 'bm25') AND found_am <> am THEN
            -- The index (named, or the default) is of the other kind: take the index of this
            -- mode's kind on the same column (a lexical search naming a faiss index uses its
            -- bm25 twin; a semantic or hybrid one naming a bm25 index, its faiss twin).
            SELECT array_agg(c.oid::regclass::text ORDER BY c.oid::regclass::text) INTO companions
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
            WHERE a.amname = am AND i.indrelid = tbl AND i.indisvalid
              AND pg_get_indexdef(i.indexrelid, 1, true) = pg_get_indexdef(idx, 1, true);
            IF companions IS NULL THEN
                RAISE EXCEPTION 'there is no % index on the column of %', am,
                    CASE WHEN from_default THEN format('semantic.default_index "%s"', index)
                         ELSE format('%s index "%s"', found_am, index) END
                    USING ERRCODE = 'undefined_object',
                          HINT = format('Create one: CREATE INDEX ON %s USING %s (%s).', tbl, am,
                                        pg_get_indexdef(idx, 1, true));
            ELSIF cardinality(companions) > 1 THEN
                RAISE EXCEPTION 'there are % % indexes on the column of %: %', cardinality(companions), am,
                    CASE WHEN from_default THEN format('semantic.default_index "%s"', index)
                         ELSE format('%s index "%s"', found_am, index) END,
                    array_to_string(companions, ', ')
                    USING ERRCODE = 'ambiguous_parameter', HINT = 'Name one in the call.';
            END IF;
            target := companions[1];
            idx := to_regclass(target);
            found_am := am;
        END IF;
        IF found_am IS DISTINCT FROM am THEN
            RAISE EXCEPTION '"%" is not a % index', target, am
                USING ERRCODE = 'wrong_object_type',
                      HINT = CASE
                          WHEN from_default THEN 'semantic.default_index names it: set it to a faiss index.'
                          ELSE format('Name a %s index, or none.', am) END;
        END IF;
        IF tbl IS NOT NULL THEN
            -- Needs SELECT on the table, like the search itself.
            EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', tbl);
            SELECT pg_get_indexdef(i.indexrelid, 1, true) INTO expr
            FROM pg_index i WHERE i.indexrelid = to_regclass(target)
                AND i.indexrelid = idx AND i.indisvalid;
            EXIT WHEN expr IS NOT NULL;
        END IF;
    END LOOP;
    IF expr IS NULL THEN
        RAISE EXCEPTION '% index "%" is being replaced', am, target
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Try again.';
    END IF;
    IF mode = 'hybrid' THEN
        SELECT array_agg(c.oid::regclass::text ORDER BY c.oid::regclass::text) INTO lexical_names
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
        WHERE a.amname = 'bm25' AND i.indrelid = tbl AND i.indisvalid
          AND pg_get_indexdef(i.indexrelid, 1, true) = expr;
        IF lexical_names IS NULL THEN
            RAISE EXCEPTION 'there is no bm25 index on % of %', expr, tbl
                USING ERRCODE = 'undefined_object',
                      HINT = format('Hybrid search needs one: CREATE INDEX ON %s USING bm25 (%s).', tbl, expr);
        ELSIF cardinality(lexical_names) > 1 THEN
            RAISE EXCEPTION 'there are % bm25 indexes on % of %: %', cardinality(lexical_names), expr, tbl,
                array_to_string(lexical_names, ', ')
                USING ERRCODE = 'ambiguous_parameter', HINT = 'Keep one bm25 index on the column.';
        END IF;
    END IF;
    IF mode <> 'lexical' THEN
        metric := semantic_index_metric(idx);
        -- The query is embedded here, once, and searched for as a vector: a distributed table
        -- (Citus) passes the vector to every shard instead of each shard embedding the text.
        query_vector := semantic_query_vector(idx, query);
    END IF;
    -- The ranking must come from the indexes (the model, metric and chunks of the faiss index,
    -- the corpus statistics of the bm25 one), never from a sequential scan: for this one query,
    -- sequential scans are off.
    PERFORM set_config('enable_seqscan', 'off', true);
    IF citus_propagation IS NOT NULL THEN
        -- Citus forwards SET LOCAL commands to the shards it queries (with
        -- propagate_set_commands 'local'), and no other setting: the session's search settings,
        -- set again here as SET LOCAL, then govern every shard's search as they do one node's.
        PERFORM set_config('citus.propagate_set_commands', 'local', true);
        FOREACH setting IN ARRAY ARRAY['enable_seqscan', 'semantic.hnsw_ef_search', 'semantic.ivf_nprobe',
                                      'semantic.scan_candidates', 'semantic.max_scan_tuples'] LOOP
            IF current_setting(setting, true) IS NOT NULL THEN
                PERFORM semantic_set_local(setting, current_setting(setting));
            END IF;
        END LOOP;
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = $1)'
            INTO distributed USING tbl;
    END IF;
    IF distributed AND mode <> 'semantic' THEN
        -- Each shard's bm25 index knows its own rows only: gather every shard's corpus
        -- figures for this query, sum them, and have every shard score with the sum (as
        -- Elasticsearch's dfs_query_then_fetch), so that scores are one server's.
        -- run_command_on_shards formats the command with the shard's name (%L here).
        shard_command := replace(format(
            'SELECT semantic_lexical_statistics(i.indexrelid::regclass, %L) FROM pg_index i'
            ' JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam'
            ' WHERE a.amname = ''bm25'' AND i.indisvalid AND pg_get_indexdef(i.indexrelid, 1, true) = %L'
            ' AND i.indrelid = ', query, expr), '%', '%%') || '%L::regclass';
        EXECUTE 'SELECT array_agg(r.result::jsonb) FILTER (WHERE r.success AND r.result <> ''''),'
                '       min(r.shardid || '': '' || coalesce(nullif(r.result, ''''), ''no bm25 index''))'
                '           FILTER (WHERE NOT r.success OR coalesce(r.result, '''') = '''')'
                ' FROM run_command_on_shards($1, $2) r'
            INTO shard_figures, failed USING tbl, shard_command;
        IF failed IS NOT NULL THEN
            RAISE EXCEPTION 'cannot read the bm25 statistics of every shard of %', tbl
                USING ERRCODE = 'connection_failure', DETAIL = format('shard %s', failed),
                      HINT = 'Every shard needs its bm25 index and a reachable worker; retry once they are back.';
        END IF;
        SELECT jsonb_build_object(
            'documents', coalesce(sum((f->>'documents')::bigint), 0),
            'total_length', coalesce(sum((f->>'total_length')::bigint), 0),
            'df', coalesce((SELECT jsonb_object_agg(t.term, t.n) FROM (
                SELECT d.key AS term, sum(d.value::bigint) AS n
                FROM unnest(shard_figures) g, jsonb_each_text(g->'df') d GROUP BY d.key) t), '{}'))
        INTO corpus FROM unnest(shard_figures) f;
        PERFORM semantic_set_local('semantic.bm25_statistics', corpus::text);
    END IF;
    depth := CASE mode WHEN 'hybrid' THEN greatest(5 * k, 50) ELSE k END;
    -- Each side: (relation, ctid, rank within its list, score, row), best first; the lexical
    -- side keeps the rows that hold a query term (the others follow its matches at distance 0).
    -- The relation is named where the row is read (on a Citus worker: the shard).
    semantic_list := format(
        'SELECT s.rel, s.ctid, row_number() OVER () AS r, %s AS sc, s.r AS j FROM ('
        '  SELECT t.tableoid::regclass::text AS rel, t.ctid, (%s) <=> $8 AS d, to_jsonb(t) AS r'
        '  FROM %s t ORDER BY (%s) <=> $8 LIMIT $3) s',
        format('semantic_distance_score(%L, s.d)', metric), expr, tbl, expr);
    lexical_list := format(
        'SELECT s.rel, s.ctid, row_number() OVER () AS r, -s.d AS sc, s.r AS j FROM ('
        '  SELECT t.tableoid::regclass::text AS rel, t.ctid, (%s) <@> $1 AS d, to_jsonb(t) AS r'
        '  FROM %s t ORDER BY (%s) <@> $1 LIMIT $3) s WHERE s.d < 0',
        expr, tbl, expr);
    IF mode <> 'hybrid' THEN
        RETURN QUERY EXECUTE format('SELECT l.r, l.sc, l.ctid, l.j, l.rel FROM (%s) l',
            CASE mode WHEN 'semantic' THEN semantic_list ELSE lexical_list END)
        USING query, k, depth, fusion, semantic_weight, lexical_weight, rrf_k::double precision,
            query_vector;
    ELSE
        RETURN QUERY EXECUTE format(
            'WITH sem AS (%s), lex AS (%s),'
            ' norm AS (SELECT min(sc) AS lo, max(sc) AS hi, ''s'' AS side FROM sem'
            '          UNION ALL SELECT min(sc), max(sc), ''l'' FROM lex),'
            ' fused AS ('
            '  SELECT coalesce(sem.rel, lex.rel) AS rel, coalesce(sem.ctid, lex.ctid) AS ctid,'
            '   sem.r AS semantic_rank, lex.r AS lexical_rank,'
            '   coalesce(sem.j, lex.j) AS j,'
            '   CASE WHEN $4 = ''rrf'' THEN'
            '     coalesce($5 / ($7 + sem.r), 0) + coalesce($6 / ($7 + lex.r), 0)'
            '   ELSE'
            '     coalesce($5 * (SELECT CASE WHEN n.hi > n.lo THEN (sem.sc - n.lo) / (n.hi - n.lo) ELSE 1 END'
            '                    FROM norm n WHERE n.side = ''s''), 0)'
            '     + coalesce($6 * (SELECT CASE WHEN n.hi > n.lo THEN (lex.sc - n.lo) / (n.hi - n.lo) ELSE 1 END'
            '                      FROM norm n WHERE n.side = ''l''), 0)'
            '   END AS score'
            '  FROM sem FULL JOIN lex ON sem.rel = lex.rel AND sem.ctid = lex.ctid)'
            ' SELECT row_number() OVER (ORDER BY f.score DESC, f.semantic_rank, f.lexical_rank, f.rel, f.ctid),'
            '   f.score::double precision,'
            '   f.ctid, f.j, f.rel'
            ' FROM fused f ORDER BY f.score DESC, f.semantic_rank, f.lexical_rank, f.rel, f.ctid LIMIT $2',
            semantic_list, lexical_list)
        USING query, k, depth, fusion, semantic_weight, lexical_weight, rrf_k::double precision,
            query_vector;
    END IF;
    IF citus_propagation IS NOT NULL THEN
        IF corpus IS NOT NULL THEN
            PERFORM semantic_set_local('semantic.bm25_statistics', '');
        END IF;
        PERFORM semantic_set_local('enable_seqscan', seqscan);
        PERFORM set_config('citus.propagate_set_commands', citus_propagation, true);
    END IF;
    PERFORM set_config('enable_seqscan', seqscan, true);
END
$function$;
COMMENT ON FUNCTION semantic_search(text, integer, text, text, text, double precision, double precision, integer) IS
    'Top k rows of the table behind a faiss index (mode semantic), a bm25 index (lexical), or both fused (hybrid): rank, score, row id, the row as jsonb, and the relation (table, partition or Citus shard) that holds it';

-- The same for an index given as a regclass value.
CREATE FUNCTION semantic_search(
    query text, k integer, index regclass, mode text DEFAULT 'semantic',
    fusion text DEFAULT 'rrf', semantic_weight double precision DEFAULT 1,
    lexical_weight double precision DEFAULT 1, rrf_k integer DEFAULT 60)
RETURNS TABLE (rank bigint, score double precision, row_id tid, "row" jsonb, relation text)
LANGUAGE sql VOLATILE
AS $function$
SELECT * FROM semantic_search(query, k, index::text, mode, fusion, semantic_weight, lexical_weight, rrf_k)
$function$;

-- What each shard's copy of a faiss or bm25 index holds, on a Citus table: semantic_index_info
-- or semantic_lexical_info run on every shard placement (each index shard is named as Citus
-- names it, shard_name), one row each; on any other table, one row for the index itself.
CREATE FUNCTION semantic_index_shards(index regclass)
RETURNS TABLE (shardid bigint, node text, port integer, info jsonb)
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    am text;
    tbl regclass;
    info_function text;
    shard_ids bigint[];
    nodes text[];
    ports integer[];
    commands text[];
    placement record;
BEGIN
    SELECT a.amname, i.indrelid INTO am, tbl
    FROM pg_class c JOIN pg_am a ON a.oid = c.relam JOIN pg_index i ON i.indexrelid = c.oid
    WHERE c.oid = index;
    IF am IS NULL OR am NOT IN ('faiss', 'bm25') THEN
        RAISE EXCEPTION '"%" is not a faiss or bm25 index', index USING ERRCODE = 'wrong_object_type';
    END IF;
    info_function := CASE am WHEN 'faiss' THEN 'semantic_index_info' ELSE 'semantic_lexical_info' END;
    IF current_setting('citus.propagate_set_commands', true) IS NOT NULL THEN
        EXECUTE 'SELECT array_agg(s.shardid ORDER BY s.shardid, n.nodename, n.nodeport),'
                '       array_agg(n.nodename::text ORDER BY s.shardid, n.nodename, n.nodeport),'
                '       array_agg(n.nodeport ORDER BY s.shardid, n.nodename, n.nodeport),'
                '       array_agg(format(''SELECT to_jsonb(i) FROM %s(%L::regclass) i'', $2,'
                '                        shard_name($1, s.shardid)) ORDER BY s.shardid, n.nodename, n.nodeport)'
                ' FROM pg_dist_shard s JOIN pg_dist_placement p ON p.shardid = s.shardid'
                ' JOIN pg_dist_node n ON n.groupid = p.groupid'
                ' WHERE s.logicalrelid = $3'
            INTO shard_ids, nodes, ports, commands USING index, info_function, tbl;
    END IF;
    IF shard_ids IS NULL THEN
        RETURN QUERY EXECUTE format('SELECT NULL::bigint, NULL::text, NULL::integer, to_jsonb(i) FROM %s($1) i',
                                    info_function) USING index;
        RETURN;
    END IF;
    -- master_run_on_worker: what Citus's own run_command_on_* functions call, a command per
    -- node. A shard that cannot be read fails the call: no partial answer.
    FOR placement IN EXECUTE
        'SELECT r.n, r.node_name, r.node_port, r.success, r.result'
        ' FROM master_run_on_worker($1, $2, $3, true) WITH ORDINALITY r(node_name, node_port, success, result, n)'
        ' ORDER BY r.n'
        USING nodes, ports, commands
    LOOP
        IF NOT placement.success THEN
            RAISE EXCEPTION 'cannot read shard % of index % on %:%', shard_ids[placement.n], index,
                placement.node_name, placement.node_port
                USING ERRCODE = 'connection_failure', DETAIL = placement.result;
        END IF;
        shardid := shard_ids[placement.n];
        node := placement.node_name;
        port := placement.node_port;
        info := placement.result::jsonb;
        RETURN NEXT;
    END LOOP;
END
$function$;
COMMENT ON FUNCTION semantic_index_shards(regclass) IS
    'semantic_index_info (faiss) or semantic_lexical_info (bm25) of every shard of an index on a Citus table, one row per shard placement; of the index itself elsewhere';
