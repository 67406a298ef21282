//! The bm25 index through SQL: scores equal a hand computation and an exhaustive BM25 over
//! the table's own `to_tsvector` lexemes; rows follow the table through inserts, updates,
//! deletes, VACUUM and rollbacks, on a standby and after a crash; filters get k rows; bad
//! input gets an error or an empty result; hybrid search fuses the two lists as documented.

use std::collections::HashMap;

use postgres::error::SqlState;
use postgres::Client;
use semantic_lexical::{Bm25, CorpusStats};
use semantic_tests::vectors::wait_for_replay;
use semantic_tests::{cluster_with_extension as setup, expect_error, wal_bytes};

/// (id, minus the BM25 score) of `ORDER BY body <@> query LIMIT k` through the index.
fn via_index(client: &mut Client, query: &str, k: i64) -> Vec<(i32, f64)> {
    client.batch_execute("SET enable_seqscan = off").unwrap();
    client
        .query(
            "SELECT id, body <@> $1 FROM docs ORDER BY body <@> $1 LIMIT $2",
            &[&query, &k],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The same ranking computed here from every visible row's lexemes (to_tsvector 'english'),
/// rows holding no query term included at 0, best first, ties by id.
fn exhaustive(client: &mut Client, query: &str, k: usize) -> Vec<(i32, f64)> {
    let mut docs: HashMap<i32, (u32, HashMap<String, u32>)> = HashMap::new();
    for row in client
        .query(
            "SELECT id, (l).lexeme, coalesce(cardinality((l).positions), 1)::int
             FROM (SELECT id, unnest(to_tsvector('english', body)) AS l FROM docs) s",
            &[],
        )
        .unwrap()
    {
        let (id, lexeme, tf): (i32, String, i32) = (row.get(0), row.get(1), row.get(2));
        let doc = docs.entry(id).or_default();
        doc.0 += tf as u32;
        doc.1.insert(lexeme, tf as u32);
    }
    for row in client.query("SELECT id FROM docs", &[]).unwrap() {
        docs.entry(row.get(0)).or_default();
    }
    let terms: Vec<(String, u32)> = client
        .query(
            "SELECT (l).lexeme, coalesce(cardinality((l).positions), 1)::int
             FROM unnest(to_tsvector('english', $1)) AS l",
            &[&query],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, i32>(1) as u32))
        .collect();
    let bm25 = Bm25 {
        k1: Bm25::DEFAULT_K1,
        b: Bm25::DEFAULT_B,
        stats: CorpusStats {
            documents: docs.len() as u64,
            total_length: docs.values().map(|d| d.0 as u64).sum(),
        },
    };
    let mut scored: Vec<(i32, f64)> = docs
        .iter()
        .map(|(&id, (length, tfs))| {
            let score: f32 = terms
                .iter()
                .filter_map(|(t, qtf)| {
                    let df = docs.values().filter(|d| d.1.contains_key(t)).count() as u64;
                    tfs.get(t)
                        .map(|&tf| bm25.idf(df) * *qtf as f32 * bm25.tf_part(tf, *length))
                })
                .sum();
            (id, -f64::from(score))
        })
        .collect();
    scored.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

/// Equal up to float rounding: same distances rank by rank, same rows where not tied.
fn assert_same(got: &[(i32, f64)], want: &[(i32, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g.1 - w.1).abs() < 1e-4, "{what}: rank {i}: {g:?} vs {w:?}");
        let tied = want.iter().filter(|x| (x.1 - w.1).abs() < 1e-4).count() > 1;
        assert!(tied || g.0 == w.0, "{what}: rank {i}: {g:?} vs {w:?}");
    }
}

const WORDS: [&str; 24] = [
    "harbour",
    "lighthouse",
    "storm",
    "letters",
    "summer",
    "train",
    "piano",
    "garden",
    "winter",
    "detective",
    "island",
    "wedding",
    "mountain",
    "river",
    "secret",
    "village",
    "soldier",
    "dancer",
    "orchard",
    "painter",
    "thief",
    "festival",
    "desert",
    "archive",
];

/// A text of `n` words drawn from WORDS by a seeded generator (skewed towards the first).
fn text(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = (x % 1000) as f64 / 1000.0;
            WORDS[((r * r) * WORDS.len() as f64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Inserts rows `ids` into docs, one statement each, with texts of 5 to 44 words.
fn insert_docs(client: &mut Client, ids: std::ops::Range<i32>) {
    for i in ids {
        client
            .execute(
                "INSERT INTO docs VALUES ($1, $2)",
                &[&i, &text(i as u64, 5 + (i as usize % 40))],
            )
            .unwrap();
    }
}

const QUERIES: [&str; 6] = [
    "harbour storm",
    "the secret garden",
    "a detective on the island",
    "piano",
    "winter wedding in the mountain village",
    "archive desert thief",
];

fn check_all(client: &mut Client, what: &str) {
    for q in QUERIES {
        for k in [1, 10, 1000] {
            let got = via_index(client, q, k);
            let want = exhaustive(client, q, k as usize);
            assert_same(&got, &want, &format!("{what}: {q:?} k {k}"));
        }
    }
}

#[test]
fn scores_equal_a_hand_computation() {
    let (_cluster, mut client) = setup("lexical_hand");
    client
        .batch_execute(
            "CREATE TABLE docs (id int, body text);
             INSERT INTO docs VALUES (1, 'cat cat dog'), (2, 'dog'), (3, 'bird fish fish fish');
             CREATE INDEX docs_bm25 ON docs USING bm25 (body);",
        )
        .unwrap();
    // N = 3, avgdl = 8/3, k1 = 1.2, b = 0.75 (crates/lexical/tests for the arithmetic).
    let got = via_index(&mut client, "cat", 1);
    assert_eq!(got[0].0, 1);
    assert!((got[0].1 + 1.302_837).abs() < 1e-5, "{got:?}");
    let got = via_index(&mut client, "dogs", 3);
    assert_eq!((got[0].0, got[1].0, got[2].0), (2, 1, 3));
    assert!((got[0].1 + 0.631_455).abs() < 1e-5 && (got[1].1 + 0.447_139).abs() < 1e-5);
    assert_eq!(got[2].1, 0.0, "a row without the term comes last, at 0");
    let info: (String, f32, f32, i64, i64, i64) = {
        let r = client
            .query_one(
                "SELECT config, k1, b, rows, documents, terms FROM semantic_lexical_info('docs_bm25')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
    };
    assert_eq!(info, ("english".into(), 1.2, 0.75, 3, 3, 4));
    // Other parameters: b = 0 takes length out (rows 1 and 2 tie on dog, in row order).
    client
        .batch_execute(
            "DROP INDEX docs_bm25; CREATE INDEX docs_bm25 ON docs USING bm25 (body) WITH (b = 0, k1 = 2);",
        )
        .unwrap();
    let got = via_index(&mut client, "dog", 2);
    assert_eq!(got[0].1, got[1].1);
    // idf(dog) = ln(1.6), tf part (k1 = 2, b = 0, tf = 1) = 1 x 3 / (1 + 2) = 1
    assert!((got[0].1 + 0.470_004).abs() < 1e-5, "{got:?}");

    // The corpus figures a distributed search gathers, and scores under figures set for it.
    let figures: String = client
        .query_one(
            "SELECT semantic_lexical_statistics('docs_bm25', 'dogs and fish')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let figures: serde_json::Value = serde_json::from_str(&figures).unwrap();
    assert_eq!(
        figures,
        serde_json::json!({"documents": 3, "total_length": 8, "df": {"dog": 2, "fish": 1}})
    );
    client
        .batch_execute(
            r#"SET semantic.bm25_statistics = '{"documents": 30, "total_length": 80, "df": {"dog": 2}}'"#,
        )
        .unwrap();
    // idf(dog) = ln(1 + 28.5 / 2.5) = ln(12.4), tf part 1 as above.
    let got = via_index(&mut client, "dog", 2);
    assert!((got[0].1 + 12.4f64.ln()).abs() < 1e-5, "{got:?}");
    client
        .batch_execute("SET semantic.bm25_statistics = 'not json'")
        .unwrap();
    expect_error(
        &mut client,
        "SELECT id FROM docs ORDER BY body <@> 'dog' LIMIT 1",
        &SqlState::INVALID_PARAMETER_VALUE,
        "semantic.bm25_statistics is not valid",
    );
    client
        .batch_execute("RESET semantic.bm25_statistics")
        .unwrap();
    let got = via_index(&mut client, "dog", 2);
    assert!((got[0].1 + 0.470_004).abs() < 1e-5, "{got:?}");
}

#[test]
fn rows_follow_the_table() {
    let (cluster, mut client) = setup("lexical_rows");
    client
        .batch_execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        .unwrap();
    for i in 0..400 {
        client
            .execute(
                "INSERT INTO docs VALUES ($1, $2)",
                &[&i, &text(i as u64, 5 + (i as usize % 40))],
            )
            .unwrap();
    }
    client
        .batch_execute("CREATE INDEX docs_bm25 ON docs USING bm25 (body)")
        .unwrap();
    check_all(&mut client, "built");
    // Searched through the server's shared snapshot file, as faiss indexes are.
    let shared: Option<bool> = client
        .query_one("SELECT shared FROM semantic_lexical_info('docs_bm25')", &[])
        .unwrap()
        .get(0);
    assert_eq!(shared, Some(true));
    let files = std::fs::read_dir(cluster.data.join("pg_stat_tmp/semantic"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .count();
    assert_eq!(files, 1, "one snapshot file for the one index");

    // Inserts go to the appended part, scored where they lie, with the same statistics.
    for i in 400..450 {
        client
            .execute(
                "INSERT INTO docs VALUES ($1, $2)",
                &[&i, &text(i as u64, 12)],
            )
            .unwrap();
    }
    let appended: i64 = client
        .query_one(
            "SELECT appended FROM semantic_lexical_info('docs_bm25')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(appended, 50);
    check_all(&mut client, "appended");
    // Folded on demand: the same answers from a new snapshot.
    let folded: i64 = client
        .query_one("SELECT semantic_index_fold('docs_bm25')", &[])
        .unwrap()
        .get(0);
    assert_eq!(folded, 50);
    let appended: i64 = client
        .query_one(
            "SELECT appended FROM semantic_lexical_info('docs_bm25')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(appended, 0);
    check_all(&mut client, "folded on demand");

    // A rolled-back insert never shows; updates and deletes, then VACUUM: exact again.
    client
        .batch_execute(
            "BEGIN; INSERT INTO docs VALUES (9999, 'piano piano piano piano'); ROLLBACK;
             UPDATE docs SET body = 'piano harbour storm' WHERE id % 7 = 0;
             DELETE FROM docs WHERE id % 5 = 1;",
        )
        .unwrap();
    let ids: Vec<i32> = via_index(&mut client, "piano", 1000)
        .iter()
        .map(|r| r.0)
        .collect();
    assert!(!ids.contains(&9999), "a rolled-back row came back");
    assert!(ids.iter().all(|id| id % 5 != 1), "a deleted row came back");
    client.batch_execute("VACUUM docs").unwrap();
    check_all(&mut client, "updated, deleted, vacuumed");

    let folded_at: i64 = client
        .query_one(
            "SELECT generation FROM semantic_lexical_info('docs_bm25')",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute("SET semantic.max_appended = 200")
        .unwrap();
    for i in 1000..1300 {
        client
            .execute(
                "INSERT INTO docs VALUES ($1, $2)",
                &[&i, &text(i as u64, 9)],
            )
            .unwrap();
    }
    // Past the threshold a worker the inserting backend started folds them, without VACUUM.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT generation, appended FROM semantic_lexical_info('docs_bm25')",
                &[],
            )
            .unwrap();
        let (generation, appended): (i64, i64) = (row.get(0), row.get(1));
        if generation > folded_at && appended <= 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not folded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check_all(&mut client, "folded");

    // A filter: k rows when k rows match, through the deeper search.
    let rows = client
        .query(
            "SELECT id FROM docs WHERE id % 11 = 3 ORDER BY body <@> 'harbour storm' LIMIT 10",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 10);

    // A standby made now answers as the primary, also after more changes and VACUUM there.
    let standby = cluster.start_standby("lexical_standby");
    let mut replica = standby.connect();
    client
        .batch_execute(
            "INSERT INTO docs SELECT g, 'winter festival ' || g FROM generate_series(2000, 2050) g;
             DELETE FROM docs WHERE id % 13 = 2;",
        )
        .unwrap();
    client.batch_execute("VACUUM docs").unwrap();
    wait_for_replay(&mut client, &mut replica);
    let shared: Option<bool> = {
        via_index(&mut replica, "storm", 1);
        replica
            .query_one("SELECT shared FROM semantic_lexical_info('docs_bm25')", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(shared, Some(true), "the standby built its own file");
    for q in QUERIES {
        assert_same(
            &via_index(&mut replica, q, 10),
            &via_index(&mut client, q, 10),
            &format!("standby {q:?}"),
        );
    }
    drop(replica);
    drop(standby);

    // SIGKILL with appended rows and a fresh VACUUM in the WAL (it marks the 6% deleted), then
    // recovery: the marks hold, and a compaction makes the scores exact again.
    client
        .batch_execute(
            "INSERT INTO docs SELECT g, 'river soldier ' || g FROM generate_series(3000, 3040) g;
             DELETE FROM docs WHERE id % 17 = 4;",
        )
        .unwrap();
    client.batch_execute("VACUUM docs").unwrap();
    client
        .batch_execute("INSERT INTO docs VALUES (4000, 'river river orchard')")
        .unwrap();
    drop(client);
    cluster.kill9();
    cluster.pg_ctl(&["start", "-w", "-t", "60"]).unwrap();
    let mut client = cluster.connect();
    for q in QUERIES {
        let ids: Vec<i32> = via_index(&mut client, q, 5000)
            .iter()
            .map(|r| r.0)
            .collect();
        assert!(
            ids.iter().all(|id| id % 17 != 4),
            "{q:?}: a deleted row came back after crash recovery"
        );
    }
    client
        .batch_execute("SET semantic.compact_threshold = 0")
        .unwrap();
    client.batch_execute("VACUUM docs").unwrap();
    check_all(&mut client, "compacted after crash recovery");
}

/// VACUUM marks dead documents instead of rewriting the index: the generation stays, deleted
/// rows never come back (also once new rows hold their TIDs), and past
/// semantic.compact_threshold VACUUM writes a generation without them, exact again.
#[test]
fn vacuum_marks_dead_documents_and_compacts_past_the_threshold() {
    let (_cluster, mut client) = setup("lexical_marks");
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text) WITH (autovacuum_enabled = off)",
        )
        .unwrap();
    insert_docs(&mut client, 0..1000);
    client
        .batch_execute("CREATE INDEX docs_bm25 ON docs USING bm25 (body)")
        .unwrap();
    insert_docs(&mut client, 1000..1100);
    // This backend now holds the appended rows it analysed; VACUUM must not leave it scoring
    // a dead row's terms for the row that takes its TID.
    check_all(&mut client, "appended");
    let info = "SELECT generation, rows, appended FROM semantic_lexical_info('docs_bm25')";
    let generation: i64 = client.query_one(info, &[]).unwrap().get(0);

    client
        .batch_execute("DELETE FROM docs WHERE id % 20 = 3")
        .unwrap();
    client.batch_execute("VACUUM docs").unwrap();
    let row = client.query_one(info, &[]).unwrap();
    assert_eq!(row.get::<_, i64>(0), generation, "VACUUM rewrote the index");
    assert_eq!(row.get::<_, i64>(1), 1045, "rows");
    assert_eq!(row.get::<_, i64>(2), 100, "appended rows stay until a fold");
    // New rows, without any query word, take the freed TIDs: they rank last (distance 0).
    client
        .batch_execute(
            "INSERT INTO docs SELECT 5000 + i, 'zebra quartz' FROM generate_series(1, 300) i",
        )
        .unwrap();
    for q in QUERIES {
        let rows = via_index(&mut client, q, 2000);
        assert_eq!(rows.len(), 1345, "{q:?}: every live row once");
        assert!(
            rows.iter().all(|&(id, _)| id % 20 != 3 || id >= 5000),
            "{q:?}: a deleted row came back"
        );
        assert!(
            rows.iter().all(|&(id, d)| id < 5000 || d == 0.0),
            "{q:?}: a new row scored with a dead row's terms"
        );
    }
    // Past the threshold (here: any dead row), VACUUM compacts: exact scores again.
    client
        .batch_execute("DELETE FROM docs WHERE id % 20 = 4")
        .unwrap();
    client
        .batch_execute("SET semantic.compact_threshold = 0")
        .unwrap();
    client.batch_execute("VACUUM docs").unwrap();
    let row = client.query_one(info, &[]).unwrap();
    assert!(row.get::<_, i64>(0) > generation, "not compacted");
    assert_eq!(
        row.get::<_, i64>(2),
        0,
        "compaction folds the appended rows"
    );
    check_all(&mut client, "compacted");
}

/// Folds write the appended rows as small segments beside the built one and merge them by
/// size tiers instead of rewriting the index: each fold logs a fraction of what the build did,
/// every segment keeps its own snapshot file, scores stay exact (statistics summed over the
/// segments), marks in kept segments hold through a crash, and compaction merges all into one.
#[test]
fn folds_write_segments_not_the_whole_index() {
    let (cluster, mut client) = setup("lexical_segments");
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text) WITH (autovacuum_enabled = off)",
        )
        .unwrap();
    insert_docs(&mut client, 0..3000);
    let built = wal_bytes(
        &mut client,
        "CREATE INDEX docs_bm25 ON docs USING bm25 (body)",
    );
    let files = || {
        std::fs::read_dir(cluster.data.join("pg_stat_tmp/semantic"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
            .count()
    };
    // Folds of 50 rows, with tiers for folds of 10 (semantic.max_appended): tier 0 holds
    // segments below 80 rows, tier 1 below 640, so the eighth fold merges seven segments of 50
    // and its own into one of 400, and the built one (3,000 rows, tier 2) stays.
    let mut next = 3000;
    for round in 0..12 {
        insert_docs(&mut client, next..next + 50);
        next += 50;
        let logged = wal_bytes(
            &mut client,
            "SET semantic.max_appended = 10;
             SELECT semantic_index_fold('docs_bm25');
             RESET semantic.max_appended;",
        );
        assert!(
            logged * 3 < built,
            "fold {round} logged {logged} bytes, the build {built}"
        );
        check_all(&mut client, &format!("fold {round}"));
        via_index(&mut client, "storm", 1);
        assert!(files() >= 2, "fold {round}: the built segment's file went");
    }
    assert_eq!(
        files(),
        6,
        "the built segment, the merged one and four of 50"
    );

    // Dead rows are marked in whichever segment holds them; a fold keeps those marks, and so
    // does crash recovery, which also keeps the fold (flushed though its transaction has no
    // XID).
    client
        .batch_execute("DELETE FROM docs WHERE id % 50 = 7")
        .unwrap();
    client.batch_execute("VACUUM docs").unwrap();
    let deleted_below = next;
    insert_docs(&mut client, next..next + 50);
    client
        .batch_execute(
            "SET semantic.max_appended = 10;
             SELECT semantic_index_fold('docs_bm25');
             RESET semantic.max_appended;",
        )
        .unwrap();
    let live: i64 = client
        .query_one("SELECT count(*) FROM docs", &[])
        .unwrap()
        .get(0);
    let check_marks = |client: &mut Client, what: &str| {
        for q in QUERIES {
            let ids: Vec<i32> = via_index(client, q, 10_000).iter().map(|r| r.0).collect();
            assert_eq!(ids.len() as i64, live, "{what} {q:?}: every live row once");
            assert!(
                ids.iter().all(|&id| id % 50 != 7 || id >= deleted_below),
                "{what} {q:?}: a deleted row came back"
            );
        }
    };
    check_marks(&mut client, "marked");
    let info = "SELECT generation FROM semantic_lexical_info('docs_bm25')";
    let generation: i64 = client.query_one(info, &[]).unwrap().get(0);
    drop(client);
    cluster.kill9();
    cluster.pg_ctl(&["start", "-w", "-t", "60"]).unwrap();
    let mut client = cluster.connect();
    check_marks(&mut client, "after crash recovery");
    let recovered: i64 = client.query_one(info, &[]).unwrap().get(0);
    assert_eq!(recovered, generation, "crash recovery lost a fold");
    client
        .batch_execute("SET semantic.compact_threshold = 0")
        .unwrap();
    client.batch_execute("VACUUM docs").unwrap();
    check_all(&mut client, "compacted");
    assert_eq!(files(), 1, "compaction leaves one segment");
}

/// Appended rows are scored from the terms their inserts stored in the index: a new session's
/// search reads the table only for the rows it returns, and a fold does not read it at all.
#[test]
fn appended_rows_are_searched_and_folded_without_reading_the_table() {
    let (cluster, mut client) = setup("lexical_terms");
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text);
             CREATE INDEX docs_bm25 ON docs USING bm25 (body);",
        )
        .unwrap();
    for i in 0..600 {
        client
            .execute(
                "INSERT INTO docs VALUES ($1, $2)",
                &[&i, &text(i as u64, 5 + (i as usize % 30))],
            )
            .unwrap();
    }
    // Table blocks this transaction has fetched so far (hits and reads).
    let fetched = |client: &mut postgres::Transaction| -> i64 {
        client
            .query_one(
                "SELECT pg_stat_get_xact_blocks_fetched('docs'::regclass)",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let mut session = cluster.connect();
    let mut tx = session.transaction().unwrap();
    tx.batch_execute("SET LOCAL enable_seqscan = off").unwrap();
    let before = fetched(&mut tx);
    let rows = tx
        .query(
            "SELECT id FROM docs ORDER BY body <@> 'harbour storm' LIMIT 10",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 10);
    let read = fetched(&mut tx) - before;
    assert!(
        read <= 20,
        "a search of 10 rows fetched {read} table blocks"
    );
    tx.commit().unwrap();
    check_all(&mut client, "appended");

    let mut tx = session.transaction().unwrap();
    let before = fetched(&mut tx);
    let folded: i64 = tx
        .query_one("SELECT semantic_index_fold('docs_bm25')", &[])
        .unwrap()
        .get(0);
    assert_eq!(folded, 600);
    assert_eq!(fetched(&mut tx) - before, 0, "the fold read the table");
    tx.commit().unwrap();
    check_all(&mut client, "folded");
}

/// An ORDER BY without LIMIT returns every row once, the matching ones first, also when a
/// fold and new rows come while the rows without a query term are being returned.
#[test]
fn every_row_comes_once_through_a_fold_mid_scan() {
    let (cluster, mut client) = setup("lexical_every_row");
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text);
             INSERT INTO docs SELECT g, CASE WHEN g % 10 = 0 THEN 'storm at the harbour' ELSE 'quiet garden ' || g END
               FROM generate_series(1, 3000) g;
             CREATE INDEX docs_bm25 ON docs USING bm25 (body);
             INSERT INTO docs SELECT g, CASE WHEN g % 10 = 0 THEN 'storm' ELSE 'calm ' || g END
               FROM generate_series(3001, 3500) g;
             DELETE FROM docs WHERE id % 7 = 0;",
        )
        .unwrap();
    client.batch_execute("VACUUM docs").unwrap();
    let live: i64 = client
        .query_one("SELECT count(*) FROM docs", &[])
        .unwrap()
        .get(0);
    let mut tx = client.transaction().unwrap();
    tx.batch_execute(
        "SET LOCAL enable_seqscan = off;
         DECLARE c CURSOR FOR SELECT id, body <@> 'storm' FROM docs ORDER BY body <@> 'storm'",
    )
    .unwrap();
    let mut rows: Vec<(i32, f64)> = Vec::new();
    let mut fetch = |tx: &mut postgres::Transaction, n: i32| {
        let got = tx.query(&format!("FETCH {n} FROM c"), &[]).unwrap();
        rows.extend(got.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, f64>(1))));
        got.len()
    };
    // Past the matching rows and into the rest, then a fold and more rows elsewhere.
    fetch(&mut tx, 1500);
    let mut other = cluster.connect();
    other
        .batch_execute(
            "INSERT INTO docs SELECT g, 'late ' || g FROM generate_series(5001, 5100) g;
             SELECT semantic_index_fold('docs_bm25');",
        )
        .unwrap();
    while fetch(&mut tx, 700) > 0 {}
    tx.commit().unwrap();
    assert_eq!(
        rows.len() as i64,
        live,
        "every row visible to the scan, once"
    );
    let mut ids: Vec<i32> = rows.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "a row came twice");
    assert!(ids.iter().all(|id| id % 7 != 0 && *id <= 3500));
    let matching = rows.iter().take_while(|r| r.1 < 0.0).count();
    assert!(
        rows[matching..].iter().all(|r| r.1 == 0.0),
        "a match after the rest"
    );
    assert_eq!(
        matching,
        rows.iter().filter(|r| r.0 % 10 == 0).count(),
        "the rows holding the query term first"
    );
}

#[test]
fn bad_input_gets_an_error_or_nothing() {
    let (_cluster, mut client) = setup("lexical_bad_input");
    client
        .batch_execute(
            "CREATE TABLE docs (id int, body text, n int);
             INSERT INTO docs SELECT g, 'storm over the harbour ' || g, g FROM generate_series(1, 50) g;
             CREATE INDEX docs_bm25 ON docs USING bm25 (body);
             CREATE INDEX docs_n ON docs (n);",
        )
        .unwrap();
    // No words, or stop words only: no row holds a query term, so all come at distance 0.
    for q in ["", "the and of", "   ", "!!!"] {
        let got = via_index(&mut client, q, 5);
        assert_eq!(got.len(), 5, "{q:?}");
        assert!(got.iter().all(|r| r.1 == 0.0), "{q:?}: {got:?}");
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM semantic_search($1, 5, 'docs_bm25', mode => 'lexical')",
                &[&q],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "semantic_search lists matches only: {q:?}");
    }
    let null: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT id FROM docs ORDER BY body <@> NULL LIMIT 5) s",
            &[],
        )
        .unwrap()
        .get(0);
    // As with <=>: PostgreSQL folds `<@> NULL` into a constant, rows come in no order.
    assert_eq!(null, 5);
    // A NULL it cannot fold reaches the index, which returns every row.
    let (null, rows): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM (SELECT id FROM docs ORDER BY body <@> (SELECT NULL::text)) s),
                        (SELECT count(*) FROM docs WHERE body IS NOT NULL)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(null, rows);
    // A 1 MB query works.
    let big = "harbour storm ".repeat(80_000);
    assert_eq!(via_index(&mut client, &big, 3).len(), 3);
    client.batch_execute("RESET enable_seqscan").unwrap();
    // Maintenance functions name the index kinds they take.
    expect_error(
        &mut client,
        "SELECT semantic_index_fold('docs_n')",
        &SqlState::WRONG_OBJECT_TYPE,
        "is not a faiss or bm25 index",
    );
    expect_error(
        &mut client,
        "SELECT * FROM semantic_lexical_info('docs_n')",
        &SqlState::WRONG_OBJECT_TYPE,
        "is not a bm25 index",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON docs USING bm25 (body) WITH (config = 'klingon')",
        &SqlState::UNDEFINED_OBJECT,
        "klingon",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON docs USING bm25 (body) WITH (b = 2)",
        &SqlState::INVALID_PARAMETER_VALUE,
        "b",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON docs USING bm25 (lower(body))",
        &SqlState::FEATURE_NOT_SUPPORTED,
        "expression",
    );
    expect_error(
        &mut client,
        "CREATE INDEX ON docs USING bm25 (n)",
        &SqlState::UNDEFINED_OBJECT,
        "operator class",
    );
    expect_error(
        &mut client,
        "SELECT 'a'::text <@> 'b'",
        &SqlState::FEATURE_NOT_SUPPORTED,
        "bm25 index scan",
    );
    expect_error(
        &mut client,
        "SELECT * FROM semantic_search('storm', 5, mode => 'fuzzy')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "mode",
    );
    expect_error(
        &mut client,
        "SELECT * FROM semantic_search('storm', 5, mode => 'hybrid')",
        &SqlState::UNDEFINED_OBJECT,
        "no faiss index",
    );
    // Another configuration is honoured: 'simple' keeps stop words and does not stem.
    client
        .batch_execute(
            "DROP INDEX docs_bm25; CREATE INDEX docs_simple ON docs USING bm25 (body) WITH (config = 'simple');",
        )
        .unwrap();
    let got = via_index(&mut client, "the", 1);
    assert!(got[0].1 < 0.0, "'the' is a term under simple: {got:?}");
    let config: String = client
        .query_one(
            "SELECT config FROM semantic_lexical_info('docs_simple')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(config, "simple");
}

#[test]
fn hybrid_search_fuses_both_lists() {
    let (_cluster, mut client) = setup("lexical_hybrid");
    client
        .batch_execute(
            "CREATE TABLE docs (id int, body text);
             INSERT INTO docs SELECT g, CASE g % 4
                 WHEN 0 THEN 'a storm batters the harbour lighthouse ' || g
                 WHEN 1 THEN 'two lovers part at a train station ' || g
                 WHEN 2 THEN 'a detective searches the island archive ' || g
                 ELSE 'the village holds a summer festival ' || g END
             FROM generate_series(1, 120) g;
             CREATE INDEX docs_faiss ON docs USING faiss (body);
             CREATE INDEX docs_bm25 ON docs USING bm25 (body);",
        )
        .unwrap();
    let list = |client: &mut Client, mode: &str, k: i32| -> Vec<(String, f64)> {
        client
            .query(
                "SELECT row_id::text, score FROM semantic_search('storm at the harbour', $1, mode => $2)",
                &[&k, &mode],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let semantic = list(&mut client, "semantic", 50);
    let lexical = list(&mut client, "lexical", 50);
    assert_eq!(semantic.len(), 50);
    assert_eq!(lexical.len(), 30, "the 30 rows holding storm or harbour");
    // RRF with k = 60 over lists 5 x 10 = 50 deep, computed here.
    let mut fused: HashMap<String, f64> = HashMap::new();
    for list in [&semantic, &lexical] {
        for (rank, (tid, _)) in list.iter().enumerate() {
            *fused.entry(tid.clone()).or_default() += 1.0 / (60.0 + rank as f64 + 1.0);
        }
    }
    let mut want: Vec<(String, f64)> = fused.into_iter().collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let got = list(&mut client, "hybrid", 10);
    assert_eq!(got.len(), 10);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g.1 - w.1).abs() < 1e-9, "rank {i}: {g:?} vs {w:?}");
    }
    // Each row names the table that holds it (a partition or a Citus shard where there is one).
    for mode in ["semantic", "lexical", "hybrid"] {
        let relations: Vec<String> = client
            .query(
                "SELECT DISTINCT relation FROM semantic_search('storm at the harbour', 10, mode => $1)",
                &[&mode],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(relations, ["docs"], "{mode}");
    }
    // Weights: with the lexical side at 0, hybrid ranks as semantic does.
    let only_semantic: Vec<String> = client
        .query(
            "SELECT row_id::text FROM semantic_search('storm at the harbour', 10, mode => 'hybrid', lexical_weight => 0)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let semantic_top: Vec<String> = semantic.iter().take(10).map(|r| r.0.clone()).collect();
    assert_eq!(only_semantic, semantic_top);
    // Convex: scores in [0, weights' sum], best first.
    let convex = client
        .query(
            "SELECT score FROM semantic_search('storm at the harbour', 10, mode => 'hybrid', fusion => 'convex')",
            &[],
        )
        .unwrap();
    let scores: Vec<f64> = convex.iter().map(|r| r.get(0)).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    assert!(scores[0] <= 2.0 + 1e-9 && scores[0] > 1.0, "{scores:?}");
}
