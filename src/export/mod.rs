//! safetensors output (the `safetensors` feature): a checkpoint's tensors as stored
//! ([`Checkpoint::write_safetensors`], `tfckpt convert`) and a store's initialized values
//! ([`VariableStore::write_safetensors`], `tfckpt init --out FILE.safetensors`), written by the
//! `safetensors` crate's own writer.
//!
//! * **Every byte checked.** A checkpoint tensor is read through the reader: checksummed (and
//!   assembled from its slices when it was saved partitioned) before a byte of it is written.
//! * **Bounded memory.** The writer asks for each tensor's bytes only when it writes them, one
//!   tensor at a time. A tensor saved whole in a little-endian V2 bundle is written straight from
//!   the mapping of its shard, after its checksum (no copy, but for a 4- or 2-bit integer one,
//!   written as its values); any other (partitioned, V1, big-endian, on object storage) is read
//!   into memory of its own, dropped as soon as it is written. So the most memory of its own this
//!   module holds is the largest such tensor, never the checkpoint; and the shard pages a tensor
//!   was read from leave the process's mapping once it is written (on Linux: they stay in the
//!   page cache), so that its resident size does not grow to the checkpoint's either. A store's
//!   values are written from where they are; a partitioned variable's whole value is joined when
//!   it is written, and dropped then too.
//! * **All or nothing.** The file is written in a temporary folder in the destination's folder
//!   and renamed into place only when every tensor was read and checked and the writer succeeded;
//!   on any error no file is left (a process ended by a signal meanwhile leaves its
//!   `.tfckpt-*.safetensors.tmp` folder, unless it calls
//!   [`crate::remove_partial_outputs_for_exit`] first, as the binary does). `View::data` cannot
//!   fail, so the first read error is kept aside, the rest of the tensors are written as nothing,
//!   and the call then fails with that error.
//! * **dtypes kept.** Each tensor keeps its own type: bfloat16, float16 and the float8 types too.
//!   The 4- and 2-bit integers, which safetensors has no type for, are written as their values,
//!   one a byte, as `.npy` output holds them: int4 and int2 as I8, uint4 and uint2 as U8.
//!   safetensors cannot hold strings, complex numbers, the quantized types, float8_e4m3b11fnuz
//!   or variants ([`DType::safetensors_dtype`]); a checkpoint's such tensors are skipped and
//!   listed in the report, a store's such variable is an error.

use std::cell::OnceCell;
use std::fmt;
use std::path::Path;

use ::safetensors::tensor::Dtype;

use crate::base::dtype::DType;
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::slice::num_elements;
use crate::base::tensor::TensorData;
use crate::init::store::VariableStore;
use crate::reader::checkpoint::{Checkpoint, Inner};

/// The safetensors dtype that holds `dtype`'s elements bit for bit (the 4- and 2-bit integers:
/// their values, [`DType::sub_byte_values`]), and its name in a header.
///
/// complex64 is left out although safetensors 0.8 has a `C64`: the project's CLI contract lists
/// complex numbers among what safetensors cannot hold, and most readers (candle, burn) have no
/// complex type.
fn st_dtype(dtype: DType) -> Option<(Dtype, &'static str)> {
    Some(match dtype {
        DType::Bool => (Dtype::BOOL, "BOOL"),
        DType::U8 => (Dtype::U8, "U8"),
        DType::I8 => (Dtype::I8, "I8"),
        DType::F8E5M2 => (Dtype::F8_E5M2, "F8_E5M2"),
        DType::F8E4M3FN => (Dtype::F8_E4M3, "F8_E4M3"),
        DType::F8E4M3FNUZ => (Dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ"),
        DType::F8E5M2FNUZ => (Dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ"),
        DType::I16 => (Dtype::I16, "I16"),
        DType::U16 => (Dtype::U16, "U16"),
        DType::F16 => (Dtype::F16, "F16"),
        DType::BF16 => (Dtype::BF16, "BF16"),
        DType::I32 => (Dtype::I32, "I32"),
        DType::U32 => (Dtype::U32, "U32"),
        DType::F32 => (Dtype::F32, "F32"),
        DType::F64 => (Dtype::F64, "F64"),
        DType::I64 => (Dtype::I64, "I64"),
        DType::U64 => (Dtype::U64, "U64"),
        DType::I4 | DType::I2 => (Dtype::I8, "I8"),
        DType::U4 | DType::U2 => (Dtype::U8, "U8"),
        _ => return None,
    })
}

impl DType {
    /// The safetensors dtype that holds this dtype's elements bit for bit, as a safetensors header
    /// names it: `"F32"`, `"BF16"`, `"F8_E4M3"` for float8_e4m3fn, `"BOOL"` for bool, ...;
    /// `"I8"` for int4 and int2 and `"U8"` for uint4 and uint2, which are written as their values
    /// (each stored byte's low bits, sign-extended for the signed ones, as `.npy` output holds
    /// them); `None` for what safetensors cannot hold: strings, complex numbers, the quantized
    /// types, float8_e4m3b11fnuz and variants.
    pub fn safetensors_dtype(self) -> Option<&'static str> {
        st_dtype(self).map(|(_, name)| name)
    }
}

/// The name safetensors keeps for the file's metadata: no tensor can have it.
const RESERVED: &str = "__metadata__";

/// What a safetensors export wrote, and the checkpoint tensors it left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SafetensorsReport {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written (the file adds its 8-byte length and JSON header).
    pub bytes: u64,
    /// Checkpoint tensors left out, sorted by name; always empty for a store, where a variable
    /// that cannot be written is an error.
    pub skipped: Vec<SkippedTensor>,
}

