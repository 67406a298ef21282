use semantic_index::records::decode_records_into;
use semantic_index::{decode_records, encode_record, record_size};

#[test]
fn record_round_trip() {
    let dim = 5;
    let rows: Vec<(u32, u16, Vec<f32>)> = vec![
        (0, 1, vec![0.0, -0.0, 1.5, f32::MIN_POSITIVE, -3.25]),
        (
            u32::MAX,
            u16::MAX,
            vec![f32::MAX, f32::MIN, 1e-30, 7.0, f32::EPSILON],
        ),
        (123_456, 42, vec![0.1, 0.2, 0.3, 0.4, 0.5]),
    ];
    // Start at an odd offset so the f32s are unaligned.
    let mut buf = vec![0xAAu8];
    for (b, o, v) in &rows {
        encode_record(*b, *o, v, &mut buf);
    }
    assert_eq!(record_size(dim), 8 + 4 * dim);
    assert_eq!(buf.len(), 1 + rows.len() * record_size(dim));
    let bytes = &buf[1..];
    // Layout: TID little-endian, flags zero.
    assert_eq!(
        &bytes[record_size(dim)..][..8],
        &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]
    );
    let decoded: Vec<_> = decode_records(bytes, dim).collect();
    assert_eq!(decoded.len(), rows.len());
    for (d, r) in decoded.iter().zip(&rows) {
        assert_eq!(d.0, r.0);
        assert_eq!(d.1, r.1);
        assert_eq!(
            d.2.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            r.2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
    // A trailing partial record is ignored.
    let mut partial = bytes.to_vec();
    partial.extend_from_slice(&[1, 2, 3]);
    assert_eq!(decode_records(&partial, dim).count(), rows.len());

    let mut tids = Vec::new();
    let mut vectors = Vec::new();
    assert_eq!(decode_records_into(bytes, dim, &mut tids, &mut vectors), 3);
    assert_eq!(tids, vec![(0, 1), (u32::MAX, u16::MAX), (123_456, 42)]);
    assert_eq!(vectors.len(), 3 * dim);
    assert_eq!(vectors[2 * dim..], rows[2].2[..]);

    assert_eq!(decode_records(&[], dim).count(), 0);
    // Zero-dimensional records are just TIDs.
    let mut b = Vec::new();
    encode_record(9, 8, &[], &mut b);
    assert_eq!(
        decode_records(&b, 0).collect::<Vec<_>>(),
        vec![(9, 8, vec![])]
    );
}
