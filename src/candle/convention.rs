//! Naming conventions: how a candle `Var`'s name and layout map to a TensorFlow variable.

use std::collections::HashSet;
use std::sync::Arc;

use crate::reader::object_names::{Found, ObjectNames};

/// The TensorFlow variable a candle `Var` is, under a [`Convention`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TfName {
    /// Full TensorFlow variable name (scopes joined by `/`).
    pub name: String,
    /// The `Var` holds the TensorFlow value transposed: a TF dense kernel is `[in, out]`, a
    /// candle `Linear` weight `[out, in]`; a TF convolution kernel is `[spatial..., in, out]`
    /// (`[kh, kw, in, out]`), a candle convolution weight `[out, in, spatial...]` (`[out, in, kh,
    /// kw]`). So also a transposed convolution's: TF `[kh, kw, out, in]`, candle `[in, out, kh,
    /// kw]`. A `Var` of fewer than 2 axes cannot hold a value transposed: an error naming it.
    ///
    /// A transposed `Var` `[out, 1, spatial...]` is declared `[spatial..., 1, out]`, and
    /// [`init_from_checkpoint`](super::CandleInit::init_from_checkpoint) also takes a tensor
    /// `[spatial..., in, multiplier]` with `in * multiplier = out` for it: a depthwise kernel,
    /// whose output channel `i * multiplier + k` is the `Var`'s channel of that number in a
    /// convolution of `in` groups (candle's `conv2d(.., groups = in)`, as PyTorch lays it out).
    /// The bytes are the same for any such shape; the variable takes the tensor's shape (and
    /// [`save_checkpoint`](super::CandleInit::save_checkpoint) writes it so), and the
    /// [`InitReport`](crate::InitReport)'s `warnings` say so for each such `Var`: for a
    /// convolution of one input channel (which a `Var` `[out, 1, spatial...]` may be too) such a
    /// tensor is the wrong one, which TensorFlow would refuse.
    pub transposed: bool,
}

type NameFn = dyn Fn(&str, &[usize]) -> Option<TfName> + Send + Sync;
type AdjustFn = dyn Fn(&str, &[usize], Option<TfName>) -> Option<TfName> + Send + Sync;

/// How candle names map to TensorFlow names; a value, so that no trainer writes rename rules.
///
/// * [`Convention::tf1`]: TF1 and BERT (`tf.compat.v1.layers`, Keras 1, Google's BERT).
/// * [`Convention::slashes`]: the candle name with `.` as `/`, nothing else.
/// * [`Convention::custom`]: the trainer's own function.
/// * [`Convention::tf1_with`]: `tf1`'s names, adjusted by the trainer's function.
/// * [`Convention::keras`]: Keras 2 and 3 layers saved as TF2 objects, through the save's object
///   graph.
#[derive(Clone)]
pub struct Convention(Kind);

#[derive(Clone)]
enum Kind {
    Slashes,
    Tf1,
    Custom(Arc<NameFn>),
    Tf1With(Arc<AdjustFn>),
    Keras(Arc<ObjectNames>),
}

