//! Behaviour of `VectorIndex` against brute force, plus snapshots (private and mapped),
//! the cache-file protocol and error handling.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use semantic_index::cache_file::{CacheDir, Opened};
use semantic_index::snapshot::{encode_snapshot, encode_snapshot_into};
use semantic_index::{
    best_per_id, generation_key, id_to_tid, key_generation, seal, tid_to_id, CacheKey,
    DeadPositions, IndexError, IndexMetric, Metric, Sealed, SearchParams, Snapshot, VectorIndex,
};

const KEY: CacheKey = [7; 16];

/// A private copy of `index` through its snapshot.
fn reload(index: &VectorIndex) -> VectorIndex {
    VectorIndex::from_snapshot(&encode_snapshot(index, &[], &KEY).unwrap())
        .unwrap()
        .0
}

const DIM: usize = 32;

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// `n` uniform random vectors in [-1, 1)^dim, optionally normalised.
fn random_vectors(rng: &mut StdRng, n: usize, dim: usize, norm: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        if norm {
            normalise(&mut v);
        }
        out.extend(v);
    }
    out
}

/// `n` vectors around `clusters` random centres (noise `spread`), normalised.
fn clustered_vectors(rng: &mut StdRng, n: usize, clusters: usize, spread: f32) -> Vec<f32> {
    let centres = random_vectors(rng, clusters, DIM, true);
    let mut out = Vec::with_capacity(n * DIM);
    for i in 0..n {
        let c = &centres[(i % clusters) * DIM..][..DIM];
        let mut v: Vec<f32> = c
            .iter()
            .map(|x| x + spread * rng.random_range(-1.0f32..1.0))
            .collect();
        normalise(&mut v);
        out.extend(v);
    }
    out
}

/// Ids that look like packed heap TIDs (not 0..n).
fn ids_for(n: usize) -> Vec<i64> {
    (0..n)
        .map(|i| tid_to_id((i / 50) as u32 * 7 + 3, (i % 50) as u16 + 1))
        .collect()
}

fn score(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::InnerProduct => a.iter().zip(b).map(|(x, y)| x * y).sum(),
        Metric::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
        Metric::L1 => a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum(),
    }
}

fn brute_force(
    metric: Metric,
    ids: &[i64],
    data: &[f32],
    dim: usize,
    q: &[f32],
    k: usize,
) -> Vec<(i64, f32)> {
    let mut all: Vec<(i64, f32)> = data
        .chunks_exact(dim)
        .zip(ids)
        .map(|(v, &id)| (id, score(metric, v, q)))
        .collect();
    all.sort_by(|a, b| match metric {
        Metric::InnerProduct => b.1.total_cmp(&a.1),
        Metric::L2 | Metric::L1 => a.1.total_cmp(&b.1),
    });
    all.truncate(k);
    all
}

/// Mean recall@k of `index` against brute force over `queries`.
fn recall(
    index: &VectorIndex,
    ids: &[i64],
    data: &[f32],
    queries: &[f32],
    k: usize,
    params: &SearchParams,
) -> f64 {
    let metric = index.metric();
    let mut hit = 0usize;
    let mut total = 0usize;
    for q in queries.chunks_exact(index.dim()) {
        let truth: Vec<i64> = brute_force(metric, ids, data, index.dim(), q, k)
            .into_iter()
            .map(|h| h.0)
            .collect();
        let got = index.search(q, k, params).unwrap();
        hit += got.iter().filter(|h| truth.contains(&h.0)).count();
        total += truth.len();
    }
    hit as f64 / total as f64
}

fn build(factory: &str, metric: Metric, ids: &[i64], data: &[f32]) -> VectorIndex {
    let mut index = VectorIndex::new(DIM, factory, metric).unwrap();
    if index.needs_training() {
        index.train(data).unwrap();
    }
    assert!(!index.needs_training());
    index.add(ids, data).unwrap();
    assert_eq!(index.len(), ids.len());
    index
}

#[test]
fn vector_index_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<VectorIndex>();
}

fn flat_exact(metric: Metric) {
    let mut rng = StdRng::seed_from_u64(1);
    let n = 2000;
    let data = random_vectors(&mut rng, n, DIM, true);
    let ids = ids_for(n);
    let index = build("Flat", metric, &ids, &data);
    assert!(!index.needs_training());
    assert_eq!(index.dim(), DIM);
    assert_eq!(index.metric(), metric);
    let queries = random_vectors(&mut rng, 25, DIM, true);
    for q in queries.chunks_exact(DIM) {
        let want = brute_force(metric, &ids, &data, DIM, q, 10);
        let got = index.search(q, 10, &SearchParams::default()).unwrap();
        assert_eq!(
            got.iter().map(|h| h.0).collect::<Vec<_>>(),
            want.iter().map(|h| h.0).collect::<Vec<_>>()
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() < 1e-5, "{g:?} vs {w:?}");
        }
    }
    // k above the number of vectors: everything, no -1 padding.
    let small_ids = &ids[..5];
    let small = build("Flat", metric, small_ids, &data[..5 * DIM]);
    let got = small
        .search(&queries[..DIM], 50, &SearchParams::default())
        .unwrap();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|h| small_ids.contains(&h.0)));
    assert_eq!(
        small
            .search(&queries[..DIM], 0, &SearchParams::default())
            .unwrap(),
        vec![]
    );
}

#[test]
fn flat_inner_product_matches_brute_force() {
    flat_exact(Metric::InnerProduct);
}

#[test]
fn flat_l2_matches_brute_force() {
    flat_exact(Metric::L2);
}

#[test]
fn flat_l1_matches_brute_force() {
    flat_exact(Metric::L1);
}

