//! `semantic-tools eval`: retrieval quality on a BEIR data set, measured through SQL exactly as
//! an application searches: the corpus goes into a table per model (so that each model's
//! faiss index is the only one on its column), with a bm25 index beside it; every judged query
//! runs through `semantic_search` in lexical, semantic and hybrid mode, and the rankings are
//! scored with trec_eval's definitions (crate semantic-eval). `--results` writes each system's
//! run (TREC format) and per-query figures, so that two runs can be compared.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use postgres::Client;
use semantic_encoder::validate_model_name;
use semantic_eval::{evaluate, ndcg_at, recall_at, reciprocal_rank_at, BeirDataset, Metrics};

/// A system's ranking of each judged query: query id -> (document id, score), best first.
type Run = BTreeMap<String, Vec<(String, f64)>>;

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
    /// Table the corpus is loaded into for --model (and <table>_b for --model-b), replaced if
    /// it exists, kept afterwards with its indexes (<table>_<model>, <table>_bm25). Default:
    /// beir_<folder name>.
    #[arg(long)]
    table: Option<String>,
    /// More storage parameters for each model's faiss index, e.g. "long_text = 'chunks'".
    #[arg(long)]
    index_options: Option<String>,
    /// A folder to write, per system, its run (<system>.run, TREC format: query Q0 document
    /// rank score system) and its per-query figures (<system>.tsv).
    #[arg(long)]
    results: Option<PathBuf>,
    #[command(flatten)]
    fusion: Fusion,
}

/// How the hybrid rows fuse their two sides: semantic_search's own arguments, passed through.
#[derive(Args)]
struct Fusion {
    /// rrf: weight / (rrf_k + rank) per side; convex: the weighted sum of each side's scores,
    /// min-max normalised over its list.
    #[arg(long, default_value = "rrf", value_parser = ["rrf", "convex"])]
    fusion: String,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    semantic_weight: f64,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    lexical_weight: f64,
    #[arg(long, default_value_t = 60, allow_negative_numbers = true)]
    rrf_k: i32,
}

