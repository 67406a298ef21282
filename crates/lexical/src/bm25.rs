//! Okapi BM25 with Robertson–Spärck Jones IDF in its non-negative form
//! ln(1 + (N - df + 0.5) / (df + 0.5)) (as Lucene and Elasticsearch, whose BEIR figures are
//! the usual reference, compute it: the raw RSJ weight goes negative for terms in more than
//! half the documents).

/// A document's lexemes with their frequencies, a lexeme given twice merged into one (its
/// frequencies summed) and those of frequency 0 left out; sorted by lexeme.
pub(crate) fn counted<'t>(
    lexemes: impl IntoIterator<Item = (&'t str, u32)>,
) -> Vec<(&'t str, u32)> {
    let mut counts: Vec<(&str, u32)> = lexemes.into_iter().filter(|(_, tf)| *tf > 0).collect();
    counts.sort_unstable_by(|a, b| a.0.cmp(b.0));
    counts.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    counts
}

/// The corpus figures BM25 needs: documents and their total length (in lexemes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CorpusStats {
    pub documents: u64,
    pub total_length: u64,
}

impl CorpusStats {
    pub fn average_length(&self) -> f32 {
        if self.documents == 0 {
            0.0
        } else {
            (self.total_length as f64 / self.documents as f64) as f32
        }
    }
}

/// BM25 parameters and the corpus they score against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bm25 {
    pub k1: f32,
    pub b: f32,
    pub stats: CorpusStats,
}

impl Bm25 {
    pub const DEFAULT_K1: f32 = 1.2;
    pub const DEFAULT_B: f32 = 0.75;

    /// The inverse document frequency of a term found in `df` documents.
    pub fn idf(&self, df: u64) -> f32 {
        let n = self.stats.documents as f64;
        let df = df as f64;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32
    }

    /// The term-frequency part of a term's score in one document: tf (k1 + 1) over
    /// tf + k1 (1 - b + b dl / avgdl). Grows with `tf`, shrinks with `length`.
    pub fn tf_part(&self, tf: u32, length: u32) -> f32 {
        if tf == 0 {
            return 0.0;
        }
        let avg = self.stats.average_length().max(f32::MIN_POSITIVE);
        let tf = tf as f32;
        let norm = self.k1 * (1.0 - self.b + self.b * length as f32 / avg);
        tf * (self.k1 + 1.0) / (tf + norm)
    }

    /// A term's score in a document: idf x tf part.
    pub fn score(&self, idf: f32, tf: u32, length: u32) -> f32 {
        idf * self.tf_part(tf, length)
    }
}
