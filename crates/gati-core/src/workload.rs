//! Request streams over a labelled dataset, seeded and reproducible: the order in which a load
//! generator, the benchmark and the online-learning tests send images.
//!
//! - `iid`: uniform over the images, with replacement;
//! - `zipf[:s]`: class popularity Zipf with exponent `s` (ranks from a seeded permutation), an
//!   image uniform within the class;
//! - `working-set[:k[:every]]`: `k` classes active at a time, redrawn every `every` requests;
//! - `bursty-repeat[:r[:window]]`: each image recurs `r` times, interleaved with the other
//!   images among `window` open bursts, every recurrence with small pixel noise (video frames).

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Stream {
    Iid,
    Zipf { s: f64 },
    WorkingSet { k: usize, every: usize },
    BurstyRepeat { r: usize, window: usize },
}

/// One request of a stream: which image, and (for recurrences) the seed of its pixel noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub index: usize,
    pub noise: Option<u64>,
}

/// Largest per-pixel change (in 0..255 units) a recurrence gets.
pub const NOISE_AMPLITUDE: i64 = 3;

impl Stream {
    /// `iid`, `zipf[:S]`, `working-set[:K[:EVERY]]`, `bursty-repeat[:R[:WINDOW]]`.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut parts = spec.trim().split(':');
        let name = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        let num = |i: usize, default: f64| -> Result<f64> {
            match args.get(i) {
                None => Ok(default),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .with_context(|| format!("stream '{spec}': parameter '{v}' must be a positive number")),
            }
        };
        let max_args = match name {
            "iid" => 0,
            "zipf" => 1,
            _ => 2,
        };
        if args.len() > max_args {
            bail!("stream '{spec}': too many parameters");
        }
        Ok(match name {
            "iid" => Stream::Iid,
            "zipf" => Stream::Zipf { s: num(0, 1.1)? },
            "working-set" => Stream::WorkingSet {
                k: num(0, 2.0)? as usize,
                every: num(1, 500.0)? as usize,
            },
            "bursty-repeat" => Stream::BurstyRepeat {
                r: num(0, 5.0)? as usize,
                window: num(1, 8.0)? as usize,
            },
            other => {
                bail!("unknown stream '{other}' (iid, zipf[:s], working-set[:k[:every]], bursty-repeat[:r[:window]])")
            }
        })
    }

    pub fn parse_list(spec: &str) -> Result<Vec<Self>> {
        spec.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    /// A short name for reports and file names (`zipf-1.1`, `working-set-2-500`).
    pub fn name(&self) -> String {
        match self {
            Stream::Iid => "iid".into(),
            Stream::Zipf { s } => format!("zipf-{s}"),
            Stream::WorkingSet { k, every } => format!("working-set-{k}-{every}"),
            Stream::BurstyRepeat { r, window } => format!("bursty-repeat-{r}-{window}"),
        }
    }

    /// The first `n` requests of this stream over images labelled `labels`.
    pub fn generate(&self, labels: &[i64], n: usize, seed: u64) -> Vec<Request> {
        if labels.is_empty() {
            return Vec::new();
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let by_class = by_class(labels);
        let plain = |index| Request { index, noise: None };
        match *self {
            Stream::Iid => (0..n).map(|_| plain(rng.gen_range(0..labels.len()))).collect(),
            Stream::Zipf { s } => {
                let mut ranked: Vec<usize> = (0..by_class.len()).collect();
                ranked.shuffle(&mut rng);
                let weights: Vec<f64> = (1..=ranked.len()).map(|r| (r as f64).powf(-s)).collect();
                let total: f64 = weights.iter().sum();
                (0..n)
                    .map(|_| {
                        let mut u = rng.gen::<f64>() * total;
                        let mut rank = 0;
                        while rank + 1 < weights.len() && u >= weights[rank] {
                            u -= weights[rank];
                            rank += 1;
                        }
                        let members = &by_class[ranked[rank]];
                        plain(members[rng.gen_range(0..members.len())])
                    })
                    .collect()
            }
            Stream::WorkingSet { k, every } => {
                let k = k.clamp(1, by_class.len());
                let mut classes: Vec<usize> = (0..by_class.len()).collect();
                let mut active = Vec::new();
                (0..n)
                    .map(|i| {
                        if i % every.max(1) == 0 {
                            classes.shuffle(&mut rng);
                            active = classes[..k].to_vec();
                        }
                        let members = &by_class[active[rng.gen_range(0..k)]];
                        plain(members[rng.gen_range(0..members.len())])
                    })
                    .collect()
            }
            Stream::BurstyRepeat { r, window } => {
                // Open bursts: (image, recurrences left). Every emission is noisy but the first.
                let mut open: Vec<(usize, usize)> = Vec::new();
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    while open.len() < window.max(1) {
                        open.push((rng.gen_range(0..labels.len()), r.max(1)));
                    }
                    let b = rng.gen_range(0..open.len());
                    let (index, left) = open[b];
                    let first = left == r.max(1);
                    out.push(Request {
                        index,
                        noise: (!first).then(|| rng.gen()),
                    });
                    if left == 1 {
                        open.swap_remove(b);
                    } else {
                        open[b].1 = left - 1;
                    }
                }
                out
            }
        }
    }
}

