//! Uses both crates, so that both are checked in one build (see Cargo.toml).

/// The GPUs tfckpt sees and the device count cudarc reports (both through the same cudarc).
pub fn gpus() -> (usize, Option<i32>) {
    (
        tfckpt::Device::gpu_count(),
        cudarc::driver::CudaContext::device_count().ok(),
    )
}
