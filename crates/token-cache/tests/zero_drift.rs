//! Zero drift, proven by property tests: for random documents and separators (unicode,
//! whitespace runs, digits, punctuation, newlines, and separators that merge with their
//! neighbours), the IDs GetContext returns equal tokenizing the assembled text afresh, cold and
//! from the cache, for every tiktoken encoding; and every cut position the cut rules allow really
//! splits the tokens exactly.

use proptest::prelude::*;
use tollgate_token_cache::TokenCacheConfig;
use tollgate_token_cache::service::{ContextRequest, DocumentInput, TokenCacheService};
use tollgate_token_cache::tokenizer::TokenizerRegistry;

const ENCODINGS: [&str; 4] = ["cl100k_base", "o200k_base", "p50k_base", "r50k_base"];

/// Fragments chosen to hit the pre-tokenizer patterns' corners: contractions, letter runs of
/// every case, digit runs (split in threes), punctuation with trailing newlines and slashes,
/// whitespace runs of every kind, combining marks, CJK, emoji, special-token text.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("the".to_owned()),
        Just("The".to_owned()),
        Just("ABC".to_owned()),
        Just("'s".to_owned()),
        Just("'LL".to_owned()),
        Just(" don't".to_owned()),
        Just("12345".to_owned()),
        Just("7".to_owned()),
        Just(".".to_owned()),
        Just("...".to_owned()),
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just("(".to_owned()),
        Just(" ".to_owned()),
        Just("  ".to_owned()),
        Just("\t".to_owned()),
        Just("\n".to_owned()),
        Just("\n\n".to_owned()),
        Just("\r\n".to_owned()),
        Just(" \n".to_owned()),
        Just("\u{a0}".to_owned()),
        Just("\u{2003}".to_owned()),
        Just("é".to_owned()),
        Just("e\u{301}".to_owned()),
        Just("日本語".to_owned()),
        Just("🦀".to_owned()),
        Just("<|endoftext|>".to_owned()),
        "[a-zA-Z0-9 .,;:!?'\"/\\\\\n\t-]{1,12}",
        "\\PC{1,6}",
    ]
}

fn text(max_fragments: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 0..max_fragments).prop_map(|parts| parts.concat())
}

