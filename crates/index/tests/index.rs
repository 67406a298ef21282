//! Behaviour of `VectorIndex` against brute force, plus (de)serialisation,
//! removal and error handling.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use semantic_index::{
    best_per_id, id_to_tid, tid_to_id, to_distance, IndexError, Metric, SearchParams, VectorIndex,
};

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
        Metric::L2 => a.1.total_cmp(&b.1),
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
    let fresh = VectorIndex::from_bytes(&index.to_bytes().unwrap()).unwrap();
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
        let mut index = VectorIndex::from_bytes(&index.to_bytes().unwrap()).unwrap();
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
    let bytes = index.to_bytes().unwrap();
    let mut loaded = VectorIndex::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.len(), index.len());
    assert_eq!(loaded.dim(), DIM);
    assert_eq!(loaded.metric(), metric);
    assert_eq!(loaded.needs_training(), index.needs_training());
    assert_eq!(loaded.supports_remove(), index.supports_remove());
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
    assert_eq!(loaded.to_bytes().unwrap(), bytes);
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
    let loaded = VectorIndex::from_bytes(&index.to_bytes().unwrap()).unwrap();
    assert!(loaded.needs_training());
    assert!(loaded.is_empty());
    let index = VectorIndex::new(DIM, "HNSW32", Metric::L2).unwrap();
    let loaded = VectorIndex::from_bytes(&index.to_bytes().unwrap()).unwrap();
    assert!(loaded.is_empty());
    assert_eq!(
        loaded
            .search(&[0.0; DIM], 5, &SearchParams::default())
            .unwrap(),
        vec![]
    );
}

/// zlib CRC-32, to build well-framed but corrupt payloads.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn reframe(payload: &[u8]) -> Vec<u8> {
    let mut out = b"SEMFAISS".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn corrupt_bytes_are_errors() {
    let mut rng = StdRng::seed_from_u64(6);
    let n = 300;
    let data = random_vectors(&mut rng, n, DIM, true);
    let ids = ids_for(n);
    for factory in ["Flat", "HNSW16", "IVF4,Flat"] {
        let bytes = build(factory, Metric::L2, &ids, &data).to_bytes().unwrap();
        assert_eq!(&bytes[..8], b"SEMFAISS");
        // Our own framing must be intact and re-framing must be a no-op.
        assert_eq!(reframe(&bytes[24..]), bytes);
        let is_corrupt =
            |b: &[u8]| matches!(VectorIndex::from_bytes(b), Err(IndexError::Corrupt(_)));
        assert!(is_corrupt(&[]));
        assert!(is_corrupt(&bytes[..10]));
        assert!(is_corrupt(&bytes[..24]));
        assert!(is_corrupt(&bytes[..bytes.len() - 1]));
        assert!(is_corrupt(&bytes[..bytes.len() / 2]));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(is_corrupt(&longer));
        for pos in [0, 9, 13, 17, 24, 30, bytes.len() / 2, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[pos] ^= 0x40;
            assert!(is_corrupt(&flipped), "{factory}: flip at {pos} accepted");
        }
        let garbage: Vec<u8> = (0..bytes.len()).map(|_| rng.random()).collect();
        assert!(is_corrupt(&garbage));

        // Well framed, but the FAISS payload itself is truncated or garbage:
        // FAISS must report an error, not abort.
        let payload = &bytes[24..];
        for cut in [
            1,
            4,
            16,
            50,
            payload.len() / 3,
            payload.len() - 8,
            payload.len() - 1,
        ] {
            assert!(
                is_corrupt(&reframe(&payload[..cut])),
                "{factory}: cut at {cut} accepted"
            );
        }
        assert!(is_corrupt(&reframe(b"definitely not a faiss index")));
        let random_payload: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
        assert!(is_corrupt(&reframe(&random_payload)));
    }
    // A bare (un-mapped) FAISS index is not ours.
    let mut wrong_version = build("Flat", Metric::L2, &ids, &data).to_bytes().unwrap();
    wrong_version[8] = 2;
    assert!(
        matches!(VectorIndex::from_bytes(&wrong_version), Err(IndexError::Corrupt(m)) if m.contains("version"))
    );
}

