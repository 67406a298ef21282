//! Crash safety: the index lives in WAL-logged pages, so after an immediate shutdown (no
//! checkpoint, recovery replays the WAL) every committed row is found through the index.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use semantic_tests::Cluster;

fn vector_of(id: i32) -> Vec<f32> {
    // Distinct, well separated points: the exact nearest neighbour of each is itself.
    vec![id as f32, (id % 7) as f32, (id % 13) as f32]
}

#[test]
fn committed_rows_survive_an_immediate_stop_during_inserts() {
    let cluster = Cluster::start("crash_inserts", &[]);
    let mut client = cluster.connect();
    client
        .batch_execute(
            "CREATE EXTENSION semantic;
             CREATE TABLE v (id int PRIMARY KEY, vec real[]);
             INSERT INTO v SELECT i, ARRAY[i, i % 7, i % 13]::real[] FROM generate_series(1, 100) i;
             CREATE INDEX v_vec ON v USING faiss (vec);
             CREATE TABLE docs (id int PRIMARY KEY, body text);
             CREATE INDEX docs_body ON docs USING faiss (body);",
        )
        .unwrap();
    for i in 0..10 {
        client
            .execute(
                "INSERT INTO docs VALUES ($1, $2)",
                &[&i, &format!("document number {i} about topic {}", i * 17)],
            )
            .unwrap();
    }

    let committed = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let committed = committed.clone();
            let stop = stop.clone();
            let mut conn = cluster.connect();
            std::thread::spawn(move || {
                let mut id = 1000 + w * 100_000;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    match conn.execute("INSERT INTO v VALUES ($1, $2)", &[&id, &vector_of(id)]) {
                        Ok(_) => {
                            committed.lock().unwrap().insert(id);
                        }
                        Err(_) => break, // the server went away
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.pg_ctl(&["stop", "-m", "immediate", "-w"]).unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    cluster.pg_ctl(&["start", "-w", "-t", "60"]).unwrap();

    let mut client = cluster.connect();
    let committed = committed.lock().unwrap().clone();
    assert!(
        committed.len() > 50,
        "the writers committed rows before the stop ({})",
        committed.len()
    );
    let in_table: HashSet<i32> = client
        .query("SELECT id FROM v", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        committed.is_subset(&in_table),
        "a committed row is missing from the table"
    );
    // Every row of the table, committed rows included, is found through the index exactly
    // (past semantic.max_scan_tuples a scan stops; the rows may have been folded meanwhile).
    client
        .batch_execute("SET enable_seqscan = off; SET semantic.max_scan_tuples = 1000000")
        .unwrap();
    let via_index: HashSet<i32> = client
        .query(
            "SELECT id FROM v ORDER BY vec <-> '{0,0,0}' LIMIT 1000000",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(via_index, in_table);
    for &id in committed.iter().take(200) {
        let top: i32 = client
            .query_one(
                "SELECT id FROM v ORDER BY vec <-> $1 LIMIT 1",
                &[&vector_of(id)],
            )
            .unwrap()
            .get(0);
        assert_eq!(top, id);
    }
    let docs: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT id FROM docs ORDER BY body <=> 'topic' LIMIT 100) s",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(docs, 10, "text rows inserted after the build survive too");
    let top: i32 = client
        .query_one(
            "SELECT id FROM docs ORDER BY body <=> 'document number 7 about topic 119' LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(top, 7);
}
