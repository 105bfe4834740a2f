//! "Did you mean" suggestions for names that were not found.

/// Up to three candidates close to `target`: first names under it when it is a scope of theirs
/// (`"bert/embeddings"` for `bert/embeddings/word_embeddings`, which no edit distance finds), then
/// a small edit distance, the same last path component, or the same scope.
pub(crate) fn close_names<'a>(
    target: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let last = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let target_last = last(target);
    let parent = |s: &str| s.rsplit_once('/').map(|(p, _)| p.to_string());
    let target_parent = parent(target);
    let limit = (target.chars().count() / 4).max(2);
    let scope = format!("{target}/");
    // A part's name (`emb/part_0`) where only the whole is there (`emb`, saved whole).
    let whole = target.rsplit_once("/part_").and_then(|(whole, i)| {
        (!i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())).then_some(whole)
    });
    let scored: Vec<(usize, &str)> = candidates
        .filter_map(|c| {
            if Some(c) == whole
                || (!target.is_empty() && !target.ends_with('/') && c.starts_with(&scope))
            {
                return Some((0, c));
            }
            let d = distance_within(target, c, limit);
            if d <= limit {
                Some((d + 1, c))
            } else if !target_last.is_empty() && last(c) == target_last {
                Some((limit + 2, c))
            } else if target_parent.is_some() && parent(c) == target_parent {
                // A sibling in the same scope.
                Some((limit + 3, c))
            } else {
                None
            }
        })
        .collect();
    best_three(scored)
}

/// The three candidates of lowest score, lowest first (then by name).
fn best_three(mut scored: Vec<(usize, &str)>) -> Vec<String> {
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// Up to three candidates a typo away from `target` (the edit distance tier of
/// [`close_names`] alone: a name that only shares its last component, `head/bias` for
/// `enc/dense/bias`, is no typo), closest first.
#[cfg_attr(not(feature = "candle"), allow(dead_code))]
pub(crate) fn typos<'a>(target: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<String> {
    // An eighth of the name: a misspelt module of a long BERT name, not the optimizer slots of
    // the name meant (`.../kernel/adam_m`, 7 edits further).
    let limit = (target.chars().count() / 8).max(2);
    let scored = candidates
        .map(|c| (distance_within(target, c, limit), c))
        .filter(|&(d, _)| d <= limit)
        .collect();
    best_three(scored)
}

/// Levenshtein distance over chars, or a lower bound of it above `limit` (names of lengths that
/// far apart are not compared).
fn distance_within(a: &str, b: &str, limit: usize) -> usize {
    let gap = a.chars().count().abs_diff(b.chars().count());
    if gap > limit {
        return gap;
    }
    strsim::levenshtein(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typo is a small edit distance, not a shared last component or scope.
    #[test]
    fn typos_are_edits_alone() {
        let names = [
            "enc/dense/bias",
            "enc/dense/kernel",
            "head/bias",
            "enc/dnse",
        ];
        assert_eq!(
            typos("enc/dnse/bias", names.into_iter()),
            vec!["enc/dense/bias"]
        );
        assert_eq!(typos("cls/bias", names.into_iter()), Vec::<String>::new());
        let bert = "bert/encoder/layer_0/attention/self/qeury/kernel";
        let slots = [
            "bert/encoder/layer_0/attention/self/query/kernel/adam_m",
            "bert/encoder/layer_0/attention/self/query/kernel",
        ];
        assert_eq!(typos(bert, slots.into_iter()), vec![slots[1]]);
        assert_eq!(
            close_names("cls/bias", names.into_iter()),
            vec!["enc/dense/bias", "head/bias"]
        );
    }

    /// A part's name suggests the whole, however far the names are apart.
    #[test]
    fn a_parts_name_suggests_the_whole() {
        let names = ["dense/kernel", "embedding/table/partx", "embedding/table"];
        assert_eq!(
            close_names("embedding/table/part_12", names.into_iter()),
            vec!["embedding/table", "embedding/table/partx"]
        );
        assert_eq!(
            close_names("emb/part_0", names.into_iter()),
            Vec::<String>::new()
        );
        assert_eq!(
            close_names("embedding/table/part_", names.into_iter()),
            vec!["embedding/table/partx"]
        );
    }

    #[test]
    fn suggestions() {
        let names = ["var1", "var2", "useful_scope/var4", "other/kernel"];
        assert_eq!(close_names("var5", names.into_iter()), vec!["var1", "var2"]);
        assert_eq!(
            close_names("model/kernel", names.into_iter()),
            vec!["other/kernel"]
        );
        assert!(close_names("completely_different_name", names.into_iter()).is_empty());
        // A scope of the names: the names under it first.
        assert_eq!(
            close_names("useful_scope", names.into_iter()),
            vec!["useful_scope/var4"]
        );
        assert_eq!(distance_within("kitten", "sitting", 3), 3);
    }

    #[test]
    fn a_long_name_is_not_close_to_a_shorter_unrelated_one() {
        // 43 characters allow a distance of 10; the other name is 9 shorter and 31 edits away,
        // and shares neither the last component nor the scope.
        let target = "encoder/layer_0/attention/self/query/kernel";
        let other = "decoder_block_9/mlp/dense_out/bias";
        assert_eq!(distance_within(target, other, 10), 31);
        // And one 10 shorter, the limit itself.
        let other_10 = "decoder_block_9/mlp/dense_ou/bias";
        assert!(close_names(target, [other, other_10].into_iter()).is_empty());
        // Seven characters shorter and 7 edits away: close.
        let near = "encoder/layer_0/attention/self/query";
        assert_eq!(close_names(target, [near].into_iter()), vec![near]);
    }

    #[test]
    fn names_under_the_scope_then_by_distance_then_same_last_part_then_siblings() {
        // "bert/embedding" (1 edit) sorts before the name under the scope by name, and is
        // suggested after it.
        let names = ["bert/embedding", "bert/embeddings/word_embeddings"];
        assert_eq!(
            close_names("bert/embeddings", names.into_iter()),
            vec!["bert/embeddings/word_embeddings", "bert/embedding"]
        );
        // 18 characters: within 4 edits. Then the same last part, then a sibling; three at most.
        let names = [
            "model/dense/bias",
            "other/kernel",
            "model/dense_1/kernel",
            "model/dense/kernal",
        ];
        let target = "model/dense/kernel";
        assert_eq!(
            close_names(target, names.into_iter()),
            vec!["model/dense/kernal", "model/dense_1/kernel", "other/kernel"]
        );
        assert_eq!(
            close_names(target, names[..2].iter().copied()),
            vec!["other/kernel", "model/dense/bias"]
        );
    }
}
