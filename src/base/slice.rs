//! Tensor slices (`TensorSliceProto`; docs/format.md#6-sliced-partitioned-tensors): parsing,
//! TensorFlow's textual form, intersection, and the copy plan that moves the intersection of two
//! boxes between row-major buffers.

use std::fmt;

/// One dimension of a [`Slice`]: the whole dimension, or `[start, start + length)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extent {
    /// The whole dimension (`-` in TensorFlow's text form).
    Full,
    /// `length` elements from `start`.
    Range {
        /// First index.
        start: u64,
        /// Number of indices (> 0 in a valid slice).
        length: u64,
    },
}

/// A box inside a tensor: one [`Extent`] per dimension (a `TensorSlice` in TensorFlow).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slice {
    extents: Vec<Extent>,
}

impl Slice {
    /// The whole tensor of the given rank.
    pub fn full(rank: usize) -> Slice {
        Slice {
            extents: vec![Extent::Full; rank],
        }
    }

    /// A slice from explicit extents.
    pub fn new(extents: Vec<Extent>) -> Slice {
        Slice { extents }
    }

    /// A slice from `(start, length)` pairs, one per dimension.
    pub fn from_ranges(ranges: &[(u64, u64)]) -> Slice {
        Slice {
            extents: ranges
                .iter()
                .map(|&(start, length)| Extent::Range { start, length })
                .collect(),
        }
    }

    /// Parses TensorFlow's text form: `-` or `start,length` per dimension, joined by `:`
    /// (`"0,20:-"`). Empty pieces are skipped, as TensorFlow does.
    pub fn parse(text: &str) -> Result<Slice, String> {
        let mut extents = Vec::new();
        for piece in text.split(':').filter(|p| !p.is_empty()) {
            if piece == "-" {
                extents.push(Extent::Full);
                continue;
            }
            let (s, l) = piece
                .split_once(',')
                .ok_or_else(|| format!("expected '-' or 'start,length', found {piece:?}"))?;
            let start: i64 = s
                .parse()
                .map_err(|_| format!("bad start {s:?} in {piece:?}"))?;
            let length: i64 = l
                .parse()
                .map_err(|_| format!("bad length {l:?} in {piece:?}"))?;
            if start < 0 || length <= 0 {
                return Err(format!("extent {piece:?} needs start >= 0 and length > 0"));
            }
            extents.push(Extent::Range {
                start: start as u64,
                length: length as u64,
            });
        }
        Ok(Slice { extents })
    }

