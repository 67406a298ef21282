//! Upgrades, as pgvector tests them: the install script of the oldest released version (every
//! released one is kept in sql/), indexes built under it, then `ALTER EXTENSION semantic UPDATE`
//! one version at a time to the newest. After each step the indexes still answer, in the order
//! brute force gives; at the newest, semantic_search too.

use postgres::Client;
use semantic_tests::{env, Cluster};

/// The released versions whose install scripts sql/ keeps, oldest first, and the upgrade
/// steps between consecutive versions up to the newest.
fn versions() -> (Vec<String>, Vec<(String, String)>) {
    let mut installs = Vec::new();
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(env().repo.join("sql")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(versions) = name
            .strip_prefix("semantic--")
            .and_then(|n| n.strip_suffix(".sql"))
        else {
            continue;
        };
        match versions.split_once("--") {
            Some((from, to)) => steps.push((from.to_string(), to.to_string())),
            None => installs.push(versions.to_string()),
        }
    }
    installs.sort_by_key(|v| parse(v));
    steps.sort_by_key(|(from, _)| parse(from));
    (installs, steps)
}

/// The first column of `sql`'s rows.
fn column<T: for<'a> postgres::types::FromSql<'a>>(client: &mut Client, sql: &str) -> Vec<T> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn ids(client: &mut Client, sql: &str) -> Vec<i32> {
    column(client, sql)
}

fn assert_uses(client: &mut Client, sql: &str, index: &str, version: &str) {
    let plan: String = client
        .query(&format!("EXPLAIN {sql}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert!(
        plan.contains(&format!("Index Scan using {index}")),
        "{version}: {plan}"
    );
}

fn parse(version: &str) -> Vec<u32> {
    version.split('.').map(|p| p.parse().unwrap()).collect()
}

/// The index's top 10 for each query, and the same order computed without any index.
fn check_searches(client: &mut Client, version: &str) {
    // The real[] index ranks by l2, which real[] <=> meant before 0.6.0; from 0.6.0 on, <=> is
    // the cosine distance (as pgvector's) and the index serves <->.
    let operator = if parse(version) < parse("0.6.0") {
        "<=>"
    } else {
        "<->"
    };
    for q in ["{0.1,0.9,0.3}", "{5,5,5}", "{-2,0.5,9}"] {
        let order = format!("ORDER BY vec {operator} '{q}'::real[] LIMIT 10");
        client
            .batch_execute("SET enable_seqscan = off; SET enable_indexscan = on")
            .unwrap();
        let sql = format!("SELECT id FROM points {order}");
        assert_uses(client, &sql, "points_vec", version);
        let via_index = ids(client, &sql);
        client
            .batch_execute("SET enable_seqscan = on; SET enable_indexscan = off")
            .unwrap();
        let brute = ids(client, &format!("SELECT id FROM points {order}"));
        client
            .batch_execute("RESET enable_seqscan; RESET enable_indexscan")
            .unwrap();
        assert_eq!(via_index, brute, "{version}: real[] index, query {q}");
    }
    // The text index: its top rows are the ones brute force over embed() ranks first.
    client.batch_execute("SET enable_seqscan = off").unwrap();
    let sql = "SELECT id FROM docs ORDER BY body <=> 'a storm at sea' LIMIT 3";
    assert_uses(client, sql, "docs_body", version);
    let via_index = ids(client, sql);
    client.batch_execute("RESET enable_seqscan").unwrap();
    let brute = ids(
        client,
        "WITH q AS (SELECT embed('a storm at sea') AS v)
         SELECT id FROM docs, q
         ORDER BY (SELECT sum(a::float8 * b) FROM unnest(embed(body), q.v) AS t(a, b)) DESC, id
         LIMIT 3",
    );
    assert_eq!(via_index, brute, "{version}: text index");
}

/// What an upgraded installation and a fresh one must agree on, as sorted text rows.
const CATALOG: [(&str, &str); 3] = [
    (
        "extension members",
        "SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
         WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
           AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'semantic') ORDER BY 1",
    ),
    (
        "functions",
        "SELECT p.oid::regprocedure || ' ' || p.prosrc || ' ' || p.provolatile::text || p.proisstrict::text
                || ' ' || pg_get_function_result(p.oid)
         FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
         WHERE d.deptype = 'e' AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'semantic')
           -- C symbols, and the bodies of SQL and PL/pgSQL functions (semantic_search)
           AND p.prolang IN (SELECT oid FROM pg_language WHERE lanname IN ('c', 'sql', 'plpgsql'))
         ORDER BY 1",
    ),
    (
        "operator class members",
        "SELECT f.opfname || ' ' || a.amopstrategy || ' ' || a.amopopr::regoperator
         FROM pg_amop a JOIN pg_opfamily f ON f.oid = a.amopfamily
         JOIN pg_am m ON m.oid = f.opfmethod WHERE m.amname IN ('faiss', 'bm25') ORDER BY 1",
    ),
];

