//! The model server (one background worker holding the models for every backend): it answers
//! what a backend's own copy would, its errors arrive with their SQLSTATE, and no state of it
//! (busy, stopped, terminated, killed, absent) leaves a backend hanging or wrong.

use std::process::Command;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::Client;
use semantic_encoder::cosine_similarity as cosine;
use semantic_tests::{backend_anonymous_kib, expect_error, Cluster};

const MODEL: &str = "all-MiniLM-L6-v2";
const TEXTS: [&str; 4] = [
    "romance and separation",
    "a heist goes wrong in a small town",
    "",
    "harbour lights at dusk",
];

fn embed(client: &mut Client, text: &str) -> Vec<f32> {
    client
        .query_one("SELECT embed($1)", &[&text])
        .unwrap()
        .get(0)
}

/// The model server's pid, waiting up to 20 s for one to wait for work (it has announced
/// itself to the backends by then).
fn server_pid(client: &mut Client) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pid: Option<i32> = client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'semantic model server' \
                 AND wait_event_type = 'Extension'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0));
        match pid {
            Some(pid) => return pid,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => panic!("no model server running"),
        }
    }
}

fn loaded_here(client: &mut Client) -> bool {
    client
        .query_one(
            "SELECT loaded FROM semantic_models() WHERE name = $1",
            &[&MODEL],
        )
        .unwrap()
        .get(0)
}

fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn the_server_answers_as_a_backend_would() {
    let cluster = Cluster::start("model_server_same", &[]);
    let mut client = cluster.connect();
    client.batch_execute("CREATE EXTENSION semantic").unwrap();
    server_pid(&mut client);

    let mut served = cluster.connect();
    let before = backend_anonymous_kib(&mut served);
    let by_server: Vec<Vec<f32>> = TEXTS.iter().map(|t| embed(&mut served, t)).collect();
    // The backend holds no model: it was embedded elsewhere and its memory did not grow
    // by a model (a backend's own all-MiniLM-L6-v2 adds tens of MiB).
    let added_mib = (backend_anonymous_kib(&mut served) as f64 - before as f64) / 1024.0;
    assert!(added_mib < 8.0, "backend grew by {added_mib:.1} MiB");
    assert!(
        loaded_here(&mut served),
        "semantic_models() reports the served model as ready"
    );

    // Another thread count is another session configuration: that session embeds itself.
    let mut own = cluster.connect();
    own.batch_execute("SET semantic.threads = 2").unwrap();
    assert!(!loaded_here(&mut own));
    for (text, v) in TEXTS.iter().zip(&by_server) {
        let c = cosine(&embed(&mut own, text), v);
        assert!(c > 0.99999, "{text:?}: cosine {c}");
    }

    // Queries (asymmetric side) and the text distance go the same way.
    let q: Vec<f32> = served
        .query_one("SELECT embed('romance and separation')", &[])
        .unwrap()
        .get(0);
    assert_eq!(q, by_server[0]);
    let d: f64 = served
        .query_one(
            "SELECT 'harbour lights at dusk'::text <=> 'romance and separation'",
            &[],
        )
        .unwrap()
        .get(0);
    let expected = 1.0 - cosine(&by_server[3], &by_server[0]) as f64;
    assert!((d - expected).abs() < 1e-5, "{d} vs {expected}");

    // Many sessions at once, batched by the server: every answer is the right one.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let mut c = cluster.connect();
            let expected = by_server.clone();
            std::thread::spawn(move || {
                for round in 0..20 {
                    let k = (i + round) % TEXTS.len();
                    let got = embed(&mut c, TEXTS[k]);
                    let sim = cosine(&got, &expected[k]);
                    assert!(sim > 0.99999, "client {i} round {round}: cosine {sim}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn server_errors_keep_their_sqlstate() {
    let cluster = Cluster::start("model_server_errors", &[]);
    let mut client = cluster.connect();
    client.batch_execute("CREATE EXTENSION semantic").unwrap();
    server_pid(&mut client);
    // A model folder whose ONNX file is garbage: the server fails to load it and says why.
    let root = cluster.data.join("broken-models");
    let dir = root.join("corrupt-onnx");
    std::fs::create_dir_all(&dir).unwrap();
    let source = semantic_tests::env().model_dir.join(MODEL);
    for f in ["manifest.json", "tokenizer.json"] {
        std::fs::copy(source.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("model.onnx"), b"not an onnx graph").unwrap();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&root)
        .status()
        .unwrap();
    client
        .batch_execute(&format!("SET semantic.model_dir = '{}'", root.display()))
        .unwrap();
    expect_error(
        &mut client,
        "SELECT embed('x', 'corrupt-onnx')",
        &SqlState::CONFIG_FILE_ERROR,
        "fingerprint",
    );
    let pid = server_pid(&mut client);
    client.batch_execute("RESET semantic.model_dir").unwrap();
    assert_eq!(embed(&mut client, "still served").len(), 384);
    assert_eq!(
        server_pid(&mut client),
        pid,
        "the error did not cost the server"
    );
}

#[test]
fn a_stopped_terminated_or_killed_server_never_hangs_a_backend() {
    let cluster = Cluster::start("model_server_faults", &[]);
    let mut client = cluster.connect();
    client.batch_execute("CREATE EXTENSION semantic").unwrap();
    server_pid(&mut client);
    let reference = embed(&mut client, "romance and separation");

    // A server that stops answering (SIGSTOP): statement_timeout still ends the wait, and
    // once it answers again the abandoned request has not cost a slot.
    let pid = server_pid(&mut client);
    signal(pid, "-STOP");
    let started = Instant::now();
    expect_error(
        &mut client,
        "SET statement_timeout = '300ms'; SELECT embed('romance and separation')",
        &SqlState::QUERY_CANCELED,
        "statement timeout",
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    client.batch_execute("RESET statement_timeout").unwrap();
    signal(pid, "-CONT");
    for _ in 0..100 {
        assert_eq!(embed(&mut client, "romance and separation"), reference);
    }

    // Terminated: the backends embed themselves meanwhile, and a new server starts.
    client
        .batch_execute(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    let c = cosine(&embed(&mut client, "romance and separation"), &reference);
    assert!(c > 0.99999);
    let restarted = server_pid(&mut client);
    assert_ne!(restarted, pid);
    let mut fresh = cluster.connect();
    assert_eq!(embed(&mut fresh, "romance and separation"), reference);

    // Killed: the postmaster restarts every process, as for any crashed server process; new
    // connections are served again.
    signal(restarted, "-KILL");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fresh.simple_query("SELECT 1").is_ok() {
        assert!(
            Instant::now() < deadline,
            "the postmaster did not restart the processes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut after = loop {
        let attempt = postgres::Config::new()
            .host("127.0.0.1")
            .port(cluster.port)
            .user("postgres")
            .dbname("postgres")
            .connect(postgres::NoTls)
            .and_then(|mut c| c.simple_query("SELECT 1").map(|_| c));
        match attempt {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("server did not come back: {e}"),
        }
    };
    server_pid(&mut after);
    assert_eq!(embed(&mut after, "romance and separation"), reference);
}

/// Clients that die while they wait (terminated, as a lost connection or an idle timeout
/// would end them) give their slots back: a stopped server that resumes after 100 of them were
/// terminated still answers a new session itself, at once and without a model in the backend.
#[test]
fn clients_terminated_while_they_wait_leave_no_slot_behind() {
    let cluster = Cluster::start("model_server_dying_clients", &["max_connections = 130"]);
    let mut admin = cluster.connect();
    admin.batch_execute("CREATE EXTENSION semantic").unwrap();
    let pid = server_pid(&mut admin);
    let reference = embed(&mut admin, "romance and separation");

    signal(pid, "-STOP");
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let mut c = cluster.connect();
            std::thread::spawn(move || {
                // Ends with an error once terminated (or, for those that found every slot
                // taken, with the vector they embedded themselves).
                let _ = c.query_one("SELECT embed($1)", &[&format!("client {i}")]);
            })
        })
        .collect();
    // Every slot is taken by a client waiting for the stopped server.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT embed($1)' \
                 AND state = 'active' AND wait_event_type = 'Extension'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting >= 64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {waiting} clients wait");
        std::thread::sleep(Duration::from_millis(50));
    }
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'SELECT embed($1)' AND pid <> pg_backend_pid()",
        )
        .unwrap();
    for c in clients {
        c.join().unwrap();
    }
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT embed($1)'",
                &[],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} terminated clients remain"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, "-CONT");

    // A new session is answered by the server: no model of its own, no wait for a slot.
    let mut fresh = cluster.connect();
    let before = backend_anonymous_kib(&mut fresh);
    let started = Instant::now();
    assert_eq!(embed(&mut fresh, "romance and separation"), reference);
    let took = started.elapsed();
    let added_mib = (backend_anonymous_kib(&mut fresh) as f64 - before as f64) / 1024.0;
    eprintln!("after 100 terminated clients: embed() took {took:?}, backend +{added_mib:.1} MiB");
    assert!(
        added_mib < 8.0,
        "the backend loaded a model ({added_mib:.1} MiB)"
    );
    // A backend that found no slot would have waited 500 ms before embedding itself.
    assert!(took < Duration::from_millis(500), "embed() took {took:?}");
    assert_eq!(server_pid(&mut admin), pid, "the same server answered");
}

#[test]
fn without_preloading_each_backend_embeds_itself() {
    let cluster = Cluster::start("model_server_absent", &["shared_preload_libraries = ''"]);
    let mut client = cluster.connect();
    client.batch_execute("CREATE EXTENSION semantic").unwrap();
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'semantic model server'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(embed(&mut client, "hello").len(), 384);
    assert!(loaded_here(&mut client));

    // Preloaded but switched off: the same.
    drop(client);
    drop(cluster);
    let cluster = Cluster::start("model_server_off", &["semantic.model_server = off"]);
    let mut client = cluster.connect();
    client.batch_execute("CREATE EXTENSION semantic").unwrap();
    assert_eq!(embed(&mut client, "hello").len(), 384);
    assert!(loaded_here(&mut client));
}
