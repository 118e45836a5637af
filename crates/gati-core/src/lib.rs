//! gati-core: the base models (run stage by stage), their weights, the datasets they read,
//! and the latency measurements every other part of gati builds on.

pub mod data;
pub mod eval;
pub mod models;
pub mod paths;
pub mod progress;
pub mod stats;
pub mod weights;

pub use models::{BaseModel, ModelSpec};

/// Sets libtorch's intra-op thread count (and inter-op to 1: batch-1 inference has no inter-op
/// parallelism worth the extra threads). `0` keeps libtorch's default.
pub fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}
