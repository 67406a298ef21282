//! A table distributed with Citus (issue 23): a coordinator and two workers, each preloading
//! citus and semantic, searched through the coordinator beside a plain table of the same rows
//! on the coordinator (one node's answers).
//!
//! Citus supports PostgreSQL 16 to 18 and is built from source (scripts/citus.sh build). Where it
//! is not installed for the PostgreSQL under test these tests say so and pass, unless
//! SEMANTIC_TEST_CITUS=required (scripts/test.sh sets it where it builds Citus).

use std::collections::{HashMap, HashSet};
use std::process::Command;

use postgres::Client;
use semantic_tests::{env, Cluster};

/// A coordinator and two workers; dropped (stopped and removed) together.
struct CitusCluster {
    coordinator: Cluster,
    workers: [Cluster; 2],
}

fn citus_installed() -> bool {
    let out = Command::new(env().bin_dir.join("pg_config"))
        .arg("--pkglibdir")
        .output()
        .expect("pg_config");
    let lib = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::path::Path::new(&lib).join("citus.so").exists()
}

/// A server preloading citus (first: it refuses to load otherwise) and semantic, with Citus's
/// extension created.
fn citus_node(name: &str) -> Cluster {
    let node = Cluster::start(
        name,
        &[
            "shared_preload_libraries = 'citus,semantic'",
            // two-phase commit for distributed DDL
            "max_prepared_transactions = 20",
        ],
    );
    node.connect()
        .batch_execute("CREATE EXTENSION citus")
        .unwrap();
    node
}

/// The cluster, or None (with a message) where Citus is not installed and not required.
fn citus(name: &str) -> Option<CitusCluster> {
    if !citus_installed() {
        let required = std::env::var_os("SEMANTIC_TEST_CITUS").is_some_and(|v| v == "required");
        assert!(
            !required,
            "SEMANTIC_TEST_CITUS=required, but Citus is not installed for {}: scripts/citus.sh build",
            env().bin_dir.display()
        );
        eprintln!(
            "skipped: Citus is not installed for {}",
            env().bin_dir.display()
        );
        return None;
    }
    let start = |role: &str| citus_node(&format!("{name}_{role}"));
    let coordinator = start("coordinator");
    let workers = [start("worker1"), start("worker2")];
    let mut c = coordinator.connect();
    c.execute(
        "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
        &[&i32::from(coordinator.port)],
    )
    .unwrap();
    for w in &workers {
        c.execute(
            "SELECT citus_add_node('127.0.0.1', $1)",
            &[&i32::from(w.port)],
        )
        .unwrap();
    }
    // Created on the coordinator, the extension reaches the workers.
    c.batch_execute("CREATE EXTENSION semantic").unwrap();
    Some(CitusCluster {
        coordinator,
        workers,
    })
}

/// `docs` distributed over `shards` shards and `local_docs`, a plain table of the same rows on
/// the coordinator, each with a faiss and a bm25 index on body.
fn load_docs(c: &mut Client, shards: i32) {
    for table in ["docs", "local_docs"] {
        c.batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, body text)"
        ))
        .unwrap();
    }
    c.execute(
        "SELECT create_distributed_table('docs', 'id', shard_count => $1)",
        &[&shards],
    )
    .unwrap();
    // One statement at a time: Citus runs a distributed DDL command only as a statement of
    // its own.
    for table in ["docs", "local_docs"] {
        c.batch_execute(&format!(
            "INSERT INTO {table} SELECT g, CASE g % 4
                 WHEN 0 THEN 'a storm batters the harbour lighthouse, night ' || g
                 WHEN 1 THEN 'two lovers part at a train station in winter ' || g
                 WHEN 2 THEN 'a detective searches the island archive for letter ' || g
                 ELSE 'the village holds a summer festival by the harbour, year ' || g END
                 -- a length of its own, so that no two rows tie on a bm25 score (ties would
                 -- leave the lists' order, and so the fusion, to the merge of the shards)
                 || repeat(' page', g / 4)
             FROM generate_series(1, 160) g"
        ))
        .unwrap();
        for am in ["faiss", "bm25"] {
            c.batch_execute(&format!(
                "CREATE INDEX {table}_{am} ON {table} USING {am} (body)"
            ))
            .unwrap();
        }
    }
}

/// One result row: (relation, row_id, id, score).
type Hit = (String, String, i32, f64);

