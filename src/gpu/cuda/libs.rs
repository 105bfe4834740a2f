//! Which CUDA libraries this machine has (the driver, NVRTC, NCCL), asked without letting
//! cudarc's loader panic.

use cudarc::driver::CudaContext;

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

#[cfg(all(test, feature = "nccl"))]
mod tests {
    use super::*;

    /// Whether NCCL is usable needs no GPU: no NCCL on the loader path is a plain answer (no
    /// panic), NCCL that cudarc finds answers its version, and pip's or the system's
    /// `libnccl.so.2` alone, where cudarc loads NCCL at run time, is an answer saying what to link.
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
}
