//! gati-cache: cache models on a base model's intermediate activations — the variants, their
//! training by distillation, the hit decisions calibrated to a fidelity budget, the planner that
//! picks layers, and the early-exit runtime that serves a plan.

pub mod beside;
pub mod candidates;
pub mod decision;
pub mod evaluate;
pub mod heads;
pub mod ivf;
pub mod memory;
pub mod memory_plan;
pub mod online;
pub mod outcomes;
pub mod pipeline;
pub mod plan;
pub mod planner;
pub mod runtime;
pub mod split;
pub mod student;
pub mod train;
pub mod versions;

pub use heads::Variant;
