//! BEIR data sets: `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and
//! `qrels/<split>.tsv` (`query-id  corpus-id  score`, with a header line).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::metrics::Qrels;

/// One corpus document.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
}

impl Document {
    /// The text a retriever sees, exactly as BEIR builds it (`title + " " + text`), so that
    /// scores compare with published figures.
    pub fn body(&self) -> String {
        format!("{} {}", self.title, self.text)
    }
}

/// A corpus, its queries and the judgements of one split; only judged queries are kept.
pub struct BeirDataset {
    pub corpus: Vec<Document>,
    /// (query id, text), in the order of queries.jsonl.
    pub queries: Vec<(String, String)>,
    pub qrels: Qrels,
}

impl BeirDataset {
    pub fn load(dir: &Path, split: &str) -> Result<Self> {
        let corpus = read_corpus(&dir.join("corpus.jsonl"))?;
        let qrels = read_qrels(&dir.join("qrels").join(format!("{split}.tsv")))?;
        let queries: Vec<(String, String)> = read_queries(&dir.join("queries.jsonl"))?
            .into_iter()
            .filter(|(id, _)| qrels.contains_key(id))
            .collect();
        if let Some(missing) = qrels
            .keys()
            .find(|id| !queries.iter().any(|(q, _)| q == *id))
        {
            bail!("query {missing} is judged in the {split} qrels but missing from queries.jsonl");
        }
        Ok(BeirDataset {
            corpus,
            queries,
            qrels,
        })
    }
}

/// Reads a JSON-lines file, one object per non-empty line.
fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Map<String, Value>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON object", path.display(), n + 1))
        })
        .collect()
}

/// A field as a string; ids are strings in BEIR but numbers in some conversions.
fn string_field(object: &serde_json::Map<String, Value>, field: &str) -> Option<String> {
    match object.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `corpus.jsonl`: `_id` and `text` are required, `title` may be missing.
pub fn read_corpus(path: &Path) -> Result<Vec<Document>> {
    read_jsonl(path)?
        .iter()
        .enumerate()
        .map(|(n, object)| {
            let field = |name| {
                string_field(object, name).with_context(|| {
                    format!("{}: document {} has no {name}", path.display(), n + 1)
                })
            };
            Ok(Document {
                id: field("_id")?,
                title: string_field(object, "title").unwrap_or_default(),
                text: field("text")?,
            })
        })
        .collect()
}

/// `queries.jsonl`: (id, text) pairs in file order.
pub fn read_queries(path: &Path) -> Result<Vec<(String, String)>> {
    read_jsonl(path)?
        .iter()
        .enumerate()
        .map(
            |(n, object)| match (string_field(object, "_id"), string_field(object, "text")) {
                (Some(id), Some(text)) => Ok((id, text)),
                _ => bail!("{}: query {} needs _id and text", path.display(), n + 1),
            },
        )
        .collect()
}

/// `qrels/<split>.tsv`: tab-separated query id, document id and integer relevance; a first line
/// that does not end in an integer is the header.
pub fn read_qrels(path: &Path) -> Result<Qrels> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut qrels = Qrels::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        let relevance = fields.get(2).and_then(|s| s.parse::<i32>().ok());
        match (fields.as_slice(), relevance) {
            ([query, doc, _], Some(relevance)) => {
                qrels
                    .entry(query.to_string())
                    .or_default()
                    .insert(doc.to_string(), relevance);
            }
            _ if n == 0 => {} // header
            _ => bail!(
                "{}:{}: expected query-id, corpus-id and an integer score separated by tabs",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(qrels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_beir_folder_and_keeps_judged_queries_only() {
        let dir = std::env::temp_dir().join(format!("semantic-eval-beir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("qrels")).unwrap();
        std::fs::write(
            dir.join("corpus.jsonl"),
            "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"one\"}\n\n{\"_id\": 2, \"text\": \"two\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("queries.jsonl"),
            "{\"_id\": \"q1\", \"text\": \"first\"}\n{\"_id\": \"q2\", \"text\": \"unjudged\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t2\t0\n",
        )
        .unwrap();
        let data = BeirDataset::load(&dir, "test").unwrap();
        assert_eq!(data.corpus.len(), 2);
        assert_eq!(data.corpus[0].body(), "T one");
        assert_eq!(data.corpus[1].id, "2");
        assert_eq!(data.corpus[1].body(), " two");
        assert_eq!(data.queries, vec![("q1".to_string(), "first".to_string())]);
        assert_eq!(data.qrels["q1"]["d1"], 2);
        assert_eq!(data.qrels["q1"]["2"], 0);

        std::fs::write(dir.join("qrels/test.tsv"), "q3\td1\t1\n").unwrap();
        let err = BeirDataset::load(&dir, "test").err().unwrap().to_string();
        assert!(err.contains("q3"), "{err}");
        std::fs::write(dir.join("qrels/test.tsv"), "q1\td1\t1\nq1\td2\n").unwrap();
        assert!(read_qrels(&dir.join("qrels/test.tsv")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
