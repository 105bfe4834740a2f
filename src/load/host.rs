//! The host destination: values in host memory. The planned reads run as a staged pipeline
//! (`pipeline`): readahead in file order, and on the workers each stored tensor verified and
//! copied once into every value it feeds (or, with [`LoadOptions::map_values`], large values
//! mapped copy-on-write from the file), then cast if asked.

use std::collections::HashMap;
use std::sync::Mutex;

use super::options::LoadOptions;
use super::plan::PlanItem;
use super::report::LoadReport;
use super::skeleton::{value_bytes, Destination, Reads, Values};
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{num_elements, Region, Slice};
use crate::base::tensor::{ElementsMut, Strings, Tensor, TensorData};
use crate::init::store::Variable;
use crate::reader::stored::Stored;

/// With `LoadOptions::map_values`, values at least this large are mapped copy-on-write.
const MAP_MIN: u64 = 1 << 20;

/// The most threads a load of a checkpoint on object storage starts to keep its requests in
/// flight (see `load_values`).
const MAX_REMOTE_THREADS: usize = 64;

/// A tensor of a checkpoint on object storage this small, saved whole, may be fetched in one
/// request with its neighbours in the file, in runs of at most [`BLOCK_BYTES`] and
/// [`BLOCK_ITEMS`] tensors.
#[cfg(feature = "remote")]
const SMALL_ENTRY: u64 = 1 << 20;
#[cfg(feature = "remote")]
const BLOCK_BYTES: u64 = 4 << 20;
#[cfg(feature = "remote")]
const BLOCK_ITEMS: usize = 256;

/// The bundle and entry of `s` when a load may fetch it together with its neighbours: a tensor
/// on object storage, saved whole, of a fixed-size dtype, at most [`SMALL_ENTRY`] bytes.
#[cfg(feature = "remote")]
fn small_remote<'c>(
    s: &Stored<'c>,
) -> Option<(
    &'c crate::format::bundle::Bundle,
    &'c crate::format::index::Entry,
)> {
    let b = s.bundle()?;
    b.remote_source()?;
    if !s.info.slices.is_empty() || s.info.dtype.size().is_none() {
        return None;
    }
    let e = s.entry(b, &Slice::full(s.info.shape.len())).ok()?;
    (e.size <= SMALL_ENTRY).then_some((b, e))
}

/// How far (in destination bytes) the reader stage may run ahead of the workers.
const READ_AHEAD: u64 = 256 << 20;

/// Values in host memory: allocated here, or the trainer's own buffers (`given`).
#[derive(Default)]
pub(crate) struct HostDestination<'a> {
    values: Vec<(String, Tensor)>,
    given: Given<'a>,
}

impl<'a> HostDestination<'a> {
    /// Loads the variables of `given` into those buffers (plain bytes of the variable's dtype).
    pub(crate) fn into_buffers(given: Given<'a>) -> HostDestination<'a> {
        HostDestination {
            values: Vec::new(),
            given,
        }
    }
}

/// What one stored tensor gave: the stored entries read and a value per destination.
pub(crate) struct GroupValues {
    pub stored_reads: usize,
    pub values: Vec<(String, Tensor)>,
    /// Bytes read into given buffers.
    pub given_bytes: u64,
    /// Bytes of the stored entries read (`LoadReport::stored_bytes`).
    pub stored_bytes: u64,
}

impl Destination for HostDestination<'_> {
    fn prepare(&mut self, _vars: &[&Variable], _options: &LoadOptions) -> Result<()> {
        Ok(()) // each value is allocated when its tensor is read
    }

    fn buffer_names(&self) -> Vec<&str> {
        self.given.bufs.keys().copied().collect()
    }

    fn load(&mut self, reads: &Reads<'_>, report: &mut LoadReport) -> Result<()> {
        self.values = load_values(reads, report, &self.given)?;
        Ok(())
    }

    fn initialize(&mut self, v: &Variable, dtype: DType, elem: &[u8]) -> Result<()> {
        if let Some(mut g) = self.given.take(&v.name) {
            // A trainer's buffer of an unmapped variable: filled with its initializer.
            if let (Some((buf, _)), false) = (g.buf.bytes(), elem.is_empty()) {
                buf.chunks_exact_mut(elem.len())
                    .for_each(|c| c.copy_from_slice(elem));
            }
            return Ok(());
        }
        let t = filled_tensor(v, dtype, elem)?;
        self.values.push((v.name.clone(), t));
        Ok(())
    }

