//! One snapshot per server: the shared snapshot file is built, checked, rebuilt and given up
//! for a private copy as it should; appended rows are searched where they lie and folded; a
//! failed scan leaves nothing behind. Results are compared with brute force throughout.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;
use semantic_tests::vectors::{clustered, copy_vectors, exact, via_index};
use semantic_tests::{backend_anonymous_kib, Cluster};

fn snapshot_dir(cluster: &Cluster) -> PathBuf {
    cluster.data.join("pg_stat_tmp/semantic")
}

/// The published snapshot files (not stamps, locks or temporary files).
fn snapshot_files(cluster: &Cluster) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(snapshot_dir(cluster)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    files.sort();
    files
}

fn info(client: &mut Client, index: &str) -> (i64, i64, Option<bool>) {
    let row = client
        .query_one(
            &format!("SELECT generation, appended, shared FROM semantic_index_info('{index}')"),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

fn assert_exact(cluster: &Cluster, table: &str, queries: &[Vec<f32>]) {
    let mut c = cluster.connect();
    for q in queries {
        assert_eq!(via_index(&mut c, table, q, 10), exact(&mut c, table, q, 10));
    }
}

fn run_as_root(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?}");
}

/// A cluster with table `v` of 3,000 clustered vectors and the faiss index `index` on it
/// (`with` holds its options).
fn indexed_table(name: &str, index: &str, with: &str) -> (Cluster, Client) {
    let cluster = Cluster::start(name, &[]);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION semantic;
         CREATE TABLE v (id int PRIMARY KEY, vec real[]);",
    )
    .unwrap();
    copy_vectors(&mut c, "v", 1, &clustered(3000, 1));
    c.batch_execute(&format!(
        "CREATE INDEX {index} ON v USING faiss (vec) {with}"
    ))
    .unwrap();
    (cluster, c)
}

#[test]
fn the_snapshot_file_is_shared_rebuilt_and_checked() {
    let (cluster, c) = indexed_table("shared_file", "v_flat", "");
    let queries = clustered(10, 42);

    // CREATE INDEX published the file; every backend maps it.
    let files = snapshot_files(&cluster);
    assert_eq!(files.len(), 1, "{files:?}");
    for _ in 0..2 {
        let mut other = cluster.connect();
        via_index(&mut other, "v", &queries[0], 10);
        assert_eq!(info(&mut other, "v_flat").2, Some(true));
    }
    assert_exact(&cluster, "v", &queries);

    // Missing: the next backend rebuilds it from the pages.
    std::fs::remove_file(&files[0]).unwrap();
    assert_exact(&cluster, "v", &queries);
    assert_eq!(snapshot_files(&cluster), files);

    // Truncated: found at the next open, rebuilt.
    let len = std::fs::metadata(&files[0]).unwrap().len();
    run_as_root(&[
        "truncate",
        "-s",
        &(len / 2).to_string(),
        files[0].to_str().unwrap(),
    ]);
    assert_exact(&cluster, "v", &queries);
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), len);
    assert!(cluster.log().contains("rebuilding its snapshot file"));

    // A flipped byte, the file's size and mtime kept: the first backend after a restart checks
    // the whole file and rebuilds it.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[200] ^= 0x20;
    let mtime = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes[200..201], 200).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    drop(c);
    cluster.pg_ctl(&["restart", "-w", "-t", "60"]).unwrap();
    assert_exact(&cluster, "v", &queries);
    assert_ne!(std::fs::read(&files[0]).unwrap(), bytes, "not rebuilt");
    assert!(
        cluster.log().contains("checksum mismatch"),
        "{}",
        cluster.log()
    );

    // What a SIGKILL during the write leaves (a partial temporary file, nothing published),
    // then a real SIGKILL while a backend rebuilds: after a restart, results are exact.
    std::fs::remove_file(&files[0]).unwrap();
    let temp = PathBuf::from(format!("{}.tmp99999", files[0].display()));
    std::fs::write(&temp, &bytes[..bytes.len() / 3]).unwrap();
    assert_exact(&cluster, "v", &queries);
    std::fs::remove_file(&files[0]).unwrap();
    let searcher = std::thread::spawn({
        let mut conn = cluster.connect();
        let q = queries[0].clone();
        move || {
            conn.batch_execute("SET enable_seqscan = off").ok();
            conn.query("SELECT id FROM v ORDER BY vec <-> $1 LIMIT 10", &[&q])
        }
    });
    std::thread::sleep(Duration::from_millis(5));
    cluster.kill9();
    let _ = searcher.join();
    cluster.pg_ctl(&["start", "-w", "-t", "60"]).unwrap();
    assert_exact(&cluster, "v", &queries);

    // An unwritable directory: a WARNING, a private copy, the same results.
    // (The model cache's folder, written by the model server, stays.)
    for f in std::fs::read_dir(snapshot_dir(&cluster)).unwrap().flatten() {
        if f.file_type().unwrap().is_file() {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    run_as_root(&["chmod", "0500", snapshot_dir(&cluster).to_str().unwrap()]);
    let mut c = cluster.connect();
    via_index(&mut c, "v", &queries[0], 10);
    assert_eq!(info(&mut c, "v_flat").2, Some(false));
    assert_exact(&cluster, "v", &queries);
    assert!(cluster.log().contains("searches a private copy"));
    run_as_root(&["chmod", "0700", snapshot_dir(&cluster).to_str().unwrap()]);

    // A full disk: a 64 kB file system over the directory makes the write fail with ENOSPC.
    let dir = snapshot_dir(&cluster);
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        let _ = std::fs::remove_file(f.path());
    }
    let dir_str = dir.to_str().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", dir_str])
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        run_as_root(&["chown", "postgres:postgres", dir_str]);
        let warnings_before = cluster.log().matches("searches a private copy").count();
        let mut c = cluster.connect();
        via_index(&mut c, "v", &queries[0], 10);
        assert_eq!(info(&mut c, "v_flat").2, Some(false));
        assert_exact(&cluster, "v", &queries);
        drop(c);
        let log = cluster.log();
        assert!(log.matches("searches a private copy").count() > warnings_before);
        assert!(log.contains("No space left on device"), "{log}");
        assert!(
            snapshot_files(&cluster).is_empty(),
            "a partial file was left"
        );
        // A rewrite streams its snapshot to the file: when that fails part way, a WARNING
        // naming the directory and the cause, and the pages written from memory instead.
        let mut c = cluster.connect();
        c.batch_execute("REINDEX INDEX v_flat").unwrap();
        let log = cluster.log();
        assert!(
            log.contains(&format!(
                "index \"v_flat\": could not write its snapshot file in \"{dir_str}\""
            )),
            "{log}"
        );
        assert!(
            snapshot_files(&cluster).is_empty(),
            "a partial file was left"
        );
        drop(c);
        assert_exact(&cluster, "v", &queries);
        run_as_root(&["umount", dir_str]);
    } else {
        eprintln!("no tmpfs mount here (not root?): the full-disk case is skipped");
    }
}

