use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use semantic_bert_export::{InputRanges, Int8Scope};
use semantic_encoder::{
    compute_fingerprint, cosine_similarity, init_runtime, validate_model_name, write_dense_file,
    DenseModule, Encoder, EncoderOptions, Manifest, Pooling, Precision,
    SentenceTransformersPipeline, Similarity, TextKind, MODEL_FILE, TOKENIZER_FILE,
};
use serde::Deserialize;

#[derive(Args)]
pub struct ImportArgs {
    /// A sentence-transformers model folder (modules.json, config.json, model.safetensors or
    /// onnx/model.onnx, tokenizer.json, 1_Pooling/config.json, Dense modules if any), or a
    /// folder with a ready-made ONNX graph, config.json and tokenizer.json (an optimum export;
    /// give --pooling unless the graph pools inside).
    source: PathBuf,
    /// A ready-made ONNX graph to install instead of exporting the weights. Without it, the
    /// weights are exported when this project's exporter knows the architecture, else
    /// onnx/model.onnx or model.onnx of the folder is taken.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Pooling of the token vectors: required for a folder without sentence-transformers
    /// modules, else it replaces the folder's; not for a graph that pools inside.
    #[arg(long, value_parser = ["mean", "cls", "max", "mean_sqrt_len"])]
    pooling: Option<String>,
    /// L2-normalise the vectors (a sentence-transformers folder says so with a Normalize module).
    #[arg(long)]
    normalize: bool,
    /// The model's name in the database (letters, digits, '.', '_', '-').
    #[arg(long)]
    name: String,
    /// The model directory root (the server's semantic.model_dir).
    #[arg(long, env = "SEMANTIC_MODEL_DIR")]
    model_dir: PathBuf,
    /// Override the similarity (default: the model's similarity_fn_name, else cosine).
    #[arg(long, value_parser = ["cosine", "dot"])]
    similarity: Option<String>,
    /// Override max_seq_length (default: sentence_bert_config.json's).
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Text put before every query (e.g. "query: " for E5 models).
    #[arg(long, default_value = "")]
    query_prefix: String,
    /// Text put before every document (e.g. "passage: ").
    #[arg(long, default_value = "")]
    passage_prefix: String,
    /// Quantise the graph's weight multiplications to int8 (one scale per output column,
    /// inputs quantised at run time): about twice the CPU throughput; vectors close to the
    /// float model's but not equal, so indexes built with one do not take the other. The
    /// int8 graph is checked against the float one on built-in texts (ONNX Runtime needed).
    #[arg(long, value_parser = ["int8"])]
    quantize: Option<String>,
    /// The ONNX Runtime shared library (libonnxruntime.so), for --quantize's check.
    #[arg(long, env = "ORT_DYLIB_PATH", value_parser = crate::absolute_path)]
    onnxruntime: Option<PathBuf>,
    /// Replace an installed model of the same name.
    #[arg(long)]
    force: bool,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// What the source folder says about the model, whichever form it comes in.
struct Source {
    /// The folder with config.json and tokenizer.json.
    transformer_dir: PathBuf,
    /// --pooling, else the folder's (none without sentence-transformers modules).
    pooling: Option<Pooling>,
    dense: Vec<DenseModule>,
    normalize: bool,
    /// sentence_bert_config.json's, if any.
    max_seq_length: Option<usize>,
    similarity: Similarity,
}

/// The part of a Hugging Face config.json every architecture has.
#[derive(Deserialize)]
struct TransformerConfig {
    model_type: String,
    /// DistilBERT's config.json calls it `dim`.
    #[serde(alias = "dim")]
    hidden_size: Option<usize>,
    max_position_embeddings: Option<usize>,
}

fn read_source(args: &ImportArgs) -> Result<Source> {
    let pooling = args.pooling.as_deref().map(|p| match p {
        "cls" => Pooling::Cls,
        "max" => Pooling::Max,
        "mean_sqrt_len" => Pooling::MeanSqrtLen,
        _ => Pooling::Mean,
    });
    if args.source.join("modules.json").exists() {
        let pipeline = SentenceTransformersPipeline::read(&args.source)?;
        return Ok(Source {
            transformer_dir: pipeline.transformer_dir,
            pooling: Some(pooling.unwrap_or(pipeline.pooling)),
            dense: pipeline.dense,
            normalize: pipeline.normalize || args.normalize,
            max_seq_length: Some(pipeline.max_seq_length),
            similarity: pipeline.similarity,
        });
    }
    Ok(Source {
        transformer_dir: args.source.clone(),
        pooling,
        dense: Vec::new(),
        normalize: args.normalize,
        max_seq_length: None,
        similarity: Similarity::Cosine,
    })
}

/// The ready-made graph to install, if the weights are not to be exported.
fn ready_made_graph(
    args: &ImportArgs,
    source: &Source,
    model_type: &str,
) -> Result<Option<PathBuf>> {
    if let Some(onnx) = &args.onnx {
        return Ok(Some(onnx.clone()));
    }
    let exportable = semantic_bert_export::SUPPORTED_MODEL_TYPES.contains(&model_type)
        && source.transformer_dir.join("model.safetensors").exists();
    if exportable {
        return Ok(None);
    }
    let candidates = [
        args.source.join("onnx/model.onnx"),
        source.transformer_dir.join("onnx/model.onnx"),
        source.transformer_dir.join("model.onnx"),
    ];
    match candidates.into_iter().find(|c| c.exists()) {
        Some(graph) => Ok(Some(graph)),
        None => bail!(
            "{}: no weights this project can export (model.safetensors of {}) and no ONNX graph (onnx/model.onnx, model.onnx, or --onnx FILE)",
            args.source.display(),
            semantic_bert_export::SUPPORTED_MODEL_TYPES.join(", ")
        ),
    }
}

/// The graph output the encoder reads.
struct VectorOutput {
    /// Its name, when it is not the first output (which the encoder reads by default).
    name: Option<String>,
    /// Whether it holds pooled vectors, `[batch, hidden]`, rather than token vectors.
    pooled: bool,
    /// The vectors' width, when the graph states it.
    width: Option<usize>,
}

/// Outputs read in preference to the first: sentence-transformers' exports that pool inside
/// name the pooled one `sentence_embedding`, and optimum's put a `pooler_output` (not a
/// sentence vector) beside `last_hidden_state`.
const PREFERRED_OUTPUTS: [&str; 3] = [
    "sentence_embedding",
    "last_hidden_state",
    "token_embeddings",
];

/// Checks that a ready-made graph takes what the encoder feeds (input_ids, attention_mask and
/// optionally token_type_ids) and gives token vectors or pooled vectors; returns the output
/// to read.
fn check_graph(path: &Path, onnx: &[u8]) -> Result<VectorOutput> {
    let io = semantic_bert_export::read_graph_io(onnx)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if io.external_data {
        bail!(
            "{}: the graph keeps weights in external data files, which import-model does not copy",
            path.display()
        );
    }
    const FED: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];
    if let Some(other) = io.inputs.iter().find(|i| !FED.contains(&i.as_str())) {
        bail!(
            "{}: input {other:?} is not one the encoder gives (inputs: {:?}; supported: {FED:?})",
            path.display(),
            io.inputs
        );
    }
    for required in &FED[..2] {
        if !io.inputs.iter().any(|i| i == required) {
            bail!(
                "{}: the graph has no input {required} (inputs: {:?})",
                path.display(),
                io.inputs
            );
        }
    }
    let index = PREFERRED_OUTPUTS
        .iter()
        .find_map(|name| io.outputs.iter().position(|o| o.name == *name))
        .unwrap_or(0);
    let output = io
        .outputs
        .get(index)
        .with_context(|| format!("{}: the graph has no output", path.display()))?;
    let pooled = match output.shape.len() {
        3 => false,
        2 => true,
        _ => bail!(
            "{}: output {:?} has shape {:?}; the encoder reads token vectors [batch, sequence, hidden] or pooled vectors [batch, hidden]",
            path.display(),
            output.name,
            output.shape
        ),
    };
    Ok(VectorOutput {
        name: (index != 0).then(|| output.name.clone()),
        pooled,
        width: output.shape.last().copied().flatten().map(|d| d as usize),
    })
}

