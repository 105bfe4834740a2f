//! The reader: [`Checkpoint`] (open a path as TensorFlow resolves it, list, read any slice of any
//! tensor, verify), built on `format`.

mod assemble;
mod char_names;
pub(crate) mod checkpoint;
pub(crate) mod glob;
pub(crate) mod object_names;
pub(crate) mod resolve;
pub(crate) mod state;
pub(crate) mod stored;
pub(crate) mod verify;