impl std::fmt::Debug for Convention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Slashes => "Convention::slashes",
            Kind::Tf1 => "Convention::tf1",
            Kind::Custom(_) => "Convention::custom",
            Kind::Tf1With(_) => "Convention::tf1_with",
            Kind::Keras(_) => "Convention::keras",
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
    /// | `weight` of a convolution (3 or more dimensions) | `kernel`, transposed (`[out, in, kh, kw]` holds `[kh, kw, in, out]`; see [`TfName::transposed`]) |
    /// | `weight` / `bias` of a module whose `weight` is 1-D (LayerNorm, BatchNorm) | `gamma` / `beta` |
    /// | `running_mean` / `running_var` | `moving_mean` / `moving_variance` |
    /// | `weight` of a 2-D module named `*embedding` or `*embeddings`, without a `bias` | the module's own variable: `embeddings.word_embeddings.weight` is `embeddings/word_embeddings` (with a `bias` it is a `Linear`: `time_embedding.weight` is `time_embedding/kernel`) |
    /// | BERT's next-sentence head `cls.seq_relationship.weight` / `.bias` | `cls/seq_relationship/output_weights` (not transposed: Google's BERT stores it `[2, hidden]`) / `output_bias` |
    /// | BERT's masked-LM bias `cls.predictions.bias` (or `cls.predictions.decoder.bias`) | `cls/predictions/output_bias` |
    ///
    /// Google's masked-LM decoder weight is the word embedding table itself (tied), which one
    /// TensorFlow variable cannot give two `Var`s under a convention: `cls.predictions.decoder.weight`
    /// is named `cls/predictions/decoder/kernel`, which no Google checkpoint holds, so
    /// `map_existing` lists it as not in the checkpoint. Tie it in the model, or load the table
    /// into it: the table is `[vocab, hidden]` as the decoder's `Var` is, so name that `Var`
    /// untransposed with [`tf1_with`](Self::tf1_with) (`TfName { name:
    /// "cls/predictions/decoder/kernel".into(), transposed: false }`), then add
    /// `("bert/embeddings/word_embeddings", Target::name("cls/predictions/decoder/kernel"))` to
    /// the assignment map. (Mapped to `tf1`'s own name for it, which is transposed, the table
    /// would fail the shape check, or load transposed where vocab = hidden.)
    ///
    /// A convolution's `weight` and `bias` load as a `Linear`'s do, the weight held as candle
    /// holds it (TF1's `tf.layers.conv2d`, Keras's `Conv1D`/`Conv2D`/`Conv3D`, and, its in and out
    /// channels swapped on both sides, `Conv2DTranspose` into `conv_transpose2d`). A depthwise
    /// convolution's kernel (TensorFlow's `[kh, kw, in, multiplier]`, `tf.layers`'s
    /// `depthwise_kernel`, slim's `depthwise_weights`, Keras's `DepthwiseConv2D` `kernel`) loads
    /// into candle's weight of a convolution grouped by input channel, `[in * multiplier, 1, kh,
    /// kw]`: see [`TfName::transposed`] (name it with [`tf1_with`](Self::tf1_with) where the
    /// checkpoint's name is not `kernel`). Every other name keeps its last component.
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

    /// [`tf1`](Self::tf1)'s names, each passed through the trainer's `f(candle_name, shape,
    /// tf1_name)`, which returns the name to use (`tf1_name` as it is, another, or `None` to keep
    /// candle's initialization). `tf1_name` is computed over the whole model, as `tf1` computes
    /// it (a LayerNorm's `bias` is `beta` because of its `weight`), which a [`custom`](Self::custom)
    /// function calling `tf1` on one `Var` at a time cannot see.
    ///
    /// ```
    /// # use tfckpt::candle::{Convention, TfName};
    /// // TF2 object-based keys: `layers_0/kernel` is `layers/0/kernel/.ATTRIBUTES/VARIABLE_VALUE`.
    /// let tf2 = Convention::tf1_with(|_, _, tf1| {
    ///     let tf1 = tf1?;
    ///     Some(TfName {
    ///         name: format!("{}/.ATTRIBUTES/VARIABLE_VALUE", tf1.name.replace("layers_", "layers/")),
    ///         ..tf1
    ///     })
    /// });
    /// let names = tf2.tf_names(&[("ln.weight", &[4]), ("ln.bias", &[4])]);
    /// assert_eq!(names[1].as_ref().unwrap().name, "ln/beta/.ATTRIBUTES/VARIABLE_VALUE");
    /// ```
    pub fn tf1_with(
        f: impl Fn(&str, &[usize], Option<TfName>) -> Option<TfName> + Send + Sync + 'static,
    ) -> Self {
        Convention(Kind::Tf1With(Arc::new(f)))
    }

    /// Keras layers saved as TF2 objects (Keras 3 through `tf.train.Checkpoint`, Keras 2's
    /// `model.save_weights` in TensorFlow's format), named through the save's object graph
    /// ([`Checkpoint::object_names`](crate::Checkpoint::object_names)): each `Var` gets the
    /// checkpoint key of the Keras variable it is. Build the candle model of the Keras model's
    /// layer kinds, under names the graph has for their variables, either of:
    ///
    /// * the variables' TensorFlow names ([`ObjectNames::iter`] lists them), which are Keras 3's
    ///   variable paths for the layers of a functional model (without the model's name) or a
    ///   `Sequential` (with it: `sequential.enc` for `sequential/enc/kernel`), and Keras 2's
    ///   variable names without `:0`;
    /// * the Python attribute paths from the saved model (`block.up` for `self.block.up`;
    ///   [`ObjectNames::paths`] lists them): the way to a Keras 3 subclassed model or custom
    ///   layer, whose sub-layers' variables TensorFlow names after the outer layer alone
    ///   (`net/kernel` for every kernel of the model). A custom layer of a functional model is
    ///   reached through the model's list of operations (`_operations.2.up`).
    ///
    /// [`map_existing`](super::CandleInit::map_existing) fails naming the scope where the model
    /// lacks one of the graph's names or adds one to them (the model's name `net`, say, which
    /// attribute paths do not have):
    ///
    /// ```no_run
    /// # use tfckpt::candle::{CandleInit, Convention};
    /// # let varmap = candle_nn::VarMap::new();
    /// let names = tfckpt::Checkpoint::open("/data/keras/ckpt-1")?.object_names()?;
    /// let mut init = CandleInit::from_varmap(&varmap, &Convention::keras(names))?;
    /// let found = init.map_existing("/data/keras/ckpt-1")?;
    /// init.init_from_checkpoint("/data/keras/ckpt-1", &found.map)?;
    /// init.initialize(&Default::default())?;
    /// # Ok::<(), tfckpt::Error>(())
    /// ```
    ///
    /// The names are [`tf1`](Self::tf1)'s, with the one the graph holds where a candle layer can
    /// be either of two Keras ones:
    ///
    /// | candle | Keras |
    /// |---|---|
    /// | `weight` of a 2-D module without `bias` | `embeddings` of an `Embedding` (as it is), or `kernel` of a `Dense(use_bias=False)` (transposed): whichever the graph holds, whatever the layer's name (so a candle `Embedding` built where Keras has a `Dense` takes its kernel transposed, which only a square kernel's shape allows) |
    /// | `weight` of a 1-D module without `bias` (`candle_nn::rms_norm`) | `gamma`, or `scale` (`RMSNormalization`) |
    /// | `weight` / `bias` of a 2-D `Linear`, of a LayerNorm, `running_mean` / `running_var` | `kernel` (transposed) / `bias`, `gamma` / `beta`, `moving_mean` / `moving_variance`, as `tf1` |
    ///
    /// Each name is asked both ways, as a variable's name and as an attribute path (the last
    /// attribute as it is or with Keras 3's leading `_`: `_kernel`), from the saved object or
    /// from one of its children (`model` of `tf.train.Checkpoint(model=net)`), and the answers
    /// taken together. A convolution's kernel loads into candle's layout, as under `tf1` (Keras
    /// stores a `Conv1D` kernel `[k, in, out]`, candle `[out, in, k]`). Of a `Var`'s names, the
    /// first the graph has decides: where it has none of them, the `Var` keeps `tf1`'s name, which no object-based
    /// save holds, and [`map_existing`](super::CandleInit::map_existing) lists it as not in the
    /// checkpoint (a fresh head, or a layer named otherwise than in Keras: a near miss where the
    /// name is close to one of the graph's left over); where the name is several variables'
    /// (two layers of one name in two models), or a key the checkpoint lacks, the `Var` keeps
    /// that name and `map_existing` lists it among the
    /// [`ambiguous`](super::ExistingMap::ambiguous) ones, with the keys. So does a name that is
    /// one variable's name and another's attribute path (`self.proj` named `dense` by Keras,
    /// `self.dense` named `dense_1`: `dense.weight` is both): map such a `Var` by hand, its key
    /// from [`ObjectNames::paths`]. A layer may then load in part (its `bias` resolved, its
    /// `weight` ambiguous); the report names what did not.
    pub fn keras(names: ObjectNames) -> Convention {
        Convention(Kind::Keras(Arc::new(names)))
    }

    /// The object graph a [`keras`](Self::keras) convention names by.
    pub(crate) fn object_names(&self) -> Option<&Arc<ObjectNames>> {
        match &self.0 {
            Kind::Keras(names) => Some(names),
            _ => None,
        }
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
            Kind::Tf1With(f) => vars
                .iter()
                .zip(tf1(vars))
                .map(|((name, shape), tf)| f(name, shape, tf))
                .collect(),
            Kind::Keras(names) => keras(vars, names),
        }
    }
}

