//! Naming conventions: how a candle `Var`'s name and layout map to a TensorFlow variable.

use std::collections::HashSet;
use std::sync::Arc;

/// The TensorFlow variable a candle `Var` is, under a [`Convention`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TfName {
    /// Full TensorFlow variable name (scopes joined by `/`).
    pub name: String,
    /// The `Var` holds the (2-D) TensorFlow value transposed: a TF dense kernel is `[in, out]`,
    /// a candle `Linear` weight `[out, in]`.
    pub transposed: bool,
}

type NameFn = dyn Fn(&str, &[usize]) -> Option<TfName> + Send + Sync;

/// How candle names map to TensorFlow names; a value, so that no trainer writes rename rules.
///
/// * [`Convention::tf1`]: TF1 and BERT (`tf.compat.v1.layers`, Keras 1, Google's BERT).
/// * [`Convention::slashes`]: the candle name with `.` as `/`, nothing else.
/// * [`Convention::custom`]: the trainer's own function.
#[derive(Clone)]
pub struct Convention(Kind);

#[derive(Clone)]
enum Kind {
    Slashes,
    Tf1,
    Custom(Arc<NameFn>),
}

impl std::fmt::Debug for Convention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Slashes => "Convention::slashes",
            Kind::Tf1 => "Convention::tf1",
            Kind::Custom(_) => "Convention::custom",
        })
    }
}

impl Convention {
    /// TF1 / BERT names, from candle's (`candle-transformers`' BERT built under `vb.pp("bert")`,
    /// `candle_nn` layers):
    ///
    /// | candle | TensorFlow |
    /// |---|---|
    /// | `.` between components | `/` |
    /// | a number after a component: `layer.3` | `layer_3` |
    /// | `weight` of a 2-D `Linear` | `kernel`, transposed (`[out, in]` holds `[in, out]`) |
    /// | `weight` / `bias` of a module whose `weight` is 1-D (LayerNorm, BatchNorm) | `gamma` / `beta` |
    /// | `running_mean` / `running_var` | `moving_mean` / `moving_variance` |
    /// | `weight` of a 2-D module named `*embedding` or `*embeddings` | the module's own variable: `embeddings.word_embeddings.weight` is `embeddings/word_embeddings` |
    ///
    /// A `weight` of more than 2 dimensions (a convolution's: candle's `[out, in, kh, kw]`,
    /// TensorFlow's `[kh, kw, in, out]`) gets no name: tfckpt transposes 2-D values but permutes
    /// no others, and taken as is such a kernel would load in the wrong layout, silently where the
    /// shapes happen to agree. It keeps candle's initialization, and `map_existing` lists the
    /// checkpoint's kernel among the tensors no `Var` takes; a [`custom`](Self::custom)
    /// convention can name a `Var` whose layout is TensorFlow's. Every other name keeps its last
    /// component.
    pub fn tf1() -> Convention {
        Convention(Kind::Tf1)
    }

    /// The candle name with each `.` as `/`; nothing renamed or transposed.
    pub fn slashes() -> Convention {
        Convention(Kind::Slashes)
    }

    /// The trainer's own rule: `f(candle_name, shape)` gives the TensorFlow variable, or `None`
    /// for a `Var` that has none (it keeps candle's initialization).
    pub fn custom(f: impl Fn(&str, &[usize]) -> Option<TfName> + Send + Sync + 'static) -> Self {
        Convention(Kind::Custom(Arc::new(f)))
    }

    /// The TensorFlow variable of each candle `(name, shape)`, in order. A convention may look at
    /// the whole model (`tf1` tells a LayerNorm's `bias` by its `weight`).
    pub fn tf_names(&self, vars: &[(&str, &[usize])]) -> Vec<Option<TfName>> {
        match &self.0 {
            Kind::Slashes => vars
                .iter()
                .map(|(name, _)| {
                    Some(TfName {
                        name: name.replace('.', "/"),
                        transposed: false,
                    })
                })
                .collect(),
            Kind::Custom(f) => vars.iter().map(|(name, shape)| f(name, shape)).collect(),
            Kind::Tf1 => tf1(vars),
        }
    }
}

