//! A small harness for integration tests in the spirit of pgvector's TAP tests: each test gets
//! its own PostgreSQL cluster on a loopback port (run as the `postgres` user when the tests run
//! as root), with the installed `semantic` extension, and the cluster is removed afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// Paths the tests need, from the environment the test script sets (with defaults matching it).
pub struct Env {
    pub repo: PathBuf,
    pub bin_dir: PathBuf,
    pub model_dir: PathBuf,
    pub onnxruntime: PathBuf,
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let from = |var: &str, default: PathBuf| {
            std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
        };
        let pg_config_bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        Env {
            bin_dir: from("SEMANTIC_TEST_PG_BINDIR", pg_config_bindir),
            model_dir: from("SEMANTIC_MODEL_DIR", repo.join(".semantic/models")),
            onnxruntime: from(
                "ORT_DYLIB_PATH",
                repo.join(".semantic/lib/libonnxruntime.so.1.32.0"),
            ),
            repo,
        }
    })
}

/// Long variants of the reliability tests (60 s of concurrency instead of 15, and so on):
/// set SEMANTIC_FULL_TESTS=1.
pub fn full_tests() -> bool {
    std::env::var_os("SEMANTIC_FULL_TESTS").is_some_and(|v| v == "1")
}

/// `../shared` beside the checkout, when present (tests that need it skip without it).
pub fn shared_dir() -> Option<PathBuf> {
    let dir = env().repo.join("../shared");
    dir.is_dir().then_some(dir)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a server binary, as `postgres` when we are root (initdb and postgres refuse root).
fn server_command(program: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    // One BLAS/OpenMP thread per backend: backends are processes, parallelism comes from them.
    // RUST_BACKTRACE as a Rust developer's shell sets it: errors must not carry backtraces.
    cmd.env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("RUST_BACKTRACE", "1");
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path))?;
    }
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An initdb'd data folder made once per test process and copied for every cluster.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = test_root();
        let dir = root.join(format!("template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        chown_postgres(&dir).unwrap();
        run(server_command(&env().bin_dir.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale",
                "C",
                "-D",
            ])
            .arg(&dir))
        .expect("initdb failed");
        dir
    })
}

fn test_root() -> PathBuf {
    let root = env().repo.join("target/test-clusters");
    std::fs::create_dir_all(&root).unwrap();
    if is_root() {
        // postgres must be able to reach its data folder.
        let _ = run(Command::new("chmod").arg("o+x").arg(&root));
    }
    root
}

/// One running PostgreSQL cluster, stopped and removed on drop.
pub struct Cluster {
    pub data: PathBuf,
    pub port: u16,
    pub name: String,
}

impl Cluster {
    /// Starts a cluster named `name` with the semantic settings pointing at the test model
    /// directory; `extra_conf` lines are appended to postgresql.conf.
    pub fn start(name: &str, extra_conf: &[&str]) -> Cluster {
        Self::try_start(name, extra_conf)
            .unwrap_or_else(|e| panic!("cannot start cluster {name}: {e:#}"))
    }

