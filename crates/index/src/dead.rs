//! Snapshot positions whose rows VACUUM found dead: one bit per position, the layout FAISS's
//! IDSelectorBitmap reads, so that a search skips them inside FAISS and still returns k live
//! vectors.

/// A set of snapshot positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadPositions {
    bits: Vec<u8>,
    count: usize,
}

impl DeadPositions {
    /// The set of `positions` among a snapshot of `len` vectors (positions beyond it, which a
    /// damaged marks chain could hold, are ignored: they name no vector).
    pub fn new(len: usize, positions: impl IntoIterator<Item = u32>) -> Self {
        let mut set = DeadPositions {
            bits: vec![0; len.div_ceil(8)],
            count: 0,
        };
        for p in positions {
            set.insert(p as usize);
        }
        set
    }

    /// Adds `position`; false if it was there already or lies beyond the snapshot.
    pub fn insert(&mut self, position: usize) -> bool {
        let Some(byte) = self.bits.get_mut(position / 8) else {
            return false;
        };
        let bit = 1u8 << (position % 8);
        if *byte & bit != 0 {
            return false;
        }
        *byte |= bit;
        self.count += 1;
        true
    }

    pub fn contains(&self, position: usize) -> bool {
        self.bits
            .get(position / 8)
            .is_some_and(|b| b & (1 << (position % 8)) != 0)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(crate) fn bitmap(&self) -> &[u8] {
        &self.bits
    }
}
