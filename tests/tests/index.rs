//! The faiss index access method: exactness against brute force computed in SQL from embed(),
//! recall of approximate factories, every way a table changes, filters, privileges, the model
//! guard and bad input.

use std::io::Write;

use postgres::error::SqlState;
use postgres::Client;
use semantic_tests::{
    cluster_with_extension as setup, env, exact_and_indexed_ids, expect_error, shared_dir,
    wal_bytes,
};

const QUERIES: [&str; 8] = [
    "romance and separation",
    "a robot learns to love",
    "heist in a casino",
    "survival in the arctic",
    "a haunted house",
    "time travel paradox",
    "a dog finds its way home",
    "a musician chasing fame",
];

/// The project's demo corpus in table `movies` (id, title, year, genre, plot).
fn load_demo(client: &mut Client) {
    client
        .batch_execute("CREATE TABLE movies (id serial PRIMARY KEY, title text, year int, genre text, plot text)")
        .unwrap();
    let csv = std::fs::read(env().repo.join("scripts/demo/movies.csv")).unwrap();
    let mut writer = client
        .copy_in("COPY movies(title, year, genre, plot) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .unwrap();
    writer.write_all(&csv).unwrap();
    writer.finish().unwrap();
}

/// Top-k ids by brute force in SQL: cosine of embed() vectors stored in column `emb`.
fn exact_top(client: &mut Client, table: &str, query: &str, k: i64) -> Vec<i32> {
    client
        .query(
            &format!(
                "WITH q AS (SELECT embed($1) AS v)
                 SELECT id FROM {table}, q
                 ORDER BY (SELECT sum(a::float8 * b) FROM unnest(emb, q.v) AS t(a, b)) DESC, id
                 LIMIT $2"
            ),
            &[&query, &k],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn index_top(client: &mut Client, table: &str, query: &str, k: i64) -> Vec<i32> {
    client
        .query(
            &format!("SELECT id FROM {table} ORDER BY plot <=> $1 LIMIT $2"),
            &[&query, &k],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn recall(found: &[i32], exact: &[i32]) -> f64 {
    found.iter().filter(|id| exact.contains(id)).count() as f64 / exact.len() as f64
}

fn uses_index(client: &mut Client, sql: &str, index: &str) {
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {sql}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains(&format!("Index Scan using {index}")),
        "plan does not use {index}:\n{plan}"
    );
}

#[test]
fn flat_equals_brute_force_and_approximate_factories_reach_recall() {
    let (_cluster, mut client) = setup("index_exact");
    load_demo(&mut client);
    client
        .batch_execute(
            "ALTER TABLE movies ADD COLUMN emb real[]; UPDATE movies SET emb = embed(plot)",
        )
        .unwrap();
    client
        .batch_execute("CREATE INDEX movies_flat ON movies USING faiss (plot)")
        .unwrap();
    uses_index(
        &mut client,
        "SELECT id FROM movies ORDER BY plot <=> 'x' LIMIT 10",
        "movies_flat",
    );
    for q in QUERIES {
        assert_eq!(
            index_top(&mut client, "movies", q, 10),
            exact_top(&mut client, "movies", q, 10),
            "{q}"
        );
    }
    // The scores semantic_search reports are the exact cosine similarities.
    let rows = client
        .query(
            "SELECT rank, score, (\"row\"->>'id')::int FROM semantic_search('a haunted house', 5)",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 5);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<_, i64>(0), i as i64 + 1);
        let id: i32 = row.get(2);
        let exact: f64 = client
            .query_one(
                "SELECT sum(a::float8 * b) FROM movies, unnest(emb, embed('a haunted house')) AS t(a, b) WHERE id = $1",
                &[&id],
            )
            .unwrap()
            .get(0);
        assert!(
            (row.get::<_, f64>(1) - exact).abs() < 1e-4,
            "score of row {id}"
        );
    }
    client.batch_execute("DROP INDEX movies_flat").unwrap();

    for (options, name) in [
        ("factory = 'HNSW32', ef_construction = 100", "movies_hnsw"),
        ("factory = 'IVF4,Flat'", "movies_ivf"),
    ] {
        client
            .batch_execute(&format!(
                "CREATE INDEX {name} ON movies USING faiss (plot) WITH ({options})"
            ))
            .unwrap();
        let (factory, ef): (String, i32) = client
            .query_one(
                "SELECT factory, ef_construction FROM semantic_index_info($1::text::regclass)",
                &[&name],
            )
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert!(options.contains(&factory));
        assert_eq!(ef, if name == "movies_hnsw" { 100 } else { 64 });
        let mut total = 0.0;
        for q in QUERIES {
            total += recall(
                &index_top(&mut client, "movies", q, 10),
                &exact_top(&mut client, "movies", q, 10),
            );
        }
        let r = total / QUERIES.len() as f64;
        assert!(r >= 0.95, "{factory}: recall@10 {r}");
        client.batch_execute(&format!("DROP INDEX {name}")).unwrap();
    }
}

#[test]
fn flat_equals_brute_force_on_the_movies_subset() {
    let Some(shared) = shared_dir() else {
        eprintln!("skipped: ../shared is absent");
        return;
    };
    let (_cluster, mut client) = setup("index_movies");
    client
        .batch_execute(
            "CREATE TEMP TABLE wiki (release_year int, title text, origin text, director text, \"cast\" text,
                                     genre text, wiki_page text, plot text);
             CREATE TABLE films (id serial PRIMARY KEY, plot text, emb real[]);",
        )
        .unwrap();
    let csv = std::fs::read(shared.join("data/movies/wiki_movie_plots_subset.csv")).unwrap();
    let mut writer = client
        .copy_in("COPY wiki FROM STDIN WITH (FORMAT csv, HEADER true)")
        .unwrap();
    writer.write_all(&csv).unwrap();
    writer.finish().unwrap();
    // All 2,418 plots, each embedded twice (by embed() for the exact ranking, by the build):
    // a few minutes on two cores.
    client
        .batch_execute(
            "SET semantic.threads = 2;
             INSERT INTO films(plot) SELECT plot FROM wiki;
             UPDATE films SET emb = embed(plot);
             CREATE INDEX films_plot ON films USING faiss (plot);",
        )
        .unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM films", &[])
        .unwrap()
        .get(0);
    assert!(rows > 2000, "{rows} plots");
    for q in QUERIES {
        assert_eq!(
            index_top(&mut client, "films", q, 10),
            exact_top(&mut client, "films", q, 10),
            "{q}"
        );
    }
}

#[test]
fn rows_follow_inserts_updates_deletes_and_vacuum() {
    let (cluster, mut client) = setup("index_changes");
    load_demo(&mut client);
    client
        .batch_execute("CREATE INDEX movies_plot ON movies USING faiss (plot)")
        .unwrap();
    let q = "an astronaut grows tomatoes on the moon";
    let plot = "Stranded at a lunar base, an astronaut keeps herself alive by growing tomatoes in moon dust.";

    // Inserted after the build: found at once from another session, after commit only.
    let mut other = cluster.connect();
    let mut tx = client.transaction().unwrap();
    tx.execute(
        "INSERT INTO movies(title, genre, plot) VALUES ('Moon Garden', 'drama', $1)",
        &[&plot],
    )
    .unwrap();
    let seen: Vec<String> = other
        .query(
            "SELECT title FROM movies ORDER BY plot <=> $1 LIMIT 1",
            &[&q],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_ne!(
        seen,
        vec!["Moon Garden".to_string()],
        "uncommitted row visible"
    );
    tx.commit().unwrap();
    let top: String = other
        .query_one(
            "SELECT title FROM movies ORDER BY plot <=> $1 LIMIT 1",
            &[&q],
        )
        .unwrap()
        .get(0);
    assert_eq!(top, "Moon Garden");

    // Rolled back: never appears.
    let mut tx = client.transaction().unwrap();
    tx.execute("INSERT INTO movies(title, genre, plot) VALUES ('Ghost Row', 'drama', 'A ghost row about penguins skiing down a volcano.')", &[]).unwrap();
    tx.rollback().unwrap();
    let titles: Vec<String> = other
        .query(
            "SELECT title FROM movies ORDER BY plot <=> 'penguins skiing down a volcano' LIMIT 5",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!titles.contains(&"Ghost Row".to_string()));

    // UPDATE changes what is found.
    client
        .execute("UPDATE movies SET plot = 'A submarine crew befriends a giant squid in the deep ocean.' WHERE title = 'Moon Garden'", &[])
        .unwrap();
    let top: String = other
        .query_one(
            "SELECT title FROM movies ORDER BY plot <=> $1 LIMIT 1",
            &[&q],
        )
        .unwrap()
        .get(0);
    assert_ne!(top, "Moon Garden");
    let top: String = other
        .query_one(
            "SELECT title FROM movies ORDER BY plot <=> 'friendship with a giant squid' LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(top, "Moon Garden");

    // DELETE + VACUUM: never returned, and the space is reused.
    client
        .batch_execute("DELETE FROM movies WHERE title = 'Moon Garden'")
        .unwrap();
    client.batch_execute("VACUUM movies").unwrap();
    let n: i64 = other.query_one("SELECT count(*) FROM (SELECT title FROM movies ORDER BY plot <=> 'friendship with a giant squid' LIMIT 100) s WHERE title = 'Moon Garden'", &[]).unwrap().get(0);
    assert_eq!(n, 0);
    let rows: i64 = client
        .query_one("SELECT rows FROM semantic_index_info('movies_plot')", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 80);

    let mut sizes = Vec::new();
    for cycle in 0..8 {
        client
            .batch_execute(&format!(
                "INSERT INTO movies(title, genre, plot) SELECT 'cycle {cycle} ' || title, genre, plot || ' (again)' FROM movies WHERE id % 2 = 0 AND title NOT LIKE 'cycle%';
                 DELETE FROM movies WHERE title LIKE 'cycle%' AND title NOT LIKE 'cycle {cycle} %';"
            ))
            .unwrap();
        client.batch_execute("VACUUM movies").unwrap();
        let pages: i64 = client
            .query_one("SELECT pages FROM semantic_index_info('movies_plot')", &[])
            .unwrap()
            .get(0);
        sizes.push(pages);
    }
    let settled = sizes[3];
    assert!(
        sizes[4..].iter().all(|&p| p <= settled + 2),
        "index keeps growing: {sizes:?}"
    );
    // Still exact after the cycles.
    let count: i64 = client
        .query_one("SELECT count(*) FROM movies", &[])
        .unwrap()
        .get(0);
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT id FROM movies ORDER BY plot <=> 'a dog' LIMIT 1000) s",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        found, count,
        "every live row is reachable through the index"
    );
}

#[test]
fn filters_get_k_rows_by_searching_deeper() {
    let (_cluster, mut client) = setup("index_filters");
    load_demo(&mut client);
    client.batch_execute("CREATE INDEX movies_plot ON movies USING faiss (plot); SET semantic.scan_candidates = 3").unwrap();
    let comedies: i64 = client
        .query_one("SELECT count(*) FROM movies WHERE genre = 'comedy'", &[])
        .unwrap()
        .get(0);
    assert!(comedies >= 10);
    let rows = client
        .query("SELECT title FROM movies WHERE genre = 'comedy' ORDER BY plot <=> 'survival in the arctic' LIMIT 10", &[])
        .unwrap();
    assert_eq!(rows.len(), 10);

    // Vectors: 300 dramas all nearer the query than the 10 comedies.
    client
        .batch_execute(
            "CREATE TABLE v (id int, genre text, vec real[]);
             INSERT INTO v SELECT i, 'drama', ARRAY[1.0, i * 0.001, 0]::real[] FROM generate_series(1, 300) i;
             INSERT INTO v SELECT 1000 + i, 'comedy', ARRAY[-1.0, i * 0.001, 0]::real[] FROM generate_series(1, 10) i;
             CREATE INDEX v_vec ON v USING faiss (vec);
             RESET semantic.scan_candidates;
             SET enable_seqscan = off; -- 310 rows: the planner would rather sort them",
        )
        .unwrap();
    uses_index(
        &mut client,
        "SELECT id FROM v WHERE genre = 'comedy' ORDER BY vec <-> '{1,0,0}' LIMIT 10",
        "v_vec",
    );
    let ids: Vec<i32> = client
        .query(
            "SELECT id FROM v WHERE genre = 'comedy' ORDER BY vec <-> '{1,0,0}' LIMIT 10",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, (1001..=1010).collect::<Vec<_>>());
}

#[test]
fn real_array_indexes_and_table_lifecycle() {
    let (_cluster, mut client) = setup("index_lifecycle");
    client
        .batch_execute(
            "CREATE TABLE a (id int, vec real[]);
             CREATE TABLE b (id int, vec real[]);
             INSERT INTO a SELECT i, ARRAY[i, 0, 0]::real[] FROM generate_series(1, 50) i;
             INSERT INTO b SELECT i, ARRAY[0, i, 0]::real[] FROM generate_series(1, 50) i;
             CREATE INDEX a_vec ON a USING faiss (vec);
             CREATE INDEX b_vec ON b USING faiss (vec) WITH (factory = 'HNSW16');",
        )
        .unwrap();
    let top = |c: &mut Client, sql: &str| -> Vec<i32> {
        c.query(sql, &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(
        top(
            &mut client,
            "SELECT id FROM a ORDER BY vec <-> '{10.2,0,0}' LIMIT 3"
        ),
        vec![10, 11, 9]
    );
    assert_eq!(
        top(
            &mut client,
            "SELECT id FROM b ORDER BY vec <-> '{0,40.1,0}' LIMIT 2"
        ),
        vec![40, 41]
    );
    // Index distances are the operator's (L2 for real[]).
    let d: f64 = client
        .query_one(
            "SELECT vec <-> '{10.2,0,0}' FROM a ORDER BY vec <-> '{10.2,0,0}' LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!((d - 0.2).abs() < 1e-5);

    expect_error(
        &mut client,
        "SELECT id FROM a ORDER BY vec <-> '{1,2}' LIMIT 1",
        &SqlState::DATA_EXCEPTION,
        "3 dimensions",
    );
    expect_error(
        &mut client,
        "INSERT INTO a VALUES (99, '{1,2,3,4}')",
        &SqlState::DATA_EXCEPTION,
        "3 dimensions",
    );
    expect_error(
        &mut client,
        "INSERT INTO a VALUES (99, '{1,NULL,3}')",
        &SqlState::NULL_VALUE_NOT_ALLOWED,
        "NULL",
    );

    // TRUNCATE empties, inserts work again; REINDEX rebuilds; the other table is untouched.
    client
        .batch_execute("TRUNCATE a; INSERT INTO a VALUES (7, '{7,0,0}')")
        .unwrap();
    assert_eq!(
        top(
            &mut client,
            "SELECT id FROM a ORDER BY vec <-> '{1,0,0}' LIMIT 5"
        ),
        vec![7]
    );
    assert_eq!(
        top(
            &mut client,
            "SELECT id FROM b ORDER BY vec <-> '{0,1,0}' LIMIT 1"
        ),
        vec![1]
    );
    client
        .batch_execute("INSERT INTO a VALUES (8, '{8,0,0}'); REINDEX INDEX a_vec")
        .unwrap();
    assert_eq!(
        top(
            &mut client,
            "SELECT id FROM a ORDER BY vec <-> '{9,0,0}' LIMIT 5"
        ),
        vec![8, 7]
    );
    client
        .batch_execute("INSERT INTO a VALUES (9, '{9,0,0}')")
        .unwrap();
    client
        .batch_execute("REINDEX INDEX CONCURRENTLY a_vec")
        .unwrap();
    assert_eq!(
        top(
            &mut client,
            "SELECT id FROM a ORDER BY vec <-> '{9,0,0}' LIMIT 5"
        ),
        vec![9, 8, 7]
    );
    client.batch_execute("DROP INDEX a_vec").unwrap();
    assert_eq!(
        top(
            &mut client,
            "SELECT id FROM a ORDER BY vec <-> '{9,0,0}' LIMIT 5"
        ),
        vec![9, 8, 7]
    );
    client.batch_execute("DROP TABLE b").unwrap();

    // An index built on an empty table learns its dimension from the first row.
    client
        .batch_execute("CREATE TABLE e (id int, vec real[]); CREATE INDEX e_vec ON e USING faiss (vec); INSERT INTO e VALUES (1, '{1,1}'), (2, '{5,5}')")
        .unwrap();
    assert_eq!(
        top(
            &mut client,
            "SELECT id FROM e ORDER BY vec <-> '{4,4}' LIMIT 2"
        ),
        vec![2, 1]
    );
    let dim: i32 = client
        .query_one("SELECT dimension FROM semantic_index_info('e_vec')", &[])
        .unwrap()
        .get(0);
    assert_eq!(dim, 2);
}

/// A backend keeps the appended records it has read from one search to the next: a row that
/// VACUUM removed from them must leave that copy too, also when the table has given its TID to
/// a new row.
#[test]
fn a_backends_appended_records_follow_vacuum_and_reused_tids() {
    let (cluster, mut client) = setup("index_appended_cache");
    client
        .batch_execute(
            "CREATE TABLE t (id int, vec real[]);
             INSERT INTO t SELECT i, ARRAY[i, 0, 0]::real[] FROM generate_series(1, 50) i;
             CREATE INDEX t_vec ON t USING faiss (vec) WITH (factory = 'Flat');",
        )
        .unwrap();
    let mut searcher = cluster.connect();
    let nearest = |c: &mut Client| -> Vec<i32> {
        c.query("SELECT id FROM t ORDER BY vec <-> '{0,100,0}' LIMIT 3", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(nearest(&mut searcher), vec![1, 2, 3]);
    client
        .batch_execute("INSERT INTO t VALUES (1000, '{0,99,0}')")
        .unwrap();
    assert_eq!(nearest(&mut searcher), vec![1000, 1, 2]);
    client
        .batch_execute("INSERT INTO t VALUES (1001, '{0,98,0}')")
        .unwrap();
    assert_eq!(nearest(&mut searcher), vec![1000, 1001, 1]);
    let ctid = |c: &mut Client, id: i32| -> String {
        c.query_one("SELECT ctid::text FROM t WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    };
    let generation = |c: &mut Client| -> i64 {
        c.query_one("SELECT generation FROM semantic_index_info('t_vec')", &[])
            .unwrap()
            .get(0)
    };
    let (freed, before) = (ctid(&mut client, 1000), generation(&mut client));
    for sql in [
        "DELETE FROM t WHERE id = 1000",
        "VACUUM t",
        "INSERT INTO t VALUES (2000, '{-500,0,0}')",
    ] {
        client.batch_execute(sql).unwrap();
    }
    assert_eq!(
        ctid(&mut client, 2000),
        freed,
        "the new row takes the freed TID"
    );
    assert_eq!(
        generation(&mut client),
        before,
        "VACUUM flagged the record dead, it did not rewrite the index"
    );
    assert_eq!(nearest(&mut searcher), vec![1001, 1, 2]);
    let far: Vec<i32> = searcher
        .query(
            "SELECT id FROM t ORDER BY vec <-> '{-500,0,0}' LIMIT 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(far, vec![2000]);
}

#[test]
fn long_texts_as_chunks_find_late_passages_once_per_row() {
    let (_cluster, mut client) = setup("index_chunks");
    let filler =
        "The committee met again to discuss the annual budget and the parking rules. ".repeat(40);
    let late = format!(
        "{filler} At the very end, a lighthouse keeper rescues a whale trapped in fishing nets."
    );
    client
        .batch_execute(
            "CREATE TABLE docs (id int, body text); CREATE TABLE docs2 (id int, body text)",
        )
        .unwrap();
    for table in ["docs", "docs2"] {
        client
            .execute(&format!("INSERT INTO {table} VALUES (1, $1)"), &[&late])
            .unwrap();
        client
            .execute(&format!("INSERT INTO {table} VALUES (2, $1)"), &[&filler])
            .unwrap();
        client
            .execute(&format!("INSERT INTO {table} VALUES (3, 'A chef opens a noodle bar in a quiet mountain town.')"), &[])
            .unwrap();
    }
    client
        .batch_execute(
            "CREATE INDEX docs_chunks ON docs USING faiss (body) WITH (long_text = 'chunks');
             CREATE INDEX docs2_trunc ON docs2 USING faiss (body);
             SET enable_seqscan = off; -- three rows: the planner would rather sort them",
        )
        .unwrap();
    let q = "lighthouse keeper saves a whale";
    let chunked: Vec<i32> = client
        .query("SELECT id FROM docs ORDER BY body <=> $1 LIMIT 3", &[&q])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(chunked[0], 1, "the late passage is found with chunks");
    assert_eq!(chunked.len(), 3, "each row once: {chunked:?}");
    let mut sorted = chunked.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "no duplicate rows: {chunked:?}");
    let vectors: i64 = client
        .query_one(
            "SELECT vectors FROM semantic_index_info('docs_chunks')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(vectors > 3, "long rows have several vectors ({vectors})");
    // Truncated, the whale is past the model's limit: rows 1 and 2 look the same.
    let d: Vec<f64> = client
        .query(
            "SELECT body <=> $1 FROM docs2 WHERE id IN (1, 2) ORDER BY id",
            &[&q],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        (d[0] - d[1]).abs() < 1e-6,
        "truncation ignores the end: {d:?}"
    );
}

#[test]
fn long_texts_as_the_mean_of_their_windows() {
    let (_cluster, mut client) = setup("index_mean");
    let filler =
        "The committee met again to discuss the annual budget and the parking rules. ".repeat(40);
    let late = format!("{filler} At the very end, a lighthouse keeper rescues a whale.");
    let short = "A chef opens a noodle bar in a quiet mountain town.";
    client
        .batch_execute("CREATE TABLE docs (id int, body text)")
        .unwrap();
    for (id, body) in [(1, late.as_str()), (2, filler.as_str()), (3, short)] {
        client
            .execute("INSERT INTO docs VALUES ($1, $2)", &[&id, &body])
            .unwrap();
    }
    client
        .batch_execute(
            "CREATE INDEX docs_mean ON docs USING faiss (body) WITH (long_text = 'mean');
             SET enable_seqscan = off;",
        )
        .unwrap();
    let info = client
        .query_one(
            "SELECT long_text, vectors FROM semantic_index_info('docs_mean')",
            &[],
        )
        .unwrap();
    let (long_text, vectors): (String, i64) = (info.get(0), info.get(1));
    assert_eq!(
        (long_text.as_str(), vectors),
        ("mean", 3),
        "one vector a row"
    );
    // Each row's distance is that of the mean of its windows, recomputed here from the
    // encoder's windows and window vectors (normalised, as the model normalises).
    semantic_encoder::init_runtime(&env().onnxruntime).unwrap();
    let mut encoder = semantic_encoder::Encoder::load(
        &env().model_dir.join("all-MiniLM-L6-v2"),
        &semantic_encoder::EncoderOptions::default(),
    )
    .unwrap();
    let q = "lighthouse keeper saves a whale";
    let query = encoder
        .encode(&[q], semantic_encoder::TextKind::Query)
        .unwrap()
        .remove(0);
    for (id, body) in [(1, late.as_str()), (2, filler.as_str()), (3, short)] {
        let windows = encoder
            .tokenize_chunks(body, semantic_encoder::TextKind::Passage)
            .unwrap();
        assert_eq!(
            windows.len() > 1,
            id != 3,
            "row {id}: {} windows",
            windows.len()
        );
        let vectors = encoder.encode_token_ids(&windows).unwrap();
        let mut mean = vec![0f32; query.len()];
        for v in &vectors {
            for (m, x) in mean.iter_mut().zip(v) {
                *m += x / vectors.len() as f32;
            }
        }
        let expected = 1.0 - semantic_encoder::cosine_similarity(&mean, &query);
        let got: f64 = client
            .query(
                "SELECT id, body <=> $1 FROM docs ORDER BY body <=> $1 LIMIT 3",
                &[&q],
            )
            .unwrap()
            .iter()
            .find(|r| r.get::<_, i32>(0) == id)
            .unwrap()
            .get(1);
        assert!(
            (got - expected).abs() < 1e-5,
            "row {id}: index {got}, recomputed {expected}"
        );
    }
}

/// `text <=> real[]`: a query vector the caller embedded searches a text index as the query
/// text does (same rows, same distances), and the index embeds nothing for it; without the
/// index, the operator embeds the rows with the default model; semantic_query_vector gives the
/// vector the index searches for a text, and semantic_search, which searches with it, ranks as
/// before; a vector of another dimension is refused, with or without the index.
#[test]
fn a_query_vector_searches_a_text_index_without_embedding() {
    let (cluster, mut c) = setup("query_vector");
    load_demo(&mut c);
    c.batch_execute("CREATE INDEX movies_plot ON movies USING faiss (plot)")
        .unwrap();
    let vectors: Vec<Vec<f32>> = QUERIES
        .iter()
        .map(|q| c.query_one("SELECT embed($1)", &[q]).unwrap().get(0))
        .collect();
    let top = |client: &mut Client, sql: &str, query: &(dyn postgres::types::ToSql + Sync)| {
        client
            .query(sql, &[query])
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, f64>(1)))
            .collect::<Vec<_>>()
    };
    let sql = "SELECT id, plot <=> $1 FROM movies ORDER BY plot <=> $1 LIMIT 5";
    // An untyped parameter is taken as text (the operator of text and text matches exactly).
    let sql_vector =
        "SELECT id, plot <=> $1::real[] FROM movies ORDER BY plot <=> $1::real[] LIMIT 5";

    // A new session that searches with vectors only.
    let mut fresh = cluster.connect();
    fresh.batch_execute("SET enable_seqscan = off").unwrap();
    uses_index(
        &mut fresh,
        "SELECT id FROM movies ORDER BY plot <=> '{0.1,0.2}'::real[] LIMIT 5",
        "movies_plot",
    );
    let by_vector: Vec<_> = vectors
        .iter()
        .map(|v| top(&mut fresh, sql_vector, v))
        .collect();
    let loaded = "SELECT loaded FROM semantic_models() WHERE name = current_setting('semantic.default_model')";
    let embedded: bool = fresh.query_one(loaded, &[]).unwrap().get(0);
    assert!(!embedded, "the vector searches loaded the model");

    for ((query, v), found) in QUERIES.iter().zip(&vectors).zip(&by_vector) {
        let by_text = top(&mut fresh, sql, query);
        assert_eq!(found.len(), 5);
        assert_eq!(
            found.iter().map(|r| r.0).collect::<Vec<_>>(),
            by_text.iter().map(|r| r.0).collect::<Vec<_>>(),
            "{query}"
        );
        for (a, b) in found.iter().zip(&by_text) {
            assert!((a.1 - b.1).abs() < 1e-5, "{query}: {} vs {}", a.1, b.1);
        }
        // Without the index the rows are embedded by the operator: the same order.
        c.batch_execute("SET enable_indexscan = off").unwrap();
        let unindexed = top(&mut c, sql_vector, v);
        c.batch_execute("RESET enable_indexscan").unwrap();
        assert_eq!(
            unindexed.iter().map(|r| r.0).collect::<Vec<_>>(),
            found.iter().map(|r| r.0).collect::<Vec<_>>(),
            "{query}: without the index"
        );
        for (a, b) in unindexed.iter().zip(found) {
            assert!((a.1 - b.1).abs() < 1e-5, "{query}: {} vs {}", a.1, b.1);
        }
    }
    // The text searches did embed: the check above can see it.
    let embedded: bool = fresh.query_one(loaded, &[]).unwrap().get(0);
    assert!(embedded);

    // semantic_query_vector embeds a query as the index does (the model's query prefix, the
    // model checked): here the same vector as embed(), this model having no prefixes.
    for (query, v) in QUERIES.iter().zip(&vectors) {
        let own: Vec<f32> = c
            .query_one("SELECT semantic_query_vector('movies_plot', $1)", &[query])
            .unwrap()
            .get(0);
        assert_eq!(own.len(), v.len());
        assert!(
            own.iter().zip(v).all(|(a, b)| (a - b).abs() < 1e-5),
            "{query}"
        );
        // semantic_search searches with it: the text query's rows and distances.
        let searched: Vec<(i32, f64)> = c
            .query(
                "SELECT (row->>'id')::int, score FROM semantic_search($1, 5, 'movies_plot')",
                &[query],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let by_text = top(&mut fresh, sql, query);
        assert_eq!(
            searched.iter().map(|r| r.0).collect::<Vec<_>>(),
            by_text.iter().map(|r| r.0).collect::<Vec<_>>(),
            "{query}: semantic_search"
        );
        for (a, b) in searched.iter().zip(&by_text) {
            assert!(
                (a.1 - (1.0 - b.1)).abs() < 1e-5,
                "{query}: score {} for distance {}",
                a.1,
                b.1
            );
        }
    }
    c.batch_execute(
        "CREATE TABLE points (id int, vec real[]);
         INSERT INTO points VALUES (1, '{1,0}'), (2, '{0,1}');
         CREATE INDEX points_vec ON points USING faiss (vec);
         CREATE INDEX movies_bm25 ON movies USING bm25 (plot);",
    )
    .unwrap();
    expect_error(
        &mut c,
        "SELECT semantic_query_vector('points_vec', 'q')",
        &SqlState::WRONG_OBJECT_TYPE,
        "is on a vector column",
    );
    expect_error(
        &mut c,
        "SELECT semantic_query_vector('movies_bm25', 'q')",
        &SqlState::WRONG_OBJECT_TYPE,
        "is not a faiss index",
    );

    let wrong = "SELECT id FROM movies ORDER BY plot <=> '{0.1,0.2,0.3}'::real[] LIMIT 5";
    expect_error(
        &mut fresh,
        wrong,
        &SqlState::DATA_EXCEPTION,
        "the query vector has 3 dimensions",
    );
    c.batch_execute("SET enable_indexscan = off").unwrap();
    expect_error(
        &mut c,
        wrong,
        &SqlState::DATA_EXCEPTION,
        "the query vector has 3 dimensions",
    );
    expect_error(
        &mut c,
        "SELECT plot <=> '{1,NaN}'::real[] FROM movies LIMIT 1",
        &SqlState::DATA_EXCEPTION,
        "NaN",
    );
}

#[test]
fn semantic_search_checks_privileges_and_row_security() {
    let (cluster, mut client) = setup("index_privileges");
    load_demo(&mut client);
    client
        .batch_execute(
            "CREATE INDEX movies_plot ON movies USING faiss (plot);
             CREATE ROLE reader LOGIN; CREATE ROLE stranger LOGIN;
             GRANT SELECT ON movies TO reader;
             ALTER TABLE movies ENABLE ROW LEVEL SECURITY;
             CREATE POLICY no_comedy ON movies FOR SELECT TO reader USING (genre <> 'comedy');",
        )
        .unwrap();
    let mut stranger = cluster.connect_as("stranger");
    expect_error(
        &mut stranger,
        "SELECT * FROM semantic_search('a funny heist', 5)",
        &SqlState::INSUFFICIENT_PRIVILEGE,
        "permission denied",
    );
    let mut reader = cluster.connect_as("reader");
    let genres: Vec<String> = reader
        .query(
            "SELECT \"row\"->>'genre' FROM semantic_search('a hilarious comedy of errors', 30)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(genres.len(), 30);
    assert!(
        !genres.iter().any(|g| g == "comedy"),
        "RLS-hidden rows came back"
    );
    let all: i64 = client.query_one("SELECT count(*) FROM semantic_search('a hilarious comedy of errors', 30) WHERE \"row\"->>'genre' = 'comedy'", &[]).unwrap().get(0);
    assert!(all > 0, "the owner sees comedies");
}

#[test]
fn semantic_search_names_its_index_and_rejects_bad_input() {
    let (cluster, mut client) = setup("index_errors");
    let started: String = client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    expect_error(
        &mut client,
        "SELECT * FROM semantic_search('x', 5)",
        &SqlState::UNDEFINED_OBJECT,
        "no faiss index",
    );
    load_demo(&mut client);
    client
        .batch_execute("CREATE INDEX movies_plot ON movies USING faiss (plot)")
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM semantic_search('x', 5)", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    let n: i64 = client
        .query_one("SELECT count(*) FROM semantic_search('x', 1000)", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 80, "huge k returns every row");
    let n: i64 = client
        .query_one("SELECT count(*) FROM semantic_search(NULL, 5)", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let n: i64 = client
        .query_one("SELECT count(*) FROM semantic_search('', 5)", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    expect_error(
        &mut client,
        "SELECT * FROM semantic_search('x', 0)",
        &SqlState::INVALID_PARAMETER_VALUE,
        "k must be",
    );
    expect_error(
        &mut client,
        "SELECT semantic_distance_score('manhattan', 1)",
        &SqlState::INVALID_PARAMETER_VALUE,
        "unknown metric",
    );
    client.batch_execute("CREATE TABLE other (id int, body text); CREATE INDEX other_body ON other USING faiss (body)").unwrap();
    expect_error(
        &mut client,
        "SELECT * FROM semantic_search('x', 5)",
        &SqlState::AMBIGUOUS_PARAMETER,
        "movies_plot, other_body",
    );
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM semantic_search('x', 5, 'movies_plot')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    expect_error(
        &mut client,
        "SELECT * FROM semantic_search('x', 5, 'movies_pkey')",
        &SqlState::WRONG_OBJECT_TYPE,
        "not a faiss index",
    );
    expect_error(
        &mut client,
        "SELECT * FROM semantic_search('x', 5, 'no_such_index')",
        &SqlState::UNDEFINED_TABLE,
        "does not exist",
    );
    // A partitioned table's index: one index per partition. semantic_search names the
    // partitioned one as such and takes a partition's; ORDER BY on the parent searches them all.
    client
        .batch_execute(
            "CREATE TABLE parts (id int, body text) PARTITION BY RANGE (id);
             CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (100);
             CREATE TABLE parts_high PARTITION OF parts FOR VALUES FROM (100) TO (200);
             INSERT INTO parts SELECT g, 'note number ' || g FROM generate_series(1, 150) g;
             CREATE INDEX parts_body ON parts USING faiss (body);",
        )
        .unwrap();
    expect_error(
        &mut client,
        "SELECT * FROM semantic_search('number 120', 3, 'parts_body')",
        &SqlState::FEATURE_NOT_SUPPORTED,
        "index of a partitioned table",
    );
    let relations: Vec<String> = client
        .query(
            "SELECT DISTINCT relation FROM semantic_search('number 120', 3, 'parts_high_body_idx')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(relations, ["parts_high"]);
    client.batch_execute("SET enable_seqscan = off").unwrap();
    let plan: String = client
        .query(
            "EXPLAIN SELECT id FROM parts ORDER BY body <=> 'number 120' LIMIT 3",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect();
    assert!(
        plan.contains("Index Scan using parts_low_body_idx")
            && plan.contains("Index Scan using parts_high_body_idx"),
        "{plan}"
    );
    let found = client
        .query(
            "SELECT id FROM parts ORDER BY body <=> 'number 120' LIMIT 3",
            &[],
        )
        .unwrap();
    assert_eq!(found.len(), 3);
    client
        .batch_execute("RESET enable_seqscan; DROP TABLE parts")
        .unwrap();
    // An index given as a regclass value answers like its name.
    let by_oid: Vec<String> = client
        .query(
            "SELECT row_id::text FROM semantic_search('x', 5, 'movies_plot'::regclass) ORDER BY rank",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let by_name: Vec<String> = client
        .query(
            "SELECT row_id::text FROM semantic_search('x', 5, 'movies_plot') ORDER BY rank",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!((by_oid.len(), &by_oid), (5, &by_name));

    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (plot) WITH (metric = 'manhattan')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "metric",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (plot) WITH (factory = 'HNSW16', ef_construction = 2)",
        &SqlState::INVALID_PARAMETER_VALUE,
        "ef_construction",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (plot) WITH (long_text = 'all')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "long_text",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (plot) WITH (factory = 'Nope')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "factory",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (plot) WITH (factory = 'IVF1000,Flat')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "train",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (plot) WITH (model = '../x')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "invalid model name",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (plot) WITH (model = 'missing')",
        &SqlState::UNDEFINED_OBJECT,
        "not installed",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (plot) WITH (colour = 'red')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "colour",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (year)",
        &SqlState::UNDEFINED_OBJECT,
        "operator class",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON movies USING faiss (title, plot)",
        &SqlState::FEATURE_NOT_SUPPORTED,
        "multicolumn",
    );

    let now: String = client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(now, started, "no backend crashed");
    assert!(!cluster.log().contains("terminated by signal"));
}

#[test]
fn a_model_changed_under_an_index_is_detected() {
    let (cluster, mut client) = setup("index_model_guard");
    // A private model directory with a copy of the model, so the test can change it.
    let root = cluster.data.join("models");
    let source = env().model_dir.join("all-MiniLM-L6-v2");
    let copy = root.join("minilm-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["manifest.json", "tokenizer.json", "model.onnx"] {
        std::fs::copy(source.join(f), copy.join(f)).unwrap();
    }
    std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&root)
        .status()
        .unwrap();
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET semantic.model_dir = '{}'",
            root.display()
        ))
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    // The postmaster rereads the configuration when its signal arrives: wait until new
    // connections see the new directory.
    let want = root.display().to_string();
    let started = std::time::Instant::now();
    let mut client = loop {
        let mut fresh = cluster.connect();
        let dir: String = fresh
            .query_one("SELECT current_setting('semantic.model_dir')", &[])
            .unwrap()
            .get(0);
        if dir == want {
            break fresh;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "the reload did not happen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    load_demo(&mut client);
    client
        .batch_execute(
            "CREATE INDEX movies_plot ON movies USING faiss (plot) WITH (model = 'minilm-copy')",
        )
        .unwrap();
    uses_index(
        &mut client,
        "SELECT id FROM movies ORDER BY plot <=> 'a haunted house' LIMIT 3",
        "movies_plot",
    );
    let model: String = client
        .query_one("SELECT model FROM semantic_index_info('movies_plot')", &[])
        .unwrap()
        .get(0);
    assert_eq!(model, "minilm-copy");
    assert_eq!(
        index_top(&mut client, "movies", "a haunted house", 3).len(),
        3
    );

    // Same name, different model: the installed manifest now says 128 tokens.
    let mut manifest = semantic_encoder::Manifest::load(&copy).unwrap();
    manifest.max_seq_length = 128;
    manifest.fingerprint = semantic_encoder::compute_fingerprint(&copy, &manifest).unwrap();
    manifest.save(&copy).unwrap();
    let mut fresh = cluster.connect();
    expect_error(
        &mut fresh,
        "SELECT id FROM movies ORDER BY plot <=> 'a haunted house' LIMIT 3",
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "changed since index",
    );
    expect_error(
        &mut fresh,
        "INSERT INTO movies(title, plot) VALUES ('t', 'p')",
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "changed since index",
    );
    fresh.batch_execute("REINDEX INDEX movies_plot").unwrap();
    assert_eq!(
        index_top(&mut fresh, "movies", "a haunted house", 3).len(),
        3
    );
}

#[test]
fn create_index_reports_progress() {
    let (cluster, mut client) = setup("index_progress");
    client
        .batch_execute(
            "CREATE TABLE docs (id int, body text);
             INSERT INTO docs SELECT i, 'document ' || i || ' ' || repeat('about many things ', 40) FROM generate_series(1, 600) i;",
        )
        .unwrap();
    let builder = std::thread::spawn({
        let mut conn = cluster.connect();
        move || {
            conn.batch_execute("CREATE INDEX docs_body ON docs USING faiss (body)")
                .unwrap()
        }
    });
    let mut watcher = cluster.connect();
    let mut seen = Vec::new();
    while !builder.is_finished() {
        for row in watcher
            .query(
                "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index",
                &[],
            )
            .unwrap()
        {
            let phase: String = row.get(0);
            if !seen.contains(&phase) {
                seen.push(phase);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    builder.join().unwrap();
    assert!(
        seen.iter().any(|p| p.contains("embedding rows")),
        "phases seen: {seen:?}"
    );
}

/// The row ids semantic_search returns for `args` (the SQL after the query text), best first.
fn search_ids(client: &mut Client, args: &str) -> Vec<String> {
    client
        .query(
            &format!("SELECT row_id::text FROM semantic_search('a robot learns to love', {args}) ORDER BY rank"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn default_index_setting_picks_the_index_among_several() {
    let (cluster, mut client) = setup("default_index");
    load_demo(&mut client);
    client
        .batch_execute(
            "CREATE INDEX movies_plot ON movies USING faiss (plot);
             CREATE INDEX movies_title ON movies USING faiss (title);
             CREATE INDEX movies_plot_bm25 ON movies USING bm25 (plot);
             CREATE TABLE notes (id int, body text);
             INSERT INTO notes SELECT id, plot FROM movies;
             CREATE INDEX notes_body ON notes USING faiss (body);",
        )
        .unwrap();
    // Three faiss indexes: a call that names none is ambiguous, and says how to choose.
    let err = client
        .query("SELECT * FROM semantic_search('x', 5)", &[])
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code(), &SqlState::AMBIGUOUS_PARAMETER);
    assert!(db.hint().unwrap_or("").contains("semantic.default_index"));

    let by_name = |client: &mut Client, index: &str, mode: &str| {
        search_ids(client, &format!("5, '{index}', mode => '{mode}'"))
    };
    // Per database: a new connection takes it.
    client
        .batch_execute("ALTER DATABASE postgres SET semantic.default_index = 'movies_title'")
        .unwrap();
    let mut fresh = cluster.connect();
    let title = by_name(&mut fresh, "movies_title", "semantic");
    assert_eq!(title.len(), 5);
    assert_eq!(search_ids(&mut fresh, "5"), title);
    // A session's SET wins over the database's; the index named in a call wins over both.
    fresh
        .batch_execute("SET semantic.default_index = 'movies_plot'")
        .unwrap();
    let plot = by_name(&mut fresh, "movies_plot", "semantic");
    assert_ne!(plot, title, "the two indexes rank differently");
    assert_eq!(search_ids(&mut fresh, "5"), plot);
    assert_eq!(search_ids(&mut fresh, "5, 'movies_title'"), title);
    // Lexical and hybrid searches use the bm25 index on the default's column.
    assert_eq!(
        search_ids(&mut fresh, "5, mode => 'lexical'"),
        by_name(&mut fresh, "movies_plot_bm25", "lexical")
    );
    assert_eq!(
        search_ids(&mut fresh, "5, mode => 'hybrid'"),
        by_name(&mut fresh, "movies_plot", "hybrid")
    );
    // And a bm25 index as the default serves semantic search through its faiss twin.
    fresh
        .batch_execute("SET semantic.default_index = 'movies_plot_bm25'")
        .unwrap();
    assert_eq!(search_ids(&mut fresh, "5"), plot);

    // Defaults that cannot serve are clear errors.
    for (default, mode, state, message) in [
        (
            "movies_title",
            "lexical",
            &SqlState::UNDEFINED_OBJECT,
            "no bm25 index on the column of semantic.default_index",
        ),
        (
            "no_such_index",
            "semantic",
            &SqlState::UNDEFINED_TABLE,
            "semantic.default_index names \"no_such_index\"",
        ),
        (
            "movies_pkey",
            "semantic",
            &SqlState::WRONG_OBJECT_TYPE,
            "not a faiss index",
        ),
    ] {
        fresh
            .batch_execute(&format!("SET semantic.default_index = '{default}'"))
            .unwrap();
        expect_error(
            &mut fresh,
            &format!("SELECT * FROM semantic_search('x', 5, mode => '{mode}')"),
            state,
            message,
        );
    }
    // An index named in the call stands for its twin of the mode's kind the same way.
    fresh.batch_execute("RESET semantic.default_index").unwrap();
    assert_eq!(
        by_name(&mut fresh, "movies_plot", "lexical"),
        by_name(&mut fresh, "movies_plot_bm25", "lexical")
    );
    assert_eq!(by_name(&mut fresh, "movies_plot_bm25", "semantic"), plot);
    assert_eq!(
        by_name(&mut fresh, "movies_plot_bm25", "hybrid"),
        by_name(&mut fresh, "movies_plot", "hybrid")
    );
    expect_error(
        &mut fresh,
        "SELECT * FROM semantic_search('x', 5, 'movies_title', mode => 'lexical')",
        &SqlState::UNDEFINED_OBJECT,
        "there is no bm25 index on the column of faiss index \"movies_title\"",
    );
    fresh
        .batch_execute("CREATE INDEX movies_plot_bm25_2 ON movies USING bm25 (plot)")
        .unwrap();
    expect_error(
        &mut fresh,
        "SELECT * FROM semantic_search('x', 5, 'movies_plot', mode => 'lexical')",
        &SqlState::AMBIGUOUS_PARAMETER,
        "there are 2 bm25 indexes on the column of faiss index \"movies_plot\"",
    );
    // A misspelt setting name is refused, not kept as a placeholder.
    expect_error(
        &mut fresh,
        "SET semantic.default_indx = 'movies_plot'",
        &SqlState::INVALID_NAME,
        "semantic.default_indx",
    );
}

/// pgvector's index options create the faiss index that does the same, so that a migration's
/// CREATE INDEX runs unchanged; contradictions and pgvector's bounds are errors.
#[test]
fn pgvector_index_options_choose_the_factory() {
    let (_cluster, mut client) = setup("pgvector_options");
    client
        .batch_execute(
            "CREATE TABLE items (id int, v real[]);
             INSERT INTO items SELECT i, ARRAY[i % 7, i % 11, i % 13]::real[] FROM generate_series(1, 300) i;
             CREATE INDEX items_hnsw ON items USING faiss (v) WITH (m = 8, ef_construction = 40);
             CREATE INDEX items_hnsw_factory ON items USING faiss (v) WITH (m = 8, factory = 'HNSW8');
             CREATE INDEX items_ivf ON items USING faiss (v) WITH (lists = 4);",
        )
        .unwrap();
    for (index, factory, ef) in [
        ("items_hnsw", "HNSW8", 40),
        ("items_hnsw_factory", "HNSW8", 64),
        ("items_ivf", "IVF4,Flat", 64),
    ] {
        let row = client
            .query_one(
                "SELECT factory, ef_construction FROM semantic_index_info($1::text::regclass)",
                &[&index],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), factory, "{index}");
        assert_eq!(row.get::<_, i32>(1), ef, "{index}");
    }
    for (with, state, message) in [
        (
            "m = 8, factory = 'HNSW16'",
            SqlState::INVALID_PARAMETER_VALUE,
            "contradicts \"m\" (8)",
        ),
        (
            "lists = 4, factory = 'Flat'",
            SqlState::INVALID_PARAMETER_VALUE,
            "contradicts \"lists\" (4)",
        ),
        (
            "m = 8, lists = 4",
            SqlState::INVALID_PARAMETER_VALUE,
            "give one of them",
        ),
        (
            "m = 40",
            SqlState::INVALID_PARAMETER_VALUE,
            "ef_construction must be greater than or equal to 2 * m",
        ),
        (
            "m = 1",
            SqlState::INVALID_PARAMETER_VALUE,
            "value 1 out of bounds for option \"m\"",
        ),
        (
            "m = 101",
            SqlState::INVALID_PARAMETER_VALUE,
            "out of bounds for option \"m\"",
        ),
        (
            "lists = 0",
            SqlState::INVALID_PARAMETER_VALUE,
            "out of bounds for option \"lists\"",
        ),
        (
            "lists = 32769",
            SqlState::INVALID_PARAMETER_VALUE,
            "out of bounds for option \"lists\"",
        ),
    ] {
        expect_error(
            &mut client,
            &format!("CREATE INDEX ON items USING faiss (v) WITH ({with})"),
            &state,
            message,
        );
    }
}

/// A fold of a Flat or HNSW index keeps the vectors the pages already hold (in segments) and
/// writes the new ones, the graph and the ids: it logs a fraction of what the build did, the
/// relation grows by about what was added, and searches stay exact (Flat), also after a crash.
#[test]
fn folds_write_the_new_vectors_not_all_of_them() {
    let (cluster, mut c) = setup("index_vector_segments");
    let rows = |from: i32, to: i32| {
        format!(
            "INSERT INTO v SELECT i, (SELECT array_agg(sin(i * 0.37 + d * 1.3)::real)
               FROM generate_series(1, 256) d) FROM generate_series({from}, {to}) i"
        )
    };
    for factory in ["Flat", "HNSW16"] {
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS v;
             CREATE TABLE v (id int PRIMARY KEY, vec real[]) WITH (autovacuum_enabled = off);
             {};",
            rows(1, 4000)
        ))
        .unwrap();
        let built = wal_bytes(
            &mut c,
            &format!("CREATE INDEX v_idx ON v USING faiss (vec) WITH (factory = '{factory}')"),
        );
        let size = |c: &mut Client| -> i64 {
            c.query_one("SELECT pg_relation_size('v_idx')", &[])
                .unwrap()
                .get(0)
        };
        let after_build = size(&mut c);
        for round in 0..4 {
            let first = 4001 + round * 100;
            c.batch_execute(&rows(first, first + 99)).unwrap();
            let folded = wal_bytes(&mut c, "SELECT semantic_index_fold('v_idx')");
            let bound = if factory == "Flat" { 10 } else { 3 };
            assert!(
                folded * bound < built,
                "{factory} fold {round} logged {folded} bytes, the build {built}"
            );
        }
        // 400 rows added to 4,000; each rewrite's old pages become free for the next.
        let grown = size(&mut c) as f64 / after_build as f64;
        assert!(
            grown < 1.5,
            "{factory}: the index grew {grown:.2}x over four folds"
        );
        let check = |c: &mut Client, what: &str| {
            for q in [7, 4050, 4399] {
                let sql = format!(
                    "SELECT id FROM v ORDER BY vec <-> (SELECT vec FROM v WHERE id = {q}) LIMIT 10"
                );
                let (exact, got) = exact_and_indexed_ids(c, &sql);
                if factory == "Flat" {
                    assert_eq!(got, exact, "{factory} {what}: query {q}");
                } else {
                    assert_eq!(got[0], q, "{factory} {what}: query {q} finds itself");
                }
            }
        };
        check(&mut c, "folded");
        // The snapshot file goes; its pages (vectors and graph from several rewrites) rebuild it.
        for entry in std::fs::read_dir(cluster.data.join("pg_stat_tmp/semantic")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "snap") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let mut fresh = cluster.connect();
        check(&mut fresh, "rebuilt from the pages");
        c.batch_execute("DROP TABLE v").unwrap();
    }
}