    fn try_start(name: &str, extra_conf: &[&str]) -> Result<Cluster> {
        let data = test_root().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        run(Command::new("cp").arg("-a").arg(template()).arg(&data))?;
        let port = free_port();
        let env = env();
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 40\nshared_buffers = 64MB\n\
             shared_preload_libraries = 'semantic'\n\
             semantic.model_dir = '{}'\nsemantic.onnxruntime_library = '{}'\n",
            data.display(),
            env.model_dir.display(),
            env.onnxruntime.display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text)?;
        chown_postgres(&data)?;
        let cluster = Cluster {
            data,
            port,
            name: name.to_string(),
        };
        cluster.pg_ctl(&["start", "-w", "-t", "60"])?;
        Ok(cluster)
    }

    /// Starts a streaming standby of this cluster (pg_basebackup -R), named `name`.
    pub fn start_standby(&self, name: &str) -> Cluster {
        let data = test_root().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        run(Command::new("chmod").arg("700").arg(&data)).unwrap();
        chown_postgres(&data).unwrap();
        run(server_command(&env().bin_dir.join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg("-D")
            .arg(&data))
        .unwrap_or_else(|e| panic!("pg_basebackup failed: {e:#}"));
        let port = free_port();
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\n",
            data.display()
        ));
        std::fs::write(&conf_path, text).unwrap();
        let _ = std::fs::remove_file(data.join("server.log"));
        let standby = Cluster {
            data,
            port,
            name: name.to_string(),
        };
        standby.pg_ctl(&["start", "-w", "-t", "60"]).unwrap();
        standby
    }

    /// Kills the postmaster and every server process with SIGKILL at once, as a machine or
    /// OOM-killer crash would.
    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_string();
        // Stop the postmaster first: it forks background workers (the fold worker) at any
        // moment, and a child forked between listing the children and killing them would
        // outlive the crash, holding the shared memory a restart must find free.
        let _ = Command::new("kill").args(["-STOP", &pid]).status();
        let children = Command::new("pgrep").args(["-P", &pid]).output().unwrap();
        let mut pids = vec![pid];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
        // A child may exit between pgrep and kill (a backend whose client just left): kill
        // then fails for that pid only, having killed the others.
        let _ = Command::new("kill").arg("-9").args(&pids).status();
        // Wait until they are gone, so a restart does not find their shared memory.
        for _ in 0..100 {
            let alive = pids
                .iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Runs pg_ctl on this cluster; a failure carries the end of the server log, which says
    /// why (pg_ctl itself only says to look there).
    pub fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        run(server_command(&env().bin_dir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(args))
        .map_err(|e| {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            e.context(format!("server log ends:\n{}", tail.join("\n")))
        })
    }

    pub fn connect(&self) -> postgres::Client {
        self.connect_as("postgres")
    }

    pub fn connect_as(&self, user: &str) -> postgres::Client {
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres",
                self.port
            ),
            postgres::NoTls,
        )
        .unwrap_or_else(|e| panic!("cannot connect to {} as {user}: {e}", self.name))
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        if std::thread::panicking() {
            eprintln!(
                "cluster {} kept for inspection at {}",
                self.name,
                self.data.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// A cluster named `name` with the extension created, and a superuser connection to it.
pub fn cluster_with_extension(name: &str) -> (Cluster, postgres::Client) {
    let cluster = Cluster::start(name, &[]);
    let mut client = cluster.connect();
    client.batch_execute("CREATE EXTENSION semantic").unwrap();
    (cluster, client)
}

/// Runs `sql`, expects an ERROR with `state` whose message contains `message_part`, and checks
/// that the connection still works afterwards.
/// A backend's anonymous memory in KiB, from its smaps_rollup.
pub fn backend_anonymous_kib(client: &mut postgres::Client) -> u64 {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub fn expect_error(
    client: &mut postgres::Client,
    sql: &str,
    state: &postgres::error::SqlState,
    message_part: &str,
) {
    let err = client.batch_execute(sql).expect_err(sql);
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a server error: {err}"));
    assert_eq!(db.code(), state, "{sql}: {}", db.message());
    assert!(
        db.message().contains(message_part),
        "{sql}: message {:?} lacks {message_part:?}",
        db.message()
    );
    // The servers run with RUST_BACKTRACE=1 (see server_command).
    assert!(
        db.detail()
            .is_none_or(|d| !d.contains("backtrace") && !d.contains("   0: ")),
        "{sql}: a Rust backtrace in the error's detail: {:?}",
        db.detail()
    );
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

/// The bytes of WAL the server wrote while `sql` ran.
pub fn wal_bytes(client: &mut postgres::Client, sql: &str) -> i64 {
    let before: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    client.batch_execute(sql).unwrap();
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::bigint",
            &[&before],
        )
        .unwrap()
        .get(0)
}

/// The ids `sql` (an ORDER BY ... LIMIT query) returns by an exact scan and through an
/// index scan, in that order; the session is left with index scans on, sequential ones off.
pub fn exact_and_indexed_ids(client: &mut postgres::Client, sql: &str) -> (Vec<i32>, Vec<i32>) {
    client
        .batch_execute("SET enable_seqscan = on; SET enable_indexscan = off")
        .unwrap();
    let exact = vectors::ids(client, sql, &[]);
    client
        .batch_execute("SET enable_seqscan = off; SET enable_indexscan = on")
        .unwrap();
    (exact, vectors::ids(client, sql, &[]))
}

/// real[] test data and the queries that compare an index with brute force.
pub mod vectors {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use postgres::Client;

    /// A seeded generator of uniform numbers in [-0.5, 0.5): splitmix64 over (seed, counter), so
    /// that different seeds give unrelated streams (no shared vectors between batches).
    pub fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut counter = 0u64;
        move || {
            counter += 1;
            let mut z = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(counter.wrapping_mul(0xBF58_476D_1CE4_E5B9));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        }
    }

    /// `n` 16-d points around 20 fixed centres (the same for every seed), with noise from `seed`
    /// mostly in 4 of the dimensions: data with a low intrinsic dimension, like embeddings, on
    /// which approximate indexes reach a high recall.
    pub fn clustered(n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut centre_noise = uniform(0);
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..16).map(|_| centre_noise() * 8.0).collect())
            .collect();
        let mut noise = uniform(seed);
        (0..n)
            .map(|i| {
                centres[i % 20]
                    .iter()
                    .enumerate()
                    .map(|(d, c)| c + noise() * if d < 4 { 1.0 } else { 0.02 })
                    .collect()
            })
            .collect()
    }

    pub fn copy_vectors(client: &mut Client, table: &str, first_id: usize, vectors: &[Vec<f32>]) {
        let mut text = String::new();
        for (i, v) in vectors.iter().enumerate() {
            let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            text.push_str(&format!("{}\t{{{}}}\n", first_id + i, items.join(",")));
        }
        let mut w = client
            .copy_in(&format!("COPY {table} (id, vec) FROM STDIN"))
            .unwrap();
        w.write_all(text.as_bytes()).unwrap();
        w.finish().unwrap();
    }

    pub fn ids(
        client: &mut Client,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Vec<i32> {
        client
            .query(sql, params)
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Exact top-k by L2 distance, computed in SQL without the index.
    pub fn exact(client: &mut Client, table: &str, q: &[f32], k: i64) -> Vec<i32> {
        client.batch_execute("SET enable_indexscan = off").unwrap();
        let r = ids(
            client,
            &format!("SELECT id FROM {table} ORDER BY vec <-> $1, id LIMIT $2"),
            &[&q, &k],
        );
        client.batch_execute("RESET enable_indexscan").unwrap();
        r
    }

    pub fn via_index(client: &mut Client, table: &str, q: &[f32], k: i64) -> Vec<i32> {
        client.batch_execute("SET enable_seqscan = off").unwrap();
        let r = ids(
            client,
            &format!("SELECT id FROM {table} ORDER BY vec <-> $1 LIMIT $2"),
            &[&q, &k],
        );
        client.batch_execute("RESET enable_seqscan").unwrap();
        r
    }

    pub fn recall(found: &[i32], exact: &[i32]) -> f64 {
        found.iter().filter(|id| exact.contains(id)).count() as f64 / exact.len().max(1) as f64
    }

    /// Waits until the standby has replayed everything the primary logged so far.
    pub fn wait_for_replay(primary: &mut Client, standby: &mut Client) {
        // A command that ran without a transaction id (VACUUM, for one) commits without
        // flushing its WAL, which the WAL writer writes a little later. A transaction that logs
        // a record flushes at commit, and with it every record logged before.
        primary
            .batch_execute("SELECT pg_logical_emit_message(true, 'semantic-tests', 'flush')")
            .unwrap();
        let lsn: String = primary
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        let start = Instant::now();
        loop {
            let caught_up: bool = standby
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .unwrap()
                .get(0);
            if caught_up {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "standby did not catch up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