    fn finish(self, _report: &mut LoadReport) -> Result<Values> {
        Ok(Values {
            host: self.values,
            ..Default::default()
        })
    }
}

/// Buffers that the load fills in place of values it would allocate (a trainer's own tensors), by
/// variable name; each is taken by the one stored tensor that feeds its variable.
#[derive(Default)]
pub(crate) struct Given<'a> {
    bufs: HashMap<&'a str, Mutex<Option<GivenBuf<'a>>>>,
}

/// A buffer a variable is read into, and the conversion on the way, if any.
pub(crate) struct GivenBuf<'a> {
    pub buf: ElementsMut<'a>,
    /// `(stored dtype, buffer's dtype)`: the value is read in the stored dtype, then converted
    /// into the buffer (and transposed, for a `Transposed` buffer) by the same worker.
    pub convert: Option<(DType, DType)>,
}

impl<'a> Given<'a> {
    /// Variable `name` is read into `buf`, sized for its value (held transposed if `Transposed`).
    pub(crate) fn insert(&mut self, name: &'a str, buf: GivenBuf<'a>) {
        self.bufs.insert(name, Mutex::new(Some(buf)));
    }

    /// Whether `name` has a buffer.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.bufs.contains_key(name)
    }

    pub(crate) fn take(&self, name: &str) -> Option<GivenBuf<'a>> {
        if self.bufs.is_empty() {
            return None; // a plain host load: no hashing per value
        }
        let slot = self.bufs.get(name)?;
        slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Runs every planned read through the staged pipeline; returns the values of the variables that
