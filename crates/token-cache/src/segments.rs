//! How an assembled context (documents joined by a separator) is cut into segments that can be
//! tokenized and cached on their own without drift.
//!
//! BPE does not compose: tokenizing two texts apart and concatenating the IDs usually differs
//! from tokenizing the joined text, at the join. But a tokenizer's pre-tokenizer regex splits the
//! text into pieces and BPE never merges across pieces, so at a position where the regex always
//! splits ([`crate::tokenizer::CutRule`]) tokenizing the two sides apart is exact. At each join
//! we cut at such a position when there is one (just before or just after the separator);
//! otherwise the documents on both sides stay in one segment. Each segment's keys cover the
//! hashes of all its parts (see `keys`), so a segment is reused across requests exactly when the
//! same documents meet the same separator in the same way.

use std::ops::Range;

use crate::keys::{Digest32, LookupKey, Part, segment_key, segment_lookup_key};
use crate::tokenizer::CutRule;

/// One segment of a context: a run of parts (documents and separators, alternating, starting and
/// ending with a document of the context) that is tokenized as one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPlan {
    /// Where the segment is looked up (its content key comes later: [`Assembly::content_key`]).
    pub lookup: LookupKey,
    /// Indices into the part list: part `2i` is document `i`, part `2i + 1` the separator after it.
    pub parts: Range<usize>,
    /// The documents whose text starts in this segment, with the byte offset where each starts.
    pub documents: Vec<(usize, usize)>,
}

/// The context's documents (text and lookup hash) and separator.
#[derive(Debug, Clone, Copy)]
pub struct Assembly<'a> {
    pub texts: &'a [&'a str],
    pub lookups: &'a [LookupKey],
    pub separator: &'a str,
}

impl<'a> Assembly<'a> {
    fn part_count(&self) -> usize {
        (self.texts.len() * 2).saturating_sub(1)
    }

    pub fn part_text(&self, part: usize) -> &'a str {
        if part.is_multiple_of(2) {
            self.texts[part / 2]
        } else {
            self.separator
        }
    }

    /// The text of a run of parts, as tokenized.
    pub fn text(&self, parts: Range<usize>) -> String {
        let mut text = String::with_capacity(parts.clone().map(|p| self.part_text(p).len()).sum());
        for part in parts {
            text.push_str(self.part_text(part));
        }
        text
    }

    /// The last character before part boundary `boundary` (before part `boundary`), if any.
    fn char_before(&self, boundary: usize) -> Option<char> {
        (0..boundary)
            .rev()
            .find_map(|part| self.part_text(part).chars().next_back())
    }

    /// The characters from part boundary `boundary` to the end of the context.
    fn chars_after(&self, boundary: usize) -> impl Iterator<Item = char> + '_ {
        (boundary..self.part_count()).flat_map(|part| self.part_text(part).chars())
    }

    fn is_safe_cut(&self, boundary: usize, rule: CutRule) -> bool {
        match self.char_before(boundary) {
            Some(before) => {
                if self.chars_after(boundary).next().is_none() {
                    // Nothing after: the cut changes nothing.
                    return true;
                }
                rule.is_safe_cut(before, self.chars_after(boundary))
            }
            None => true,
        }
    }

    /// Cuts the context into segments: at each join, at the first exact cut position the rule
    /// allows (after the separator for newline rules, before it for whitespace rules), or not at all.
    pub fn plan(&self, tokenizer_id: &str, rule: Option<CutRule>) -> Vec<SegmentPlan> {
        let parts = self.part_count();
        if parts == 0 {
            return Vec::new();
        }
        let mut cuts = Vec::new();
        let joins = match rule {
            Some(_) => self.texts.len().saturating_sub(1),
            None => 0,
        };
        for join in 0..joins {
            let Some(rule) = rule else { break };
            let before_separator = 2 * join + 1;
            let after_separator = 2 * join + 2;
            let candidates = match rule {
                CutRule::AfterNewline | CutRule::AfterNewlineNotSlash => {
                    [after_separator, before_separator]
                }
                CutRule::BeforeWhitespace => [before_separator, after_separator],
            };
            if let Some(cut) = candidates
                .into_iter()
                .find(|boundary| self.is_safe_cut(*boundary, rule))
            {
                cuts.push(cut);
            }
        }
        cuts.push(parts);
        let mut plans = Vec::with_capacity(cuts.len());
        let mut start = 0;
        for end in cuts {
            let range = start..end;
            let key_parts = key_parts(range.clone(), self.lookups, 0);
            let mut offset = 0;
            let mut documents = Vec::new();
            for part in range.clone() {
                if part.is_multiple_of(2) {
                    documents.push((part / 2, offset));
                }
                offset += self.part_text(part).len();
            }
            plans.push(SegmentPlan {
                lookup: segment_lookup_key(tokenizer_id, self.separator, &key_parts),
                parts: range,
                documents,
            });
            start = end;
        }
        plans
    }

    /// The content key of `plan`'s segment, given the content hash of each of the context's
    /// documents by index (asked for those in the segment only).
    pub fn content_key(
        &self,
        tokenizer_id: &str,
        plan: &SegmentPlan,
        mut hash_of: impl FnMut(usize) -> Digest32,
    ) -> Digest32 {
        let first_document = plan.parts.start.div_ceil(2);
        let hashes: Vec<Digest32> = plan
            .parts
            .clone()
            .filter(|part| part.is_multiple_of(2))
            .map(|part| hash_of(part / 2))
            .collect();
        let parts = key_parts(plan.parts.clone(), &hashes, first_document);
        segment_key(tokenizer_id, self.separator, &parts)
    }
}

