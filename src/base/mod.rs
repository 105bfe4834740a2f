//! The crate's vocabulary, below every layer: errors, dtypes, tensors and their bytes, slices and
//! the boxes they cover, CRC32C, file mappings and memory helpers. Nothing here knows a file
//! format or a load.

pub(crate) mod copy;
pub mod crc;
pub(crate) mod device;
pub(crate) mod dtype;
pub(crate) mod error;
pub(crate) mod mmap;
pub(crate) mod par;
pub(crate) mod partial;
pub(crate) mod sigbus;
pub(crate) mod slice;
pub(crate) mod suggest;
pub(crate) mod tensor;

/// Deterministic pseudo-random numbers below `n`, from `seed` (xorshift64), for the tests that
/// generate inputs.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}

/// Runs this test binary's test `name` (its whole path, `base::mmap::fresh::tests::x`) alone in a
/// child process with `env`, and fails unless it passed: for tests that change what a process
/// holds once (its limits, a choice made at the first use).
#[cfg(all(test, unix))]
pub(crate) fn test_in_child<V>(name: &str, env: &[(&str, V)])
where
    V: AsRef<std::ffi::OsStr> + std::fmt::Debug,
{
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} {env:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
