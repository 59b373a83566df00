//! Text to terms: what is indexed, what is searched, and the keywords `Extract` answers.
//!
//! One analyzer for all three, so a query finds what was indexed. Text is lower-cased,
//! then segmented by jieba, which cuts Chinese into words (with its built-in dictionary,
//! plus a custom one from settings) and passes other scripts through word by word, so
//! mixed text works. Search-mode segmentation also emits the shorter words inside a long
//! one (中华人民共和国 → 中华, 人民, 共和国, ...), which is what recall wants. Kept: words
//! with a letter or a digit that are not stop words; one-letter Latin words are dropped,
//! single Chinese characters kept (猫 is a word).

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::sync::OnceLock;

use jieba_rs::{Jieba, KeywordExtract, KeywordExtractConfig, TfIdf};

use crate::stopwords::STOP_WORDS;

/// Longest term kept, in characters (the index's column holds 64).
const MAX_TERM_CHARS: usize = 64;

pub struct Analyzer {
    jieba: Jieba,
    /// jieba's IDF table (270k words in a map of owned strings, about 30 MiB with its
    /// text), made the first time `Extract` asks for keywords: nothing in the chat path
    /// (indexing, searching) reads it, so a service that is never asked holds none of it.
    tfidf: OnceLock<TfIdf>,
    stop_words: HashSet<&'static str>,
}

impl Analyzer {
    /// The built-in dictionary, and `custom_dict` (a jieba user dictionary) if not empty.
    pub fn new(custom_dict: &str) -> anyhow::Result<Self> {
        let mut jieba = Jieba::new();
        if !custom_dict.is_empty() {
            let file = std::fs::File::open(custom_dict).map_err(|error| {
                anyhow::anyhow!("KEYWORD_DICT {custom_dict} cannot be read: {error}")
            })?;
            jieba
                .load_dict(&mut BufReader::new(file))
                .map_err(|error| anyhow::anyhow!("KEYWORD_DICT {custom_dict}: {error}"))?;
        }
        Ok(Self {
            jieba,
            tfidf: OnceLock::new(),
            stop_words: STOP_WORDS.iter().copied().collect(),
        })
    }

    /// Whether a segment is worth indexing.
    fn keep(&self, word: &str) -> bool {
        let mut chars = word.chars();
        let Some(first) = chars.next() else {
            return false;
        };
        if !word.chars().any(char::is_alphanumeric) || self.stop_words.contains(word) {
            return false;
        }
        let single = chars.next().is_none();
        !single || is_ideographic(first) || first.is_ascii_digit()
    }

    /// The terms of `text` in order, repeats included: each kept word, and the single
    /// characters of a Chinese (or other ideographic) word, since segmentation is not
    /// always the same in a statement and in the question about it (我的猫叫豆豆 gives
    /// 猫叫; 猫叫什么 may not).
    fn terms(&self, text: &str) -> Vec<String> {
        let lowered = text.to_lowercase();
        let mut terms = Vec::new();
        for token in self.jieba.cut_for_search(&lowered, true) {
            let word = token.word.trim();
            if !self.keep(word) {
                continue;
            }
            terms.push(word.chars().take(MAX_TERM_CHARS).collect());
            if word.chars().count() > 1 && word.chars().all(is_ideographic) {
                let mut buffer = [0; 4];
                for character in word.chars() {
                    let single: &str = character.encode_utf8(&mut buffer);
                    if self.keep(single) {
                        terms.push(single.to_owned());
                    }
                }
            }
        }
        terms
    }

    /// Each distinct term of `text` with how many times it occurs.
    pub fn term_counts(&self, text: &str) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for term in self.terms(text) {
            *counts.entry(term).or_insert(0) += 1;
        }
        counts
    }

    /// The distinct terms of a query, at most `limit`, in order of first appearance.
    pub fn query_terms(&self, query: &str, limit: usize) -> Vec<String> {
        let mut seen = HashSet::new();
        self.terms(query)
            .into_iter()
            .filter(|term| seen.insert(term.clone()))
            .take(limit)
            .collect()
    }

    /// The keywords of `text` by TF-IDF (jieba's built-in IDF table; words it does not
    /// know get its median IDF), heaviest first. The first call loads the table (a
    /// blocking tenth of a second or so: callers run this off the runtime).
    pub fn keywords(&self, text: &str, limit: usize) -> Vec<(String, f64)> {
        let lowered = text.to_lowercase();
        self.tfidf
            .get_or_init(tf_idf)
            .extract_keywords(&self.jieba, &lowered, limit.max(1) * 2, Vec::new())
            .into_iter()
            .filter(|keyword| self.keep(keyword.keyword.trim()))
            .take(limit)
            .map(|keyword| (keyword.keyword, keyword.weight))
            .collect()
    }
}

/// jieba's TF-IDF extractor with its built-in IDF table and our stop words.
fn tf_idf() -> TfIdf {
    let mut tfidf = TfIdf::default();
    *tfidf.config_mut() = KeywordExtractConfig::builder()
        .set_stop_words(STOP_WORDS.iter().map(|word| (*word).to_owned()).collect())
        .min_keyword_length(1)
        .use_hmm(true)
        .build();
    tfidf
}