/// `module.leaf` as (`module`, `leaf`); a name without `.` is a leaf of the root.
fn split(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or(("", name))
}

fn tf1(vars: &[(&str, &[usize])]) -> Vec<Option<TfName>> {
    // Modules with a 1-D `weight` are normalizations: `weight`/`bias` are TF's `gamma`/`beta`.
    let norms: HashSet<&str> = vars
        .iter()
        .filter(|(name, shape)| split(name).1 == "weight" && shape.len() == 1)
        .map(|(name, _)| split(name).0)
        .collect();
    vars.iter()
        .map(|&(name, shape)| {
            let (module, leaf) = split(name);
            let norm = norms.contains(module);
            let embedding = shape.len() == 2
                && module
                    .rsplit('.')
                    .next()
                    .map(|m| m.to_ascii_lowercase())
                    .is_some_and(|m| m.ends_with("embedding") || m.ends_with("embeddings"));
            let (leaf, transposed) = match leaf {
                "weight" if norm => (Some("gamma"), false),
                "bias" if norm => (Some("beta"), false),
                "weight" if embedding => (None, false),
                "weight" if shape.len() > 2 => return None,
                "weight" => (Some("kernel"), shape.len() == 2),
                "running_mean" => (Some("moving_mean"), false),
                "running_var" => (Some("moving_variance"), false),
                other => (Some(other), false),
            };
            let mut tf = tf1_path(module);
            if let Some(leaf) = leaf {
                if !tf.is_empty() {
                    tf.push('/');
                }
                tf.push_str(leaf);
            }
            Some(TfName {
                name: tf,
                transposed,
            })
        })
        .collect()
}

/// `a.layer.3.b` as `a/layer_3/b`.
fn tf1_path(module: &str) -> String {
    let mut out = String::with_capacity(module.len());
    for c in module.split('.').filter(|c| !c.is_empty()) {
        let numeric = c.bytes().all(|b| b.is_ascii_digit());
        if !out.is_empty() {
            out.push(if numeric { '_' } else { '/' });
        }
        out.push_str(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf1_names_bert() {
        let vars: &[(&str, &[usize])] = &[
            ("bert.embeddings.word_embeddings.weight", &[30, 8]),
            ("bert.embeddings.LayerNorm.weight", &[8]),
            ("bert.embeddings.LayerNorm.bias", &[8]),
            ("bert.encoder.layer.11.attention.self.query.weight", &[8, 8]),
            ("bert.encoder.layer.11.attention.self.query.bias", &[8]),
            ("bert.pooler.dense.weight", &[8, 8]),
            ("classifier.weight", &[2, 8]),
            ("bn.running_var", &[8]),
            ("conv.weight", &[4, 3, 3, 3]),
            ("albert.embedding_hidden_mapping_in.weight", &[8, 4]),
        ];
        let names: Vec<(String, bool)> = Convention::tf1()
            .tf_names(vars)
            .into_iter()
            .map(|n| n.map_or(("(none)".into(), false), |n| (n.name, n.transposed)))
            .collect();
        let want = [
            ("bert/embeddings/word_embeddings", false),
            ("bert/embeddings/LayerNorm/gamma", false),
            ("bert/embeddings/LayerNorm/beta", false),
            ("bert/encoder/layer_11/attention/self/query/kernel", true),
            ("bert/encoder/layer_11/attention/self/query/bias", false),
            ("bert/pooler/dense/kernel", true),
            ("classifier/kernel", true),
            ("bn/moving_variance", false),
            // A convolution's kernel would need a permutation: no name (a test in
            // tests/candle.rs shows one of equal shapes left as candle made it).
            ("(none)", false),
            ("albert/embedding_hidden_mapping_in/kernel", true),
        ];
        assert_eq!(names.len(), want.len());
        for (got, want) in names.iter().zip(want) {
            assert_eq!((got.0.as_str(), got.1), want);
        }
        assert_eq!(
            Convention::slashes().tf_names(&[("a.b.0", &[1])])[0],
            Some(TfName {
                name: "a/b/0".into(),
                transposed: false
            })
        );
    }
}
