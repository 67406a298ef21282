//! pgvector's index options, as FAISS factory strings: a pgvector index's `WITH (m = 16,
//! ef_construction = 64)` or `WITH (lists = 100)` creates the faiss index that does the same
//! (HNSW16, IVF100,Flat), so that a migration's CREATE INDEX works unchanged.

/// pgvector's bounds: HNSW `m` 2-100, IVFFlat `lists` 1-32768 (`ef_construction`, 4-1000, is
/// this crate's own option already).
pub const M_RANGE: std::ops::RangeInclusive<u32> = 2..=100;
pub const LISTS_RANGE: std::ops::RangeInclusive<u32> = 1..=32768;

/// The factory string of an index given `factory` and pgvector's `m` and `lists` (None: not
/// given), or what is wrong with them, as pgvector says it where pgvector has the rule.
pub fn resolve_factory(
    factory: Option<&str>,
    m: Option<u32>,
    lists: Option<u32>,
    ef_construction: u32,
) -> Result<String, String> {
    // The number a factory string gives right after `prefix` at its start.
    let leading = |f: &str, prefix: &str| -> Option<u32> {
        let digits: String = f
            .strip_prefix(prefix)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    match (m, lists) {
        (Some(_), Some(_)) => Err(
            "options \"m\" (HNSW) and \"lists\" (IVFFlat) describe different indexes: give one of them"
                .into(),
        ),
        (Some(m), None) => {
            if ef_construction < 2 * m {
                return Err("ef_construction must be greater than or equal to 2 * m".into());
            }
            match factory {
                None => Ok(format!("HNSW{m}")),
                Some(f) if leading(f, "HNSW") == Some(m) => Ok(f.to_string()),
                Some(f) => Err(format!(
                    "faiss option \"factory\" (\"{f}\") contradicts \"m\" ({m}): leave one out, or \
                     give a factory that starts with HNSW{m}"
                )),
            }
        }
        (None, Some(lists)) => match factory {
            None => Ok(format!("IVF{lists},Flat")),
            Some(f) if leading(f, "IVF") == Some(lists) => Ok(f.to_string()),
            Some(f) => Err(format!(
                "faiss option \"factory\" (\"{f}\") contradicts \"lists\" ({lists}): leave one \
                 out, or give a factory that starts with IVF{lists}"
            )),
        },
        (None, None) => Ok(factory.unwrap_or("Flat").to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_factory;

    #[test]
    fn pgvector_options_become_factories() {
        assert_eq!(resolve_factory(None, None, None, 64).unwrap(), "Flat");
        assert_eq!(
            resolve_factory(Some("HNSW32"), None, None, 64).unwrap(),
            "HNSW32"
        );
        assert_eq!(resolve_factory(None, Some(16), None, 64).unwrap(), "HNSW16");
        assert_eq!(
            resolve_factory(Some("HNSW16"), Some(16), None, 64).unwrap(),
            "HNSW16"
        );
        assert_eq!(
            resolve_factory(Some("HNSW16_SQ8"), Some(16), None, 64).unwrap(),
            "HNSW16_SQ8"
        );
        assert_eq!(
            resolve_factory(None, None, Some(100), 64).unwrap(),
            "IVF100,Flat"
        );
        assert_eq!(
            resolve_factory(Some("IVF100,PQ16"), None, Some(100), 64).unwrap(),
            "IVF100,PQ16"
        );
        // Contradictions, pgvector's rule on ef_construction, and both kinds at once.
        for (factory, m, lists, ef, error) in [
            (Some("HNSW32"), Some(16), None, 64, "contradicts \"m\" (16)"),
            (
                Some("HNSW160"),
                Some(16),
                None,
                64,
                "contradicts \"m\" (16)",
            ),
            (Some("Flat"), Some(16), None, 64, "starts with HNSW16"),
            (
                Some("IVF10,Flat"),
                None,
                Some(100),
                64,
                "contradicts \"lists\" (100)",
            ),
            (
                Some("IVF1000,Flat"),
                None,
                Some(100),
                64,
                "contradicts \"lists\" (100)",
            ),
            (
                None,
                Some(40),
                None,
                64,
                "ef_construction must be greater than or equal to 2 * m",
            ),
            (None, Some(16), Some(100), 64, "give one of them"),
        ] {
            let got = resolve_factory(factory, m, lists, ef).unwrap_err();
            assert!(got.contains(error), "{factory:?} {m:?} {lists:?}: {got}");
        }
        assert_eq!(resolve_factory(None, Some(40), None, 80).unwrap(), "HNSW40");
    }
}
