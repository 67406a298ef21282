//! `semantic-tools reload`: moves a live faiss index to a new model version without stopping
//! searches. The version is installed under a new name next to the old one, the index's `model`
//! option is pointed at it and `REINDEX INDEX CONCURRENTLY` rebuilds it: PostgreSQL keeps
//! answering from the old index (embedded with the old model, which its metapage names) until
//! the new one is complete and swapped in. On failure the option is set back, the half-built
//! copy dropped and the new version uninstalled; the old version is never touched.
//!
//! Also the database plumbing the other subcommands share: connecting, quoting, and running
//! an index build with a progress bar.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, FromArgMatches};
use indicatif::{ProgressBar, ProgressStyle};
use postgres::{Client, NoTls};
use semantic_encoder::{validate_model_name, Manifest, MANIFEST_FILE};

use crate::import;

#[derive(Args)]
pub struct ReloadArgs {
    /// Connection string, e.g. 'host=127.0.0.1 port=5432 user=postgres dbname=app'.
    #[arg(long)]
    db: String,
    /// The model directory root (the server's semantic.model_dir).
    #[arg(long, env = "SEMANTIC_MODEL_DIR")]
    model_dir: PathBuf,
    /// The new version: a sentence-transformers folder (exported as import-model does) or a
    /// model directory (manifest.json, model.onnx, tokenizer.json), copied.
    #[arg(long)]
    source: PathBuf,
    /// Name of the new version; it must not be installed yet, unless --source is that very
    /// directory.
    #[arg(long)]
    name: String,
    /// The faiss index to move to the new version.
    #[arg(long)]
    index: String,
    /// Quantise the new version to int8 as it is imported (import-model --quantize); for a
    /// sentence-transformers folder, such as finetune's output.
    #[arg(long, value_parser = ["int8"])]
    quantize: Option<String>,
}

pub fn connect(db: &str) -> Result<Client> {
    Client::connect(db, NoTls).with_context(|| format!("cannot connect to '{db}'"))
}

/// An SQL identifier, quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal, for DDL that takes no parameters.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Runs `statement` (CREATE INDEX or REINDEX) on `client` while a second connection follows
/// it in pg_stat_progress_create_index and draws a bar on stderr.
pub fn run_index_build(client: &mut Client, db: &str, statement: &str) -> Result<()> {
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    let mut watcher = connect(db)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} rows, {msg}")?
            .progress_chars("=> "),
    );
    let finished = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                // The bar is a courtesy: a failed poll just skips one update.
                if let Ok(Some(row)) = watcher.query_opt(
                    "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index
                     WHERE pid = $1",
                    &[&pid],
                ) {
                    bar.set_length(row.get::<_, i64>(2).max(0) as u64);
                    bar.set_position(row.get::<_, i64>(1).max(0) as u64);
                    bar.set_message(row.get::<_, String>(0));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let result = client.batch_execute(statement);
        finished.store(true, Ordering::Relaxed);
        result
    });
    bar.finish_and_clear();
    result.with_context(|| format!("{statement} failed"))
}

/// What the catalog says about the index before the swap.
struct FaissIndex {
    /// As `regclass` prints it (schema-qualified and quoted when needed).
    qualified: String,
    /// The bare relation name, which REINDEX CONCURRENTLY's leftovers are named after.
    relname: String,
    /// The model the index was built with (its metapage).
    built_with: String,
    /// The `model` reloption, if set (unset means semantic.default_model).
    model_option: Option<String>,
}

fn look_up_index(client: &mut Client, index: &str) -> Result<FaissIndex> {
    let row = client
        .query_one(
            "SELECT c.oid::regclass::text, c.relname::text, a.amname::text,
                    (SELECT option_value FROM pg_options_to_table(c.reloptions)
                     WHERE option_name = 'model')
             FROM pg_class c JOIN pg_am a ON a.oid = c.relam
             WHERE c.oid = $1::text::regclass",
            &[&index],
        )
        .with_context(|| format!("cannot find index {index}"))?;
    let access_method: String = row.get(2);
    if access_method != "faiss" {
        bail!("{index} is a {access_method} index, not a faiss index");
    }
    let qualified: String = row.get(0);
    let built_with = index_model(client, &qualified)?;
    if built_with.is_empty() {
        bail!("{qualified} indexes a real[] column: it has no model to reload");
    }
    Ok(FaissIndex {
        built_with,
        qualified,
        relname: row.get(1),
        model_option: row.get(3),
    })
}