#[test]
fn appended_rows_are_searched_where_they_lie_and_folded() {
    let cluster = Cluster::start("shared_fold", &["semantic.max_appended = 1000"]);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION semantic;
         CREATE TABLE v (id int PRIMARY KEY, vec real[]);
         CREATE TABLE h (id int PRIMARY KEY, vec real[]);",
    )
    .unwrap();
    copy_vectors(&mut c, "v", 1, &clustered(2000, 1));
    copy_vectors(&mut c, "h", 1, &clustered(2000, 1));
    c.batch_execute(
        "CREATE INDEX v_flat ON v USING faiss (vec);
         CREATE INDEX h_hnsw ON h USING faiss (vec) WITH (factory = 'HNSW16');",
    )
    .unwrap();
    let queries = clustered(10, 43);
    let (generation, appended, _) = info(&mut c, "v_flat");
    assert_eq!(appended, 0);

    // Inserts are searched exactly where they lie, and merged with the snapshot's hits.
    copy_vectors(&mut c, "v", 10_001, &clustered(500, 2));
    copy_vectors(&mut c, "h", 10_001, &clustered(500, 2));
    assert_eq!(info(&mut c, "v_flat").1, 500);
    assert_exact(&cluster, "v", &queries);
    for q in &queries {
        // The appended rows nearest a query come back through the HNSW index too.
        let truth = exact(&mut c, "h", q, 10);
        let got = via_index(&mut c, "h", q, 10);
        let appended_truth: Vec<_> = truth.iter().filter(|&&id| id > 10_000).collect();
        assert!(
            appended_truth.iter().all(|id| got.contains(id)),
            "{got:?} {truth:?}"
        );
    }

    // semantic_index_fold makes them part of a new snapshot (in its own file).
    let folded: i64 = c
        .query_one("SELECT semantic_index_fold('v_flat')", &[])
        .unwrap()
        .get(0);
    assert_eq!(folded, 500);
    let (new_generation, appended, _) = info(&mut c, "v_flat");
    assert_eq!((new_generation, appended), (generation + 1, 0));
    assert_exact(&cluster, "v", &queries);
    let folded: i64 = c
        .query_one("SELECT semantic_index_fold('h_hnsw')", &[])
        .unwrap()
        .get(0);
    assert_eq!(folded, 500);
    assert_eq!(snapshot_files(&cluster).len(), 2, "one file per index");
    // Like VACUUM, folding takes the owner.
    c.batch_execute("CREATE ROLE reader LOGIN; GRANT SELECT ON v TO reader")
        .unwrap();
    let err = cluster
        .connect_as("reader")
        .query_one("SELECT semantic_index_fold('v_flat')", &[])
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );

    // Past semantic.max_appended (1,000 here) a worker folds them, without VACUUM.
    copy_vectors(&mut c, "v", 20_001, &clustered(900, 3));
    c.batch_execute("VACUUM v").unwrap();
    assert_eq!(info(&mut c, "v_flat").1, 900, "below the threshold");
    let before = info(&mut c, "v_flat").0;
    copy_vectors(&mut c, "v", 30_001, &clustered(200, 4));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while info(&mut c, "v_flat").0 == before {
        assert!(std::time::Instant::now() < deadline, "not folded");
        std::thread::sleep(Duration::from_millis(50));
    }
    // At most the rows appended after the fold's cut remain.
    assert!(info(&mut c, "v_flat").1 <= 200);
    assert_exact(&cluster, "v", &queries);
    c.query_one("SELECT semantic_index_fold('v_flat')", &[])
        .unwrap();
    copy_vectors(&mut c, "v", 40_001, &clustered(100, 5));
    c.batch_execute("DELETE FROM v WHERE id % 7 = 0").unwrap();
    c.batch_execute("VACUUM v").unwrap();
    assert_eq!(
        info(&mut c, "v_flat").1,
        100,
        "a seventh dead, below semantic.compact_threshold: marked, not rewritten"
    );
    assert_exact(&cluster, "v", &queries);
    c.batch_execute("SET semantic.compact_threshold = 0.1")
        .unwrap();
    c.batch_execute("VACUUM v").unwrap();
    assert_eq!(
        info(&mut c, "v_flat").1,
        0,
        "compacted without the dead rows"
    );
    assert_exact(&cluster, "v", &queries);
    // Vectors are stored once: the index is about its vectors' bytes, not twice that.
    let (pages, vectors): (i64, i64) = {
        let row = c
            .query_one(
                "SELECT pages - free_pages, vectors FROM semantic_index_info('v_flat')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let vector_bytes = vectors * 16 * 4;
    assert!(
        (pages * 8192) < vector_bytes * 3 / 2 + 8 * 8192,
        "{pages} pages for {vectors} vectors"
    );
}

#[test]
fn eight_clients_insert_and_search_while_the_index_is_folded() {
    let (cluster, mut c) = indexed_table("shared_fold_load", "v_flat", "");
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let mut conn = cluster.connect();
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                if w < 4 {
                    let first = 100_000 * (w as usize + 1) + n * 20;
                    copy_vectors(
                        &mut conn,
                        "v",
                        first,
                        &clustered(20, (w + 1) * 1_000_000 + n as u64),
                    );
                } else {
                    let q = &clustered(1, 9_000_000 + w * 1_000_000 + n as u64)[0];
                    let got = via_index(&mut conn, "v", q, 10);
                    assert_eq!(got.len(), 10);
                }
                n += 1;
            }
            n
        }));
    }
    let mut folds = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let folded: i64 = c
            .query_one("SELECT semantic_index_fold('v_flat')", &[])
            .unwrap()
            .get(0);
        folds += (folded > 0) as u32;
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0, "a client made no progress");
    }
    assert!(folds >= 3, "only {folds} folds");
    assert_exact(&cluster, "v", &clustered(20, 77));
    c.query_one("SELECT semantic_index_fold('v_flat')", &[])
        .unwrap();
    assert_exact(&cluster, "v", &clustered(20, 78));
    assert!(!cluster.log().contains("PANIC"));
}