impl SafetensorsReport {
    /// Counts one more tensor of `len` bytes: the file's data must stay addressable (the
    /// safetensors writer adds the offsets up unchecked).
    fn add(&mut self, len: usize, path: &Path, name: &str) -> Result<()> {
        self.bytes = self
            .bytes
            .checked_add(len as u64)
            .filter(|&n| n <= isize::MAX as u64)
            .ok_or_else(|| too_large(path, name))?;
        self.tensors += 1;
        Ok(())
    }
}

/// A checkpoint tensor that [`Checkpoint::write_safetensors`] left out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedTensor {
    /// Its name in the checkpoint.
    pub name: String,
    /// Its dtype.
    pub dtype: DType,
    /// Why it was left out.
    pub reason: String,
}

impl fmt::Display for SkippedTensor {
    /// `tensor "NAME" (DTYPE) skipped: REASON`: what `tfckpt convert` prints after `warning: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tensor {:?} ({}) skipped: {}",
            self.name, self.dtype, self.reason
        )
    }
}

/// Why a tensor of `dtype` named `name` cannot go into a safetensors file, if it cannot.
fn unwritable(name: &str, dtype: DType) -> Option<String> {
    if st_dtype(dtype).is_none() {
        Some(format!("safetensors cannot hold {dtype} values"))
    } else if name == RESERVED {
        Some(format!(
            "safetensors reserves the name {RESERVED} for the file's metadata"
        ))
    } else {
        None
    }
}

impl Checkpoint {
    /// Writes every tensor of the checkpoint into one safetensors file at `path`, under its
    /// checkpoint name, as stored: partitioned tensors assembled (as [`read`](Self::read) does),
    /// every byte checksummed, each dtype kept (see [`DType::safetensors_dtype`]). Tensors
    /// safetensors cannot hold (strings, such as TF2's `_CHECKPOINTABLE_OBJECT_GRAPH`, complex
    /// numbers, quantized types, float8_e4m3b11fnuz) are skipped and listed in the report; the 4-
    /// and 2-bit integers are written as their values (see [`DType::safetensors_dtype`]).
    ///
    /// Memory stays bounded: tensors are read one at a time as they are written (see the module
    /// docs). All or nothing: `path`'s folder must exist; the file is written under a temporary
    /// name there and renamed to `path` (replacing a file there) only when everything succeeded.
    /// Any error (a checksum mismatch, a missing shard, ...) names the file and the tensor, and
    /// leaves `path` as it was.
    ///
    /// ```no_run
    /// let ckpt = tfckpt::Checkpoint::open("/data/model.ckpt")?;
    /// let report = ckpt.write_safetensors("/data/model.safetensors")?;
    /// for s in &report.skipped {
    ///     eprintln!("warning: {s}");
    /// }
    /// # Ok::<(), tfckpt::Error>(())
    /// ```
    pub fn write_safetensors(&self, path: impl AsRef<Path>) -> Result<SafetensorsReport> {
        let path = path.as_ref();
        let shared = Shared::default();
        let mut report = SafetensorsReport::default();
        let mut items = Vec::new();
        for info in self.tensors() {
            if let Some(reason) = unwritable(&info.name, info.dtype) {
                report.skipped.push(SkippedTensor {
                    name: info.name.clone(),
                    dtype: info.dtype,
                    reason,
                });
                continue;
            }
            let len =
                expected_len(info.dtype, &info.shape).ok_or_else(|| too_large(path, &info.name))?;
            // What `Checkpoint::view` can show in place: a V2 tensor saved whole, with no bytes
            // to swap.
            let in_place = match &self.inner {
                Inner::V2(b) => {
                    let swapped = b.index.big_endian && info.dtype.swap_unit() > 1;
                    !info.is_partitioned() && !swapped
                }
                Inner::V1(_) => false,
            };
            let source = if in_place {
                Source::View {
                    ckpt: self,
                    view: OnceCell::new(),
                }
            } else {
                Source::Read { ckpt: self }
            };
            items.push(Item::new(
                &info.name,
                info.dtype,
                &info.shape,
                len,
                source,
                &shared,
                path,
            )?);
            report.add(len, path, &info.name)?;
        }
        write_file(path, &items, &shared)?;
        Ok(report)
    }
}

