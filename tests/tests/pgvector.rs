//! pgvector's operators on faiss indexes: real[] with `<->`, `<=>`, `<#>` and `<+>` (pgvector's
//! meanings), and pgvector's own vector and halfvec columns through the semantic_pgvector
//! extension's operator classes, checked against pgvector's exact ordering (a sequential scan
//! that pgvector's functions compute). And a pgvector application, written with the pgvector
//! Python package and psycopg, run unchanged but for `USING faiss`.

use postgres::error::SqlState;
use postgres::Client;
use semantic_tests::vectors::uniform;
use semantic_tests::{cluster_with_extension as setup, env, exact_and_indexed_ids, expect_error};

/// The four operators, the metric option that ranks by each, and pgvector's opclass suffix.
const OPERATORS: [(&str, &str, &str); 4] = [
    ("<->", "l2", "l2_ops"),
    ("<=>", "cosine", "cosine_ops"),
    ("<#>", "dot", "ip_ops"),
    ("<+>", "l1", "l1_ops"),
];

fn plan(client: &mut Client, sql: &str) -> String {
    client
        .query(&format!("EXPLAIN {sql}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect()
}

/// Rows as (id, distance) for `sql`, under `settings` (SET statements), reset afterwards.
fn rows(client: &mut Client, settings: &str, sql: &str) -> Vec<(i32, f64)> {
    client.batch_execute(settings).unwrap();
    let rows = client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    client.batch_execute("RESET ALL").unwrap();
    rows
}

const THROUGH_INDEX: &str = "SET enable_seqscan = off";
const EXACT: &str = "SET enable_indexscan = off; SET enable_bitmapscan = off";

/// The index's top 10 equals the exact top 10: the same rows in the same order, where rows
/// whose exact distances tie (to float precision) may swap.
fn assert_same_top(via_index: &[(i32, f64)], exact: &[(i32, f64)], what: &str) {
    assert_eq!(via_index.len(), exact.len(), "{what}");
    for (i, (a, b)) in via_index.iter().zip(exact).enumerate() {
        let tied = (a.1 - b.1).abs() <= 1e-6 * b.1.abs().max(1.0);
        assert!(
            a.0 == b.0 || tied,
            "{what}: rank {i}: index {via_index:?}, exact {exact:?}"
        );
    }
}

fn vector_literal(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(","))
}

#[test]
fn real_arrays_take_pgvectors_four_operators() {
    let (_cluster, mut c) = setup("pgvector_real");
    // The operators' values: (3,4,0) and (1,2,2) are at Euclidean distance sqrt(12), their
    // inner product is 11, their cosine 11 / 15, and their L1 distance 2 + 2 + 2.
    let row = c
        .query_one(
            "SELECT '{3,4,0}'::real[] <-> '{1,2,2}', '{3,4,0}'::real[] <=> '{1,2,2}',
                    '{3,4,0}'::real[] <#> '{1,2,2}', '{3,4,0}'::real[] <+> '{1,2,2}'",
            &[],
        )
        .unwrap();
    let (l2, cosine, ip, l1): (f64, f64, f64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!((l2 - 12f64.sqrt()).abs() < 1e-9, "{l2}");
    assert!((cosine - (1.0 - 11.0 / 15.0)).abs() < 1e-9, "{cosine}");
    assert!((ip + 11.0).abs() < 1e-9, "{ip}");
    assert!((l1 - 6.0).abs() < 1e-9, "{l1}");
    for (op, _, _) in OPERATORS {
        expect_error(
            &mut c,
            &format!("SELECT '{{{{1,2}},{{3,4}}}}'::real[] {op} '{{1,2,3,4}}'::real[]"),
            &SqlState::DATA_EXCEPTION,
            "one-dimensional",
        );
    }

    c.batch_execute("CREATE TABLE v (id int, vec real[])")
        .unwrap();
    let mut next = uniform(7);
    let values: Vec<String> = (1..=500)
        .map(|id| {
            let v: Vec<String> = (0..8).map(|_| (next() * 4.0).to_string()).collect();
            format!("({id}, '{{{}}}')", v.join(","))
        })
        .collect();
    c.batch_execute(&format!("INSERT INTO v VALUES {}", values.join(",")))
        .unwrap();
    for (op, metric, _) in OPERATORS {
        let index = format!("v_{metric}");
        c.batch_execute(&format!(
            "CREATE INDEX {index} ON v USING faiss (vec) WITH (metric = '{metric}')"
        ))
        .unwrap();
        for q in [
            "{1,0,0,0,0,0,0,0}",
            "{0.5,-1,2,0.1,0,0,1,-0.3}",
            "{-2,-2,1,1,0,3,0,0}",
        ] {
            let sql = format!("SELECT id, vec {op} '{q}' FROM v ORDER BY vec {op} '{q}' LIMIT 10");
            // The planner's own choice, sequential scans allowed.
            assert!(
                plan(&mut c, &sql).contains(&format!("Index Scan using {index}")),
                "{op}: {}",
                plan(&mut c, &sql)
            );
            let via_index = rows(&mut c, THROUGH_INDEX, &sql);
            let exact = rows(&mut c, EXACT, &sql);
            assert_same_top(&via_index, &exact, &format!("real[] {op} {q}"));
        }
        // The other operators: the planner keeps away from this index (an exact plan
        // answers), also with sequential scans disabled: never another metric's order.
        for (other, _, _) in OPERATORS.iter().filter(|(o, _, _)| *o != op) {
            let sql = format!(
                "SELECT id, vec {other} '{{1,0,0,0,0,0,0,0}}' FROM v \
                 ORDER BY vec {other} '{{1,0,0,0,0,0,0,0}}' LIMIT 3"
            );
            for settings in ["RESET ALL", THROUGH_INDEX] {
                c.batch_execute(settings).unwrap();
                let chosen = plan(&mut c, &sql);
                assert!(
                    !chosen.contains("Index Scan"),
                    "{other} on {index}: {chosen}"
                );
                c.batch_execute("RESET ALL").unwrap();
            }
            let forced = rows(&mut c, THROUGH_INDEX, &sql);
            let exact = rows(&mut c, EXACT, &sql);
            assert_eq!(forced, exact, "{other} on {index}");
        }
        c.batch_execute(&format!("DROP INDEX {index}")).unwrap();
    }
    // L1 over an HNSW graph too; FAISS ranks by L1 over exact vectors only.
    c.batch_execute("CREATE INDEX v_l1_hnsw ON v USING faiss (vec) WITH (metric = 'l1', m = 16)")
        .unwrap();
    let sql = "SELECT id, vec <+> '{1,0,0,0,0,0,0,0}' FROM v ORDER BY vec <+> '{1,0,0,0,0,0,0,0}' LIMIT 10";
    assert!(plan(&mut c, sql).contains("Index Scan using v_l1_hnsw"));
    let via_index = rows(&mut c, THROUGH_INDEX, sql);
    let exact = rows(&mut c, EXACT, sql);
    assert_same_top(&via_index, &exact, "real[] <+> over HNSW16");
    c.batch_execute("DROP INDEX v_l1_hnsw").unwrap();
    expect_error(
        &mut c,
        "CREATE INDEX ON v USING faiss (vec) WITH (metric = 'l1', lists = 4)",
        &SqlState::FEATURE_NOT_SUPPORTED,
        "metric \"l1\" needs a Flat or HNSW factory, not \"IVF4,Flat\"",
    );
    // Without a metric option, a real[] index ranks by l2.
    c.batch_execute("CREATE INDEX v_default ON v USING faiss (vec)")
        .unwrap();
    let metric: String = c
        .query_one("SELECT metric FROM semantic_index_info('v_default')", &[])
        .unwrap()
        .get(0);
    assert_eq!(metric, "l2");
}

/// Whether the server can install pgvector; the test script builds it (scripts/pgvector.sh).
fn require_pgvector(c: &mut Client) {
    let available = c
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'",
            &[],
        )
        .unwrap()
        .is_some();
    assert!(
        available,
        "pgvector is not installed for the server in {}: run scripts/pgvector.sh with its pg_config",
        env().bin_dir.display()
    );
}

#[test]
fn pgvector_columns_rank_as_pgvector_does() {
    let (_cluster, mut c) = setup("pgvector_columns");
    require_pgvector(&mut c);
    c.batch_execute("CREATE EXTENSION vector; CREATE TABLE items (id int, embedding vector(384))")
        .unwrap();
    // Without the companion extension there is no faiss operator class for vector.
    expect_error(
        &mut c,
        "CREATE INDEX ON items USING faiss (embedding)",
        &SqlState::UNDEFINED_OBJECT,
        "operator class",
    );
    c.batch_execute("CREATE EXTENSION semantic_pgvector")
        .unwrap();
    let mut next = uniform(11);
    let mut insert = |c: &mut Client, ids: std::ops::RangeInclusive<i32>| {
        let values: Vec<String> = ids
            .map(|id| {
                let v: Vec<f32> = (0..384).map(|_| next()).collect();
                format!("({id}, '{}')", vector_literal(&v))
            })
            .collect();
        c.batch_execute(&format!("INSERT INTO items VALUES {}", values.join(",")))
            .unwrap();
    };
    insert(&mut c, 1..=1500);
    c.batch_execute("ALTER TABLE items ADD COLUMN half halfvec(384); UPDATE items SET half = embedding::halfvec(384)")
        .unwrap();
    for (_, metric, suffix) in OPERATORS {
        c.batch_execute(&format!(
            "CREATE INDEX items_{metric} ON items USING faiss (embedding vector_{suffix});
             CREATE INDEX items_half_{metric} ON items USING faiss (half halfvec_{suffix})"
        ))
        .unwrap();
        let index_metric: String = c
            .query_one(
                &format!("SELECT metric FROM semantic_index_info('items_{metric}')"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(index_metric, metric, "vector_{suffix}");
    }
    let mut queries = uniform(12);
    let queries: Vec<String> = (0..10)
        .map(|_| vector_literal(&(0..384).map(|_| queries()).collect::<Vec<f32>>()))
        .collect();
    let check = |c: &mut Client, when: &str| {
        for (op, metric, _) in OPERATORS {
            for (n, q) in queries.iter().enumerate() {
                for (column, cast, index) in [
                    ("embedding", "vector", format!("items_{metric}")),
                    ("half", "halfvec", format!("items_half_{metric}")),
                ] {
                    let sql = format!(
                        "SELECT id, {column} {op} '{q}'::{cast} FROM items ORDER BY {column} {op} '{q}'::{cast} LIMIT 10"
                    );
                    let shown = plan(c, &sql);
                    assert!(
                        shown.contains(&format!("Index Scan using {index} ")),
                        "{shown}"
                    );
                    let via_index = rows(c, THROUGH_INDEX, &sql);
                    let exact = rows(c, EXACT, &sql);
                    assert_same_top(
                        &via_index,
                        &exact,
                        &format!("{when}: {column} {op}, query {n}"),
                    );
                }
            }
        }
    };
    check(&mut c, "built");
    // Rows written after the build (appended records), and rows deleted then vacuumed.
    insert(&mut c, 1501..=1700);
    c.batch_execute("UPDATE items SET half = embedding::halfvec(384) WHERE half IS NULL; DELETE FROM items WHERE id % 7 = 0")
        .unwrap();
    c.batch_execute("VACUUM items").unwrap();
    check(&mut c, "after inserts, deletes and vacuum");

    // The operator class decides the metric: a contradicting option is refused.
    expect_error(
        &mut c,
        "CREATE INDEX ON items USING faiss (embedding vector_cosine_ops) WITH (metric = 'l2')",
        &SqlState::INVALID_PARAMETER_VALUE,
        "operator class",
    );
    // The default operator class is vector_l2_ops, as pgvector's.
    c.batch_execute("CREATE INDEX items_default ON items USING faiss (embedding)")
        .unwrap();
    let metric: String = c
        .query_one(
            "SELECT metric FROM semantic_index_info('items_default')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(metric, "l2");
    expect_error(
        &mut c,
        "SET enable_seqscan = off; SELECT id FROM items ORDER BY embedding <-> '[1,2,3]' LIMIT 1",
        &SqlState::DATA_EXCEPTION,
        "dimensions",
    );
    // A column whose declared dimension the index cannot hold is refused at CREATE INDEX,
    // empty table or not, rather than at every INSERT afterwards: past 2,034 dimensions a
    // record spans pages, which only factories that keep vectors exactly take.
    c.batch_execute("CREATE TABLE wide (v vector(3072))")
        .unwrap();
    expect_error(
        &mut c,
        "CREATE INDEX ON wide USING faiss (v) WITH (factory = 'IVF4,Flat')",
        &SqlState::PROGRAM_LIMIT_EXCEEDED,
        "3072 dimensions cannot be indexed with factory \"IVF4,Flat\"",
    );
}

/// Vectors of 3,072 and 16,000 dimensions (pgvector's largest), vector and halfvec alike:
/// their records span pages. Searches through the index give the order of an exact scan, with
/// the rows appended since the build, after VACUUM flags some of them dead, and after a fold;
/// a wider real[] row is refused with the limit in the message.
#[test]
fn vectors_of_up_to_16000_dimensions_are_indexed() {
    let (_cluster, mut c) = setup("pgvector_wide");
    require_pgvector(&mut c);
    c.batch_execute("CREATE EXTENSION vector; CREATE EXTENSION semantic_pgvector")
        .unwrap();
    for (column, factory) in [
        ("vector(3072)", "Flat"),
        ("halfvec(3072)", "Flat"),
        ("vector(16000)", "Flat"),
        ("halfvec(16000)", "HNSW16"),
    ] {
        let dim: i32 = column[column.find('(').unwrap() + 1..column.len() - 1]
            .parse()
            .unwrap();
        let ty = &column[..column.find('(').unwrap()];
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS wide;
             CREATE TABLE wide (id int PRIMARY KEY, v {column}) WITH (autovacuum_enabled = off);
             SELECT setseed(0.25);"
        ))
        .unwrap();
        let insert = |c: &mut Client, ids: std::ops::Range<i32>| {
            c.execute(
                &format!(
                    "INSERT INTO wide SELECT i, (SELECT array_agg(random() - 0.5 + i * 0 + d * 0)
                       FROM generate_series(1, $1::int) d)::{ty} FROM generate_series($2::int, $3::int) i"
                ),
                &[&dim, &ids.start, &(ids.end - 1)],
            )
            .unwrap();
        };
        insert(&mut c, 0..30);
        c.batch_execute(&format!(
            "CREATE INDEX wide_idx ON wide USING faiss (v) WITH (factory = '{factory}')"
        ))
        .unwrap();
        insert(&mut c, 30..60);
        let check = |c: &mut Client, what: &str| {
            for q in [3, 42, 58] {
                let sql = format!(
                    "SELECT id FROM wide ORDER BY v <-> (SELECT v FROM wide WHERE id = {q}) LIMIT 5"
                );
                let (exact, got) = exact_and_indexed_ids(c, &sql);
                let plan: String = c
                    .query(&format!("EXPLAIN {sql}"), &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect();
                assert!(plan.contains("wide_idx"), "{column} {what}: {plan}");
                if factory == "Flat" {
                    assert_eq!(got, exact, "{column} {what}: query {q}");
                } else {
                    assert_eq!(got[0], q, "{column} {what}: a vector finds itself");
                }
            }
        };
        check(&mut c, "built, 30 appended");
        c.batch_execute("DELETE FROM wide WHERE id % 4 = 1")
            .unwrap();
        c.batch_execute("VACUUM (INDEX_CLEANUP ON) wide").unwrap();
        check(&mut c, "after VACUUM");
        let rows: i64 = c
            .query_one("SELECT count(*) FROM (SELECT id FROM wide ORDER BY v <-> (SELECT v FROM wide WHERE id = 0)) s", &[])
            .unwrap()
            .get(0);
        assert_eq!(rows, 45, "{column}: every live row once");
        c.batch_execute("SELECT semantic_index_fold('wide_idx')")
            .unwrap();
        check(&mut c, "folded");
    }
    c.batch_execute(
        "CREATE TABLE reals (v real[]);
         CREATE INDEX ON reals USING faiss (v) WITH (factory = 'Flat');",
    )
    .unwrap();
    expect_error(
        &mut c,
        "INSERT INTO reals SELECT array_agg(1::real) FROM generate_series(1, 16001)",
        &SqlState::PROGRAM_LIMIT_EXCEEDED,
        "16001 dimensions cannot be indexed: faiss indexes take 1 to 16000",
    );
}

#[test]
fn a_pgvector_python_application_runs_on_a_faiss_index() {
    let python = std::env::var("SEMANTIC_TEST_PYTHON").expect(
        "SEMANTIC_TEST_PYTHON: a Python with psycopg and pgvector (scripts/test.sh makes one)",
    );
    let (cluster, mut c) = setup("pgvector_python");
    require_pgvector(&mut c);
    // What a database administrator adds for the application; the application is unchanged.
    c.batch_execute("CREATE EXTENSION vector; CREATE EXTENSION semantic_pgvector")
        .unwrap();
    let out = std::process::Command::new(python)
        .arg(env().repo.join("tests/python/pgvector_app.py"))
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            cluster.port
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("searches agree with numpy"), "{stdout}");
}

/// pgvector's own regression SQL for its index types (`test/sql/hnsw_*.sql` and
/// `ivfflat_*.sql` in the source tarball scripts/pgvector.sh downloads) run on faiss: `USING
/// faiss` substituted, each file in its own database with vector, semantic and
/// semantic_pgvector, through psql as pg_regress runs it (`-a -q`, errors in the output). The
/// output is compared with pgvector's expected output, substituted alike: the differences must
/// be those in tests/pgvector-regression/<file>.diff (`diff`'s normal format), where a comment
/// (`#` lines, not compared) explains each. On a mismatch the differences found are written to
/// target/pgvector-regression/<file>.diff.
#[test]
fn pgvectors_regression_sql_runs_on_faiss() {
    const FILES: [&str; 7] = [
        "hnsw_vector",
        "hnsw_halfvec",
        "hnsw_bit",
        "hnsw_sparsevec",
        "ivfflat_vector",
        "ivfflat_halfvec",
        "ivfflat_bit",
    ];
    let repo = &env().repo;
    let tarball = std::env::var_os("SEMANTIC_PGVECTOR_TARBALL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join(".semantic/pgvector/pgvector_0.8.0.orig.tar.gz"));
    assert!(
        tarball.is_file(),
        "{}: pgvector's source (scripts/pgvector.sh downloads it; SEMANTIC_PGVECTOR_TARBALL names another)",
        tarball.display()
    );
    let source = std::env::temp_dir().join(format!("pgvector-regression-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(&source).unwrap();
    let run = |command: &mut std::process::Command| {
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&source)
        .args(["--strip-components=1", "--wildcards"])
        .args(["*/test/sql/*", "*/test/expected/*"]));
    let to_faiss = |text: String| {
        text.replace("USING hnsw", "USING faiss")
            .replace("USING ivfflat", "USING faiss")
    };
    let (cluster, mut c) = setup("pgvector_regression");
    require_pgvector(&mut c);
    let found_dir = repo.join("target/pgvector-regression");
    let mut mismatched = Vec::new();
    for file in FILES {
        let database = format!("regression_{file}");
        c.batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        let sql =
            to_faiss(std::fs::read_to_string(source.join(format!("test/sql/{file}.sql"))).unwrap());
        let theirs = source.join(format!("{file}.expected"));
        std::fs::write(
            &theirs,
            to_faiss(
                std::fs::read_to_string(source.join(format!("test/expected/{file}.out"))).unwrap(),
            ),
        )
        .unwrap();
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={database}",
                cluster.port
            ),
            postgres::NoTls,
        )
        .unwrap()
        .batch_execute(
            "CREATE EXTENSION vector; CREATE EXTENSION semantic; CREATE EXTENSION semantic_pgvector",
        )
        .unwrap();
        let input = source.join(format!("{file}.sql"));
        std::fs::write(&input, sql).unwrap();
        let ours = source.join(format!("{file}.out"));
        let psql = env().bin_dir.join("psql");
        let script = format!(
            "'{}' -X -a -q -h 127.0.0.1 -p {} -U postgres -d {database} < '{}' > '{}' 2>&1",
            psql.display(),
            cluster.port,
            input.display(),
            ours.display()
        );
        std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        let differences = std::process::Command::new("diff")
            .arg(&theirs)
            .arg(&ours)
            .output()
            .unwrap();
        let found = String::from_utf8_lossy(&differences.stdout).into_owned();
        let expected_path = repo.join(format!("tests/pgvector-regression/{file}.diff"));
        let expected: String = std::fs::read_to_string(&expected_path)
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        if found != expected {
            std::fs::create_dir_all(&found_dir).unwrap();
            std::fs::write(found_dir.join(format!("{file}.diff")), &found).unwrap();
            mismatched.push(file);
        }
    }
    let _ = std::fs::remove_dir_all(&source);
    assert!(
        mismatched.is_empty(),
        "pgvector's regression SQL on faiss differs from pgvector's expected output otherwise \
         than tests/pgvector-regression says, for {mismatched:?}: see {}",
        found_dir.display()
    );
}
