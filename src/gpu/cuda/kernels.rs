//! The kernels on the GPU: their sources (`kernels/`, compiled into the crate), each compiled by
//! NVRTC alone when a load first needs it, and kept as PTX on disk ([`kernel_cache_dir`]) for the
//! next process.

use std::path::{Path, PathBuf};

use cudarc::driver::sys;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

use super::libs::{guarded, nvrtc_present};

/// The kernel sources of `kernels/`, compiled into the crate.
pub(crate) const SOURCES: &[(&str, &str)] = &[
    (
        "slice_copy.cu",
        include_str!("../../../kernels/slice_copy.cu"),
    ),
    ("cast.cu", include_str!("../../../kernels/cast.cu")),
    // One program: the transposes convert with cast.cu's functions.
    (
        "transpose.cu",
        concat!(
            include_str!("../../../kernels/cast.cu"),
            include_str!("../../../kernels/transpose.cu")
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
pub(super) fn ptx_hint(e: &cudarc::driver::DriverError) -> String {
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
pub(super) fn kernel_ptx_or_default(
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
        for &(_, _, rows, transpose) in crate::gpu::plan::KERNELS {
            for name in [rows, transpose] {
                let listed = FUNCTIONS.iter().any(|(_, fs)| fs.contains(&name));
                assert!(listed, "{name} is not in FUNCTIONS");
            }
        }
    }
}