/// The model's graph: the ready-made one, checked, or this project's export of the weights.
fn load_graph(graph: Option<&Path>, source: &Source) -> Result<(Vec<u8>, VectorOutput)> {
    match graph {
        Some(path) => {
            eprintln!("taking the ONNX graph {}", path.display());
            let onnx =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let output = check_graph(path, &onnx)?;
            Ok((onnx, output))
        }
        None => {
            eprintln!("exporting {} to ONNX", source.transformer_dir.display());
            let onnx = semantic_bert_export::export_onnx(&source.transformer_dir)?;
            let output = VectorOutput {
                name: None,
                pooled: false,
                width: None,
            };
            Ok((onnx, output))
        }
    }
}

/// How the encoder pools the token vectors, as --pooling or the folder says; none when the
/// graph pools inside.
fn choose_pooling(
    args: &ImportArgs,
    source: &Source,
    output: &VectorOutput,
) -> Result<Option<Pooling>> {
    if output.pooled {
        if args.pooling.is_some() {
            bail!(
                "the graph pools inside (it gives [batch, hidden] vectors), so --pooling does not apply: leave it out"
            );
        }
        return Ok(None);
    }
    source.pooling.map(Some).with_context(|| {
        format!(
            "{} has no modules.json (not a sentence-transformers folder) and its graph gives token vectors: give --pooling (mean, cls, max or mean_sqrt_len), and --normalize if the model's vectors are normalised",
            args.source.display()
        )
    })
}

