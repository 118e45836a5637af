//! The disjoint data splits: caches train on the `train` split; the `test` split is cut into a
//! calibration half (thresholds, selectors, planning) and an evaluation half (every reported figure).

/// Even positions calibrate, odd positions evaluate. Image folders load round-robin over classes,
/// so both halves are class-balanced and the cut is the same on every run.
pub fn calibration_evaluation(n: usize) -> (Vec<usize>, Vec<usize>) {
    ((0..n).step_by(2).collect(), (1..n).step_by(2).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn halves_are_disjoint_and_cover_everything() {
        let (c, e) = super::calibration_evaluation(11);
        assert_eq!(c.len(), 6);
        assert_eq!(e.len(), 5);
        let mut all: Vec<usize> = c.iter().chain(&e).copied().collect();
        all.sort();
        assert_eq!(all, (0..11).collect::<Vec<_>>());
    }
}
