//! FAISS's OpenMP threads start with the process's signals blocked: inside a PostgreSQL
//! backend they must never run a signal handler.

use std::collections::HashSet;

use semantic_index::{Metric, VectorIndex};

fn threads() -> HashSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

/// The blocked-signal mask of thread `tid` (bit n - 1 is signal n).
fn blocked(tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn faiss_threads_start_with_signals_blocked() {
    let before = threads();
    semantic_index::set_threads(3);
    // Parallel FAISS work: an HNSW graph built and searched by the team.
    let dim = 16;
    let vectors: Vec<f32> = (0..4000 * dim)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let ids: Vec<i64> = (0..4000).collect();
    let mut index = VectorIndex::new(dim, "HNSW16", Metric::L2).unwrap();
    index.add(&ids, &vectors).unwrap();
    let started: Vec<u32> = threads().difference(&before).copied().collect();
    semantic_index::set_threads(1);
    assert!(started.len() >= 2, "the team of 3 started {started:?}");
    for tid in started {
        let mask = blocked(tid);
        for signal in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            assert!(
                mask & (1 << (signal - 1)) != 0,
                "thread {tid} takes signal {signal}: mask {mask:x}"
            );
        }
    }
}
