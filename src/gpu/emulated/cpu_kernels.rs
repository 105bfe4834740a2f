//! The kernels of `kernels/` compiled for the CPU (`tests/kernels/cpu_launch.cpp`, with a C++
//! compiler: `$CXX`, else the first of `c++`, `g++` and `clang++` found), so that the emulated
//! device runs the very kernel sources a GPU runs, with the launch configuration the GPU path
//! computes. Without a compiler the emulated device falls back to its own Rust rendering of what
//! each kernel does, and says so once; `TFCKPT_REQUIRE_CXX=1` (set in CI) turns that into a
//! failure.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::{Mutex, OnceLock};

use crate::gpu::exec::Kernel;

type Launch = unsafe extern "C" fn(
    *const c_char,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *const c_void,
    *mut c_void,
    u64,
    u64,
    u64,
    u64,
    u64,
) -> c_int;

static LAUNCH: OnceLock<Option<Launch>> = OnceLock::new();
/// The simulator keeps one launch's state in globals: one launch at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Whether the kernels could be compiled (built on the first call).
pub(crate) fn available() -> bool {
    LAUNCH.get_or_init(build).is_some()
}

/// Runs kernel launch `k` with `src` and `dst` holding the bytes it may touch (from its `src`
/// and `dst` addresses on), on the grid the GPU path launches it with.
pub(crate) fn run(k: &Kernel, src: &[u8], dst: &mut [u8]) -> Result<(), String> {
    run_on(k, k.launch_dims(), src, dst)
}

/// [`run`] on grid `dims` (`((gx, gy), (bx, by))`) instead of the launch's own.
pub(crate) fn run_on(
    k: &Kernel,
    ((gx, gy), (bx, by)): ((u32, u32), (u32, u32)),
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), String> {
    let launch = LAUNCH.get_or_init(build).ok_or("no CPU kernels")?;
    let name = CString::new(k.name).map_err(|e| e.to_string())?;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (from, to, _) = crate::gpu::plan::kernel_types(k.name).ok_or("not a kernel of kernels/")?;
    let (es, ed) = (from.size().unwrap_or(1), to.size().unwrap_or(1));
    let (src_len, dst_len) = extents(k, es, ed);
    if src.len() < src_len || dst.len() < dst_len {
        return Err("the buffers are smaller than the launch addresses".into());
    }
    // SAFETY: `launch` is `tfckpt_cpu_launch` of the library built from
    // tests/kernels/cpu_launch.cpp, with that signature; `src` and `dst` hold every element the
    // launch's rows, strides and element sizes address (checked above), so every access of the
    // kernel stays inside them.
    let rc = unsafe {
        launch(
            name.as_ptr(),
            gx,
            gy,
            bx,
            by,
            src.as_ptr().cast(),
            dst.as_mut_ptr().cast(),
            k.rows,
            k.row,
            k.src_stride,
            k.dst_stride,
            k.dst_col,
        )
    };
    match rc {
        0 => Ok(()),
        -1 => Err("threads of a block reached different barriers".into()),
        -2 => Err("not a kernel of kernels/".into()),
        -3 => Err("dst_col given to a row kernel, or missing for a transpose".into()),
        rc => Err(format!("failed with {rc}")),
    }
}

/// The bytes launch `k` addresses from its `src` and from its `dst` (elements of `es` and `ed`
/// bytes): its last row's end on each side; nothing when it has no element.
pub(crate) fn extents(k: &Kernel, es: usize, ed: usize) -> (usize, usize) {
    if k.rows == 0 || k.row == 0 {
        return (0, 0);
    }
    let last = k.rows - 1;
    let src = (last * k.src_stride + k.row) as usize * es;
    let dst = (last * k.dst_stride + (k.row - 1) * k.dst_col.max(1) + 1) as usize * ed;
    (src, dst)
}

/// Compiles and loads the kernels; `None` (after a note) when there is no C++ compiler.
fn build() -> Option<Launch> {
    let required = std::env::var_os("TFCKPT_REQUIRE_CXX").is_some_and(|v| v == "1");
    let give_up = |why: String| {
        assert!(!required, "TFCKPT_REQUIRE_CXX=1, but {why}");
        eprintln!(
            "note: {why}; the emulated device runs its Rust rendering of the kernels instead"
        );
        None
    };
    if cfg!(not(unix)) {
        return give_up("the kernels are loaded with dlopen, which only Unix has".into());
    }
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kernels/cpu_launch.cpp");
    let dir = std::env::temp_dir().join(format!("tfckpt-cpu-kernels-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return give_up(format!("cannot make {}: {e}", dir.display()));
    }
    let lib = dir.join("libtfckpt_cpu_kernels.so");
    // `$CXX` (a command, possibly with arguments, as build tools take it), else the usual names.
    let candidates: Vec<Vec<String>> = match std::env::var("CXX") {
        Ok(cxx) if !cxx.trim().is_empty() => {
            vec![cxx.split_whitespace().map(String::from).collect()]
        }
        _ => ["c++", "g++", "clang++"]
            .iter()
            .map(|c| vec![c.to_string()])
            .collect(),
    };
    let mut tried = Vec::new();
    let mut compiled = None;
    for cxx in &candidates {
        let out = std::process::Command::new(&cxx[0])
            .args(&cxx[1..])
            .args(["-std=c++17", "-O2", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(source)
            .output();
        match out {
            Ok(o) => {
                compiled = Some((cxx.join(" "), o));
                break;
            }
            Err(e) => tried.push(format!("{}: {e}", cxx.join(" "))),
        }
    }
    let Some((cxx, out)) = compiled else {
        return give_up(format!("no C++ compiler ({})", tried.join("; ")));
    };
    if !out.status.success() {
        // A compiler that runs and rejects the kernels is a failure, not a missing tool.
        panic!(
            "{cxx} could not compile the kernels for the CPU:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    load(&lib, &dir)
}

#[cfg(not(unix))]
fn load(_lib: &std::path::Path, _dir: &std::path::Path) -> Option<Launch> {
    None // `build` gave up before compiling
}

/// Loads the kernels `build` compiled to `lib` (in `dir`, removed once loaded).
#[cfg(unix)]
fn load(lib: &std::path::Path, dir: &std::path::Path) -> Option<Launch> {
    let path = CString::new(lib.to_string_lossy().into_owned())
        .expect("a temporary path without NUL bytes");
    // SAFETY: loading a library just built from our own source, which has no initializers
    // beyond plain statics; the handle is kept for the life of the process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    let _ = std::fs::remove_dir_all(dir); // the mapping stays
    assert!(!handle.is_null(), "cannot load the CPU kernels");
    // SAFETY: a symbol of the library just loaded, with the signature `Launch`.
    let sym = unsafe { libc::dlsym(handle, c"tfckpt_cpu_launch".as_ptr()) };
    assert!(!sym.is_null(), "no tfckpt_cpu_launch in the CPU kernels");
    // SAFETY: `tfckpt_cpu_launch` is defined in cpu_launch.cpp with exactly this signature.
    Some(unsafe { std::mem::transmute::<*mut c_void, Launch>(sym) })
}