/// A character of a script written without spaces between words (CJK ideographs,
/// kana, Hangul syllables), where one character can be a word.
fn is_ideographic(character: char) -> bool {
    matches!(character,
        '\u{3040}'..='\u{30ff}' // kana
        | '\u{3400}'..='\u{4dbf}' // CJK extension A
        | '\u{4e00}'..='\u{9fff}' // CJK unified ideographs
        | '\u{ac00}'..='\u{d7af}' // Hangul syllables
        | '\u{f900}'..='\u{faff}' // CJK compatibility ideographs
        | '\u{20000}'..='\u{2ffff}') // CJK extensions B and later
}

/// Where `terms` occur in `text`, case-insensitively, as merged character ranges
/// (start inclusive, end exclusive), in order.
pub fn highlights(text: &str, terms: &[String]) -> Vec<(u32, u32)> {
    // The lower-cased text, with the index of the original character of each of its bytes
    // (lower-casing can change a character's length).
    let mut lowered = String::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len());
    for (index, character) in text.chars().enumerate() {
        for lower in character.to_lowercase() {
            let before = lowered.len();
            lowered.push(lower);
            origin.extend(std::iter::repeat_n(index, lowered.len() - before));
        }
    }
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for term in terms.iter().filter(|term| !term.is_empty()) {
        for (at, found) in lowered.match_indices(term.as_str()) {
            let start = origin[at];
            let end = origin[at + found.len() - 1] + 1;
            ranges.push((start as u32, end as u32));
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzer() -> Analyzer {
        match Analyzer::new("") {
            Ok(analyzer) => analyzer,
            Err(error) => panic!("the built-in dictionary loads: {error}"),
        }
    }

    fn terms(text: &str) -> Vec<String> {
        let mut terms: Vec<String> = analyzer().term_counts(text).into_keys().collect();
        terms.sort();
        terms
    }

    #[test]
    fn english_is_cut_by_word_lower_cased_without_stop_words() {
        assert_eq!(
            terms("My dog's name is Biscuit, and Biscuit likes the park."),
            ["biscuit", "dog", "likes", "name", "park"]
        );
        let counts = analyzer().term_counts("Biscuit biscuit BISCUIT");
        assert_eq!(counts.get("biscuit"), Some(&3));
    }

    #[test]
    fn chinese_is_segmented_and_keeps_single_character_words() {
        let doc = terms("我的猫叫豆豆");
        assert!(doc.contains(&"猫".to_owned()), "{doc:?}");
        assert!(doc.contains(&"叫".to_owned()), "{doc:?}");
        assert!(doc.contains(&"豆豆".to_owned()), "{doc:?}");
        assert!(!doc.contains(&"我".to_owned()) && !doc.contains(&"的".to_owned()));
        let query = analyzer().query_terms("我的猫叫什么名字？", 16);
        assert!(query.contains(&"猫".to_owned()), "{query:?}");
        assert!(query.contains(&"名字".to_owned()), "{query:?}");
        assert!(!query.contains(&"什么".to_owned()), "{query:?}");
        assert!(!query.iter().any(|term| term == "？"), "{query:?}");
    }

    #[test]
    fn search_mode_also_finds_the_words_inside_a_long_one() {
        let doc = terms("中华人民共和国成立了");
        assert!(doc.contains(&"中华".to_owned()), "{doc:?}");
        assert!(doc.contains(&"共和国".to_owned()), "{doc:?}");
    }

    #[test]
    fn mixed_text_yields_both_scripts() {
        let doc = terms("我在用Rust写一个gRPC服务");
        for expected in ["rust", "grpc", "服务"] {
            assert!(doc.contains(&expected.to_owned()), "{expected} in {doc:?}");
        }
    }

    #[test]
    fn keywords_are_weighted_heaviest_first() {
        let keywords = analyzer().keywords(
            "今天纽约的天气真好啊，京华大酒店的张尧经理吃了一只北京烤鸭。后天纽约的天气不好，昨天纽约的天气也不好，北京烤鸭真好吃",
            3,
        );
        let words: Vec<&str> = keywords.iter().map(|(word, _)| word.as_str()).collect();
        assert_eq!(words, ["北京烤鸭", "纽约", "天气"]);
        assert!(keywords.windows(2).all(|pair| pair[0].1 >= pair[1].1));
        let english = analyzer().keywords("The deployment failed: the deployment needs Redis", 2);
        assert_eq!(english[0].0, "deployment");
        assert!(english.iter().all(|(word, _)| word != "the"));
    }

    #[test]
    fn highlights_are_character_ranges_merged_in_order() {
        let text = "Ich heiße Ärger; ÄRGER über 猫猫";
        let ranges = highlights(text, &["ärger".to_owned(), "猫".to_owned()]);
        let chars: Vec<char> = text.chars().collect();
        let pieces: Vec<String> = ranges
            .iter()
            .map(|(start, end)| chars[*start as usize..*end as usize].iter().collect())
            .collect();
        assert_eq!(pieces, ["Ärger", "ÄRGER", "猫猫"]);
    }
}
