//! Passages from files: a BEIR corpus.jsonl (`_id`, `title`, `text`) or a CSV with an id, a
//! text and an optional title column. (`semantic-tools genq` reads tables over SQL itself.)

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::Passage;

/// Which CSV (or table) columns hold a passage's parts.
#[derive(Clone, Debug)]
pub struct PassageColumns {
    pub id: String,
    pub text: String,
    pub title: Option<String>,
}

/// Reads `path` by its extension: `.jsonl` as a BEIR corpus, `.csv` with `columns`.
pub fn read_passages(path: &Path, columns: &PassageColumns) -> Result<Vec<Passage>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => Ok(semantic_eval::read_corpus(path)?
            .into_iter()
            .map(|d| Passage {
                id: d.id,
                title: d.title,
                text: d.text,
            })
            .collect()),
        Some("csv") => read_csv(path, columns),
        _ => bail!(
            "{}: expected a .jsonl (BEIR corpus) or .csv file",
            path.display()
        ),
    }
}

fn read_csv(path: &Path, columns: &PassageColumns) -> Result<Vec<Passage>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no column {name}", path.display()))
    };
    let id = column(&columns.id)?;
    let text = column(&columns.text)?;
    let title = columns.title.as_deref().map(column).transpose()?;
    reader
        .records()
        .map(|record| {
            let record = record?;
            let field = |i: usize| record.get(i).unwrap_or_default().to_string();
            Ok(Passage {
                id: field(id),
                title: title.map(field).unwrap_or_default(),
                text: field(text),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_csv_and_beir_jsonl() {
        let dir = std::env::temp_dir().join(format!("semantic-genq-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv_path = dir.join("plots.csv");
        std::fs::write(
            &csv_path,
            "Title,Plot,key\nHeat,\"A heist, then a chase.\",7\n",
        )
        .unwrap();
        let columns = PassageColumns {
            id: "key".into(),
            text: "Plot".into(),
            title: Some("Title".into()),
        };
        let passages = read_passages(&csv_path, &columns).unwrap();
        assert_eq!(
            passages,
            vec![Passage {
                id: "7".into(),
                title: "Heat".into(),
                text: "A heist, then a chase.".into()
            }]
        );
        let missing = PassageColumns {
            title: Some("Year".into()),
            ..columns.clone()
        };
        assert!(read_passages(&csv_path, &missing)
            .unwrap_err()
            .to_string()
            .contains("Year"));

        let jsonl_path = dir.join("corpus.jsonl");
        std::fs::write(
            &jsonl_path,
            "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"Body.\"}\n",
        )
        .unwrap();
        let passages = read_passages(&jsonl_path, &columns).unwrap();
        assert_eq!(passages[0].full_text(), "T Body.");
        assert!(read_passages(&dir.join("x.txt"), &columns).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
