//! Size tiers for segments (Lucene's tiered merge policy, reduced to what a fold needs): each
//! fold writes what it folds as a new segment, and merges it with the newest segments of its
//! size tier once the tier holds [`SEGMENTS_PER_TIER`] of them, so that what a segment holds is
//! written again about once per tier (log of the index's size over the fold's) rather than at
//! every fold. bm25 segments (documents) and faiss vector segments (vectors) use it alike.

/// Segments of one size tier that a fold lets stand before merging them into one.
pub const SEGMENTS_PER_TIER: usize = 8;

/// The tier of a segment of `documents`: 0 below `floor` x [`SEGMENTS_PER_TIER`], then one
/// more for each further factor of [`SEGMENTS_PER_TIER`].
fn tier(documents: u64, floor: u64) -> u32 {
    let per_tier = SEGMENTS_PER_TIER as u64;
    let mut cap = floor.max(1).saturating_mul(per_tier);
    let mut tier = 0;
    while documents >= cap && cap < u64::MAX {
        tier += 1;
        cap = cap.saturating_mul(per_tier);
    }
    tier
}

/// How many of the newest `kept` segments (sizes, oldest first) a fold of `folded` rows merges
/// into its new segment, for folds of about `floor` rows: the trailing run of segments in the
/// new segment's tier or below, once it and the new one make [`SEGMENTS_PER_TIER`]; again with
/// the merged size, as a merge may fill the next tier.
pub fn segments_to_merge(kept: &[u64], folded: u64, floor: u64) -> usize {
    let (mut merged, mut size) = (0, folded);
    loop {
        let rest = &kept[..kept.len() - merged];
        let t = tier(size, floor);
        let run = rest
            .iter()
            .rev()
            .take_while(|&&s| tier(s, floor) <= t)
            .count();
        if run + 1 < SEGMENTS_PER_TIER {
            return merged;
        }
        size += rest[rest.len() - run..].iter().sum::<u64>();
        merged += run;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folds of `floor` rows each, as the extension runs them: the segments stay few (at most
    /// SEGMENTS_PER_TIER - 1 a tier) and each row is rewritten about once per tier.
    #[test]
    fn folds_merge_by_tiers() {
        let floor = 1000;
        let mut segments: Vec<u64> = vec![100_000];
        let mut written = 0u64;
        let folds = 2000;
        let mut most = 0;
        for _ in 0..folds {
            let n = segments_to_merge(&segments, floor, floor);
            let merged: u64 = segments.drain(segments.len() - n..).sum::<u64>() + floor;
            written += merged;
            segments.push(merged);
            most = most.max(segments.len());
            assert!(segments.len() < 4 * SEGMENTS_PER_TIER, "{segments:?}");
            // Never SEGMENTS_PER_TIER segments of one tier.
            for t in 0..8 {
                let count = segments.iter().filter(|&&s| tier(s, floor) == t).count();
                assert!(count < SEGMENTS_PER_TIER, "tier {t}: {segments:?}");
            }
        }
        let total: u64 = segments.iter().sum();
        assert_eq!(total, 100_000 + folds * floor);
        // 2,000,000 rows folded (tiers end at 8k, 64k, 512k, 4M): each row written a few
        // times, where rewriting the whole snapshot at every fold would write each about
        // 1,000 times on average.
        let amplification = written as f64 / (folds * floor) as f64;
        assert!(amplification < 5.0, "{amplification}");
        assert!(most < 4 * SEGMENTS_PER_TIER, "{most} segments");
    }

    #[test]
    fn small_folds_stand_until_a_tier_fills() {
        assert_eq!(segments_to_merge(&[], 10, 10), 0);
        // Tiers of 10-row folds: below 80, below 640, ...; 80,000 is in tier 4.
        let small = [80_000, 10, 10, 10, 10, 10, 10, 10];
        assert_eq!(segments_to_merge(&small[..7], 10, 10), 0);
        assert_eq!(segments_to_merge(&small, 10, 10), 7);
        // A merge that fills the next tier goes on into it (8 x 80 = 640: tier 2).
        let next = [
            80_000, 80, 80, 80, 80, 80, 80, 80, 10, 10, 10, 10, 10, 10, 10,
        ];
        assert_eq!(segments_to_merge(&next, 10, 10), 14);
    }
}