/// `module.leaf` as (`module`, `leaf`); a name without `.` is a leaf of the root.
fn split(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or(("", name))
}

fn tf1(vars: &[(&str, &[usize])]) -> Vec<Option<TfName>> {
    // Modules with a 1-D `weight` are normalizations: `weight`/`bias` are TF's `gamma`/`beta`.
    let norms = modules_with(vars, "weight", |dims| dims == 1);
    // Modules with a `bias`: a `Linear`, never an `Embedding` (which has none).
    let biased = modules_with(vars, "bias", |_| true);
    vars.iter()
        .map(|&(name, shape)| {
            let (module, leaf) = split(name);
            let norm = norms.contains(module);
            let embedding = shape.len() == 2
                && !biased.contains(module)
                && module
                    .rsplit('.')
                    .next()
                    .map(|m| m.to_ascii_lowercase())
                    .is_some_and(|m| m.ends_with("embedding") || m.ends_with("embeddings"));
            // Google's BERT heads, kept as plain variables rather than layers.
            let comps: Vec<&str> = module.split('.').collect();
            let nsp = comps.ends_with(&["cls", "seq_relationship"]);
            let mlm_bias = leaf == "bias"
                && (comps.ends_with(&["cls", "predictions"])
                    || comps.ends_with(&["cls", "predictions", "decoder"]));
            if mlm_bias {
                let scope = module.strip_suffix(".decoder").unwrap_or(module);
                return Some(TfName {
                    name: format!("{}/output_bias", tf1_path(scope)),
                    transposed: false,
                });
            }
            let (leaf, transposed) = match leaf {
                "weight" if nsp => (Some("output_weights"), false),
                "bias" if nsp => (Some("output_bias"), false),
                "weight" if norm => (Some("gamma"), false),
                "bias" if norm => (Some("beta"), false),
                "weight" if embedding => (None, false),
                "weight" => (Some("kernel"), shape.len() >= 2),
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

/// [`Convention::keras`]: each `Var`'s candidate names, `tf1`'s first, each asked of the object
/// graph as a variable's name and as an attribute path (the candle module's components and the
/// leaf). The first the graph knows gives its key, or, where the graph gives it several keys or
/// one the checkpoint lacks, leaves the `Var` under that name (a later candidate would be another
/// layer's variable).
fn keras(vars: &[(&str, &[usize])], names: &ObjectNames) -> Vec<Option<TfName>> {
    let biased = modules_with(vars, "bias", |_| true);
    vars.iter()
        .zip(tf1(vars))
        .map(|(&(name, shape), tf)| {
            let tf = tf?;
            let (module, leaf) = split(name);
            let scope = tf1_path(module);
            let candidate = |leaf: &str, transposed| TfName {
                name: match scope.is_empty() {
                    true => leaf.to_string(),
                    false => format!("{scope}/{leaf}"),
                },
                transposed,
            };
            // A layer without a bias may be either of two Keras ones.
            let others: &[(&str, bool)] = match (leaf, biased.contains(module), shape.len()) {
                ("weight", false, 2) => &[("embeddings", false), ("kernel", true)],
                ("weight", false, 1) => &[("gamma", false), ("scale", false)],
                _ => &[],
            };
            let mut candidates = vec![tf];
            for &(leaf, transposed) in others {
                let c = candidate(leaf, transposed);
                if !candidates.iter().any(|k| k.name == c.name) {
                    candidates.push(c);
                }
            }
            let first = candidates[0].clone();
            for c in candidates {
                match names.find(&c.name, attribute_path(name, &c.name).as_deref()) {
                    Found::Nothing => continue,
                    Found::Key(key) => {
                        return Some(TfName {
                            name: key.to_string(),
                            transposed: c.transposed,
                        })
                    }
                    Found::Unusable(_) => return Some(c),
                }
            }
            Some(first)
        })
        .collect()
}

/// The attribute path [`Convention::keras`] asks the object graph for, for the candle `Var`
/// `candle` under the name `tf`: the candle module's components (`layers.0` stays two), then
/// `tf`'s leaf after `tf1`'s scope of that module (none for a name of another form: BERT's
/// heads).
pub(crate) fn attribute_path<'a>(candle: &'a str, tf: &'a str) -> Option<Vec<&'a str>> {
    let (module, _) = split(candle);
    let scope = tf1_path(module);
    let leaf = match scope.is_empty() {
        true => tf,
        false => tf.strip_prefix(scope.as_str())?.strip_prefix('/')?,
    };
    let mut path: Vec<&str> = module.split('.').filter(|m| !m.is_empty()).collect();
    path.push(leaf);
    Some(path)
}

/// The modules with a `leaf` variable whose number of dimensions `dims` accepts.
fn modules_with<'a>(
    vars: &[(&'a str, &[usize])],
    leaf: &str,
    dims: impl Fn(usize) -> bool,
) -> HashSet<&'a str> {
    vars.iter()
        .filter(|(name, shape)| split(name).1 == leaf && dims(shape.len()))
        .map(|(name, _)| split(name).0)
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
            ("conv.bias", &[4]),
            ("albert.embedding_hidden_mapping_in.weight", &[8, 4]),
            // A `Linear` named like an embedding (it has a bias) is a dense layer.
            ("unet.time_embedding.weight", &[8, 4]),
            ("unet.time_embedding.bias", &[8]),
            // Google's pre-training heads (run_pretraining.py).
            ("cls.seq_relationship.weight", &[2, 8]),
            ("cls.seq_relationship.bias", &[2]),
            ("cls.predictions.bias", &[30]),
            ("cls.predictions.decoder.bias", &[30]),
            ("cls.predictions.decoder.weight", &[30, 8]),
            ("cls.predictions.transform.dense.weight", &[8, 8]),
            ("cls.predictions.transform.LayerNorm.weight", &[8]),
            ("cls.predictions.transform.LayerNorm.bias", &[8]),
            // Only BERT's own head scopes are read as those heads.
            ("xcls.seq_relationship.weight", &[2, 8]),
            ("cls.seq_relationship.proj.weight", &[2, 8]),
            ("my.cls.predictions.bias", &[30]),
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
            // A convolution's kernel, held as candle holds it, and its bias.
            ("conv/kernel", true),
            ("conv/bias", false),
            ("albert/embedding_hidden_mapping_in/kernel", true),
            ("unet/time_embedding/kernel", true),
            ("unet/time_embedding/bias", false),
            ("cls/seq_relationship/output_weights", false),
            ("cls/seq_relationship/output_bias", false),
            ("cls/predictions/output_bias", false),
            ("cls/predictions/output_bias", false),
            ("cls/predictions/decoder/kernel", true),
            ("cls/predictions/transform/dense/kernel", true),
            ("cls/predictions/transform/LayerNorm/gamma", false),
            ("cls/predictions/transform/LayerNorm/beta", false),
            ("xcls/seq_relationship/kernel", true),
            ("cls/seq_relationship/proj/kernel", true),
            ("my/cls/predictions/output_bias", false),
        ];
        assert_eq!(names.len(), want.len());
        for (got, want) in names.iter().zip(want) {
            assert_eq!((got.0.as_str(), got.1), want);
        }
        // tf1_with sees tf1's names over the whole model: a LayerNorm's bias is still `beta`.
        let upper = Convention::tf1_with(|candle, _, tf| {
            let tf = tf.filter(|_| candle != "drop.weight")?;
            Some(TfName {
                name: tf.name.to_uppercase(),
                transposed: false,
            })
        });
        let got = upper.tf_names(&[
            ("ln.weight", &[4]),
            ("ln.bias", &[4]),
            ("drop.weight", &[4, 4]),
        ]);
        assert_eq!(got[1].as_ref().map(|t| t.name.as_str()), Some("LN/BETA"));
        assert_eq!(got[2], None);
        assert_eq!(format!("{upper:?}"), "Convention::tf1_with");
        assert_eq!(
            Convention::slashes().tf_names(&[("a.b.0", &[1])])[0],
            Some(TfName {
                name: "a/b/0".into(),
                transposed: false
            })
        );
    }

    /// `Convention::keras` on a hand-made graph: the first candidate the graph knows decides,
    /// also where it cannot be resolved (a later one would be another layer's variable).
    #[test]
    fn keras_takes_the_first_name_the_graph_knows() {
        let names = ObjectNames::from_pairs(&[
            ("both/kernel", "k/both/kernel"),
            ("both/embeddings", "k/both/embeddings"),
            ("word_embeddings/embeddings", "k/word"),
            ("twice/kernel", "k/twice/kernel/0"),
            ("twice/kernel", "k/twice/kernel/1"),
            ("twice/embeddings", "k/twice/embeddings"),
            ("norm/gamma", "k/norm/gamma/0"),
            ("norm/gamma", "k/norm/gamma/1"),
            ("norm/scale", "k/norm/scale"),
            ("rms/scale", "k/rms/scale"),
        ]);
        let keras = Convention::keras(names);
        assert_eq!(format!("{keras:?}"), "Convention::keras");
        let got: Vec<Option<(String, bool)>> = keras
            .tf_names(&[
                ("both.weight", &[3, 2]),
                ("word_embeddings.weight", &[30, 8]),
                ("twice.weight", &[3, 2]),
                ("norm.weight", &[4]),
                ("rms.weight", &[4]),
                ("fresh.weight", &[2, 2]),
                ("conv.weight", &[2, 2, 2]),
            ])
            .into_iter()
            .map(|n| n.map(|n| (n.name, n.transposed)))
            .collect();
        let want = [
            // tf1's name first: both are in the graph, the kernel is taken, transposed.
            Some(("k/both/kernel", true)),
            // tf1 names a module `*embeddings` as its own variable; Keras's is `embeddings`.
            Some(("k/word", false)),
            // Saved twice: tf1's name stays, not the other layer kind's `embeddings`.
            Some(("twice/kernel", true)),
            Some(("norm/gamma", false)),
            Some(("k/rms/scale", false)),
            // Not in the graph: tf1's name.
            Some(("fresh/kernel", true)),
            // A convolution's kernel without a bias: a kernel, not in the graph.
            Some(("conv/kernel", true)),
        ];
        let want: Vec<Option<(String, bool)>> = want
            .into_iter()
            .map(|w| w.map(|(n, t)| (n.to_string(), t)))
            .collect();
        assert_eq!(got, want);
    }
}