/// have no buffer in `given` (those are filled in place).
pub(crate) fn load_values(
    reads: &Reads<'_>,
    report: &mut LoadReport,
    given: &Given<'_>,
) -> Result<Vec<(String, Tensor)>> {
    let map_min = reads
        .options
        .map_values
        .then_some(reads.options.map_min_bytes.unwrap_or(MAP_MIN));
    let items = &reads.plan.items;
    // A tensor on object storage keeps its thread waiting on the network, not on a core: so that
    // `RemoteOptions::concurrency` requests can be in flight even when the tensors are small, such
    // a load runs on at least that many threads (unless `LoadOptions::threads` fixed the count),
    // each tensor its own task, except that a run of small tensors stored back to back is one
    // task that fetches them in one request (`fetch_block`). The budget of the load still bounds
    // the requests and bytes in flight.
    let remote = reads.ckpts.iter().any(|c| c.is_remote());
    let joins = |last: &PlanItem<'_>, next: &PlanItem<'_>, bytes: u64, n: usize| {
        let _ = last; // read only with the `remote` feature
        if !remote {
            return super::pipeline::by_size(bytes, next.bytes, n);
        }
        #[cfg(feature = "remote")]
        if let (Ok(a), Ok(b)) = (reads.stored(last), reads.stored(next)) {
            if let (Some((ba, ea)), Some((bb, eb))) = (small_remote(&a), small_remote(&b)) {
                return std::ptr::eq(ba, bb)
                    && ea.shard == eb.shard
                    && eb.offset == ea.offset + ea.size
                    && bytes + next.bytes <= BLOCK_BYTES
                    && n < BLOCK_ITEMS;
            }
        }
        false
    };
    let enter = |batch: &[PlanItem<'_>]| {
        #[cfg(feature = "remote")]
        {
            let [first, .., last] = batch else {
                return None;
            };
            let first = reads.stored(first).ok()?;
            let last = reads.stored(last).ok()?;
            let ((b, e), (_, l)) = (small_remote(&first)?, small_remote(&last)?);
            // A failed fetch leaves each tensor to its own request, which reports the error.
            b.remote_source()?.fetch_block(b, e, l.offset + l.size).ok()
        }
        #[cfg(not(feature = "remote"))]
        {
            let _ = batch;
            None::<()>
        }
    };
    let want = reads
        .options
        .remote
        .concurrency
        .clamp(1, MAX_REMOTE_THREADS);
    let pool = if remote
        && reads.options.threads.is_none()
        && crate::base::par::current_num_threads() < want
    {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(want)
            .build()
            .map_err(|e| ErrorKind::InvalidArgument(format!("cannot start {want} threads: {e}")))?;
        report.threads = want;
        Some(pool)
    } else {
        None
    };
    // The boxes of a stored tensor that an item's destinations take.
    let wants = |it: &PlanItem<'_>, s: &Stored<'_>| -> Vec<Region> {
        it.dests.iter().map(|d| d.1.region(&s.info.shape)).collect()
    };
    let load_item = |it: &PlanItem<'_>| -> Result<GroupValues> {
        reads.options.check_cancelled()?;
        let stored = reads.stored(it)?;
        // A value to cast is read once into a new buffer: mapping it first gains nothing.
        let cast = reads
            .options
            .cast
            .is_some_and(|(from, _)| from == stored.info.dtype);
        let map_min = map_min.filter(|_| !cast);
        let mut group = load_group(&stored, &it.dests, map_min, given)?;
        group.stored_bytes = super::skeleton::stored_bytes(&stored, &it.dests);
        // Read, checked and copied (or mapped privately): the shards' pages it read
        // need not stay in this process's mapping (only ranges of `DONE_MIN` and up are
        // given back: a smaller tensor is not worth the look).
        if group.stored_bytes >= crate::base::mmap::DONE_MIN as u64 {
            stored.done_with(&wants(it, &stored));
        }
        if let Some((from, to)) = reads.options.cast {
            for (_, t) in &mut group.values {
                cast_tensor(t, from, to)?;
            }
        }
        reads.tracker.add(it.bytes);
        Ok(group)
    };
    let run = || {
        super::pipeline::pipeline(
            items,
            READ_AHEAD,
            |it| it.bytes,
            joins,
            enter,
            |it| {
                if let Ok(s) = reads.stored(it) {
                    s.prefetch(&wants(it, &s))
                }
            },
            |it| load_item(it).map_err(|e| e.while_loading(it.dests.iter().map(|d| &*d.0.name))),
        )
    };
    let groups = match &pool {
        Some(pool) => {
            // While it waits, a caller that is a worker of another pool runs that pool's jobs:
            // not the library's, so not marked as reading for it (`sigbus`).
            let _paused = crate::base::sigbus::paused();
            pool.install(run)
        }
        None => run(),
    }?;
    let mut values = Vec::new();
    for g in groups {
        report.stored_reads += g.stored_reads;
        report.stored_bytes += g.stored_bytes;
        report.bytes += g.given_bytes;
        for (name, t) in g.values {
            add_bytes(report, &t);
            values.push((name, t));
        }
    }
    Ok(values)
}

/// Counts a loaded value in the report.
fn add_bytes(report: &mut LoadReport, t: &Tensor) {
    match &t.data {
        TensorData::Bytes(b) => {
            report.bytes += b.len() as u64;
            if b.is_mapped() {
                report.mapped_bytes += b.len() as u64;
            }
        }
        TensorData::Strings(s) => report.bytes += s.total_bytes(),
    }
}