/// L1 over an HNSW graph: FAISS links and searches it with the flat storage's L1 distances.
#[test]
fn hnsw_l1_reaches_recall() {
    let mut rng = StdRng::seed_from_u64(12);
    let n = 2000;
    let data = clustered_vectors(&mut rng, n, 20, 0.3);
    let ids = ids_for(n);
    let index = build("HNSW16", Metric::L1, &ids, &data);
    assert_eq!(index.metric(), Metric::L1);
    let queries = clustered_vectors(&mut rng, 50, 20, 0.3);
    let params = SearchParams {
        ef_search: 128,
        nprobe: 0,
    };
    let r = recall(&index, &ids, &data, &queries, 10, &params);
    assert!(r >= 0.95, "HNSW16 L1 recall@10 {r}");
    // The scores are L1 distances, as the appended records' exact scan computes them.
    let q = &queries[..DIM];
    let got = index.search(q, 3, &params).unwrap();
    let want = brute_force(Metric::L1, &ids, &data, DIM, q, 3);
    assert!((got[0].1 - want[0].1).abs() < 1e-4, "{got:?} vs {want:?}");
    let exact = score(Metric::L1, &data[..DIM], q);
    let mut scored = [0f32];
    Metric::L1.score_all(&data[..DIM], q, &mut scored);
    assert!((scored[0] - exact).abs() < 1e-4);
}

#[test]
fn hnsw_recall_and_ef_search() {
    let mut rng = StdRng::seed_from_u64(2);
    let n = 2000;
    let data = clustered_vectors(&mut rng, n, 20, 0.3);
    let ids = ids_for(n);
    let index = build("HNSW32", Metric::InnerProduct, &ids, &data);
    let queries = clustered_vectors(&mut rng, 50, 20, 0.3);
    let high = SearchParams {
        ef_search: 128,
        nprobe: 0,
    };
    let r = recall(&index, &ids, &data, &queries, 10, &high);
    assert!(r >= 0.95, "HNSW32 recall@10 {r}");

    // efSearch matters on hard (uniform, higher-dimensional) data.
    let dim = 64;
    let data = random_vectors(&mut rng, n, dim, true);
    let mut index = VectorIndex::new(dim, "HNSW16", Metric::L2).unwrap();
    index.add(&ids, &data).unwrap();
    let queries = random_vectors(&mut rng, 50, dim, true);
    let low = SearchParams {
        ef_search: 1,
        nprobe: 0,
    };
    let high = SearchParams {
        ef_search: 256,
        nprobe: 0,
    };
    let r_low = recall(&index, &ids, &data, &queries, 10, &low);
    let r_high = recall(&index, &ids, &data, &queries, 10, &high);
    let r_default = recall(&index, &ids, &data, &queries, 10, &SearchParams::default());
    eprintln!("HNSW16 uniform 64-d recall@10: ef=1 {r_low}, default {r_default}, ef=256 {r_high}");
    assert!(r_high >= 0.95, "ef=256 recall {r_high}");
    assert!(
        r_low < r_high,
        "efSearch had no effect: {r_low} vs {r_high}"
    );
    assert!(
        r_low <= r_default && r_default < r_high,
        "{r_low} {r_default} {r_high}"
    );
    // efSearch below k is raised to k (FAISS would stop after efSearch).
    let ef_k = SearchParams {
        ef_search: 10,
        nprobe: 0,
    };
    assert_eq!(r_low, recall(&index, &ids, &data, &queries, 10, &ef_k));
    // 0 goes back to FAISS's default, even after other values were set.
    let fresh = reload(&index);
    for q in queries.chunks_exact(dim).take(10) {
        assert_eq!(
            index.search(q, 10, &SearchParams::default()).unwrap(),
            fresh.search(q, 10, &SearchParams::default()).unwrap()
        );
    }
    // nprobe is ignored on HNSW.
    index
        .search(
            &queries[..dim],
            10,
            &SearchParams {
                ef_search: 0,
                nprobe: 8,
            },
        )
        .unwrap();
}

#[test]
fn hnsw_ef_construction_builds_better_graphs_and_is_kept() {
    let mut rng = StdRng::seed_from_u64(5);
    let (n, dim) = (3000, 64);
    let data = random_vectors(&mut rng, n, dim, true);
    let queries = random_vectors(&mut rng, 50, dim, true);
    let ids = ids_for(n);
    let params = SearchParams {
        ef_search: 16,
        nprobe: 0,
    };
    // Everything is added after a save/load round trip: the setting must survive it (other
    // backends extend a graph they loaded).
    let graph = |ef: usize| {
        let mut index = VectorIndex::new(dim, "HNSW8", Metric::InnerProduct).unwrap();
        index.set_ef_construction(ef).unwrap();
        let mut index = reload(&index);
        index.add(&ids, &data).unwrap();
        recall(&index, &ids, &data, &queries, 10, &params)
    };
    let (poor, rich) = (graph(2), graph(200));
    eprintln!("HNSW8 recall@10 at efSearch 16: efConstruction 2 {poor}, 200 {rich}");
    assert!(
        rich > poor + 0.05,
        "efConstruction had no effect: {poor} vs {rich}"
    );

    // Graph-less indexes ignore it; nonsense values are refused.
    let mut flat = VectorIndex::new(dim, "Flat", Metric::L2).unwrap();
    flat.set_ef_construction(64).unwrap();
    let mut hnsw = VectorIndex::new(dim, "HNSW8", Metric::L2).unwrap();
    assert!(hnsw.set_ef_construction(0).is_err());
}