fn separator() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\n\n".to_owned()),
        Just("\n".to_owned()),
        Just(String::new()),
        Just(" ".to_owned()),
        Just("\n\n---\n\n".to_owned()),
        Just(". ".to_owned()),
        Just("'".to_owned()),
        Just("\n/".to_owned()),
        text(3),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    /// GetContext equals tokenize(assembled)[..max_tokens], cold and warm, with spans that
    /// partition the IDs in document order.
    #[test]
    fn get_context_equals_fresh_tokenization(
        documents in proptest::collection::vec(text(8), 1..6),
        separator in separator(),
        encoding in proptest::sample::select(ENCODINGS.to_vec()),
        max_tokens in prop_oneof![Just(0usize), 1usize..40],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let service = TokenCacheService::new(TokenCacheConfig::default(), None).unwrap();
        let tokenizer = TokenizerRegistry::builtin().resolve(encoding).unwrap();
        let assembled = documents.join(&separator);
        let fresh = tokenizer.encode(&assembled).unwrap();
        let request = ContextRequest {
            collection: "c".into(),
            documents: documents
                .iter()
                .enumerate()
                .map(|(i, text)| DocumentInput::Inline { id: format!("d{i}"), text: text.clone() })
                .collect(),
            tokenizer: encoding.into(),
            max_tokens: (max_tokens > 0).then_some(max_tokens),
            separator: separator.clone(),
        };
        let expected_len = if max_tokens > 0 { fresh.len().min(max_tokens) } else { fresh.len() };
        for round in ["cold", "warm"] {
            let context = runtime.block_on(service.get_context(request.clone())).unwrap();
            prop_assert_eq!(&context.token_ids[..], &fresh[..expected_len], "{} round", round);
            prop_assert_eq!(context.untruncated_tokens, fresh.len() as u64);
            prop_assert_eq!(context.truncated, expected_len < fresh.len());
            let mut previous_end = 0;
            for span in &context.spans {
                prop_assert_eq!(span.start, previous_end);
                prop_assert!(span.end >= span.start);
                previous_end = span.end;
            }
            prop_assert_eq!(previous_end, expected_len as u64);
        }
        // Reordering reuses the per-document segments and still equals a fresh tokenization.
        let mut reversed = request.clone();
        reversed.documents.reverse();
        let reversed_text = documents.iter().rev().cloned().collect::<Vec<_>>().join(&separator);
        let fresh_reversed = tokenizer.encode(&reversed_text).unwrap();
        let context = runtime.block_on(service.get_context(reversed)).unwrap();
        let expected_len = if max_tokens > 0 { fresh_reversed.len().min(max_tokens) } else { fresh_reversed.len() };
        prop_assert_eq!(&context.token_ids[..], &fresh_reversed[..expected_len]);
    }

    /// Every position the cut rule allows splits the tokens exactly. The sides are random text
    /// with endings and beginnings that make cut positions likely (newlines, indentation, slashes).
    #[test]
    fn allowed_cuts_split_tokens_exactly(
        left in (text(10), prop_oneof![Just("\n"), Just(".\n\n"), Just(" \n"), Just("\n\t\n"), Just("a"), Just("?"), Just("\r\n"), Just("")])
            .prop_map(|(text, end)| format!("{text}{end}")),
        right in (prop_oneof![Just("x"), Just("  x"), Just("\t/"), Just("/"), Just(" 's"), Just("12"), Just(" "), Just("\u{a0}"), Just("")], text(10))
            .prop_map(|(start, text)| format!("{start}{text}")),
        encoding in proptest::sample::select(ENCODINGS.to_vec()),
    ) {
        let tokenizer = TokenizerRegistry::builtin().resolve(encoding).unwrap();
        let Some(before) = left.chars().next_back() else {
            return Ok(());
        };
        prop_assume!(!right.is_empty() && tokenizer.cut_rule().unwrap().is_safe_cut(before, right.chars()));
        let whole = tokenizer.encode(&format!("{left}{right}")).unwrap();
        let mut parts = tokenizer.encode(&left).unwrap();
        parts.extend(tokenizer.encode(&right).unwrap());
        prop_assert_eq!(whole, parts);
    }
}

/// The same, biased to the cut positions themselves: a left side ending in each kind of
/// character and a right side starting with each kind.
#[test]
fn allowed_cuts_split_exactly_at_every_character_pair() {
    let registry = TokenizerRegistry::builtin();
    let endings = [
        "word",
        "word.",
        "word. ",
        "word\n",
        "word.\n\n",
        "x \n",
        "x\n\n",
        "1\n",
        "x\r\n",
        "x\n \n",
        "x  ",
        "a'",
        "x\t\n",
        "x\u{a0}\n",
    ];
    let starts = [
        "Next",
        "next",
        " next",
        "\nnext",
        "/path",
        "123",
        "'s",
        ".",
        "  x",
        "\tx",
        "日本",
        "🦀",
        "\u{301}x",
        "<|endoftext|>",
    ];
    let mut checked = 0;
    for encoding in ENCODINGS {
        let tokenizer = registry.resolve(encoding).unwrap();
        for left in endings {
            for right in starts {
                let before = left.chars().next_back().unwrap();
                if !tokenizer
                    .cut_rule()
                    .unwrap()
                    .is_safe_cut(before, right.chars())
                {
                    continue;
                }
                checked += 1;
                let whole = tokenizer.encode(&format!("{left}{right}")).unwrap();
                let mut parts = tokenizer.encode(left).unwrap();
                parts.extend(tokenizer.encode(right).unwrap());
                assert_eq!(whole, parts, "{encoding}: {left:?} | {right:?}");
            }
        }
    }
    assert!(checked > 50, "only {checked} pairs were cut positions");
}