impl VariableStore {
    /// Checks, before any work, that every variable and part can go into a safetensors file: its
    /// dtype has a safetensors counterpart (see [`DType::safetensors_dtype`]) and its name is not
    /// `__metadata__`. An error names the first variable that cannot, with its dtype; names too
    /// long together for the header safetensors allows are an error too. `tfckpt init --out
    /// FILE.safetensors` calls it before loading anything.
    pub fn check_safetensors(&self) -> Result<()> {
        let names = self.variables().map(|v| (v.name.as_str(), v.dtype)).chain(
            self.partitioned_variables()
                .map(|p| (p.name.as_str(), p.dtype)),
        );
        let (mut count, mut bytes) = (0u64, 0u64);
        for (name, dtype) in names {
            if let Some(reason) = unwritable(name, dtype) {
                return Err(cannot_write(name, &reason));
            }
            count += 1;
            bytes += name.len() as u64;
        }
        // Each name is a key of the header: a bound from below, so never a false refusal.
        if bytes > MAX_HEADER {
            return Err(ErrorKind::InvalidArgument(format!(
                "a safetensors file cannot hold these {count} variables: their names alone hold \
                 {bytes} bytes, more than the {MAX_HEADER} bytes of header safetensors allows"
            ))
            .into());
        }
        Ok(())
    }

    /// Writes the store's values into one safetensors file at `path` after a host
    /// [`initialize`](Self::initialize) (or [`fetch_to_host`](Self::fetch_to_host)): every
    /// variable and part under its name (part 2 of `emb` is `emb/part_2`), and the whole value of
    /// every partitioned variable under its own name (`emb`): the names and values of
    /// `tfckpt init --out DIR`'s `.npy` files, without `.npy`. Each value keeps its dtype. After a
    /// load spread over ranks ([`LoadOptions::rank`](crate::LoadOptions::rank)), only what this
    /// rank holds: its own variables and parts, and the whole of each partitioned variable it
    /// holds every part of.
    ///
    /// A variable safetensors cannot hold (strings, complex numbers, quantized types,
    /// float8_e4m3b11fnuz), or one without a host value, is an error naming it and its dtype, and
    /// nothing is written. Memory and all-or-nothing as for [`Checkpoint::write_safetensors`]:
    /// values are written from where they are; a partitioned variable's whole value is joined just
    /// before it is written and dropped after.
    ///
    /// ```no_run
    /// # fn main() -> tfckpt::Result<()> {
    /// # let mut store = tfckpt::VariableStore::new();
    /// store.initialize(tfckpt::Device::Cpu)?;
    /// store.write_safetensors("model.safetensors")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn write_safetensors(&self, path: impl AsRef<Path>) -> Result<SafetensorsReport> {
        let path = path.as_ref();
        let shared = Shared::default();
        let mut report = SafetensorsReport::default();
        let mut items = Vec::new();
        // After a ranked load, only this rank's variables and parts (and the wholes of the
        // partitioned variables it holds every part of).
        for v in self.variables().filter(|v| !self.is_other_rank(&v.name)) {
            let t = self
                .value(&v.name)
                .ok_or_else(|| self.no_host_value(&v.name, " to write"))?;
            let TensorData::Bytes(bytes) = &t.data else {
                return Err(cannot_write(
                    &v.name,
                    &format!("safetensors cannot hold {} values", t.dtype),
                ));
            };
            if let Some(reason) = unwritable(&v.name, t.dtype) {
                return Err(cannot_write(&v.name, &reason));
            }
            let len = expected_len(t.dtype, &t.shape).ok_or_else(|| too_large(path, &v.name))?;
            if bytes.len() != len {
                return Err(ErrorKind::BadVariable {
                    name: v.name.clone(),
                    reason: format!(
                        "its value holds {} bytes, its dtype {} and shape {:?} need {len}",
                        bytes.len(),
                        t.dtype,
                        t.shape
                    ),
                }
                .into());
            }
            items.push(Item::new(
                &v.name,
                t.dtype,
                &t.shape,
                len,
                Source::Value(t),
                &shared,
                path,
            )?);
            report.add(len, path, &v.name)?;
        }
        for pv in self.partitioned_variables() {
            if pv.parts.iter().any(|p| self.is_other_rank(p)) {
                continue;
            }
            // The whole takes the dtype its parts have (they may have been cast), as
            // `partitioned_value` gives it.
            let first = pv.parts.first().and_then(|p| self.value(p));
            let dtype = first.map_or(pv.dtype, |t| t.dtype);
            if let Some(reason) = unwritable(&pv.name, dtype) {
                return Err(cannot_write(&pv.name, &reason));
            }
            let len = expected_len(dtype, &pv.shape).ok_or_else(|| too_large(path, &pv.name))?;
            items.push(Item::new(
                &pv.name,
                dtype,
                &pv.shape,
                len,
                Source::Joined { store: self },
                &shared,
                path,
            )?);
            report.add(len, path, &pv.name)?;
        }
        write_file(path, &items, &shared)?;
        Ok(report)
    }
}