#[test]
fn ivf_recall_and_nprobe() {
    let mut rng = StdRng::seed_from_u64(3);
    let n = 2000;
    let data = clustered_vectors(&mut rng, n, 20, 0.3);
    let ids = ids_for(n);
    let index = build("IVF16,Flat", Metric::L2, &ids, &data);
    assert_eq!(index.nlist(), Some(16));
    let queries = clustered_vectors(&mut rng, 50, 20, 0.3);
    let all = SearchParams {
        ef_search: 0,
        nprobe: 16,
    };
    let r = recall(&index, &ids, &data, &queries, 10, &all);
    assert!(r >= 0.95, "IVF16 nprobe=16 recall@10 {r}");

    // Uniform data: one probed list misses most neighbours.
    let data = random_vectors(&mut rng, n, DIM, true);
    let index = build("IVF16,Flat", Metric::InnerProduct, &ids, &data);
    let queries = random_vectors(&mut rng, 50, DIM, true);
    let one = SearchParams {
        ef_search: 0,
        nprobe: 1,
    };
    let r1 = recall(&index, &ids, &data, &queries, 10, &one);
    let r16 = recall(&index, &ids, &data, &queries, 10, &all);
    let r_default = recall(&index, &ids, &data, &queries, 10, &SearchParams::default());
    eprintln!("IVF16 uniform recall@10: nprobe=1 {r1}, default {r_default}, nprobe=16 {r16}");
    assert!(r16 > 0.999, "nprobe=nlist must be exact: {r16}");
    assert!(r1 < 0.9 && r1 < r16, "nprobe had no effect: {r1} vs {r16}");
    assert_eq!(r_default, r1, "FAISS's default nprobe is 1");
    // Larger than nlist is clamped; efSearch is ignored on IVF,Flat.
    let big = SearchParams {
        ef_search: 99,
        nprobe: 1000,
    };
    assert_eq!(recall(&index, &ids, &data, &queries, 10, &big), r16);
}

#[test]
fn ivf_pq_trains_and_searches() {
    let mut rng = StdRng::seed_from_u64(4);
    let n = 1000;
    let data = clustered_vectors(&mut rng, n, 10, 0.2);
    let ids = ids_for(n);
    let index = build("IVF8,PQ8np", Metric::InnerProduct, &ids, &data);
    let queries = clustered_vectors(&mut rng, 20, 10, 0.2);
    let r = recall(
        &index,
        &ids,
        &data,
        &queries,
        10,
        &SearchParams {
            ef_search: 0,
            nprobe: 8,
        },
    );
    eprintln!("IVF8,PQ8np recall@10 {r}");
    assert!(r > 0.6, "IVF8,PQ8np recall@10 {r}");
}

fn round_trip(factory: &str, metric: Metric) {
    let mut rng = StdRng::seed_from_u64(5);
    let n = 1500;
    let data = clustered_vectors(&mut rng, n, 15, 0.3);
    let ids = ids_for(n);
    let index = build(factory, metric, &ids, &data);
    let params = SearchParams {
        ef_search: 40,
        nprobe: 4,
    };
    let hashes: Vec<u64> = (0..n as u64).map(|i| i * 31 + 5).collect();
    let bytes = encode_snapshot(&index, &hashes, &KEY).unwrap();
    let (mut loaded, loaded_hashes) = VectorIndex::from_snapshot(&bytes).unwrap();
    assert_eq!(loaded_hashes, hashes);
    assert_eq!(loaded.ids(), index.ids());
    assert_eq!(loaded.len(), index.len());
    assert_eq!(loaded.dim(), DIM);
    assert_eq!(loaded.metric(), metric);
    assert_eq!(loaded.needs_training(), index.needs_training());
    assert_eq!(loaded.nlist(), index.nlist());
    let queries = clustered_vectors(&mut rng, 20, 15, 0.3);
    for p in [SearchParams::default(), params] {
        for q in queries.chunks_exact(DIM) {
            assert_eq!(
                index.search(q, 10, &p).unwrap(),
                loaded.search(q, 10, &p).unwrap()
            );
        }
    }
    // Serialising twice gives the same bytes (search settings are not persisted).
    assert_eq!(encode_snapshot(&loaded, &hashes, &KEY).unwrap(), bytes);
    // The loaded index keeps working.
    let extra = random_vectors(&mut rng, 1, DIM, true);
    loaded
        .add(&[tid_to_id(u32::MAX, u16::MAX)], &extra)
        .unwrap();
    let hit = loaded
        .search(
            &extra,
            1,
            &SearchParams {
                ef_search: 64,
                nprobe: 15,
            },
        )
        .unwrap();
    assert_eq!(hit[0].0, tid_to_id(u32::MAX, u16::MAX));
}

#[test]
fn round_trip_flat() {
    round_trip("Flat", Metric::InnerProduct);
}

#[test]
fn round_trip_hnsw() {
    round_trip("HNSW32", Metric::L2);
}

#[test]
fn round_trip_ivf() {
    round_trip("IVF16,Flat", Metric::InnerProduct);
}

#[test]
fn round_trip_empty_and_untrained() {
    let index = VectorIndex::new(DIM, "IVF16,Flat", Metric::L2).unwrap();
    let loaded = reload(&index);
    assert!(loaded.needs_training());
    assert!(loaded.is_empty());
    let index = VectorIndex::new(DIM, "HNSW32", Metric::L2).unwrap();
    let loaded = reload(&index);
    assert!(loaded.is_empty());
    assert_eq!(
        loaded
            .search(&[0.0; DIM], 5, &SearchParams::default())
            .unwrap(),
        vec![]
    );
}

#[test]
fn exact_vectors_are_read_back() {
    let mut rng = StdRng::seed_from_u64(8);
    let n = 500;
    let data = random_vectors(&mut rng, n, DIM, true);
    let ids = ids_for(n);
    for (factory, exact) in [
        ("Flat", true),
        ("HNSW16", true),
        ("IVF4,Flat", false),
        ("HNSW16,SQ8", false),
        ("SQ8", false),
    ] {
        let index = build(factory, Metric::L2, &ids, &data);
        assert_eq!(index.stores_exact_vectors(), exact, "{factory}");
        let loaded = reload(&index);
        assert_eq!(loaded.stores_exact_vectors(), exact, "{factory}");
        if exact {
            assert_eq!(loaded.vectors().unwrap(), data, "{factory}");
            assert_eq!(loaded.ids(), &ids[..], "{factory}");
        }
    }
}

