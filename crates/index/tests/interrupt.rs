//! The interrupt callback (its own test binary: the callback is process-wide).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use semantic_index::{set_interrupt_check, IndexError, Metric, VectorIndex};
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

#[test]
fn a_requested_interrupt_stops_an_hnsw_build_and_nothing_else() {
    let (n, dim) = (2000, 32);
    let mut rng = StdRng::seed_from_u64(3);
    let data: Vec<f32> = (0..n * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let ids: Vec<i64> = (0..n as i64).collect();
    set_interrupt_check(stop_requested);

    STOP.store(true, Ordering::Relaxed);
    let mut index = VectorIndex::new(dim, "HNSW16", Metric::L2).unwrap();
    match index.add(&ids, &data) {
        Err(IndexError::Faiss { msg, .. }) => assert!(msg.contains("interrupted"), "{msg}"),
        other => panic!("expected an interrupted add, got {other:?}"),
    }

    STOP.store(false, Ordering::Relaxed);
    let mut index = VectorIndex::new(dim, "HNSW16", Metric::L2).unwrap();
    index.add(&ids, &data).unwrap();
    assert_eq!(index.len(), n);
}
