//! The executor's [`Link`] on a real GPU, with cudarc: the driver API and NVRTC, both loaded at
//! run time, so the crate builds and runs without CUDA installed. Every first touch of the driver
//! is guarded by `is_culib_present()` (cudarc panics when the library is missing); every driver
//! failure becomes [`ErrorKind::Device`] naming the operation.
//!
//! One link per GPU is kept for the life of the process: the context, three streams (the DMA lane
//! and two ring lanes), the pinned staging buffers (fresh memory page-locked in place: 12–19 ms
//! for 256 MiB on the H200, where the driver's own pinned allocation took 78–111 ms; paid once,
//! and all but the first buffer's share while the ring already runs)
//! and the kernels. Each kernel is compiled by NVRTC alone, when a load first
//! needs it, and its PTX is kept on disk ([`kernel_cache_dir`]) for the next process: a fresh
//! process that loads a BERT transposes with one kernel, read from the cache, instead of compiling
//! every kernel source (~0.4 s of NVRTC on the development VM).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtrMut, DriverError,
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use super::exec::{staggered, Kernel, Link, Staged, LANES};
use crate::base::device::DeviceMemory;
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::mmap::FreshMemory;

/// The kernel sources of `kernels/`, compiled into the crate.
pub(crate) const SOURCES: &[(&str, &str)] = &[
    ("slice_copy.cu", include_str!("../../kernels/slice_copy.cu")),
    ("cast.cu", include_str!("../../kernels/cast.cu")),
    // One program: the transposes convert with cast.cu's functions.
    (
        "transpose.cu",
        concat!(
            include_str!("../../kernels/cast.cu"),
            include_str!("../../kernels/transpose.cu")
        ),
    ),
];

/// Every kernel the executor launches, by source.
pub(crate) const FUNCTIONS: &[(&str, &[&str])] = &[
    (
        "slice_copy.cu",
        &["copy2d_1", "copy2d_2", "copy2d_4", "copy2d_8", "copy2d_16"],
    ),
    (
        "cast.cu",
        &[
            "cast2d_f32_bf16",
            "cast2d_f32_f16",
            "cast2d_bf16_f32",
            "cast2d_f16_f32",
        ],
    ),
    (
        "transpose.cu",
        &[
            "transpose2d_1",
            "transpose2d_2",
            "transpose2d_4",
            "transpose2d_8",
            "transpose2d_16",
            "transpose2d_f32_bf16",
            "transpose2d_f32_f16",
            "transpose2d_bf16_f32",
            "transpose2d_f16_f32",
        ],
    ),
];

/// Whether a shared library can be loaded under one of `names`.
///
/// cudarc panics, rather than returning an error, when it cannot load a library it needs, so
/// every first touch is guarded by this check. cudarc's own check (`is_culib_present`) exists only
/// when cudarc loads libraries at run time; when another crate of the binary (candle, say) makes
/// it link them instead, the process could not have started without them, and the check here
/// holds either way. The names are those cudarc's loader tries for CUDA 11 to 13; where cudarc
/// was built for a version whose library this machine lacks, the first touch panics anyway, and
/// [`guarded`] turns that into an error.
fn loadable(names: &[&str]) -> bool {
    #[cfg(unix)]
    {
        names.iter().any(|name| {
            let Ok(name) = std::ffi::CString::new(*name) else {
                return false;
            };
            // SAFETY: dlopen with a valid C string; a handle it returns is closed once, here.
            unsafe {
                let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
                if handle.is_null() {
                    return false;
                }
                libc::dlclose(handle);
                true
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = names;
        true
    }
}

/// Runs `f`, a first touch of a CUDA library, turning a panic of cudarc's loader into an error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA library could not be loaded".into())
    })
}

/// GPUs the driver reports (an error when the driver cannot be loaded or asked).
pub(crate) fn device_count() -> std::result::Result<usize, String> {
    guarded(CudaContext::device_count)?
        .map(|n| n.max(0) as usize)
        .map_err(|e| format!("{e:?}"))
}

/// Whether the CUDA driver library can be loaded.
pub(crate) fn driver_present() -> bool {
    loadable(&["libcuda.so", "libcuda.so.1"])
}

/// Whether cudarc can use NCCL; if not, why.
///
/// NCCL's soname is `libnccl.so.2`, and its packages (the system's `libnccl2`, pip's
/// `nvidia-nccl-cu13`) install that name only. Where another crate of the binary made cudarc link
/// its libraries, that is the name the process loaded; where cudarc loads them at run time, it
/// looks for `libnccl.so` (and versioned names NCCL does not use), which then has to be a link
/// to it. So cudarc itself is asked, by a first NCCL call (guarded: its loader panics), once per
/// process, after checking that some NCCL is on the loader path at all, so that a machine
/// without NCCL prints no panic message. A machine with only `libnccl.so.2` under run-time
/// loading prints cudarc's panic message once, and the answer says what to link.
#[cfg(feature = "nccl")]
pub(crate) fn nccl_usable() -> std::result::Result<(), String> {
    static USABLE: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    USABLE
        .get_or_init(|| {
            if !loadable(&["libnccl.so", "libnccl.so.2"]) {
                return Err("NCCL (libnccl.so.2) is not on the loader path".into());
            }
            match guarded(cudarc::nccl::result::get_nccl_version) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("NCCL does not answer: {e:?}")),
                Err(panic) => Err(format!(
                    "cudarc cannot load NCCL ({}); NCCL installs libnccl.so.2, and cudarc \
                     (loading NCCL at run time) looks for libnccl.so: add a link of that name to \
                     it, in a folder on LD_LIBRARY_PATH",
                    panic.chars().take(160).collect::<String>()
                )),
            }
        })
        .clone()
}

/// Whether NVRTC can be loaded.
pub(crate) fn nvrtc_present() -> bool {
    loadable(&[
        "libnvrtc.so",
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so.11",
    ])
}

/// Why kernels cannot be compiled when NVRTC is missing.
const NO_NVRTC: &str = "NVRTC (libnvrtc.so) cannot be loaded: install the CUDA toolkit's NVRTC, or pip's nvidia-cuda-nvrtc matching the driver, with its lib folder on LD_LIBRARY_PATH";

/// Whether `line` of a kernel source instantiates a kernel (`TFCKPT_COPY2D(copy2d_4, ...)`).
fn instantiates(line: &str) -> bool {
    line.starts_with("TFCKPT_") && line.contains('(')
}