/// Searches that skip dead positions return k live vectors: the exact ones for Flat, FAISS's
/// selector inside HNSW and IVF searches, and the wider search for kinds that take no selector
/// (PQ); a dead position is never returned, also when the dead ones are the query's nearest.
#[test]
fn searches_skip_dead_positions_and_still_return_k() {
    let mut rng = StdRng::seed_from_u64(21);
    let n = 3000;
    let data = clustered_vectors(&mut rng, n, 20, 0.3);
    let ids = ids_for(n);
    let queries = clustered_vectors(&mut rng, 20, 20, 0.3);
    let params = SearchParams {
        ef_search: 160,
        nprobe: 32,
    };
    for (factory, metric, min_recall) in [
        ("Flat", Metric::InnerProduct, 1.0),
        ("Flat", Metric::L1, 1.0),
        ("HNSW16", Metric::L2, 0.9),
        ("HNSW16", Metric::L1, 0.9),
        ("IVF32,Flat", Metric::InnerProduct, 1.0),
        ("PCA16,IVF8,Flat", Metric::L2, 0.0),
        ("PQ8", Metric::L2, 0.0),
    ] {
        let index = build(factory, metric, &ids, &data);
        let snapshot = Snapshot::from_bytes(&encode_snapshot(&index, &[], &KEY).unwrap()).unwrap();
        let (mut found, mut wanted) = (0, 0);
        for (qi, q) in queries.chunks_exact(DIM).enumerate() {
            // A fifth of the positions (the compaction threshold's share), and the query's ten
            // nearest.
            let nearest: Vec<usize> = brute_force(metric, &ids, &data, DIM, q, 10)
                .iter()
                .map(|(id, _)| ids.iter().position(|x| x == id).unwrap())
                .collect();
            let dead = DeadPositions::new(
                n,
                (0..n as u32)
                    .filter(|p| p % 5 == qi as u32 % 5)
                    .chain(nearest.iter().map(|&p| p as u32)),
            );
            let hits = snapshot.search(q, 10, &params, Some(&dead)).unwrap();
            assert_eq!(hits.len(), 10, "{factory}: query {qi}");
            let live_ids: Vec<i64> = (0..n)
                .filter(|&p| !dead.contains(p))
                .map(|p| ids[p])
                .collect();
            let live_data: Vec<f32> = (0..n)
                .filter(|&p| !dead.contains(p))
                .flat_map(|p| data[p * DIM..(p + 1) * DIM].to_vec())
                .collect();
            let truth: Vec<i64> = brute_force(metric, &live_ids, &live_data, DIM, q, 10)
                .iter()
                .map(|h| h.0)
                .collect();
            for hit in &hits {
                let pos = ids.iter().position(|&id| id == hit.id).unwrap();
                assert!(
                    !dead.contains(pos),
                    "{factory}: dead position {pos} returned"
                );
            }
            found += hits.iter().filter(|h| truth.contains(&h.id)).count();
            wanted += truth.len();
        }
        let recall = found as f64 / wanted as f64;
        // Against the same index searched without dead positions at the same settings.
        let unfiltered = self::recall(&index, &ids, &data, &queries, 10, &params);
        assert!(
            recall >= unfiltered.min(min_recall) - 0.05,
            "{factory}: recall {recall} among live vectors, {unfiltered} without dead ones"
        );
    }
}

/// The same snapshot searched as a private copy and mapped from a file gives the same results,
/// ids and text hashes, for every kind of index.
#[test]
fn mapped_and_private_snapshots_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(10);
    let n = 3000;
    let data = clustered_vectors(&mut rng, n, 20, 0.3);
    let ids = ids_for(n);
    let hashes: Vec<u64> = (0..n as u64).map(|i| i ^ 0xabcdef).collect();
    let queries = clustered_vectors(&mut rng, 25, 20, 0.3);
    let params = SearchParams {
        ef_search: 64,
        nprobe: 8,
    };
    for (factory, metric) in [
        ("Flat", Metric::InnerProduct),
        ("HNSW16", Metric::L2),
        ("IVF32,Flat", Metric::InnerProduct),
    ] {
        let index = build(factory, metric, &ids, &data);
        let bytes = encode_snapshot(&index, &hashes, &KEY).unwrap();
        let path = dir.path().join(format!("{factory}.snap"));
        std::fs::write(&path, &bytes).unwrap();
        let private = Snapshot::from_bytes(&bytes).unwrap();
        let mapped = Snapshot::open_file(&path, true).unwrap();
        assert!(mapped.is_mapped() && !private.is_mapped());
        assert_eq!(mapped.len(), n);
        assert_eq!(mapped.key(), &KEY);
        assert_eq!(mapped.ids().collect::<Vec<_>>(), ids);
        for q in queries.chunks_exact(DIM) {
            let a = private.search(q, 10, &params, None).unwrap();
            let b = mapped.search(q, 10, &params, None).unwrap();
            assert_eq!(a, b, "{factory}");
            assert_eq!(a.len(), 10);
            let expected: Vec<(i64, f32)> = index.search(q, 10, &params).unwrap();
            assert_eq!(
                b.iter().map(|h| (h.id, h.score)).collect::<Vec<_>>(),
                expected,
                "{factory}"
            );
            for h in &b {
                let pos = ids.iter().position(|&id| id == h.id).unwrap();
                assert_eq!(h.text_hash, Some(hashes[pos]));
            }
        }
    }
}

