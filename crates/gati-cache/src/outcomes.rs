//! Per-sample outcomes of every candidate head: the softmax it outputs, next to the base model's
//! own prediction and the ground truth. Calibration, planning, the oracle and the paper table all
//! work from these records.

use crate::heads::HeadBank;
use anyhow::{Context, Result};
use gati_core::{data::Dataset, BaseModel};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct Outcomes {
    pub labels: Vec<i64>,
    pub base_pred: Vec<i64>,
    pub classes: usize,
    /// Per head, row-major `[N, K]` softmax probabilities.
    pub probs: Vec<Vec<f32>>,
}

impl Outcomes {
    /// Runs the base model and every head of `bank` over `ds` (inference mode, batched).
    pub fn record(model: &BaseModel, bank: &HeadBank, ds: &Dataset, batch: usize) -> Self {
        let _g = tch::no_grad_guard();
        let stages = bank.stages();
        let mut base_pred = Vec::with_capacity(ds.len());
        let mut probs: Vec<Vec<f32>> = vec![Vec::new(); bank.heads.len()];
        let pb = gati_core::progress::bar(ds.len() as u64, "outcomes");
        for start in (0..ds.len()).step_by(batch) {
            let end = (start + batch).min(ds.len());
            let x = model.preprocess(&ds.pixel_range(start, end));
            let (z, acts) = model.forward_collect(&x, &stages);
            base_pred.extend(gati_core::eval::argmax(&z));
            for (h, out) in bank.heads.iter().zip(probs.iter_mut()) {
                let act = &acts[stages.binary_search(&h.stage).expect("stage")];
                let p = h.head.forward_t(act, false).softmax(-1, Kind::Float).flatten(0, -1);
                out.extend(Vec::<f32>::try_from(p).expect("f32 probs"));
            }
            pb.inc((end - start) as u64);
        }
        pb.finish_and_clear();
        Self {
            labels: ds.labels.clone(),
            base_pred,
            classes: model.spec().num_classes as usize,
            probs,
        }
    }

    /// The outcomes of the samples at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Self {
        Self {
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            base_pred: idx.iter().map(|&i| self.base_pred[i]).collect(),
            classes: self.classes,
            probs: self
                .probs
                .iter()
                .map(|p| {
                    idx.iter()
                        .flat_map(|&i| p[i * self.classes..(i + 1) * self.classes].iter().copied())
                        .collect()
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.base_pred.len()
    }

    pub fn is_empty(&self) -> bool {
        self.base_pred.is_empty()
    }

    /// Probabilities of head `h` on sample `i`.
    pub fn row(&self, h: usize, i: usize) -> &[f32] {
        &self.probs[h][i * self.classes..(i + 1) * self.classes]
    }

    /// (predicted class, its probability) of head `h` on sample `i`.
    pub fn top(&self, h: usize, i: usize) -> (usize, f32) {
        top1(self.row(h, i))
    }

    /// Fraction of samples on which head `h` predicts the base model's class.
    pub fn fidelity(&self, h: usize) -> f64 {
        let agree = (0..self.len())
            .filter(|&i| self.top(h, i).0 as i64 == self.base_pred[i])
            .count();
        agree as f64 / self.len().max(1) as f64
    }

    pub fn to_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let n = self.len() as i64;
        let k = self.classes as i64;
        let mut t = vec![
            (
                format!("{prefix}.labels"),
                Tensor::from_slice(&self.labels).to_kind(Kind::Float),
            ),
            (
                format!("{prefix}.base_pred"),
                Tensor::from_slice(&self.base_pred).to_kind(Kind::Float),
            ),
        ];
        for (h, p) in self.probs.iter().enumerate() {
            t.push((format!("{prefix}.probs.{h}"), Tensor::from_slice(p).view([n, k])));
        }
        t
    }

    pub fn from_tensors(t: &BTreeMap<String, Tensor>, prefix: &str, heads: usize) -> Result<Self> {
        let get = |name: String| t.get(&name).with_context(|| format!("outcomes file lacks {name}"));
        let ints = |x: &Tensor| Vec::<i64>::try_from(x.to_kind(Kind::Int64)).expect("1-d");
        let labels = ints(get(format!("{prefix}.labels"))?);
        let base_pred = ints(get(format!("{prefix}.base_pred"))?);
        let mut probs = Vec::with_capacity(heads);
        let mut classes = 0;
        for h in 0..heads {
            let p = get(format!("{prefix}.probs.{h}"))?;
            classes = p.size()[1] as usize;
            probs.push(Vec::<f32>::try_from(p.flatten(0, -1)).expect("f32"));
        }
        Ok(Self {
            labels,
            base_pred,
            classes,
            probs,
        })
    }
}

/// Argmax and max of a probability row.
pub fn top1(row: &[f32]) -> (usize, f32) {
    row.iter()
        .enumerate()
        .fold((0, f32::MIN), |best, (c, &p)| if p > best.1 { (c, p) } else { best })
}