fn index_model(client: &mut Client, index: &str) -> Result<String> {
    Ok(client
        .query_one(
            "SELECT model FROM semantic_index_info($1::text::regclass)",
            &[&index],
        )?
        .get(0))
}

/// Copies a model directory under a new name, through a staging folder and a rename so the
/// server never sees half a model, checking the files against the manifest's fingerprint.
fn copy_model_dir(source: &Path, model_dir: &Path, name: &str) -> Result<()> {
    let mut manifest = Manifest::load(source)?;
    let staging = model_dir.join(format!(".{name}.reload-{}", std::process::id()));
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let result = (|| -> Result<()> {
        for file in manifest.model_files() {
            std::fs::copy(source.join(file), staging.join(file))
                .with_context(|| format!("cannot copy {}", source.join(file).display()))?;
        }
        manifest.name = name.to_string();
        manifest.save(&staging)?;
        manifest.verify_files(&staging)?;
        std::fs::rename(&staging, model_dir.join(name))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Installs `--source` as `--name`; returns whether this run installed it (and so may remove
/// it again on failure).
fn install(args: &ReloadArgs) -> Result<bool> {
    let installed = args.source.join(MANIFEST_FILE).exists();
    if installed && args.quantize.is_some() {
        bail!(
            "{} is an installed model directory, which --quantize does not rewrite: give the sentence-transformers folder it came from, or install an int8 version with import-model --quantize int8 and reload that",
            args.source.display()
        );
    }
    let target = args.model_dir.join(&args.name);
    if target.exists() {
        if args.source.canonicalize().ok() == target.canonicalize().ok() {
            eprintln!(
                "{} is already installed in {}",
                args.name,
                args.model_dir.display()
            );
            return Ok(false);
        }
        bail!(
            "model {} already exists in {}: give the new version a new name",
            args.name,
            args.model_dir.display()
        );
    }
    if installed {
        eprintln!("copying the model directory {}", args.source.display());
        copy_model_dir(&args.source, &args.model_dir, &args.name)?;
    } else {
        let mut argv: Vec<std::ffi::OsString> = vec![
            "import-model".into(),
            args.source.clone().into_os_string(),
            "--name".into(),
            args.name.clone().into(),
            "--model-dir".into(),
            args.model_dir.clone().into_os_string(),
        ];
        if let Some(precision) = &args.quantize {
            argv.extend(["--quantize".into(), precision.into()]);
        }
        let command = import::ImportArgs::augment_args(clap::Command::new("import-model"));
        import::run(import::ImportArgs::from_arg_matches(
            &command.try_get_matches_from(argv)?,
        )?)?;
    }
    Ok(true)
}

/// Points the index at `name` and rebuilds it concurrently.
fn point_and_rebuild(client: &mut Client, db: &str, index: &FaissIndex, name: &str) -> Result<()> {
    // ALTER INDEX takes an exclusive lock for a moment; rather fail than queue searches
    // behind a long transaction holding the index.
    client.batch_execute(&format!(
        "BEGIN; SET LOCAL lock_timeout = '10s';
         ALTER INDEX {} SET (model = {}); COMMIT",
        index.qualified,
        quote_literal(name)
    ))?;
    run_index_build(
        client,
        db,
        &format!("REINDEX INDEX CONCURRENTLY {}", index.qualified),
    )
}

/// Drops the invalid copies a failed REINDEX CONCURRENTLY leaves (`<index>_ccnew`, or
/// `<index>_ccold` when it failed after the swap).
fn drop_leftover_copies(client: &mut Client, index: &FaissIndex) -> Result<()> {
    let leftovers = client.query(
        "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = (SELECT indrelid FROM pg_index WHERE indexrelid = $1::text::regclass)
           AND NOT i.indisvalid
           AND left(c.relname, length($2) + 6) IN ($2 || '_ccnew', $2 || '_ccold')",
        &[&index.qualified, &index.relname],
    )?;
    for row in leftovers {
        let name: String = row.get(0);
        eprintln!("dropping {name}, left by the failed rebuild");
        client.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))?;
    }
    Ok(())
}

/// Undoes a failed swap: the option goes back and a version installed by this run goes away.
fn roll_back(db: &str, index: &FaissIndex, installed: Option<&Path>) -> Result<()> {
    // A fresh connection: the failure may have been the connection itself.
    let mut client = connect(db)?;
    drop_leftover_copies(&mut client, index)?;
    let restore = match &index.model_option {
        Some(model) => format!("SET (model = {})", quote_literal(model)),
        None => "RESET (model)".to_string(),
    };
    client.batch_execute(&format!("ALTER INDEX {} {restore}", index.qualified))?;
    if let Some(dir) = installed {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

/// The fingerprint the server reads for `name`: proof that it sees the installed files.
fn server_fingerprint(client: &mut Client, name: &str, model_dir: &Path) -> Result<String> {
    client
        .query_opt(
            "SELECT fingerprint FROM semantic_models() WHERE name = $1",
            &[&name],
        )?
        .map(|row| row.get(0))
        .with_context(|| {
            format!(
                "the server does not list model {name}; is --model-dir {} its semantic.model_dir?",
                model_dir.display()
            )
        })
}

pub fn run(args: ReloadArgs) -> Result<()> {
    validate_model_name(&args.name)?;
    let mut client = connect(&args.db)?;
    let index = look_up_index(&mut client, &args.index)?;
    if index.built_with == args.name {
        bail!("{} already uses model {}", index.qualified, args.name);
    }
    let installed = install(&args)?;
    let target = args.model_dir.join(&args.name);
    let installed_dir = installed.then_some(target.as_path());

    let fingerprint = match server_fingerprint(&mut client, &args.name, &args.model_dir) {
        Ok(fingerprint) => fingerprint,
        Err(e) => {
            if let Some(dir) = installed_dir {
                std::fs::remove_dir_all(dir)?;
            }
            return Err(e);
        }
    };

    eprintln!(
        "rebuilding {} with {} (was {}); searches go on meanwhile",
        index.qualified, args.name, index.built_with
    );
    let started = Instant::now();
    let outcome = point_and_rebuild(&mut client, &args.db, &index, &args.name);
    // REINDEX CONCURRENTLY can fail after the swap (while dropping the old copy): the index
    // then already serves the new model, and only the leftover needs dropping.
    let swapped = connect(&args.db)
        .and_then(|mut c| index_model(&mut c, &index.qualified))
        .is_ok_and(|model| model == args.name);
    match outcome {
        Err(e) if !swapped => {
            if let Err(rollback_error) = roll_back(&args.db, &index, installed_dir) {
                eprintln!("semantic-tools: rolling back failed too: {rollback_error:#}");
            }
            return Err(e.context(format!(
                "the index still uses {}; rebuilding with {} failed",
                index.built_with, args.name
            )));
        }
        Err(e) => {
            eprintln!("warning: the rebuild finished but cleaning up failed: {e:#}");
            drop_leftover_copies(&mut connect(&args.db)?, &index)?;
        }
        Ok(()) if !swapped => bail!(
            "REINDEX finished but {} does not report model {}",
            index.qualified,
            args.name
        ),
        Ok(()) => {}
    }
    eprintln!(
        "{} now uses {} ({fingerprint}), rebuilt in {:.1} s; {} stays installed",
        index.qualified,
        args.name,
        started.elapsed().as_secs_f64(),
        index.built_with
    );
    Ok(())
}