/// The NVRTC program for kernel `name` alone: the source that defines it (with what it builds
/// on), every other kernel's instantiation left out. One kernel compiles in a fraction of its
/// file's time (the f32 transpose: ~40 ms, against ~250 ms for all of `transpose.cu`, on the
/// development VM). `None` for a name no source instantiates.
pub(crate) fn kernel_program(name: &str) -> Option<(&'static str, String)> {
    let (file, _) = FUNCTIONS.iter().find(|(_, fs)| fs.contains(&name))?;
    let (_, src) = SOURCES.iter().find(|(f, _)| f == file)?;
    let me = format!("({name},");
    let mut out = String::with_capacity(src.len());
    for line in src.lines().filter(|l| !instantiates(l) || l.contains(&me)) {
        out.push_str(line);
        out.push('\n');
    }
    Some((file, out))
}

/// Where compiled kernels are kept between processes: `TFCKPT_KERNEL_CACHE` (a folder; empty or
/// `off`: nowhere), else `$XDG_CACHE_HOME/tfckpt/kernels`, else `$HOME/.cache/tfckpt/kernels`.
/// The cache is an optimisation only: a file that cannot be read, written or trusted is compiled
/// again.
pub(crate) fn kernel_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TFCKPT_KERNEL_CACHE") {
        return (!dir.is_empty() && dir != "off").then(|| PathBuf::from(dir));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(|d| !d.is_empty())?).join(".cache"),
    };
    Some(base.join("tfckpt").join("kernels"))
}

/// NVRTC's version, e.g. `13.0` (part of a cached kernel's identity).
fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers; NVRTC is present (checked by the caller's compile path).
    let r = guarded(|| unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) });
    match r {
        Ok(cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS) => format!("{major}.{minor}"),
        _ => "unknown".into(),
    }
}

/// What to do about PTX the driver refuses: NVRTC newer than the driver writes PTX the driver
/// cannot read (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`), so the two versions are named.
fn ptx_hint(e: &cudarc::driver::DriverError) -> String {
    if e.0 != sys::cudaError_enum::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
        return String::new();
    }
    let mut v = 0;
    // SAFETY: writes an int; the driver is loaded (a context exists).
    let driver = match unsafe { sys::cuDriverGetVersion(&mut v) }.result() {
        Ok(()) => format!("{}.{}", v / 1000, v % 1000 / 10),
        Err(_) => "unknown".into(),
    };
    format!(
        " (NVRTC {} writes PTX newer than this driver, for CUDA {driver}, reads: use an NVRTC no \
         newer than the driver, or update the driver)",
        nvrtc_version()
    )
}

