//! gati-bench: does gati pay off on this model? One run measures the base model alone and gati
//! (in-process and through the Thrift frontend) over the same request streams on the same cores,
//! with configurations interleaved, and writes a report with plots.
//!
//! - `inputs`: a workload stream's requests as wire inputs and pixels;
//! - `load`: closed/open-loop load against a frontend (also `gati loadgen`);
//! - `measure`: the configurations and one run of each;
//! - `report`: figures, medians over repeats, markdown;
//! - `plot`: SVG/PNG charts;
//! - `bench`: the whole benchmark;
//! - `batching`: throughput and latency by batch size, in-process and through the batcher.

pub mod batching;
pub mod bench;
pub mod inputs;
pub mod load;
pub mod measure;
pub mod plot;
pub mod report;