#[test]
fn corrupt_snapshots_are_errors() {
    let mut rng = StdRng::seed_from_u64(6);
    let n = 300;
    let data = random_vectors(&mut rng, n, DIM, true);
    let ids = ids_for(n);
    let dir = tempfile::tempdir().unwrap();
    for factory in ["Flat", "HNSW16", "IVF4,Flat"] {
        let bytes = encode_snapshot(&build(factory, Metric::L2, &ids, &data), &[], &KEY).unwrap();
        let is_corrupt = |b: &[u8]| {
            let private = matches!(Snapshot::from_bytes(b), Err(IndexError::Corrupt(_)));
            let mutable = matches!(VectorIndex::from_snapshot(b), Err(IndexError::Corrupt(_)));
            let path = dir.path().join("probe.snap");
            std::fs::write(&path, b).unwrap();
            let mapped = matches!(
                Snapshot::open_file(&path, true),
                Err(IndexError::Corrupt(_))
            );
            private && mutable && mapped
        };
        assert!(!is_corrupt(&bytes));
        assert!(is_corrupt(&[]));
        assert!(is_corrupt(&bytes[..10]));
        assert!(is_corrupt(&bytes[..bytes.len() - 1]));
        assert!(is_corrupt(&bytes[..bytes.len() / 2]));
        assert!(is_corrupt(&bytes[1..]));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(is_corrupt(&longer));
        for pos in [
            0,
            9,
            13,
            17,
            24,
            30,
            bytes.len() / 2,
            bytes.len() - 70,
            bytes.len() - 1,
        ] {
            let mut flipped = bytes.clone();
            flipped[pos] ^= 0x40;
            assert!(is_corrupt(&flipped), "{factory}: flip at {pos} accepted");
        }
        let garbage: Vec<u8> = (0..bytes.len()).map(|_| rng.random()).collect();
        assert!(is_corrupt(&garbage));
    }
}

/// A snapshot is written as it is made: into any writer, byte for byte what the buffer holds,
/// and a writer that fails part way (a full disk) is an error, whichever part it fails in.
#[test]
fn snapshots_stream_into_writers_that_may_fail() {
    struct FailsAfter(usize, Vec<u8>);
    impl std::io::Write for FailsAfter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if self.1.len() + bytes.len() > self.0 {
                return Err(std::io::Error::other("no space left"));
            }
            self.1.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut rng = StdRng::seed_from_u64(7);
    let n = 300;
    let data = random_vectors(&mut rng, n, DIM, true);
    let ids = ids_for(n);
    let hashes: Vec<u64> = (0..n as u64).collect();
    let index = build("HNSW16", Metric::L2, &ids, &data);
    let bytes = encode_snapshot(&index, &hashes, &KEY).unwrap();
    let mut whole = FailsAfter(usize::MAX, Vec::new());
    encode_snapshot_into(&index, &hashes, &KEY, &mut whole).unwrap();
    assert_eq!(whole.1, bytes);
    // In FAISS's part, in the tables, in the footer.
    for limit in [0, 100, bytes.len() - 8 * n - 100, bytes.len() - 10] {
        let mut short = FailsAfter(limit, Vec::new());
        let result = encode_snapshot_into(&index, &hashes, &KEY, &mut short);
        assert!(
            matches!(&result, Err(IndexError::Faiss { .. })),
            "{limit}: {result:?}"
        );
    }
}

/// The cache-file protocol: publish, open, stale generations, damage, the build lock.
#[test]
fn cache_files_are_published_checked_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheDir::new(dir.path().join("semantic"));
    let mut rng = StdRng::seed_from_u64(11);
    let n = 400;
    let data = random_vectors(&mut rng, n, DIM, true);
    let ids = ids_for(n);
    let index = build("HNSW16", Metric::InnerProduct, &ids, &data);
    let key_a: CacheKey = [1; 16];
    let key_b: CacheKey = [2; 16];
    let bytes_a = encode_snapshot(&index, &[], &key_a).unwrap();
    let bytes_b = encode_snapshot(&index, &[], &key_b).unwrap();
    let started = 1234;
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_a, started),
        Opened::Missing
    ));

    let publish = |key: &CacheKey, bytes: &[u8]| {
        let _lock = cache.lock("1.2.3", key, || {}).unwrap();
        cache
            .publish("1.2.3", key, &[], |w| w.write_all(bytes))
            .unwrap()
            .path
    };
    let path_a = publish(&key_a, &bytes_a);
    assert_eq!(std::fs::read(&path_a).unwrap(), bytes_a);
    let Opened::Ready(snapshot) = cache.open::<Snapshot>("1.2.3", &key_a, started) else {
        panic!("published file not opened");
    };
    assert!(snapshot.is_mapped());
    let q = &data[..DIM];
    let expected = index.search(q, 5, &SearchParams::default()).unwrap();
    let got: Vec<(i64, f32)> = snapshot
        .search(q, 5, &SearchParams::default(), None)
        .unwrap()
        .iter()
        .map(|h| (h.id, h.score))
        .collect();
    assert_eq!(got, expected);

    // A file under another generation's name is not taken for this one.
    std::fs::copy(&path_a, cache.path("1.2.3", &key_b)).unwrap();
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started),
        Opened::Damaged(_)
    ));

    // Publishing a new generation removes the older one's files; an open mapping survives.
    let path_b = publish(&key_b, &bytes_b);
    assert!(!path_a.exists());
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started),
        Opened::Ready(_)
    ));
    assert_eq!(
        snapshot
            .search(q, 5, &SearchParams::default(), None)
            .unwrap()
            .len(),
        5
    );

    // Truncated: found at any open.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path_b)
        .unwrap();
    f.set_len(bytes_b.len() as u64 - 100).unwrap();
    drop(f);
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started),
        Opened::Damaged(_)
    ));
    publish(&key_b, &bytes_b);

    // A flipped byte in the FAISS part with the file's identity kept (size, and mtime put
    // back) passes while the stamp of this server start stands, and is found after a restart.
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started),
        Opened::Ready(_)
    ));
    let mut damaged = bytes_b.clone();
    damaged[100] ^= 0x10;
    let mtime = std::fs::metadata(&path_b).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path_b)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &damaged[100..101], 100).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started + 1),
        Opened::Damaged(_)
    ));
    // Rewritten in place with a new mtime: checked again at once.
    std::fs::write(&path_b, &damaged).unwrap();
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started),
        Opened::Damaged(_)
    ));
    publish(&key_b, &bytes_b);
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started),
        Opened::Ready(_)
    ));

    // One builder at a time: a second locker waits until the first lets go.
    let lock = cache.lock("1.2.3", &key_b, || {}).unwrap();
    let waited = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let _second = cache
                .lock("1.2.3", &key_b, || {
                    waited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })
                .unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(lock);
        t.join().unwrap();
    });
    assert!(waited.load(std::sync::atomic::Ordering::Relaxed) > 0);

    // A writer that fails leaves no file behind, and the published one stands.
    let err = cache.publish("1.2.3", &key_b, &[], |_| {
        Err(std::io::Error::other("disk full"))
    });
    assert!(err.is_err());
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started),
        Opened::Ready(_)
    ));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("semantic"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // An unwritable directory is an error the caller can fall back from.
    let blocked = CacheDir::new(dir.path().join("file-not-dir/semantic"));
    std::fs::write(dir.path().join("file-not-dir"), b"x").unwrap();
    assert!(blocked.lock("1.2.3", &key_b, || {}).is_err());
    cache.remove_all("1.2.3");
    assert!(matches!(
        cache.open::<Snapshot>("1.2.3", &key_b, started),
        Opened::Missing
    ));
}

