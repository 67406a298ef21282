//! What loading a model costs a fresh process: the time of `Encoder::load` and of the first
//! `encode_one`, and the memory they add, by /proc/self/smaps_rollup (Linux). One intra-op
//! thread, as a database backend runs.
//!
//! cargo run --release -p semantic-encoder --example load_cost -- MODEL_DIR LIBONNXRUNTIME
//!     [--cache-dir DIR] [--hold SECONDS]
//!
//! Run it twice with the same empty --cache-dir for the cold and the warm case. --hold keeps
//! the process (and its mappings) alive after measuring, so that a second run started meanwhile
//! shows the mapped weights as Shared_Clean instead of Private_Clean.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use semantic_encoder::{init_runtime, Encoder, EncoderOptions, TextKind};

const FIELDS: [&str; 5] = [
    "Rss",
    "Anonymous",
    "Private_Dirty",
    "Private_Clean",
    "Shared_Clean",
];

/// The kB figures of [`FIELDS`].
fn memory() -> [i64; FIELDS.len()] {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("Linux /proc");
    FIELDS.map(|field| {
        rollup
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    })
}

fn print_delta(what: &str, from: &[i64; FIELDS.len()], to: &[i64; FIELDS.len()]) {
    let deltas: Vec<String> = FIELDS
        .iter()
        .zip(from.iter().zip(to))
        .map(|(field, (a, b))| format!("{field} {:+.1}", (b - a) as f64 / 1024.0))
        .collect();
    println!("{what} (MiB): {}", deltas.join(", "));
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: load_cost MODEL_DIR LIBONNXRUNTIME [--cache-dir DIR] [--hold SECONDS]";
    let model_dir = PathBuf::from(args.next().expect(usage));
    let library = PathBuf::from(args.next().expect(usage));
    let mut options = EncoderOptions::default();
    let mut hold = Duration::ZERO;
    while let Some(flag) = args.next() {
        let value = args.next().expect(usage);
        match flag.as_str() {
            "--cache-dir" => options.cache_dir = Some(PathBuf::from(value)),
            "--hold" => hold = Duration::from_secs(value.parse().expect(usage)),
            _ => panic!("{usage}"),
        }
    }

    init_runtime(&library).expect("ONNX Runtime library");
    let before = memory();
    let start = Instant::now();
    let mut encoder = Encoder::load(&model_dir, &options).expect("load");
    let load = start.elapsed();
    let loaded = memory();
    let start = Instant::now();
    encoder
        .encode_one("a short query about a film", TextKind::Query)
        .expect("encode");
    let first = start.elapsed();
    let encoded = memory();
    let start = Instant::now();
    encoder
        .encode_one("another query about a film", TextKind::Query)
        .expect("encode");
    let second = start.elapsed();

    println!("{:?}", encoder.load_report());
    println!(
        "Encoder::load {:.1} ms, first encode_one {:.1} ms, second {:.1} ms",
        load.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        second.as_secs_f64() * 1e3
    );
    print_delta("added by load", &before, &loaded);
    print_delta("added by load + first encode", &before, &encoded);
    std::thread::sleep(hold);
}