/// Sample indices of each class present in `labels` (classes in ascending label order).
fn by_class(labels: &[i64]) -> Vec<Vec<usize>> {
    let mut classes: Vec<i64> = labels.to_vec();
    classes.sort();
    classes.dedup();
    classes
        .iter()
        .map(|c| (0..labels.len()).filter(|&i| labels[i] == *c).collect())
        .collect()
}

/// The pixels a request carries: the image itself, or with uniform noise in
/// `[-NOISE_AMPLITUDE, NOISE_AMPLITUDE]` (saturating), `u8 [1, 3, H, W]`.
pub fn request_pixels(images: &Tensor, req: &Request) -> Tensor {
    let x = images.narrow(0, req.index as i64, 1);
    match req.noise {
        None => x.shallow_clone(),
        Some(seed) => {
            let mut rng = StdRng::seed_from_u64(seed);
            let n = x.numel();
            let noise: Vec<i16> = (0..n)
                .map(|_| rng.gen_range(-NOISE_AMPLITUDE..=NOISE_AMPLITUDE) as i16)
                .collect();
            (x.to_kind(Kind::Int16) + Tensor::from_slice(&noise).view(x.size().as_slice()))
                .clamp(0, 255)
                .to_kind(Kind::Uint8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<i64> {
        (0..200).map(|i| i % 10).collect()
    }

    #[test]
    fn streams_are_reproducible_and_in_range() {
        for spec in ["iid", "zipf:1.2", "working-set:3:50", "bursty-repeat:4:6"] {
            let s = Stream::parse(spec).unwrap();
            let a = s.generate(&labels(), 500, 7);
            assert_eq!(a, s.generate(&labels(), 500, 7), "{spec}");
            assert_ne!(a, s.generate(&labels(), 500, 8), "{spec}");
            assert_eq!(a.len(), 500);
            assert!(a.iter().all(|r| r.index < 200));
        }
    }

    #[test]
    fn zipf_makes_one_class_dominant() {
        let l = labels();
        let reqs = Stream::Zipf { s: 1.5 }.generate(&l, 4000, 1);
        let mut counts = [0usize; 10];
        for r in &reqs {
            counts[l[r.index] as usize] += 1;
        }
        counts.sort();
        // Rank 1 gets 1/H(10, 1.5) ≈ 0.51 of the mass, rank 10 about 0.016.
        assert!(counts[9] > 1700 && counts[9] < 2400, "{counts:?}");
        assert!(counts[0] < 150, "{counts:?}");
    }

    #[test]
    fn working_set_uses_k_classes_per_window() {
        let l = labels();
        let reqs = Stream::WorkingSet { k: 2, every: 100 }.generate(&l, 1000, 3);
        let mut windows_changed = 0;
        let mut last: Vec<i64> = Vec::new();
        for w in reqs.chunks(100) {
            let mut c: Vec<i64> = w.iter().map(|r| l[r.index]).collect();
            c.sort();
            c.dedup();
            assert!(c.len() <= 2, "{c:?}");
            windows_changed += (c != last) as usize;
            last = c;
        }
        assert!(windows_changed >= 5);
    }

    #[test]
    fn bursty_repeat_recurs_with_noise() {
        let reqs = Stream::BurstyRepeat { r: 4, window: 3 }.generate(&labels(), 400, 5);
        let first = reqs.iter().filter(|r| r.noise.is_none()).count();
        assert!((95..=105).contains(&first), "{first}");
        let images = Tensor::full([200, 3, 4, 4], 128, (Kind::Uint8, tch::Device::Cpu));
        let noisy = reqs.iter().find(|r| r.noise.is_some()).unwrap();
        let p = request_pixels(&images, noisy).to_kind(Kind::Int64) - 128;
        let max = p.abs().max().int64_value(&[]);
        assert!(max > 0 && max <= NOISE_AMPLITUDE, "{max}");
    }

    #[test]
    fn bad_specs_are_named() {
        let e = Stream::parse("zipf:-1").unwrap_err().to_string();
        assert!(e.contains("-1"), "{e}");
        assert!(Stream::parse("poisson").unwrap_err().to_string().contains("poisson"));
    }
}