/// Publishing removes only older generations' files, and never those of a generation whose
/// build lock someone holds: a backend that publishes an old generation late, or a rewrite
/// that publishes its file before the metapage points to it, keeps what others rely on.
#[test]
fn publishing_keeps_newer_generations_and_held_locks() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheDir::new(dir.path().join("semantic"));
    let key = |generation| generation_key(generation, [9; 8]);
    let (old, current, newer) = (key(3), key(4), key(5));
    assert_eq!(key_generation(&newer), 5);
    let publish_keeping = |key: &CacheKey, also_keep: &[CacheKey]| {
        let _lock = cache.lock("4.5.6", key, || {}).unwrap();
        cache
            .publish("4.5.6", key, also_keep, |w| {
                w.write_all(&seal(b"payload", key))
            })
            .unwrap()
            .path
    };
    let publish = |key: &CacheKey| publish_keeping(key, &[]);
    let old_path = publish(&old);
    // Generation 3's lock is held by a backend still building from it.
    let held = cache.lock("4.5.6", &old, || {}).unwrap();
    let newer_path = publish(&newer);
    // Generation 4, published late, removes neither 5 nor the held generation 3.
    let current_path = publish(&current);
    assert!(newer_path.exists(), "a newer generation's file was removed");
    assert!(current_path.exists());
    assert!(old_path.exists(), "a generation being built lost its files");
    let lock_of = |path: &std::path::Path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        std::path::PathBuf::from(name)
    };
    assert!(lock_of(&old_path).exists());
    // Once released, the next publish removes generations 3 and 4 with their locks.
    drop(held);
    let newest_path = publish(&key(6));
    for gone in [&old_path, &current_path, &newer_path] {
        assert!(!gone.exists(), "{} stayed", gone.display());
        assert!(!lock_of(gone).exists(), "{}.lock stayed", gone.display());
    }
    assert!(newest_path.exists() && lock_of(&newest_path).exists());
    // Segments an index still searches keep their files: generation 6's stays beside 7's
    // until a publish no longer names it.
    let segment_path = newest_path;
    let next_path = publish_keeping(&key(7), &[key(6)]);
    assert!(segment_path.exists(), "a kept segment's file was removed");
    publish(&key(8));
    assert!(!segment_path.exists() && !next_path.exists());
}

#[test]
fn sealed_payloads_share_the_snapshot_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheDir::new(dir.path().join("semantic"));
    let key: CacheKey = [9; 16];
    let payload: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
    let bytes = seal(&payload, &key);
    // In memory: checked, and the payload comes back exactly.
    let sealed = Sealed::from_bytes(bytes.clone()).unwrap();
    assert_eq!(sealed.payload(), &payload[..]);
    assert!(!sealed.is_mapped());
    let mut flipped = bytes.clone();
    flipped[10] ^= 1;
    assert!(Sealed::from_bytes(flipped).is_err(), "checksum");
    assert!(
        Sealed::from_bytes(bytes[..bytes.len() - 1].to_vec()).is_err(),
        "truncated"
    );
    // A faiss snapshot is not a sealed payload, nor the other way round.
    let mut rng = StdRng::seed_from_u64(3);
    let data = random_vectors(&mut rng, 10, DIM, true);
    let faiss =
        encode_snapshot(&build("Flat", Metric::L2, &ids_for(10), &data), &[], &key).unwrap();
    assert!(Sealed::from_bytes(faiss).is_err());
    assert!(Snapshot::from_bytes(&bytes).is_err());
    // As a file: published, mapped, checked like a faiss snapshot.
    {
        let _lock = cache.lock("4.5.6", &key, || {}).unwrap();
        cache
            .publish("4.5.6", &key, &[], |w| w.write_all(&bytes))
            .unwrap();
    }
    let Opened::Ready(mapped) = cache.open::<Sealed>("4.5.6", &key, 1) else {
        panic!("sealed file not opened");
    };
    assert!(mapped.is_mapped());
    assert_eq!(mapped.payload(), &payload[..]);
    assert!(matches!(
        cache.open::<Sealed>("4.5.6", &[8; 16], 1),
        Opened::Missing
    ));
}

