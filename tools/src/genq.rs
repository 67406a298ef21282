//! `semantic-tools genq`: synthetic (query, positive) pairs for `finetune --pairs`, from
//! passages in a file or a table, with a T5 doc2query model or a weight-free generator, and
//! optionally only the pairs a base model already finds (round-trip consistency).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use semantic_encoder::{
    init_runtime, l2_normalize, plan_batches, validate_model_name, Encoder, EncoderOptions,
    Similarity, TextKind,
};
use semantic_genq::filter::own_passage_ranks;
use semantic_genq::inverse_cloze::inverse_cloze_pairs;
use semantic_genq::keywords::keyword_pairs;
use semantic_genq::source::{read_passages, PassageColumns};
use semantic_genq::t5::{T5QueryGenerator, T5Settings};
use semantic_genq::teacher::{teach, TeacherSettings};
use semantic_genq::{drop_duplicate_queries, title_pairs, Pair, Passage};

use crate::reload::{connect, quote_ident};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Generator {
    /// Sampled from a T5 doc2query checkpoint (--t5-model), as BEIR GenQ.
    T5,
    /// One sentence of the passage; the positive is the rest with the title.
    InverseCloze,
    /// 3-6 of the passage's top TF-IDF terms; the positive is the passage.
    Keywords,
    /// The passage's title; the positive is its text (one query per titled passage).
    Title,
}

#[derive(Args)]
pub struct GenqArgs {
    /// One generator, or several separated by commas: their pairs are pooled, in the order
    /// given (which decides, with --teacher, whose pair a passage keeps first).
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    generator: Vec<Generator>,
    /// Passages from a file: a BEIR corpus.jsonl (_id, title, text) or a .csv (see --id-column).
    #[arg(long, required_unless_present = "db", conflicts_with = "db")]
    input: Option<PathBuf>,
    /// Passages from a table instead: a connection string, e.g. 'host=... user=... dbname=...'.
    #[arg(long, requires = "table")]
    db: Option<String>,
    /// The table (optionally schema.table) with --db.
    #[arg(long)]
    table: Option<String>,
    /// Column with the passage id (CSV or table).
    #[arg(long, default_value = "id")]
    id_column: String,
    /// Column with the passage text (CSV or table).
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Column with a title put before the text (CSV or table).
    #[arg(long)]
    title_column: Option<String>,
    /// Only the first N passages.
    #[arg(long)]
    limit: Option<usize>,
    /// Where the JSON lines {"query", "passage_id", "positive"} go (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Queries per passage, before duplicates are dropped (default: 5 for t5, else 1).
    #[arg(long)]
    queries_per_passage: Option<usize>,
    /// Fixes every random choice; a passage's queries depend only on it and its id.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// T5 checkpoint folder: config.json, model.safetensors, tokenizer.json.
    #[arg(long)]
    t5_model: Option<PathBuf>,
    #[arg(long, default_value_t = 25)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Passage tokens T5 reads.
    #[arg(long, default_value_t = 512)]
    max_passage_length: usize,
    /// Query tokens T5 may write (counting the decoder's start token, as Hugging Face does).
    #[arg(long, default_value_t = 64)]
    max_query_length: usize,
    /// (passage, sample) rows T5 decodes together.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Compute threads for T5 and the filter model (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Keep a pair only if this installed model ranks the pair's passage among the top
    /// --filter-top of all passages for the query (round-trip consistency).
    #[arg(long)]
    filter_model: Option<String>,
    #[arg(long, default_value_t = 1)]
    filter_top: usize,
    /// A faiss index whose hybrid search (with a bm25 index on the same column) is the
    /// teacher; its table is --table or another one with the passages' ids in --id-column: a
    /// pair is kept only if the teacher ranks its passage among the top --teacher-top, and gets
    /// a hard negative drawn from the teacher's --negative-ranks with the teacher's margin
    /// (positive's score minus negative's) for `finetune --loss margin-mse`.
    #[arg(long, requires = "db")]
    teacher: Option<String>,
    /// How the teacher fuses its two sides (semantic_search's `fusion`): convex scores (the
    /// weighted sum of min-max normalised scores, between 0 and 2) make margins that say how
    /// much better the positive is; rrf margins are small rank differences.
    #[arg(long, default_value = "rrf", value_parser = ["rrf", "convex"])]
    teacher_fusion: String,
    #[arg(long, default_value_t = 1)]
    teacher_top: usize,
    /// 0-based ranks of the teacher's list that hard negatives come from, as START..END. The
    /// first ranks are skipped: a passage there may answer the query as well as its own.
    #[arg(long, default_value = "3..30", value_parser = parse_ranks)]
    negative_ranks: std::ops::Range<usize>,
    /// With --teacher: at most this many pairs per passage, the first generated that pass.
    #[arg(long, default_value_t = 1)]
    pairs_per_passage: usize,
    /// The model directory root holding --filter-model.
    #[arg(long, env = "SEMANTIC_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// The ONNX Runtime library the filter model runs on.
    #[arg(long, env = "ORT_DYLIB_PATH", value_parser = crate::absolute_path)]
    onnxruntime: Option<PathBuf>,
}

