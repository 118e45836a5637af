//! The disjoint data splits: caches train on the `train` split; the `test` split is cut into a
//! calibration half (thresholds, selectors, planning) and an evaluation half (every reported figure).

/// Names the rule below; stored with recorded outcomes so a change of rule re-records them.
pub const SPLIT_RULE: &str = "per-class-occurrence-parity";

/// The rule when the calibration half holds one camera frame of each image
/// (`workload::camera_frames`) instead of the image: thresholds for door-camera traffic.
pub fn camera_frames_rule() -> String {
    format!("{SPLIT_RULE}+camera-frames-calibration")
}

/// Within each class, even occurrences calibrate and odd ones evaluate: both halves are
/// class-balanced whatever the order of the samples, and the cut is the same on every run.
pub fn calibration_evaluation(labels: &[i64]) -> (Vec<usize>, Vec<usize>) {
    let mut seen = std::collections::HashMap::<i64, usize>::new();
    let (mut calib, mut eval) = (Vec::new(), Vec::new());
    for (i, l) in labels.iter().enumerate() {
        let k = seen.entry(*l).or_default();
        if k.is_multiple_of(2) {
            calib.push(i)
        } else {
            eval.push(i)
        }
        *k += 1;
    }
    (calib, eval)
}

#[cfg(test)]
mod tests {
    #[test]
    fn halves_are_disjoint_class_balanced_and_cover_everything() {
        // Round-robin class order, as image folders load: a positional even/odd cut would put
        // every even class in one half.
        let labels: Vec<i64> = (0..40).map(|i| i % 10).collect();
        let (c, e) = super::calibration_evaluation(&labels);
        assert_eq!((c.len(), e.len()), (20, 20));
        for class in 0..10 {
            assert_eq!(c.iter().filter(|&&i| labels[i] == class).count(), 2);
            assert_eq!(e.iter().filter(|&&i| labels[i] == class).count(), 2);
        }
        let mut all: Vec<usize> = c.iter().chain(&e).copied().collect();
        all.sort();
        assert_eq!(all, (0..40).collect::<Vec<_>>());
    }
}
