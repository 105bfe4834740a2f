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
    let mut scored: Vec<(usize, &str)> = candidates
        .filter_map(|c| {
            if !target.is_empty() && !target.ends_with('/') && c.starts_with(&scope) {
                return Some((0, c));
            }
            let d = edit_distance(target, c);
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
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// Levenshtein distance over chars (bounded inputs: names).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 8 {
        return a.len().abs_diff(b.len());
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