fn parse_ranks(text: &str) -> Result<std::ops::Range<usize>, String> {
    let parse = |part: &str| {
        part.trim()
            .parse::<usize>()
            .map_err(|e| format!("{part:?}: {e}"))
    };
    match text.split_once("..") {
        Some((start, end)) => {
            let ranks = parse(start)?..parse(end)?;
            if ranks.is_empty() {
                Err(format!("{text}: the range holds no rank"))
            } else {
                Ok(ranks)
            }
        }
        None => Err(format!("{text}: expected START..END, e.g. 3..30")),
    }
}

impl GenqArgs {
    fn columns(&self) -> PassageColumns {
        PassageColumns {
            id: self.id_column.clone(),
            text: self.text_column.clone(),
            title: self.title_column.clone(),
        }
    }
}

fn read_table(db: &str, table: &str, columns: &PassageColumns) -> Result<Vec<Passage>> {
    let table: Vec<String> = table.split('.').map(quote_ident).collect();
    let title = columns
        .title
        .as_deref()
        .map_or("''".to_string(), |c| format!("{}::text", quote_ident(c)));
    let sql = format!(
        "SELECT {}::text, coalesce({title}, ''), coalesce({}::text, '') FROM {}",
        quote_ident(&columns.id),
        quote_ident(&columns.text),
        table.join(".")
    );
    let mut client = connect(db)?;
    Ok(client
        .query(&sql, &[])
        .with_context(|| format!("cannot read passages: {sql}"))?
        .iter()
        .map(|row| Passage {
            id: row.get(0),
            title: row.get(1),
            text: row.get(2),
        })
        .collect())
}

fn progress_bar(length: usize, unit: &str) -> Result<ProgressBar> {
    Ok(ProgressBar::new(length as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}, ETA {{eta}}"
        ))?
        .progress_chars("=> "),
    ))
}

fn generate_t5(args: &GenqArgs, dir: &Path, passages: &[Passage], n: usize) -> Result<Vec<Pair>> {
    let mut generator = T5QueryGenerator::load(dir)?;
    let settings = T5Settings {
        queries_per_passage: n,
        top_k: args.top_k,
        top_p: args.top_p,
        max_passage_tokens: args.max_passage_length,
        max_query_tokens: args.max_query_length,
        batch_size: args.batch_size,
        seed: args.seed,
    };
    let bar = progress_bar(passages.len() * n, "queries")?;
    let pairs = generator.generate(passages, &settings, |done| bar.set_position(done as u64));
    bar.finish_and_clear();
    pairs
}

/// Texts per inference call of the filter model.
const FILTER_BATCH_SIZE: usize = 32;