/// Loads every destination (variable or part, and its box) of one stored tensor, re-checking what
/// the call checked (the checkpoint may have changed since). Each stored entry is read and
/// verified once; with `map_min`, a value stored exactly as the variable needs it and at least
/// that large is a copy-on-write mapping of the file instead of a copy. A destination with a
/// buffer in `given` is read into it and yields no value.
pub(crate) fn load_group(
    stored: &Stored<'_>,
    dests: &[(&Variable, &Slice)],
    map_min: Option<u64>,
    given: &Given<'_>,
) -> Result<GroupValues> {
    let info = stored.info;
    let regions: Vec<Region> = dests.iter().map(|d| d.1.region(&info.shape)).collect();
    for (&(v, slice), want) in dests.iter().zip(&regions) {
        check_dest(stored, v, slice, want)?;
    }
    // With mapping, the overlap and coverage checks TensorFlow makes run first, once for the
    // whole group, before any value is mapped (without, `assemble` runs them).
    let pieces = match map_min {
        Some(_) => Some(stored.covering(&regions.iter().collect::<Vec<_>>())?),
        None => None,
    };
    /// Where one destination's value goes.
    enum Out<'g> {
        Mapped(TensorData),
        Own(TensorData),
        Given(ElementsMut<'g>),
        /// Read into the first (stored dtype), then converted into the given buffer.
        Convert(TensorData, ElementsMut<'g>, DType, DType),
    }
    // A value stored exactly as its variable needs it is mapped, unless another value of the
    // group is copied from the same stored piece: that copy reads and verifies the entry anyway,
    // and mapping it too would read it twice (`LoadReport::stored_reads`: each entry once).
    let map_ok: Vec<bool> = match map_min {
        Some(min) => {
            let mappable = dests
                .iter()
                .zip(&regions)
                .map(|(&(v, _), want)| Ok(!given.contains(&v.name) && stored.mappable(want, min)?))
                .collect::<Result<Vec<bool>>>()?;
            let copied: Vec<&Region> = regions
                .iter()
                .zip(&mappable)
                .filter_map(|(r, &m)| (!m).then_some(r))
                .collect();
            regions
                .iter()
                .zip(&mappable)
                .map(|(want, &m)| m && !copied.iter().any(|c| c.overlaps(want)))
                .collect()
        }
        None => Vec::new(),
    };
    let mut outs: Vec<Out<'_>> = Vec::with_capacity(dests.len());
    let mut stored_reads = 0;
    let mut given_bytes = 0;
    let mut verified = Vec::new();
    for (i, (&(v, _), want)) in dests.iter().zip(&regions).enumerate() {
        if let Some(g) = given.take(&v.name) {
            // Counted in the buffer's dtype, as a value the library casts is (after the cast).
            given_bytes += value_bytes(v, g.convert.map_or(v.dtype, |(_, to)| to));
            outs.push(match g.convert {
                None => Out::Given(g.buf),
                Some((from, to)) => Out::Convert(empty_value(v)?, g.buf, from, to),
            });
            continue;
        }
        // A large value stored exactly as this variable needs it: a copy-on-write mapping.
        let mapped = match map_min {
            Some(min) if map_ok[i] => stored.map_value(want, min, &mut verified)?,
            _ => None,
        };
        if let Some((bytes, read)) = mapped {
            outs.push(Out::Mapped(TensorData::Bytes(bytes)));
            stored_reads += usize::from(read);
            continue;
        }
        outs.push(Out::Own(empty_value(v)?));
    }
    let mut requests: Vec<(Region, ElementsMut<'_>)> = regions
        .iter()
        .zip(outs.iter_mut())
        .filter_map(|(want, out)| match out {
            Out::Mapped(_) => None,
            Out::Own(d) => Some((want.clone(), d.elements_mut())),
            Out::Given(buf) => Some((want.clone(), buf.reborrow())),
            Out::Convert(d, ..) => Some((want.clone(), d.elements_mut())),
        })
        .collect();
    if !requests.is_empty() {
        stored_reads += match &pieces {
            Some(pieces) => stored.assemble_from(pieces, &mut requests)?,
            None => stored.assemble(&mut requests)?,
        };
    }
    drop(requests);
    for (&(v, _), out) in dests.iter().zip(outs.iter_mut()) {
        if let Out::Convert(TensorData::Bytes(src), buf, from, to) = out {
            convert_into(v, src, buf, *from, *to)?;
        }
    }
    let values = dests
        .iter()
        .zip(outs)
        .filter_map(|(&(v, _), out)| {
            let data = match out {
                Out::Mapped(d) | Out::Own(d) => d,
                Out::Given(_) | Out::Convert(..) => return None,
            };
            let t = Tensor {
                dtype: v.dtype,
                shape: v.shape.clone(),
                data,
            };
            Some((v.name.clone(), t))
        })
        .collect();
    Ok(GroupValues {
        stored_reads,
        values,
        given_bytes,
        stored_bytes: 0,
    })
}

/// Converts `src` (`v`'s value in `from`) into `buf` (in `to`; held transposed for a `Held`
/// buffer of a value of 2 or more axes).
fn convert_into(
    v: &Variable,
    src: &[u8],
    buf: &mut ElementsMut<'_>,
    from: DType,
    to: DType,
) -> Result<()> {
    let (dst, held) = buf.bytes().ok_or_else(|| {
        ErrorKind::InvalidArgument(format!(
            "variable {:?}: strings cannot be converted",
            v.name
        ))
    })?;
    match held.dims(&v.shape) {
        Some((rows, mid, _)) => crate::base::copy::transpose_converted(
            src,
            rows,
            mid,
            to.size().unwrap_or(1),
            dst,
            |s, d| super::cast::convert(from, to, s, d),
            &v.name,
        )?,
        _ => super::cast::convert(from, to, src, dst),
    }
    Ok(())
}

/// Memory for `v`'s value, to be filled: zeroed bytes, or empty strings.
fn empty_value(v: &Variable) -> Result<TensorData> {
    let n = num_elements(&v.shape).unwrap_or(0) as usize;
    Ok(match v.dtype.size() {
        Some(size) => TensorData::Bytes(crate::base::mmap::alloc_zeroed(n * size, &v.name)?.into()),
        None => TensorData::Strings(Strings::empty(n, &v.name)?),
    })
}

/// A value of `v`'s shape in `dtype`, every element `elem` (empty strings for a string variable).
pub(crate) fn filled_tensor(v: &Variable, dtype: DType, elem: &[u8]) -> Result<Tensor> {
    // The store bounded the size when the variable was created.
    let n = num_elements(&v.shape).unwrap_or(0) as usize;
    let data = match dtype.size() {
        Some(size) => {
            let mut bytes = crate::base::mmap::alloc_zeroed(n * size, &v.name)?;
            if elem.iter().any(|&b| b != 0) {
                bytes
                    .chunks_exact_mut(size)
                    .for_each(|c| c.copy_from_slice(elem));
            }
            TensorData::Bytes(bytes.into())
        }
        None => TensorData::Strings(Strings::empty(n, &v.name)?),
    };
    Ok(Tensor {
        dtype,
        shape: v.shape.clone(),
        data,
    })
}

/// Checks that `v` (with its box `want`, from `slice`) can take its value from the stored tensor:
/// what the call checked, checked again since the checkpoint may have changed.
pub(crate) fn check_dest(
    stored: &Stored<'_>,
    v: &Variable,
    slice: &Slice,
    want: &Region,
) -> Result<()> {
    let info = stored.info;
    let ckpt = || stored.ckpt.prefix().to_path_buf();
    // A whole variable takes the whole tensor; a part takes its box of a tensor whose shape
    // is the partitioned variable's full shape.
    let (name, shape) = match (&v.part, slice.is_full()) {
        (Some(p), false) => (&p.full_name, &p.full_shape),
        _ => (&v.name, &v.shape),
    };
    // The box was made by the store from the same full shape, so it lies inside the tensor once
    // the shapes agree (a part of an empty variable may have an empty extent: it takes nothing).
    if *shape != info.shape || want.shape() != v.shape {
        return Err(ErrorKind::ShapeMismatch {
            ckpt: ckpt(),
            variable: name.clone(),
            variable_shape: shape.clone(),
            tensor: info.name.clone(),
            tensor_shape: info.shape.clone(),
        }
        .into());
    }
    if v.dtype != info.dtype {
        return Err(ErrorKind::DtypeMismatch {
            ckpt: ckpt(),
            variable: v.name.clone(),
            variable_dtype: v.dtype,
            tensor: info.name.clone(),
            tensor_dtype: info.dtype,
            hint: None,
        }
        .into());
    }
    Ok(())
}

/// Converts a loaded value for [`LoadOptions::cast`] (other dtypes are left alone).
pub(crate) fn cast_tensor(t: &mut Tensor, from: DType, to: DType) -> Result<()> {
    if t.dtype != from {
        return Ok(());
    }
    if let TensorData::Bytes(b) = &t.data {
        let n = b.len() / from.size().unwrap_or(1);
        let mut out = crate::base::mmap::alloc_zeroed(n * to.size().unwrap_or(1), "cast value")?;
        super::cast::convert(from, to, b, &mut out);
        t.data = TensorData::Bytes(out.into());
        t.dtype = to;
    }
    Ok(())
}