#[test]
fn bad_factory_strings() {
    for f in [
        "Nope",
        "IVF0,Flat",
        "",
        "HNSW0",
        "PQ0",
        "IDMap,Flat",
        "Flat,Nope",
        "IVF16,Flat\0",
    ] {
        match VectorIndex::new(DIM, f, Metric::L2) {
            Err(IndexError::InvalidFactory { factory, reason }) => {
                assert_eq!(factory, f);
                assert!(!reason.is_empty());
            }
            other => panic!("{f:?}: {other:?}"),
        }
    }
    // PQ with a sub-quantizer count that does not divide the dimension.
    assert!(VectorIndex::new(DIM, "PQ5", Metric::L2).is_err());
    assert!(VectorIndex::new(DIM, "IVF4,PQ7", Metric::L2).is_err());
    assert!(matches!(
        VectorIndex::new(0, "Flat", Metric::L2),
        Err(IndexError::InvalidArgument(_))
    ));
    let e = VectorIndex::new(DIM, "Nope", Metric::L2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Nope"), "{e}");
}

#[test]
fn training_errors() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut index = VectorIndex::new(DIM, "IVF16,Flat", Metric::L2).unwrap();
    assert!(index.needs_training());
    let few = random_vectors(&mut rng, 10, DIM, true);
    let err = index.train(&few).unwrap_err();
    assert_eq!(
        err,
        IndexError::TooFewTrainingVectors {
            nlist: 16,
            needed: 16,
            got: 10
        }
    );
    assert!(err.to_string().contains("at least 16"), "{err}");
    assert!(index.needs_training());
    // Adding before training is an error, not a crash.
    assert!(matches!(
        index.add(&[1], &few[..DIM]),
        Err(IndexError::NotTrained { .. })
    ));
    assert!(matches!(
        index.search(&few[..DIM], 3, &SearchParams::default()),
        Ok(v) if v.is_empty()
    ));
    // Shape and value checks.
    assert!(matches!(
        index.train(&few[..DIM + 1]),
        Err(IndexError::InvalidArgument(_))
    ));
    let mut nan = random_vectors(&mut rng, 100, DIM, true);
    nan[5] = f32::NAN;
    assert!(matches!(
        index.train(&nan),
        Err(IndexError::InvalidArgument(_))
    ));
    // PQ codebooks need 256 points: FAISS's own error, not an abort.
    let mut pq = VectorIndex::new(DIM, "PQ8np", Metric::L2).unwrap();
    assert!(pq.train(&few).is_err());

    let enough = random_vectors(&mut rng, 400, DIM, true);
    index.train(&enough).unwrap();
    assert!(!index.needs_training());
    // Training again is a no-op.
    index.train(&few).unwrap();

    let mut flat = VectorIndex::new(DIM, "Flat", Metric::L2).unwrap();
    assert!(matches!(
        flat.add(&[1, 2], &few[..DIM]),
        Err(IndexError::InvalidArgument(_))
    ));
    assert!(matches!(
        flat.add(&[-1], &few[..DIM]),
        Err(IndexError::InvalidArgument(_))
    ));
    assert!(matches!(
        flat.add(&[1], &nan[..DIM]),
        Err(IndexError::InvalidArgument(_))
    ));
    flat.add(&[1], &few[..DIM]).unwrap();
    assert!(matches!(
        flat.search(&few[..DIM - 1], 1, &SearchParams::default()),
        Err(IndexError::InvalidArgument(_))
    ));
    assert!(matches!(
        flat.search(&nan[..DIM], 1, &SearchParams::default()),
        Err(IndexError::InvalidArgument(_))
    ));
}

#[test]
fn other_index_types() {
    let mut rng = StdRng::seed_from_u64(9);
    let n = 600;
    let data = random_vectors(&mut rng, n, DIM, true);
    let ids = ids_for(n);
    for factory in [
        "PQ8np",
        "SQ8",
        "PCA16,Flat",
        "PCA16,HNSW16",
        "IVF8_HNSW16,Flat",
    ] {
        let index = build(factory, Metric::L2, &ids, &data);
        let p = SearchParams {
            ef_search: 32,
            nprobe: 4,
        };
        let hits = index.search(&data[..DIM], 5, &p).unwrap();
        assert_eq!(hits.len(), 5, "{factory}");
        assert!(hits.iter().all(|h| ids.contains(&h.0)), "{factory}");
        let loaded = reload(&index);
        assert_eq!(
            loaded.search(&data[..DIM], 5, &p).unwrap(),
            hits,
            "{factory}"
        );
    }
}

#[test]
fn threads_can_be_set() {
    semantic_index::set_threads(2);
    let mut rng = StdRng::seed_from_u64(10);
    let data = random_vectors(&mut rng, 500, DIM, true);
    let ids = ids_for(500);
    let index = build("IVF4,Flat", Metric::L2, &ids, &data);
    assert_eq!(
        index
            .search(
                &data[..DIM],
                1,
                &SearchParams {
                    ef_search: 0,
                    nprobe: 4
                }
            )
            .unwrap()[0]
            .0,
        ids[0]
    );
    semantic_index::set_threads(1);
}

#[test]
fn tid_codec() {
    for (block, offset) in [
        (0, 0),
        (0, 1),
        (1, 0),
        (12345, 291),
        (u32::MAX, u16::MAX),
        (u32::MAX, 0),
        (1 << 31, 7),
    ] {
        let id = tid_to_id(block, offset);
        assert!(id >= 0, "{block},{offset}");
        assert!(id < 1 << 48);
        assert_eq!(id_to_tid(id), (block, offset));
    }
    assert_eq!(tid_to_id(1, 2), 65538);
    assert_eq!(tid_to_id(u32::MAX, u16::MAX), (1i64 << 48) - 1);
    // Ordering of ids follows TID order.
    assert!(tid_to_id(1, u16::MAX) < tid_to_id(2, 0));
}