/// What a cached segment was tokenized from: its tokenizer, its text and where each of its
/// documents starts in it. The segment's tokens are a function of exactly these, so a request's
/// segment that [`SegmentSource::matches`] may be given them: an L1 hit is checked against the
/// text itself (a memory compare, ~1 µs per 30 KB) rather than by hashing the request's text
/// (SHA-256, ~14 µs per 30 KB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSource {
    tokenizer_id: Box<str>,
    text: Box<str>,
    document_offsets: Box<[usize]>,
}

impl SegmentSource {
    /// The source of `plan`'s segment, whose text (`Assembly::text` of its parts) is `text`.
    pub fn new(tokenizer_id: &str, plan: &SegmentPlan, text: String) -> Self {
        Self {
            tokenizer_id: tokenizer_id.into(),
            text: text.into_boxed_str(),
            document_offsets: plan.documents.iter().map(|(_, offset)| *offset).collect(),
        }
    }

    /// Whether `plan`'s segment of `assembly`, for `tokenizer_id`, is this text cut this way.
    pub fn matches(&self, tokenizer_id: &str, assembly: &Assembly<'_>, plan: &SegmentPlan) -> bool {
        if *self.tokenizer_id != *tokenizer_id
            || self.document_offsets.len() != plan.documents.len()
            || !plan
                .documents
                .iter()
                .zip(&self.document_offsets)
                .all(|((_, offset), stored)| offset == stored)
        {
            return false;
        }
        let mut rest = self.text.as_bytes();
        for part in plan.parts.clone() {
            let piece = assembly.part_text(part).as_bytes();
            match rest.split_at_checked(piece.len()) {
                Some((head, tail)) if head == piece => rest = tail,
                _ => return false,
            }
        }
        rest.is_empty()
    }

    /// Bytes held (for L1's weight).
    pub fn heap_bytes(&self) -> usize {
        self.tokenizer_id.len() + self.text.len() + size_of::<usize>() * self.document_offsets.len()
    }
}

/// The key parts of a run of parts: documents by their hash in `hashes`, which starts with
/// document `first_document` (lookup hashes of the whole context, or content hashes of a
/// segment's own documents).
fn key_parts<H>(parts: Range<usize>, hashes: &[H], first_document: usize) -> Vec<Part<'_, H>> {
    parts
        .map(|part| {
            if part.is_multiple_of(2) {
                Part::Document(&hashes[part / 2 - first_document])
            } else {
                Part::Separator
            }
        })
        .collect()
}