/// Embeds `texts` with the filter model, with a bar that advances per batch.
fn encode(encoder: &mut Encoder, texts: &[String], kind: TextKind) -> Result<Vec<Vec<f32>>> {
    let ids = texts
        .iter()
        .map(|t| encoder.tokenize(t, kind))
        .collect::<Result<Vec<_>, _>>()?;
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let bar = progress_bar(plan_batches(&lengths, FILTER_BATCH_SIZE).len(), "batches")?;
    let mut vectors = encoder.encode_token_ids_with(&ids, |_| bar.inc(1))?;
    bar.finish_and_clear();
    if encoder.manifest().similarity == Similarity::Cosine {
        vectors.iter_mut().for_each(|v| l2_normalize(v));
    }
    Ok(vectors)
}

/// The --filter-model encoder, loaded before generating so that a bad setting fails at once.
fn load_filter_encoder(args: &GenqArgs, model: &str) -> Result<Encoder> {
    validate_model_name(model)?;
    let model_dir = args
        .model_dir
        .as_ref()
        .context("--filter-model needs --model-dir (or SEMANTIC_MODEL_DIR)")?;
    let library = args
        .onnxruntime
        .as_ref()
        .context("--filter-model needs --onnxruntime (or ORT_DYLIB_PATH)")?;
    init_runtime(
        &library
            .canonicalize()
            .with_context(|| format!("cannot find {}", library.display()))?,
    )?;
    let options = EncoderOptions {
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        batch_size: FILTER_BATCH_SIZE,
        ..EncoderOptions::default()
    };
    Ok(Encoder::load(&model_dir.join(model), &options)?)
}

/// Round-trip consistency: keeps the pairs whose passage the encoder ranks in the top `top`
/// of all passages for their query.
fn filter_round_trip(
    encoder: &mut Encoder,
    passages: &[Passage],
    pairs: Vec<Pair>,
    top: usize,
) -> Result<Vec<Pair>> {
    eprintln!(
        "filter: embedding {} passages and {} queries with {}",
        passages.len(),
        pairs.len(),
        encoder.manifest().name
    );
    let texts: Vec<String> = passages.iter().map(Passage::full_text).collect();
    let passage_vectors = encode(encoder, &texts, TextKind::Passage)?;
    let queries: Vec<String> = pairs.iter().map(|p| p.query.clone()).collect();
    let query_vectors = encode(encoder, &queries, TextKind::Query)?;

    let position: HashMap<&str, usize> = passages
        .iter()
        .enumerate()
        .rev() // the first passage of a repeated id wins
        .map(|(i, p)| (p.id.as_str(), i))
        .collect();
    let own: Vec<usize> = pairs
        .iter()
        .map(|p| position[p.passage_id.as_str()])
        .collect();
    let ranks = own_passage_ranks(&query_vectors, &own, &passage_vectors);
    Ok(pairs
        .into_iter()
        .zip(ranks)
        .filter(|&(_, rank)| rank < top)
        .map(|(pair, _)| pair)
        .collect())
}