/// A scan that ends in an ERROR must not leave its last row's distance behind: `<=>` on the
/// same text and query afterwards is computed, not taken from the failed scan (an l2 index's
/// distance is not the cosine distance that `text <=> text` gives without an index).
#[test]
fn a_failed_scan_leaves_no_stale_distance() {
    let cluster = Cluster::start("shared_scan", &[]);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION semantic;
         CREATE TABLE docs (id int PRIMARY KEY, body text);
         INSERT INTO docs VALUES (1, 'a quiet harbour at dawn'), (2, 'a storm over the harbour'),
                                 (3, 'trains leave the station'), (4, 'the market opens early');
         CREATE INDEX docs_l2 ON docs USING faiss (body) WITH (metric = 'l2');",
    )
    .unwrap();
    let distances = |c: &mut Client| -> Vec<f64> {
        (1..=4)
            .map(|id: i32| {
                c.query_one("SELECT body <=> 'harbour' FROM docs WHERE id = $1", &[&id])
                    .unwrap()
                    .get(0)
            })
            .collect()
    };
    let truth = distances(&mut cluster.connect());
    c.batch_execute("SET enable_seqscan = off").unwrap();
    let failed = c.query(
        "SELECT CASE WHEN n > 1 THEN 1 / 0 END FROM (
             SELECT row_number() OVER () AS n FROM (
                 SELECT body FROM docs ORDER BY body <=> 'harbour' LIMIT 4) a) b",
        &[],
    );
    assert!(failed.is_err());
    c.batch_execute("RESET enable_seqscan").unwrap();
    let after = distances(&mut c);
    for (a, t) in after.iter().zip(&truth) {
        assert!(
            (a - t).abs() < 1e-9,
            "stale distance: {after:?} vs {truth:?}"
        );
    }
}