    /// Parses a `shape_and_slice` spec (`"100 100 0,20:-"`,
    /// docs/format.md#62-slice-text-and-shape_and_slice-strings) into the full shape and the slice.
    /// An empty string means "the whole tensor" and yields `None`.
    pub fn parse_shape_and_slice(spec: &str) -> Result<Option<(Vec<u64>, Slice)>, String> {
        if spec.is_empty() {
            return Ok(None);
        }
        let tokens: Vec<&str> = spec.split(' ').collect();
        if tokens.len() < 2 {
            return Err(format!(
                "need at least two elements in shape_and_slice spec {spec:?}"
            ));
        }
        let (dims, slice) = tokens.split_at(tokens.len() - 1);
        let shape = dims
            .iter()
            .map(|d| {
                d.parse::<u64>()
                    .map_err(|_| format!("non numerical dimension {d:?} in {spec:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let slice = Slice::parse(slice[0])?;
        if slice.rank() != shape.len() {
            return Err(format!(
                "mismatching ranks in {spec:?}: shape has {}, slice {}",
                shape.len(),
                slice.rank()
            ));
        }
        slice.check(&shape)?;
        Ok(Some((shape, slice)))
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.extents.len()
    }

    /// The extents.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Whether every extent is [`Extent::Full`].
    pub fn is_full(&self) -> bool {
        self.extents.iter().all(|e| *e == Extent::Full)
    }

    /// Checks the slice against a full shape: same rank, every range inside its dimension.
    pub fn check(&self, shape: &[u64]) -> Result<(), String> {
        if self.rank() != shape.len() {
            return Err(format!(
                "slice {self} has rank {}, the tensor has rank {} (shape {shape:?})",
                self.rank(),
                shape.len()
            ));
        }
        for (d, (e, &dim)) in self.extents.iter().zip(shape).enumerate() {
            if let Extent::Range { start, length } = *e {
                let end = start.checked_add(length);
                if length == 0 || end.is_none_or(|end| end > dim) || start > i64::MAX as u64 {
                    return Err(format!(
                        "extent {start},{length} of dimension {d} is outside [0, {dim}) in slice {self} of shape {shape:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The box this slice covers in a tensor of `shape` (full extents become `(0, dim)`). The
    /// slice must have been [`check`](Self::check)ed against `shape`.
    pub(crate) fn region(&self, shape: &[u64]) -> Region {
        Region(
            self.extents
                .iter()
                .zip(shape)
                .map(|(e, &dim)| match *e {
                    Extent::Full => (0, dim),
                    Extent::Range { start, length } => (start, length),
                })
                .collect(),
        )
    }

    /// The box TensorFlow's overlap check of stored slices sees (`TensorSlice::Overlaps`): a full
    /// extent is every index, whatever the dimension's size. For slices holding elements two such
    /// boxes overlap exactly when their [`region`](Self::region)s do; in a dimension of size 0
    /// they still may (`0,2:-` and `0,3:-` of a `[5, 0]` tensor overlap, for TensorFlow too).
    /// The slice must have been [`check`](Self::check)ed (its ranges are not empty).
    pub(crate) fn overlap_box(&self) -> Region {
        Region(
            self.extents
                .iter()
                .map(|e| match *e {
                    Extent::Full => (0, u64::MAX),
                    Extent::Range { start, length } => (start, length),
                })
                .collect(),
        )
    }

    /// `(start, length)` per dimension against `shape` (full extents become `(0, dim)`). The slice
    /// must have been [`check`](Self::check)ed against `shape`.
    pub fn ranges(&self, shape: &[u64]) -> Vec<(u64, u64)> {
        self.region(shape).0
    }

    /// The shape of the slice's own tensor.
    pub fn shape(&self, full_shape: &[u64]) -> Vec<u64> {
        self.region(full_shape).shape()
    }
}

impl fmt::Display for Slice {
    /// TensorFlow's `TensorSlice::DebugString`: `-` or `start,length` per dimension, joined by `:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.extents.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            match e {
                Extent::Full => f.write_str("-")?,
                Extent::Range { start, length } => write!(f, "{start},{length}")?,
            }
        }
        Ok(())
    }
}

/// The most dimensions a tensor may have: TensorFlow's limit, applied alike to checkpoint entries
/// and to the variables of a store.
pub(crate) const MAX_RANK: usize = 254;

/// Number of elements of a shape, `None` on overflow.
pub(crate) fn num_elements(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// A box of a tensor in the whole tensor's coordinates: `(start, length)` per dimension, outermost
/// first (a [`Slice`] resolved against a shape). Row-major buffers hold boxes; the copies between
/// them are [`for_each_run`]'s runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Region(Vec<(u64, u64)>);

impl Region {
    /// A random box inside `shape` (each axis a range of at least one element), from `rnd` (see
    /// [`xorshift`](crate::base::xorshift)).
    #[cfg(test)]
    pub(crate) fn random(rnd: &mut impl FnMut(u64) -> u64, shape: &[u64]) -> Region {
        Region::new(
            shape
                .iter()
                .map(|&d| {
                    let a = rnd(d);
                    (a, 1 + rnd(d - a))
                })
                .collect(),
        )
    }

    /// A box from `(start, length)` per dimension.
    #[cfg(test)]
    pub(crate) fn new(dims: Vec<(u64, u64)>) -> Region {
        Region(dims)
    }

    /// The whole of a tensor of `shape`.
    pub(crate) fn whole(shape: &[u64]) -> Region {
        Region(shape.iter().map(|&d| (0, d)).collect())
    }

    /// `(start, length)` per dimension.
    pub(crate) fn dims(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// The box's own shape.
    pub(crate) fn shape(&self) -> Vec<u64> {
        self.0.iter().map(|d| d.1).collect()
    }

    /// Elements in the box (`None` on overflow).
    pub(crate) fn num_elements(&self) -> Option<u64> {
        self.0.iter().try_fold(1u64, |acc, d| acc.checked_mul(d.1))
    }

    /// The outermost dimension, `(first row, rows)`; `None` for a scalar.
    pub(crate) fn rows(&self) -> Option<(u64, u64)> {
        self.0.first().copied()
    }

    /// The same box cut to rows `[start, start + len)` of its outermost dimension.
    pub(crate) fn with_rows(&self, start: u64, len: u64) -> Region {
        let mut dims = self.0.clone();
        if let Some(d) = dims.first_mut() {
            *d = (start, len);
        }
        Region(dims)
    }

    /// The box of indices `[j, j + n)` of dimension `k` in block `block` of this box, where the
    /// blocks are the index tuples of dimensions `0..k` in row-major order (each one index wide in
    /// the result) and the dimensions after `k` are whole: a box whose elements are contiguous in
    /// this box's row-major layout. `run_along(0, 0, j, n)` is `with_rows(start + j, n)`.
    #[cfg(any(test, feature = "remote"))]
    pub(crate) fn run_along(&self, k: usize, mut block: u64, j: u64, n: u64) -> Region {
        let mut dims = self.0.clone();
        for d in (0..k).rev() {
            let (start, len) = dims[d];
            dims[d] = (start + block % len.max(1), 1);
            block /= len.max(1);
        }
        dims[k] = (dims[k].0 + j, n);
        Region(dims)
    }

    /// Whether two boxes share an element (`intersect` without building the box).
    pub(crate) fn overlaps(&self, other: &Region) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .all(|(&(sa, la), &(sb, lb))| sa.max(sb) < (sa + la).min(sb + lb))
    }

    /// The intersection of two boxes, `None` if empty.
    pub(crate) fn intersect(&self, other: &Region) -> Option<Region> {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(&(sa, la), &(sb, lb))| {
                let start = sa.max(sb);
                let end = (sa + la).min(sb + lb);
                (end > start).then(|| (start, end - start))
            })
            .collect::<Option<Vec<_>>>()
            .map(Region)
    }
}

/// Boxes indexed by their start along one axis, to find an overlap without comparing every pair:
/// a box can only overlap the boxes that start less than the longest box's length before it ends.
/// For the usual partitions (stripes along one axis, or a grid) that is a handful of boxes, so
/// checking n boxes costs O(n log n) rather than O(n²).
pub(crate) struct RegionIndex {
    axis: usize,
    by_start: std::collections::BTreeMap<u64, Vec<usize>>,
    regions: Vec<Region>,
    /// The longest extent along `axis` so far.
    longest: u64,
}

impl RegionIndex {
    /// An empty index over `axis` (any axis works; the one the boxes are spread along is fastest).
    pub(crate) fn new(axis: usize) -> RegionIndex {
        RegionIndex {
            axis,
            by_start: Default::default(),
            regions: Vec::new(),
            longest: 0,
        }
    }

    /// The axis of `regions` with the most distinct starts: the one they are spread along.
    pub(crate) fn best_axis(regions: &[Region]) -> usize {
        let rank = regions.first().map_or(0, |r| r.0.len());
        (0..rank)
            .max_by_key(|&d| {
                let mut starts: Vec<u64> =
                    regions.iter().filter_map(|r| Some(r.0.get(d)?.0)).collect();
                starts.sort_unstable();
                starts.dedup();
                starts.len()
            })
            .unwrap_or(0)
    }

    /// The position (in insertion order) of an indexed box that overlaps `r`, if any. An empty
    /// box overlaps nothing.
    pub(crate) fn overlapping(&self, r: &Region) -> Option<usize> {
        let Some(&(start, len)) = r.0.get(self.axis) else {
            // Scalars: every box is the whole.
            return (!self.regions.is_empty()).then_some(0);
        };
        let (from, end) = (
            (start + 1).saturating_sub(self.longest),
            start.saturating_add(len),
        );
        if r.num_elements() == Some(0) || from >= end {
            return None;
        }
        self.by_start
            .range(from..end)
            .flat_map(|(_, ids)| ids)
            .copied()
            .find(|&i| self.regions[i].overlaps(r))
    }

    /// The positions (in insertion order, ascending) of every indexed box that overlaps `r`. An
    /// empty box overlaps nothing.
    pub(crate) fn intersecting(&self, r: &Region) -> Vec<usize> {
        let Some(&(start, len)) = r.0.get(self.axis) else {
            // Scalars: every box is the whole.
            return (0..self.regions.len()).collect();
        };
        let (from, end) = (
            (start + 1).saturating_sub(self.longest),
            start.saturating_add(len),
        );
        if r.num_elements() == Some(0) || from >= end {
            return Vec::new();
        }
        let mut ids: Vec<usize> = self
            .by_start
            .range(from..end)
            .flat_map(|(_, ids)| ids)
            .copied()
            .filter(|&i| self.regions[i].overlaps(r))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// An index over `regions` along the axis they are spread on.
    pub(crate) fn of(regions: impl IntoIterator<Item = Region>) -> RegionIndex {
        let regions: Vec<Region> = regions.into_iter().collect();
        let mut index = RegionIndex::new(RegionIndex::best_axis(&regions));
        for r in regions {
            index.insert(r);
        }
        index
    }

    /// Adds `r`.
    pub(crate) fn insert(&mut self, r: Region) {
        if let Some(&(start, len)) = r.0.get(self.axis) {
            self.by_start
                .entry(start)
                .or_default()
                .push(self.regions.len());
            self.longest = self.longest.max(len);
        }
        self.regions.push(r);
    }

    /// A pair of overlapping boxes of `regions` (positions, the smaller first), if any: a sweep
    /// along the axis they are spread on, comparing each box only with the boxes still open
    /// where it starts. Empty boxes overlap nothing.
    pub(crate) fn first_overlap(regions: &[Region]) -> Option<(usize, usize)> {
        let boxes: Vec<usize> = (0..regions.len())
            .filter(|&i| regions[i].num_elements() != Some(0))
            .collect();
        if regions.first().is_some_and(|r| r.0.is_empty()) {
            // Scalars: every box is the whole.
            return (boxes.len() >= 2).then(|| (boxes[0], boxes[1]));
        }
        let nonempty: Vec<Region> = boxes.iter().map(|&i| regions[i].clone()).collect();
        let axis = RegionIndex::best_axis(&nonempty);
        let mut order = boxes;
        order.sort_by_key(|&i| regions[i].0[axis].0);
        // Boxes open at the sweep position, by where they end along `axis`.
        let mut open: std::collections::BTreeSet<(u64, usize)> = Default::default();
        for j in order {
            let (start, len) = regions[j].0[axis];
            while open.first().is_some_and(|&(end, _)| end <= start) {
                open.pop_first();
            }
            if let Some(&(_, i)) = open
                .iter()
                .find(|&&(_, i)| regions[i].overlaps(&regions[j]))
            {
                return Some((i.min(j), i.max(j)));
            }
            open.insert((start.saturating_add(len), j));
        }
        None
    }
}

/// A contiguous run of elements to copy: `len` elements from element `src` of the source box to
/// element `dst` of the destination box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub src: u64,
    pub dst: u64,
    pub len: u64,
}

/// Calls `f` for every contiguous run that copies the box `inter` (full-tensor coordinates) from a
/// row-major buffer holding box `src` into a row-major buffer holding box `dst`. Trailing dimensions
/// that are whole in all three boxes are merged, so a slice along axis 0 is one run.
pub(crate) fn for_each_run(src: &Region, dst: &Region, inter: &Region, mut f: impl FnMut(Run)) {
    let (src, dst, inter) = (src.dims(), dst.dims(), inter.dims());
    let rank = inter.len();
    if rank == 0 {
        f(Run {
            src: 0,
            dst: 0,
            len: 1,
        });
        return;
    }
    if inter.iter().any(|r| r.1 == 0) {
        return;
    }
    // Row-major strides of both buffers.
    let mut src_stride = vec![1u64; rank];
    let mut dst_stride = vec![1u64; rank];
    for d in (0..rank - 1).rev() {
        src_stride[d] = src_stride[d + 1] * src[d + 1].1;
        dst_stride[d] = dst_stride[d + 1] * dst[d + 1].1;
    }
    // Merge trailing dims: `m` is the outermost dim of the run; every dim after it is whole everywhere.
    let mut m = rank - 1;
    while m > 0 && inter[m].1 == src[m].1 && inter[m].1 == dst[m].1 {
        m -= 1;
    }
    let run_len: u64 = inter[m..].iter().map(|r| r.1).product();
    let base_src: u64 = (0..rank)
        .map(|d| (inter[d].0 - src[d].0) * src_stride[d])
        .sum();
    let base_dst: u64 = (0..rank)
        .map(|d| (inter[d].0 - dst[d].0) * dst_stride[d])
        .sum();
    // Odometer over dims 0..m.
    let mut idx = vec![0u64; m];
    loop {
        let (mut s, mut t) = (base_src, base_dst);
        for d in 0..m {
            s += idx[d] * src_stride[d];
            t += idx[d] * dst_stride[d];
        }
        f(Run {
            src: s,
            dst: t,
            len: run_len,
        });
        let mut d = m;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < inter[d].1 {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::base::xorshift;

    /// `run_along` boxes tile their box in row-major order: each `k`, cut into runs of `per`
    /// indices, gives boxes whose elements are the next ones of the layout, one after the other.
    #[test]
    fn runs_along_a_dimension_tile_the_box_in_layout_order() {
        let have = Region::new(vec![(2, 3), (5, 4), (1, 6)]);
        let whole: Vec<Vec<u64>> = {
            let mut v = Vec::new();
            for a in 2..5 {
                for b in 5..9 {
                    for c in 1..7 {
                        v.push(vec![a, b, c]);
                    }
                }
            }
            v
        };
        for k in 0..3 {
            let blocks: u64 = have.dims()[..k].iter().map(|d| d.1).product();
            let len = have.dims()[k].1;
            for per in 1..=len {
                let mut got = Vec::new();
                for block in 0..blocks {
                    for j in (0..len).step_by(per as usize) {
                        let r = have.run_along(k, block, j, per.min(len - j));
                        let d = r.dims();
                        for a in d[0].0..d[0].0 + d[0].1 {
                            for b in d[1].0..d[1].0 + d[1].1 {
                                for c in d[2].0..d[2].0 + d[2].1 {
                                    got.push(vec![a, b, c]);
                                }
                            }
                        }
                    }
                }
                assert_eq!(got, whole, "k {k}, runs of {per}");
            }
        }
        assert_eq!(have.run_along(0, 0, 1, 2), have.with_rows(3, 2));
    }

    /// `RegionIndex::intersecting` finds exactly the boxes that overlap, as comparing every pair
    /// does: boxes of ranks 0 to 3, overlapping each other or not, some empty, long and short.
    #[test]
    fn intersecting_equals_every_pair() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for rank in 0..4 {
            for round in 0..20 {
                let boxes = |count: usize, next: &mut dyn FnMut(u64) -> u64| -> Vec<Region> {
                    (0..count)
                        .map(|_| {
                            Region::new(
                                (0..rank)
                                    .map(|_| {
                                        let long = next(8) == 0;
                                        (next(40), next(if long { 40 } else { 6 }))
                                    })
                                    .collect(),
                            )
                        })
                        .collect()
                };
                let stored = boxes(1 + round * 10, &mut next);
                let index = RegionIndex::of(stored.clone());
                for want in boxes(50, &mut next) {
                    let all: Vec<usize> = (0..stored.len())
                        .filter(|&i| stored[i].intersect(&want).is_some())
                        .collect();
                    assert_eq!(index.intersecting(&want), all, "{stored:?} {want:?}");
                    for (i, b) in stored.iter().enumerate() {
                        assert_eq!(b.overlaps(&want), all.contains(&i));
                    }
                    assert_eq!(index.overlapping(&want).is_some(), !all.is_empty());
                }
            }
        }
        assert!(RegionIndex::of(Vec::new())
            .intersecting(&Region::new(vec![(0, 1)]))
            .is_empty());
    }

    #[test]
    fn parse_and_display() {
        let s = Slice::parse("0,20:-").unwrap();
        assert_eq!(s.to_string(), "0,20:-");
        assert_eq!(s.shape(&[100, 100]), vec![20, 100]);
        assert!(Slice::parse("0,0").is_err());
        assert!(Slice::parse("x").is_err());
        let (shape, s) = Slice::parse_shape_and_slice("1 10 0,1:2,3")
            .unwrap()
            .unwrap();
        assert_eq!(shape, vec![1, 10]);
        assert_eq!(s.shape(&shape), vec![1, 3]);
        assert!(Slice::parse_shape_and_slice("100 100 90,20:-").is_err());
        assert!(Slice::parse_shape_and_slice("1  10 -:-").is_err());
        assert!(Slice::parse_shape_and_slice("1 10 0,1:2,3:-").is_err());
        assert_eq!(Slice::parse_shape_and_slice("").unwrap(), None);
    }

    /// `check` refuses a start that TensorFlow's int64 `TensorSliceProto` cannot hold (the writer
    /// stores starts as int64) even where the dimension, reachable only through the API, is larger
    /// still: a defect here lets such a slice through to be written as a negative start.
    #[test]
    fn check_refuses_a_start_beyond_int64() {
        let huge = [u64::MAX];
        assert!(Slice::from_ranges(&[(1 << 63, 1)]).check(&huge).is_err());
        assert!(Slice::from_ranges(&[((1 << 63) + 5, 2)])
            .check(&huge)
            .is_err());
        assert!(Slice::from_ranges(&[(u64::MAX - 1, 1)])
            .check(&huge)
            .is_err());
        // Within int64, the same large dimension takes it.
        assert!(Slice::from_ranges(&[(1 << 40, 1)]).check(&huge).is_ok());
    }

    #[test]
    fn runs_merge_trailing_dims() {
        let mut runs = vec![];
        // rows [20,40) of a [100,100] tensor into a [20,100] part: one run.
        let r = |d: &[(u64, u64)]| Region::new(d.to_vec());
        for_each_run(
            &r(&[(0, 100), (0, 100)]),
            &r(&[(20, 20), (0, 100)]),
            &r(&[(20, 20), (0, 100)]),
            |x| runs.push(x),
        );
        assert_eq!(
            runs,
            vec![Run {
                src: 2000,
                dst: 0,
                len: 2000
            }]
        );
        runs.clear();
        // columns [3,5) of a [2,10] tensor: one run per row.
        for_each_run(
            &r(&[(0, 2), (0, 10)]),
            &r(&[(0, 2), (3, 2)]),
            &r(&[(0, 2), (3, 2)]),
            |x| runs.push(x),
        );
        assert_eq!(
            runs,
            vec![
                Run {
                    src: 3,
                    dst: 0,
                    len: 2
                },
                Run {
                    src: 13,
                    dst: 2,
                    len: 2
                }
            ]
        );
    }

    #[test]
    fn region_index_finds_the_overlaps_a_pairwise_check_finds() {
        // Random 2-D boxes: stripes, grids and arbitrary boxes, against the O(n^2) oracle.
        let mut rnd = xorshift(0x9e37_79b9_7f4a_7c15);
        for case in 0..300 {
            let n = 1 + rnd(40) as usize;
            let regions: Vec<Region> = (0..n)
                .map(|i| match case % 3 {
                    0 => Region::new(vec![(i as u64 * 3 + rnd(2) * rnd(4), 3), (0, 8)]),
                    1 => Region::new(vec![(i as u64 / 4 * 5, 5), (i as u64 % 4 * 2 + rnd(2), 2)]),
                    _ if rnd(8) == 0 => Region::new(vec![(rnd(50), rnd(3)), (rnd(50), 0)]),
                    _ => Region::new(vec![(rnd(50), 1 + rnd(9)), (rnd(50), 1 + rnd(9))]),
                })
                .collect();
            let naive = (0..n).find_map(|j| {
                (0..j)
                    .find(|&i| regions[i].intersect(&regions[j]).is_some())
                    .map(|_| j)
            });
            let found = RegionIndex::first_overlap(&regions);
            assert_eq!(found.is_some(), naive.is_some(), "case {case}: {regions:?}");
            if let Some((i, j)) = found {
                assert!(i < j && regions[i].intersect(&regions[j]).is_some());
            }
            // The incremental index agrees, and never panics on empty boxes.
            let mut index = RegionIndex::new(rnd(2) as usize);
            let incremental = regions.iter().enumerate().find_map(|(j, r)| {
                let hit = index.overlapping(r).map(|_| j);
                index.insert(r.clone());
                hit
            });
            assert_eq!(incremental, naive, "case {case}: {regions:?}");
        }
        // Found in review: zero-length extents on the sweep axis ([5, 0] stored as 0,2:- and
        // 0,3:-) are empty boxes, not a panic.
        let empty = [
            Region::new(vec![(0, 2), (0, 0)]),
            Region::new(vec![(0, 3), (0, 0)]),
        ];
        assert_eq!(RegionIndex::first_overlap(&empty), None);
        let mut index = RegionIndex::new(1);
        index.insert(empty[0].clone());
        assert_eq!(index.overlapping(&empty[1]), None);
        // One long box across every stripe (found in review: a quadratic case for the window
        // bound): still found overlap-free, and the overlapping variant found.
        let n = 20_000u64;
        let mut stripes: Vec<Region> = vec![Region::new(vec![(0, n), (0, 1)])];
        stripes.extend((0..n).map(|i| Region::new(vec![(i, 1), (1, 1)])));
        assert_eq!(RegionIndex::first_overlap(&stripes), None);
        stripes.push(Region::new(vec![(n / 2, 1), (0, 2)]));
        assert!(RegionIndex::first_overlap(&stripes).is_some());
        // Scalars: two are always the same box.
        assert_eq!(
            RegionIndex::first_overlap(&[Region::default(), Region::default()]),
            Some((0, 1))
        );
    }
}
