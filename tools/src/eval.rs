//! `semantic-tools eval`: retrieval quality of the faiss index on a BEIR data set, measured
//! through SQL exactly as an application searches: the corpus goes into a table, a faiss index
//! is built per model, every judged query runs through `semantic_search`, and the rankings are
//! scored with trec_eval's definitions (crate semantic-eval).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use postgres::Client;
use semantic_encoder::validate_model_name;
use semantic_eval::{evaluate, BeirDataset, Metrics};

use crate::reload::{connect, quote_ident, quote_literal, run_index_build};

/// Rows retrieved per query: the depth Recall@100 needs.
const DEPTH: i32 = 100;
/// Rows per INSERT while loading the corpus.
const INSERT_CHUNK: usize = 1000;

#[derive(Args)]
pub struct EvalArgs {
    /// A BEIR data set folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.
    #[arg(long)]
    beir: PathBuf,
    /// Connection string, e.g. 'host=127.0.0.1 port=5432 user=postgres dbname=app'.
    #[arg(long)]
    db: String,
    /// Model to evaluate (default: the server's semantic.default_model).
    #[arg(long)]
    model: Option<String>,
    /// A second model, evaluated on the same table side by side.
    #[arg(long)]
    model_b: Option<String>,
    /// Which qrels file judges the queries.
    #[arg(long, default_value = "test")]
    split: String,
    /// Table the corpus is loaded into, replaced if it exists, kept afterwards with its
    /// indexes (<table>_<model>). Default: beir_<folder name>.
    #[arg(long)]
    table: Option<String>,
}

/// Lower-case letters, digits and '_' only, so generated names need no thought.
fn plain_identifier(name: &str) -> String {
    name.to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// PostgreSQL truncates identifiers to 63 bytes; truncate first so the name we use is the
/// name it gets.
fn index_name(table: &str, model: &str) -> String {
    let mut name = format!("{table}_{}", plain_identifier(model));
    name.truncate(63);
    name
}

fn load_corpus(client: &mut Client, table: &str, data: &BeirDataset) -> Result<()> {
    let table = quote_ident(table);
    client.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (doc_id text PRIMARY KEY, body text NOT NULL)"
    ))?;
    let insert = client.prepare(&format!(
        "INSERT INTO {table} (doc_id, body) SELECT * FROM unnest($1::text[], $2::text[])"
    ))?;
    for chunk in data.corpus.chunks(INSERT_CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|d| d.id.as_str()).collect();
        let bodies: Vec<String> = chunk.iter().map(|d| d.body()).collect();
        client.execute(&insert, &[&ids, &bodies])?;
    }
    client.batch_execute(&format!("ANALYZE {table}"))?;
    Ok(())
}

/// One model's figures.
struct ModelResult {
    model: String,
    metrics: Metrics,
    build_seconds: f64,
    queries_per_second: f64,
}

fn evaluate_model(
    client: &mut Client,
    db: &str,
    table: &str,
    model: &str,
    data: &BeirDataset,
) -> Result<ModelResult> {
    let index = index_name(table, model);
    eprintln!(
        "indexing {} documents with {model} ({index})",
        data.corpus.len()
    );
    let started = Instant::now();
    run_index_build(
        client,
        db,
        &format!(
            "CREATE INDEX {} ON {} USING faiss (body) WITH (model = {})",
            quote_ident(&index),
            quote_ident(table),
            quote_literal(model)
        ),
    )?;
    let build_seconds = started.elapsed().as_secs_f64();

    let search = client.prepare(
        "SELECT \"row\"->>'doc_id' FROM semantic_search($1, $2, $3::text) ORDER BY rank",
    )?;
    let bar = ProgressBar::new(data.queries.len() as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} queries")?
            .progress_chars("=> "),
    );
    let index = quote_ident(&index);
    let started = Instant::now();
    let mut run = BTreeMap::new();
    for (id, text) in &data.queries {
        let ranking: Vec<String> = client
            .query(&search, &[text, &DEPTH, &index])
            .with_context(|| format!("query {id} failed"))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        run.insert(id.clone(), ranking);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let queries_per_second = data.queries.len() as f64 / started.elapsed().as_secs_f64();
    Ok(ModelResult {
        model: model.to_string(),
        metrics: evaluate(&data.qrels, &run),
        build_seconds,
        queries_per_second,
    })
}

pub fn run(args: EvalArgs) -> Result<()> {
    let data = BeirDataset::load(&args.beir, &args.split)?;
    if data.queries.is_empty() {
        bail!(
            "no judged queries in {} ({} split)",
            args.beir.display(),
            args.split
        );
    }
    let table = match &args.table {
        Some(table) => table.clone(),
        None => {
            let folder = args.beir.canonicalize()?;
            let folder = folder.file_name().context("the BEIR folder has no name")?;
            format!("beir_{}", plain_identifier(&folder.to_string_lossy()))
        }
    };
    let mut client = connect(&args.db)?;
    client.batch_execute("CREATE EXTENSION IF NOT EXISTS semantic")?;
    let model = match args.model {
        Some(model) => model,
        None => {
            // The extension's settings exist once its library is loaded, which calling one of
            // its functions does.
            client.query_one("SELECT count(*) FROM semantic_models()", &[])?;
            client
                .query_one("SELECT current_setting('semantic.default_model')", &[])?
                .get(0)
        }
    };
    let mut models = vec![model];
    models.extend(args.model_b);
    for model in &models {
        validate_model_name(model)?;
    }
    if models.len() == 2 && models[0] == models[1] {
        bail!("--model and --model-b are the same model");
    }

    eprintln!(
        "loading {} documents into {table}; {} judged queries ({} split)",
        data.corpus.len(),
        data.queries.len(),
        args.split
    );
    load_corpus(&mut client, &table, &data)?;
    let results = models
        .iter()
        .map(|model| evaluate_model(&mut client, &args.db, &table, model, &data))
        .collect::<Result<Vec<_>>>()?;

    let width = results
        .iter()
        .map(|r| r.model.len())
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:<width$}  {:>8}  {:>10}  {:>8}  {:>8}  {:>9}",
        "model", "nDCG@10", "Recall@100", "MRR@10", "build_s", "queries/s"
    );
    for r in &results {
        println!(
            "{:<width$}  {:>8.4}  {:>10.4}  {:>8.4}  {:>8.1}  {:>9.1}",
            r.model,
            r.metrics.ndcg_at_10,
            r.metrics.recall_at_100,
            r.metrics.mrr_at_10,
            r.build_seconds,
            r.queries_per_second
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_plain_and_fit_postgres() {
        assert_eq!(plain_identifier("SciFact-v1.0"), "scifact_v1_0");
        assert_eq!(
            index_name("beir_scifact", "all-MiniLM-L6-v2"),
            "beir_scifact_all_minilm_l6_v2"
        );
        assert_eq!(index_name(&"t".repeat(60), "model").len(), 63);
    }
}
