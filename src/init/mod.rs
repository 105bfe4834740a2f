//! `init_from_checkpoint` semantics: the variable store (TF1's variables and partitioned
//! variables), the assignment map and its resolution against a checkpoint's listing, and
//! TensorFlow's partitioners. Nothing is read here but the checkpoint's index.

pub(crate) mod assign;
pub(crate) mod initializer;
pub mod partitioners;
mod placement;
pub(crate) mod store;
