//! gati-core: the base models (run stage by stage), their weights, the datasets they read,
//! and the latency measurements every other part of gati builds on.

pub mod classifier;
pub mod cpu;
pub mod data;
pub mod device;
pub mod eval;
pub mod files;
pub mod models;
pub mod names;
pub mod paths;
pub mod progress;
pub mod stats;
pub mod tfjs;
pub mod verify;
pub mod weights;
pub mod workload;

pub use models::{BaseModel, ModelSpec};

/// Sets libtorch's intra-op thread count (and inter-op to 1: batch-1 inference has no inter-op
/// parallelism worth the extra threads). `0` keeps libtorch's default.
pub fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// Keeps freed tensor memory in the heap instead of returning it to the OS. libtorch frees and
/// reallocates megabyte-sized buffers every training step; with glibc's defaults each becomes an
/// mmap/munmap pair plus page faults, which doubled cache-training time (measured, docs/results.md).
/// Call once at start-up, before any tensor exists.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
