//! Lexemes and their frequencies from PostgreSQL's `tsvector` value, as `to_tsvector` makes it.
//! The format (src/include/tsearch/ts_type.h), after the 4-byte varlena header: the number of
//! lexemes (i32), one 32-bit WordEntry per lexeme (bit 0: has positions, bits 1-11: length,
//! bits 12-31: offset into the data area), then the data area: each lexeme's bytes, followed,
//! when it has positions, at the next even offset by their count (u16) and the positions. A
//! lexeme's frequency is its number of positions (PostgreSQL keeps at most 256), or 1 without.

/// The (lexeme, frequency) pairs of a detoasted tsvector datum's bytes (varlena header
/// included), or None when the bytes are not a well-formed tsvector.
pub fn lexemes(datum: &[u8]) -> Option<Vec<(&str, u32)>> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(datum.get(at..at + 4)?.try_into().ok()?))
    };
    let count = u32_at(4)? as usize;
    let data_at = 8usize.checked_add(count.checked_mul(4)?)?;
    if data_at > datum.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let entry = u32_at(8 + 4 * i)?;
        let has_positions = entry & 1 != 0;
        let len = ((entry >> 1) & 0x7ff) as usize;
        let pos = (entry >> 12) as usize;
        let start = data_at.checked_add(pos)?;
        let lexeme = std::str::from_utf8(datum.get(start..start.checked_add(len)?)?).ok()?;
        let tf = if has_positions {
            let at = (start + len).next_multiple_of(2);
            u16::from_ne_bytes(datum.get(at..at + 2)?.try_into().ok()?) as u32
        } else {
            1
        };
        out.push((lexeme, tf.max(1)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of `'cat':1,2 'dog':3` and of a stripped `'sun'`, laid out by hand.
    fn sample() -> Vec<u8> {
        let mut data = Vec::new();
        let mut entries = Vec::new();
        // 'cat' with positions 1, 2
        entries.push(1 | (3 << 1) | ((data.len() as u32) << 12));
        data.extend_from_slice(b"cat");
        data.push(0); // to an even offset
        data.extend_from_slice(&2u16.to_ne_bytes());
        data.extend_from_slice(&1u16.to_ne_bytes());
        data.extend_from_slice(&2u16.to_ne_bytes());
        // 'dog' with position 3
        entries.push(1 | (3 << 1) | ((data.len() as u32) << 12));
        data.extend_from_slice(b"dog");
        data.push(0);
        data.extend_from_slice(&1u16.to_ne_bytes());
        data.extend_from_slice(&3u16.to_ne_bytes());
        // 'sun' without positions
        entries.push((3 << 1) | ((data.len() as u32) << 12));
        data.extend_from_slice(b"sun");
        let mut out = vec![0u8; 4];
        out.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
        for e in entries {
            out.extend_from_slice(&e.to_ne_bytes());
        }
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn reads_lexemes_and_frequencies() {
        assert_eq!(
            lexemes(&sample()),
            Some(vec![("cat", 2), ("dog", 1), ("sun", 1)])
        );
        let empty = [0u8, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(lexemes(&empty), Some(vec![]));
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert_eq!(lexemes(&bytes[..cut]), None, "cut {cut}");
        }
        let mut huge = bytes.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(lexemes(&huge), None);
    }
}