pub fn run(args: ImportArgs) -> Result<()> {
    validate_model_name(&args.name)?;
    let source = read_source(&args)?;
    let config: TransformerConfig = read_json(&source.transformer_dir.join("config.json"))?;
    let target = args.model_dir.join(&args.name);
    if target.exists() && !args.force {
        bail!(
            "model {} already exists in {} (use --force to replace it)",
            args.name,
            args.model_dir.display()
        );
    }
    let similarity = match args.similarity.as_deref() {
        Some("dot") => Similarity::Dot,
        Some(_) => Similarity::Cosine,
        None => source.similarity,
    };
    // RoBERTa-style models number positions from padding_idx + 1: two fewer are usable.
    let offset = if ["roberta", "xlm-roberta", "camembert"].contains(&config.model_type.as_str()) {
        2
    } else {
        0
    };
    let position_limit = config
        .max_position_embeddings
        .map_or(usize::MAX, |p| p.saturating_sub(offset));
    let max_seq_length = args
        .max_seq_length
        .or(source.max_seq_length)
        .unwrap_or(position_limit)
        .min(position_limit);
    if max_seq_length == usize::MAX {
        bail!("config.json has no max_position_embeddings: give --max-seq-length");
    }
    let graph = ready_made_graph(&args, &source, &config.model_type)?;
    let (onnx, output) = load_graph(graph.as_deref(), &source)?;
    if args.quantize.is_some() {
        let library = args.onnxruntime.as_deref().context(
            "--quantize checks the int8 graph with ONNX Runtime: give --onnxruntime or set ORT_DYLIB_PATH",
        )?;
        init_runtime(library)?;
    }
    let pooling = choose_pooling(&args, &source, &output)?;
    let graph_width = output
        .width
        .or(config.hidden_size)
        .context("neither the graph nor config.json (hidden_size) says how wide the vectors are")?;
    if let Some(first) = source.dense.first() {
        if first.layer.in_features != graph_width {
            bail!(
                "the Dense module {} takes {} features, but the graph gives {graph_width}-wide vectors (a graph that applies the Dense layers itself cannot be combined with the folder's Dense modules)",
                first.dir.display(),
                first.layer.in_features
            );
        }
    }
    let tokenizer_src = source.transformer_dir.join(TOKENIZER_FILE);
    if !tokenizer_src.exists() {
        bail!(
            "{} is missing (only fast tokenizers in tokenizer.json form are supported)",
            tokenizer_src.display()
        );
    }

    // Build in a sibling folder and rename, so a running server never sees half a model.
    std::fs::create_dir_all(&args.model_dir)
        .with_context(|| format!("cannot create {}", args.model_dir.display()))?;
    let staging = args
        .model_dir
        .join(format!(".{}.import-{}", args.name, std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir(&staging)?;
    let result = (|| -> Result<Manifest> {
        std::fs::write(staging.join(MODEL_FILE), &onnx)?;
        write_tokenizer(
            &tokenizer_src,
            &staging.join(TOKENIZER_FILE),
            max_seq_length,
        )?;
        if !source.dense.is_empty() {
            write_dense_file(&source.dense, &staging)?;
        }
        let mut manifest = Manifest {
            name: args.name.clone(),
            source: args
                .source
                .canonicalize()
                .unwrap_or(args.source.clone())
                .display()
                .to_string(),
            architecture: config.model_type.clone(),
            dimension: source
                .dense
                .last()
                .map_or(graph_width, |m| m.layer.out_features),
            pooling,
            output: output.name,
            dense: source.dense.iter().map(|m| m.layer).collect(),
            normalize: source.normalize,
            max_seq_length,
            similarity,
            query_prefix: args.query_prefix.clone(),
            passage_prefix: args.passage_prefix.clone(),
            precision: Precision::Fp32,
            fingerprint: String::new(),
        };
        manifest.fingerprint = compute_fingerprint(&staging, &manifest)?;
        manifest.save(&staging)?;
        if args.quantize.is_some() {
            quantize(&staging, &onnx, &mut manifest)?;
        }
        Ok(manifest)
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&staging, &target)?;
    let dense: String = manifest
        .dense
        .iter()
        .map(|l| {
            format!(
                ", Dense {}->{} {:?}",
                l.in_features, l.out_features, l.activation
            )
        })
        .collect();
    eprintln!(
        "installed {} ({}-d, {}, {} pooling{dense}, max {} tokens, {:?}) in {}",
        manifest.name,
        manifest.dimension,
        manifest.precision.name(),
        manifest.pooling_name(),
        manifest.max_seq_length,
        manifest.similarity,
        target.display()
    );
    println!("{}", manifest.fingerprint);
    Ok(())
}

/// What the float graph runs on at import to measure its weight multiplications' inputs (see
/// `semantic_bert_export::quantize_int8`): queries and passages of several lengths and topics,
/// written for this, none of them among [`PROBE_TEXTS`], so that the check sees texts the
/// smoothing was not measured on.
const CALIBRATION_TEXTS: [&str; 8] = [
    "cheap flights to lisbon in march",
    "what causes the northern lights",
    "The library extended its opening hours during the exam period, and the reading rooms stayed \
     full until midnight.",
    "After the merger, the two engineering teams argued for months over which build system to \
     keep, until a shared deadline settled it.",
    "Preheat the oven to 200 degrees, toss the vegetables with olive oil, salt and thyme, and \
     roast them for forty minutes, turning once halfway through.",
    "Le musée ouvre ses portes à neuf heures, sauf le mardi.",
    "A retired detective is drawn back into an unsolved case when a letter arrives in the \
     handwriting of a woman who disappeared thirty years earlier; the trail leads him through a \
     fishing village whose residents all seem to be hiding the same secret.",
    "Thermal expansion of the rails is absorbed by expansion joints; continuously welded track \
     instead holds the rails under tension so that they cannot buckle in summer heat.",
];

/// What the float and int8 graphs embed at import to see how far int8 moves the vectors:
/// queries and passages of several lengths and topics, written for this check.
const PROBE_TEXTS: [&str; 12] = [
    "how do volcanoes form",
    "best way to keep bread fresh",
    "symptoms of vitamin D deficiency in adults",
    "A man returns to his home town after twenty years and finds that nobody remembers him.",
    "The committee postponed the vote on the new budget until the auditors finish their report.",
    "Photovoltaic panels convert sunlight directly into electricity without moving parts.",
    "¿Dónde está la estación de tren más cercana?",
    "Error 504: the gateway did not receive a timely response from the upstream server.",
    "In the spring of 1923 a young schoolteacher arrives in a mining village in the north. \
     The mine owner's son falls for her, but his father has promised him to the daughter of a \
     banker whose loan keeps the pits open. When a gallery collapses and traps forty men, the \
     teacher organises the wives to dig while the owners wait for engineers from the capital. \
     The rescue makes her a heroine in the newspapers and an enemy of the family, and she has \
     to choose between the man she loves and the village that now looks to her.",
    "Randomised trials of the vaccine enrolled 30,000 participants across eleven countries. \
     Efficacy against symptomatic infection was 91 percent after the second dose and waned to \
     74 percent at six months, while protection against hospitalisation stayed above 90 \
     percent. Adverse events were mostly mild: pain at the injection site, fatigue and \
     headache, resolving within two days. Rare cases of myocarditis were reported in young \
     men, at a rate of about four per hundred thousand doses.",
    "To replace the cartridge, open the front cover, wait for the carriage to stop, press the \
     tab on the old cartridge and lift it out. Remove the tape from the new one, push it into \
     the slot until it clicks, close the cover and print an alignment page when asked.",
    "Supply and demand, interest rates, inflation expectations and central bank credibility \
     interact: a rate rise cools borrowing, strengthens the currency and lowers import prices, \
     but it also raises the cost of servicing public debt and can tip a fragile economy into \
     recession if it comes too late or too fast.",
];

/// The mean cosine to the float vectors on [`PROBE_TEXTS`] below which an int8 graph is not
/// installed. all-MiniLM-L6-v2 with every weight in int8 (its inputs smoothed) measures 0.996
/// here and on 150 SciFact abstracts; all-mpnet-base-v2 0.913 with every one, 0.998 with the
/// narrowing ones' outlying features in float, 0.999 with those products float; SciFact's
/// nDCG@10 stays within 0.005 of fp32's (BENCHMARKS.md).
const INT8_MIN_COSINE: f64 = 0.99;

/// The probe texts' vectors under the model installed in `dir`.
fn probe_vectors(dir: &Path) -> Result<Vec<Vec<f32>>> {
    let mut encoder = Encoder::load(dir, &EncoderOptions::default())?;
    Ok(encoder.encode(&PROBE_TEXTS, TextKind::Passage)?)
}

/// The ranges of the float graph `float`'s weight multiplications' inputs on [`CALIBRATION_TEXTS`],
/// for smoothing (see `semantic_bert_export::quantize_int8`); leaves `float` in `staging`.
fn input_ranges(staging: &Path, float: &[u8]) -> Result<InputRanges> {
    let (probe, names) =
        semantic_bert_export::activation_probe(float).context("cannot quantise the graph")?;
    std::fs::write(staging.join(MODEL_FILE), probe)?;
    // The probe graph is not the one the manifest's fingerprint covers.
    let options = EncoderOptions {
        verify_fingerprint: false,
        ..Default::default()
    };
    let measured = Encoder::load(staging, &options)
        .and_then(|mut encoder| encoder.input_ranges(&CALIBRATION_TEXTS, &names));
    std::fs::write(staging.join(MODEL_FILE), float)?;
    measured.context("cannot measure the graph's activations")
}

/// Replaces the float graph `float` in `staging` by an int8 one: every weight multiplication
/// in int8 if that keeps the probe texts' vectors at [`INT8_MIN_COSINE`] of the float ones,
/// else with the narrowing ones' outlying input features multiplied in float, else all but
/// the narrowing ones; none, an error.
fn quantize(staging: &Path, float: &[u8], manifest: &mut Manifest) -> Result<()> {
    let reference = probe_vectors(staging)?;
    let ranges = input_ranges(staging, float)?;
    let mut measured = Vec::new();
    for scope in [
        Int8Scope::AllWeights,
        Int8Scope::SplitNarrowingOutliers,
        Int8Scope::KeepNarrowingFloat,
    ] {
        let graph = semantic_bert_export::quantize_int8(float, scope, &ranges)
            .context("cannot quantise the graph")?;
        std::fs::write(staging.join(MODEL_FILE), graph)?;
        manifest.precision = Precision::Int8;
        manifest.fingerprint = compute_fingerprint(staging, manifest)?;
        manifest.save(staging)?;
        let vectors = probe_vectors(staging)?;
        let cosine = reference
            .iter()
            .zip(&vectors)
            .map(|(a, b)| cosine_similarity(a, b))
            .sum::<f64>()
            / reference.len() as f64;
        let what = match scope {
            Int8Scope::AllWeights => "every weight multiplication in int8",
            Int8Scope::SplitNarrowingOutliers => {
                "the narrowing (feed-forward down) ones with their outlying input features in float"
            }
            Int8Scope::KeepNarrowingFloat => "the narrowing (feed-forward down) ones kept float",
        };
        eprintln!("{what}: mean cosine {cosine:.4} to the float vectors on the probe texts");
        if cosine >= INT8_MIN_COSINE {
            return Ok(());
        }
        measured.push(format!("{cosine:.4} with {what}"));
    }
    bail!(
        "int8 moves this model's vectors too far from the float ones (mean cosine {}; at least {INT8_MIN_COSINE} is needed): import it without --quantize",
        measured.join(", ")
    )
}

/// Copies tokenizer.json with the model's own truncation length and no padding written in:
/// published files often disagree with the model (all-MiniLM-L6-v2's says 128, the model 256).
fn write_tokenizer(source: &Path, target: &Path, max_seq_length: usize) -> Result<()> {
    let mut tokenizer = tokenizers::Tokenizer::from_file(source)
        .map_err(|e| anyhow::anyhow!("{} is not a valid tokenizer.json: {e}", source.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_seq_length,
            ..Default::default()
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokenizer
        .save(target, false)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use prost::Message;
    use safetensors::tensor::TensorView;
    use semantic_bert_export::onnx_proto::*;
    use semantic_encoder::{Activation, DenseLayer, Encoder, EncoderOptions, TextKind};

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: ImportArgs,
    }

    fn import(source: &Path, model_dir: &Path, name: &str, more: &[&str]) -> Result<Manifest> {
        let argv = [
            "import-model",
            source.to_str().unwrap(),
            "--name",
            name,
            "--model-dir",
            model_dir.to_str().unwrap(),
        ];
        run(Command::try_parse_from(argv.iter().chain(more))?.args)?;
        Ok(Manifest::load(&model_dir.join(name))?)
    }

    const VOCAB: [&str; 8] = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "red", "green", "blue", "sky",
    ];
    const HIDDEN: usize = 4;

    /// The tiny model's token vectors: one fixed row per token id.
    fn embedding(token: usize) -> Vec<f32> {
        (0..HIDDEN)
            .map(|h| ((token * 7 + h * 3) % 11) as f32 / 5.0 - 1.0)
            .collect()
    }

    /// The tiny model's graph: each token's vector looked up, given as `last_hidden_state`;
    /// with `pooled`, also their mean over the attention mask, given as a second output
    /// `sentence_embedding` (as sentence-transformers' exports with pooling inside do).
    fn graph(pooled: bool) -> Vec<u8> {
        let value = |name: &str, elem_type: i32, dims: &[Option<i64>]| ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem_type),
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .enumerate()
                            .map(|(i, d)| tensor_shape_proto::Dimension {
                                value: Some(d.map_or_else(
                                    || {
                                        let symbol = ["batch", "sequence"][i];
                                        tensor_shape_proto::dimension::Value::DimParam(
                                            symbol.into(),
                                        )
                                    },
                                    tensor_shape_proto::dimension::Value::DimValue,
                                )),
                                denotation: None,
                            })
                            .collect(),
                    }),
                })),
                denotation: None,
            }),
            doc_string: None,
        };
        let node =
            |op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>| NodeProto {
                input: inputs.iter().map(|i| i.to_string()).collect(),
                output: vec![output.into()],
                op_type: Some(op.into()),
                attribute,
                ..Default::default()
            };
        let int = |name: &str, value: i64| AttributeProto {
            name: Some(name.into()),
            r#type: Some(attribute_type::INT),
            i: Some(value),
            ..Default::default()
        };
        let table: Vec<u8> = (0..VOCAB.len())
            .flat_map(embedding)
            .flat_map(f32::to_le_bytes)
            .collect();
        let tensor = |name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>| TensorProto {
            dims: dims.to_vec(),
            data_type: Some(data_type),
            name: Some(name.into()),
            raw_data: Some(raw),
            ..Default::default()
        };
        let tokens = [None, None, Some(HIDDEN as i64)];
        let mut graph = GraphProto {
            input: vec![
                value("input_ids", data_type::INT64, &[None, None]),
                value("attention_mask", data_type::INT64, &[None, None]),
            ],
            output: vec![value("last_hidden_state", data_type::FLOAT, &tokens)],
            initializer: vec![tensor(
                "table",
                &[VOCAB.len() as i64, HIDDEN as i64],
                data_type::FLOAT,
                table,
            )],
            node: vec![node(
                "Gather",
                &["table", "input_ids"],
                "last_hidden_state",
                vec![],
            )],
            ..Default::default()
        };
        if pooled {
            let axis = |name: &str, axis: i64| {
                tensor(name, &[1], data_type::INT64, axis.to_le_bytes().to_vec())
            };
            graph
                .initializer
                .extend([axis("last", -1), axis("tokens", 1)]);
            graph.node.extend([
                node(
                    "Cast",
                    &["attention_mask"],
                    "mask",
                    vec![int("to", data_type::FLOAT.into())],
                ),
                node("Unsqueeze", &["mask", "last"], "mask3", vec![]),
                node("Mul", &["last_hidden_state", "mask3"], "masked", vec![]),
                node(
                    "ReduceSum",
                    &["masked", "tokens"],
                    "sum",
                    vec![int("keepdims", 0)],
                ),
                node(
                    "ReduceSum",
                    &["mask3", "tokens"],
                    "count",
                    vec![int("keepdims", 0)],
                ),
                node("Div", &["sum", "count"], "sentence_embedding", vec![]),
            ]);
            graph.output.push(value(
                "sentence_embedding",
                data_type::FLOAT,
                &[None, Some(HIDDEN as i64)],
            ));
        }
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// The Dense layers of the test folder: 4 -> 3 tanh with bias, then 3 -> 2 without.
    fn dense_layers() -> [(DenseLayer, Vec<f32>, Vec<f32>); 2] {
        [
            (
                DenseLayer {
                    in_features: 4,
                    out_features: 3,
                    bias: true,
                    activation: Activation::Tanh,
                },
                vec![
                    0.5, -0.25, 1.0, 0.0, -1.0, 0.75, 0.5, 0.25, 0.1, 0.2, -0.3, 0.4,
                ],
                vec![0.1, -0.2, 0.3],
            ),
            (
                DenseLayer {
                    in_features: 3,
                    out_features: 2,
                    bias: false,
                    activation: Activation::Identity,
                },
                vec![1.0, -0.5, 0.25, 0.5, 1.5, -1.0],
                Vec::new(),
            ),
        ]
    }

    /// A sentence-transformers folder for the tiny model (mean pooling, the Dense layers,
    /// Normalize), its graph in onnx/model.onnx.
    fn st_folder(root: &Path, pooled: bool) -> PathBuf {
        let dir = root.join(if pooled { "pooled-st" } else { "tokens-st" });
        std::fs::create_dir_all(dir.join("onnx")).unwrap();
        std::fs::write(dir.join("onnx/model.onnx"), graph(pooled)).unwrap();
        let json = |path: &str, value: serde_json::Value| {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value.to_string()).unwrap();
        };
        let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id.into()))
            .collect();
        let special = |id: &str| serde_json::json!({"SpecialToken": {"id": id, "type_id": 0}});
        let sequence = serde_json::json!({"Sequence": {"id": "A", "type_id": 0}});
        json(
            "tokenizer.json",
            serde_json::json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "decoder": null,
                "post_processor": {
                    "type": "TemplateProcessing",
                    "single": [special("[CLS]"), sequence, special("[SEP]")],
                    "pair": [special("[CLS]"), sequence, special("[SEP]")],
                    "special_tokens": {
                        "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                        "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]},
                    },
                },
                "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
            }),
        );
        json(
            "config.json",
            serde_json::json!({"model_type": "tiny", "hidden_size": HIDDEN, "max_position_embeddings": 16}),
        );
        json(
            "sentence_bert_config.json",
            serde_json::json!({"max_seq_length": 16}),
        );
        json(
            "1_Pooling/config.json",
            serde_json::json!({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": true}),
        );
        let class = |name: &str| format!("sentence_transformers.models.{name}");
        json(
            "modules.json",
            serde_json::json!([
                {"idx": 0, "name": "0", "path": "", "type": class("Transformer")},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": class("Pooling")},
                {"idx": 2, "name": "2", "path": "2_Dense", "type": class("Dense")},
                {"idx": 3, "name": "3", "path": "3_Dense", "type": class("Dense")},
                {"idx": 4, "name": "4", "path": "4_Normalize", "type": class("Normalize")},
            ]),
        );
        for (i, (layer, weight, bias)) in dense_layers().into_iter().enumerate() {
            let folder = format!("{}_Dense", i + 2);
            let activation = match layer.activation {
                Activation::Tanh => "torch.nn.modules.activation.Tanh",
                _ => "torch.nn.modules.linear.Identity",
            };
            json(
                &format!("{folder}/config.json"),
                serde_json::json!({
                    "in_features": layer.in_features, "out_features": layer.out_features,
                    "bias": layer.bias, "activation_function": activation,
                }),
            );
            let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
            let (weight, bias) = (bytes(&weight), bytes(&bias));
            let mut tensors = vec![(
                "linear.weight",
                TensorView::new(
                    safetensors::Dtype::F32,
                    vec![layer.out_features, layer.in_features],
                    &weight,
                )
                .unwrap(),
            )];
            if layer.bias {
                tensors.push((
                    "linear.bias",
                    TensorView::new(safetensors::Dtype::F32, vec![layer.out_features], &bias)
                        .unwrap(),
                ));
            }
            safetensors::serialize_to_file(
                tensors,
                None,
                &dir.join(folder).join("model.safetensors"),
            )
            .unwrap();
        }
        dir
    }

    /// What sentence-transformers computes for `tokens` (ids, special tokens included), in
    /// float64: the mean of their vectors, the Dense layers, then normalisation.
    fn expected(tokens: &[usize]) -> Vec<f64> {
        let mut v = vec![0f64; HIDDEN];
        for &t in tokens {
            v.iter_mut()
                .zip(embedding(t))
                .for_each(|(s, x)| *s += f64::from(x) / tokens.len() as f64);
        }
        for (layer, weight, bias) in dense_layers() {
            v = weight
                .chunks_exact(layer.in_features)
                .enumerate()
                .map(|(o, row)| {
                    let y = row
                        .iter()
                        .zip(&v)
                        .map(|(w, x)| f64::from(*w) * x)
                        .sum::<f64>()
                        + bias.get(o).map_or(0.0, |b| f64::from(*b));
                    if layer.activation == Activation::Tanh {
                        y.tanh()
                    } else {
                        y
                    }
                })
                .collect();
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn dense_layers_and_graphs_that_pool_inside_import() {
        let work = tempfile::tempdir().unwrap();
        let models = work.path().join("models");
        let tokens = import(&st_folder(work.path(), false), &models, "tokens", &[]).unwrap();
        let pooled = import(&st_folder(work.path(), true), &models, "pooled", &[]).unwrap();
        let layers: Vec<DenseLayer> = dense_layers().iter().map(|(l, _, _)| *l).collect();
        assert_eq!(
            (
                tokens.pooling,
                &tokens.output,
                &tokens.dense,
                tokens.dimension
            ),
            (Some(Pooling::Mean), &None, &layers, 2)
        );
        assert_eq!(
            (
                pooled.pooling,
                pooled.output.as_deref(),
                &pooled.dense,
                pooled.dimension
            ),
            (None, Some("sentence_embedding"), &layers, 2)
        );
        assert!(tokens.normalize && pooled.normalize);
        assert!(models
            .join("tokens")
            .join(semantic_encoder::DENSE_FILE)
            .is_file());

        // A graph that pools inside takes no --pooling.
        let error = import(
            &st_folder(work.path(), true),
            &models,
            "again",
            &["--pooling", "cls"],
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("--pooling does not apply"),
            "{error}"
        );
        assert!(!models.join("again").exists());

        // Without modules.json: a graph that pools inside needs no --pooling, token vectors do.
        for pooled in [false, true] {
            let folder = st_folder(work.path(), pooled);
            std::fs::remove_file(folder.join("modules.json")).unwrap();
            let name = format!("plain-{pooled}");
            match import(&folder, &models, &name, &[]) {
                Ok(manifest) => {
                    assert!(pooled);
                    assert_eq!((manifest.pooling, manifest.dimension), (None, HIDDEN));
                }
                Err(error) => {
                    assert!(!pooled);
                    assert!(error.to_string().contains("give --pooling"), "{error}");
                }
            }
        }

        let Some(library) = std::env::var_os("ORT_DYLIB_PATH") else {
            eprintln!("skipped encoding: ORT_DYLIB_PATH is not set");
            return;
        };
        semantic_encoder::init_runtime(Path::new(&library)).unwrap();
        // Texts of unequal lengths, so that batches are padded.
        let texts = ["red sky", "green blue blue sky", "sky"];
        let token_ids: [&[usize]; 3] = [&[2, 4, 7, 3], &[2, 5, 6, 6, 7, 3], &[2, 7, 3]];
        for name in ["tokens", "pooled"] {
            let mut encoder =
                Encoder::load(&models.join(name), &EncoderOptions::default()).unwrap();
            let vectors = encoder.encode(&texts, TextKind::Passage).unwrap();
            for (v, ids) in vectors.iter().zip(token_ids) {
                let expected = expected(ids);
                assert!(
                    v.iter()
                        .zip(&expected)
                        .all(|(a, b)| (f64::from(*a) - b).abs() < 1e-5),
                    "{name}: {v:?} against {expected:?}"
                );
            }
        }
    }
}