/// For each byte offset (ascending), the number of tokens that start before it (given each
/// token's start byte, ascending): the index of the first token of a document starting there.
pub fn token_starts(token_start_bytes: &[usize], byte_offsets: &[usize]) -> Vec<u32> {
    let mut starts = Vec::with_capacity(byte_offsets.len());
    let mut index = 0;
    for offset in byte_offsets {
        while index < token_start_bytes.len() && token_start_bytes[index] < *offset {
            index += 1;
        }
        starts.push(index as u32);
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_after_the_separator_when_the_next_document_starts_with_text() {
        let assembly = Assembly {
            texts: &["one.", "two", "\nthree"],
            lookups: &[[1u8; 16], [2u8; 16], [3u8; 16]],
            separator: "\n\n",
        };
        let plans = assembly.plan("t", Some(CutRule::AfterNewline));
        // "one.\n\n" | "two\n\n\nthree": the third document starts with a newline, so no cut there.
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].parts, 0..2);
        assert_eq!(plans[1].parts, 2..5);
        assert_eq!(plans[1].documents, vec![(1, 0), (2, 5)]);
        let plans = assembly.plan("t", Some(CutRule::BeforeWhitespace));
        // "one." | "\n\ntwo" | "\n\n three"
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[1].parts, 1..3);
        assert_eq!(plans[1].documents, vec![(1, 2)]);
    }

    #[test]
    fn the_same_document_in_the_same_position_gets_the_same_keys() {
        let lookups = [[1u8; 16], [2u8; 16], [9u8; 16]];
        let hashes = [[1u8; 32], [2u8; 32], [9u8; 32]];
        let a = Assembly {
            texts: &["x", "y"],
            lookups: &lookups[..2],
            separator: "\n\n",
        };
        let b = Assembly {
            texts: &["x", "z"],
            lookups: &[lookups[0], lookups[2]],
            separator: "\n\n",
        };
        let first = a.plan("t", Some(CutRule::AfterNewline));
        let second = b.plan("t", Some(CutRule::AfterNewline));
        assert_eq!(first[0].lookup, second[0].lookup);
        assert_ne!(first[1].lookup, second[1].lookup);
        let content = |assembly: &Assembly<'_>, plan, hashes: &[Digest32]| {
            assembly.content_key("t", plan, |document| hashes[document])
        };
        assert_eq!(
            content(&a, &first[0], &hashes[..2]),
            content(&b, &second[0], &[hashes[0], hashes[2]])
        );
        assert_ne!(
            content(&a, &first[1], &hashes[..2]),
            content(&b, &second[1], &[hashes[0], hashes[2]])
        );
        let other_tokenizer = a.plan("u", Some(CutRule::AfterNewline));
        assert_ne!(first[0].lookup, other_tokenizer[0].lookup);
        assert_ne!(
            content(&a, &first[0], &hashes[..2]),
            a.content_key("u", &other_tokenizer[0], |document| hashes[document])
        );
    }

    /// A segment's source matches exactly the same text cut into the same documents for the
    /// same tokenizer: an L1 value is never given to a request that differs in any of them.
    #[test]
    fn a_source_matches_only_the_same_text_documents_and_tokenizer() {
        let lookups = [[0u8; 16]; 3];
        let assembly = |texts: &'static [&'static str], separator: &'static str| Assembly {
            texts,
            lookups: &lookups[..texts.len()],
            separator,
        };
        let source_of = |assembly: &Assembly<'_>, tokenizer_id: &str| {
            let plan = assembly.plan(tokenizer_id, None).remove(0);
            let text = assembly.text(plan.parts.clone());
            (SegmentSource::new(tokenizer_id, &plan, text), plan)
        };
        let original = assembly(&["alpha beta", "gamma"], "\n\n");
        let (source, plan) = source_of(&original, "t");
        assert!(source.matches("t", &original, &plan));
        assert!(!source.matches("u", &original, &plan), "another tokenizer");
        for (texts, separator, what) in [
            (
                &["alpha betA", "gamma"][..],
                "\n\n",
                "one byte of a document",
            ),
            (&["alpha beta", "gamma"][..], "\n", "the separator"),
            (&["alpha beta", "gamm"][..], "\n\n", "a shorter document"),
            (&["alpha beta", "gamma!"][..], "\n\n", "a longer document"),
            (
                &["alpha", "beta\n\ngamma"][..],
                " ",
                "the same text cut elsewhere",
            ),
            (
                &["alpha beta", "gamma", "delta"][..],
                "\n\n",
                "one more document",
            ),
        ] {
            let other = assembly(texts, separator);
            let other_plan = other.plan("t", None).remove(0);
            assert!(!source.matches("t", &other, &other_plan), "{what}");
        }
        // An equal request, built afresh, matches.
        let afresh = assembly(&["alpha beta", "gamma"], "\n\n");
        let afresh_plan = afresh.plan("t", None).remove(0);
        assert!(source.matches("t", &afresh, &afresh_plan));
    }

    /// For every segment of contexts cut by both rules (segments that start or end with the
    /// separator among them): the content key covers exactly the segment's parts, and the
    /// segment's source matches it and nothing with a byte changed in any of its documents.
    #[test]
    fn every_cut_segment_has_its_content_key_and_source() {
        let texts = ["one.", "two", "\nthree", " four", "five\n"];
        let lookups = [[0u8; 16]; 5];
        let hashes: Vec<Digest32> = (0..5u8).map(|index| [index + 1; 32]).collect();
        let mut starting_with_separator = 0;
        for rule in [CutRule::AfterNewline, CutRule::BeforeWhitespace] {
            for separator in ["\n\n", " ", ""] {
                let assembly = Assembly {
                    texts: &texts,
                    lookups: &lookups,
                    separator,
                };
                let plans = assembly.plan("t", Some(rule));
                for plan in &plans {
                    starting_with_separator += usize::from(plan.parts.start % 2 == 1);
                    let whole = key_parts(plan.parts.clone(), &hashes, 0);
                    assert_eq!(
                        assembly.content_key("t", plan, |document| hashes[document]),
                        segment_key("t", separator, &whole),
                        "{rule:?} {separator:?} {plan:?}"
                    );
                    let text = assembly.text(plan.parts.clone());
                    let source = SegmentSource::new("t", plan, text);
                    assert!(source.matches("t", &assembly, plan));
                    for (document, _) in &plan.documents {
                        let mut edited: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
                        edited[*document].push('x');
                        let edited: Vec<&str> = edited.iter().map(String::as_str).collect();
                        let edited = Assembly {
                            texts: &edited,
                            ..assembly
                        };
                        assert!(
                            !source.matches("t", &edited, plan),
                            "{rule:?} {separator:?} {plan:?}: document {document} edited"
                        );
                    }
                }
            }
        }
        assert!(
            starting_with_separator > 0,
            "the cases include such segments"
        );
    }

    #[test]
    fn token_starts_count_tokens_starting_before_each_offset() {
        // tokens cover bytes [0,3) [3,5) [5,9)
        assert_eq!(token_starts(&[0, 3, 5], &[0, 3, 4, 9]), vec![0, 1, 2, 3]);
    }
}