/// The teacher pass: every pair's query runs through the database's hybrid search.
fn filter_with_teacher(
    args: &GenqArgs,
    index: &str,
    passages: &[Passage],
    pairs: Vec<Pair>,
) -> Result<(Vec<Pair>, String)> {
    let db = args
        .db
        .as_deref()
        .expect("clap requires --db with --teacher");
    let mut client = connect(db)?;
    let search = client.prepare(
        "SELECT \"row\"->>$4, score FROM semantic_search($1, $2, $3::text, mode => 'hybrid', \
         fusion => $5) ORDER BY rank",
    )?;
    let index = quote_ident(index);
    let settings = TeacherSettings {
        keep_top: args.teacher_top,
        negative_ranks: args.negative_ranks.clone(),
        pairs_per_passage: args.pairs_per_passage,
        seed: args.seed,
    };
    eprintln!(
        "teacher: hybrid search of {index} for {} queries",
        pairs.len()
    );
    let bar = progress_bar(pairs.len(), "queries")?;
    let (kept, report) = teach(
        pairs,
        passages,
        &settings,
        |query, depth| {
            let rows = client
                .query(
                    &search,
                    &[
                        &query,
                        &(depth as i32),
                        &index,
                        &args.id_column,
                        &args.teacher_fusion,
                    ],
                )
                .with_context(|| format!("teacher search failed for query {query:?}"))?;
            let ranking: Vec<(String, f64)> = rows
                .iter()
                .filter_map(|row| Some((row.get::<_, Option<String>>(0)?, row.get::<_, f64>(1))))
                .collect();
            if ranking.len() < rows.len() {
                bail!(
                    "the teacher's rows have no {:?} column: its table must hold the passage ids \
                     in --id-column",
                    args.id_column
                );
            }
            Ok(ranking)
        },
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    let with_negative = kept.iter().filter(|p| p.negative.is_some()).count();
    let summary = format!(
        ", {} searched by the teacher ({} beyond --pairs-per-passage), {} kept ({} ranked below \
         its top {}), {with_negative} with a hard negative",
        report.searched,
        report.surplus,
        kept.len(),
        report.rejected,
        args.teacher_top
    );
    Ok((kept, summary))
}

fn write_pairs(pairs: &[Pair], output: Option<&Path>) -> Result<()> {
    let sink: Box<dyn Write> = match output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::new(sink);
    for pair in pairs {
        serde_json::to_writer(&mut sink, pair)?;
        sink.write_all(b"\n")?;
    }
    sink.flush()?;
    Ok(())
}

pub fn run(args: GenqArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        // candle sizes its thread pools from this variable; nothing has started one yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
    }
    if args.generator.contains(&Generator::T5) && args.t5_model.is_none() {
        bail!("the t5 generator needs --t5-model");
    }
    let mut passages = match (&args.input, &args.db, &args.table) {
        (Some(path), _, _) => read_passages(path, &args.columns())?,
        (None, Some(db), Some(table)) => read_table(db, table, &args.columns())?,
        _ => unreachable!("clap requires --input or --db with --table"),
    };
    if let Some(limit) = args.limit {
        passages.truncate(limit);
    }
    let mut filter = args
        .filter_model
        .as_deref()
        .map(|model| load_filter_encoder(&args, model))
        .transpose()?;
    let mut pairs = Vec::new();
    for generator in &args.generator {
        let n = args
            .queries_per_passage
            .unwrap_or(if *generator == Generator::T5 { 5 } else { 1 });
        eprintln!(
            "{}: up to {n} queries for each of {} passages",
            generator
                .to_possible_value()
                .expect("no skipped variants")
                .get_name(),
            passages.len()
        );
        pairs.extend(match generator {
            Generator::T5 => generate_t5(
                &args,
                args.t5_model.as_deref().expect("checked above"),
                &passages,
                n,
            )?,
            Generator::InverseCloze => inverse_cloze_pairs(&passages, n, args.seed),
            Generator::Keywords => keyword_pairs(&passages, n, args.seed),
            Generator::Title => title_pairs(&passages),
        });
    }
    let generated = pairs.len();
    let (mut pairs, duplicates) = drop_duplicate_queries(pairs);
    let mut summary = format!("{generated} queries, {duplicates} duplicates dropped");
    if let Some(encoder) = &mut filter {
        let before = pairs.len();
        pairs = filter_round_trip(encoder, &passages, pairs, args.filter_top)?;
        summary += &format!(
            ", {} kept by the round trip through {} (top {})",
            pairs.len(),
            encoder.manifest().name,
            args.filter_top
        );
        if before > 0 {
            summary += &format!(" = {:.1}%", 100.0 * pairs.len() as f64 / before as f64);
        }
    }
    if let Some(index) = &args.teacher {
        let (kept, teacher_summary) = filter_with_teacher(&args, index, &passages, pairs)?;
        pairs = kept;
        summary += &teacher_summary;
    }
    write_pairs(&pairs, args.output.as_deref())?;
    eprintln!("{summary}; {} pairs written", pairs.len());
    Ok(())
}
