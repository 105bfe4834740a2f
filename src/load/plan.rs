//! The planner: a pure function from the pending initializers to a [`LoadPlan`] — every stored
//! tensor needed, once, with all the variables (or parts) it feeds, ordered by where its bytes lie
//! in the files so the executor reads them sequentially. No file is touched here.

use super::skeleton::{value_bytes, PendingRead};
use crate::base::dtype::DType;
use crate::base::slice::Slice;
use crate::init::store::Variable;

/// One checkpoint tensor to read and the destinations it feeds.
pub(crate) struct PlanItem<'s> {
    /// Index of the checkpoint (in the executor's list of open checkpoints).
    pub ckpt: usize,
    /// The checkpoint tensor.
    pub tensor: &'s str,
    /// Every variable or part that takes a box of it.
    pub dests: Vec<(&'s Variable, &'s Slice)>,
    /// Bytes the destinations will hold, in the dtype they hold (strings count as 0).
    pub bytes: u64,
}

/// Every read of one `initialize`, in file order.
pub(crate) struct LoadPlan<'s> {
    pub items: Vec<PlanItem<'s>>,
    /// Bytes of all destinations.
    pub bytes: u64,
}

/// Groups `pending` (variable, checkpoint index, tensor, box) by (checkpoint, tensor) and orders the
/// groups by `position(checkpoint, tensor)` (shard or file, then offset; tensors whose position
/// is unknown last). `held(dtype)` is the dtype a variable of `dtype` holds its value in (another
/// under a cast).
pub(crate) fn plan<'s>(
    pending: impl IntoIterator<Item = PendingRead<'s>>,
    position: impl Fn(usize, &str) -> Option<(u32, u64)>,
    held: impl Fn(DType) -> DType,
) -> LoadPlan<'s> {
    let mut ids: rustc_hash::FxHashMap<(usize, &str), usize> = Default::default();
    let mut items: Vec<PlanItem<'s>> = Vec::new();
    for (v, ckpt, tensor, slice) in pending {
        let i = *ids.entry((ckpt, tensor)).or_insert_with(|| {
            items.push(PlanItem {
                ckpt,
                tensor,
                dests: Vec::new(),
                bytes: 0,
            });
            items.len() - 1
        });
        // Saturating: a hostile checkpoint's tensor of 2^62 bytes mapped to five variables
        // overflows the sum (each variable alone fits; its load then fails cleanly).
        items[i].bytes = items[i].bytes.saturating_add(value_bytes(v, held(v.dtype)));
        items[i].dests.push((v, slice));
    }
    items.sort_by_cached_key(|it| {
        let at = position(it.ckpt, it.tensor);
        (it.ckpt, at.is_none(), at)
    });
    LoadPlan {
        bytes: items
            .iter()
            .fold(0u64, |sum, it| sum.saturating_add(it.bytes)),
        items,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Init};

    fn var(name: &str, shape: &[u64]) -> Variable {
        Variable {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: DType::F32,
            init: Init::Zeros,
            part: None,
            in_store: true,
        }
    }

    #[test]
    fn groups_by_tensor_and_orders_by_position() {
        let (a, b0, b1, c) = (
            var("a", &[2]),
            var("b/part_0", &[1, 3]),
            var("b/part_1", &[1, 3]),
            var("c", &[4]),
        );
        let whole = Slice::full(1);
        let (s0, s1) = (
            Slice::from_ranges(&[(0, 1), (0, 3)]),
            Slice::from_ranges(&[(1, 1), (0, 3)]),
        );
        let pending = vec![
            (&a, 0, "t_a", &whole),
            (&b0, 0, "t_b", &s0),
            (&c, 1, "t_c", &whole),
            (&b1, 0, "t_b", &s1),
        ];
        // t_b lies before t_a in checkpoint 0's data file.
        let position = |ckpt, t: &str| match (ckpt, t) {
            (0, "t_b") => Some((0, 10)),
            (0, "t_a") => Some((0, 500)),
            _ => None,
        };
        let p = plan(pending.clone(), position, |d| d);
        let order: Vec<(usize, &str, usize)> = p
            .items
            .iter()
            .map(|it| (it.ckpt, it.tensor, it.dests.len()))
            .collect();
        assert_eq!(order, vec![(0, "t_b", 2), (0, "t_a", 1), (1, "t_c", 1)]);
        assert_eq!(p.items[0].bytes, 24);
        assert_eq!(p.bytes, 8 + 24 + 16);
        // Bytes in the dtype the variables hold their values in: twice as many under a cast of
        // every variable's dtype to one twice its size.
        let doubled = plan(pending, position, |d| match d.size() {
            Some(4) => DType::F64,
            _ => d,
        });
        assert_eq!(doubled.bytes, 2 * p.bytes);
    }
}