impl Fusion {
    /// Checked before any index is built, so a typo costs no build.
    fn validate(&self) -> Result<()> {
        if !(self.semantic_weight >= 0.0 && self.lexical_weight >= 0.0) || self.rrf_k < 0 {
            bail!("--semantic-weight, --lexical-weight and --rrf-k must be non-negative");
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let weights = format!(
            "semantic weight {}, lexical weight {}",
            self.semantic_weight, self.lexical_weight
        );
        match self.fusion.as_str() {
            "rrf" => format!("reciprocal rank fusion (rrf_k {}), {weights}", self.rrf_k),
            _ => format!("convex fusion of min-max normalised scores, {weights}"),
        }
    }
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

/// One system's figures: a search mode over one table.
struct SystemResult {
    system: String,
    metrics: Metrics,
    build_seconds: f64,
    queries_per_second: f64,
    run: Run,
}

/// Builds `statement`'s index with a progress bar; returns the seconds it took.
fn build(client: &mut Client, db: &str, statement: &str) -> Result<f64> {
    let started = Instant::now();
    run_index_build(client, db, statement)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Runs every judged query through `semantic_search(q, DEPTH, index, mode)` (with `fusion`'s
/// arguments, which only the hybrid mode reads).
fn search_all(
    client: &mut Client,
    data: &BeirDataset,
    index: &str,
    mode: &str,
    fusion: &Fusion,
) -> Result<(Run, f64)> {
    let search = client.prepare(
        "SELECT \"row\"->>'doc_id', score FROM semantic_search($1, $2, $3::text, mode => $4, \
         fusion => $5, semantic_weight => $6, lexical_weight => $7, rrf_k => $8) ORDER BY rank",
    )?;
    let bar = ProgressBar::new(data.queries.len() as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} queries, {msg}")?
            .progress_chars("=> "),
    );
    bar.set_message(mode.to_string());
    let index = quote_ident(index);
    let started = Instant::now();
    let mut run = BTreeMap::new();
    for (id, text) in &data.queries {
        let ranking: Vec<(String, f64)> = client
            .query(
                &search,
                &[
                    text,
                    &DEPTH,
                    &index,
                    &mode,
                    &fusion.fusion,
                    &fusion.semantic_weight,
                    &fusion.lexical_weight,
                    &fusion.rrf_k,
                ],
            )
            .with_context(|| format!("query {id} failed ({mode})"))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        run.insert(id.clone(), ranking);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((
        run,
        data.queries.len() as f64 / started.elapsed().as_secs_f64(),
    ))
}

fn scored(
    system: String,
    data: &BeirDataset,
    build_seconds: f64,
    (run, queries_per_second): (Run, f64),
) -> SystemResult {
    let ids: BTreeMap<String, Vec<String>> = run
        .iter()
        .map(|(q, r)| (q.clone(), r.iter().map(|(d, _)| d.clone()).collect()))
        .collect();
    SystemResult {
        system,
        metrics: evaluate(&data.qrels, &ids),
        build_seconds,
        queries_per_second,
        run,
    }
}

/// Loads the corpus into `table`, indexes it with `model` and bm25, and evaluates the
/// semantic and hybrid modes (and the lexical one when `lexical`).
fn evaluate_model(
    client: &mut Client,
    args: &EvalArgs,
    table: &str,
    model: &str,
    data: &BeirDataset,
    lexical: bool,
) -> Result<Vec<SystemResult>> {
    eprintln!("loading {} documents into {table}", data.corpus.len());
    load_corpus(client, table, data)?;
    let bm25 = index_name(table, "bm25");
    let lexical_build = build(
        client,
        &args.db,
        &format!(
            "CREATE INDEX {} ON {} USING bm25 (body)",
            quote_ident(&bm25),
            quote_ident(table)
        ),
    )?;
    let index = index_name(table, model);
    eprintln!(
        "indexing {} documents with {model} ({index})",
        data.corpus.len()
    );
    let semantic_build = build(
        client,
        &args.db,
        &format!(
            "CREATE INDEX {} ON {} USING faiss (body) WITH (model = {}{})",
            quote_ident(&index),
            quote_ident(table),
            quote_literal(model),
            args.index_options
                .as_deref()
                .map_or(String::new(), |o| format!(", {o}"))
        ),
    )?;
    let mut results = Vec::new();
    if lexical {
        let run = search_all(client, data, &bm25, "lexical", &args.fusion)?;
        results.push(scored("bm25".into(), data, lexical_build, run));
    }
    let run = search_all(client, data, &index, "semantic", &args.fusion)?;
    results.push(scored(model.to_string(), data, semantic_build, run));
    let run = search_all(client, data, &index, "hybrid", &args.fusion)?;
    results.push(scored(
        format!("{model}+bm25"),
        data,
        semantic_build + lexical_build,
        run,
    ));
    Ok(results)
}

/// Writes a system's run and per-query figures into `dir`.
fn write_results(dir: &Path, result: &SystemResult, data: &BeirDataset) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = plain_identifier(&result.system);
    let mut run = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{name}.run")))?);
    let mut per_query =
        std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{name}.tsv")))?);
    writeln!(per_query, "query\tndcg@10\trecall@100\tmrr@10")?;
    let empty = BTreeMap::new();
    for (query, ranking) in &result.run {
        for (rank, (doc, score)) in ranking.iter().enumerate() {
            writeln!(run, "{query} Q0 {doc} {} {score} {name}", rank + 1)?;
        }
        let ids: Vec<String> = ranking.iter().map(|(d, _)| d.clone()).collect();
        let judged = data.qrels.get(query).unwrap_or(&empty);
        writeln!(
            per_query,
            "{query}\t{:.6}\t{:.6}\t{:.6}",
            ndcg_at(10, &ids, judged),
            recall_at(100, &ids, judged),
            reciprocal_rank_at(10, &ids, judged)
        )?;
    }
    run.flush()?;
    per_query.flush()?;
    Ok(())
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
    let model = match args.model.clone() {
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
    models.extend(args.model_b.clone());
    for model in &models {
        validate_model_name(model)?;
    }
    if models.len() == 2 && models[0] == models[1] {
        bail!("--model and --model-b are the same model");
    }
    args.fusion.validate()?;

    eprintln!(
        "{} documents, {} judged queries ({} split)",
        data.corpus.len(),
        data.queries.len(),
        args.split
    );
    let mut results = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let table = if i == 0 {
            table.clone()
        } else {
            format!("{table}_b")
        };
        results.extend(evaluate_model(
            &mut client,
            &args,
            &table,
            model,
            &data,
            i == 0,
        )?);
    }
    if let Some(dir) = &args.results {
        for result in &results {
            write_results(dir, result, &data)?;
        }
        eprintln!("runs and per-query figures written to {}", dir.display());
    }

    let width = results
        .iter()
        .map(|r| r.system.len())
        .max()
        .unwrap_or(0)
        .max(5);
    println!("+bm25: {}", args.fusion.describe());
    println!(
        "{:<width$}  {:>8}  {:>10}  {:>8}  {:>8}  {:>9}",
        "system", "nDCG@10", "Recall@100", "MRR@10", "build_s", "queries/s"
    );
    for r in &results {
        println!(
            "{:<width$}  {:>8.4}  {:>10.4}  {:>8.4}  {:>8.1}  {:>9.1}",
            r.system,
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