/// `semantic.max_scan_tuples` caps how deep a filtered scan searches, as pgvector's
/// `hnsw.max_scan_tuples` does.
#[test]
fn max_scan_tuples_caps_the_deepening_search() {
    let (_cluster, mut c) = indexed_table("shared_cap", "v_hnsw", "WITH (factory = 'HNSW16')");
    c.batch_execute("SET enable_seqscan = off").unwrap();
    let q = &clustered(1, 50)[0];
    let sql = "SELECT id FROM v WHERE id % 600 = 0 ORDER BY vec <-> $1 LIMIT 10";
    let rows = |c: &mut Client| c.query(sql, &[q]).unwrap().len();
    assert_eq!(rows(&mut c), 5, "every match, by searching deeper");
    c.batch_execute("SET semantic.scan_candidates = 10; SET semantic.max_scan_tuples = 40")
        .unwrap();
    assert!(rows(&mut c) < 5, "the scan went past its cap");
    c.batch_execute("SET semantic.max_scan_tuples = 3000")
        .unwrap();
    assert_eq!(rows(&mut c), 5);
}

/// Scans that error mid-way (the query's filter fails on a row the index scan returned) leave
/// nothing behind, for faiss and bm25 scans alike: a thousand of them do not grow the backend,
/// and the server reports no leaked buffer pin or other resource.
#[test]
fn scans_that_error_midway_leak_nothing() {
    let (cluster, mut c) =
        indexed_table("shared_scan_errors", "v_hnsw", "WITH (factory = 'HNSW16')");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text);
         INSERT INTO docs SELECT i, 'note ' || i || ' on harbour storm ' || (i % 17)
           FROM generate_series(1, 2000) i;
         CREATE INDEX docs_bm25 ON docs USING bm25 (body);
         SET enable_seqscan = off",
    )
    .unwrap();
    let q = clustered(1, 77).remove(0);
    let fail_all = |c: &mut Client, times: usize| {
        for _ in 0..times {
            let vector = c.query(
                "SELECT id FROM v WHERE 1 / (id % 50 - 25) > -1 ORDER BY vec <-> $1 LIMIT 500",
                &[&q],
            );
            assert!(vector.is_err(), "the faiss scan met no failing row");
            let lexical = c.query(
                "SELECT id FROM docs WHERE 1 / (id % 50 - 25) > -1
                 ORDER BY body <@> 'harbour storm' LIMIT 500",
                &[],
            );
            assert!(lexical.is_err(), "the bm25 scan met no failing row");
        }
    };
    fail_all(&mut c, 100);
    let before = backend_anonymous_kib(&mut c);
    fail_all(&mut c, 1000);
    let grown = backend_anonymous_kib(&mut c) as f64 - before as f64;
    assert!(
        grown < 2048.0,
        "a thousand failed scans grew the backend by {grown} KiB"
    );
    let log = cluster.log();
    assert!(!log.contains("leak"), "{log}");
    // The scans still answer.
    assert_eq!(via_index(&mut c, "v", &q, 10).len(), 10);
}
