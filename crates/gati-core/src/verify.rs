//! Face verification on LFW's official protocol: the two images of each pair are embedded, their
//! L2 distance compared with a threshold; for each of the 10 folds the threshold that is most
//! accurate on the other nine is applied to it.

use crate::data::{lfw, Dataset};
use crate::BaseModel;
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub pairs: usize,
    pub folds: usize,
    pub distance: &'static str,
    /// Accuracy (%) on each fold with the threshold fitted on the others.
    pub fold_accuracy: Vec<f64>,
    pub fold_threshold: Vec<f64>,
    pub mean: f64,
    /// Sample standard deviation over folds.
    pub std: f64,
    /// Mean distance of matched and of mismatched pairs.
    pub mean_distance_same: f64,
    pub mean_distance_different: f64,
}

/// Runs the protocol with the first `per_fold` pairs of each fold's matched and mismatched halves
/// (all when `None`); returns the report and the embedded images (for a latency profile).
pub fn lfw_verification(
    model: &BaseModel,
    root: &Path,
    per_fold: Option<usize>,
    batch: usize,
) -> Result<(Verification, Dataset)> {
    let mut pairs = lfw::pairs(root)?;
    if let Some(k) = per_fold {
        let mut taken: HashMap<(usize, bool), usize> = HashMap::new();
        pairs.retain(|p| {
            let n = taken.entry((p.fold, p.same)).or_default();
            *n += 1;
            *n <= k
        });
    }
    let mut index: HashMap<&Path, usize> = HashMap::new();
    let mut items = Vec::new();
    for p in &pairs {
        for f in [&p.a, &p.b] {
            if !index.contains_key(f.as_path()) {
                index.insert(f, items.len());
                items.push((f.clone(), 0));
            }
        }
    }
    let [_, h, w] = model.spec().input_shape;
    let images = crate::data::decode_faces(&items, (h, w))?;
    let emb = crate::eval::predict(model, &images, batch);
    let rows = |sel: &dyn Fn(&lfw::Pair) -> &Path| -> Tensor {
        let idx: Vec<i64> = pairs.iter().map(|p| index[sel(p)] as i64).collect();
        emb.index_select(0, &Tensor::from_slice(&idx))
    };
    let d = (rows(&|p| &p.a) - rows(&|p| &p.b))
        .square()
        .sum_dim_intlist(1, false, Kind::Float)
        .sqrt();
    let dist = Vec::<f64>::try_from(d.to_kind(Kind::Double))?;
    let same: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let fold: Vec<usize> = pairs.iter().map(|p| p.fold).collect();
    let (fold_accuracy, fold_threshold) = k_fold(&dist, &same, &fold);
    let mean_of = |want: bool| {
        let v: Vec<f64> = dist
            .iter()
            .zip(&same)
            .filter(|(_, s)| **s == want)
            .map(|(d, _)| *d)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (mean, std) = mean_std(&fold_accuracy);
    Ok((
        Verification {
            pairs: pairs.len(),
            folds: fold_accuracy.len(),
            distance: "l2",
            fold_accuracy,
            fold_threshold,
            mean,
            std,
            mean_distance_same: mean_of(true),
            mean_distance_different: mean_of(false),
        },
        images,
    ))
}

/// Per fold: the threshold most accurate on the other folds (`distance < t` means "same"), and
/// the accuracy (%) it gives on this fold.
pub fn k_fold(dist: &[f64], same: &[bool], fold: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let folds = fold.iter().max().map_or(0, |m| m + 1);
    let accuracy = |t: f64, f: &dyn Fn(usize) -> bool| {
        let (mut right, mut n) = (0usize, 0usize);
        for i in (0..dist.len()).filter(|&i| f(fold[i])) {
            right += usize::from((dist[i] < t) == same[i]);
            n += 1;
        }
        100.0 * right as f64 / n.max(1) as f64
    };
    let mut accs = Vec::with_capacity(folds);
    let mut thresholds = Vec::with_capacity(folds);
    for k in 0..folds {
        let mut cands: Vec<f64> = (0..dist.len()).filter(|&i| fold[i] != k).map(|i| dist[i]).collect();
        cands.sort_by(f64::total_cmp);
        let mids = cands.windows(2).map(|w| 0.5 * (w[0] + w[1]));
        let best = mids
            .map(|t| (accuracy(t, &|f| f != k), t))
            .fold((f64::MIN, 0.0), |b, c| if c.0 > b.0 { c } else { b });
        thresholds.push(best.1);
        accs.push(accuracy(best.1, &|f| f == k));
    }
    (accs, thresholds)
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_fold_fits_the_threshold_on_other_folds() {
        // Same pairs at distance 0.2..0.5, different at 0.7..1.0, one outlier per fold.
        let (mut d, mut s, mut f) = (Vec::new(), Vec::new(), Vec::new());
        for fold in 0..4 {
            for i in 0..10 {
                d.push(0.2 + 0.03 * i as f64);
                s.push(true);
                f.push(fold);
                d.push(0.7 + 0.03 * i as f64);
                s.push(false);
                f.push(fold);
            }
            d.push(0.9);
            s.push(true);
            f.push(fold);
        }
        let (acc, thr) = k_fold(&d, &s, &f);
        assert_eq!(acc.len(), 4);
        for (a, t) in acc.iter().zip(&thr) {
            assert!(*t > 0.47 && *t < 0.7, "threshold {t}");
            assert!((a - 100.0 * 20.0 / 21.0).abs() < 1e-9, "accuracy {a}");
        }
        let (m, sd) = mean_std(&[1.0, 3.0]);
        assert_eq!((m, sd), (2.0, 2f64.sqrt()));
    }
}
