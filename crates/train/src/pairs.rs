use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// One training example: a query, the text it should retrieve, and optionally a hard negative
/// (a text it should rank below the positive) with a teacher's margin between the two.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Pair {
    pub query: String,
    /// `passage` is accepted as well, for files that name the retrieved side that way.
    #[serde(alias = "passage")]
    pub positive: String,
    #[serde(default)]
    pub negative: Option<String>,
    /// A teacher's score of the positive minus its score of the negative, for MarginMSE.
    #[serde(default)]
    pub margin: Option<f32>,
}

impl Pair {
    /// The pair's texts: query, positive and the negative if there is one.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.query.as_str()),
            Some(self.positive.as_str()),
            self.negative.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// Reads pairs from a JSONL file (one object per line with `query`, `positive` or `passage`,
/// and optional `negative` and `margin`; other fields are ignored; blank lines are skipped).
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut pairs = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let pair: Pair = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a pair", path.display(), number + 1))?;
        pairs.push(pair);
    }
    if pairs.is_empty() {
        bail!("{} holds no pairs", path.display());
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jsonl_with_aliases_and_optional_negative() {
        let path =
            std::env::temp_dir().join(format!("semantic-pairs-{}.jsonl", std::process::id()));
        std::fs::write(
            &path,
            concat!(
                r#"{"query": "q1", "positive": "p1", "doc_id": 7}"#,
                "\n\n",
                r#"{"query": "q2", "passage": "p2", "negative": "n2", "margin": 0.25}"#,
                "\n"
            ),
        )
        .unwrap();
        let pairs = read_pairs(&path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].texts().collect::<Vec<_>>(), ["q1", "p1"]);
        assert_eq!(pairs[1].texts().collect::<Vec<_>>(), ["q2", "p2", "n2"]);
        assert_eq!((pairs[0].margin, pairs[1].margin), (None, Some(0.25)));

        std::fs::write(&path, "{\"query\": \"q\"}\n").unwrap();
        let error = format!("{:#}", read_pairs(&path).unwrap_err());
        assert!(error.contains("line 1"), "{error}");
        std::fs::remove_file(&path).unwrap();
    }
}