fn removal(factory: &str, metric: Metric) {
    let mut rng = StdRng::seed_from_u64(7);
    let n = 2000;
    let data = clustered_vectors(&mut rng, n, 20, 0.3);
    let ids = ids_for(n);
    let mut index = build(factory, metric, &ids, &data);
    assert!(index.supports_remove(), "{factory}");
    let removed: Vec<i64> = ids.iter().copied().step_by(3).collect();
    assert_eq!(index.remove(&removed).unwrap(), removed.len());
    assert_eq!(index.len(), n - removed.len());
    // Unknown ids and repeats remove nothing.
    assert_eq!(index.remove(&removed[..10]).unwrap(), 0);
    assert_eq!(index.remove(&[]).unwrap(), 0);
    let all = SearchParams {
        ef_search: 0,
        nprobe: 64,
    };
    let kept_ids: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !removed.contains(id))
        .collect();
    let kept_data: Vec<f32> = data
        .chunks_exact(DIM)
        .zip(&ids)
        .filter(|(_, id)| !removed.contains(id))
        .flat_map(|(v, _)| v.iter().copied())
        .collect();
    for (i, q) in data.chunks_exact(DIM).enumerate().step_by(7) {
        let got = index.search(q, 20, &all).unwrap();
        assert_eq!(got.len(), 20);
        assert!(
            got.iter().all(|h| !removed.contains(&h.0)),
            "{factory}: removed id returned"
        );
        // Exact indexes (Flat, IVF with every list probed) still match brute force.
        let want = brute_force(metric, &kept_ids, &kept_data, DIM, q, 20);
        assert_eq!(
            got.iter().map(|h| h.0).collect::<Vec<_>>(),
            want.iter().map(|h| h.0).collect::<Vec<_>>(),
            "{factory}: query {i}"
        );
    }
    // Removal survives a round trip, and removed ids can be re-added.
    let mut loaded = VectorIndex::from_bytes(&index.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded.len(), n - removed.len());
    loaded.add(&removed[..1], &data[..DIM]).unwrap();
    assert_eq!(
        loaded.search(&data[..DIM], 1, &all).unwrap()[0].0,
        removed[0]
    );
}

#[test]
fn remove_flat() {
    removal("Flat", Metric::InnerProduct);
}

#[test]
fn remove_ivf() {
    removal("IVF16,Flat", Metric::L2);
}

#[test]
fn hnsw_cannot_remove() {
    let mut index = VectorIndex::new(DIM, "HNSW32", Metric::InnerProduct).unwrap();
    assert!(!index.supports_remove());
    index.add(&[1, 2], &[0.5; 2 * DIM]).unwrap();
    assert_eq!(index.remove(&[1]), Err(IndexError::RemoveNotSupported));
    assert_eq!(index.len(), 2);
    let loaded = VectorIndex::from_bytes(&index.to_bytes().unwrap()).unwrap();
    assert!(!loaded.supports_remove());
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
    for (factory, removable) in [
        ("PQ8np", true),
        ("SQ8", true),
        ("PCA16,Flat", true),
        ("PCA16,HNSW16", false),
        ("IVF8_HNSW16,Flat", true),
    ] {
        let mut index = build(factory, Metric::L2, &ids, &data);
        assert_eq!(index.supports_remove(), removable, "{factory}");
        let p = SearchParams {
            ef_search: 32,
            nprobe: 4,
        };
        let hits = index.search(&data[..DIM], 5, &p).unwrap();
        assert_eq!(hits.len(), 5, "{factory}");
        assert!(hits.iter().all(|h| ids.contains(&h.0)), "{factory}");
        let loaded = VectorIndex::from_bytes(&index.to_bytes().unwrap()).unwrap();
        assert_eq!(
            loaded.search(&data[..DIM], 5, &p).unwrap(),
            hits,
            "{factory}"
        );
        if removable {
            assert_eq!(index.remove(&ids[..10]).unwrap(), 10, "{factory}");
            let hits = index.search(&data[..DIM], 5, &p).unwrap();
            assert!(hits.iter().all(|h| !ids[..10].contains(&h.0)), "{factory}");
        }
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
fn distances() {
    assert_eq!(to_distance(1.0, Metric::InnerProduct), 0.0);
    assert_eq!(to_distance(0.0, Metric::InnerProduct), 1.0);
    assert_eq!(to_distance(-1.0, Metric::InnerProduct), 2.0);
    assert_eq!(to_distance(9.0, Metric::L2), 3.0);
    assert_eq!(to_distance(-1e-7, Metric::L2), 0.0);
    // Cosine distance of normalised vectors via the IP index.
    let a = [0.6f32, 0.8];
    let b = [1.0f32, 0.0];
    let mut index = VectorIndex::new(2, "Flat", Metric::InnerProduct).unwrap();
    index.add(&[42], &b).unwrap();
    let hit = index.search(&a, 1, &SearchParams::default()).unwrap()[0];
    assert_eq!(hit.0, 42);
    assert!((to_distance(hit.1, Metric::InnerProduct) - 0.4).abs() < 1e-6);
    let mut index = VectorIndex::new(2, "Flat", Metric::L2).unwrap();
    index.add(&[42], &b).unwrap();
    let hit = index.search(&a, 1, &SearchParams::default()).unwrap()[0];
    let euclid = ((0.6f32 - 1.0).powi(2) + 0.8f32.powi(2)).sqrt();
    assert!((to_distance(hit.1, Metric::L2) - euclid).abs() < 1e-6);
}