#[test]
fn upgrades_step_by_step_from_the_oldest_release_keep_indexes_answering() {
    let (installs, steps) = versions();
    let oldest = installs
        .first()
        .expect("sql/ keeps the released install scripts");
    assert_eq!(oldest, "0.1.0");
    let cluster = Cluster::start("upgrade", &[]);
    let mut client = cluster.connect();
    client
        .batch_execute(&format!("CREATE EXTENSION semantic VERSION '{oldest}'"))
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE points (id int, vec real[]);
             INSERT INTO points SELECT g, ARRAY[sin(g), cos(g * 0.7), (g % 17) * 0.3]::real[]
             FROM generate_series(1, 500) g;
             CREATE INDEX points_vec ON points USING faiss (vec);
             CREATE TABLE docs (id int, body text);
             INSERT INTO docs VALUES
               (1, 'A fishing boat is caught in a storm far out at sea.'),
               (2, 'Two chefs open a restaurant in Paris.'),
               (3, 'A lighthouse keeper watches the waves through a gale.'),
               (4, 'A robot learns to paint.'),
               (5, 'Sailors fight the wind and rain to reach the harbour.');
             CREATE INDEX docs_body ON docs USING faiss (body);",
        )
        .unwrap();
    check_searches(&mut client, oldest);

    let mut version = oldest.clone();
    for step in 1.. {
        let Some((_, next)) = steps.iter().find(|(from, _)| *from == version) else {
            break;
        };
        client
            .batch_execute(&format!("ALTER EXTENSION semantic UPDATE TO '{next}'"))
            .unwrap();
        version = next.clone();
        // Rows written between steps go into the same indexes.
        client
            .batch_execute(&format!(
                "INSERT INTO points SELECT g, ARRAY[cos(g), sin(g * 1.3), (g % 5) * 0.8]::real[]
                 FROM generate_series({0}, {0} + 20) g",
                1000 * step
            ))
            .unwrap();
        check_searches(&mut client, &version);
    }
    let row = client
        .query_one(
            "SELECT e.extversion, a.default_version FROM pg_extension e
             JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extname = 'semantic'",
            &[],
        )
        .unwrap();
    let (installed, newest): (String, String) = (row.get(0), row.get(1));
    assert_eq!(
        installed, newest,
        "the steps in sql/ reach the newest version"
    );
    // The upgraded extension has what a fresh install of the newest version has: the same
    // objects, functions bound to the same library symbols, the same operator class members.
    let mut fresh = cluster.connect();
    fresh.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut fresh = postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=fresh",
            cluster.port
        ),
        postgres::NoTls,
    )
    .unwrap();
    fresh.batch_execute("CREATE EXTENSION semantic").unwrap();
    for (what, sql) in CATALOG {
        let upgraded: Vec<String> = column(&mut client, sql);
        let installed: Vec<String> = column(&mut fresh, sql);
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|x| !b.contains(x)).cloned().collect()
        };
        assert!(
            upgraded == installed,
            "{what}: only after the upgrade {:?}, only in a fresh install {:?}",
            only(&upgraded, &installed),
            only(&installed, &upgraded)
        );
    }
    // At the newest version, semantic_search answers as ORDER BY does.
    let searched = ids(
        &mut client,
        "SELECT (row->>'id')::int FROM semantic_search('a storm at sea', 3, 'docs_body') ORDER BY rank",
    );
    client.batch_execute("SET enable_seqscan = off").unwrap();
    let ordered = ids(
        &mut client,
        "SELECT id FROM docs ORDER BY body <=> 'a storm at sea' LIMIT 3",
    );
    assert_eq!(searched, ordered);
}