/// A variable that cannot go into a safetensors file (`reason`, which says so, names its dtype
/// or its name).
fn cannot_write(name: &str, reason: &str) -> Error {
    ErrorKind::BadVariable {
        name: name.into(),
        reason: format!("not written: {reason}"),
    }
    .into()
}

fn too_large(path: &Path, name: &str) -> Error {
    ErrorKind::Export {
        path: path.to_path_buf(),
        reason: format!(
            "tensor {name:?} is too large: its bytes, or the file's up to it, cannot be addressed"
        ),
    }
    .into()
}

/// Bytes of a fixed-size tensor of that dtype and shape, if addressable.
fn expected_len(dtype: DType, shape: &[u64]) -> Option<usize> {
    let n = num_elements(shape)?.checked_mul(dtype.size()? as u64)?;
    usize::try_from(n).ok()
}

mod file;
use file::{write_file, Item, Shared, Source, MAX_HEADER};

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::format::writer::{CheckpointWriter, TensorRef, WriterOptions};

    /// A shard truncated after a tensor's bytes were checked in its mapping and before the writer
    /// copied them out (a window no test from outside can hit on purpose) is an error naming the
    /// shard, and leaves no file. A tensor larger than the writer's 1 MiB buffer goes to `write`
    /// straight from the mapping, which fails with `EFAULT` (then [`Item::recheck`] names the
    /// shard); a small one is copied into the buffer, which faults and is caught
    /// ([`Item::intact`]). Found by mutation testing: either check could be removed unnoticed.
    #[test]
    fn a_shard_truncated_between_the_check_and_the_write_is_an_error_naming_it() {
        for len in [64usize, 4 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let prefix = dir.path().join("m");
            let mut writer = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
            let data = vec![7u8; len];
            let shape = [len as u64 / 4];
            writer
                .add(
                    "t",
                    TensorRef::Bytes {
                        dtype: DType::F32,
                        shape: &shape,
                        data: &data,
                    },
                )
                .unwrap();
            writer.finish().unwrap();
            let ckpt = Checkpoint::open(&prefix).unwrap();
            let out = dir.path().join("out.safetensors");
            let shared = Shared::default();
            let source = Source::View {
                ckpt: &ckpt,
                view: OnceCell::new(),
            };
            let item = Item::new("t", DType::F32, &shape, len, source, &shared, &out).unwrap();
            // Checked in the mapping, as the writer's call for the tensor's bytes does first.
            assert_eq!(item.fetch().unwrap().len(), len);
            let shard = dir.path().join("m.data-00000-of-00001");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&shard)
                .unwrap()
                .set_len(0)
                .unwrap();
            let e = write_file(&out, &[item], &shared).unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::Truncated { path } if *path == shard),
                "{len} bytes: {e}"
            );
            // No output, and no temporary folder.
            let mut left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            left.sort();
            assert_eq!(left, ["m.data-00000-of-00001", "m.index"], "{len} bytes");
        }
    }
}