fn search(c: &mut Client, query: &str, k: i32, index: &str, mode: &str) -> Vec<Hit> {
    c.query(
        "SELECT relation, row_id::text, (row->>'id')::int, score
         FROM semantic_search($1, $2, $3, mode => $4) ORDER BY rank",
        &[&query, &k, &index, &mode],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

const QUERIES: [&str; 3] = [
    "storm at the harbour",
    "a love story at a railway station",
    "searching old letters",
];

#[test]
fn semantic_search_on_a_distributed_table_answers_as_one_node() {
    let Some(cluster) = citus("citus_search") else {
        return;
    };
    let mut c = cluster.coordinator.connect();
    for shards in [4, 32] {
        c.batch_execute("DROP TABLE IF EXISTS docs").unwrap();
        c.batch_execute("DROP TABLE IF EXISTS local_docs").unwrap();
        load_docs(&mut c, shards);
        for query in QUERIES {
            // Every mode: the rows, ranks and scores of one node (Flat indexes: exact; bm25
            // with the shards' statistics summed).
            for mode in ["semantic", "lexical", "hybrid"] {
                let distributed = search(&mut c, query, 10, "docs_faiss", mode);
                let local = search(&mut c, query, 10, "local_docs_faiss", mode);
                assert_eq!(distributed.len(), 10);
                assert_eq!(local.len(), 10);
                for (d, l) in distributed.iter().zip(&local) {
                    assert_eq!(
                        d.2, l.2,
                        "{shards} shards, {mode}, {query}: {distributed:?} vs {local:?}"
                    );
                    assert!(
                        (d.3 - l.3).abs() < 1e-5,
                        "{shards} shards, {mode}, {query}: {d:?} vs {l:?}"
                    );
                }
            }
            // A plain ORDER BY <@> through the coordinator scores each shard with its own
            // statistics (README): not one node's scores, which is what semantic_search fixes.
            let plain_scores = |c: &mut Client, table: &str| -> Vec<f64> {
                // Index scans on the shards too: their tables are small enough for a seqscan.
                c.batch_execute(
                    "BEGIN; SET LOCAL citus.propagate_set_commands = 'local';
                     SET LOCAL enable_seqscan = off",
                )
                .unwrap();
                let scores = c
                    .query(
                        &format!("SELECT body <@> $1 FROM {table} ORDER BY body <@> $1 LIMIT 10"),
                        &[&query],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                c.batch_execute("COMMIT").unwrap();
                scores
            };
            let (sharded, single) = (
                plain_scores(&mut c, "docs"),
                plain_scores(&mut c, "local_docs"),
            );
            assert!(
                sharded
                    .iter()
                    .zip(&single)
                    .any(|(a, b)| (a - b).abs() > 1e-3),
                "{shards} shards, {query}: per-shard statistics score as one node: {sharded:?}"
            );
            let local = search(&mut c, query, 10, "local_docs_faiss", "semantic");
            // The same through plain SQL on the coordinator.
            let ordered: Vec<i32> = c
                .query(
                    "SELECT id FROM docs ORDER BY body <=> $1 LIMIT 10",
                    &[&query],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let want: Vec<i32> = local.iter().map(|h| h.2).collect();
            assert_eq!(
                ordered, want,
                "{shards} shards, {query}: ORDER BY through Citus"
            );
            // With the query vector from the coordinator's (shell) index, as semantic_search.
            let by_vector: Vec<i32> = c
                .query(
                    "SELECT id FROM docs ORDER BY body <=> semantic_query_vector('docs_faiss', $1) LIMIT 10",
                    &[&query],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(
                by_vector, want,
                "{shards} shards, {query}: ORDER BY a query vector"
            );

            // Rows are told apart by (relation, row_id): ctids repeat across shards.
            let semantic = search(&mut c, query, 50, "docs_faiss", "semantic");
            let lexical = search(&mut c, query, 50, "docs_bm25", "lexical");
            for list in [&semantic, &lexical] {
                let keys: HashSet<(&str, &str)> =
                    list.iter().map(|h| (h.0.as_str(), h.1.as_str())).collect();
                assert_eq!(keys.len(), list.len(), "{shards} shards, {query}: {list:?}");
                assert!(list
                    .iter()
                    .all(|h| h.0 != "docs" && h.0.starts_with("docs_")));
            }
            let row_ids: HashSet<&str> = semantic.iter().map(|h| h.1.as_str()).collect();
            assert!(
                row_ids.len() < semantic.len(),
                "{shards} shards, {query}: no ctid repeats across shards, so the fusion below proves nothing"
            );
            // Hybrid: reciprocal rank fusion (k 60) of those two lists (5 x 10 = 50 deep),
            // joined on (relation, row_id), each row once (whatever the lists' scores).
            // Each row: (id, fused score, its rank on each side), keyed by (relation, row_id).
            type Fused = (i32, f64, [Option<usize>; 2]);
            let mut fused: HashMap<(String, String), Fused> = HashMap::new();
            for (side, list) in [&semantic, &lexical].into_iter().enumerate() {
                for (rank, h) in list.iter().enumerate() {
                    let entry =
                        fused
                            .entry((h.0.clone(), h.1.clone()))
                            .or_insert((h.2, 0.0, [None, None]));
                    assert_eq!(entry.0, h.2, "one (relation, row_id), two rows");
                    entry.1 += 1.0 / (60.0 + rank as f64 + 1.0);
                    entry.2[side] = Some(rank);
                }
            }
            // Best first; ties by semantic rank, then lexical rank (a side without the row last).
            let mut want: Vec<(f64, (String, String), Fused)> = fused
                .into_iter()
                .map(|(key, row)| (row.1, key, row))
                .collect();
            let last = |r: Option<usize>| r.unwrap_or(usize::MAX);
            want.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then(last(a.2 .2[0]).cmp(&last(b.2 .2[0])))
                    .then(last(a.2 .2[1]).cmp(&last(b.2 .2[1])))
                    .then(a.1.cmp(&b.1))
            });
            let hybrid = search(&mut c, query, 10, "docs_faiss", "hybrid");
            assert_eq!(hybrid.len(), 10);
            for (i, (got, want)) in hybrid.iter().zip(&want).enumerate() {
                assert!(
                    (got.3 - want.0).abs() < 1e-9 && got.2 == want.2 .0,
                    "{shards} shards, {query}, rank {}: {got:?} vs {want:?}",
                    i + 1
                );
            }
            let ids: HashSet<i32> = hybrid.iter().map(|h| h.2).collect();
            assert_eq!(ids.len(), 10, "each row once: {hybrid:?}");
        }
    }
}

#[test]
fn semantic_index_shards_reports_every_shard() {
    let Some(cluster) = citus("citus_info") else {
        return;
    };
    let mut c = cluster.coordinator.connect();
    load_docs(&mut c, 4);
    for (index, rows_field) in [("docs_faiss", "rows"), ("docs_bm25", "documents")] {
        let shards: Vec<(Option<i64>, Option<String>, i64)> = c
            .query(
                &format!(
                    "SELECT shardid, node, (info->>'{rows_field}')::bigint
                     FROM semantic_index_shards('{index}')"
                ),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(shards.len(), 4, "{index}: {shards:?}");
        assert!(shards.iter().all(|s| s.0.is_some() && s.1.is_some()));
        assert_eq!(shards.iter().map(|s| s.2).sum::<i64>(), 160, "{shards:?}");
        assert!(shards.iter().all(|s| s.2 > 0 && s.2 < 160), "{shards:?}");
    }
    // The info functions on the coordinator report the whole, not its empty shell.
    let whole: (i64, i64, i64) = {
        let r = c
            .query_one(
                "SELECT f.rows, f.vectors, l.documents
                 FROM semantic_index_info('docs_faiss') f, semantic_lexical_info('docs_bm25') l",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(whole, (160, 160, 160));
    // A plain table's index: one row, its own.
    let local: (Option<i64>, i64) = {
        let r = c
            .query_one(
                "SELECT shardid, (info->>'rows')::bigint FROM semantic_index_shards('local_docs_faiss')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(local, (None, 160));
}

#[test]
fn search_settings_reach_the_shards() {
    let Some(cluster) = citus("citus_settings") else {
        return;
    };
    let mut c = cluster.coordinator.connect();
    load_docs(&mut c, 4);
    let count = |c: &mut Client, mode: &str| -> usize {
        search(c, "storm at the harbour", 20, "docs_faiss", mode).len()
    };
    assert_eq!(count(&mut c, "semantic"), 20);
    // Each shard's scan stops after 3 candidates: 4 shards give 12 rows, not 20, which they
    // would if the shards searched with their own defaults.
    c.batch_execute("SET semantic.max_scan_tuples = 3").unwrap();
    assert_eq!(count(&mut c, "semantic"), 12);
    assert_eq!(count(&mut c, "lexical"), 12);
    // In a transaction block too, and the session's settings are as they were afterwards.
    c.batch_execute("BEGIN").unwrap();
    assert_eq!(count(&mut c, "semantic"), 12);
    let after: (String, String) = {
        let r = c
            .query_one(
                "SELECT current_setting('enable_seqscan'), current_setting('citus.propagate_set_commands')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(after, ("on".to_string(), "none".to_string()));
    c.batch_execute("COMMIT; RESET semantic.max_scan_tuples")
        .unwrap();
    assert_eq!(count(&mut c, "semantic"), 20);
    // A plain ORDER BY through the coordinator: the README's pattern, SET LOCAL in a
    // transaction block with Citus's propagation on.
    let ordered = |c: &mut Client| -> usize {
        c.query(
            "SELECT id FROM docs ORDER BY body <=> 'storm at the harbour' LIMIT 20",
            &[],
        )
        .unwrap()
        .len()
    };
    c.batch_execute(
        "BEGIN; SET LOCAL citus.propagate_set_commands = 'local';
         SET LOCAL enable_seqscan = off; SET LOCAL semantic.max_scan_tuples = 3",
    )
    .unwrap();
    assert_eq!(ordered(&mut c), 12);
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(ordered(&mut c), 20);
}

#[test]
fn a_tenants_search_goes_to_its_shard_and_gets_k_of_its_rows() {
    let Some(cluster) = citus("citus_tenants") else {
        return;
    };
    let mut c = cluster.coordinator.connect();
    for table in ["tenant_docs", "local_tenant_docs"] {
        c.batch_execute(&format!(
            "CREATE TABLE {table} (tenant_id int, id int, body text, PRIMARY KEY (tenant_id, id))"
        ))
        .unwrap();
    }
    c.batch_execute(
        "SELECT create_distributed_table('tenant_docs', 'tenant_id', shard_count => 4)",
    )
    .unwrap();
    // 24 tenants of 30 rows: each shard holds several tenants, and most of a shard's rows
    // belong to other tenants than the one searched.
    for table in ["tenant_docs", "local_tenant_docs"] {
        c.batch_execute(&format!(
            "INSERT INTO {table} SELECT t, g, CASE (t + g) % 3
                 WHEN 0 THEN 'invoice ' || g || ' for harbour cranes of customer ' || t
                 WHEN 1 THEN 'complaint ' || g || ' about a late delivery to customer ' || t
                 ELSE 'meeting notes ' || g || ' on the budget of customer ' || t END
             FROM generate_series(1, 24) t, generate_series(1, 30) g"
        ))
        .unwrap();
        c.batch_execute(&format!(
            "CREATE INDEX {table}_body ON {table} USING faiss (body)"
        ))
        .unwrap();
    }
    let sql = |table: &str| {
        format!(
            "SELECT tenant_id, id FROM {table} WHERE tenant_id = 7
             ORDER BY body <=> 'a delivery that came late' LIMIT 10"
        )
    };
    // Citus routes it to the one shard that holds tenant 7.
    let plan: String = c
        .query(&format!("EXPLAIN {}", sql("tenant_docs")), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect();
    assert!(plan.contains("Task Count: 1"), "{plan}");
    let rows = |c: &mut Client, table: &str| -> Vec<(i32, i32)> {
        c.query(&sql(table), &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let routed = rows(&mut c, "tenant_docs");
    assert_eq!(routed.len(), 10, "{routed:?}");
    assert!(routed.iter().all(|r| r.0 == 7), "{routed:?}");
    // The tenant's exact top 10: a sequential scan of the plain table.
    c.batch_execute("SET enable_indexscan = off").unwrap();
    let exact = rows(&mut c, "local_tenant_docs");
    c.batch_execute("RESET enable_indexscan").unwrap();
    assert_eq!(routed, exact);
}

#[test]
fn moved_and_rebalanced_shards_answer_the_same_and_a_lost_worker_fails_the_search() {
    let Some(cluster) = citus("citus_operations") else {
        return;
    };
    let mut c = cluster.coordinator.connect();
    load_docs(&mut c, 4);
    let query = "storm at the harbour";
    let answers = |c: &mut Client| -> Vec<Vec<Hit>> {
        ["semantic", "lexical", "hybrid"]
            .iter()
            .map(|mode| {
                search(c, query, 10, "docs_faiss", mode)
                    .into_iter()
                    // the shard's name stays, its node changes
                    .map(|h| (String::new(), String::new(), h.2, h.3))
                    .collect()
            })
            .collect()
    };
    let same = |got: &[Vec<Hit>], want: &[Vec<Hit>], what: &str| {
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.len(), w.len(), "{what}");
            for (a, b) in g.iter().zip(w) {
                assert!(
                    a.2 == b.2 && (a.3 - b.3).abs() < 1e-5,
                    "{what}: {g:?} vs {w:?}"
                );
            }
        }
    };
    let before = answers(&mut c);
    let ports: Vec<i32> = cluster.workers.iter().map(|w| i32::from(w.port)).collect();
    // Every shard onto the first worker (the indexes are built again there), then a rebalance
    // spreads them out again.
    let on_second: Vec<i64> = c
        .query(
            "SELECT s.shardid FROM pg_dist_shard s JOIN pg_dist_shard_placement p USING (shardid)
             WHERE s.logicalrelid = 'docs'::regclass AND p.nodeport = $1",
            &[&ports[1]],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!on_second.is_empty());
    for shard in &on_second {
        c.execute(
            "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3,
                                               shard_transfer_mode => 'block_writes')",
            &[shard, &ports[1], &ports[0]],
        )
        .unwrap();
    }
    same(
        &answers(&mut c),
        &before,
        "after moving every shard to one worker",
    );
    c.batch_execute("SELECT rebalance_table_shards('docs', shard_transfer_mode => 'block_writes')")
        .unwrap();
    let spread: i64 = c
        .query_one(
            "SELECT count(DISTINCT p.nodeport) FROM pg_dist_shard s
             JOIN pg_dist_shard_placement p USING (shardid) WHERE s.logicalrelid = 'docs'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(spread, 2, "the rebalance moved shards back");
    same(&answers(&mut c), &before, "after the rebalance");

    // A worker that is gone fails the search: an error, not the other worker's rows alone.
    cluster.workers[1]
        .pg_ctl(&["stop", "-m", "immediate", "-w"])
        .unwrap();
    for mode in ["semantic", "lexical", "hybrid"] {
        let failed = c.query(
            "SELECT * FROM semantic_search($1, 10, 'docs_faiss', mode => $2)",
            &[&query, &mode],
        );
        assert!(failed.is_err(), "{mode}: {failed:?}");
    }
    assert!(c
        .query(
            "SELECT id FROM docs ORDER BY body <=> $1 LIMIT 10",
            &[&query]
        )
        .is_err());
    cluster.workers[1]
        .pg_ctl(&["start", "-w", "-t", "60"])
        .unwrap();
    let mut c = cluster.coordinator.connect();
    same(&answers(&mut c), &before, "after the worker's restart");

    // A worker added later gets the extension (and searches its shards after a rebalance).
    let third = citus_node("citus_operations_worker3");
    c.execute(
        "SELECT citus_add_node('127.0.0.1', $1)",
        &[&i32::from(third.port)],
    )
    .unwrap();
    let versions: Vec<String> = third
        .connect()
        .query(
            "SELECT extversion FROM pg_extension WHERE extname = 'semantic'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions.len(), 1, "the new worker has the extension");
    c.batch_execute("SELECT rebalance_table_shards('docs', shard_transfer_mode => 'block_writes')")
        .unwrap();
    same(
        &answers(&mut c),
        &before,
        "after a rebalance onto a third worker",
    );
}

#[test]
fn semantic_search_embeds_its_query_once_not_once_per_shard() {
    let Some(cluster) = citus("citus_embeddings") else {
        return;
    };
    let mut c = cluster.coordinator.connect();
    load_docs(&mut c, 4);
    let nodes: Vec<&Cluster> = std::iter::once(&cluster.coordinator)
        .chain(&cluster.workers)
        .collect();
    for node in &nodes {
        let mut n = node.connect();
        n.batch_execute("ALTER SYSTEM SET log_min_messages = debug1")
            .unwrap();
        n.batch_execute("SELECT pg_reload_conf()").unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Query embeddings so far: the coordinator's, and the workers' together.
    let embedded = || -> (usize, usize) {
        let count = |node: &Cluster| node.log().matches("semantic: embedded a query").count();
        (
            count(&cluster.coordinator),
            cluster.workers.iter().map(count).sum(),
        )
    };
    let mut c = cluster.coordinator.connect();
    for mode in ["semantic", "hybrid"] {
        let before = embedded();
        assert_eq!(
            search(&mut c, "storm at the harbour", 10, "docs_faiss", mode).len(),
            10
        );
        let after = embedded();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1, 0),
            "{mode}: one embedding, on the coordinator"
        );
    }
    // A plain ORDER BY with the query text embeds it on every shard: 4.
    let before = embedded();
    c.batch_execute(
        "BEGIN; SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL enable_seqscan = off",
    )
    .unwrap();
    let rows = c
        .query(
            "SELECT id FROM docs ORDER BY body <=> 'storm at the harbour' LIMIT 10",
            &[],
        )
        .unwrap();
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(rows.len(), 10);
    let after = embedded();
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 4));
}
