//! A rule-based sentence splitter, good enough for abstracts and plot summaries: a sentence
//! ends at '.', '!' or '?' followed by white space and a capital, digit or opening bracket/quote,
//! unless the word before is a known abbreviation or a single letter (an initial).

const ABBREVIATIONS: &[&str] = &[
    "al", "approx", "ca", "cf", "dr", "e.g", "eq", "etc", "fig", "figs", "i.e", "inc", "jr", "ltd",
    "mr", "mrs", "ms", "no", "nos", "prof", "ref", "refs", "sr", "st", "vol", "vs",
];

fn is_abbreviation(word: &str) -> bool {
    let word = word.trim_start_matches(|c: char| !c.is_alphanumeric());
    let lower = word.to_lowercase();
    word.chars().count() == 1 || ABBREVIATIONS.contains(&lower.as_str())
}

/// The sentences of `text`, trimmed, in order.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut sentences = Vec::new();
    let mut start = 0;
    for (i, &(at, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let Some(&(_, after)) = chars.get(i + 1) else {
            continue;
        };
        let next_word_start = chars[i + 1..]
            .iter()
            .find(|(_, ch)| !ch.is_whitespace())
            .map(|&(_, ch)| ch);
        let starts_sentence = next_word_start
            .is_some_and(|ch| ch.is_uppercase() || ch.is_ascii_digit() || "([\"'“".contains(ch));
        let word_start = text[..at]
            .rfind(char::is_whitespace)
            .map_or(start, |w| (w + 1).max(start));
        if after.is_whitespace() && starts_sentence && !is_abbreviation(&text[word_start..at]) {
            let end = at + c.len_utf8();
            sentences.push(text[start..end].trim());
            start = end;
        }
    }
    sentences.push(text[start..].trim());
    sentences.retain(|s| !s.is_empty());
    sentences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_sentence_ends_only() {
        let text = "Tumours grow fast. We studied 3 cohorts (e.g. Smith et al. 2010)! \
                    Was p53 mutated? 40% of cases vs. Controls. J. Smith agreed. done";
        assert_eq!(
            split_sentences(text),
            vec![
                "Tumours grow fast.",
                "We studied 3 cohorts (e.g. Smith et al. 2010)!",
                "Was p53 mutated?",
                "40% of cases vs. Controls.",
                "J. Smith agreed. done",
            ]
        );
    }

    #[test]
    fn decimals_and_empty_text() {
        assert_eq!(
            split_sentences("A ratio of 1.5 was seen. Then 2.0 later."),
            vec!["A ratio of 1.5 was seen.", "Then 2.0 later."]
        );
        assert!(split_sentences("  ").is_empty());
        assert_eq!(split_sentences("One."), vec!["One."]);
    }
}
