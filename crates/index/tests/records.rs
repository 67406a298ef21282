use semantic_index::records::{decode_records_into, text_hash, RecordKey};
use semantic_index::{decode_records, encode_record, record_size};

#[test]
fn record_round_trip() {
    let dim = 5;
    let rows: Vec<(RecordKey, Vec<f32>)> = vec![
        (
            RecordKey {
                block: 0,
                offset: 1,
                text_hash: 0,
            },
            vec![0.0, -0.0, 1.5, f32::MIN_POSITIVE, -3.25],
        ),
        (
            RecordKey {
                block: u32::MAX,
                offset: u16::MAX,
                text_hash: u64::MAX,
            },
            vec![f32::MAX, f32::MIN, 1e-30, 7.0, f32::EPSILON],
        ),
        (
            RecordKey {
                block: 123_456,
                offset: 42,
                text_hash: text_hash("a plot"),
            },
            vec![0.1, 0.2, 0.3, 0.4, 0.5],
        ),
    ];
    // Start at an odd offset so the f32s are unaligned.
    let mut buf = vec![0xAAu8];
    for (key, v) in &rows {
        encode_record(key, v, &mut buf);
    }
    assert_eq!(record_size(dim), 16 + 4 * dim);
    assert_eq!(buf.len(), 1 + rows.len() * record_size(dim));
    let bytes = &buf[1..];
    // Layout: TID little-endian, flags zero, then the hash.
    assert_eq!(
        &bytes[record_size(dim)..][..16],
        &[0xFF; 6]
            .iter()
            .chain(&[0, 0])
            .chain(&[0xFF; 8])
            .copied()
            .collect::<Vec<u8>>()[..]
    );
    let decoded: Vec<_> = decode_records(bytes, dim).collect();
    assert_eq!(decoded.len(), rows.len());
    for (d, r) in decoded.iter().zip(&rows) {
        assert_eq!(d.0, r.0);
        assert_eq!(
            d.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            r.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
    // A trailing partial record is ignored.
    let mut partial = bytes.to_vec();
    partial.extend_from_slice(&[1, 2, 3]);
    assert_eq!(decode_records(&partial, dim).count(), rows.len());

    let mut keys = Vec::new();
    let mut vectors = Vec::new();
    assert_eq!(decode_records_into(bytes, dim, &mut keys, &mut vectors), 3);
    assert_eq!(keys, rows.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!(vectors.len(), 3 * dim);
    assert_eq!(vectors[2 * dim..], rows[2].1[..]);
    assert_eq!(decode_records(&[], dim).count(), 0);
}

#[test]
fn text_hash_is_stable() {
    // The hash is stored on disk: it must never change between builds.
    assert_eq!(text_hash(""), 0x2d06800538d394c2);
    assert_ne!(text_hash("a"), text_hash("b"));
}