/// A cached kernel's text, if the file is this user's own file, not a link (the folder can be
/// named by `TFCKPT_KERNEL_CACHE`, and a file planted there by someone else, or a link to
/// another of the cache's files, would run on the GPU).
fn read_cached(path: &Path) -> Option<String> {
    use std::io::Read;
    // Checked on the file opened (on Unix the open itself refuses a link), so that nothing can
    // be swapped in between the check and the read.
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    #[cfg(not(unix))]
    if std::fs::symlink_metadata(path)
        .ok()?
        .file_type()
        .is_symlink()
    {
        return None;
    }
    let mut file = options.open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return None;
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Writes `text` into a new file `path` (never through a link or over a file someone planted
/// there: it must not exist), readable and writable by this user alone.
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// Creates `dir` (and its parents) readable and writable by this user alone where it makes them.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The first line of a cached kernel: what checks the rest.
fn cache_header(ptx: &str) -> String {
    format!(
        "// tfckpt kernel cache: crc32c {:08x}, {} bytes\n",
        crate::base::crc::serial(ptx.as_bytes()),
        ptx.len()
    )
}

/// How [`kernel_ptx`]'s error begins when NVRTC refused the options, the target architecture
/// among them (an NVRTC older than the GPU).
const ARCH_REFUSED: &str = "NVRTC refused the options for";

/// The PTX of `name` for `arch`, or for NVRTC's default target if NVRTC refused `arch` (the
/// driver then compiles it for the GPU on loading).
fn kernel_ptx_or_default(
    name: &str,
    arch: Option<&'static str>,
    cache: Option<&Path>,
    read: bool,
) -> std::result::Result<(String, bool), String> {
    kernel_ptx(name, arch, cache, read).or_else(|e| {
        if arch.is_some() && e.starts_with(ARCH_REFUSED) {
            kernel_ptx(name, None, cache, read).map_err(|d| format!("{e}; default target: {d}"))
        } else {
            Err(e)
        }
    })
}

/// The PTX of kernel `name` for `arch` (`None`: NVRTC's default), from `cache` when it holds
/// this very program (same source, options and NVRTC version, intact, this user's, defining that
/// kernel) and `read` is set (not for a cached PTX the driver refused), else compiled by NVRTC and
/// kept in `cache` (best effort: written whole or not at all). Also says whether it came from the
/// cache.
pub(crate) fn kernel_ptx(
    name: &str,
    arch: Option<&'static str>,
    cache: Option<&Path>,
    read: bool,
) -> std::result::Result<(String, bool), String> {
    let (file, program) = kernel_program(name).ok_or_else(|| format!("no kernel {name}"))?;
    if !nvrtc_present() {
        return Err(NO_NVRTC.into());
    }
    let options = CompileOptions {
        arch,
        name: Some(file.into()),
        ..Default::default()
    };
    // Everything the PTX depends on: the program, NVRTC and its options (an NVRTC whose version
    // cannot be told is not cached).
    let version = nvrtc_version();
    let identity = format!(
        "tfckpt {} nvrtc {version} {options:?}",
        env!("CARGO_PKG_VERSION")
    );
    let key = (u64::from(crate::base::crc::serial(program.as_bytes())) << 32)
        | u64::from(crate::base::crc::serial(identity.as_bytes()));
    let cache = cache.filter(|_| version != "unknown");
    let path = cache.map(|d| {
        d.join(format!(
            "{name}-{}-{key:016x}.ptx",
            arch.unwrap_or("default")
        ))
    });
    let cached = path.as_deref().filter(|_| read).and_then(read_cached);
    if let Some((header, ptx)) = cached.as_deref().and_then(|t| t.split_once('\n')) {
        if format!("{header}\n") == cache_header(ptx) && ptx.contains(&format!(".entry {name}(")) {
            return Ok((ptx.to_string(), true));
        }
    }
    let ptx = guarded(|| compile_ptx_with_opts(&program, options))?
        .map_err(|e| {
            let refused = matches!(
                &e,
                CompileError::CompileError { nvrtc, .. }
                    if nvrtc.0 == cudarc::nvrtc::sys::nvrtcResult::NVRTC_ERROR_INVALID_OPTION
            );
            let what = format!("kernels/{file} ({name}): {e:?}");
            match arch {
                Some(arch) if refused => format!("{ARCH_REFUSED} {arch}: {what}"),
                _ => what,
            }
        })?
        .to_src();
    if let (Some(dir), Some(path)) = (cache, &path) {
        // Written aside and renamed into place, so that a reader never sees half a file; the
        // folder is made private to this user (the code in it runs on the GPU).
        static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let written = make_private_dir(dir)
            .and_then(|()| write_new(&tmp, &format!("{}{ptx}", cache_header(&ptx))))
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((ptx, false))
}

fn device_err(device: u32, op: impl Into<String>, e: impl std::fmt::Debug) -> Error {
    ErrorKind::Device {
        device: format!("cuda:{device}"),
        op: op.into(),
        reason: format!("{e:?}"),
    }
    .into()
}

fn unavailable(device: u32, reason: impl Into<String>) -> Error {
    ErrorKind::DeviceUnavailable {
        device: format!("cuda:{device}"),
        reason: reason.into(),
    }
    .into()
}

/// The CUDA context current on the calling thread when made, current again when dropped. A load
/// binds its GPUs' contexts to the threads working for it, the caller's among them, and with
/// several GPUs the last one bound stays current; the trainer's next CUDA call on that thread
/// expects the one it had (cudarc frees a buffer on the per-thread default stream candle uses
/// without binding, and that stream is the current context's).
pub(crate) struct KeepCurrent(Option<sys::CUcontext>);

impl KeepCurrent {
    pub(crate) fn new() -> KeepCurrent {
        if !driver_present() {
            return KeepCurrent(None);
        }
        // None current, or the driver not yet initialised (nothing of CUDA used yet): none
        // current again afterwards. Guarded: cudarc's loader panics where it cannot load.
        let current = guarded(result::ctx::get_current)
            .ok()
            .and_then(|r| r.ok())
            .flatten()
            .unwrap_or(std::ptr::null_mut());
        KeepCurrent(Some(current))
    }

    /// The same where the driver is known to be loaded (a link exists): no checks first. The
    /// link's methods bind their GPU's context with one of these around them, so that the threads
    /// of the pool a load runs on, which also run the trainer's jobs, keep their own context.
    pub(crate) fn loaded() -> KeepCurrent {
        match result::ctx::get_current() {
            Ok(current) => KeepCurrent(Some(current.unwrap_or(std::ptr::null_mut()))),
            Err(_) => KeepCurrent(None),
        }
    }
}

/// Binds `ctx` to the calling thread until the guard drops (then the thread's own context is
/// current again), without cudarc's check, which first returns (and clears) an error a `Drop`
/// stored in the context, without binding: for the waits and releases that must happen after an
/// error too (a stored error stays for the next call that starts work to report).
pub(crate) fn bind_anyway(
    ctx: &CudaContext,
) -> (KeepCurrent, std::result::Result<(), DriverError>) {
    let keep = KeepCurrent::loaded();
    (keep, set_current_anyway(ctx))
}

/// Makes `ctx` current on the calling thread without cudarc's check (see [`bind_anyway`]); it
/// stays current.
pub(crate) fn set_current_anyway(ctx: &CudaContext) -> std::result::Result<(), DriverError> {
    // SAFETY: a live context (the caller holds it).
    unsafe { result::ctx::set_current(ctx.cu_ctx()) }
}

impl Drop for KeepCurrent {
    fn drop(&mut self) {
        if let Some(ctx) = self.0 {
            // SAFETY: the context that was current (or none); an error (a context the trainer
            // destroyed meanwhile) leaves the thread as the load left it.
            let _ = unsafe { result::ctx::set_current(ctx) };
        }
    }
}

/// A GPU, ready for loads.
pub(crate) struct CudaLink {
    ordinal: u32,
    ctx: Arc<CudaContext>,
    lanes: Vec<Arc<CudaStream>>,
    /// NVRTC's target for this GPU (`None`: NVRTC's default, JIT-compiled by the driver).
    arch: OnceLock<std::result::Result<Option<&'static str>, String>>,
    /// The kernels loaded so far, by name.
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// The staging ring's buffers, kept for the next load (`None` until a load needs them).
    staging: Mutex<Option<Staging>>,
    /// The host NUMA node this GPU's PCIe root is on, where the machine has several.
    numa_node: Option<u32>,
}

/// The staging ring's pinned buffers: `count` of `bytes` each.
struct Staging {
    count: usize,
    bytes: usize,
    mem: StagingMemory,
}

enum StagingMemory {
    /// Fresh memory faulted in on every core, then page-locked in place (`cuMemHostRegister`).
    PageLocked(PageLocked),
    /// The driver's pinned allocations (`cuMemHostAlloc`), where page-locking was refused.
    Driver(Vec<PinnedHostSlice<u8>>),
}

/// Memory whose buffers (`regions`, by start address) are page-locked for `ctx` until dropped.
struct PageLocked {
    mem: Option<FreshMemory>,
    regions: Vec<usize>,
    ctx: Arc<CudaContext>,
}

impl Drop for PageLocked {
    fn drop(&mut self) {
        let Some(mem) = self.mem.take() else { return };
        let (_bound, bound) = bind_anyway(&self.ctx);
        let mut undone = bound;
        for &r in &self.regions {
            // SAFETY: registered by `CudaLink::with_staging`; staging is dropped only when no
            // copy reads it (`with_staging` returns after the ring's waits).
            undone = undone.and_then(|()| {
                unsafe { sys::cuMemHostUnregister(r as *mut std::ffi::c_void) }.result()
            });
        }
        if undone.is_err() {
            // Never unmapped while the driver may still hold its pages: kept for the process.
            std::mem::forget(mem);
        }
    }
}

impl Staging {
    fn holds(&self, count: usize, bytes: usize) -> bool {
        self.count >= count && self.bytes >= bytes
    }
}

/// The link of GPU `ordinal`, made on first use and kept for the process.
pub(crate) fn link(ordinal: u32) -> Result<Arc<CudaLink>> {
    static LINKS: OnceLock<Mutex<HashMap<u32, Arc<CudaLink>>>> = OnceLock::new();
    let mut links = LINKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(l) = links.get(&ordinal) {
        return Ok(l.clone());
    }
    if !driver_present() {
        return Err(unavailable(
            ordinal,
            "the CUDA driver library (libcuda.so) cannot be loaded: no NVIDIA driver on this machine, or it is not on the loader path",
        ));
    }
    let count = device_count().map_err(|e| unavailable(ordinal, e))?;
    if ordinal as i64 >= count as i64 {
        return Err(unavailable(
            ordinal,
            format!("this machine has {count} GPU(s)"),
        ));
    }
    // Event tracking stays on: the slices handed out (`DeviceTensor::cuda_slice`) then order
    // their use and their free against the trainer's streams as any cudarc slice does. Making the
    // context and its streams binds it; the thread's own is current again after.
    let _current = KeepCurrent::loaded();
    let ctx = CudaContext::new(ordinal as usize)
        .map_err(|e| device_err(ordinal, "creating a context", e))?;
    let lanes = (0..LANES)
        .map(|_| ctx.new_stream())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| device_err(ordinal, "creating streams", e))?;
    let pci = |a| ctx.attribute(a).ok().and_then(|v| u32::try_from(v).ok());
    use sys::CUdevice_attribute::*;
    let numa_node = match (
        pci(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
        pci(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
        pci(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID),
    ) {
        (Some(domain), Some(bus), Some(device)) => {
            crate::base::mmap::pci_numa_node(Path::new("/sys"), domain, bus, device)
        }
        _ => None,
    };
    let l = Arc::new(CudaLink {
        ordinal,
        ctx,
        lanes,
        arch: OnceLock::new(),
        functions: Mutex::new(HashMap::new()),
        staging: Mutex::new(None),
        numa_node,
    });
    links.insert(ordinal, l.clone());
    Ok(l)
}

impl CudaLink {
    /// The stream kernels (and the replicas' all-gathers) run on.
    #[cfg(feature = "nccl")]
    pub(crate) fn kernel_stream(&self) -> Arc<CudaStream> {
        self.lanes[0].clone()
    }

    /// Waits for the kernel lane.
    #[cfg(feature = "nccl")]
    pub(crate) fn synchronize_kernel_lane(&self) -> Result<()> {
        let (_bound, bound) = bind_anyway(&self.ctx);
        // SAFETY: a stream of this link's context.
        bound
            .and_then(|()| unsafe { result::stream::synchronize(self.lanes[0].cu_stream()) })
            .map_err(|e| self.err("synchronising", e))
    }

    fn err(&self, op: impl Into<String>, e: impl std::fmt::Debug) -> Error {
        device_err(self.ordinal, op, e)
    }

    /// Runs `f` over `count` staging buffers of `bytes` made now: fresh memory (on the GPU's
    /// NUMA node where the machine has several) page-locked in place one buffer at a time, each
    /// faulted in on every core first, which on the H200 took 12–19 ms for 256 MiB where the
    /// driver's pinned allocation took 78–111 ms. `f` starts once the first buffer is locked;
    /// the others join it as a helper thread locks them ([`staggered`]). Where page-locking is
    /// refused, the driver's pinned allocations, all made first. Returns `f`'s result (or its
    /// panic) and the buffers, to keep. Binds the context itself.
    fn with_new_staging<R>(
        &self,
        count: usize,
        bytes: usize,
        f: impl FnOnce(&mut Staged<'_>) -> R,
    ) -> Result<(std::thread::Result<R>, Staging)> {
        let mut f = Some(f);
        if let Ok(mut mem) = FreshMemory::for_buffers(count, bytes) {
            // On the GPU's own node where the machine has several (the pages are faulted in
            // by threads of every node); a refusal leaves them wherever they fall.
            if let Some(node) = self.numa_node {
                let _ = mem.prefer_node(node);
            }
            let lock = |b: &mut [u8]| -> std::result::Result<(), String> {
                crate::base::mmap::fault_in(b);
                let (_bound, bound) = bind_anyway(&self.ctx);
                // SAFETY: `b` is a buffer of `mem`, page-aligned, mapped, readable and writable
                // until `PageLocked` unregisters it and only then unmaps it. Flags 0: written by
                // the CPU, read by the DMA.
                bound
                    .and_then(|()| {
                        unsafe {
                            sys::cuMemHostRegister_v2(
                                b.as_mut_ptr() as *mut std::ffi::c_void,
                                b.len(),
                                0,
                            )
                        }
                        .result()
                    })
                    .map_err(|e| format!("{e:?}"))
            };
            let ran = staggered(mem.buffers(count, bytes), &lock, |staged| {
                (f.take().expect("run once"))(staged)
            });
            if let Ok((r, regions)) = ran {
                let st = Staging {
                    count: regions.len(),
                    bytes,
                    mem: StagingMemory::PageLocked(PageLocked {
                        mem: Some(mem),
                        regions,
                        ctx: self.ctx.clone(),
                    }),
                };
                return Ok((r, st));
            }
        }
        let mut bufs = (0..count)
            .map(|_| {
                // Flags 0: not write-combined, so CPU writes run at full speed (gpu-notes.md).
                // SAFETY: the memory is written before it is copied anywhere.
                unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }
                    .map_err(|e| self.err(format!("pinning {bytes} bytes of staging"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let slices = self.driver_slices(&mut bufs)?;
        let f = f.take().expect("not run: page-locking was refused");
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut Staged::new(slices))));
        let st = Staging {
            count,
            bytes,
            mem: StagingMemory::Driver(bufs),
        };
        Ok((r, st))
    }

    /// The driver's pinned allocations as byte slices (binds the context).
    fn driver_slices<'a>(&self, bufs: &'a mut [PinnedHostSlice<u8>]) -> Result<Vec<&'a mut [u8]>> {
        bufs.iter_mut()
            .map(|b| b.as_mut_slice().map_err(|e| self.err("staging buffer", e)))
            .collect()
    }

    /// Lets each GPU of `peers` that can reach this one read and write what this GPU's memory
    /// pool hands out. cudarc allocates from the pool (`cuMemAllocAsync`) where the GPU has one,
    /// and NCCL's all-gather between GPUs of one process reads and writes the neighbours' buffers
    /// directly: the peer access NCCL enables covers `cuMemAlloc` memory, never pool memory,
    /// which only `cuMemPoolSetAccess` opens (without it, the gather faults with an illegal
    /// address, an error that ends every later CUDA call of the process). It applies to the
    /// pool's earlier allocations too, the trainer's buffers from the same pool included.
    #[cfg(feature = "nccl")]
    pub(crate) fn share_pool_with(&self, peers: &[&CudaLink]) -> Result<()> {
        use sys::CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED;
        let _bound = self.bind()?;
        let dev = self.ctx.cu_device();
        // SAFETY: a device handle of a live context.
        let pools = unsafe {
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
        }
        .map_err(|e| self.err("asking whether it has memory pools", e))?;
        if pools == 0 {
            // cudarc allocates with `cuMemAlloc` here: NCCL's peer access covers it.
            return Ok(());
        }
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: writes the device's current pool handle into `pool`.
        unsafe { sys::cuDeviceGetMemPool(&mut pool, dev) }
            .result()
            .map_err(|e| self.err("cuDeviceGetMemPool", e))?;
        for peer in peers.iter().filter(|p| p.ordinal != self.ordinal) {
            let mut reach = 0;
            // SAFETY: two device handles of live contexts; writes an int.
            unsafe { sys::cuDeviceCanAccessPeer(&mut reach, peer.ctx.cu_device(), dev) }
                .result()
                .map_err(|e| self.err("cuDeviceCanAccessPeer", e))?;
            if reach == 0 {
                // No direct path: NCCL moves the shares through host memory.
                continue;
            }
            // SAFETY: all-zero bytes are a valid `CUmemAccessDesc` (plain integers).
            let mut desc: sys::CUmemAccessDesc = unsafe { std::mem::zeroed() };
            desc.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
            // The location's `id` is a plain field in CUDA 13.0's headers and a union's from
            // 13.2 on (the version is the build's): in both, the 4 bytes after the type.
            const _: () = assert!(std::mem::size_of::<sys::CUmemLocation>() == 8);
            // SAFETY: writes the `int` at offset 4 of the 8-byte location, its `id` in every
            // layout above.
            unsafe {
                std::ptr::addr_of_mut!(desc.location)
                    .cast::<i32>()
                    .add(1)
                    .write(peer.ordinal as i32)
            };
            desc.flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
            // SAFETY: one descriptor, read during the call.
            unsafe { sys::cuMemPoolSetAccess(pool, &desc, 1) }
                .result()
                .map_err(|e| {
                    self.err(
                        format!("opening its memory pool to cuda:{}", peer.ordinal),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// Binds this GPU's context to the calling thread until the guard drops; then the thread's
    /// own is current again. cudarc's binding first returns (and clears) an error a `Drop` of the
    /// context stored earlier, if any, without binding: for calls that start work.
    fn bind(&self) -> Result<KeepCurrent> {
        let keep = KeepCurrent::loaded();
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.err("binding the context", e))?;
        Ok(keep)
    }

    /// NVRTC's target for this GPU: the architectures this crate targets by name, else NVRTC's
    /// default (PTX the driver JIT-compiles on load).
    fn arch(&self) -> Result<Option<&'static str>> {
        self.arch
            .get_or_init(|| {
                let cc = self
                    .ctx
                    .compute_capability()
                    .map_err(|e| format!("{e:?}"))?;
                Ok(match cc {
                    (9, 0) => Some("sm_90"),
                    (8, 0) => Some("sm_80"),
                    (8, 9) => Some("sm_89"),
                    (10, 0) => Some("sm_100"),
                    _ => None,
                })
            })
            .clone()
            .map_err(|e| unavailable(self.ordinal, format!("the kernels cannot be prepared: {e}")))
    }

    /// Loads the kernels in `names` not loaded yet: each compiled alone (in parallel) or read
    /// from the kernel cache, then loaded into this GPU's context.
    fn prepare(&self, names: &[&'static str]) -> Result<()> {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<&'static str> = names
            .iter()
            .copied()
            .filter(|n| !functions.contains_key(n))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let arch = self.arch()?;
        // Bound first: cudarc's `load_module` binds too, and an error the context stored earlier
        // is this call's, not a sign of a bad cached PTX.
        let _bound = self.bind()?;
        let cache = kernel_cache_dir();
        let compiled: Vec<std::result::Result<(String, bool), String>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = missing
                    .iter()
                    .map(|&n| {
                        let cache = cache.as_deref();
                        scope.spawn(move || kernel_ptx_or_default(n, arch, cache, true))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("NVRTC panicked".into())))
                    .collect()
            });
        let fail =
            |e: String| unavailable(self.ordinal, format!("the kernels cannot be prepared: {e}"));
        for (name, ptx) in missing.into_iter().zip(compiled) {
            let (ptx, cached) = ptx.map_err(fail)?;
            let load = |ptx: String| self.ctx.load_module(Ptx::from_src(ptx));
            let loading = |e: DriverError| format!("loading kernel {name}: {e:?}{}", ptx_hint(&e));
            let module = match load(ptx) {
                // A cached PTX the driver refuses as PTX (a driver downgraded since, say):
                // compiled again, and the cache's file replaced.
                Err(e) if cached && refused_ptx(&e) => {
                    let (fresh, _) = kernel_ptx_or_default(name, arch, cache.as_deref(), false)
                        .map_err(|f| fail(format!("{}; compiling it again: {f}", loading(e))))?;
                    load(fresh).map_err(|f| {
                        fail(format!("{}; compiled again: {}", loading(e), loading(f)))
                    })?
                }
                loaded => loaded.map_err(|e| fail(loading(e)))?,
            };
            let function = module
                .load_function(name)
                .map_err(|e| fail(format!("kernel {name}: {e:?}")))?;
            functions.insert(name, function);
        }
        Ok(())
    }
}

/// Whether the driver refused a module's PTX itself (not the context's state).
fn refused_ptx(e: &DriverError) -> bool {
    use sys::cudaError_enum::*;
    matches!(
        e.0,
        CUDA_ERROR_INVALID_PTX
            | CUDA_ERROR_UNSUPPORTED_PTX_VERSION
            | CUDA_ERROR_INVALID_IMAGE
            | CUDA_ERROR_NO_BINARY_FOR_GPU
    )
}

/// A fence: an event that blocks the waiting thread instead of spinning (the CPU cores are
/// needed for checksums and staging) and records no timing.
pub(crate) struct Fence {
    ev: sys::CUevent,
    ctx: Arc<CudaContext>,
}

// SAFETY: a CUevent handle may be used from any thread (the context is bound before each use).
unsafe impl Send for Fence {}

impl Drop for Fence {
    fn drop(&mut self) {
        // Bound without cudarc's check, which would clear an error the context stored and leak
        // the event.
        let (_current, bound) = bind_anyway(&self.ctx);
        if bound.is_ok() {
            // SAFETY: created by cuEventCreate below and destroyed once, here.
            let _ = unsafe { sys::cuEventDestroy_v2(self.ev) };
        }
    }
}

impl Link for CudaLink {
    type Fence = Fence;

    fn device(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    fn alloc(&self, bytes: usize, what: &str) -> Result<Arc<dyn DeviceMemory>> {
        let stream = &self.lanes[0];
        // `alloc` binds the context.
        let _current = KeepCurrent::loaded();
        // SAFETY: uninitialised device memory; the load writes every byte before it is read.
        let slice = unsafe { stream.alloc::<u8>(bytes.max(1)) }
            .map_err(|e| self.err(format!("allocating {bytes} bytes for {what:?}"), e))?;
        Ok(Arc::new(Owned::with_len(slice, bytes)))
    }

    unsafe fn register(&self, ptr: *const u8, len: usize) -> std::result::Result<(), String> {
        let (_bound, bound) = bind_anyway(&self.ctx);
        bound.map_err(|e| format!("binding the context: {e:?}"))?;
        // SAFETY: the caller guarantees the range is mapped until `unregister`.
        unsafe {
            sys::cuMemHostRegister_v2(
                ptr as *mut std::ffi::c_void,
                len,
                sys::CU_MEMHOSTREGISTER_READ_ONLY,
            )
        }
        .result()
        .map_err(|e| format!("cuMemHostRegister of {len} bytes: {e:?}"))
    }

    unsafe fn unregister(&self, ptr: *const u8) -> Result<()> {
        let (_bound, bound) = bind_anyway(&self.ctx);
        bound.map_err(|e| self.err("binding the context", e))?;
        // SAFETY: registered by `register`; the caller waited for every copy from it.
        unsafe { sys::cuMemHostUnregister(ptr as *mut std::ffi::c_void) }
            .result()
            .map_err(|e| self.err("cuMemHostUnregister", e))
    }

    unsafe fn copy(&self, lane: usize, src: &[u8], dst: u64) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller guarantees `src` stays valid until the lane's next fence and that
        // `dst` lies in a live allocation.
        unsafe { result::memcpy_htod_async(dst, src, self.lanes[lane].cu_stream()) }
            .map_err(|e| self.err(format!("copying {} bytes to {dst:#x}", src.len()), e))
    }

    fn fence(&self, lane: usize) -> Result<Fence> {
        let _bound = self.bind()?;
        let mut ev = std::mem::MaybeUninit::uninit();
        const FLAGS: u32 = sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32
            | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        // SAFETY: `ev` is written by the driver on success, and only read then.
        unsafe { sys::cuEventCreate(ev.as_mut_ptr(), FLAGS) }
            .result()
            .map_err(|e| self.err("creating an event", e))?;
        let fence = Fence {
            // SAFETY: initialised by the successful call above.
            ev: unsafe { ev.assume_init() },
            ctx: self.ctx.clone(),
        };
        // SAFETY: a live event and a live stream of this context.
        unsafe { sys::cuEventRecord(fence.ev, self.lanes[lane].cu_stream()) }
            .result()
            .map_err(|e| self.err("recording an event", e))?;
        Ok(fence)
    }

    fn wait(&self, fence: Fence) -> Result<()> {
        // The copies before the fence are waited for even after an error: their buffers are
        // reused or released next.
        let (_bound, bound) = bind_anyway(&self.ctx);
        // SAFETY: a live event (destroyed when `fence` drops, after this call).
        bound
            .and_then(|()| unsafe { sys::cuEventSynchronize(fence.ev) }.result())
            .map_err(|e| self.err("waiting for copies", e))
    }

    fn with_staging<R>(
        &self,
        count: usize,
        bytes: usize,
        f: impl FnOnce(&mut Staged<'_>) -> R,
    ) -> Result<R> {
        // Pinning and `as_mut_slice` bind the context.
        let _current = KeepCurrent::loaded();
        // Taken out of the link while in use, so that a second load on this GPU (from another
        // thread) never waits on this one's lock; it pins buffers of its own instead. Kept
        // buffers are all usable at once; new ones join the ring as they are page-locked.
        let kept = self
            .staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|s| s.holds(count, bytes));
        // `f` returns only when nothing reads the buffers any more (the ring waits for its fences,
        // or synchronises the device on error). A panic inside it (a trainer's progress callback)
        // would free them under copies in flight: every lane is waited for first.
        let (r, staging) = match kept {
            Some(mut st) => {
                let full = match &mut st.mem {
                    StagingMemory::PageLocked(p) => p
                        .mem
                        .as_mut()
                        .expect("page-locked memory until dropped")
                        .buffers(st.count, st.bytes),
                    StagingMemory::Driver(bufs) => self.driver_slices(bufs)?,
                };
                let slices: Vec<&mut [u8]> = full
                    .into_iter()
                    .take(count)
                    .map(|b| &mut b[..bytes])
                    .collect();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    f(&mut Staged::new(slices))
                }));
                (r, st)
            }
            None => self.with_new_staging(count, bytes, f)?,
        };
        let staging = Some(staging);
        let r = r.unwrap_or_else(|panic| {
            // Every lane, whatever the others answer (`synchronize`).
            let _ = Link::synchronize(self);
            std::panic::resume_unwind(panic)
        });
        let mut slot = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = staging;
        }
        Ok(r)
    }

    fn fill(&self, dst: u64, len: usize, fill: super::exec::Fill) -> Result<()> {
        use super::exec::Fill;
        let _bound = self.bind()?;
        let stream = self.lanes[0].cu_stream();
        // SAFETY: `dst .. dst + len` is a live allocation of this context (the caller's), aligned
        // for the pattern (library memory is 256-byte aligned; trainer memory is checked for the
        // element's alignment), and `len` is a whole number of patterns.
        let r = unsafe {
            match fill {
                Fill::D8(b) => sys::cuMemsetD8Async(dst, b, len, stream),
                Fill::D16(h) => sys::cuMemsetD16Async(dst, h, len / 2, stream),
                Fill::D32(w) => sys::cuMemsetD32Async(dst, w, len / 4, stream),
            }
        };
        r.result()
            .map_err(|e| self.err(format!("filling {len} bytes at {dst:#x}"), e))
    }

    fn prepare_kernels(&self, names: &[&'static str]) -> Result<()> {
        self.prepare(names)
    }

    fn kernel(&self, k: &Kernel) -> Result<()> {
        let loaded = || {
            let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
            functions.get(k.name).cloned()
        };
        // Prepared before the upload (`prepare_kernels`); loaded here only if it was not.
        let f = match loaded() {
            Some(f) => f,
            None => {
                self.prepare(&[k.name])?;
                loaded()
                    .ok_or_else(|| unavailable(self.ordinal, format!("no kernel {}", k.name)))?
            }
        };
        let ((gx, gy), (bx, by)) = k.launch_dims();
        let cfg = LaunchConfig {
            grid_dim: (gx, gy, 1),
            block_dim: (bx, by, 1),
            shared_mem_bytes: 0,
        };
        let stream = &self.lanes[0];
        // `launch` binds the context.
        let _current = KeepCurrent::loaded();
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&k.src)
            .arg(&k.dst)
            .arg(&k.rows)
            .arg(&k.row)
            .arg(&k.src_stride)
            .arg(&k.dst_stride);
        // A transpose takes the destination's column stride too.
        if k.transposes() {
            launch.arg(&k.dst_col);
        }
        // SAFETY: the kernel's parameters are (const T*, T*, u64 x4), plus a fifth u64 for a
        // transpose, as passed; the planner keeps every addressed element inside the scratch and
        // destination allocations.
        unsafe { launch.launch(cfg) }
            .map(drop)
            .map_err(|e| self.err(format!("launching {}", k.name), e))
    }

    fn synchronize(&self) -> Result<()> {
        // Every lane, whatever the others answer: after an error the load's buffers are released
        // next, and a copy still running on a lane not waited for would read or write them.
        let (_bound, bound) = bind_anyway(&self.ctx);
        let mut first = bound.err();
        for l in &self.lanes {
            // SAFETY: a stream of this link's context.
            if let Err(e) = unsafe { result::stream::synchronize(l.cu_stream()) } {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(self.err("synchronising", e)),
            None => Ok(()),
        }
    }
}

/// Device memory allocated by the library (or handed in as a cudarc slice).
pub(crate) struct Owned {
    /// Dropped in `Drop`, where the caller's context is current again after: cudarc's drop may
    /// bind the slice's (to wait for its events, or to free it where the GPU has no pool).
    slice: std::mem::ManuallyDrop<CudaSlice<u8>>,
    len: usize,
    ptr: u64,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _current = KeepCurrent::loaded();
        // SAFETY: dropped once, here, and not used after.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.slice) }
    }
}

impl Owned {
    pub(crate) fn new(slice: CudaSlice<u8>) -> Owned {
        let len = slice.len();
        Owned::with_len(slice, len)
    }

    /// The cudarc slice.
    pub(crate) fn slice(&self) -> &CudaSlice<u8> {
        &self.slice
    }

    fn with_len(mut slice: CudaSlice<u8>, len: usize) -> Owned {
        // cudarc binds the slice's context to this thread: the caller's is current again after.
        let _current = KeepCurrent::new();
        let stream = slice.stream().clone();
        let ptr = {
            // Taken as for a write: the slice's stream waits for the work any stream has queued
            // on it, reading or writing (cudarc's events on the slice), so that `ready`, which
            // waits for that stream, waits for all of it (a zeroing on another stream, a forward
            // pass still reading it).
            let (p, _sync) = slice.device_ptr_mut(&stream);
            p
        };
        Owned {
            slice: std::mem::ManuallyDrop::new(slice),
            len,
            ptr,
        }
    }
}

impl DeviceMemory for Owned {
    fn ptr(&self) -> u64 {
        self.ptr
    }

    fn ready(&self) -> Result<()> {
        // Work the trainer queued on the slice (its zeroing, say) finishes before the load writes.
        // A slice of the legacy or the per-thread default stream (candle's devices use the latter)
        // names "the calling thread's" stream, which would miss work another thread queued: the
        // whole context is waited for then.
        // Bound without cudarc's check, which would report (and clear) an error the trainer's
        // context stored as the load's; the caller's context is current again after.
        let device = self.slice.ordinal() as u32;
        let stream = self.slice.stream();
        let (_current, bound) = bind_anyway(stream.context());
        let r = bound.and_then(|()| {
            if (stream.cu_stream() as usize) <= 2 {
                result::ctx::synchronize()
            } else {
                // SAFETY: the slice's live stream.
                unsafe { result::stream::synchronize(stream.cu_stream()) }
            }
        });
        r.map_err(|e| device_err(device, "waiting for the buffer's stream", e))
    }

    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, dst: &mut [u8]) -> Result<()> {
        let device = self.slice.ordinal() as u32;
        if dst.len() != self.len {
            return Err(device_err(device, "reading back", "wrong buffer size"));
        }
        let stream = self.slice.stream();
        // The copy binds the slice's context.
        let _current = KeepCurrent::loaded();
        stream
            .memcpy_dtoh(&self.slice.slice(..self.len), dst)
            .and_then(|()| stream.synchronize())
            .map_err(|e| device_err(device, "reading back", e))
    }

    fn device(&self) -> String {
        format!("cuda:{}", self.slice.ordinal())
    }

    #[cfg(feature = "cuda")]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Device memory the trainer handed in by address.
pub(crate) struct Raw {
    pub(crate) device: u32,
    pub(crate) ptr: u64,
    pub(crate) len: usize,
}

impl DeviceMemory for Raw {
    fn ptr(&self) -> u64 {
        self.ptr
    }

    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, dst: &mut [u8]) -> Result<()> {
        if dst.len() != self.len {
            return Err(device_err(self.device, "reading back", "wrong buffer size"));
        }
        let l = link(self.device)?;
        let _bound = l.bind()?;
        l.synchronize()?;
        // SAFETY: the trainer guaranteed (`DeviceBuffer::from_raw`) that the range is live device
        // memory of this GPU.
        unsafe { result::memcpy_dtoh_sync(dst, self.ptr) }
            .map_err(|e| device_err(self.device, "reading back", e))
    }

    fn device(&self) -> String {
        format!("cuda:{}", self.device)
    }

    #[cfg(feature = "cuda")]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether NVRTC is at hand; without it the test says why it checked nothing (CI installs
    /// NVRTC and sets `TFCKPT_REQUIRE_NVRTC=1`, so there a kernel source error fails the build
    /// even without a GPU).
    fn nvrtc_or_skip() -> bool {
        if nvrtc_present() {
            return true;
        }
        assert!(
            std::env::var_os("TFCKPT_REQUIRE_NVRTC").is_none(),
            "TFCKPT_REQUIRE_NVRTC is set but NVRTC cannot be loaded"
        );
        eprintln!("NVRTC not found: kernels not compiled (set LD_LIBRARY_PATH to nvidia-cuda-nvrtc's lib)");
        false
    }

    /// Whether NCCL is usable needs no GPU: no NCCL on the loader path is a plain answer (no
    /// panic), NCCL that cudarc finds answers its version, and pip's or the system's
    /// `libnccl.so.2` alone, where cudarc loads NCCL at run time, is an answer saying what to link.
    #[cfg(feature = "nccl")]
    #[test]
    fn nccl_usable_says_what_is_missing() {
        let usable = nccl_usable();
        if loadable(&["libnccl.so"]) {
            assert_eq!(usable, Ok(()));
        } else if loadable(&["libnccl.so.2"]) {
            // Linked at build time (by another crate's choice), libnccl.so.2 is what cudarc uses.
            if let Err(why) = usable {
                assert!(why.contains("add a link of that name"), "{why}");
            }
        } else {
            let why = usable.unwrap_err();
            assert!(why.contains("not on the loader path"), "{why}");
        }
    }

    /// Every kernel source compiles whole, and every kernel alone (as a load compiles it), to
    /// PTX that defines that kernel and no other.
    #[test]
    fn kernels_compile_with_nvrtc() {
        if !nvrtc_or_skip() {
            return;
        }
        for (name, src) in SOURCES {
            let options = CompileOptions {
                arch: Some("sm_90"),
                name: Some((*name).into()),
                ..Default::default()
            };
            compile_ptx_with_opts(src, options).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        for (_, fns) in FUNCTIONS {
            for f in *fns {
                let (ptx, cached) = kernel_ptx(f, Some("sm_90"), None, true).unwrap();
                assert!(!cached);
                assert!(ptx.contains(&format!(".entry {f}(")), "{f}");
                assert_eq!(
                    ptx.matches(".entry ").count(),
                    1,
                    "{f}: one kernel per program"
                );
            }
        }
        // A broken kernel is rejected with the compiler's log.
        let bad = compile_ptx_with_opts(
            "extern \"C\" __global__ void k() { nope; }",
            Default::default(),
        );
        assert!(bad.is_err());
    }

    /// A kernel's program keeps its own instantiation and leaves out every other.
    #[test]
    fn each_kernel_program_instantiates_that_kernel_alone() {
        for (file, fns) in FUNCTIONS {
            for f in *fns {
                let (from, program) = kernel_program(f).unwrap();
                assert_eq!(from, *file);
                let kept: Vec<&str> = program.lines().filter(|l| instantiates(l)).collect();
                assert_eq!(kept.len(), 1, "{f}: {kept:?}");
                assert!(kept[0].contains(&format!("({f},")), "{f}: {kept:?}");
            }
        }
        assert!(kernel_program("nope").is_none());
    }

    /// The kernel cache: compiled once, then read; a damaged file is compiled again and
    /// rewritten; another architecture is another file.
    #[test]
    fn the_kernel_cache_keeps_checked_ptx() {
        if !nvrtc_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = Some(dir.path());
        let (first, cached) = kernel_ptx("transpose2d_4", Some("sm_90"), cache, true).unwrap();
        assert!(!cached);
        let (again, cached) = kernel_ptx("transpose2d_4", Some("sm_90"), cache, true).unwrap();
        assert!(cached);
        assert_eq!(again, first);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}: no temporary file left");
        // One byte of the PTX changed: not trusted, compiled again, and the file mended.
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 1;
        std::fs::write(&files[0], &bytes).unwrap();
        let (mended, cached) = kernel_ptx("transpose2d_4", Some("sm_90"), cache, true).unwrap();
        assert!(!cached);
        assert_eq!(mended, first);
        assert!(
            kernel_ptx("transpose2d_4", Some("sm_90"), cache, true)
                .unwrap()
                .1
        );
        // A truncated file too.
        std::fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
        assert!(
            !kernel_ptx("transpose2d_4", Some("sm_90"), cache, true)
                .unwrap()
                .1
        );
        // Another target is another program.
        let (other, cached) = kernel_ptx("transpose2d_4", Some("sm_80"), cache, true).unwrap();
        assert!(!cached);
        assert!(other.contains(".target sm_80"), "sm_80 PTX");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // A folder the cache makes is this user's alone.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let nested = dir.path().join("made/here");
            kernel_ptx("copy2d_1", None, Some(&nested), true).unwrap();
            for d in [&nested, &dir.path().join("made")] {
                let mode = std::fs::metadata(d).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o700, "{}", d.display());
            }
        }
        // Another kernel's intact file in this kernel's place is not taken for it, nor is a
        // link to it (each then compiled again and rewritten as a file of its own).
        #[cfg(unix)]
        {
            let other = kernel_ptx("copy2d_4", Some("sm_90"), cache, true)
                .unwrap()
                .0;
            let file = |name: &str| {
                std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|p| {
                        let n = p.file_name().unwrap().to_string_lossy();
                        n.starts_with(&format!("{name}-sm_90-"))
                    })
                    .unwrap()
            };
            let (mine, theirs) = (file("transpose2d_4"), file("copy2d_4"));
            std::fs::copy(&theirs, &mine).unwrap();
            let (ptx, cached) = kernel_ptx("transpose2d_4", Some("sm_90"), cache, true).unwrap();
            assert!(!cached && ptx == first && ptx != other);
            std::fs::remove_file(&mine).unwrap();
            std::os::unix::fs::symlink(&theirs, &mine).unwrap();
            assert!(
                !kernel_ptx("transpose2d_4", Some("sm_90"), cache, true)
                    .unwrap()
                    .1
            );
            assert!(!std::fs::symlink_metadata(&mine).unwrap().is_symlink());
            assert!(
                kernel_ptx("transpose2d_4", Some("sm_90"), cache, true)
                    .unwrap()
                    .1
            );
        }
        // Not read when asked not to (a cached PTX the driver refused): compiled and rewritten.
        assert!(
            kernel_ptx("transpose2d_4", Some("sm_90"), cache, true)
                .unwrap()
                .1
        );
        assert!(
            !kernel_ptx("transpose2d_4", Some("sm_90"), cache, false)
                .unwrap()
                .1
        );
        // A target NVRTC refuses (as an NVRTC older than the GPU refuses its architecture):
        // NVRTC's default target instead; a source error is not retried.
        let e = kernel_ptx("copy2d_4", Some("sm_10"), None, true).unwrap_err();
        assert!(e.starts_with(ARCH_REFUSED), "{e}");
        let (ptx, _) = kernel_ptx_or_default("copy2d_4", Some("sm_10"), None, true).unwrap();
        assert!(ptx.contains(".entry copy2d_4(") && !ptx.contains("sm_10"));
        // An unwritable cache only costs the compile.
        let file_not_dir = dir.path().join("a-file");
        std::fs::write(&file_not_dir, b"").unwrap();
        let (ptx, cached) = kernel_ptx("copy2d_4", None, Some(&file_not_dir), true).unwrap();
        assert!(!cached && ptx.contains(".entry copy2d_4("));
    }

    /// Every kernel the planner can launch is compiled and loaded.
    #[test]
    fn every_planned_kernel_is_listed() {
        for &(_, _, rows, transpose) in super::super::plan::KERNELS {
            for name in [rows, transpose] {
                let listed = FUNCTIONS.iter().any(|(_, fs)| fs.contains(&name));
                assert!(listed, "{name} is not in FUNCTIONS");
            }
        }
    }

    /// Without a driver, asking for a GPU is a typed error, never a panic.
    #[test]
    fn no_driver_is_an_error() {
        if driver_present() {
            return;
        }
        let e = link(0).err().unwrap();
        assert!(
            matches!(e.kind(), ErrorKind::DeviceUnavailable { .. }),
            "{e}"
        );
    }
}