#[test]
fn best_per_id_merges() {
    let hits = vec![(5, 0.2), (3, 0.9), (5, 0.8), (7, 0.5), (3, 0.1), (9, 0.5)];
    assert_eq!(
        best_per_id(hits.clone(), Metric::InnerProduct, 10),
        vec![(3, 0.9), (5, 0.8), (7, 0.5), (9, 0.5)]
    );
    assert_eq!(
        best_per_id(hits.clone(), Metric::L2, 10),
        vec![(3, 0.1), (5, 0.2), (7, 0.5), (9, 0.5)]
    );
    assert_eq!(
        best_per_id(hits.clone(), Metric::L2, 2),
        vec![(3, 0.1), (5, 0.2)]
    );
    assert_eq!(best_per_id(hits, Metric::L2, 0), vec![]);
    assert_eq!(best_per_id(Vec::new(), Metric::L2, 3), vec![]);
    // NaN never beats a real score.
    let nan = best_per_id(
        vec![(1, f32::NAN), (1, 0.3), (2, 0.5)],
        Metric::InnerProduct,
        5,
    );
    assert_eq!(nan, vec![(2, 0.5), (1, 0.3)]);
}

#[test]
fn distances_of_faiss_hits_equal_the_distances_of_the_vectors() {
    assert_eq!(IndexMetric::Cosine.distance(1.0), 0.0);
    assert_eq!(IndexMetric::Cosine.distance(-1.0), 2.0);
    assert_eq!(IndexMetric::L2.distance(9.0), 3.0);
    // What FAISS scores, turned into the SQL distance, is what `between` computes from the
    // vectors themselves, for each metric.
    let a = [0.6f32, 0.8];
    let b = [1.0f32, 0.0];
    for metric in [IndexMetric::Cosine, IndexMetric::Dot, IndexMetric::L2] {
        let mut index = VectorIndex::new(2, "Flat", metric.faiss_metric()).unwrap();
        index.add(&[42], &b).unwrap();
        let hit = index.search(&a, 1, &SearchParams::default()).unwrap()[0];
        assert_eq!(hit.0, 42);
        let got = metric.distance(hit.1);
        assert!(
            (got - metric.between(&a, &b)).abs() < 1e-6,
            "{metric:?}: {got}"
        );
    }
    assert!((IndexMetric::Cosine.between(&a, &b) - 0.4).abs() < 1e-6);
    let euclid = ((0.6f64 - 1.0).powi(2) + 0.8f64.powi(2)).sqrt();
    assert!((IndexMetric::L2.between(&a, &b) - euclid).abs() < 1e-6);
}

/// A build that fills an index while it scans (vectors handed over in batches, then linked
/// in one call) makes the very index that adding them all at once makes; kinds that cannot
/// be filled say so.
#[test]
fn filling_while_scanning_equals_adding_at_once() {
    let mut rng = StdRng::seed_from_u64(21);
    let n = 1500;
    let data = clustered_vectors(&mut rng, n, 10, 0.3);
    let ids = ids_for(n);
    for (factory, metric) in [
        ("HNSW16", Metric::L2),
        ("HNSW16", Metric::InnerProduct),
        ("HNSW8", Metric::L1),
        ("Flat", Metric::L2),
    ] {
        let added = build(factory, metric, &ids, &data);
        let mut filled = VectorIndex::new(DIM, factory, metric).unwrap();
        assert!(filled.begin_filling(1000).unwrap(), "{factory}");
        for (chunk_ids, chunk) in ids.chunks(400).zip(data.chunks(400 * DIM)) {
            filled.fill(chunk_ids, chunk).unwrap();
        }
        filled.link_filled().unwrap();
        assert_eq!(filled.len(), n);
        assert_eq!(
            encode_snapshot(&filled, &[], &KEY).unwrap(),
            encode_snapshot(&added, &[], &KEY).unwrap(),
            "{factory} {metric:?}"
        );
    }
    let mut ivf = VectorIndex::new(DIM, "IVF4,Flat", Metric::L2).unwrap();
    assert!(!ivf.begin_filling(10).unwrap());
    let mut sq = VectorIndex::new(DIM, "HNSW16_SQ8", Metric::L2).unwrap();
    assert!(!sq.begin_filling(10).unwrap());
    assert!(matches!(
        VectorIndex::new(DIM, "HNSW16", Metric::L2)
            .unwrap()
            .fill(&ids[..1], &[f32::NAN; DIM]),
        Err(IndexError::InvalidArgument(_))
    ));
}

/// A Flat or HNSW-over-Flat snapshot's vectors are found where they lie (FAISS's flat codes
/// end its serialisation), as the pages keep them apart; an IVF snapshot has no such range.
#[test]
fn flat_vectors_are_found_in_snapshots() {
    let mut rng = StdRng::seed_from_u64(5);
    let (n, dim) = (300, 12);
    let data: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>()).collect();
    let ids: Vec<i64> = (0..n as i64).map(|i| i * 3 + 1).collect();
    for factory in ["Flat", "HNSW16", "IVF4,Flat"] {
        let mut index = VectorIndex::new(dim, factory, Metric::L2).unwrap();
        if index.needs_training() {
            index.train(&data).unwrap();
        }
        index.add(&ids, &data).unwrap();
        let bytes = encode_snapshot(&index, &[], &KEY).unwrap();
        let range =
            semantic_index::snapshot::flat_vectors_range(bytes.len() as u64, dim, |at, buf| {
                buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
                Ok(())
            });
        if factory.starts_with("IVF") {
            assert_eq!(range, None, "{factory}");
            continue;
        }
        let (at, len) = range.unwrap_or_else(|| panic!("{factory}: no vectors found"));
        let expected: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(len as usize, expected.len(), "{factory}");
        assert!(
            bytes[at as usize..(at + len) as usize] == expected[..],
            "{factory}: the range holds other bytes"
        );
    }
}
